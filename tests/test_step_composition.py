"""The step composition of a CPU profile (simkit.calibrate.composition, device.step_composition):
the profile section, its use by time_ops and the step tables alike, what it leaves alone, and the
suite's measurement on a tiny model. Deterministic: no timing asserted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simkit.calibrate.composition import COMPOSITION_CELLS, COMPOSITION_MODEL, composition_factor
from simkit.calibrate.validate import ValidationConfig, compute_device, model_spec
from simkit.cost.iteration import IterationModel, compute_op_tables
from simkit.cost.ops import Precision, forward_ops
from simkit.cost.profile import Profile
from simkit.cost.roofline import time_ops, total_time
from simkit.cost.threads import StepComposition, parse_step_composition
from simkit.errors import CalibrationError
from tests.conftest import shipped_cpu_profile_with

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "calibration" / "profiles" / "ci-vm-cpu"


def _profile_with(tmp_path: Path, comp: dict | None) -> Profile:
    return Profile.load(shipped_cpu_profile_with(tmp_path / "prof", "step_composition", comp), with_samples=False)


def test_shipped_profile_has_none_and_prices_as_before() -> None:
    assert Profile.load(SHIPPED, with_samples=False).step_composition() is None


def test_parse_checks_every_key() -> None:
    ok = parse_step_composition({"threads": 2, "factor": {"fp32": 1.0, "bf16": 1.07}}, "p.yaml")
    assert ok == StepComposition(2, (("bf16", 1.07), ("fp32", 1.0)))
    assert ok.factor("bf16") == 1.07 and ok.factor("fp16") is None
    for raw, key in (
        ([1.0], "device.step_composition"),
        ({"factor": {"bf16": 1.0}}, "device.step_composition.threads"),
        ({"threads": 2}, "device.step_composition.factor"),
        ({"threads": 0, "factor": {"bf16": 1.0}}, "device.step_composition.threads"),
        ({"threads": 2, "factor": {}}, "device.step_composition.factor"),
        ({"threads": 2, "factor": {"bf16": 3.0}}, "device.step_composition.factor.bf16"),
        ({"threads": 2, "factor": {"bf16": "x"}}, "device.step_composition.factor.bf16"),
        ({"threads": 2, "factor": {"bf16": True}}, "device.step_composition.factor.bf16"),
    ):
        with pytest.raises(CalibrationError) as e:
            parse_step_composition(raw, "p.yaml")
        assert e.value.key == key


def test_a_bad_section_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError) as e:
        _profile_with(tmp_path, {"threads": 1, "factor": {"bf16": 0.1}})
    assert e.value.key == "device.step_composition.factor.bf16"


def test_factor_scales_step_operators_in_time_ops_and_the_tables_alike(tmp_path: Path) -> None:
    plain = _profile_with(tmp_path / "a", None)
    slow = _profile_with(tmp_path / "b", {"threads": 1, "factor": {"bf16": 1.1}})
    spec = model_spec(ValidationConfig(layers=2, hidden=768, heads=12, kv_heads=4, ffn=2048, vocab=8000))
    dev = compute_device(plain)
    p = Precision(weights="bf16", activations="bf16", kv_cache="bf16")
    batch = 4
    ops = forward_ops(spec, np.ones(batch), np.full(batch, 200.0), precision=p)
    t0, t1 = time_ops(ops, dev, plain, "bf16"), time_ops(ops, dev, slow, "bf16")
    for a, b in zip(t0, t1):
        # the busy time scales by the factor, the per-call launch overhead does not
        busy0 = a.time_s - plain.launch_overhead(a.op.op_class)
        busy1 = b.time_s - slow.launch_overhead(b.op.op_class)
        assert busy1 == pytest.approx(1.1 * busy0, rel=1e-9)
    # a dtype the factor does not name is priced as before
    f32 = Precision(weights="fp32", activations="fp32", kv_cache="fp32")
    ops32 = forward_ops(spec, np.ones(batch), np.full(batch, 200.0), precision=f32)
    assert total_time(time_ops(ops32, dev, slow, "fp32")) == total_time(time_ops(ops32, dev, plain, "fp32"))
    # the simulator's step tables scale the same operators
    tabs = [compute_op_tables(IterationModel(spec, dev, e, p), batch + 1) for e in (plain, slow)]
    for q, w in zip(tabs[0], tabs[1]):
        assert float(w[batch]) > float(q[batch])
    # an operator alone (the speed probe's prediction) is not scaled
    op = next(o for o in ops if o.op_class == "gemm")
    assert slow.predict_time("gemm", op.flops, op.bytes, op.shape, "bf16")[0] == plain.predict_time("gemm", op.flops, op.bytes, op.shape, "bf16")[0]


def test_factor_is_the_median_ratio() -> None:
    assert composition_factor([1.0, 2.2, 3.3], [1.0, 2.0, 3.0]) == pytest.approx(1.1)
    with pytest.raises(ValueError):
        composition_factor([1.0], [])


def test_synthetic_model_is_not_a_validation_set() -> None:
    # Llama-3.2-1B's layer, which the GEMM grid samples; none of the held-out sets of docs/fidelity.md
    from simkit.calibrate.bench import GEMM_MODELS

    assert any(h == COMPOSITION_MODEL.hidden and f == COMPOSITION_MODEL.ffn for _, h, _, _, f, _ in GEMM_MODELS)
    assert {p for p, _, _ in COMPOSITION_CELLS} == {"prefill", "decode"}


def test_suite_measurement_is_a_profile_section(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from simkit.calibrate.bench import describe_step_composition
    from simkit.calibrate.composition import measure_step_composition

    prof = Profile.load(SHIPPED, with_samples=False)
    tiny = ValidationConfig(layers=1, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=256)
    cells = (("prefill", 1, 8), ("decode", 2, 8))
    sec = measure_step_composition(prof, ["fp32"], 1, "cpu", cfg=tiny, cells=cells, repeats=1)
    assert sec["threads"] == 1 and sec["clock"] == "cpu" and sec["model"]["hidden"] == 64
    rows = sec["rows"]
    assert [(r["phase"], r["batch"], r["context"]) for r in rows] == list(cells)
    assert all(r["measured_s"] > 0 and r["predicted_s"] > 0 for r in rows)
    assert sec["factor"]["fp32"] == pytest.approx(composition_factor([r["measured_s"] for r in rows], [r["predicted_s"] for r in rows]), rel=1e-3)
    assert "fp32 x" in describe_step_composition(sec) and "1+ readings per cell" in describe_step_composition(sec)
    # measuring against a profile that already carries one is refused (it would compound)
    scaled = _profile_with(tmp_path, {"threads": 1, "factor": {"fp32": 1.0}})
    with pytest.raises(ValueError):
        measure_step_composition(scaled, ["fp32"], 1, "cpu", cfg=tiny, cells=cells, repeats=1)


def test_series_reads_along_a_run_and_tops_up() -> None:
    pytest.importorskip("torch")
    import time

    from simkit.calibrate.composition import StepSeries, composition_section

    tiny = ValidationConfig(layers=1, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=256)
    cells = (("prefill", 1, 8), ("decode", 2, 8))
    clock = [0.0]
    series = StepSeries.build(["fp32", "bf16"], time.thread_time, cfg=tiny, cells=cells, every_s=10.0)
    series.wall = lambda: clock[0]
    series.tick()  # the first reading is due at once
    series.tick()  # the next one not before every_s of wall time
    assert [len(t) for t in series.times] == [1, 1, 1, 1]
    clock[0] = 10.0
    series.tick()
    assert [len(t) for t in series.times] == [2, 2, 2, 2]
    series.top_up(3)
    r = series.readings()
    assert r["cells"] == [["fp32", "prefill", 1, 8], ["fp32", "decode", 2, 8], ["bf16", "prefill", 1, 8], ["bf16", "decode", 2, 8]]
    assert [len(t) for t in r["times"]] == [3, 3, 3, 3] and r["model"]["ffn"] == 128 and r["every_s"] == 10.0
    sec = composition_section(r, Profile.load(SHIPPED, with_samples=False), 1, "cpu")
    assert set(sec["factor"]) == {"fp32", "bf16"} and all(row["readings"] == 3 for row in sec["rows"])
    fp32 = [row for row in sec["rows"] if row["dtype"] == "fp32"]
    assert sec["factor"]["fp32"] == pytest.approx(composition_factor([x["measured_s"] for x in fp32], [x["predicted_s"] for x in fp32]), rel=1e-3)


def test_bench_reads_the_steps_before_every_sample() -> None:
    import random

    from simkit.calibrate import bench
    from simkit.calibrate.samples import Measurement

    class FakeTimer:
        def measure(self, fn: object, **kw: object) -> Measurement:
            return Measurement([1.0])

    class Ticks:
        n = 0

        def tick(self) -> None:
            self.n += 1

        def top_up(self) -> None:
            pass

        def readings(self) -> dict:
            return {}

    b = bench.Bench(None, "cpu", bench.SIZES["tiny"], FakeTimer(), "test", random.Random(0))  # type: ignore[arg-type]
    b.steps = Ticks()
    b.measure(lambda: None)
    b.measure(lambda: None)
    assert b.steps.n == 2


def test_calibrate_cli_passes_the_composition_to_the_suite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from simkit.calibrate import bench, cli_calibrate
    from simkit.calibrate.composition import StepSeries, composition_section

    seen: dict = {}

    def fake_run_suite(**kw: object) -> object:
        seen.update(kw)
        return Profile.load(SHIPPED, with_samples=False)

    monkeypatch.setattr(bench, "run_suite", fake_run_suite)
    assert cli_calibrate.main(["--device", "cpu", "--quick", "--out", str(tmp_path / "p")]) == 0
    assert seen["steps"] == StepSeries.build and seen["composition"] is composition_section
