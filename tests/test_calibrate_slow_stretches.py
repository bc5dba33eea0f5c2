"""The CPU calibration's re-measurement of samples taken while the machine ran slow
(simkit.calibrate.bench.SlowStretches), on a pure-Python fake machine whose speed changes over
time: the sentinel and the samples run on one fake clock, slowed by the same factor while the
machine is in a slow stretch."""

from __future__ import annotations

from typing import Any

import pytest

from simkit.calibrate import bench


class Machine:
    """A fake clock; work of ``base`` seconds takes ``base * factor`` at a slow moment."""

    def __init__(self, slow: list[tuple[float, float, float]]) -> None:
        self.t = 0.0
        self.slow = slow

    def factor(self) -> float:
        return next((f for a, b, f in self.slow if a <= self.t < b), 1.0)

    def run(self, base: float) -> None:
        self.t += base * self.factor()


def base_of(i: int) -> float:
    return 0.05 * (1 + i % 5)


def suite(m: Machine, n: int, budget_s: float) -> tuple[bench.SlowStretches, list[dict[str, Any]]]:
    """``n`` samples measured one after the other with the sentinel ticking before each (as
    ``Bench.measure`` does), each registered with a redo that measures it again."""
    s = bench.SpeedSentinel({"bf16_gemm": lambda: m.run(1e-3)}, now=lambda: m.t, every_s=2.0, wall=lambda: m.t)
    slow = bench.SlowStretches(s, budget_s=budget_s, wall=lambda: m.t)
    rows: list[dict[str, Any]] = []

    def measure(i: int) -> tuple[dict[str, Any], tuple[float, float]]:
        s.tick()
        t0 = m.t
        m.run(base_of(i))
        return {"i": i, "time_s": m.t - t0}, (t0, m.t)

    for i in range(n):
        row, window = measure(i)
        rows.append(row)
        slow.add(i, "bf16_gemm", window, lambda i=i: measure(i))
    return slow, rows


def test_samples_of_a_slow_stretch_are_measured_again_at_the_steady_speed() -> None:
    m = Machine([(10.0, 20.0, 1.3)])
    slow, rows = suite(m, 200, budget_s=100.0)
    assert m.t > 25.0  # the suite outlasted the slow stretch
    assert sum(r["time_s"] > 1.01 * base_of(r["i"]) for r in rows) > 50  # measured slow
    f = slow.run(rows)
    assert f["flagged"] >= 50 and f["kept_slow"] == 0
    assert f["replaced"] == f["flagged"] == f["remeasured"]  # each at a steady moment at the first try
    for r in rows:
        assert r["time_s"] == pytest.approx(base_of(r["i"]), rel=1e-9)
        assert r["slowdown"] <= 1.0 + bench.SLOW_MOMENT_THRESHOLD
    assert f["reference_s"]["bf16_gemm"] == pytest.approx(1e-3)
    assert f["replaced_time_ratio"]["p90"] <= 1.0 and f["replaced_time_ratio"]["p10"] == pytest.approx(1 / 1.3, rel=1e-3)
    lines: list[str] = []
    bench.slow_stretch_report(f, lines.append)
    assert len(lines) == 1 and f"{f['flagged']} of 200 samples" in lines[0] and "0 kept slow" in lines[0]


def test_samples_at_steady_moments_are_left_alone() -> None:
    m = Machine([])
    slow, rows = suite(m, 100, budget_s=100.0)
    before = [dict(r) for r in rows]
    f = slow.run(rows)
    assert (f["flagged"], f["remeasured"], f["replaced"], f["kept_slow"]) == (0, 0, 0, 0)
    assert [r["time_s"] for r in rows] == [r["time_s"] for r in before]
    assert all(r["slowdown"] == 1.0 for r in rows) and f["replaced_time_ratio"] is None


def test_a_machine_still_slow_at_the_end_keeps_its_samples_and_warns() -> None:
    m = Machine([(10.0, 20.0, 1.3)])
    slow, rows = suite(m, 200, budget_s=100.0)
    m.slow.append((m.t, 1e9, 1.3))  # slow again for the whole re-measurement
    before = [r["time_s"] for r in rows]
    f = slow.run(rows)
    assert f["flagged"] > 50 and f["replaced"] == 0 and f["kept_slow"] == f["flagged"]
    assert f["remeasured"] == bench.SLOW_REMEASURE_TRIES * f["flagged"]
    assert [r["time_s"] for r in rows] == before  # the first measurements kept: none was steadier
    lines: list[str] = []
    bench.slow_stretch_report(f, lines.append)
    assert lines[1].startswith("WARNING: this profile is not trustworthy") and "calibrate again" in lines[1]
    note = bench.speed_note({"speed_sentinel": {"slow_stretches": f}}, "moved")
    assert note is not None and f"'moved' kept {f['kept_slow']} of 200 samples" in note


def test_the_budget_bounds_the_re_measurement() -> None:
    m = Machine([(10.0, 20.0, 1.3)])
    slow, rows = suite(m, 200, budget_s=2.0)
    t0 = m.t
    f = slow.run(rows)
    assert 0 < f["remeasured"] < f["flagged"] and f["kept_slow"] == f["flagged"] - f["replaced"] > 0
    assert m.t - t0 < 2.0 + 2 * 0.25 + 0.05  # stops at the first sample past the budget
    assert f["spent_s"] >= 2.0


def test_speed_note_only_for_profiles_that_kept_many_slow_samples() -> None:
    f = {"threshold": 0.05, "samples": 100, "kept_slow": 5}
    assert bench.speed_note({"speed_sentinel": {"slow_stretches": f}}, "ok") is None
    assert bench.speed_note({"speed_sentinel": {"slow_stretches": {**f, "kept_slow": 11}}}, "bad") is not None
    assert bench.speed_note({"speed_sentinel": {"fp32_gemm": {}}}, "old") is None  # measured before
    assert bench.speed_note({}, "none") is None


def test_the_sentinel_records_its_time_series() -> None:
    m = Machine([(3.0, 5.0, 2.0)])
    s = bench.SpeedSentinel({"fp32_gemm": lambda: m.run(1e-3)}, now=lambda: m.t, every_s=2.0, wall=lambda: m.t)
    for _ in range(4):
        s.tick()
        m.t += 2.0
    f = s.facts()["fp32_gemm"]
    assert f["readings"] == 4 and f["t_s"] == pytest.approx([0.0, 2.0, 4.0, 6.0], abs=0.021)
    assert f["series_s"] == pytest.approx([1e-3, 1e-3, 2e-3, 1e-3])


def test_a_few_percent_slower_is_re_measured_but_does_not_call_the_profile_untrustworthy() -> None:
    """A stretch 7% slow (above the 5% re-measurement threshold, below the warning's 10%) still slow
    at the end: its samples are kept and counted, and neither the calibration nor validate warns."""
    m = Machine([(10.0, 20.0, 1.07)])
    slow, rows = suite(m, 200, budget_s=100.0)
    m.slow.append((m.t, 1e9, 1.07))
    f = slow.run(rows)
    assert f["kept_slow"] > 0.1 * f["samples"] and f["kept_much_slower"] == 0
    lines: list[str] = []
    bench.slow_stretch_report(f, lines.append)
    assert len(lines) == 1 and lines[0].startswith("slow stretches:")
    assert bench.speed_note({"speed_sentinel": {"slow_stretches": f}}, "steady enough") is None
    # a profile written before the warning had its own level: every kept sample counts
    old = {k: v for k, v in f.items() if k not in ("kept_much_slower", "warn_slowdown")}
    assert bench.speed_note({"speed_sentinel": {"slow_stretches": old}}, "older") is not None
