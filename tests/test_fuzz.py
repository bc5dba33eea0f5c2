"""A small-budget run of the fuzz harness (benchmarks/fuzz.py; docs/fuzzing.md has the long run).

Hypothesis draws case indices; each case mutates a shipped scenario, a trace, a model file, the
scenario text or a command line (``inputs``), or a study file, a search file, an offload-plan
command line or a run/study/search folder given to ``simkit report`` (``faces``), and must end in
a clean error or in a result that holds the invariants, within the time budget."""

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


def _check(case: dict, parent: Path | None = None) -> dict:
    """Run ``case``; face cases run under ``parent`` so that the run, study and search folders a
    report case copies are made once per session."""
    if parent is not None:
        res = fuzz.run_case(case, parent / str(case["index"]), BUDGET_S)
    else:
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
    _check(fuzz.make_case(1, index, "inputs"))


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("faces")


@pytest.mark.slow
@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.integers(0, 10**9))
def test_fuzzed_faces_give_clean_errors_or_sound_results(faces_dir, index):
    """Study and search files, offload-plan command lines and report folders (the --kinds faces cases)."""
    _check(fuzz.make_case(1, index, "faces"), faces_dir)


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.integers(0, 10**9))
def test_fuzzed_profiles_give_clean_errors_or_sound_results(faces_dir, index):
    """Calibration profile folders (corrupted), SIMKIT_PROFILE_PATH/XDG_DATA_HOME, calibrate list,
    validate --profile, calibrate/validate command lines (the --kinds profile cases)."""
    _check(fuzz.make_case(1, index, "profile"), faces_dir)


def test_profile_cases_stop_before_measuring(faces_dir):
    """A valid `simkit calibrate` line and a valid `simkit validate` run reach the point where they
    would start timing torch, and stop there (outcome ok), well within the budget."""
    import time

    for argv in (["calibrate", "--device", "cpu", "--out", "@DIR@/cal", "--catalog", "generic-2core-vm"],
                 ["validate", "--profile", str(fuzz.PROFILES / "ci-vm-cpu"), "--force", "--layers", "1", "--hidden", "128",
                  "--heads", "2", "--kv-heads", "1", "--ffn", "256", "--vocab", "256", "--batch-sizes", "1",
                  "--context-lens", "16"]):  # fmt: skip
        case = {"kind": "profile", "index": 0, "notes": [argv[0]], "files": {}, "invalid": False,
                "env": {"XDG_DATA_HOME": "@DIR@/xdg", "SIMKIT_SPEED_PROBE": "0"}, "steps": [{"argv": argv, "measures": True}]}  # fmt: skip
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            res = fuzz.run_case(case, Path(tmp), BUDGET_S)
        assert res["outcome"] == "ok", res
        assert time.perf_counter() - t0 < BUDGET_S


def test_a_negative_thread_count_is_flagged_when_accepted(faces_dir, monkeypatch):
    """The harness flags an invalid argument a command accepted (here: check_args made to accept all)."""
    import simkit.calibrate.cli_calibrate as cc

    monkeypatch.setattr(cc, "check_args", lambda a: (a.out or "x", None))
    case = {"kind": "profile", "index": 0, "notes": ["calibrate-args"], "files": {}, "invalid": True,
            "env": {"XDG_DATA_HOME": "@DIR@/xdg"}, "steps": [{"argv": ["calibrate", "--device", "cpu", "--threads", "-1"], "measures": True}]}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        assert fuzz.run_case(case, Path(tmp), BUDGET_S)["outcome"] == "accepted"


@pytest.mark.parametrize("kinds", fuzz.KIND_SETS)
def test_cases_are_reproducible(kinds):
    for index in (77, 78, 79):
        a, b = fuzz.make_case(3, index, kinds), fuzz.make_case(3, index, kinds)
        assert a == b or repr(a) == repr(b)  # NaN != NaN, so compare the text when floats are not equal


def test_all_kinds_keep_the_inputs_cases_of_earlier_runs():
    """--kinds all draws face cases from their own stream, and profile cases from another: every
    other index is the inputs case earlier runs (and docs/fuzzing.md's replays) had, and every face
    case is the one earlier runs of all kinds had at that index."""
    kinds = []
    profiles = 0
    for index in range(400):
        case = fuzz.make_case(5, index, "all")
        kinds.append(case["kind"] in fuzz.FACE_KINDS)
        profiles += case["kind"] in fuzz.PROFILE_KINDS
        if kinds[-1]:
            assert repr(case) == repr(fuzz._face_case(5, index))
        elif case["kind"] in fuzz.PROFILE_KINDS:
            assert repr(case) == repr(fuzz.make_case(5, index, "profile"))
        else:
            assert repr(case) == repr(fuzz.make_case(5, index, "inputs"))
    assert 0.15 < sum(kinds) / len(kinds) < 0.45
    assert 0.02 < profiles / len(kinds) < 0.15


@pytest.mark.parametrize("kind", [*fuzz.INPUT_KINDS, *fuzz.FACE_KINDS, *fuzz.PROFILE_KINDS])
def test_every_kind_of_case_runs(kind, faces_dir):
    kinds = "faces" if kind in fuzz.FACE_KINDS else "profile" if kind in fuzz.PROFILE_KINDS else "inputs"
    index = next(i for i in range(10_000) if fuzz.make_case(0, i, kinds)["kind"] == kind)
    _check(fuzz.make_case(0, index, kinds), faces_dir if kinds != "inputs" else None)


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
