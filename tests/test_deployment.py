"""Building a deployment is separate from running it: simulate() is build -> world -> run ->
summary, a built Deployment holds no simulation state, and the run's time span has one
definition."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from simkit.deployment import build_deployment, build_replicas
from simkit.engine.cluster import Cluster
from simkit.engine.state import RequestTable
from simkit.errors import ScenarioError
from simkit.metrics import run_makespan, run_window
from simkit.outputs import jsonable
from simkit.scenario import scenario_from_dict
from simkit.search.screen import Screener
from simkit.simulate import simulate
from simkit.summary import summarize_run
from simkit.workload.base import Requests
from tests.conftest import make_scenario, uniform_workload


def _run(dep, record_iterations: bool = True):  # type: ignore[no-untyped-def]
    cluster = Cluster(RequestTable(dep.reqs), record_iterations, False)
    executors = build_replicas(dep, cluster)
    cluster.run()
    return summarize_run(dep, cluster, executors)[0]


def _dumps(summary: dict) -> str:
    return json.dumps(jsonable(summary), sort_keys=True)


@pytest.mark.parametrize(
    "plan",
    [
        {"parallel": {"replicas": 2}, "routing": "least_outstanding"},
        {"batching": {"policy": "disaggregated", "prefill_replicas": 1, "kv_transfer_link": "nvlink"},
         "parallel": {"replicas": 3}},
        {"parallel": {"tp": 2, "pp": 2}},
    ],
    ids=["replicas", "disaggregated", "pipeline"],
)
def test_a_built_deployment_runs_twice_as_simulate_runs_it(plan: dict) -> None:
    data = make_scenario(model="llama-3-8b", workload=uniform_workload(60, 15, (100, 900), (10, 80)))
    data["plan"].update(plan)
    sc = scenario_from_dict(data)
    dep = build_deployment(sc)
    first, second = _run(dep), _run(dep)
    assert _dumps(first) == _dumps(second) == _dumps(simulate(sc).summary)
    assert first["requests_completed"] == 60


def test_a_missing_hand_off_link_is_refused_before_the_run() -> None:
    data = make_scenario(model="llama-3-8b", hardware={"preset": "lambda-a6000-workstation", "num_gpus": 2})  # no NVLink
    data["plan"].update({"batching": {"policy": "disaggregated", "prefill_replicas": 1, "kv_transfer_link": "nvlink"},
                         "parallel": {"replicas": 2}})
    dep = build_deployment(scenario_from_dict(data))
    cluster = Cluster(RequestTable(dep.reqs), False, False)
    with pytest.raises(ScenarioError, match="no 'nvlink' link") as e:
        build_replicas(dep, cluster)
    assert e.value.key == "plan.batching.kv_transfer_link"
    assert cluster.env.now == 0.0


def _table(arrival: list[float], finish: list[float]) -> RequestTable:
    n = len(arrival)
    t = RequestTable(Requests(np.asarray(arrival, dtype=np.float64), np.full(n, 10, dtype=np.int64), np.full(n, 5, dtype=np.int64)))
    t.finish[:] = finish
    return t


def test_run_window_is_first_arrival_to_last_finish() -> None:
    t = _table([2.0, 1.0, 3.0], [5.0, np.nan, 4.5])
    assert run_window(t) == (1.0, 5.0)
    assert run_makespan(t) == 4.0
    none_done = _table([2.0, 1.0], [np.nan, np.nan])
    assert run_window(none_done) == (1.0, 1.0)
    assert run_makespan(none_done) == 0.0


def test_makespan_and_utilisations_share_the_span() -> None:
    s = simulate(scenario_from_dict(make_scenario(workload=uniform_workload(40, 10, (100, 400), (10, 40))))).summary
    span = s["makespan_s"]
    assert span > 0
    assert s["resources"]["compute"]["utilization"] == pytest.approx(s["resources"]["compute"]["busy_s"] / span, rel=1e-12)
    g = s["per_gpu"][0]
    assert g["idle_s"] == pytest.approx(max(span - g["compute_s"] - g["comm_s"], 0.0), rel=1e-12, abs=1e-12)


def _sw_model(tmp_path: Path, window: int) -> str:
    m = yaml.safe_load(Path("workloads/models/llama-3-8b.yaml").read_text())
    m.update({"name": f"sw-{window}", "max_context": 32768, "sliding_window": window})
    p = tmp_path / f"sw-{window}.yaml"
    p.write_text(yaml.safe_dump(m))
    return str(p)


@pytest.mark.parametrize("window", [None, 1024])
def test_the_screen_rejects_what_the_run_rejects(tmp_path: Path, window: int | None) -> None:
    """One admission rule (deployment.plan_admission) for the run and the plan search's
    screening; a sliding-window model keeps only the window of KV, so a request longer than the
    KV cache still fits (the screening used to reject it, discarding a plan that serves it)."""
    model = _sw_model(tmp_path, window) if window else "llama-3-8b"
    lengths = {"input": {"dist": "uniform", "low": 200, "high": 5000}, "output": {"dist": "uniform", "low": 10, "high": 400}}
    data = make_scenario(model=model, workload={"synthetic": {"num_requests": 60, "arrival": {"process": "poisson", "rate": 20},
                                                              "lengths": lengths}})
    data["plan"].update({"kv_cache": {"num_blocks": 250}, "batching": {"max_num_batched_tokens": 3000, "max_num_seqs": 64}})
    res = simulate(scenario_from_dict(data))
    dep = build_deployment(scenario_from_dict(data))
    codes = dep.admission.rejections(res.table.input, res.table.output, 250 * 16)
    np.testing.assert_array_equal(codes, res.table.reject_reason)
    assert set(codes.tolist()) >= {0, 3} and (2 in codes) == (window is None)
    screened = Screener("test", False).screen(data, {})
    assert screened.ok
    assert screened.exact["requests_rejected"] == res.summary["requests_rejected"]
