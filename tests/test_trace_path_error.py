"""A scenario naming a trace file that is not there: one error line naming the scenario key, where
a relative path was looked for, and the shipped traces a user can point at instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from simkit.cli import main
from simkit.deployment import build_workload
from simkit.scenario import Scenario, load_scenario
from simkit.specs.catalog import repo_path


@pytest.mark.parametrize(
    ("workload", "key"),
    [
        ({"trace": {"path": "my_trace.csv", "format": "azure"}}, "workload.trace.path"),
        ({"synthetic": {"num_requests": 4, "arrival": {"process": "poisson", "rate": 1.0},
                        "lengths": {"trace": {"path": "my_trace.csv"}}}}, "workload.synthetic.lengths.trace.path"),
    ],
)
def test_missing_trace_names_key_folder_and_shipped_traces(tmp_path: Path, capsys, workload: dict, key: str) -> None:
    path = tmp_path / "sc.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "hardware": "dgx-h100", "model": "llama-3-8b", "workload": workload}))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{path}: {key}: trace file my_trace.csv not found" in err
    assert f"scenario's folder ({tmp_path.resolve()})" in err
    assert f"the shipped traces are in {repo_path('workloads', 'traces')}: " in err and "azure_conv_2023.csv," in err
    assert not (tmp_path / "out").exists()


def _scenario(tmp_path: Path, trace: str) -> Scenario:
    path = tmp_path / "sc.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "hardware": "dgx-h100", "model": "llama-3-8b",
                                    "workload": {"trace": {"path": trace}, "limit": 5}}))
    return load_scenario(path)


def test_a_bare_shipped_trace_name_finds_the_shipped_trace(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    shipped = repo_path("workloads", "traces", "azure_conv_2023_sample.csv")
    sc = _scenario(tmp_path, "azure_conv_2023_sample.csv")
    assert sc.resolve_path("azure_conv_2023_sample.csv") == shipped
    assert build_workload(sc).meta["source"] == str(shipped)
    # a file of that name beside the scenario (or in the working folder) comes first
    local = tmp_path / "azure_conv_2023_sample.csv"
    local.write_text(shipped.read_text()[:2000].rsplit("\n", 1)[0] + "\n")
    assert sc.resolve_path("azure_conv_2023_sample.csv") == local
    # only a bare file name falls back to the shipped traces
    assert sc.resolve_path("sub/azure_conv_2023_sample.csv") == tmp_path / "sub" / "azure_conv_2023_sample.csv"
