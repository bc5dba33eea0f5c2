"""The OpenMP wake-up term of the CPU cost model (simkit.cost.threads): the curve from the
calibration's medians, the walk over a forward pass, the profile section and its use by the
step tables and by time_ops. Deterministic: no timing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simkit.calibrate.validate import ValidationConfig, compute_device, model_spec
from simkit.cost.iteration import IterationModel, compute_op_tables
from simkit.cost.ops import Precision, forward_ops
from simkit.cost.profile import Profile
from simkit.cost.roofline import time_ops, total_time
from simkit.cost.threads import (
    GRAIN_SIZE,
    ThreadWakeup,
    parse_thread_wakeup,
    runs_parallel,
    wakeup_curve,
    wakeup_extra,
)
from simkit.errors import CalibrationError
from tests.conftest import shipped_cpu_profile_with

ROOT = Path(__file__).resolve().parents[1]
GAPS = (0.0, 1e-4, 4e-4, 1.6e-3)
WAKE = ThreadWakeup(2, GAPS, (0.0, 0.0, 20e-6, 30e-6))


def test_curve_subtracts_the_one_thread_gap_cost_and_never_decreases() -> None:
    multi = [10e-6, 11e-6, 45e-6, 38e-6]  # rung 3 noisier than rung 4
    single = [20e-6, 20.5e-6, 21e-6, 22e-6]
    got = wakeup_curve(GAPS, multi, single)
    assert got == pytest.approx((0.0, 0.5e-6, 26e-6, 26e-6))  # 34 at rung 3 capped by rung 4's 26
    assert wakeup_curve(GAPS, [5e-6, 4e-6, 5e-6, 5e-6], [9e-6, 9e-6, 9e-6, 9e-6]) == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        wakeup_curve((1e-6, 2e-6), (1.0, 1.0), (1.0, 1.0))


def test_excess_interpolates_and_names_latency_and_spin() -> None:
    assert float(WAKE.excess(0.0)) == 0.0
    assert float(WAKE.excess(1e-3)) == pytest.approx(25e-6)
    assert float(WAKE.excess(1.0)) == pytest.approx(30e-6)
    assert WAKE.latency_s == pytest.approx(30e-6)
    assert WAKE.spin_s == pytest.approx(4e-4)
    assert ThreadWakeup(2, GAPS, (0.0,) * 4).spin_s is None


def test_regions_pay_the_curve_at_the_serial_gap_before_them() -> None:
    # serial 500 us, parallel, parallel, serial 100 us, serial 100 us, parallel, serial 300 us (wraps)
    par = [False, True, True, False, False, True, False]
    ts = [500e-6, 1e-3, 1e-3, 100e-6, 100e-6, 2e-3, 300e-6]
    got = [float(x) for x in wakeup_extra(par, ts, WAKE)]
    want = [0.0, float(WAKE.excess(800e-6)), 0.0, 0.0, 0.0, float(WAKE.excess(200e-6)), 0.0]
    assert got == pytest.approx(want)
    # arrays: one entry per token count; a region that is serial at one count adds to the gap there
    par2 = [np.array([False, True]), np.asarray(True)]
    out = wakeup_extra(par2, [np.array([1e-3, 1e-3]), np.array([1e-3, 1e-3])], WAKE)
    assert out[1] == pytest.approx([float(WAKE.excess(1e-3)), 0.0])
    assert out[0] == pytest.approx([0.0, 0.0])


def test_layer_operators_pay_the_first_layers_gap_once() -> None:
    # embedding (serial 300 us), per layer x4: norm (serial 50 us), QKV (parallel), add (serial 50 us); LM head
    par = [False, False, True, False, True]
    ts = [300e-6, 50e-6, 1e-3, 50e-6, 1e-3]
    got = [float(x) for x in wakeup_extra(par, ts, WAKE, [1, 4, 4, 8, 1])]
    first, rest = float(WAKE.excess(350e-6)), float(WAKE.excess(100e-6))
    assert got == pytest.approx([0.0, 0.0, (first + 3 * rest) / 4, 0.0, float(WAKE.excess(50e-6))])
    with pytest.raises(ValueError):
        wakeup_extra(par, ts, WAKE, [1, 4])


def test_which_operators_run_as_parallel_regions() -> None:
    assert bool(runs_parallel("gemm", {"m": 1}))
    assert bool(runs_parallel("attn_decode", {}))
    assert list(runs_parallel("elementwise", {"numel": np.array([GRAIN_SIZE - 1, GRAIN_SIZE])})) == [False, True]


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ([1, 2], "device.thread_wakeup"),
        ({"threads": 2, "gaps_s": [0.0, 1e-3]}, "device.thread_wakeup.excess_s"),
        ({"threads": 1, "gaps_s": [0.0, 1e-3], "excess_s": [0.0, 1e-5]}, "device.thread_wakeup.threads"),
        ({"threads": 2, "gaps_s": [0.0, 1e-3], "excess_s": [0.0]}, "device.thread_wakeup.excess_s"),
        ({"threads": 2, "gaps_s": [1e-4, 1e-3], "excess_s": [0.0, 1e-5]}, "device.thread_wakeup.gaps_s"),
        ({"threads": 2, "gaps_s": [0.0, 1e-3], "excess_s": [2e-5, 1e-5]}, "device.thread_wakeup.excess_s"),
        ({"threads": 2, "gaps_s": [0.0, 1e-3], "excess_s": [0.0, "x"]}, "device.thread_wakeup.excess_s"),
    ],
)
def test_a_bad_section_names_its_key(raw: object, key: str) -> None:
    with pytest.raises(CalibrationError) as e:
        parse_thread_wakeup(raw, "p.yaml")
    assert e.value.key == key


def _profile_with_wakeup(tmp_path: Path, wake: dict | None) -> Profile:
    return Profile.load(shipped_cpu_profile_with(tmp_path / "prof", "thread_wakeup", wake), with_samples=False)


def test_a_profile_without_the_section_adds_nothing(tmp_path: Path) -> None:
    assert Profile.load(ROOT / "calibration" / "profiles" / "ci-vm-cpu", with_samples=False).thread_wakeup() is None


def test_profile_term_reaches_time_ops_and_the_step_tables_alike(tmp_path: Path) -> None:
    wake = {"threads": 2, "gaps_s": list(GAPS), "excess_s": [0.0, 10e-6, 20e-6, 30e-6],
            "openmp_env": {"OMP_WAIT_POLICY": "unset"}}  # fmt: skip
    plain = _profile_with_wakeup(tmp_path / "a", None)
    woken = _profile_with_wakeup(tmp_path / "b", wake)
    assert woken.thread_wakeup() == ThreadWakeup(2, GAPS, (0.0, 10e-6, 20e-6, 30e-6), (("OMP_WAIT_POLICY", "unset"),))
    spec = model_spec(ValidationConfig(layers=4, hidden=896, heads=14, kv_heads=2, ffn=4864, vocab=12000))
    dev = compute_device(plain)
    p = Precision(weights="bf16", activations="bf16", kv_cache="bf16")
    batch = 8
    ops = forward_ops(spec, np.ones(batch), np.full(batch, 300.0), precision=p)
    t0, t1 = time_ops(ops, dev, plain, "bf16"), time_ops(ops, dev, woken, "bf16")
    extra = total_time(t1) - total_time(t0)
    assert extra > 0.0
    # only parallel regions pay, each at most the latency
    for a, b in zip(t0, t1):
        d = b.time_s - a.time_s
        assert 0.0 <= d <= 30e-6 + 1e-12
        if d > 0:
            assert bool(runs_parallel(a.op.op_class, a.op.shape))
    # the simulator's step tables add the same for a decode step (rows = tokens)
    tabs = [compute_op_tables(IterationModel(spec, dev, e, p), batch + 1) for e in (plain, woken)]
    table_extra = sum(float(w[batch] - q[batch]) * m for q, w, m in zip(tabs[0], tabs[1], (spec.num_layers, 1, 1)))
    assert table_extra == pytest.approx(extra, rel=1e-9, abs=1e-12)


def test_notes_name_a_missing_term_and_a_different_wait_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    from simkit.calibrate import bench

    old = {"kind": "cpu", "threads": 2}
    note = bench.thread_wakeup_note(old, 2, "r10")
    assert note is not None and "'r10'" in note and "--threads 2" in note
    assert bench.thread_wakeup_note(old, 1, "r10") is None
    assert bench.thread_wakeup_note({**old, "thread_wakeup": {}}, 2, "r10") is None
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    rec = {**{k: "unset" for k in bench.OPENMP_ENV}, "OMP_WAIT_POLICY": "active"}
    dev = {"kind": "cpu", "openmp_env": rec, "thread_wakeup": {"threads": 2}}
    msg = bench.openmp_env_note(dev, 2, "r10a")
    assert msg is not None and "OMP_WAIT_POLICY: profile active, now unset" in msg and "thread wake-up" in msg


def test_run_start_warns_when_a_local_profile_was_measured_under_another_wait_policy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from simkit.calibrate import bench, probe

    prof = _profile_with_wakeup(tmp_path, None)
    if probe.fingerprint_check(prof, None).hardware_differs():
        pytest.skip("this machine is not the CI VM the shipped CPU profile describes")
    prof.device = {**prof.device, "threads": 2, "openmp_env": {**bench.openmp_env(), "OMP_WAIT_POLICY": "active"}}
    monkeypatch.setenv(probe.PROBE_ENV, "0")  # the speed probe is tested elsewhere
    monkeypatch.setattr(probe, "_DONE", {})
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    got = probe.startup_check(prof)
    assert len(got) == 1 and "OMP_WAIT_POLICY: profile active, now unset" in got[0]


def test_suite_measurement_is_a_profile_section() -> None:
    torch = pytest.importorskip("torch")
    from simkit.calibrate import bench

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        raw = bench.measure_thread_wakeup(2, rounds=2)
    finally:
        torch.set_num_threads(before)
    assert raw["threads"] == 2 and raw["openmp_env"] == bench.openmp_env()
    wake = parse_thread_wakeup(raw, "suite")  # gaps from 0, excess 0 there and non-decreasing
    assert wake.gaps_s == bench.WAKE_GAPS_S and wake.excess_s[0] == 0.0
    assert len(raw["median_after_gap_s"]) == len(raw["median_after_gap_1_thread_s"]) == len(bench.WAKE_GAPS_S)
