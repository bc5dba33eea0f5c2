"""A small-budget run of the fuzz harness (benchmarks/fuzz.py; docs/fuzzing.md has the long run).

Hypothesis draws case indices; each case mutates a shipped scenario, a trace, a model file, the
scenario text or a command line and must end in a clean error or in a result that holds the
invariants, within the time budget."""

import importlib.util
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("simkit_fuzz", ROOT / "benchmarks" / "fuzz.py")
assert _spec is not None and _spec.loader is not None
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

BUDGET_S = 20.0


def _check(case: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        res = fuzz.run_case(case, Path(tmp), BUDGET_S)
    detail = f"case {case['index']} ({', '.join(case['notes'])}): {res.get('cause')} {res.get('message', '')}"
    assert res["outcome"] in ("clean", "ok"), detail + "\n" + res.get("traceback", "")
    if res["outcome"] == "clean":
        assert res["named"], "a clean error that names no file, key or line: " + detail
    return res


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.integers(0, 10**9))
def test_fuzzed_inputs_give_clean_errors_or_sound_results(index):
    _check(fuzz.make_case(1, index))


def test_cases_are_reproducible():
    a, b = fuzz.make_case(3, 77), fuzz.make_case(3, 77)
    assert a == b or repr(a) == repr(b)  # NaN != NaN, so compare the text when floats are not equal


@pytest.mark.parametrize("kind", ["scenario", "trace", "model", "yaml", "cli"])
def test_every_kind_of_case_runs(kind):
    index = next(i for i in range(10_000) if fuzz.make_case(0, i)["kind"] == kind)
    _check(fuzz.make_case(0, index))


def test_invariant_checker_catches_a_broken_result(scenario):
    from simkit.simulate import simulate

    res = simulate(scenario())
    assert fuzz.check_invariants(res) == []
    res.table.first_token[0] = res.table.finish[0] + 1.0  # a first token after the last one
    res.summary["output_tokens_per_s"] = 1e12
    res.summary["kv_utilization_peak"] = 1.5
    found = fuzz.check_invariants(res)
    assert "TTFT > E2E" in found
    assert "output tok/s above the peak-FLOP/s bound" in found
    assert "kv_utilization_peak > 1" in found
