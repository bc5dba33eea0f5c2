"""plan.fleet: replica groups of different GPU types behind one router (Mélange-style mixes),
exact for one group, on both engines, and as a search axis whose optimum equals exhaustive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simkit.errors import ScenarioError
from simkit.scenario import apply_overrides, scenario_from_dict
from simkit.search import SearchError, parse_spec, run_search
from simkit.simulate import simulate
from simkit.specs.node import gpu_swap
from simkit.study.store import RunStore
from tests.conftest import make_scenario

H100_L4 = [{"gpu": "h100-sxm", "replicas": 2}, {"gpu": "l4", "replicas": 3}]


def _fleet(fleet: list[dict[str, Any]], **plan: Any) -> Any:
    data = make_scenario()
    data["plan"].update({"fleet": fleet, **plan})
    return scenario_from_dict(data)


def test_mixed_fleet_hand_checked() -> None:
    """One H100 and one L4 replica, two identical prompts at t=0, least-outstanding routing: each
    replica serves one; the L4 (lower bandwidth) finishes later; cost is $2.99 + $0.56 per hour."""
    data = make_scenario(workload={"batch": {"num_prompts": 2, "input_tokens": 128, "output_tokens": 16}})
    data["plan"].update({"fleet": [{"gpu": "h100-sxm"}, {"gpu": "l4"}], "routing": "least_outstanding"})
    res = simulate(scenario_from_dict(data))
    s = res.summary
    assert s["cost_per_hour_usd"] == pytest.approx(2.99 + 0.56)
    assert s["gpus"] == 2 and s["replicas"] == 2
    assert [(g["gpu"], g["replicas"], g["requests_completed"]) for g in s["fleet_groups"]] == [("h100-sxm", 1, 1), ("l4", 1, 1)]
    assert s["device"] == "h100-sxm+l4"
    fin = {int(r): float(f) for r, f in zip(res.table.replica, res.table.finish, strict=True)}
    assert fin[1] > fin[0]  # replica 1 is the L4
    # each group's KV blocks are its own GPU's (as a plain single-GPU plan on that GPU has)
    for g in s["fleet_groups"]:
        alone = scenario_from_dict(apply_overrides(data, {**{f"hardware.{k}": v for k, v in gpu_swap(g["gpu"]).items()},
                                                          "plan.fleet": None}))
        assert g["kv_blocks_per_replica"] == simulate(alone).summary["kv_blocks_per_replica"]
    assert s["kv_blocks_total"] == sum(g["kv_blocks_per_replica"] for g in s["fleet_groups"])
    assert s["kv_blocks_per_replica"] is None  # differs between groups: no single number


@pytest.mark.parametrize("gpu,replicas,tp", [("l4", 2, 1), ("h100-sxm", 1, 2)])
def test_fleet_of_one_group_equals_the_plain_plan(gpu: str, replicas: int, tp: int) -> None:
    data = make_scenario(workload={"synthetic": {"num_requests": 30, "arrival": {"process": "poisson", "rate": 20},
                                                 "lengths": {"input": {"dist": "uniform", "low": 50, "high": 900},
                                                             "output": {"dist": "uniform", "low": 5, "high": 120}}}})
    fleet = simulate(scenario_from_dict(apply_overrides(data, {"plan.fleet": [{"gpu": gpu, "replicas": replicas, "tp": tp}]})))
    plain = simulate(scenario_from_dict(apply_overrides(
        data, {**{f"hardware.{k}": v for k, v in gpu_swap(gpu).items()}, "plan.parallel.replicas": replicas, "plan.parallel.tp": tp})))
    a = {k: v for k, v in fleet.summary.items() if k not in ("sim_wall_s", "fleet_groups")}
    b = {k: v for k, v in plain.summary.items() if k != "sim_wall_s"}
    assert repr(a) == repr(b)
    assert fleet.summary["fleet_groups"][0]["requests_completed"] == plain.summary["requests_completed"]


def test_fleet_energy_and_cost_sum_the_groups() -> None:
    from simkit.specs.catalog import default_catalog

    assert any("round_robin" in w for w in simulate(_fleet(H100_L4)).warnings)
    res = simulate(_fleet(H100_L4, routing="least_outstanding"))
    assert not any("round_robin" in w for w in res.warnings)
    s = res.summary
    assert s["cost_per_hour_usd"] == pytest.approx(2 * 2.99 + 3 * 0.56)
    assert s["gpus"] == 5
    assert [g["cost_per_hour_usd"] for g in s["fleet_groups"]] == pytest.approx([2 * 2.99, 3 * 0.56])
    # energy: each GPU idles at its own idle power for the makespan and draws TDP - idle while busy
    cat = default_catalog()
    kinds = ["h100-sxm"] * 2 + ["l4"] * 3
    spec = [cat.get("gpu", k) for k in kinds]
    busy = [x["compute_s"] + x["comm_s"] for x in s["per_gpu"]]
    want = sum(g.idle_watts * s["makespan_s"] + (g.tdp - g.idle_watts) * b for g, b in zip(spec, busy, strict=True))
    assert s["energy_j"] == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize(
    "plan,key",
    [
        ({"fleet": H100_L4, "parallel": {"replicas": 2}}, "plan"),
        ({"fleet": H100_L4, "parallel": {"tp": 2}}, "plan"),
        ({"fleet": []}, "plan"),
        ({"fleet": [{"gpu": "h100-sxm", "replicas": 0}]}, "plan.fleet.0.replicas"),
    ],
)
def test_bad_fleets_are_refused_naming_the_key(plan: dict[str, Any], key: str) -> None:
    data = make_scenario()
    data["plan"].update(plan)
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(data)
    assert (e.value.key or "").startswith(key)


def test_unknown_fleet_gpu_and_unsupported_combinations_are_refused() -> None:
    with pytest.raises(Exception) as e:
        simulate(_fleet([{"gpu": "h200-nope"}]))
    assert "plan.fleet[0].gpu" in str(e.value.key)
    with pytest.raises(ScenarioError) as e2:
        simulate(_fleet(H100_L4, prefix_cache={"enabled": True}))
    assert e2.value.key == "plan.fleet"


BASE: dict[str, Any] = {
    "name": "fleet-search",
    "hardware": "dgx-h100",
    "model": "llama-2-7b",
    "workload": {"synthetic": {"num_requests": 40, "arrival": {"process": "poisson", "rate": 12},
                               "lengths": {"input": {"dist": "lognormal", "median": 256, "sigma": 0.6, "max": 1024},
                                           "output": {"dist": "lognormal", "median": 64, "sigma": 0.6, "max": 256}}}},
    "plan": {"batching": {"policy": "continuous", "max_num_batched_tokens": 2048}, "routing": "least_outstanding"},
    "slo": {"ttft_p90_s": 0.5, "tpot_p90_s": 0.05},
}


@pytest.mark.parametrize(
    "objective,constraints",
    [
        ({"minimize": "usd_per_million_output_tokens"}, {"ttft_p90_s": {"max": 0.3}, "tpot_p90_s": {"max": 0.05}}),
        ({"maximize": "output_tokens_per_usd"}, {"cost_per_hour_usd": {"max": 4.0}}),
    ],
)
def test_cost_optimal_mix_equals_exhaustive(tmp_path: Path, objective: dict, constraints: dict) -> None:
    spec = parse_spec({"base": BASE, "space": {"fleet": {"gpus": ["h100-sxm", "l4", "a100-80gb-sxm"], "max_gpus": 3},
                                               "plan.batching.max_num_seqs": [8, 64]},
                       "objective": objective, "constraints": constraints, "top": 3}, where=str(tmp_path / "s.yaml"))
    assert len(spec.axes[0].labels) == 19  # counts (a, b, c) >= 0 with 1 <= a + b + c <= 3
    store = RunStore(tmp_path / "runs")
    ex = run_search(spec, store, exhaustive=True)
    bb = run_search(spec, store)
    assert ex.best is not None and bb.best is not None
    assert [c.cid for c in bb.top] == [c.cid for c in ex.top]
    assert bb.best.row[spec.objective] == ex.best.row[spec.objective]
    assert not any(c.pruned for c in bb.cands)  # fleets carry no bound: never pruned, only simulated
    assert ex.bound_violations == [] and bb.bound_violations == []


def test_fleet_axis_bad_input(tmp_path: Path) -> None:
    def spec(space: dict[str, Any]) -> Any:
        return parse_spec({"base": BASE, "space": space, "objective": {"minimize": "cost_per_hour_usd"}}, where=str(tmp_path / "s.yaml"))

    with pytest.raises(SearchError, match="drop gpu"):
        spec({"fleet": {"gpus": ["l4"]}, "gpu": ["l4"]})
    with pytest.raises(SearchError) as e:
        spec({"fleet": {"gpus": ["nope"]}})
    assert e.value.key == "space.fleet.gpus"
    with pytest.raises(SearchError) as e:
        spec({"fleet": {"gpus": ["l4"], "max_gpus": 1, "tp": 2}})
    assert e.value.key == "space.fleet"


def test_mixed_fleet_example_runs(tmp_path: Path) -> None:
    """workloads/searches/mixed-fleet.yaml searches, and its best.yaml reproduces the winner."""
    import yaml

    from simkit.cli import main

    root = Path(__file__).resolve().parents[1]
    assert main(["search", str(root / "workloads/searches/mixed-fleet.yaml"), "--out", str(tmp_path / "o")]) == 0
    best = yaml.safe_load((tmp_path / "o" / "best.yaml").read_text())
    assert best["plan"]["fleet"]
    again = simulate(scenario_from_dict(best, where=str(tmp_path / "o" / "best.yaml"))).summary
    import pandas as pd

    rows = pd.read_parquet(tmp_path / "o" / "candidates.parquet")
    row = rows[rows["fleet"] == "h100-sxm:1+a100-80gb-sxm:1"].iloc[0]  # the documented winner: a mix
    assert row["usd_per_million_output_tokens"] == again["usd_per_million_output_tokens"]
    assert rows[rows["feasible"]]["usd_per_million_output_tokens"].min() == again["usd_per_million_output_tokens"]


def test_a_group_that_cannot_hold_the_model_is_named_by_screening_and_simulation(tmp_path: Path) -> None:
    """Llama-2-13B in fp16 (about 26 GB of weights) fits an H100 but not an L4 (24 GB)."""
    from simkit.search.screen import Screener

    data = make_scenario(model="llama-2-13b")
    data["plan"]["fleet"] = [{"gpu": "h100-sxm"}, {"gpu": "l4"}]
    with pytest.raises(Exception) as e:
        simulate(scenario_from_dict(data))
    assert e.value.key == "plan.fleet[1]" and "(l4)" in e.value.message
    scr = Screener(str(tmp_path / "s.yaml"), cost_metrics=True)
    s = scr.screen(make_scenario(model="llama-2-13b"), {"plan.fleet": data["plan"]["fleet"]})
    assert not s.ok and s.reason.startswith("plan.fleet[1] (l4)")
    ok = scr.screen(make_scenario(model="llama-2-13b"), {"plan.fleet": [{"gpu": "h100-sxm", "replicas": 2}]})
    assert ok.ok and ok.exact["cost_per_hour_usd"] == pytest.approx(2 * 2.99) and ok.exact["gpus"] == 2
    assert ok.lo == {} and ok.hi == {}  # no bounds: never pruned
