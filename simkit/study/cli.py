"""``simkit study STUDY.yaml --out DIR`` and ``simkit study show DIR`` (docs/study.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any


def _jobs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return n


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simkit study", description="Run a what-if study (a sweep of scenario overrides); "
                                "`simkit study show DIR` prints its results.")
    p.add_argument("study", help="study YAML file")
    p.add_argument("--out", help="study folder (default reports/<study name>); running again resumes it")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a dotted key in every run (after the study's set:), e.g. workload.limit=50")
    p.add_argument("--jobs", type=_jobs, default=0, help="parallel local processes (default 0: one per CPU core)")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="local process pool or Ray")
    p.add_argument("--address", help="Ray address: auto, ray://HOST:10001, or local (a new local instance); "
                   "default: RAY_ADDRESS or a new local instance")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--dry-run", action="store_true", help="validate every run and print how many would run, without running")
    p.add_argument("--format", choices=["table", "csv", "json", "markdown"], default="table", help="format of the final table")
    p.add_argument("--metrics", help="comma-separated metric columns for the final table")
    p.add_argument("--report", metavar="FILE.html", help="also write an HTML report of the study here (docs/report.md)")
    return p


def show_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="simkit study show", description="Print a study folder's results: metrics by axes, "
                                "with the change against the baseline variant.")
    p.add_argument("folder", help="study folder (simkit study ... --out DIR)")
    p.add_argument("--format", choices=["table", "csv", "json", "markdown"], default="table")
    p.add_argument("--metrics", help="comma-separated metric columns (default: TTFT p90, TPOT p90, throughput, $/Mtok)")
    return p


def _metrics(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [m.strip() for m in text.split(",") if m.strip()] or None


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if args and args[0] == "show":
        from simkit.study.show import render

        a = show_parser().parse_args(args[1:])
        sys.stdout.write(render(a.folder, a.format, _metrics(a.metrics)))
        return 0
    a = run_parser().parse_args(args)
    from simkit.study.spec import load_study

    if a.dry_run:
        study = load_study(a.study, a.set)
        tasks = study.tasks()
        from simkit.study.store import RunStore

        out = a.out or os.path.join("reports", study.name)
        done = RunStore(out).done()
        ids = {t.run_id for t in tasks}
        print(f"study {study.name}: {len(tasks)} runs ({len(ids)} distinct scenarios), {len(ids & done)} already in {out}, "
              f"{len(ids - done)} to simulate")
        return 0
    from simkit.study.runner import run_study

    out = a.out
    if out is None:
        out = os.path.join("reports", load_study(a.study, a.set).name)
    jobs = a.jobs or (os.cpu_count() or 1)
    res = run_study(a.study, out, jobs=jobs, executor=a.executor, address=a.address,
                    progress=not a.no_progress, overrides=a.set)
    st = res.stats
    errors = [r for r in res.rows if r["status"] != "ok"]
    for line in warning_lines(res.rows, res.study.axis_keys):
        print(line, file=sys.stderr)
    from simkit.study.show import render

    sys.stdout.write(render(res.folder, a.format, _metrics(a.metrics)))
    print(f"study {res.study.name}: {len(res.rows)} runs, {st.ran} simulated now ({st.failed} failed), "
          f"{st.reused} reused, in {st.wall_s:.1f} s; {len(errors)} runs with errors")
    for msg in sorted({r['error'] for r in errors})[:5]:
        print(f"  error: {msg}")
    print(f"  wrote            {res.folder / 'runs.parquet'}, {res.folder / 'study.json'}, {res.folder / 'runs'}/<run_id>/")
    if a.report:
        from simkit.report import write_report

        print(f"  report           {write_report([res.folder], a.report)}")
    return 0


def _run_label(row: dict[str, Any], axis_keys: list[str]) -> str:
    """One run of a study in words: its variant, axis values and repeat (``tp2, rate_scale=40``)."""
    parts = [str(row["variant"])] if row.get("variant") else []
    parts += [f"{k}={row.get(k)}" for k in axis_keys]
    if row.get("repeat"):
        parts.append(f"repeat {row['repeat']}")
    return ", ".join(parts) or str(row.get("run_id", "?"))


def warning_lines(rows: list[dict[str, Any]], axis_keys: list[str], shown: int = 3) -> list[str]:
    """Each distinct warning of a study's runs once, naming how many runs gave it and which
    (the first ``shown``); a bare warning did not say which of the study's runs it was about."""
    by_text: dict[str, list[str]] = {}
    for r in rows:
        for w in json.loads(r.get("warnings") or "[]"):
            by_text.setdefault(w, []).append(_run_label(r, axis_keys))
    out = []
    for w in sorted(by_text):
        runs = by_text[w]
        more = f"; {len(runs) - shown} more" if len(runs) > shown else ""
        out.append(f"warning ({len(runs)} of {len(rows)} runs: {'; '.join(runs[:shown])}{more}): {w}")
    return out

