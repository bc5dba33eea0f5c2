"""What a new user's walk through README.md and docs/ from an installed wheel met (branch
newuser12, 2026-12-01; docs/walkthrough.md): summary.json keys that docs/metrics.md did not
define, and the traces doc's Python examples, which pass a shipped trace as a ``pathlib.Path``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from simkit.cli import main
from simkit.errors import ScenarioError
from simkit.specs.catalog import repo_path
from simkit.workload.synthetic import make_synthetic
from simkit.workload.traces import read_trace

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _defined_in_metrics_doc(key: str, doc: str) -> bool:
    """``key`` is named in backticks, or belongs to a family written as `prefix_*`."""
    return f"`{key}`" in doc or f"`{key.split('_')[0]}_*`" in doc


@pytest.mark.parametrize("scenario", ["quickstart", "opt175b-t4-offload"])
def test_every_summary_key_is_defined_in_the_metrics_doc(tmp_path, monkeypatch, capsys, scenario):
    """docs/metrics.md says it defines every number in summary.json; the walk found eight
    top-level keys it never named (the offload keys, measured_links, the run's identity)."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", scenario, "--out", "out"]) == 0
    capsys.readouterr()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    doc = (DOCS / "metrics.md").read_text()
    missing = [k for k in summary if not _defined_in_metrics_doc(k, doc)]
    assert missing == [], f"summary.json keys not defined in docs/metrics.md: {missing}"
    if scenario == "opt175b-t4-offload":  # the offload keys carry what the doc says they do
        assert set(summary["offload_bytes"]) == {"weights", "kv_read", "kv_write", "act_read", "act_write"}
        assert summary["offload_bytes"]["weights"] > 0
        assert set(summary["offload_compute_s"]) == {"linear", "gpu_attention", "dequant", "cpu_attention", "embedding_and_head"}


def test_the_check_of_the_metrics_doc_can_fail():
    doc = "- `ttft_p90_s` and `e2e_*`"
    assert _defined_in_metrics_doc("ttft_p90_s", doc) and _defined_in_metrics_doc("e2e_p99_s", doc)
    assert not _defined_in_metrics_doc("offload_bytes", doc)


def test_make_synthetic_takes_a_shipped_trace_as_a_path():
    """docs/traces.md's example passes ``repo_path(...)`` (a ``pathlib.Path``); it was refused
    with 'expected a trace file path, got PosixPath(...)'."""
    path = repo_path("workloads", "traces", "azure_conv_2023_sample.csv")
    assert isinstance(path, Path)
    arrival = {"process": "poisson", "rate": 5.0}
    by_path = make_synthetic(500, arrival, {"trace": {"path": path, "format": "azure"}}, seed=3)
    by_str = make_synthetic(500, arrival, {"trace": {"path": str(path), "format": "azure"}}, seed=3)
    assert np.array_equal(by_path.input_tokens, by_str.input_tokens)
    assert np.array_equal(by_path.output_tokens, by_str.output_tokens)
    assert np.array_equal(by_path.arrival_s, by_str.arrival_s)
    t = read_trace(path)
    pairs = set(zip(t.input_tokens.tolist(), t.output_tokens.tolist(), strict=True))
    assert all(p in pairs for p in zip(by_path.input_tokens.tolist(), by_path.output_tokens.tolist(), strict=True))


@pytest.mark.parametrize("bad", [None, "", 3, ["a.csv"]])
def test_make_synthetic_still_refuses_what_is_not_a_path(bad):
    with pytest.raises(ScenarioError, match=r"workload\.synthetic\.lengths\.trace\.path.*expected a trace file path"):
        make_synthetic(10, {"process": "poisson", "rate": 1.0}, {"trace": {"path": bad}})


def test_the_traces_doc_python_examples_name_shipped_traces_by_repo_path():
    """Run from an installed wheel in an empty folder, ``read_trace("workloads/traces/...")``
    finds nothing: the doc's examples of shipped traces go through ``repo_path``."""
    doc = (DOCS / "traces.md").read_text()
    code = "\n".join(re.findall(r"^```python\n(.*?)^```$", doc, re.S | re.M))
    assert "repo_path(\"workloads\", \"traces\", \"azure_conv_2023.csv\")" in code
    assert "\"workloads/traces/" not in code


SEARCH = "space:\n  plan.parallel.tp: [1, 2]\nconstraints: {ttft_p90_s: {max: 0.5}}\nobjective: {minimize: usd_per_million_output_tokens}\n"
STUDY = "axes:\n  grid:\n    plan.parallel.tp: [1, 2]\n"


@pytest.mark.parametrize("kind", ["search", "study"])
def test_a_base_named_like_a_shipped_scenario_is_found_from_any_folder(tmp_path, monkeypatch, kind):
    """A search or study file copied out of the examples (`base: ../scenarios/quickstart.yaml`)
    stopped with 'base scenario not found' outside a checkout; `base: quickstart` names the
    shipped scenario as `simkit run quickstart` does."""
    from simkit.scenario import find_scenario
    from simkit.search.spec import load_spec
    from simkit.study.spec import load_study

    monkeypatch.chdir(tmp_path)
    f = tmp_path / f"{kind}.yaml"
    f.write_text("base: quickstart\n" + (SEARCH if kind == "search" else STUDY))
    shipped = find_scenario("quickstart")
    if kind == "search":
        spec = load_spec(f)
        assert Path(spec.where) == shipped
    else:
        study = load_study(f)
        assert Path(study.base_source) == shipped
    # a file of that name beside the search or study file still comes first
    (tmp_path / "quickstart").write_text((shipped.read_text()).replace("limit: 200", "limit: 20"))
    if kind == "search":
        assert Path(load_spec(f).where) == tmp_path / "quickstart"
    else:
        assert Path(load_study(f).base_source) == tmp_path / "quickstart"


@pytest.mark.parametrize("kind", ["search", "study"])
@pytest.mark.parametrize("base", ["nope", "../scenarios/quickstart.yaml"])
def test_a_base_found_nowhere_is_one_error_naming_the_shipped_scenarios(tmp_path, monkeypatch, capsys, kind, base):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / f"{kind}.yaml"
    f.write_text(f"base: {base}\n" + (SEARCH if kind == "search" else STUDY))
    assert main([kind, str(f), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "base: base scenario not found" in err and "a bare name is a shipped scenario" in err and "quickstart" in err
    assert "Traceback" not in err


def test_a_studys_warnings_say_which_runs_gave_them():
    """`simkit study` printed each distinct warning bare ('warning: the run is overloaded: ...'),
    so the reader of a 20-run study could not tell which point was overloaded."""
    from simkit.study.cli import warning_lines

    over = "the run is overloaded: ..."
    rej = "3 of 200 requests were rejected"
    rows = [
        {"rate": r, "variant": v, "repeat": 0, "run_id": f"{r}{v}",
         "warnings": json.dumps([rej] + ([over] if r == 40 and v == "tp2" else []))}
        for r in (2, 40) for v in ("tp2", "tp4")
    ]
    rows.append({"rate": 40, "variant": "tp2", "repeat": 1, "run_id": "x", "warnings": "[]"})
    lines = warning_lines(rows, ["rate"], shown=3)
    assert lines == [
        f"warning (4 of 5 runs: tp2, rate=2; tp4, rate=2; tp2, rate=40; 1 more): {rej}",
        f"warning (1 of 5 runs: tp2, rate=40): {over}",
    ]
    assert warning_lines([{"variant": "", "run_id": "abc", "warnings": json.dumps([over])}], []) == [
        f"warning (1 of 1 runs: abc): {over}"]
    assert warning_lines(rows[-1:], ["rate"]) == []


def test_simkit_study_prints_the_runs_of_each_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["study", "rate-tp-prefix", "--out", "out", "--jobs", "1", "--no-progress",
                 "--set", "workload.limit=60"]) == 0
    err = capsys.readouterr().err
    warned = [x for x in err.splitlines() if x.startswith("warning")]
    assert warned and all(re.match(r"warning \(\d+ of 20 runs: [^)]*workload\.trace\.rate_scale=", x) for x in warned), err


@pytest.mark.parametrize(("argv", "hint"), [
    (["run", "quikstart"], "; did you mean quickstart?"),
    (["search", "cheapest-llama"], "; did you mean cheapest-llama7b?"),
    (["study", "rate-tp"], "; did you mean rate-tp-prefix?"),
    (["run", "zzzz"], None),
])
def test_a_mistyped_shipped_example_name_suggests_the_closest(tmp_path, monkeypatch, capsys, argv, hint):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not found (shipped " in err and "Traceback" not in err
    if hint:
        assert err.rstrip().endswith(hint), err
    else:
        assert "did you mean" not in err
