"""HTML reports of run, study and search folders: one self-contained page each (docs/report.md).

``write_report([DIR], "report.html")`` detects what each folder is; two or more run folders
give a comparison. matplotlib is imported only here, when a report is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from simkit.errors import ReportError


def build_report(dirs: Sequence[str | Path]) -> str:
    """The HTML of the report of ``dirs``."""
    from simkit.report.data import folder_kind, load_run

    paths = [Path(d) for d in dirs]
    if not paths:
        raise ReportError("give at least one folder")
    kinds = [folder_kind(p) for p in paths]
    if len(paths) == 1:
        if kinds[0] == "run":
            from simkit.report.pages import run_page

            return run_page(load_run(paths[0]))
        if kinds[0] == "study":
            from simkit.report.study import study_page

            return study_page(paths[0])
        from simkit.report.search import search_page

        return search_page(paths[0])
    bad = [(p, k) for p, k in zip(paths, kinds) if k != "run"]
    if bad:
        raise ReportError(f"is a {bad[0][1]} folder; only run folders can be reported together (a comparison)", where=str(bad[0][0]))
    from simkit.report.pages import compare_page

    return compare_page([load_run(p, _label(p, paths)) for p in paths])


def _label(p: Path, paths: list[Path]) -> str:
    names = [q.name for q in paths]
    if names.count(p.name) == 1:
        return p.name
    return str(p)


def write_report(dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write the report of ``dirs`` to ``out`` (an .html file); returns its path."""
    html = build_report(dirs)
    o = Path(out)
    if o.is_dir():
        raise ReportError("is a folder; give the report's file name, e.g. report.html", where=str(o))
    try:
        o.parent.mkdir(parents=True, exist_ok=True)
        o.write_text(html, encoding="utf-8")
    except OSError as e:
        raise ReportError(f"cannot write the report: {e.strerror}", where=str(o)) from None
    return o
