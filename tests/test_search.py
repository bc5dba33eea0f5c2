"""simkit search: exactness of branch and bound against exhaustive simulation, a hand-checkable
case, capacity-mode bisection, resume without recomputation, best.yaml reproduction, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from simkit.cli import main
from simkit.search import SearchError, parse_spec, run_search, write_search
from simkit.search.run import bisect_rate, evaluate
from simkit.study.store import RunStore

BASE: dict[str, Any] = {
    "name": "search-base",
    "hardware": "dgx-h100",
    "model": "llama-2-7b",
    "workload": {
        "synthetic": {
            "num_requests": 40,
            "arrival": {"process": "poisson", "rate": 20},
            "lengths": {
                "input": {"dist": "lognormal", "median": 256, "sigma": 0.6, "max": 1024},
                "output": {"dist": "lognormal", "median": 64, "sigma": 0.6, "max": 256},
            },
        }
    },
    "plan": {"batching": {"policy": "continuous", "max_num_batched_tokens": 2048}},
    "slo": {"ttft_p90_s": 0.5, "tpot_p90_s": 0.05},
}

SPACE = {
    "gpu": ["h100-sxm", "a100-80gb-sxm", "l4"],
    "plan.parallel.tp": [1, 2],
    "plan.batching.max_num_seqs": [8, 64],
    "precision": ["fp16", "fp8"],
}


def spec_of(tmp_path: Path, **kw: Any) -> Any:
    data = {"base": BASE, "space": SPACE, "objective": {"minimize": "usd_per_million_output_tokens"}, "top": 3}
    data.update(kw)
    return parse_spec(data, where=str(tmp_path / "search.yaml"))


class Counter:
    def __init__(self, stop_after: int | None = None) -> None:
        self.calls = 0
        self.stop_after = stop_after

    def __call__(self, data: dict[str, Any], where: str) -> dict[str, Any]:
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        return evaluate(data, where)


def _key(res: Any, c: Any) -> tuple[float, int]:
    v = float(c.row[res.spec.objective])
    return (-v if res.spec.maximize else v, c.index)


@pytest.mark.parametrize(
    "objective,constraints",
    [
        ({"minimize": "usd_per_million_output_tokens"}, {"ttft_p90_s": {"max": 0.5}, "tpot_p90_s": {"max": 0.05}}),
        ({"maximize": "output_tokens_per_s_per_gpu"}, {}),
        ({"maximize": "goodput_output_tokens_per_usd"}, {"tpot_p90_s": {"max": 0.05}}),
    ],
)
def test_branch_and_bound_equals_exhaustive(tmp_path: Path, objective: dict, constraints: dict) -> None:
    spec = spec_of(tmp_path, objective=objective, constraints=constraints)
    store = RunStore(tmp_path / "runs")  # the branch-and-bound run reuses the exhaustive run's simulations
    ex = run_search(spec, store, exhaustive=True)
    bb = run_search(spec, store)
    assert ex.bound_violations == [] and bb.bound_violations == []
    assert ex.best is not None and bb.best is not None
    assert [c.cid for c in bb.top] == [c.cid for c in ex.top]
    assert bb.best.row[spec.objective] == ex.best.row[spec.objective]
    # the pruned candidates' true values are no better than the N-th best
    nth = _key(ex, ex.top[-1])
    by_id = {c.cid: c for c in ex.cands}
    pruned = [c for c in bb.cands if c.pruned]
    for c in pruned:
        e = by_id[c.cid]
        if e.feasible:
            assert _key(ex, e) > nth
    # screening is sound: what it rejected, the simulator rejects too
    for c in ex.cands:
        if not c.screen.ok:
            assert evaluate(c.screen.data or {}, spec.where)["status"] == "error" or c.category == "rejects every request"
    # every simulated plan respects its bounds (checked inside the search) and pruning paid off
    assert sum(c.simulated for c in bb.cands) <= sum(c.simulated for c in ex.cands)


def test_branch_and_bound_equals_exhaustive_layouts_and_policies(tmp_path: Path) -> None:
    """Pipeline stages, replicas, static / chunked / continuous batching and int4 weights."""
    spec = spec_of(
        tmp_path,
        space={"gpu": ["a100-80gb-sxm", "l4"], "layout": {"max_gpus": 4, "tp": [1, 2], "pp": [1, 2], "replicas": [1, 2]},
               "plan.batching.policy": ["static", "chunked_prefill"], "precision": ["int4"]},
        objective={"maximize": "output_tokens_per_usd"},
        constraints={"tpot_p90_s": {"max": 0.08}},
        top=2,
    )
    store = RunStore(tmp_path / "runs")  # the branch-and-bound run reuses the exhaustive run's simulations
    ex = run_search(spec, store, exhaustive=True)
    bb = run_search(spec, store)
    assert ex.bound_violations == [] and bb.bound_violations == []
    assert [c.cid for c in bb.top] == [c.cid for c in ex.top]
    assert sum(c.pruned for c in bb.cands) > 0
    nth = _key(ex, ex.top[-1])
    by_id = {c.cid: c for c in ex.cands}
    for c in bb.cands:
        if c.pruned and by_id[c.cid].feasible:
            assert _key(ex, by_id[c.cid]) > nth


@settings(max_examples=60, deadline=None)
@given(thr=st.floats(0.51, 19.9), lo=st.floats(0.05, 0.5), tol=st.floats(0.001, 0.2))
def test_bisect_rate_property(thr: float, lo: float, tol: float) -> None:
    r, capped, n = bisect_rate(lambda x: x <= thr, lo, 20.0, tol)
    assert r is not None and not capped
    assert r <= thr < r * (1 + tol)
    assert n <= 3 + math.ceil(math.log2((20.0 - lo) / (tol * lo)))


@settings(max_examples=60, deadline=None)
@given(a=st.integers(1, 50), n=st.integers(0, 30), step=st.integers(1, 7))
def test_integer_ranges(a: int, n: int, step: int) -> None:
    from simkit.search.spec import _range

    vals = _range("k", {"from": a, "to": a + n, "step": step})
    assert vals == list(range(a, a + n + 1, step))
    assert all(isinstance(v, int) for v in vals)


def test_parallel_jobs_same_answer(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, constraints={"ttft_p90_s": {"max": 0.5}, "tpot_p90_s": {"max": 0.05}})
    one = run_search(spec)
    two = run_search(spec, RunStore(tmp_path / "two"), jobs=2)
    assert [c.cid for c in two.top] == [c.cid for c in one.top]
    assert [c.row[spec.objective] for c in two.top] == [c.row[spec.objective] for c in one.top]
    assert len(RunStore(tmp_path / "two").done()) == two.simulations


def test_pruning_prunes(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, objective={"maximize": "output_tokens_per_s_per_gpu"}, top=1)
    res = run_search(spec)
    assert sum(c.pruned for c in res.cands) > 0
    assert res.simulations == sum(c.simulated for c in res.cands)


def test_hand_checkable_dominated_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "a100-pricey" is an A100 80GB SXM at $10/h: same speed, higher price, so it never wins;
    # the cheapest plan is one A100 at exactly its catalog price of $1.79/h
    cat = tmp_path / "cat"
    cat.mkdir()
    src = yaml.safe_load(Path("hw_specs/gpus/a100-80gb-sxm.yaml").read_text())
    src.update(name="a100-pricey", price_per_hour="$10/h")
    (cat / "a100-pricey.yaml").write_text(yaml.safe_dump(src))
    monkeypatch.setenv("SIMKIT_CATALOG_PATH", str(cat))
    # calibration none: both GPUs timed by the same datasheet model (auto would give the
    # catalog A100 its measured profile and the copy datasheet defaults)
    base = {**BASE, "calibration": "none"}
    spec = spec_of(
        tmp_path,
        base=base,
        space={"gpu": ["a100-pricey", "a100-80gb-sxm"], "plan.parallel.tp": [1, 2]},
        objective={"minimize": "cost_per_hour_usd"},
        constraints={},
        top=2,
    )
    res = run_search(spec)
    assert res.best is not None
    assert res.best.labels == {"gpu": "a100-80gb-sxm", "plan.parallel.tp": 1}
    assert res.best.row["cost_per_hour_usd"] == pytest.approx(1.79)
    assert res.top[1].labels == {"gpu": "a100-80gb-sxm", "plan.parallel.tp": 2}
    assert res.top[1].row["cost_per_hour_usd"] == pytest.approx(3.58)
    # cost per hour is exact before simulating: the pricey GPU is never simulated
    assert all(not c.simulated for c in res.cands if c.labels["gpu"] == "a100-pricey")
    # and per million tokens the pricey one costs 10/1.79 times as much for the same layout
    spec2 = spec_of(tmp_path, base=base, space={"gpu": ["a100-pricey", "a100-80gb-sxm"]}, constraints={}, top=2)
    r2 = run_search(spec2, exhaustive=True)
    a, b = (c.row["usd_per_million_output_tokens"] for c in sorted(r2.cands, key=lambda c: c.labels["gpu"]))
    assert b == pytest.approx(a * 10 / 1.79, rel=1e-9)
    assert r2.best is not None and r2.best.labels["gpu"] == "a100-80gb-sxm"


def test_bisect_rate_converges() -> None:
    for thr in (0.7, 3.3, 7.31, 19.9):
        r, capped, n = bisect_rate(lambda x, t=thr: x <= t, 0.5, 20.0, 0.01)
        assert r is not None and not capped
        assert r <= thr < r * 1.01
        assert n < 20
    assert bisect_rate(lambda x: x <= 0.1, 0.5, 20.0, 0.01)[0] is None
    assert bisect_rate(lambda x: True, 0.5, 20.0, 0.01)[:2] == (20.0, True)


def test_capacity_mode(tmp_path: Path) -> None:
    tol = 0.05
    spec = spec_of(
        tmp_path,
        space={"gpu": ["h100-sxm", "l4"]},
        constraints={"ttft_p90_s": {"max": 0.05}},
        objective={"maximize": "max_rate_rps_per_usd_hour"},
        capacity={"min_rate": 0.5, "max_rate": 200, "tolerance": tol},
        top=2,
    )
    res = run_search(spec)
    assert res.best is not None
    h100 = next(c for c in res.cands if c.labels["gpu"] == "h100-sxm")
    r = h100.row["max_rate_rps"]
    assert 0.5 < r < 200
    from simkit.scenario import apply_overrides

    # the answer meets the constraint, and a rate tolerance above it does not
    ok = evaluate(apply_overrides(h100.screen.data, {"workload.synthetic.arrival.rate": r}), spec.where)
    bad = evaluate(apply_overrides(h100.screen.data, {"workload.synthetic.arrival.rate": r * (1 + tol)}), spec.where)
    assert ok["ttft_p90_s"] <= 0.05
    assert bad["ttft_p90_s"] > 0.05
    assert h100.row["max_rate_rps_per_usd_hour"] == pytest.approx(r / 2.99)
    l4 = next(c for c in res.cands if c.labels["gpu"] == "l4")
    assert not l4.feasible and "even at min_rate 0.5" in l4.reason


def test_cli_says_jobs_has_no_effect_in_capacity_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sp = tmp_path / "s.yaml"
    sp.write_text(yaml.safe_dump({"base": BASE, "space": {"gpu": ["h100-sxm"]}, "constraints": {"ttft_p90_s": {"max": 0.05}},
                                  "objective": {"maximize": "max_rate_rps_per_usd_hour"},
                                  "capacity": {"min_rate": 0.5, "max_rate": 50, "tolerance": 0.2}}, sort_keys=False))
    assert main(["search", str(sp), "--out", str(tmp_path / "o"), "--no-progress", "--jobs", "2"]) == 0
    assert "--jobs 2 has no effect in capacity mode" in capsys.readouterr().err


def test_resume_recomputes_nothing(tmp_path: Path) -> None:
    spec = spec_of(tmp_path)
    full = Counter()
    ref = run_search(spec, RunStore(tmp_path / "ref"), evaluator=full)
    assert full.calls > 4
    stop = Counter(stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        run_search(spec, RunStore(tmp_path / "out"), evaluator=stop)
    again = Counter()
    res = run_search(spec, RunStore(tmp_path / "out"), evaluator=again)
    assert again.calls == full.calls - 3
    assert res.reused == 3
    assert [c.cid for c in res.top] == [c.cid for c in ref.top]
    # the resumed search writes the same table as the uninterrupted one
    write_search(ref, tmp_path / "w1")
    write_search(res, tmp_path / "w2")
    assert (tmp_path / "w1" / "candidates.parquet").read_bytes() == (tmp_path / "w2" / "candidates.parquet").read_bytes()
    done = Counter()
    run_search(spec, RunStore(tmp_path / "out"), evaluator=done)
    assert done.calls == 0


def test_cli_writes_contract_and_best_reproduces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    sp = tmp_path / "s.yaml"
    sp.write_text(yaml.safe_dump({"base": BASE, "space": {"plan.parallel.tp": [1, 2], "plan.batching.max_num_seqs": [16, 64]},
                                  "constraints": {"ttft_p90_s": {"max": 0.5}}, "objective": {"maximize": "output_tokens_per_s"}}, sort_keys=False))
    out = tmp_path / "out"
    assert main(["search", str(sp), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "rank" in text and "vllm serve meta-llama/Llama-2-7b-hf \\" in text and "--tensor-parallel-size" in text
    df = pd.read_parquet(out / "candidates.parquet")
    assert len(df) == 4
    for col in ("plan.parallel.tp", "plan.batching.max_num_seqs", "candidate_id", "feasible", "reason", "simulated", "output_tokens_per_s"):
        assert col in df.columns
    info = json.loads((out / "search.json").read_text())
    assert info["objective"] == {"maximize": "output_tokens_per_s"}
    assert info["space"] == ["plan.parallel.tp", "plan.batching.max_num_seqs"]
    assert (out / "pareto.csv").exists() and (out / "pareto.parquet").exists()
    assert (out / "best" / "summary.json").exists() and (out / "vllm_hint.txt").exists()
    best = df[df["candidate_id"] == info["best_candidate_id"]].iloc[0]
    assert main(["run", str(out / "best.yaml"), "--out", str(tmp_path / "again")]) == 0
    s = json.loads((tmp_path / "again" / "summary.json").read_text())
    for m in ("output_tokens_per_s", "ttft_p90_s", "tpot_p90_s", "usd_per_million_output_tokens", "makespan_s"):
        assert s[m] == pytest.approx(float(best[m]), rel=1e-12)
    assert best["output_tokens_per_s"] == df[df["feasible"]]["output_tokens_per_s"].max()
    # deterministic: the same search into another folder writes the same bytes
    assert main(["search", str(sp), "--out", str(tmp_path / "out2"), "--no-progress"]) == 0
    for name in ("candidates.parquet", "pareto.csv", "search.json", "best.yaml", "vllm_hint.txt"):
        assert (out / name).read_bytes() == (tmp_path / "out2" / name).read_bytes(), name


def test_base_path_relative_to_spec(tmp_path: Path) -> None:
    (tmp_path / "sc").mkdir()
    (tmp_path / "sc" / "base.yaml").write_text(yaml.safe_dump(BASE))
    sp = tmp_path / "s.yaml"
    sp.write_text(yaml.safe_dump({"base": "sc/base.yaml", "space": {"plan.batching.max_num_seqs": [16]},
                                  "objective": {"minimize": "ttft_p90_s"}}, sort_keys=False))
    assert main(["search", str(sp), "--out", str(tmp_path / "o"), "--no-progress"]) == 0


def _err(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, Any]) -> str:
    sp = tmp_path / "bad.yaml"
    sp.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["search", str(sp), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0
    return err


def test_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok = {"base": BASE, "space": {"plan.parallel.tp": [1]}, "objective": {"minimize": "ttft_p90_s"}}
    assert "space is empty" in _err(tmp_path, capsys, {**ok, "space": {}})
    assert "empty" in _err(tmp_path, capsys, {**ok, "space": {"plan.parallel.tp": []}})
    e = _err(tmp_path, capsys, {**ok, "space": {"plan.paralel.tp": [1]}})
    assert "unknown scenario key" in e and "plan.parallel" in e
    e = _err(tmp_path, capsys, {**ok, "space": {"plan.batching.max_num_seq": [1]}})
    assert "did you mean plan.batching.max_num_seqs" in e
    e = _err(tmp_path, capsys, {**ok, "objective": {"minimize": "ttft_p95_s"}})
    assert "unknown metric" in e and "objective" in e
    e = _err(tmp_path, capsys, {**ok, "constraints": {"tpot_p90": {"max": 1}}})
    assert "unknown metric" in e and "tpot_p90_s" in e
    e = _err(tmp_path, capsys, {**ok, "constraints": {"tpot_p90_s": {"below": 1}}})
    assert "{max: X}" in e
    assert "did you mean constraints" in _err(tmp_path, capsys, {**ok, "constrains": {}})
    e = _err(tmp_path, capsys, {**ok, "objective": "ttft_p90_s"})
    assert "minimize" in e
    assert "capacity mode needs" in _err(
        tmp_path, capsys,
        {**ok, "base": {**BASE, "workload": {"batch": {"num_prompts": 2, "input_tokens": 8, "output_tokens": 4}}},
         "capacity": {"min_rate": 1, "max_rate": 2}},
    )


def test_unpriced_gpu_with_cost_objective(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    cat = tmp_path / "cat"
    cat.mkdir()
    src = yaml.safe_load(Path("hw_specs/gpus/a100-80gb-sxm.yaml").read_text())
    src.update(name="a100-free", price_per_hour=0)
    (cat / "a100-free.yaml").write_text(yaml.safe_dump(src))
    monkeypatch.setenv("SIMKIT_CATALOG_PATH", str(cat))
    data = {"base": BASE, "space": {"gpu": ["a100-free", "h100-sxm"]}, "objective": {"minimize": "usd_per_million_output_tokens"}}
    e = _err(tmp_path, capsys, data)
    assert "no price" in e and "a100-free" in e
    # not a cost objective: fine
    data["objective"] = {"minimize": "ttft_p90_s"}
    sp = tmp_path / "ok.yaml"
    sp.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["search", str(sp), "--out", str(tmp_path / "o2"), "--no-progress"]) == 0


def test_no_plan_meets_constraints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sp = tmp_path / "s.yaml"
    sp.write_text(yaml.safe_dump({"base": BASE, "space": {"gpu": ["l4", "a100-80gb-sxm"], "plan.parallel.tp": [1, 2]},
                                  "constraints": {"tpot_p90_s": {"max": 0.001}, "gpus": {"max": 4}},
                                  "objective": {"minimize": "cost_per_hour_usd"}}, sort_keys=False))
    out = tmp_path / "o"
    assert main(["search", str(sp), "--out", str(out), "--no-progress"]) == 1
    text = capsys.readouterr().out
    assert "no candidate meets the constraints" in text
    assert "tpot_p90_s <= 0.001 removed the most plans (4)" in text
    info = json.loads((out / "search.json").read_text())
    assert info["best_candidate_id"] is None and "tpot_p90_s" in info["no_feasible_plan"]
    assert not (out / "best.yaml").exists()


def test_screening_rejects_what_does_not_fit(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, base={**BASE, "model": "llama-2-70b"},
                   space={"gpu": ["l4", "h100-sxm"], "plan.parallel.tp": [1, 3, 4]}, constraints={})
    res = run_search(spec, exhaustive=True)
    cats = {(c.labels["gpu"], c.labels["plan.parallel.tp"]): c.category for c in res.cands}
    assert cats[("l4", 1)] == "does not fit in memory"
    assert cats[("h100-sxm", 3)] == "invalid layout"
    assert cats[("h100-sxm", 4)] == ""
    for c in res.cands:
        if not c.screen.ok:
            assert not c.simulated and evaluate(c.screen.data or {}, spec.where)["status"] == "error"


def test_shorthands(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, space={"gpu": "all", "layout": {"max_gpus": 4}, "precision": ["fp16", "int4"],
                                    "plan.batching.policy": "all", "plan.prefix_cache.enabled": "all",
                                    "plan.batching.max_num_seqs": {"from": 16, "to": 64, "times": 2},
                                    "plan.kv_cache.gpu_memory_utilization": {"from": 0.8, "to": 0.9, "step": 0.05}})
    axes = {a.key: a for a in spec.axes}
    from simkit.specs.catalog import default_catalog

    assert axes["gpu"].labels == default_catalog().names("gpu")
    assert axes["plan.batching.max_num_seqs"].labels == [16, 32, 64]
    assert axes["plan.kv_cache.gpu_memory_utilization"].labels == [0.8, 0.85, 0.9]
    assert axes["plan.prefix_cache.enabled"].labels == [False, True]
    assert "disaggregated" in axes["plan.batching.policy"].labels
    assert all(eval(lbl.replace(",", "*").replace("tp=", "").replace("pp=", "").replace("replicas=", "")) <= 4
               for lbl in axes["layout"].labels)
    l4 = axes["gpu"].overrides[axes["gpu"].labels.index("l4")]
    assert l4["hardware.links.gpu_to_gpu"] is None and l4["hardware.links.host_to_gpu"] == "pcie-gen4-x16"
    h100 = axes["gpu"].overrides[axes["gpu"].labels.index("h100-sxm")]
    assert h100["hardware.links.gpu_to_gpu"] == "nvlink4"
    assert spec.size == math.prod(len(a.labels) for a in spec.axes)


def test_offload_optimized_candidate(tmp_path: Path) -> None:
    base = yaml.safe_load(Path("workloads/scenarios/opt175b-t4-offload.yaml").read_text())
    base.pop("plan", None)
    base["model"] = "opt-6.7b"
    base["workload"] = {"batch": {"num_prompts": 8, "input_tokens": 128, "output_tokens": 8}}
    spec = parse_spec({"base": base, "space": {"offload": ["none", "optimized"]},
                       "objective": {"maximize": "output_tokens_per_s"}},
                      where=str(Path("workloads/scenarios/x.yaml").resolve()))
    res = run_search(spec, exhaustive=True)
    opt = next(c for c in res.cands if c.labels["offload"] == "optimized")
    assert opt.screen.data is not None
    assert opt.screen.data["plan"]["batching"]["policy"] == "static"
    assert "gpu_batch_size" in opt.screen.data["plan"]["offload"]
    assert opt.simulated and opt.row.get("status") == "ok"


def test_metric_list_matches_summary() -> None:
    from simkit.search.metrics import SUMMARY_METRICS

    row = evaluate(BASE, "x.yaml")
    scalars = {k for k, v in row.items() if "." not in k and isinstance(v, int | float | bool) and k not in ("status",)}
    from simkit.search.metrics import DERIVED_METRICS

    scalars -= set(DERIVED_METRICS)
    assert scalars == set(SUMMARY_METRICS)


def test_vllm_hint() -> None:
    from simkit.scenario import scenario_from_dict
    from simkit.search.hints import vllm_flags

    sc = scenario_from_dict({**BASE, "plan": {"parallel": {"tp": 2, "pp": 2, "replicas": 3},
                                               "batching": {"policy": "chunked_prefill", "max_num_seqs": 96, "chunk_size": 512},
                                               "precision": {"weights": "fp8", "activations": "fp8", "kv_cache": "fp8"},
                                               "prefix_cache": {"enabled": True}}})
    flags, notes = vllm_flags(sc)
    for f in ("--tensor-parallel-size 2", "--pipeline-parallel-size 2", "--max-num-seqs 96", "--enable-chunked-prefill",
              "--max-num-batched-tokens 512", "--kv-cache-dtype fp8", "--enable-prefix-caching", "--data-parallel-size 3",
              "--quantization fp8"):
        assert f in flags
    assert any("replicas" in n for n in notes)


def test_vllm_hint_of_compressed_offloaded_weights() -> None:
    # an offload plan with int4-compressed weights keeps int4 bytes off the GPU, and the hint says
    # that vLLM needs an int4 checkpoint for it (it used to print the fp16 bytes and say nothing)
    from simkit.cost.ops import Precision
    from simkit.scenario import scenario_from_dict
    from simkit.search.hints import GIB, vllm_flags
    from simkit.specs.catalog import load_model

    off = {"weights": {"gpu": 0.4, "cpu": 0.6}, "kv_cache": {"gpu": 0.0, "cpu": 1.0}, "gpu_batch_size": 8}
    data = {"name": "hint", "hardware": "lambda-a6000-workstation", "model": "llama-2-70b",
            "workload": {"batch": {"num_prompts": 8, "input_tokens": 64, "output_tokens": 4}},
            "plan": {"batching": {"policy": "static"}, "precision": {"weights": "fp16", "activations": "fp16", "kv_cache": "fp16"},
                     "offload": off}}
    params = load_model("llama-2-70b").num_params
    for compress, stored in ((False, "fp16"), (True, "int4")):
        flags, notes = vllm_flags(scenario_from_dict({**data, "plan": {**data["plan"], "offload": {**off, "compress_weights": compress}}}))
        gb = params * Precision(stored, "fp16", "fp16", 128).w_bytes * 0.6 / GIB
        assert f"--cpu-offload-gb {gb:.0f}" in flags
        assert any("AWQ or GPTQ" in n for n in notes) == compress
        # a static batch runs gpu_batch_size x num_gpu_batches sequences at once, not max_num_seqs (256)
        assert "--max-num-seqs 8" in flags
    for batching, seqs in (({"policy": "static", "batch_size": 24}, 24), ({"policy": "static"}, 32)):
        plan = {**data["plan"], "batching": batching, "offload": {**off, "num_gpu_batches": 4}}
        assert f"--max-num-seqs {seqs}" in vllm_flags(scenario_from_dict({**data, "plan": plan}))[0]


def test_spec_errors_are_search_errors(tmp_path: Path) -> None:
    with pytest.raises(SearchError, match="range"):
        spec_of(tmp_path, space={"plan.parallel.tp": {"from": 1}})
    with pytest.raises(SearchError, match="'all' is not defined"):
        spec_of(tmp_path, space={"plan.batching.max_num_seqs": "all"})
    with pytest.raises(SearchError, match="unknown precision"):
        spec_of(tmp_path, space={"precision": ["fp9"]})


def test_true_false_bounds_only_on_true_false_metrics(tmp_path: Path) -> None:
    """A bound of true/false is read as 1/0 on slo_met and overloaded (``overloaded: {max:
    false}``); on a numeric metric it is a mistake, refused with the file and key (the fuzzer's
    ``cost_per_hour_usd: {max: true}`` was read as ``<= 1``)."""
    spec = spec_of(tmp_path, constraints={"overloaded": {"max": False}, "slo_met": {"min": True}})
    assert sorted((c.metric, c.bound, c.value) for c in spec.constraints) == [("overloaded", "max", 0.0), ("slo_met", "min", 1.0)]
    for value in (True, False):
        with pytest.raises(SearchError, match="expected a number, got (True|False)") as e:
            spec_of(tmp_path, constraints={"cost_per_hour_usd": {"max": value}})
        assert e.value.key == "constraints.cost_per_hour_usd.max" and "search.yaml" in str(e.value)


def test_example_search_file_parses() -> None:
    from simkit.search import load_spec

    for p in Path("workloads/searches").glob("*.yaml"):
        s = load_spec(p)
        assert s.size > 0


def test_write_search_without_feasible(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, space={"plan.parallel.tp": [1]}, constraints={"ttft_p90_s": {"max": 1e-6}})
    res = run_search(spec)
    paths = write_search(res, tmp_path / "o")
    assert (tmp_path / "o" / "candidates.parquet") in paths
    assert res.best is None


@pytest.mark.parametrize("path", sorted(str(p) for p in Path("workloads/scenarios").glob("*.yaml")))
def test_bounds_hold_on_shipped_scenarios(path: str) -> None:
    """Every shipped scenario (pipeline, offload, MoE, chunked, disaggregated, CPU, prefix
    cache, traces), shortened: screening agrees with the simulator and the bounds hold."""
    from simkit.scenario import apply_overrides, load_scenario_data
    from simkit.search.run import _check_bounds
    from simkit.search.screen import Screener

    data = apply_overrides(load_scenario_data(path), {"workload.limit": 12})
    s = Screener(str(Path(path).resolve()), cost_metrics=False).screen(data, {})
    row = evaluate(data, str(Path(path).resolve()))
    if not s.ok:
        assert row["status"] == "error" or s.category == "rejects every request", s.reason
        return
    assert row["status"] == "ok", row.get("error")
    assert _check_bounds(s, row) == []


def test_best_yaml_paths_resolve_from_the_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A base with a relative trace path: best.yaml in another folder still finds the trace."""
    repo = Path.cwd()
    sp = tmp_path / "s.yaml"
    sp.write_text(yaml.safe_dump({"base": str(repo / "workloads/scenarios/azure-conv-continuous.yaml"),
                                  "space": {"workload.limit": [20], "plan.batching.max_num_seqs": [32, 64]},
                                  "objective": {"minimize": "ttft_p90_s"}}, sort_keys=False))
    out = tmp_path / "deep" / "out"
    assert main(["search", str(sp), "--out", str(out), "--no-progress"]) == 0
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert not Path(best["workload"]["trace"]["path"]).is_absolute()
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(out / "best.yaml"), "--out", str(tmp_path / "again")]) == 0


def test_bounds_hold_under_what_if_scales(tmp_path: Path) -> None:
    """Screening times candidates on the same device as simulate(): the calibration profile's
    roofline times the what-if scales. With a scale in the space, a bound computed on the
    unscaled device would be too pessimistic for the faster hardware and prune a winner."""
    base = {**BASE, "hardware": {"preset": "dgx-h100"},
            "workload": {"batch": {"num_prompts": 64, "input_tokens": 512, "output_tokens": 64}}}
    space = {
        "hardware.bandwidth_scale.hbm": [0.25, 1.0, 4.0],
        "hardware.flops_scale.gpu": [0.25, 4.0],
        "plan.batching.max_num_seqs": [8, 64],
    }
    spec = parse_spec(
        {"base": base, "space": space, "objective": {"maximize": "output_tokens_per_s_per_gpu"}, "top": 2},
        where=str(tmp_path / "search.yaml"),
    )
    store = RunStore(tmp_path / "runs")
    ex = run_search(spec, store, exhaustive=True)
    bb = run_search(spec, store)
    assert ex.bound_violations == [] and bb.bound_violations == []
    assert ex.best is not None and bb.best is not None
    assert [c.cid for c in bb.top] == [c.cid for c in ex.top]
    # the what-ifs matter here: the fastest hardware wins
    assert bb.best.row["output_tokens_per_s_per_gpu"] > min(c.row["output_tokens_per_s_per_gpu"] for c in ex.cands if c.simulated)


def test_huge_or_non_finite_spaces_are_refused_before_any_candidate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by benchmarks/fuzz.py: a range of 10^9 values ran out of memory building the list, a NaN
    or infinite end crashed in math.floor, a fleet or layout of 10^6+ GPUs never finished
    enumerating, and a space of 10^15 candidates was screened one by one. Each is now one error
    naming the key, raised before anything is enumerated."""
    import time

    ok = {"base": BASE, "space": {"plan.parallel.tp": [1]}, "objective": {"minimize": "ttft_p90_s"}}
    t0 = time.perf_counter()
    e = _err(tmp_path, capsys, {**ok, "space": {"plan.batching.max_num_seqs": {"from": 1, "to": 10**9, "step": 1}}})
    assert "space.plan.batching.max_num_seqs" in e and "more than 100000 values" in e
    e = _err(tmp_path, capsys, {**ok, "space": {"plan.batching.max_num_seqs": {"from": 1, "to": 1e300, "times": 1.0000001}}})
    assert "more than 100000 values" in e
    for bad in (float("nan"), float("inf")):
        e = _err(tmp_path, capsys, {**ok, "space": {"plan.batching.max_num_seqs": {"from": 1, "to": bad, "step": 1}}})
        assert "range to: expected a finite number" in e
    e = _err(tmp_path, capsys, {**ok, "space": {"fleet": {"gpus": "all", "max_gpus": 10**6}}})
    assert "space.fleet" in e and "mixes" in e
    e = _err(tmp_path, capsys, {**ok, "space": {"layout": {"max_gpus": 2**62}}})
    assert "space.layout.max_gpus" in e
    big = {f"plan.batching.{k}": {"from": 1, "to": 99999, "step": 1} for k in ("max_num_seqs", "max_num_batched_tokens")}
    e = _err(tmp_path, capsys, {**ok, "space": big})
    assert "space" in e and "candidates" in e and "more than 1000000" in e
    assert time.perf_counter() - t0 < 20


def test_capacity_rates_must_be_finite_and_bisection_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by benchmarks/fuzz.py: max_rate .inf was accepted, and a tolerance of 1e-300 made the
    bisection loop for ever once the interval was below a float's resolution."""
    ok = {"base": BASE, "space": {"plan.parallel.tp": [1]}, "objective": {"minimize": "ttft_p90_s"}}
    e = _err(tmp_path, capsys, {**ok, "capacity": {"min_rate": 1, "max_rate": float("inf")}})
    assert "capacity.max_rate" in e and "finite" in e
    e = _err(tmp_path, capsys, {**ok, "capacity": {"min_rate": 1, "max_rate": 8, "tolerance": 1e-300}})
    assert "capacity.tolerance" in e
    e = _err(tmp_path, capsys, {**ok, "capacity": {"min_rate": 1e-300, "max_rate": 1e300, "tolerance": 0.5}})
    assert "capacity" in e and "simulations per plan" in e


@pytest.mark.parametrize("metric", [["gpus"], {"x": 1}, 5, None])
def test_metric_that_is_not_a_name_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], metric: Any) -> None:
    """Found by benchmarks/fuzz.py: {minimize: [gpus]} raised TypeError (unhashable), {maximize: -1e30} a TypeError in difflib."""
    ok = {"base": BASE, "space": {"plan.parallel.tp": [1]}}
    e = _err(tmp_path, capsys, {**ok, "objective": {"minimize": metric}})
    assert "objective" in e and "expected a metric name" in e


def test_cli_top_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by benchmarks/fuzz.py: --top -1 indexed an empty ranking (IndexError)."""
    sp = tmp_path / "s.yaml"
    sp.write_text(yaml.safe_dump({"base": BASE, "space": {"plan.parallel.tp": [1]}, "objective": {"minimize": "ttft_p90_s"}}))
    for bad in ("-1", "0"):
        with pytest.raises(SystemExit) as e:
            main(["search", str(sp), "--out", str(tmp_path / "o"), "--top", bad])
        assert e.value.code == 2
        assert "--top" in capsys.readouterr().err


def test_precision_that_is_not_a_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by benchmarks/fuzz.py: precision: [[fp16]] raised TypeError (unhashable list)."""
    e = _err(tmp_path, capsys, {"base": BASE, "space": {"precision": [["fp16"]]}, "objective": {"minimize": "ttft_p90_s"}})
    assert "space.precision" in e and "unknown precision" in e


def test_vllm_hint_without_a_hub_repository_says_so() -> None:
    from simkit.scenario import load_scenario
    from simkit.search.hints import vllm_hint

    sc = load_scenario(Path(__file__).resolve().parents[1] / "workloads/scenarios/opt175b-t4-offload.yaml")
    hint = vllm_hint(sc)
    assert "vllm serve <Hugging Face id of opt-175b>" in hint
    assert "# note: model opt-175b names no Hugging Face repository (hf_repo in its model file)" in hint


def test_gpu_shorthand_names_the_node_by_what_changed() -> None:
    # the `gpu` shorthand restating the preset's own GPU leaves the preset (its name, and so its
    # calibration profile lookup and outputs) as it is; another GPU or a bandwidth scale is a custom node
    from simkit.search.spec import gpu_hardware
    from simkit.specs.node import resolve_node

    def node(over: dict) -> str:
        hw: dict = {"preset": "dgx-h100"}
        for k, v in over.items():
            *path, last = k.removeprefix("hardware.").split(".")
            t = hw
            for p in path:
                t = t.setdefault(p, {})
            t[last] = v
        return resolve_node(hw).name

    assert node(gpu_hardware("h100-sxm")) == "dgx-h100"
    assert node(gpu_hardware("a100-80gb-sxm")) == "dgx-h100+custom"
    assert node({"hardware.num_nodes": 1}) == "dgx-h100"
    assert node({"hardware.num_nodes": 2}) == "dgx-h100+custom"
    assert node({"hardware.bandwidth_scale.host_to_gpu": 2.0}) == "dgx-h100+custom"


def test_search_says_when_candidates_mix_measured_and_datasheet_efficiencies(tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """H100 (shipped profile) against L4 (none): the ranking compares a calibrated GPU with datasheet
    defaults, and the printed table, search.json and the HTML report say so; one GPU says nothing."""
    sp = tmp_path / "s.yaml"
    sp.write_text(yaml.safe_dump({"base": BASE, "space": {"gpu": ["h100-sxm", "l4"]},
                                  "objective": {"minimize": "usd_per_million_output_tokens"}}, sort_keys=False))
    assert main(["search", str(sp), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: The candidates mix")]
    assert len(notes) == 1 and "h100-sxm (h100-sxm-vidur)" in notes[0] and "l4 with the datasheet defaults" in notes[0]
    info = json.loads((tmp_path / "out" / "search.json").read_text())
    assert info["calibration_note"] == notes[0].removeprefix("note: ")
    from simkit.report import write_report

    assert info["calibration_note"].split(":")[0] in Path(write_report([tmp_path / "out"], tmp_path / "r.html")).read_text()
    sp.write_text(yaml.safe_dump({"base": BASE, "space": {"gpu": ["h100-sxm", "a100-80gb-sxm"]},
                                  "objective": {"minimize": "usd_per_million_output_tokens"}}, sort_keys=False))
    assert main(["search", str(sp), "--out", str(tmp_path / "two"), "--no-progress"]) == 0
    assert "note: The candidates mix" not in capsys.readouterr().out
    assert "calibration_note" not in json.loads((tmp_path / "two" / "search.json").read_text())
