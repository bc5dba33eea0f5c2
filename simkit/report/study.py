"""The study page: each metric against each axis (one line per variant), deltas against the
baseline variant, the table of runs, and provenance."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from simkit.errors import ReportError
from simkit.report import plots
from simkit.report.data import load_run, read_json, read_parquet
from simkit.report.html import Page, csv_text, data_link, esc, table
from simkit.report.run import fmt_metric, section_provenance

# metrics a capacity planner reads first, with how to show them (see run.HEADLINE)
PREFERRED = [
    ("ttft_p90_s", "TTFT p90", "s"), ("ttft_p99_s", "TTFT p99", "s"), ("tpot_p99_s", "TPOT p99", "s"), ("e2e_p99_s", "E2E p99", "s"),
    ("output_tokens_per_s", "output tok/s", "r"), ("goodput_requests_per_s", "goodput req/s", "r"),
    ("slo_attainment", "within SLO", "frac"), ("usd_per_million_output_tokens", "$ / M output tokens", "usd"),
    ("energy_per_output_token_j", "J / output token", "j"), ("kv_utilization_peak", "KV peak use", "frac"),
]
SCALE = {"s": (1e3, "ms"), "frac": (100.0, "%")}
RUN_COLS = ("run_id", "status", "error", "variant", "repeat")


def chosen_metrics(df: Any, metrics: list[str], limit: int = 8) -> list[tuple[str, str, str]]:
    """The metrics to draw: the preferred ones the table has (and that vary or are finite), else
    the first numeric metric columns."""
    out = [(k, lab, kind) for k, lab, kind in PREFERRED if k in df.columns and k in metrics and _numeric(df[k])]
    if not out:
        out = [(k, k, "r") for k in metrics if k in df.columns and _numeric(df[k])]
    return out[:limit]


def _numeric(col: Any) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(col)) and not pd.api.types.is_bool_dtype(col) and bool(np.isfinite(col.to_numpy(np.float64)).any())


def _axis_values(col: Any) -> tuple[list[Any], bool]:
    import pandas as pd

    vals = list(dict.fromkeys(col.tolist()))
    numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
    if numeric:
        vals = sorted(vals)
    return vals, bool(numeric)


def _scaled(v: float, kind: str) -> float:
    return v * SCALE.get(kind, (1.0, ""))[0]


def _unit(kind: str) -> str:
    return SCALE.get(kind, (1.0, ""))[1]


def load_study(path: Path) -> tuple[dict[str, Any], Any]:
    meta = read_json(path / "study.json")
    if not isinstance(meta, dict):
        raise ReportError("expected a mapping", where=str(path / "study.json"))
    for k in ("axes", "metrics"):
        if not isinstance(meta.get(k, []), list):
            raise ReportError(f"{k} must be a list", where=str(path / "study.json"), key=k)
    df = read_parquet(path / "runs.parquet", RUN_COLS)
    missing = [a for a in meta.get("axes") or [] if a not in df.columns]
    if missing:
        raise ReportError(f"axis column(s) {', '.join(missing)} named in study.json are missing", where=str(path / "runs.parquet"))
    for a in meta.get("axes") or []:
        col = df[a]
        # lists, mappings and unset values become labels, so every axis value can be grouped and compared
        if col.isna().any() or any(not isinstance(v, str | int | float | bool | np.generic) for v in col.dropna()):
            df[a] = [("(unset)" if _unset(v) else json.dumps(v.tolist() if isinstance(v, np.ndarray) else v, default=str)
                      if not isinstance(v, str | int | float | bool | np.generic) else str(v)) for v in col]
    df["variant"] = df["variant"].fillna("").astype(str)
    return meta, df


def _unset(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def study_page(path: Path) -> str:
    meta, df = load_study(path)
    axes: list[str] = list(meta.get("axes") or [])
    metrics: list[str] = [m for m in (meta.get("metrics") or []) if m in df.columns]
    variants: list[str] = list(meta.get("variants") or []) or list(dict.fromkeys(df["variant"].astype(str)))
    if not variants:
        variants = [""]
    baseline = meta.get("baseline")
    ok = df[df["status"] == "ok"]
    page = Page(f"simkit study report: {meta.get('name', path.name)}",
                f"{len(df)} runs ({len(ok)} ok, {len(df) - len(ok)} failed) over {len(axes)} axis(es)"
                + (f" and {len(variants)} variants" if variants != [""] else "") + f" - folder {path}")
    chosen = chosen_metrics(ok, metrics)
    page.section("Overview")
    page.raw('<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in [
        ("study", meta.get("name", "")), ("study file", meta.get("study_file", "-")), ("axes", ", ".join(axes) or "none"),
        ("variants", ", ".join(v or "(none)" for v in variants)), ("baseline", baseline or "none"),
        ("runs", f"{len(df)}: {len(ok)} ok, {len(df) - len(ok)} failed"),
    ]) + "</dl>")
    if len(df) > len(ok):
        page.callout(f"{len(df) - len(ok)} run(s) failed; their errors are in the table of runs. Figures show the successful runs only.",
                     warn=True)
    if "calibration" in df.columns:
        from simkit.cost.profile import mixed_calibration_note

        note = mixed_calibration_note(zip(df["device"] if "device" in df.columns else [None] * len(df), df["calibration"],
                                          strict=True), "runs")
        if note:
            page.callout(note, warn=True)
    if not len(ok) or not chosen:
        page.para("No successful run with numeric metrics: nothing to plot.")
    else:
        section_axes(page, ok, axes, variants, chosen)
        if baseline and baseline in variants and len(variants) > 1:
            section_deltas(page, ok, axes, variants, baseline, chosen)
    section_runs(page, df, axes, chosen, variants != [""])
    section_study_provenance(page, path, meta, df)
    return page.render()


def section_axes(page: Page, ok: Any, axes: list[str], variants: list[str], chosen: list[tuple[str, str, str]]) -> None:
    page.section("Metrics against each axis")
    cols = axes or ["variant"]
    wrap = len(cols) == 1  # one axis: the metrics wrap three to a row, each panel titled by its metric
    if wrap:
        nr, nc = math.ceil(len(chosen) / 3), min(len(chosen), 3)
        fig, grid = plots.figure(3.5 * nc + 0.4, 2.5 * nr + 0.3, nrows=nr, ncols=nc, left=0.6, top=0.35, bottom=0.55,
                                 hspace=0.6, wspace=0.3)
    else:
        nr, nc = len(chosen), len(cols)
        fig, grid = plots.figure(min(3.4 * nc + 1.2, 13.5), 2.1 * nr + 0.6, nrows=nr, ncols=nc, left=0.85, top=0.4, hspace=0.45,
                                 wspace=0.3)
    grid = np.asarray(grid, dtype=object).reshape(nr, nc)
    if wrap:
        for k in range(len(chosen), nr * nc):
            grid[k // nc, k % nc].set_visible(False)
    rows: list[list[Any]] = []
    alt = []
    for j, axis in enumerate(cols):
        if axis == "variant":
            xs, numeric = variants, False
        else:
            xs, numeric = _axis_values(ok[axis])
        pos = {v: float(v) for v in xs} if numeric else {v: float(k) for k, v in enumerate(xs)}
        for i, (m, label, kind) in enumerate(chosen):
            ax = grid[i // nc, i % nc] if wrap else grid[i, j]
            for vi, var in enumerate(variants):
                sub = ok[ok["variant"].astype(str) == var] if var != "" else ok
                if axis == "variant":
                    sub = ok[ok["variant"].astype(str) == var]
                xv, mean, lo, hi = [], [], [], []
                for x in xs:
                    vals = sub[m][(sub[axis] == x) if axis != "variant" else (sub["variant"].astype(str) == x)].to_numpy(np.float64)
                    vals = vals[np.isfinite(vals)]
                    if vals.size == 0:
                        continue
                    xv.append(pos[x])
                    mean.append(_scaled(float(vals.mean()), kind))
                    lo.append(_scaled(float(vals.min()), kind))
                    hi.append(_scaled(float(vals.max()), kind))
                    rows.append([axis, x, var, m, float(vals.mean()), float(vals.min()), float(vals.max()), int(vals.size)])
                if not xv:
                    continue
                c = plots.COLORS[vi % len(plots.COLORS)]
                if axis == "variant":
                    ax.bar(xv, mean, color=c, width=0.6)
                else:
                    ax.plot(xv, mean, marker="o", markersize=3.5, color=c, linewidth=1.4, label=var or None)
                    if any(h > lo_ for h, lo_ in zip(hi, lo)):
                        ax.fill_between(xv, lo, hi, color=c, alpha=0.15, linewidth=0)
            ylab = f"{label}" + (f" ({_unit(kind)})" if _unit(kind) else "")
            if wrap:
                ax.set_title(ylab)
                ax.set_xlabel(axis)
            elif i == 0:
                ax.set_title(axis)
            if not numeric:
                ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=20 if len(xs) > 4 else 0)
            elif all(float(x) > 0 for x in xs) and len(xs) > 2 and max(float(x) for x in xs) / min(float(x) for x in xs) >= 4:
                ax.set_xscale("log", base=2)
            if numeric and len(xs) <= 10:
                ax.set_xticks([float(x) for x in xs], [str(x) for x in xs])
            if not wrap and i == nr - 1:
                ax.set_xlabel(axis)
            if not wrap and j == 0:
                ax.set_ylabel(ylab)
            if i == 0 and (wrap or j == nc - 1) and len(variants) > 1 and axis != "variant":
                ax.legend(loc="best")
    for m, label, kind in chosen[:3]:
        best = ok.loc[ok[m].astype(float).idxmin()] if kind == "s" else ok.loc[ok[m].astype(float).idxmax()]
        alt.append(f"{'lowest' if kind == 's' else 'highest'} {label} {fmt_metric(best[m], kind)} at "
                   + ", ".join(f"{a}={best[a]}" for a in axes) + (f" ({best['variant']})" if best["variant"] else ""))
    page.figure(plots.to_svg(fig, "Each metric against each study axis", "; ".join(alt)),
                ("One panel per metric. " if wrap else "Rows: metrics; columns: axes. ")
                + "One line per variant at the mean over repeats and the other axes; the band spans their minimum to maximum. " + "; ".join(alt) + ".",
                csv_text(["axis", "value", "variant", "metric", "mean", "min", "max", "runs"], rows), "metrics-by-axis")


def section_deltas(page: Page, ok: Any, axes: list[str], variants: list[str], baseline: str, chosen: list[tuple[str, str, str]]) -> None:
    page.section(f"Deltas against the baseline ({baseline})")
    keys = axes + ["repeat"]
    base = ok[ok["variant"].astype(str) == baseline].set_index(keys) if keys else ok[ok["variant"].astype(str) == baseline]
    others = [v for v in variants if v != baseline]
    rows: list[list[Any]] = []
    summary_rows = []
    fig, ax = plots.figure(10.5, 0.95 + 0.32 * len(chosen) * max(len(others), 1) ** 0.7, left=1.5)
    h = 0.8 / max(len(others), 1)
    for vi, var in enumerate(others):
        sub = ok[ok["variant"].astype(str) == var].set_index(keys)
        joined = sub.join(base.add_suffix("__base"), how="inner")
        med = []
        for m, label, _kind in chosen:
            a = joined[m].to_numpy(np.float64)
            b = joined[f"{m}__base"].to_numpy(np.float64)
            good = np.isfinite(a) & np.isfinite(b) & (b != 0)
            d = (a[good] / b[good] - 1) * 100
            for idx, dv in zip(joined.index[good], d):
                idx_t = idx if isinstance(idx, tuple) else (idx,)
                rows.append([var, *idx_t, m, float(dv)])
            if d.size:
                med.append(float(np.median(d)))
                summary_rows.append([var, label, f"{np.median(d):+.1f}%", f"{d.min():+.1f}%", f"{d.max():+.1f}%", int(d.size)])
            else:
                med.append(0.0)
                summary_rows.append([var, label, "-", "-", "-", 0])
        y = np.arange(len(chosen))
        ax.barh(y + (vi - (len(others) - 1) / 2) * h, med, height=h, color=plots.COLORS[(vi + 1) % len(plots.COLORS)], label=var)
    ax.axvline(0, color="#24292f", linewidth=0.8)
    ax.set_yticks(np.arange(len(chosen)), [lab for _, lab, _ in chosen])
    ax.invert_yaxis()
    ax.set_xlabel(f"median change vs {baseline} over matched runs (%)")
    ax.set_title(f"Each variant against {baseline}, run by run (same axis values and repeat)")
    if len(others) > 1:
        ax.legend(loc="lower right")
    alt = "; ".join(f"{r[0]} {r[1]} {r[2]}" for r in summary_rows[:8])
    page.figure(plots.to_svg(fig, "Deltas against the baseline variant", alt),
                "Median relative change of each metric against the baseline run with the same axis values and repeat (lower is better "
                "for latencies, cost and energy; higher for throughput and goodput). " + alt + ".",
                csv_text(["variant", *keys, "metric", "delta_percent"], rows), "deltas")
    page.raw(table(["variant", "metric", "median delta", "min", "max", "matched runs"], summary_rows,
                   [False, False, True, True, True, True]))


def section_runs(page: Page, df: Any, axes: list[str], chosen: list[tuple[str, str, str]], has_variants: bool) -> None:
    page.section("Runs")
    cols = axes + (["variant"] if has_variants else []) + (["repeat"] if df["repeat"].nunique() > 1 else []) + ["status"]
    header = cols + [lab for _, lab, _ in chosen] + ["run_id"]
    rows, classes = [], []
    limit = 400
    for _, r in df.head(limit).iterrows():
        vals = [r[c] if not isinstance(r[c], float) or math.isfinite(r[c]) else "-" for c in cols]
        vals = [str(v) if not isinstance(v, int | float) or isinstance(v, bool) else v for v in vals]
        ms = [fmt_metric(r[m], kind) if r["status"] == "ok" else "" for m, _, kind in chosen]
        rows.append([*vals, *ms, str(r["run_id"])[:12]])
        classes.append(["" if c != "status" else ("ok" if r["status"] == "ok" else "bad") for c in cols] + [""] * (len(chosen) + 1))
    page.raw(table(header, rows, [False] * len(cols) + [True] * len(chosen) + [False], classes))
    failed = df[df["status"] != "ok"]
    if len(failed):
        counts: dict[str, list[str]] = {}
        for _, r in failed.iterrows():
            counts.setdefault(str(r["error"] or "(no message)"), []).append(str(r["run_id"])[:12])
        page.raw(table(["error", "runs", "run ids"], [[e, len(ids), ", ".join(ids[:6]) + (" ..." if len(ids) > 6 else "")]
                                                      for e, ids in sorted(counts.items(), key=lambda kv: -len(kv[1]))],
                       [False, True, False], caption="Why runs failed"))
    full = df.copy()
    page.raw("<p>" + data_link(full.to_csv(index=False), "runs.csv", f"all {len(df)} runs with every metric (CSV)") +
             (f" - the table shows the first {limit}." if len(df) > limit else "") + "</p>")


def section_study_provenance(page: Page, path: Path, meta: dict[str, Any], df: Any) -> None:
    ok = df[df["status"] == "ok"]
    first = None
    baseline = meta.get("baseline")
    order = list(ok[ok["variant"].astype(str) == baseline]["run_id"]) + list(ok["run_id"]) if baseline else list(ok["run_id"])
    for rid in order:
        p = path / "runs" / str(rid)
        if (p / "summary.json").exists():
            first = load_run(p, f"run {str(rid)[:12]}")
            break
    study_file = meta.get("study_file")
    command = f"simkit study {study_file} --out {path}" if study_file else None
    if first is not None:
        section_provenance(page, first, title="Provenance", command=command)
        page.para(f"The calibration and fidelity above are those of run {first.path.name}; every run's resolved scenario is "
                  f"runs/<run_id>/scenario.yaml under {path}.")
    else:
        page.section("Provenance")
        page.para(f"Reproduce: {command or '-'}")
    cals = sorted({str(c) for c in df["calibration"].dropna()}) if "calibration" in df.columns else []
    if len(cals) > 1:
        page.callout("The runs used different calibrations: " + " | ".join(cals), warn=True)
    page.pre(json.dumps(meta, indent=2), "study.json")
