"""The host gap per iteration of a synchronous decode loop (simkit.calibrate.host_gap) and its
place in a CUDA calibration (the profile's host_overhead, source measured). No GPU: the CUDA
events are faked."""

from __future__ import annotations

import pandas as pd
import pytest

from simkit.calibrate import bench, host_gap
from simkit.errors import CalibrationError

torch = pytest.importorskip("torch")


def test_fit_recovers_per_iteration_and_per_sequence_terms():
    rows = [{"batch": b, "gap_s": 120e-6 + 2e-6 * b} for b in (1, 4, 16, 64)]
    h = host_gap.fit_host_overhead(rows, "test")
    assert h.per_iteration_s == pytest.approx(120e-6) and h.per_sequence_s == pytest.approx(2e-6) and h.source == "test"


def test_fit_keeps_both_terms_non_negative():
    falling = [{"batch": b, "gap_s": 100e-6 - 1e-6 * b} for b in (1, 8, 32)]
    h = host_gap.fit_host_overhead(falling, "s")
    assert h.per_sequence_s == 0.0 and h.per_iteration_s == pytest.approx((99 + 92 + 68) / 3 * 1e-6)
    steep = [{"batch": b, "gap_s": 10e-6 * b - 5e-6} for b in (1, 2, 64)]
    h = host_gap.fit_host_overhead(steep, "s")
    assert h.per_iteration_s == 0.0 and h.per_sequence_s > 0
    one = host_gap.fit_host_overhead([{"batch": 8, "gap_s": 50e-6}, {"batch": 8, "gap_s": 70e-6}], "s")
    assert (one.per_iteration_s, one.per_sequence_s) == (pytest.approx(60e-6), 0.0)
    with pytest.raises(CalibrationError, match="no measurements"):
        host_gap.fit_host_overhead([], "s")


def test_cpu_loop_measures_the_gap_around_the_step():
    rows = host_gap.measure_host_gap(torch, "cpu", (1, 3), iterations=3, hidden=16, vocab=50)
    assert [r["batch"] for r in rows] == [1, 3]
    for r in rows:
        assert r["iterations"] == 3 and 0 < r["device_s"] < r["wall_s"]
        assert r["gap_s"] == pytest.approx(r["wall_s"] - r["device_s"], rel=0.5, abs=1e-3)


class _FakeEvent:
    """torch.cuda.Event's timing API: elapsed_time in milliseconds."""

    recorded: list[str] = []

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.synced = False

    def record(self) -> None:
        _FakeEvent.recorded.append("record")

    def synchronize(self) -> None:
        self.synced = True

    def elapsed_time(self, end: _FakeEvent) -> float:
        assert end.synced  # waited for the end event before reading it
        return 0.25


def test_cuda_span_reads_the_events_in_seconds(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    span = host_gap.device_span(torch, "cuda")
    assert isinstance(span, host_gap.CudaSpan)
    span.start()
    span.stop()
    assert span.seconds() == pytest.approx(0.25e-3) and _FakeEvent.recorded[-2:] == ["record", "record"]


def test_loop_subtracts_the_device_time(monkeypatch):
    class Fixed:
        def start(self) -> None: ...
        def stop(self) -> None: ...
        def seconds(self) -> float:
            return 1e-6

    monkeypatch.setattr(host_gap, "device_span", lambda torch, device: Fixed())
    rows = host_gap.measure_host_gap(torch, "cpu", (2,), iterations=2, hidden=8, vocab=10)
    assert rows[0]["device_s"] == 1e-6 and rows[0]["gap_s"] == pytest.approx(rows[0]["wall_s"] - 1e-6)


@pytest.mark.parametrize("kw, match", [({"device": "tpu"}, "unknown device"), ({"iterations": 0}, "iterations >= 1"),
                                       ({"batch_sizes": (0,)}, "batch sizes >= 1")])  # fmt: skip
def test_bad_loop_settings_are_refused(kw, match):
    args = {"device": "cpu", "batch_sizes": (1,), "iterations": 1, **kw}
    with pytest.raises(CalibrationError, match=match):
        host_gap.measure_host_gap(torch, args["device"], args["batch_sizes"], args["iterations"], 8, 10)


def test_cuda_suite_writes_a_measured_host_overhead(monkeypatch, tmp_path):
    from simkit.cost.profile import Profile
    from tests.conftest import load_benchmark

    samples, device = load_benchmark("fidelity").load_vidur_profile("a40")
    ew = samples[samples.op_class == "elementwise"].head(300)
    gap = [{"batch": 1, "wall_s": 3e-4, "device_s": 1e-4, "gap_s": 2e-4, "iterations": 40},
           {"batch": 64, "wall_s": 5e-4, "device_s": 1.5e-4, "gap_s": 3.26e-4, "iterations": 40}]  # fmt: skip
    facts = {**device, "name": "NVIDIA Fake", "threads": 1, "torch_version": "2.x", "host_gap": gap}
    monkeypatch.setattr(bench, "measure_suite", lambda *a, **k: (pd.DataFrame(ew), facts))
    prof = bench.run_suite("cuda", out_dir=tmp_path / "p", progress=lambda m: None)
    assert prof.host.per_iteration_s == pytest.approx(198e-6) and prof.host.per_sequence_s == pytest.approx(2e-6)
    again = Profile.load(tmp_path / "p")
    assert again.host_overhead() == prof.host and again.host.source.startswith("measured by simkit calibrate on NVIDIA Fake")


def test_cli_prints_the_fit_and_refuses_bad_input(capsys):
    assert host_gap.main(["--device", "cpu", "--iterations", "1", "--batch-sizes", "1,2", "--hidden", "8", "--vocab", "10"]) == 0
    out = capsys.readouterr().out
    assert "batch   2:" in out and "per iteration +" in out
    assert host_gap.main(["--device", "cpu", "--iterations", "0"]) == 2
    assert "iterations >= 1" in capsys.readouterr().err
    assert host_gap.main(["--device", "cpu", "--threads", "0"]) == 2
    assert "--threads: expected >= 1" in capsys.readouterr().err
