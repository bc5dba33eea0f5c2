"""Looking at a study folder: ``load_runs`` (pandas) and the compact metric-by-axes table of
``simkit study show`` (values per axis point and variant, with the change against the baseline
variant at the same point; repeats averaged)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from simkit.errors import StudyError

DEFAULT_METRICS = ("ttft_p90_s", "tpot_p90_s", "output_tokens_per_s", "usd_per_million_output_tokens")
FORMATS = ("table", "csv", "json", "markdown")


def load_runs(folder: str | Path) -> Any:
    """runs.parquet of a study folder as a pandas DataFrame."""
    import pandas as pd

    p = Path(folder) / "runs.parquet"
    if not p.exists():
        raise StudyError("no runs.parquet here (run `simkit study STUDY.yaml --out DIR` first)", where=str(folder))
    try:
        return pd.read_parquet(p)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise StudyError(f"not a readable Parquet file ({type(e).__name__}: {e}); run the study again to rewrite it",
                         where=str(p)) from None


_INFO_KINDS: dict[str, tuple[type, ...]] = {"axes": (list,), "variants": (list,), "baseline": (str, type(None)),
                                            "repeat": (int,), "metrics": (list,)}
"""study.json keys that ``study show`` reads, and what they must hold."""


def load_info(folder: str | Path) -> dict[str, Any]:
    p = Path(folder) / "study.json"
    try:
        info = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudyError("no study.json here (not a study folder)", where=str(folder)) from None
    except json.JSONDecodeError as e:
        raise StudyError(f"malformed JSON: line {e.lineno}: {e.msg}", where=str(p)) from None
    except UnicodeDecodeError as e:
        raise StudyError(f"not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})", where=str(p)) from None
    if not isinstance(info, dict):
        raise StudyError(f"expected a JSON object (name, axes, variants, baseline, ...), got {type(info).__name__}", where=str(p))
    for k, kinds in _INFO_KINDS.items():
        v = info.get(k)
        if k in info and (not isinstance(v, kinds) or isinstance(v, bool)
                          or (k == "repeat" and v < 1)
                          or (isinstance(v, list) and not all(isinstance(x, str) for x in v))):
            raise StudyError(f"unexpected value {v!r} (not a study.json simkit wrote; run the study again to rewrite it)",
                             where=str(p), key=k)
    return info


def summary_table(folder: str | Path, metrics: list[str] | None = None) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """(columns, rows, metrics): one row per axis point and variant, repeats averaged; for each
    metric a ``<metric> vs baseline %`` column when the study has a baseline variant."""
    df = load_runs(folder)
    df = df.astype(object).where(df.notna(), None)
    info = load_info(folder)
    axes = [a for a in info.get("axes", []) if a in df.columns]
    baseline = info.get("baseline")
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in df.columns]
    missing = [m for m in metrics if m not in df.columns]
    if missing:
        known = ", ".join(c for c in info.get("metrics", []) if c in df.columns)
        raise StudyError(f"unknown metric {missing[0]!r} (this study has: {known})", where=str(folder), key="--metrics")
    keys = [*axes, "variant"]
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for rec in df.to_dict("records"):
        gk = tuple(_key(rec.get(k)) for k in keys)
        g = groups.setdefault(gk, {"labels": {k: rec.get(k) for k in keys}, "n": 0, "errors": [], "vals": {m: [] for m in metrics}})
        g["n"] += 1
        if rec.get("status") != "ok":
            g["errors"].append(str(rec.get("error", "")))
            continue
        for m in metrics:
            v = rec.get(m)
            if isinstance(v, bool):
                v = float(v)
            if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v)):
                g["vals"][m].append(float(v))
            elif isinstance(v, str) and v:
                g["vals"][m].append(v)
    rows = []
    for g in groups.values():
        row = dict(g["labels"])
        ok = g["n"] - len(g["errors"])
        row["runs"] = g["n"]
        row["status"] = "ok" if not g["errors"] else (f"{len(g['errors'])} error" if ok else "error")
        row["error"] = g["errors"][0] if g["errors"] else ""
        for m in metrics:
            row[m] = _combine(g["vals"][m])
        rows.append(row)
    if baseline is not None:
        base = {tuple(_key(r.get(a)) for a in axes): r for r in rows if r.get("variant") == baseline}
        for r in rows:
            b = base.get(tuple(_key(r.get(a)) for a in axes))
            for m in metrics:
                v, bv = r.get(m), b.get(m) if b is not None else None
                numbers = isinstance(v, float) and isinstance(bv, float)
                r[f"{m} vs baseline %"] = (100.0 * (v - bv) / abs(bv)) if numbers and bv != 0 else None
    cols = [*keys, "runs", "status"]
    for m in metrics:
        cols.append(m)
        if baseline is not None:
            cols.append(f"{m} vs baseline %")
    cols.append("error")
    if not info.get("variants"):
        cols.remove("variant")
    if all(r["runs"] == 1 for r in rows):
        cols.remove("runs")
    return cols, rows, metrics


def _combine(vals: list[Any]) -> Any:
    """The mean of a metric's values over a point's repeats; a text metric (``bottleneck``,
    ``engine_path``) its distinct values in first-seen order, joined by " / "."""
    if not vals:
        return None
    if all(isinstance(v, float) for v in vals):
        return sum(vals) / len(vals)
    return " / ".join(dict.fromkeys(str(v) for v in vals))


def _key(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render(folder: str | Path, fmt: str = "table", metrics: list[str] | None = None) -> str:
    if fmt not in FORMATS:
        raise StudyError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})", key="--format")
    cols, rows, metrics = summary_table(folder, metrics)
    if fmt == "json":
        return json.dumps([{c: _plain(r.get(c)) for c in cols} for r in rows], indent=2) + "\n"
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow(["" if _plain(r.get(c)) is None else _plain(r.get(c)) for c in cols])
        return buf.getvalue()
    info = load_info(folder)
    baseline = info.get("baseline")
    shown = [c for c in cols if not c.endswith(" vs baseline %")]
    if all(r["status"] == "ok" for r in rows):
        shown = [c for c in shown if c not in ("status", "error")]
    cells = []
    for r in rows:
        line = []
        for c in shown:
            text = _cell(r.get(c))
            if c == "error" and len(text) > 80:
                text = text[:77] + "..."
            if c in metrics and baseline is not None and r.get("variant") != baseline and isinstance(r.get(c), float):
                text += f" ({_delta(r.get(f'{c} vs baseline %'))})"
            line.append(text)
        cells.append(line)
    heads = shown
    if fmt == "markdown":
        lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        note = calibration_note(folder)
        return "\n".join(lines) + "\n" + (f"\nnote: {note}\n" if note else "")
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(heads)]
    title = f"# study {info.get('name')}: {len(rows)} points"
    if baseline is not None:
        title += f"; (+x%) = change against variant {baseline!r} at the same axis point"
    if info.get("repeat", 1) > 1:
        title += f"; means over {info['repeat']} repeats"
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    note = calibration_note(folder)
    return "\n".join(lines) + "\n" + (f"note: {note}\n" if note else "")


def calibration_note(folder: str | Path) -> str | None:
    """The note of :func:`simkit.cost.profile.mixed_calibration_note` for a study's runs."""
    from simkit.cost.profile import mixed_calibration_note

    df = load_runs(folder)
    if "calibration" not in df.columns:
        return None
    devices = df["device"] if "device" in df.columns else [None] * len(df)
    return mixed_calibration_note(zip(devices, df["calibration"], strict=True), "runs")


def _numeric(c: str) -> bool:
    try:
        float(c.split(" (")[0])
        return True
    except ValueError:
        return c == "-"


def _delta(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+.1f}%"


def _plain(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        return v.item()
    return v
