"""Run, study and search folders as docs/report.md's contract lays them out, made from real
``simulate()`` runs of tiny scenarios, so report tests see realistic data without depending on the
`simkit study` / `simkit search` commands."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import yaml

from simkit.errors import SimkitError
from simkit.outputs import resolved_scenario_data
from simkit.scenario import apply_overrides, load_scenario_data, scenario_from_dict
from simkit.simulate import simulate, write_outputs

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "workloads" / "scenarios" / "quickstart.yaml"
SMALL = {"workload.synthetic.num_requests": 40}


def scenario(overrides: dict[str, Any]):  # type: ignore[no-untyped-def]
    data = apply_overrides(load_scenario_data(QUICK), {**SMALL, **overrides})
    return scenario_from_dict(data, where=str(QUICK))


def make_run(out: Path, overrides: dict[str, Any] | None = None) -> Path:
    res = simulate(scenario(overrides or {}))
    write_outputs(res, out, command=f"simkit run {QUICK} --out {out}")
    return out


def make_offload_run(out: Path) -> Path:
    """A tiny offloaded run (OPT-175B on a T4 streaming weights from SSD): links move data."""
    from simkit.scenario import load_scenario

    sc = load_scenario(ROOT / "workloads" / "scenarios" / "opt175b-t4-offload.yaml",
                       ["workload.batch.num_prompts=4", "workload.batch.output_tokens=4", "plan.offload.gpu_batch_size=4"])
    write_outputs(simulate(sc), out)
    return out


def flatten(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """summary.json as one table row: nested dicts as a.b, lists as JSON strings."""
    out: dict[str, Any] = {}
    for k, v in summary.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            out[f"{prefix}{k}"] = json.dumps(v)
        else:
            out[f"{prefix}{k}"] = v
    return out


def _run_id(sc: Any, folder: Path) -> str:
    data = resolved_scenario_data(sc, folder)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _one(overrides: dict[str, Any], runs_dir: Path, keep_tables: bool) -> dict[str, Any]:
    """Simulate one configuration into runs/<run_id>/; its table row (metrics flattened)."""
    sc = scenario(overrides)
    rid = _run_id(sc, runs_dir / "x")
    folder = runs_dir / rid
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scenario.yaml").write_text(yaml.safe_dump(resolved_scenario_data(sc, folder), sort_keys=False))
    try:
        res = simulate(sc)
    except SimkitError as e:
        return {"run_id": rid, "status": "error", "error": str(e)}
    if keep_tables:
        write_outputs(res, folder)
    else:
        (folder / "summary.json").write_text(json.dumps(res.summary, indent=2, sort_keys=True, default=float))
    return {"run_id": rid, "status": "ok", "error": "", **flatten(res.summary)}


def make_study(out: Path) -> Path:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    axes = {"plan.batching.max_num_seqs": [4, 16], "plan.parallel.tp": [1, 3]}  # tp=3 does not divide the heads: errors
    variants = {"continuous": {}, "chunked": {"plan.batching.policy": "chunked_prefill", "plan.batching.chunk_size": 256}}
    rows = []
    metrics: list[str] = []
    for var, vo in variants.items():
        for combo in itertools.product(*axes.values()):
            point = dict(zip(axes, combo))
            row = _one({**point, **vo}, out / "runs", keep_tables=(var == "continuous"))
            rows.append({**point, "variant": var, "repeat": 0, **row})
            metrics += [k for k in row if k not in ("run_id", "status", "error") and k not in metrics]
    df = pd.DataFrame(rows)
    df.to_parquet(out / "runs.parquet", index=False)
    (out / "study.json").write_text(json.dumps({
        "name": "seqs-and-tp", "study_file": "studies/seqs-and-tp.yaml", "axes": list(axes), "variants": list(variants),
        "baseline": "continuous", "metrics": metrics,
    }, indent=2))
    return out


def make_search(out: Path) -> Path:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    space = {"plan.batching.max_num_seqs": [2, 4, 8, 32], "plan.batching.policy": ["continuous", "chunked_prefill"], "plan.parallel.tp": [1, 3]}
    rows = []
    sims = {}
    points = {}
    for k, combo in enumerate(itertools.product(*space.values())):
        point = dict(zip(space, combo))
        cid = f"c{k:03d}"
        try:
            sims[cid] = simulate(scenario(point))
            points[cid] = point
        except SimkitError as e:
            rows.append({**point, "candidate_id": cid, "feasible": False, "reason": f"invalid plan: {e.message}", "simulated": False})
    # bounds from the results, so some plans miss each (whatever the cost model's current numbers):
    # TTFT p90 <= 5 s, and a TPOT p99 bound between the two slowest plans that meet it
    limits = {"ttft_p90_s": 5.0}
    tpots = sorted(r.summary["tpot_p99_s"] for r in sims.values() if r.summary["ttft_p90_s"] <= limits["ttft_p90_s"])
    limits["tpot_p99_s"] = (tpots[-1] + tpots[-2]) / 2
    for cid, res in sims.items():
        point = points[cid]
        s = res.summary
        missed = [k for k, v in limits.items() if s[k] > v]
        ok = not missed
        rows.append({**point, "candidate_id": cid, "feasible": ok, "reason": f"{missed[0]} above its bound" if missed else "",
                     "simulated": True, **flatten(s)})
    df = pd.DataFrame(rows).sort_values("candidate_id", kind="stable").reset_index(drop=True)
    feas = df[df["feasible"]]
    pareto = [r["candidate_id"] for _, r in feas.iterrows()
              if not any((o["tpot_p99_s"] <= r["tpot_p99_s"] and o["output_tokens_per_s"] >= r["output_tokens_per_s"])
                         and (o["tpot_p99_s"] < r["tpot_p99_s"] or o["output_tokens_per_s"] > r["output_tokens_per_s"])
                         for _, o in feas.iterrows())]
    best = str(feas.sort_values("output_tokens_per_s", ascending=False).iloc[0]["candidate_id"])
    df.to_parquet(out / "candidates.parquet", index=False)
    df[df["candidate_id"].isin(pareto)].to_parquet(out / "pareto.parquet", index=False)
    df[df["candidate_id"].isin(pareto)].to_csv(out / "pareto.csv", index=False)
    reasons: dict[str, int] = {}  # constraint misses only; plans pruned before simulation are counted by the report
    for r in df[~df["feasible"] & df["simulated"]]["reason"]:
        reasons[r] = reasons.get(r, 0) + 1
    (out / "search.json").write_text(json.dumps({
        "objective": {"maximize": "output_tokens_per_s"}, "constraints": {k: {"max": v} for k, v in limits.items()}, "space": list(space),
        "rejected_by_reason": reasons, "best_candidate_id": best, "pareto_axes": [["tpot_p99_s", "output_tokens_per_s"]],
        "pareto": {"tpot_p99_s|output_tokens_per_s": pareto}, "search_file": "searches/seqs.yaml",
    }, indent=2))
    write_outputs(sims[best], out / "best")
    (out / "best.yaml").write_text(yaml.safe_dump(resolved_scenario_data(sims[best].scenario, out), sort_keys=False))
    return out


def make_real_study(out: Path, report: Path | None = None) -> Path:
    """A study folder written by `simkit study` itself (two axes values x two variants)."""
    from simkit.cli import main

    spec = out.parent / f"{out.name}-study.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "real-study",
        "base": str(QUICK),
        "set": {"workload.synthetic.num_requests": 30},
        "variants": {"continuous": {}, "chunked": {"plan.batching.policy": "chunked_prefill"}},
        "baseline": "continuous",
        "axes": {"grid": {"plan.batching.max_num_seqs": [8, 32]}},
    }, sort_keys=False))
    args = ["study", str(spec), "--out", str(out), "--jobs", "1", "--no-progress"] + (["--report", str(report)] if report else [])
    assert main(args) == 0
    return out


def make_real_search(out: Path, report: Path | None = None) -> Path:
    """A search folder written by `simkit search` itself."""
    from simkit.cli import main

    spec = out.parent / f"{out.name}-search.yaml"
    spec.write_text(yaml.safe_dump({
        "base": str(QUICK),
        "space": {"plan.parallel.tp": [1, 2], "plan.batching.max_num_seqs": [16, 64]},
        "constraints": {"ttft_p90_s": {"max": 0.5}},
        "objective": {"maximize": "output_tokens_per_s"},
    }, sort_keys=False))
    args = ["search", str(spec), "--out", str(out), "--no-progress"] + (["--report", str(report)] if report else [])
    assert main(args) == 0
    return out
