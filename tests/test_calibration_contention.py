"""The calibration's per-sample contention check (simkit.calibrate.bench.ContentionCheck): a
wall-clock sample measured while other work took a core its threads needed is measured again,
the least contended try is kept and its other load recorded. Deterministic: the load readings are
scripted, nothing is timed."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from simkit.calibrate import bench
from simkit.calibrate.bench import ContentionCheck
from simkit.calibrate.samples import Measurement, make_row


def scripted(readings: list[tuple[float, float, float]]) -> Iterator[tuple[float, float, float]]:
    return iter(readings)


def window(t0: float, wall: float, other_cores: float, own_cores: float = 2.0) -> list[tuple[float, float, float]]:
    """Two readings (start, end) of a measurement of ``wall`` seconds during which this process
    used ``own_cores`` and other work ``other_cores``."""
    busy0, own0 = 100.0 + 10 * t0, 50.0 + 10 * t0
    return [(t0, busy0, own0), (t0 + wall, busy0 + (own_cores + other_cores) * wall, own0 + own_cores * wall)]


def check(readings: list[tuple[float, float, float]], *, logical_cpus: int = 2, threads: int = 2, budget_s: float = 10.0) -> ContentionCheck:
    it = scripted(readings)
    return ContentionCheck(logical_cpus, threads, budget_s, read=lambda: next(it), tick_s=0.01)


def runs(values: list[float]) -> tuple[list[int], object]:
    calls: list[int] = []

    def run() -> Measurement:
        calls.append(1)
        return Measurement([values[len(calls) - 1]])

    return calls, run


def test_an_uncontended_sample_is_measured_once_and_records_its_load() -> None:
    c = check(window(0.0, 0.5, 0.1))
    calls, run = runs([1.0])
    m = c.measure(run)  # type: ignore[arg-type]
    assert len(calls) == 1 and m.median == 1.0
    assert m.other_cores == pytest.approx(0.1)
    assert (c.checked, c.contended, c.remeasured, c.still_contended) == (1, 0, 0, 0)


def test_a_contended_sample_is_measured_again_and_the_clean_try_kept() -> None:
    c = check(window(0.0, 0.5, 1.0) + window(1.0, 0.5, 0.0))
    calls, run = runs([2.0, 1.0])
    m = c.measure(run)  # type: ignore[arg-type]
    assert len(calls) == 2 and m.median == 1.0 and m.other_cores == pytest.approx(0.0)
    assert (c.contended, c.remeasured, c.still_contended) == (1, 1, 0)
    assert c.spent_s == pytest.approx(0.5)


def test_a_sample_contended_every_time_keeps_the_least_contended_try() -> None:
    c = check(window(0.0, 0.5, 1.0) + window(1.0, 0.5, 0.6) + window(2.0, 0.5, 0.9))
    calls, run = runs([3.0, 2.0, 2.5])
    m = c.measure(run)  # type: ignore[arg-type]
    assert len(calls) == 1 + bench.CONTENTION_RETRIES == 3
    assert m.median == 2.0 and m.other_cores == pytest.approx(0.6)
    assert (c.contended, c.remeasured, c.still_contended) == (1, 2, 1)


def test_the_retry_budget_stops_re_measuring() -> None:
    c = check(window(0.0, 0.5, 1.0) + window(1.0, 0.5, 1.0), budget_s=0.4)
    calls, run = runs([3.0, 2.0])
    c.measure(run)  # type: ignore[arg-type]
    assert len(calls) == 2  # the first re-measurement spent the budget
    assert c.still_contended == 1 and c.spent_s == pytest.approx(0.5)


def test_spare_cores_are_not_contention() -> None:
    # one torch thread on two CPUs: another process on the other core leaves the sample alone
    c = check(window(0.0, 0.5, 1.0, own_cores=1.0), threads=1)
    _, run = runs([1.0])
    c.measure(run)  # type: ignore[arg-type]
    assert c.spare_cores == 1 and c.contended == 0
    # ... two busy cores elsewhere take the sample's core too
    c = check(window(0.0, 0.5, 1.9, own_cores=1.0) + window(1.0, 0.5, 0.0, own_cores=1.0), threads=1)
    calls, run = runs([2.0, 1.0])
    assert c.measure(run).median == 1.0 and c.contended == 1  # type: ignore[arg-type]


def test_counter_resolution_is_not_contention() -> None:
    # 0.03 s of other work over a 0.05 s sample: within one tick per CPU at each end
    c = check([(0.0, 100.0, 50.0), (0.05, 100.13, 50.1)])
    _, run = runs([1.0])
    c.measure(run)  # type: ignore[arg-type]
    assert c.contended == 0


def test_without_load_counters_the_sample_is_kept_unchecked() -> None:
    c = ContentionCheck(2, 2, 10.0, read=lambda: None)
    _, run = runs([1.0])
    m = c.measure(run)  # type: ignore[arg-type]
    assert m.median == 1.0 and m.other_cores is None


def test_the_sample_row_records_other_cores() -> None:
    m = Measurement([1e-3, 2e-3], other_cores=0.1234)
    row = make_row("gemm", "qkv_proj", "bf16", m, flops=1.0, bytes_moved=1.0, source="test")
    assert row["other_cores"] == 0.123
    assert "other_cores" in bench.OPTIONAL_COLUMNS
    plain = make_row("gemm", "qkv_proj", "bf16", Measurement([1e-3]), flops=1.0, bytes_moved=1.0, source="test")
    assert plain["other_cores"] != plain["other_cores"]  # NaN: not checked


def test_bench_measure_goes_through_the_check() -> None:
    class FakeTimer:
        def measure(self, fn: object, **kw: object) -> Measurement:
            return Measurement([1.0])

    b = bench.Bench(None, "cpu", bench.SIZES["tiny"], FakeTimer(), "test", random.Random(0))  # type: ignore[arg-type]
    b.contention = check(window(0.0, 0.5, 1.0) + window(1.0, 0.5, 0.0))
    m = b.measure(lambda: None)
    assert m.other_cores == pytest.approx(0.0) and b.contention.remeasured == 1
    facts = b.contention.facts()
    assert facts == {"margin_cores": 0.25, "spare_cores": 0, "samples_checked": 1, "contended": 1, "remeasured": 1,
                     "still_contended": 0, "retry_s": 0.5}  # fmt: skip


@pytest.mark.parametrize(("args", "expected"), [(["--rounds", "1"], "--rounds must be >= 2"), (["--threads", "1"], "--threads takes 2..")])
def test_thread_speedup_refuses_bad_options(args: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import load_benchmark

    mod = load_benchmark("thread_speedup")
    assert mod.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err


def test_validate_warns_about_a_profile_that_kept_contended_samples() -> None:
    c = {"samples_checked": 803, "contended": 777, "remeasured": 67, "still_contended": 777, "retry_s": 15.0}
    note = bench.contention_note({"kind": "cpu", "contention": c}, "busy")
    assert note is not None and "'busy' kept 777 of 803 samples" in note and "--threads 1 --clock cpu" in note
    assert bench.contention_note({"kind": "cpu", "contention": {**c, "still_contended": 0}}, "ok") is None
    assert bench.contention_note({"kind": "cpu"}, "old") is None  # measured before the check


def test_the_speed_sentinel_reads_every_few_seconds_and_reports_its_spread() -> None:
    wall = [0.0]
    clock = [0.0]
    speed = iter([1.0] + [1.0] * 3 + [1.3] * 3 + [1.0] * 3)  # warm-up, then 3 calls per reading

    def gemm() -> None:
        clock[0] += 1e-3 * next(speed)

    s = bench.SpeedSentinel({"bf16_gemm": gemm}, now=lambda: clock[0], every_s=2.0, wall=lambda: wall[0])
    for t in (0.0, 0.5, 1.9, 2.1, 3.0, 4.5):
        wall[0] = t
        s.tick()
    assert s.readings["bf16_gemm"] == pytest.approx([1e-3, 1.3e-3, 1e-3])  # at 0.0, 2.1 and 4.5 s
    f = s.facts()
    assert f["bf16_gemm"]["readings"] == 3 and f["bf16_gemm"]["median_s"] == pytest.approx(1e-3)
    assert f["bf16_gemm"]["spread"] == pytest.approx(1.24e-3 / 1e-3 - 1.0, abs=1e-3)
    lines: list[str] = []
    bench._sentinel_report(s, lines.append)
    assert lines[0].startswith("machine speed over the run") and "bf16 24.0% over 3" in lines[0]
    assert lines[1].startswith("warning: the machine's speed moved by 24%")


def test_an_uncontended_retry_is_kept_even_if_a_shorter_contended_try_read_less() -> None:
    # a 1 s first try at 0.5 cores elsewhere is contended (0.5 s > 0.25 + 0.04); a 0.1 s retry at
    # 0.6 cores is not (0.06 s <= 0.025 + 0.04: within the counters' resolution)
    c = check(window(0.0, 1.0, 0.5) + window(2.0, 0.1, 0.6))
    calls, run = runs([2.0, 1.0])
    m = c.measure(run)  # type: ignore[arg-type]
    assert len(calls) == 2 and m.median == 1.0 and m.other_cores == pytest.approx(0.6)
    assert (c.contended, c.still_contended) == (1, 0)
