"""The host first-touch rate: the calibration microbenchmark's fit and recording
(simkit/calibrate/host_memory.py), where a run takes the rate from (calibration profile, node
preset) and the refusal where neither gives it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from simkit.calibrate.host_memory import describe_first_touch, fit_first_touch, thp_mode, time_first_touch
from simkit.cost.offload import OffloadCompute, host_first_touch
from simkit.cost.profile import Profile, efficiency_sources
from simkit.errors import CalibrationError, SimkitError
from simkit.scenario import scenario_from_dict
from simkit.search.offload import optimize
from simkit.simulate import simulate
from tests.conftest import make_scenario

MIB = 2**20


def _rows(rates: dict[int, float], fixed: float = 0.01, reused_bw: float = 10e9, sizes=(128 * MIB, 512 * MIB)) -> list[dict[str, float]]:
    """Rows as time_first_touch writes them, for a host whose fresh tensors cost ``fixed`` +
    bytes / rate more than reused ones (two repetitions each)."""
    return [
        {"threads": float(t), "bytes": float(s), "fresh_s": s / reused_bw + fixed + s / bw, "reused_s": s / reused_bw}
        for t, bw in rates.items() for s in sizes for _ in range(2)
    ]


def test_the_fit_recovers_the_first_touch_rate_per_thread_count():
    ft = fit_first_touch(_rows({1: 1.5e9, 2: 2.5e9}), threads=2)
    assert ft["threads"] == 2 and ft["bandwidth"] == pytest.approx(2.5e9, rel=1e-9)
    one, two = ft["by_threads"]
    assert (one["threads"], two["threads"]) == (1, 2)
    assert one["first_touch_bandwidth"] == pytest.approx(1.5e9, rel=1e-9)
    assert one["fixed_s"] == pytest.approx(0.01, rel=1e-6)
    assert one["fit_error"]["median_ape"] == pytest.approx(0.0, abs=1e-9)
    # the plain write rates of the largest size, for contrast
    s = 512 * MIB
    assert one["reused_write_bandwidth"] == pytest.approx(10e9)
    assert one["fresh_write_bandwidth"] == pytest.approx(s / (s / 10e9 + 0.01 + s / 1.5e9))
    # the profile's thread count picks the rate a run uses
    assert fit_first_touch(_rows({1: 1.5e9, 2: 2.5e9}), threads=1)["bandwidth"] == pytest.approx(1.5e9, rel=1e-9)
    line = describe_first_touch({**ft, "transparent_hugepage": "madvise"})
    assert line.startswith("host first-touch rate 2.50 GB/s at 2 thread(s)") and "madvise" in line


def test_the_fit_refuses_what_it_cannot_fit():
    with pytest.raises(CalibrationError, match="two sizes"):
        fit_first_touch(_rows({1: 1e9}, sizes=(128 * MIB,)), threads=1)
    with pytest.raises(CalibrationError, match="2 thread"):
        fit_first_touch(_rows({1: 1e9}), threads=2)
    rows = _rows({1: 1e9})
    rows[0]["fresh_s"] = rows[0]["reused_s"] * 0.9
    with pytest.raises(CalibrationError, match="not slower"):
        fit_first_touch(rows, threads=1)
    with pytest.raises(CalibrationError, match="no first-touch"):
        fit_first_touch([], threads=1)


class _FakeTorch:
    """What time_first_touch asks of torch, recording the calls."""

    float32 = "float32"

    def __init__(self) -> None:
        self.threads = 7
        self.calls: list[tuple[str, Any]] = []

    def get_num_threads(self) -> int:
        return self.threads

    def set_num_threads(self, n: int) -> None:
        self.threads = n
        self.calls.append(("threads", n))

    def empty(self, numel: int, dtype: str) -> Any:
        self.calls.append(("empty", numel))
        return SimpleNamespace(fill_=lambda v: self.calls.append(("fill", v)))


def test_the_timings_cover_every_thread_count_size_and_repetition_and_restore_the_threads():
    torch = _FakeTorch()
    ticks = iter(range(1000))
    rows = time_first_touch(torch, [64 * MIB, 128 * MIB], [1, 2], reps=3, clock=lambda: float(next(ticks)))
    assert len(rows) == 2 * 2 * 3
    assert {(r["threads"], r["bytes"]) for r in rows} == {(t, s) for t in (1.0, 2.0) for s in (64.0 * MIB, 128.0 * MIB)}
    assert all(r["fresh_s"] == 1.0 and r["reused_s"] == 1.0 for r in rows)  # one tick each on the fake clock
    assert torch.threads == 7
    # per size: one reused buffer written once before timing, then a new tensor per repetition
    assert sum(1 for c in torch.calls if c[0] == "empty") == 2 * 2 * (1 + 3)


def test_thp_mode_reads_the_bracketed_setting(tmp_path: Path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert thp_mode(f) == "madvise"
    assert thp_mode(tmp_path / "missing") == "unknown"


class _Prof:
    """A calibration profile as host_first_touch sees it."""

    def __init__(self, device: dict[str, Any] | None) -> None:
        self.name = "cpu-prof"
        self.path = Path("/profiles/cpu-prof/profile.yaml")
        self._device = device

    def measured_device(self) -> dict[str, Any] | None:
        return self._device


def test_the_profile_measured_on_the_machine_takes_precedence_over_the_preset():
    preset = SimpleNamespace(host_first_touch_bandwidth=20e9)
    prof = _Prof({"host_first_touch": {"bandwidth": 1.25e9, "threads": 2}})
    rate, src = host_first_touch(preset, prof)  # type: ignore[arg-type]
    assert rate == 1.25e9 and "calibration profile 'cpu-prof'" in src and "2 thread" in src
    # a profile without the measurement (older, or measured on a GPU): the preset's
    rate, src = host_first_touch(preset, _Prof({"threads": 2}))  # type: ignore[arg-type]
    assert rate == 20e9 and "node preset" in src
    assert host_first_touch(preset, None)[0] == 20e9  # type: ignore[arg-type,index]
    # neither: nothing to price fresh temporaries with
    assert host_first_touch(SimpleNamespace(host_first_touch_bandwidth=None), _Prof(None)) is None  # type: ignore[arg-type]
    assert host_first_touch(None, None) is None
    for bad in (0, -1.0, "fast", True, float("nan"), None):
        with pytest.raises(CalibrationError, match=r"device\.host_first_touch\.bandwidth"):
            host_first_touch(None, _Prof({"host_first_touch": {"bandwidth": bad}}))  # type: ignore[arg-type]


def test_the_simulator_prices_fresh_temporaries_at_the_resolved_rate():
    model = SimpleNamespace(num_heads=64, num_kv_heads=64, d_head=128)
    cost = SimpleNamespace(model=model, precision=SimpleNamespace(kv_bytes=2.0))
    cpu = SimpleNamespace(efficiency=_Prof({"host_first_touch": {"bandwidth": 2e9, "threads": 2}}))
    measured = SimpleNamespace(cpu_attention_flops=10e9, host_first_touch_bandwidth=20e9)
    kv = 96 * 528.0
    oc = OffloadCompute(cost, cpu, measured, 100e9)  # type: ignore[arg-type]
    extra = oc.cpu_decode_attention(96, kv, False, True) - oc.cpu_decode_attention(96, kv, False)
    assert extra == pytest.approx(2 * 64 * 128 * kv * 4.0 / 2e9)


def _fresh_run(hardware: dict[str, Any] | str, model: str = "opt-30b") -> dict[str, Any]:
    off = {"weights": {"gpu": 0.0, "cpu": 1.0}, "kv_cache": {"gpu": 0.0, "cpu": 1.0}, "gpu_batch_size": 16,
           "cpu_attention": True, "pinned": False, "host_temporaries": "fresh"}
    data = make_scenario(hardware=hardware, model=model,
                         workload={"batch": {"num_prompts": 16, "input_tokens": 512, "output_tokens": 4}})
    data["plan"].update({"batching": {"policy": "static"}, "offload": off})
    return data


def test_a_run_names_where_its_first_touch_rate_comes_from():
    pre = simulate(scenario_from_dict(_fresh_run("lambda-a6000-workstation")))
    assert "host first-touch rate 20 GB/s from node preset" in pre.summary["calibration"]
    # the same machine with the CI VM's host CPU, whose shipped profile measured the rate
    ci = {"preset": "lambda-a6000-workstation", "cpu": "generic-2core-vm"}
    data = _fresh_run(ci)
    data["calibration"] = "auto"
    res = simulate(scenario_from_dict(data))
    assert "from calibration profile 'ci-vm-cpu' (device.host_first_touch" in res.summary["calibration"]
    # the note names no second efficiency source (studies and searches read the text: efficiency_sources)
    assert efficiency_sources(res.summary["calibration"]) == [(None, "datasheet defaults")]
    assert res.summary["offload_compute_s"]["cpu_attention"] > pre.summary["offload_compute_s"]["cpu_attention"]
    # the placement optimiser prices the plans it ranks at the same rate
    seen: list[tuple[float, str] | None] = []
    real = OffloadCompute.first_touch

    def spy(self: OffloadCompute) -> tuple[float, str] | None:
        seen.append(real(self))
        return seen[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(OffloadCompute, "first_touch", spy)
        optimize(scenario_from_dict(data), prompt_len=512, gen_len=4, top=5, confirm=0)
    rate = Profile.load("calibration/profiles/ci-vm-cpu").device["host_first_touch"]["bandwidth"]
    assert seen and all(r is not None and r[0] == rate and "'ci-vm-cpu'" in r[1] for r in seen)
    # a run without fresh temporaries says nothing of the rate
    ws = {**data, "plan": {**data["plan"], "offload": dict(data["plan"]["offload"])}}
    ws["plan"]["offload"]["host_temporaries"] = "workspace"
    assert "first-touch" not in simulate(scenario_from_dict(ws)).summary["calibration"]


def test_fresh_temporaries_are_refused_without_a_rate_and_on_a_cpu_plan():
    # the T4 VM's preset gives none and no calibration profile of its CPU measured one
    with pytest.raises(SimkitError, match="host_first_touch_bandwidth.*no calibration profile"):
        simulate(scenario_from_dict(_fresh_run("gcp-t4-vm")))
    # a profile of the CPU without the measurement (the CI VM's, with its rate taken out)
    prof = Profile.load("calibration/profiles/ci-vm-cpu")
    dev = {k: v for k, v in prof.device.items() if k != "host_first_touch"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Profile, "measured_device", lambda self: dev)
        data = _fresh_run({"preset": "gcp-t4-vm", "cpu": "generic-2core-vm"})
        data["calibration"] = "auto"
        with pytest.raises(SimkitError, match="profile 'ci-vm-cpu' has no device.host_first_touch"):
            simulate(scenario_from_dict(data))
    cpu_plan = _fresh_run("lambda-a6000-workstation", model="opt-6.7b")
    cpu_plan["plan"]["execution"] = {"device": "cpu"}
    with pytest.raises(SimkitError, match="computes on the CPU"):
        simulate(scenario_from_dict(cpu_plan))
