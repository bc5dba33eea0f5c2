"""A study file -> a study folder: expand and validate every run, execute the missing ones,
write runs.parquet and study.json (layout in docs/study.md)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simkit.errors import StudyError
from simkit.study.executor import RESERVED_COLUMNS, ExecStats, Task, execute
from simkit.study.spec import Study, load_study
from simkit.study.store import RunStore, atomic_write

FLUSH_EVERY_S = 10.0


@dataclass
class StudyOutcome:
    study: Study
    folder: Path
    stats: ExecStats
    rows: list[dict[str, Any]]
    metrics: list[str]


class _Rows:
    """Result rows of the study's tasks, relabelled with the current study's labels."""

    def __init__(self, tasks: list[Task], store: RunStore) -> None:
        self.tasks = tasks
        self.store = store
        self.by_id: dict[str, dict[str, Any]] = {}
        wanted = {t.run_id for t in tasks}
        for rid in store.done() & wanted:
            doc = store.record(rid)
            old = set(doc.get("labels", []))
            self.by_id[rid] = {k: v for k, v in doc["row"].items() if k not in old}

    def add(self, row: dict[str, Any], label_keys: list[str]) -> None:
        self.by_id[row["run_id"]] = {k: v for k, v in row.items() if k not in label_keys}

    def assemble(self, axis_keys: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
        metrics: dict[str, None] = {}
        out = []
        for t in self.tasks:
            stored = self.by_id.get(t.run_id)
            if stored is None:
                continue
            row = {k: t.labels.get(k) for k in axis_keys}
            row["variant"] = t.labels.get("variant", "")
            row["repeat"] = t.labels.get("repeat", 0)
            row["run_id"] = t.run_id
            row["status"] = stored.get("status", "error")
            row["error"] = stored.get("error", "")
            row["warnings"] = stored.get("warnings", "[]")
            for k, v in stored.items():
                if k not in row and k not in RESERVED_COLUMNS:
                    metrics.setdefault(k)
                    row[k] = v
            out.append(row)
        return out, sorted(metrics)


def rows_frame(rows: list[dict[str, Any]], columns: list[str]) -> Any:
    """Rows -> a DataFrame with one type per column (dicts/lists and mixed types as JSON text)."""
    import pandas as pd

    data: dict[str, Any] = {}
    for c in columns:
        vals = [r.get(c) for r in rows]
        present = [v for v in vals if v is not None]
        kinds = {type(v) for v in present}
        if any(isinstance(v, dict | list) for v in present) or (
            kinds - {int, float} and len(kinds) > 1
        ):
            data[c] = pd.array([None if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True) for v in vals],
                               dtype="string")
        elif kinds == {bool}:
            data[c] = pd.array(vals, dtype="boolean")
        elif kinds == {int}:
            data[c] = pd.array(vals, dtype="Int64")
        elif kinds and kinds <= {int, float}:
            data[c] = pd.array([float("nan") if v is None else float(v) for v in vals], dtype="float64")
        elif kinds == {str}:
            data[c] = pd.array(vals, dtype="string")
        else:
            data[c] = pd.array([None] * len(vals), dtype="float64") if not kinds else vals
    return pd.DataFrame(data, columns=columns)


def write_table(folder: Path, rows: list[dict[str, Any]], axis_keys: list[str], metrics: list[str]) -> Path:
    import io

    cols = [*axis_keys, "variant", "repeat", "run_id", "status", "error", "warnings", *metrics]
    df = rows_frame(rows, cols)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    p = folder / "runs.parquet"
    atomic_write(p, buf.getvalue())
    return p


def write_study_json(folder: Path, study: Study, metrics: list[str], n_runs: int) -> Path:
    from simkit import __version__

    info = {
        "name": study.name,
        "description": study.spec.description,
        "study_file": str(study.path.resolve()),
        "base": study.base_source,
        "axes": study.axis_keys,
        "variants": study.variant_names,
        "baseline": study.baseline,
        "repeat": study.spec.repeat,
        "keep_tables": study.spec.keep.tables,
        "runs": n_runs,
        "metrics": metrics,
        "simkit_version": __version__,
    }
    p = folder / "study.json"
    atomic_write(p, (json.dumps(info, indent=2) + "\n").encode("utf-8"))
    return p


def run_study(
    study_file: str | Path,
    out: str | Path,
    *,
    jobs: int = 1,
    executor: str = "local",
    address: str | None = None,
    progress: bool = True,
    overrides: list[str] | None = None,
) -> StudyOutcome:
    """Run (or finish) a study: every run not yet stored in ``out`` is simulated. ``overrides``
    (``["workload.limit=50"]``) are applied to every run, after the study's own ``set:``."""
    study = load_study(study_file, overrides)
    tasks = study.tasks()
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise StudyError("the output exists and is not a folder", where=str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    store = RunStore(folder)
    rows = _Rows(tasks, store)
    labels_of = {t.run_id: t.labels for t in tasks}
    n_ids = len(labels_of)
    _, metrics = rows.assemble(study.axis_keys)
    write_study_json(folder, study, metrics, len(tasks))
    last = [time.perf_counter(), 0.0]  # time of the last flush, and how long it took

    def flush() -> None:
        t0 = time.perf_counter()
        r, m = rows.assemble(study.axis_keys)
        write_table(folder, r, study.axis_keys, m)
        last[0] = time.perf_counter()
        last[1] = last[0] - t0

    def on_row(row: dict[str, Any]) -> None:
        rows.add(row, list(labels_of[row["run_id"]]))
        # rewrite runs.parquet every 10 s, or less often if writing it takes over 2% of the time
        if time.perf_counter() - last[0] >= max(FLUSH_EVERY_S, 50 * last[1]) and len(rows.by_id) < n_ids:
            flush()

    try:
        stats = execute(tasks, store, jobs=jobs, executor=executor, address=address, progress=progress,
                        keep_tables=study.spec.keep.tables, on_row=on_row)
    finally:
        flush()
    final, metrics = rows.assemble(study.axis_keys)
    write_study_json(folder, study, metrics, len(tasks))
    return StudyOutcome(study, folder, stats, final, metrics)
