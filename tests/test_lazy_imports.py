"""What a fresh process running one scenario skips (issue 16: the 16k case's whole process):
SimPy where no SimPy loop runs, PyYAML's parse of the calibration profiles, the scenario's
validator; each shortcut gives what the general path gives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from simkit.cachedir import in_one_run
from simkit.engine.clock import PlainClock
from simkit.specs import yamlio

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env: str) -> str:
    """``code`` in a fresh interpreter (this checkout first on the path); its stdout."""
    full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_a_fused_loop_run_imports_no_simpy_and_event_runs_still_do() -> None:
    """A plan on the fused loop runs on a plain clock: SimPy is never imported. In the same
    process the stepping path (FastWorld on SimPy's environment) and the reference engine (SimPy's
    loop) run the same scenario and give the same bits."""
    code = (
        "import sys\n"
        "from simkit.scenario import find_scenario, load_scenario\n"
        "from simkit.simulate import simulate\n"
        "from tests.conftest import assert_same_outputs, record_tbt_gaps\n"
        "record_tbt_gaps()\n"
        "sc = load_scenario(find_scenario('quickstart'))\n"
        "fused = simulate(sc)\n"
        "print('PATH', fused.summary['engine_path'])\n"
        "print('SIMPY', 'simpy' in sys.modules)\n"
        "stepped = simulate(sc, engine='stepping')\n"
        "print('SIMPY', 'simpy' in sys.modules)\n"
        "ref = simulate(sc, engine='reference')\n"
        "assert_same_outputs(fused, stepped)\n"
        "assert_same_outputs(fused, ref)\n"
        "print('SAME', stepped.summary['engine_path'], '|', ref.summary['engine_path'])\n"
    )
    out = _run(code)
    assert "PATH fast (fused loop)\nSIMPY False\nSIMPY True\n" in out, out
    assert "SAME fast | reference (requested)" in out, out


def test_plain_clock_is_what_the_fused_worlds_read_of_simpys_environment() -> None:
    import simpy
    from simpy.events import URGENT

    from simkit.engine import resources

    assert resources.URGENT == URGENT
    clock, env = PlainClock(), simpy.Environment()
    assert clock.now == env.now and type(clock.now) is type(env.now) and clock._now == env._now

    def loop():  # type: ignore[no-untyped-def]
        raise AssertionError("never run")
        yield

    assert clock.process(loop()) is None and clock.event() is None
    clock._now = 2.5
    assert clock.now == 2.5


def test_a_profile_parse_is_kept_in_every_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A calibration profile (a ``lasting`` file: every run reads it) is parsed once per text
    outside ``simkit run`` too; other files are kept only within ``one_run``."""
    from simkit.specs.calibration import find_profiles

    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    assert not in_one_run()
    prof = ROOT / "calibration" / "profiles" / "h100-sxm-vidur" / "profile.yaml"
    parsed = yamlio.load_yaml(prof)
    assert not list((tmp_path / "yaml").glob("*.json")), "not lasting: not kept outside one_run"
    assert yamlio.load_yaml(prof, lasting=True) == parsed
    (entry,) = (tmp_path / "yaml").glob("*.json")
    import yaml

    monkeypatch.setattr(yaml, "load", lambda *a, **k: pytest.fail("parsed again"))
    assert yamlio.load_yaml(prof, lasting=True) == parsed
    monkeypatch.undo()
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    found = find_profiles("gpu", "h100-sxm")
    assert found and len(list((tmp_path / "yaml").glob("*.json"))) > 1  # the device blocks too
    assert find_profiles("gpu", "h100-sxm") == found
    monkeypatch.setenv("SIMKIT_CACHE_DIR", "")
    assert find_profiles("gpu", "h100-sxm") == found  # the same without the cache


def test_the_first_scenario_of_a_process_is_read_without_building_the_validator(tmp_path: Path) -> None:
    """Outside ``simkit run``, the validated scenario is kept where it spares building the
    scenario's validator: a process writes one entry at most (a miss builds the validator, after
    which scenarios are validated), and a later process reads it, identical to a validated one."""
    common = (
        "from pathlib import Path\n"
        "from simkit.scenario import Scenario, find_scenario, load_scenario_data, scenario_from_dict\n"
        "data = load_scenario_data(find_scenario('quickstart'))\n"
    )
    _run(common + (
        "scenario_from_dict(data)\n"
        "assert Scenario.__pydantic_complete__\n"
        "scenario_from_dict(dict(data, seed=5))\n"
        "scenario_from_dict(dict(data, seed=6))\n"
    ), SIMKIT_CACHE_DIR=str(tmp_path))
    assert len(list((tmp_path / "scenarios").glob("*.json"))) == 1
    out = _run(common + (
        "from tests.test_validated import assert_identical\n"
        "hit = scenario_from_dict(data, where='x.yaml')\n"
        "print('BUILT', Scenario.__pydantic_complete__)\n"
        "ref = Scenario.model_validate(data)\n"
        "ref._source = 'x.yaml'\n"
        "ref._raw = hit._raw\n"
        "assert_identical(hit, ref)\n"
        "print('OK')\n"
    ), SIMKIT_CACHE_DIR=str(tmp_path))
    assert "BUILT False\nOK" in out, out
    assert len(list((tmp_path / "scenarios").glob("*.json"))) == 1


_OFFLOAD_AND_PIPELINE = ("simkit.cost.offload", "simkit.engine.offload", "simkit.engine.offload_fast",
                         "simkit.engine.fast_offload", "simkit.engine.pipeline_fast",
                         "simkit.cost.roofline")  # (the last: per-operator breakdowns only)


def test_a_plain_run_imports_no_offload_or_pipeline_module_and_those_plans_still_run_the_same() -> None:
    """A plan that offloads nothing and has one pipeline stage imports none of the offloaded and
    pipelined plans' modules (nor cost.roofline, for breakdowns), on any engine; an offloaded and a pipelined plan, run after it in
    the same process (which imports them where the plan is built), give the same summaries as in
    a process that imported them all first."""
    code = (
        "import importlib, json, sys\n"
        "if sys.argv[1] == 'first':\n"
        f"    for m in {_OFFLOAD_AND_PIPELINE!r}:\n"
        "        importlib.import_module(m)\n"
        "from simkit.scenario import find_scenario, load_scenario\n"
        "from simkit.simulate import simulate\n"
        "for engine in ('auto', 'stepping', 'reference'):\n"
        "    simulate(load_scenario(find_scenario('quickstart')), engine=engine)\n"
        f"    print('LOADED', engine, sorted(m for m in {_OFFLOAD_AND_PIPELINE!r} if m in sys.modules))\n"
        "for name in ('opt175b-t4-offload', 'llama70b-tp4pp2'):\n"
        "    res = simulate(load_scenario(find_scenario(name), ['workload.limit=40']))\n"
        "    print('SUMMARY', json.dumps(res.summary, sort_keys=True, default=str))\n"
    )

    def run(mode: str) -> str:
        full = dict(os.environ, PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-c", code, mode], cwd=ROOT, env=full, capture_output=True, text=True,
                             check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    lazy, first = run("lazy"), run("first")
    for engine in ("auto", "stepping", "reference"):
        assert f"LOADED {engine} []\n" in lazy, lazy
    summaries = [ln for ln in lazy.splitlines() if ln.startswith("SUMMARY")]
    assert len(summaries) == 2
    assert "offloaded steps" in summaries[0] and "pipeline stages" in summaries[1], summaries
    assert summaries == [ln for ln in first.splitlines() if ln.startswith("SUMMARY")]
