"""The run folder's provenance: scenario.yaml reproduces the run, provenance.json records how it
was made, and summary.json is the same bytes in every process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from simkit.cli import main
from simkit.outputs import resolved_scenario_data
from simkit.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "workloads" / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_resolved_scenario_validates_back_to_the_same_scenario(path, tmp_path):
    sc = load_scenario(path, ["plan.kv_cache.swap_space=3 GiB", "plan.execution.iteration_overhead=1.5 ms"])
    out = tmp_path / "deep" / "run"
    out.mkdir(parents=True)
    (out / "scenario.yaml").write_text(yaml.safe_dump(resolved_scenario_data(sc, out), sort_keys=False))
    again = load_scenario(out / "scenario.yaml")
    assert again.plan.kv_cache.swap_space == 3 * 2**30 and again.plan.execution.iteration_overhead == 1.5e-3
    # same meaning: resolving the reloaded scenario gives the same data (paths resolve to the same files)
    assert resolved_scenario_data(again, out) == resolved_scenario_data(sc, out)
    dumped = sc.model_dump()
    dumped_again = again.model_dump()
    for d in (dumped, dumped_again):
        d.pop("calibration")
        for w in (d["workload"].get("trace"), ((d["workload"].get("synthetic") or {}).get("lengths") or {}).get("trace")):
            if w:
                w.pop("path")
    assert dumped_again == dumped


def test_run_folder_scenario_yaml_reproduces_summary_bytes(tmp_path, monkeypatch, capsys):
    # relative trace and calibration paths, overrides, and the run folder elsewhere than the scenario
    monkeypatch.chdir(ROOT)
    scen = "workloads/scenarios/burstgpt-sample.yaml"
    a = tmp_path / "a" / "run"
    rc = main(["run", scen, "--out", str(a), "--set", "workload.limit=40", "--set", "plan.batching.max_num_seqs=8",
               "--set", "calibration=../../calibration/profiles/a40-vidur"])
    assert rc == 0, capsys.readouterr().err
    text = (a / "scenario.yaml").read_text()
    assert "max_num_seqs: 8" in text and "limit: 40" in text
    monkeypatch.chdir(tmp_path)  # another working directory
    b = tmp_path / "b"
    rc = main(["run", str(a / "scenario.yaml"), "--out", str(b)])
    assert rc == 0, capsys.readouterr().err
    assert (b / "summary.json").read_bytes() == (a / "summary.json").read_bytes()
    assert (b / "requests.parquet").read_bytes() == (a / "requests.parquet").read_bytes()

    prov = json.loads((a / "provenance.json").read_text())
    import simkit

    assert prov["simkit_version"] == simkit.__version__
    assert prov["created_utc"].endswith("Z") and prov["created_utc"][:2] == "20"
    assert prov["command"].startswith("simkit run ") and "plan.batching.max_num_seqs=8" in prov["command"]
    assert prov["reproduce"] == f"simkit run {a / 'scenario.yaml'} --out {a}"
    assert prov["sim_wall_s"] > 0
    cal = prov["calibration"]
    assert cal["profile"] == "a40-vidur" and cal["path"].endswith("a40-vidur/profile.yaml")
    gemm = cal["fidelity"]["gemm"]
    assert 0 < gemm["fit_error"]["median_ape"] < gemm["fit_error"]["p90_ape"] < 1
    lo, hi = gemm["cross_validation"]["median_ape_range"]
    assert 0 < lo <= hi < 1 and len(gemm["cross_validation"]["per_model"]) == 5
    assert "sim_wall_s" not in json.loads((a / "summary.json").read_text())
    assert "simulated in" in capsys.readouterr().out  # the CLI still prints the wall time


def test_datasheet_calibration_provenance(tmp_path, capsys):
    rc = main(["run", str(ROOT / "workloads/scenarios/quickstart.yaml"), "--out", str(tmp_path),
               "--set", "workload.synthetic.num_requests=10", "--set", "calibration=none"])
    assert rc == 0, capsys.readouterr().err
    cal = json.loads((tmp_path / "provenance.json").read_text())["calibration"]
    assert cal == {"setting": "none", "description": "datasheet defaults (calibration: none)", "profile": None,
                   "path": None, "fidelity": {}}


def test_summary_json_is_identical_across_processes(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONHASHSEED="random")
    outs = []
    for k in range(2):
        out = tmp_path / f"r{k}"
        subprocess.run(
            [sys.executable, "-m", "simkit.cli", "run", str(ROOT / "workloads/scenarios/quickstart.yaml"), "--out", str(out),
             "--set", "workload.synthetic.num_requests=40"],
            check=True, capture_output=True, env=env, cwd=tmp_path,
        )
        outs.append((out / "summary.json").read_bytes())
    assert outs[0] == outs[1]


def test_summary_json_names_a_shipped_profile_the_same_from_any_installation(tmp_path):
    """summary.json names a shipped calibration profile relative to simkit's data folder, so the
    same run gives the same bytes from another checkout or installation (here: another SIMKIT_HOME);
    provenance.json keeps the absolute path."""
    home = tmp_path / "home"
    home.mkdir()
    for d in ("hw_specs", "workloads", "calibration"):
        (home / d).symlink_to(ROOT / d)
    outs = []
    for k, extra in enumerate(({}, {"SIMKIT_HOME": str(home)})):
        env = dict(os.environ, PYTHONPATH=str(ROOT)) | extra
        out = tmp_path / f"r{k}"
        subprocess.run(
            [sys.executable, "-m", "simkit.cli", "run", str(ROOT / "workloads/scenarios/quickstart.yaml"), "--out", str(out),
             "--set", "workload.synthetic.num_requests=20"],
            check=True, capture_output=True, env=env, cwd=tmp_path,
        )
        outs.append(out)
    summaries = [(o / "summary.json").read_bytes() for o in outs]
    assert summaries[0] == summaries[1]
    assert "(calibration/profiles/h100-sxm-vidur/profile.yaml)" in json.loads(summaries[0])["calibration"]
    paths = [json.loads((o / "provenance.json").read_text())["calibration"]["path"] for o in outs]
    shipped = (ROOT / "calibration/profiles/h100-sxm-vidur/profile.yaml").resolve()
    assert all(Path(p).is_absolute() and Path(p).resolve() == shipped for p in paths)


def test_links_parquet_holds_every_busy_period(tmp_path):
    # an offloaded plan streams weights over NVMe and PCIe: the busy periods add up to link_busy_s
    from simkit.simulate import simulate, write_outputs

    sc = load_scenario(ROOT / "workloads/scenarios/opt175b-t4-offload.yaml",
                       ["workload.batch.num_prompts=4", "workload.batch.output_tokens=4", "plan.offload.gpu_batch_size=4"])
    res = simulate(sc)
    write_outputs(res, tmp_path)
    import pandas as pd

    df = pd.read_parquet(tmp_path / "links.parquet")
    assert list(df.columns) == ["replica", "link", "start_s", "end_s"] and len(df) > 10
    assert (df["end_s"] > df["start_s"]).all()
    busy = (df["end_s"] - df["start_s"]).groupby(df["link"]).sum()
    for link, seconds in res.summary["link_busy_s"].items():
        assert busy.get(link, 0.0) == pytest.approx(seconds, rel=1e-9, abs=1e-12), link
    assert busy["nvme_read"] > 0
    for _, d in df.groupby(["replica", "link"]):  # periods of one link direction are disjoint and in order
        s, e = d["start_s"].to_numpy(), d["end_s"].to_numpy()
        assert (s[1:] >= e[:-1]).all()
