"""A scenario naming a trace file that is not there: one error line naming the scenario key, where
a relative path was looked for, and the shipped traces a user can point at instead."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from simkit.cli import main
from simkit.specs.catalog import repo_path


@pytest.mark.parametrize(
    ("workload", "key"),
    [
        ({"trace": {"path": "azure_conv_2023.csv", "format": "azure"}}, "workload.trace.path"),
        ({"synthetic": {"num_requests": 4, "arrival": {"process": "poisson", "rate": 1.0},
                        "lengths": {"trace": {"path": "azure_conv_2023.csv"}}}}, "workload.synthetic.lengths.trace.path"),
    ],
)
def test_missing_trace_names_key_folder_and_shipped_traces(tmp_path: Path, capsys, workload: dict, key: str) -> None:
    path = tmp_path / "sc.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "hardware": "dgx-h100", "model": "llama-3-8b", "workload": workload}))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{path}: {key}: trace file azure_conv_2023.csv not found" in err
    assert f"scenario's folder ({tmp_path.resolve()})" in err
    assert f"the shipped traces are in {repo_path('workloads', 'traces')}: " in err and "azure_conv_2023.csv," in err
    assert not (tmp_path / "out").exists()


def test_an_absolute_shipped_trace_path_runs(tmp_path: Path) -> None:
    trace = repo_path("workloads", "traces", "azure_conv_2023_sample.csv")
    path = tmp_path / "sc.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "hardware": "dgx-h100", "model": "llama-3-8b",
                                    "workload": {"trace": {"path": str(trace)}, "limit": 5}}))
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "summary.json").exists()
