"""The search page: the Pareto front(s), the ranked plans with their bottlenecks, rejected plans
counted by reason, the winner's run report, and provenance."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from simkit.errors import ReportError
from simkit.report import plots
from simkit.report.data import load_run, read_json, read_parquet, read_text
from simkit.report.html import Page, csv_text, data_link, esc, table
from simkit.report.run import fmt_metric, rname, section_provenance
from simkit.report.study import PREFERRED

CAND_COLS = ("candidate_id", "feasible", "reason", "simulated")
KIND = {k: kind for k, _, kind in PREFERRED}
LABEL = {k: lab for k, lab, _ in PREFERRED}


def objective(meta: dict[str, Any], where: str) -> tuple[str, str]:
    obj = meta.get("objective")
    if isinstance(obj, dict) and len(obj) == 1:
        sense, metric = next(iter(obj.items()))
        if sense in ("minimize", "maximize") and isinstance(metric, str):
            return sense, metric
    raise ReportError(f"objective must be {{minimize: METRIC}} or {{maximize: METRIC}}, got {obj!r}", where=where, key="objective")


def _label(m: str) -> str:
    if m in LABEL:
        return LABEL[m]
    p = re.fullmatch(r"(ttft|tpot|tbt|e2e|queue)_p(\d+)_s", m)
    return f"{p.group(1).upper() if p.group(1) != 'queue' else 'queueing'} p{p.group(2)}" if p else m


def _kind(m: str) -> str:
    return KIND.get(m, "s" if m.endswith("_s") else "r")


SEARCH_JSON_KINDS: dict[str, type] = {"space": list, "pareto_axes": list, "pareto": dict,
                                      "rejected_by_reason": dict}
"""search.json keys the page reads as lists or mappings."""


def search_page(path: Path) -> str:
    meta = read_json(path / "search.json")
    if not isinstance(meta, dict):
        raise ReportError("expected a mapping", where=str(path / "search.json"))
    for k, kind in SEARCH_JSON_KINDS.items():
        if meta.get(k) is not None and not isinstance(meta[k], kind):
            raise ReportError(f"expected {'a mapping' if kind is dict else 'a list'}, got {meta[k]!r} (not a search.json simkit wrote)",
                              where=str(path / "search.json"), key=k)
    sense, metric = objective(meta, str(path / "search.json"))
    cands = read_parquet(path / "candidates.parquet", CAND_COLS)
    pareto = read_parquet(path / "pareto.parquet", ("candidate_id",)) if (path / "pareto.parquet").exists() else cands.iloc[0:0]
    space = [k for k in (meta.get("space") or []) if k in cands.columns]
    best_id = meta.get("best_candidate_id")
    sim = cands[cands["simulated"].astype(bool)]
    feas = sim[sim["feasible"].astype(bool)]
    page = Page(f"simkit search report: {sense} {_label(metric)}",
                f"{len(cands)} candidate plans, {len(sim)} simulated, {len(feas)} feasible; winner {best_id or 'none'} - folder {path}")
    page.section("Overview")
    items = [("objective", f"{sense} {metric}"),
             ("constraints", "; ".join(constraint_text(k, v) for k, v in (meta.get("constraints") or {}).items())
              if isinstance(meta.get("constraints"), dict) else json.dumps(meta.get("constraints"))),
             ("search space", ", ".join(space) or "-"),
             ("candidates", f"{len(cands)}: {len(sim)} simulated, {len(cands) - len(sim)} pruned analytically, {len(feas)} feasible"),
             ("winner", str(best_id) if best_id is not None else "none (no feasible plan)")]
    page.raw('<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>")
    if best_id is not None and metric in cands.columns:
        row = cands[cands["candidate_id"].astype(str) == str(best_id)]
        if len(row):
            r = row.iloc[0]
            page.callout(f"Winner {best_id}: " + ", ".join(f"{k}={r[k]}" for k in space) + f" - {_label(metric)} "
                         f"{fmt_metric(r[metric], _kind(metric))}" + (f", bottleneck {rname(r['bottleneck'], {'gpus': r.get('gpus', 1)})}"
                                                                        if "bottleneck" in r else ""))
    if isinstance(meta.get("calibration_note"), str):
        page.callout(meta["calibration_note"], warn=True)
    section_pareto(page, meta, cands, feas, pareto, best_id)
    section_ranked(page, feas, space, sense, metric, meta)
    section_rejected(page, meta, cands)
    best_dir = path / "best"
    winner = load_run(best_dir, f"winner {best_id}") if (best_dir / "summary.json").exists() else None
    best_yaml = path / "best.yaml"
    if winner is not None and winner.scenario is None and best_yaml.exists():
        # a best/ written without its scenario.yaml: the winning plan is best.yaml
        from simkit.errors import SimkitError
        from simkit.scenario import load_scenario

        winner.scenario_text = read_text(best_yaml)
        try:
            winner.scenario = load_scenario(best_yaml)
        except SimkitError as e:
            winner.scenario_error = str(e)
    if winner is not None:
        from simkit.report.pages import run_sections

        page.section(f"The winner's run ({best_id})")
        page.para(f"The sections below are the run report of {best_dir} (the winning plan simulated in full).")
        page.prefix = "Winner: "
        run_sections(page, winner)
        page.prefix = ""
    command = f"simkit run {best_yaml}" if best_yaml.exists() else None
    spec = meta.get("spec_file") or meta.get("search_file")
    if winner is not None:
        section_provenance(page, winner, title="Provenance", command=command)
    else:
        page.section("Provenance")
    if spec:
        page.para(f"Reproduce the search: simkit search {spec} --out {path}")
    if best_yaml.exists():
        page.pre(read_text(best_yaml), "best.yaml (the winning plan as a complete scenario)")
    page.pre(json.dumps(meta, indent=2), "search.json")
    return page.render()


def constraint_text(metric: str, bound: Any) -> str:
    """``{max: 0.5}`` on ttft_p90_s -> "TTFT p90 <= 500.0 ms"; other shapes as written."""
    if isinstance(bound, dict) and set(bound) <= {"max", "min"}:
        parts = []
        if "min" in bound:
            parts.append(f"{_label(metric)} >= {fmt_metric(bound['min'], _kind(metric))}")
        if "max" in bound:
            parts.append(f"{_label(metric)} <= {fmt_metric(bound['max'], _kind(metric))}")
        return ", ".join(parts)
    return f"{_label(metric)} {bound}"


def constraint_bounds(meta: dict[str, Any], metric: str) -> list[tuple[str, float]]:
    c = (meta.get("constraints") or {}).get(metric) if isinstance(meta.get("constraints"), dict) else None
    if not isinstance(c, dict):
        return []
    return [(k, float(v)) for k, v in c.items() if k in ("max", "min") and isinstance(v, int | float)]


def pareto_members(meta: dict[str, Any], pareto: Any, mx: str, my: str) -> set[str]:
    """The candidates on the front of this pair: search.json's per-pair list where it has one
    ({"x|y": [ids]}), else every row of pareto.parquet."""
    per = meta.get("pareto")
    if isinstance(per, dict):
        for key in (f"{mx}|{my}", f"{my}|{mx}"):
            if isinstance(per.get(key), list):
                return {str(x) for x in per[key]}
    return set(pareto["candidate_id"].astype(str))


def pareto_pairs(meta: dict[str, Any], cands: Any, metric: str) -> list[tuple[str, str]]:
    pairs = []
    for p in meta.get("pareto_axes") or []:
        if isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(x, str) and x in cands.columns for x in p):
            pairs.append((p[0], p[1]))
    return pairs


def section_pareto(page: Page, meta: dict[str, Any], cands: Any, feas: Any, pareto: Any, best_id: Any) -> None:
    page.section("Pareto front")
    pairs = pareto_pairs(meta, cands, "")
    if not pairs:
        page.para("search.json names no pareto_axes whose metrics the candidates have: no front to draw.")
        return
    sim = cands[cands["simulated"].astype(bool)]
    infeasible = sim[~sim["feasible"].astype(bool)]
    fig, axes = plots.figure(10.5 if len(pairs) < 3 else 13.5, 4.2, ncols=len(pairs))
    axes = [axes] if len(pairs) == 1 else list(axes)
    rows: list[list[Any]] = []
    alt = []
    for ax, (mx, my) in zip(axes, pairs):
        pids = pareto_members(meta, pareto, mx, my)
        kx, ky = _kind(mx), _kind(my)
        sx = 1e3 if kx == "s" else 1.0
        sy = 1e3 if ky == "s" else 1.0
        ax.scatter(infeasible[mx].astype(float) * sx, infeasible[my].astype(float) * sy, marker="x", color="#cf222e", s=18, alpha=0.6,
                   label="simulated, infeasible")
        ax.scatter(feas[mx].astype(float) * sx, feas[my].astype(float) * sy, color="#8c959f", s=18, label="feasible")
        front = feas[feas["candidate_id"].astype(str).isin(pids)].sort_values(mx)
        if len(front):
            ax.plot(front[mx].astype(float) * sx, front[my].astype(float) * sy, "-o", color="#0969da", markersize=5, linewidth=1.4,
                    label="Pareto-optimal")
        if best_id is not None:
            b = cands[cands["candidate_id"].astype(str) == str(best_id)]
            if len(b):
                ax.scatter(b[mx].astype(float) * sx, b[my].astype(float) * sy, marker="*", s=180, color="#bf8700", edgecolors="#24292f",
                           linewidths=0.6, zorder=5, label=f"winner {best_id}")
        for m, scale_, vertical in ((mx, sx, True), (my, sy, False)):
            for side, v in constraint_bounds(meta, m):
                plots.mark_slo(ax, v * scale_, f"{side} {fmt_metric(v, _kind(m))}", vertical=vertical)
        for m, scale_, setter in ((mx, sx, ax.set_xscale), (my, sy, ax.set_yscale)):
            vals = sim[m].astype(float).to_numpy() * scale_
            vals = vals[np.isfinite(vals) & (vals > 0)]
            if vals.size and vals.max() / vals.min() > 100:
                setter("log")
        ax.set_xlabel(_label(mx) + (" (ms)" if kx == "s" else ""))
        ax.set_ylabel(_label(my) + (" (ms)" if ky == "s" else ""))
        ax.legend(loc="best")
        alt.append(f"{len(front)} Pareto-optimal plans of {len(feas)} feasible on {_label(mx)} vs {_label(my)}")
        for _, r in sim.iterrows():
            rows.append([mx, my, str(r["candidate_id"]), bool(r["feasible"]), str(r["candidate_id"]) in pids, r[mx], r[my]])
    page.figure(plots.to_svg(fig, "Pareto front of the search", "; ".join(alt)),
                "Every simulated candidate: grey feasible, red crosses infeasible (a constraint missed), blue the Pareto-optimal set, "
                "the star the winner; dashed red lines are constraint bounds on an axis' metric. " + "; ".join(alt) + ".",
                csv_text(["x_metric", "y_metric", "candidate_id", "feasible", "pareto", "x", "y"], rows), "pareto")


def section_ranked(page: Page, feas: Any, space: list[str], sense: str, metric: str, meta: dict[str, Any]) -> None:
    page.section("Ranked plans")
    if metric not in feas.columns or not len(feas):
        page.para("No feasible simulated plan.")
        return
    ranked = feas.sort_values(metric, ascending=(sense == "minimize"), kind="stable")
    extra = []
    for p in meta.get("pareto_axes") or []:
        for m in p if isinstance(p, list | tuple) else []:
            if isinstance(m, str) and m in feas.columns and m != metric and m not in extra:
                extra.append(m)
    header = ["rank", "candidate", *space, _label(metric), *[_label(m) for m in extra], "bottleneck"]
    rows = []
    for k, (_, r) in enumerate(ranked.head(50).iterrows(), 1):
        b = r.get("bottleneck")
        util = r.get(f"resources.{b}.utilization") if isinstance(b, str) else None
        bott = rname(b, {"gpus": r.get("gpus", 1)}) + (f" ({float(util) * 100:.0f}% busy)" if util is not None and not _nan(util) else "")
        rows.append([k, str(r["candidate_id"]), *[str(r[s]) for s in space], fmt_metric(r[metric], _kind(metric)),
                     *[fmt_metric(r[m], _kind(m)) for m in extra], bott if b is not None else "-"])
    page.raw(table(header, rows, [True, False, *[False] * len(space), True, *[True] * len(extra), False]))
    page.raw("<p>" + data_link(ranked.to_csv(index=False), "ranked.csv", f"all {len(ranked)} feasible plans with every metric (CSV)")
             + (" - the table shows the best 50." if len(ranked) > 50 else "") + "</p>")


def _nan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return True


def section_rejected(page: Page, meta: dict[str, Any], cands: Any) -> None:
    page.section("Rejected plans")
    by = meta.get("rejected_by_reason") or {}
    if not isinstance(by, dict):
        by = {}
    items = sorted(((str(k), int(v)) for k, v in by.items()), key=lambda kv: -kv[1])
    # candidates search.json does not count (e.g. pruned analytically), from their own reasons
    infeasible = cands[~cands["feasible"].astype(bool)]
    missing = len(infeasible) - sum(v for _, v in items)
    if missing > 0:
        unsim = infeasible[~infeasible["simulated"].astype(bool)]
        if len(unsim) == missing:
            extra: dict[str, int] = {}
            for r in unsim["reason"].astype(str):
                extra[r or "(no reason given)"] = extra.get(r or "(no reason given)", 0) + 1
            items += sorted(extra.items(), key=lambda kv: -kv[1])
        else:
            items.append(("other (not counted in search.json; see the table)", missing))
    if not items:
        page.para("No plan was rejected.")
        return
    longest = max(len(k) for k, _ in items)
    fig, ax = plots.figure(10.5, 0.95 + 0.32 * len(items), left=min(0.3 + 0.065 * min(longest, 70), 4.8))
    y = np.arange(len(items))
    ax.barh(y, [v for _, v in items], color="#cf222e", height=0.6)
    for yy, (_, v) in zip(y, items):
        ax.text(v, yy, f" {v}", va="center", fontsize=8)
    ax.set_yticks(y, [k if len(k) <= 70 else k[:67] + "..." for k, _ in items])
    ax.invert_yaxis()
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("candidate plans")
    ax.set_title("Plans rejected, by reason")
    total = sum(v for _, v in items)
    alt = f"{total} plans rejected: " + "; ".join(f"{k}: {v}" for k, v in items[:6])
    page.figure(plots.to_svg(fig, "Rejected plans by reason", alt),
                "Candidates pruned analytically (did not fit, invalid layout) or simulated and missing a constraint, counted by reason. "
                + alt + ".", csv_text(["reason", "count"], items), "rejected")
    rej = cands[~cands["feasible"].astype(bool)]
    if len(rej):
        page.raw(table(["candidate", "simulated", "reason"],
                       [[str(r["candidate_id"]), bool(r["simulated"]), str(r["reason"])] for _, r in rej.head(30).iterrows()],
                       caption="Rejected candidates" + (f" (first 30 of {len(rej)})" if len(rej) > 30 else "")))
