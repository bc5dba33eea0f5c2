"""benchmarks/engine_paths.py's pure parts: the workload cap, the grouping of pipeline conflicts,
the docs' example files and the table."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import load_benchmark

ep = load_benchmark("engine_paths")


def test_limited_caps_the_workload_and_keeps_a_lower_limit():
    data = {"workload": {"synthetic": {"num_requests": 1000}}}
    assert ep.limited(data, 200)["workload"]["limit"] == 200
    assert "limit" not in data["workload"]  # a copy
    assert ep.limited({"workload": {"limit": 50}}, 200)["workload"]["limit"] == 50
    assert ep.limited({"workload": {"limit": 500}}, 200)["workload"]["limit"] == 200


def test_conflicts_group_by_what_fell_back():
    a = "reference (pipeline parallelism); pipeline stages event by event (replica 0 at t=0.0123 s: activations share the link)"
    b = "reference (pipeline parallelism); pipeline stages event by event (replica 2 at t=1.5e-05 s: activations share the link)"
    assert ep.conflict_free(a) == ep.conflict_free(b)
    assert "replica ... at t=... s" in ep.conflict_free(a)
    assert ep.conflict_free("fast (fused loop)") == "fast (fused loop)"


def test_example_files_are_the_docs_file_blocks(tmp_path: Path):
    files = {p.name for p in ep.example_files(tmp_path)}
    assert {"chat.yaml", "chat-search.yaml", "pcie.yaml", "a6000-70b.yaml", "a6000-70b-plan.yaml"} <= files
    assert (tmp_path / "chat-search.yaml").read_text().startswith("# file: chat-search.yaml\nbase: chat.yaml")


def test_table_counts_paths_and_sources():
    runs = [
        (ep.Run("scenario a", {}, ""), "fast"),
        (ep.Run("search s [gpu=l4]", {}, ""), "fast"),
        (ep.Run("search s [gpu=h100]", {}, ""), "fast; pipeline stages in closed form"),
    ]
    lines = ep.table(runs).splitlines()
    assert lines[2] == "| `fast` | 2 | scenario a, search s |"
    assert lines[3] == "| `fast; pipeline stages in closed form` | 1 | search s |"
