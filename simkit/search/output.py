"""What a search writes (the SEARCH folder of docs/search.md) and prints."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, TextIO

import yaml

from simkit.search.metrics import known_metrics
from simkit.search.run import Cand, SearchResult, closest_miss, finite_number, rejected_by_reason, winner_data

FIXED_COLS = ("candidate_id", "feasible", "reason", "simulated")


def _label(v: Any) -> Any:
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True)
    return v


def candidate_rows(res: SearchResult) -> list[dict[str, Any]]:
    out = []
    for c in res.cands:
        r: dict[str, Any] = {k: _label(v) for k, v in c.labels.items()}
        r["candidate_id"] = c.cid
        r["feasible"] = bool(c.feasible)
        r["reason"] = c.reason
        r["simulated"] = bool(c.simulated)
        if c.simulated:
            r.update({k: v for k, v in c.row.items() if k not in ("status", "error", "capacity_reason", "sim_wall_s")})
        elif c.screen.ok or c.screen.exact:
            r.update(c.screen.exact)
        out.append(r)
    return out


def _frame(rows: list[dict[str, Any]], space: list[str]):  # type: ignore[no-untyped-def]
    import pandas as pd

    fixed = [*space, *FIXED_COLS]
    # metric columns in one order whether rows came from simulations or from the store
    rest = sorted({k for r in rows for k in r} - set(fixed))
    cols = fixed + rest
    df = pd.DataFrame(rows, columns=cols)
    for k in df.columns:
        if df[k].dtype == object:
            kinds = {type(v) for v in df[k] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 and not kinds <= {int, float}:
                df[k] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in df[k]]
    return df


def pareto_ids(res: SearchResult) -> dict[str, list[str]]:
    """Candidate ids on each Pareto front (among simulated feasible candidates), keyed "a|b"."""
    dirs = known_metrics(res.spec.capacity is not None)
    feas = [c for c in res.cands if c.feasible]
    out: dict[str, list[str]] = {}
    for a, b in res.spec.pareto:
        pts = []
        for c in feas:
            va, vb = finite_number(c.row.get(a)), finite_number(c.row.get(b))
            if va is None or vb is None:
                continue
            pts.append(((va if dirs[a] else -va), (vb if dirs[b] else -vb), c))
        front = []
        for x in pts:
            dominated = any(
                y[0] >= x[0] and y[1] >= x[1] and (y[0] > x[0] or y[1] > x[1]) for y in pts
            )
            if not dominated:
                front.append(x[2].cid)
        out[f"{a}|{b}"] = sorted(set(front))
    return out


def portable(data: dict[str, Any], where: str, out_dir: Path) -> dict[str, Any]:
    """The scenario with every relative file path rewritten to resolve from ``out_dir``."""
    src = Path(where).parent
    d = json.loads(json.dumps(data))

    def fix(p: str) -> str:
        path = Path(p)
        if path.is_absolute():
            return p
        here = src / path
        if not here.exists() and path.exists():
            here = path  # resolve_path's fallback: relative to the working folder
        if not here.exists():
            return p
        return os.path.relpath(here.resolve(), out_dir.resolve())

    m = d.get("model")
    if isinstance(m, str) and (m.endswith((".yaml", ".yml", ".json")) or "/" in m):
        d["model"] = fix(m)
    cal = d.get("calibration")
    if isinstance(cal, str) and cal not in ("auto", "none"):
        d["calibration"] = fix(cal)
    w = d.get("workload") or {}
    if isinstance(w.get("trace"), dict) and "path" in w["trace"]:
        w["trace"]["path"] = fix(w["trace"]["path"])
    syn = w.get("synthetic")
    if isinstance(syn, dict):
        lt = (syn.get("lengths") or {}).get("trace")
        if isinstance(lt, dict) and "path" in lt:
            lt["path"] = fix(lt["path"])
    return d


def write_search(res: SearchResult, out: str | Path) -> list[Path]:
    """candidates.parquet, pareto.parquet/.csv, search.json, best.yaml, best/, vllm_hint.txt."""
    from simkit.simulate import simulate, write_outputs

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    space = res.spec.space_keys
    rows = candidate_rows(res)
    df = _frame(rows, space)
    p = d / "candidates.parquet"
    df.to_parquet(p, index=False)
    paths.append(p)
    fronts = pareto_ids(res)
    on = {cid for ids in fronts.values() for cid in ids}
    pdf = df[df["candidate_id"].isin(on)].copy()
    pdf["pareto_fronts"] = [
        ";".join(k for k, ids in fronts.items() if cid in ids) for cid in pdf["candidate_id"]
    ]
    for name in ("pareto.parquet", "pareto.csv"):
        p = d / name
        if name.endswith(".csv"):
            pdf.to_csv(p, index=False)
        else:
            pdf.to_parquet(p, index=False)
        paths.append(p)
    best = res.best
    info: dict[str, Any] = {
        "name": res.spec.name,
        "search_file": res.spec.spec_path,
        "objective": {("maximize" if res.spec.maximize else "minimize"): res.spec.objective},
        "constraints": {c.metric: {c.bound: c.value} for c in res.spec.constraints},
        "space": space,
        "candidates": len(res.cands),
        "simulated": sum(c.simulated for c in res.cands),
        "pruned": sum(c.pruned for c in res.cands),
        "rejected_by_reason": rejected_by_reason(res),
        "best_candidate_id": best.cid if best else None,
        "top": [c.cid for c in res.top],
        "pareto_axes": [list(x) for x in res.spec.pareto],
        "pareto": fronts,
        "exhaustive": res.exhaustive,
        "bound_violations": res.bound_violations,
        "capacity": None if res.spec.capacity is None else {
            "min_rate": res.spec.capacity.min_rate, "max_rate": res.spec.capacity.max_rate,
            "tolerance": res.spec.capacity.tolerance},
    }
    if best is None:
        info["no_feasible_plan"] = closest_miss(res)
    note = calibration_note(res)
    if note:
        info["calibration_note"] = note
    # merge constraints given as both max and min
    cons: dict[str, dict[str, float]] = {}
    for c in res.spec.constraints:
        cons.setdefault(c.metric, {})[c.bound] = c.value
    info["constraints"] = cons
    p = d / "search.json"
    p.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    paths.append(p)
    data = winner_data(res)
    if data is not None and best is not None:
        pd_ = portable(data, res.spec.where, d)
        pd_["name"] = f"{res.spec.name}-best"
        p = d / "best.yaml"
        p.write_text(f"# best plan of search {res.spec.name!r} (candidate {best.cid}); `simkit run` reproduces it\n"
                     + yaml.safe_dump(pd_, sort_keys=False))
        paths.append(p)
        import warnings

        from simkit.scenario import load_scenario

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = simulate(load_scenario(p))
        paths.extend(write_outputs(result, d / "best"))
        from simkit.search.hints import vllm_hint

        p = d / "vllm_hint.txt"
        p.write_text(vllm_hint(result.scenario))
        paths.append(p)
    return paths


def _cell(v: Any, metric: str) -> str:
    x = finite_number(v)
    if x is None:
        return "-" if not isinstance(v, str) else v
    if metric.endswith("_s") and not metric.endswith("_per_s"):
        return f"{x * 1e3:.1f}ms"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


TABLE_METRICS = ("output_tokens_per_s", "ttft_p90_s", "tpot_p90_s", "cost_per_hour_usd", "gpus")


def print_table(res: SearchResult, stream: TextIO) -> None:
    w = stream.write
    spec = res.spec
    sense = "max" if spec.maximize else "min"
    w(f"search {spec.name!r}: {len(res.cands)} candidates, {sum(c.simulated for c in res.cands)} simulated "
      f"({res.simulations} simulations run, {res.reused} reused from an earlier run), "
      f"{sum(c.pruned for c in res.cands)} pruned by bound, {res.wall_s:.1f} s\n")
    w(f"objective: {sense}imize {spec.objective}"
      + (f"; constraints: {', '.join(c.label() for c in spec.constraints)}" if spec.constraints else "") + "\n")
    metrics = [spec.objective, *[m for m in TABLE_METRICS if m != spec.objective]]
    if spec.capacity is not None and "max_rate_rps" not in metrics:
        metrics.insert(1, "max_rate_rps")
    head = ["rank", "candidate", *spec.space_keys, *metrics, "bottleneck"]
    body: list[list[str]] = []
    for k, c in enumerate(res.top, 1):
        body.append([str(k), c.cid[:10], *[str(_label(c.labels[s])) for s in spec.space_keys],
                     *[_cell(c.row.get(m), m) for m in metrics], str(c.row.get("bottleneck") or "-")])
    if body:
        widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(head)]
        w("  ".join(h.ljust(widths[i]) for i, h in enumerate(head)) + "\n")
        for r in body:
            w("  ".join(x.ljust(widths[i]) for i, x in enumerate(r)) + "\n")
    else:
        w("no candidate meets the constraints\n")
        miss = closest_miss(res)
        if miss:
            w(f"  {miss}\n")
    rej = rejected_by_reason(res)
    if rej:
        w("rejected plans by reason:\n")
        for reason, n in rej.items():
            w(f"  {n:>7}  {reason}\n")
    pr = sum(c.pruned for c in res.cands)
    if pr:
        w(f"  {pr:>7}  pruned: bound on {spec.objective} cannot reach the top {spec.top} (not simulated)\n")
    if res.bound_violations:
        w(f"warning: {len(res.bound_violations)} simulated plans broke a bound; pruning was switched off after the first "
          f"(see search.json bound_violations)\n")
    note = calibration_note(res)
    if note:
        w(f"note: {note}\n")


def calibration_note(res: SearchResult) -> str | None:
    """The note of :func:`simkit.cost.profile.mixed_calibration_note` over the simulated candidates."""
    from simkit.cost.profile import mixed_calibration_note

    return mixed_calibration_note(((c.row.get("device"), c.row.get("calibration")) for c in res.cands if c.simulated),
                                  "candidates")


def best_of(res: SearchResult) -> Cand | None:
    return res.best
