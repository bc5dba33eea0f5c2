"""The run store: one folder, one sub-folder per run, keyed by the hash of the resolved scenario.

Layout (``docs/study.md``)::

    FOLDER/runs/<run_id>/scenario.yaml   the fully resolved scenario of the run
    FOLDER/runs/<run_id>/summary.json    its summary (+ requests.parquet, iterations.parquet when kept)
    FOLDER/runs/<run_id>/row.json        its result row (and the names of its label columns), written
                                         LAST: the run is finished iff this file exists

Every file is written to a temporary name and renamed into place (``os.replace`` is atomic), so
a process killed at any moment (``kill -9`` included) leaves each file either absent or
complete: a run is either finished (``row.json`` present, with its other files) or not started.
A run is stored once under its id, so rows are never duplicated. Nothing is fsync'ed: this
survives killed processes, not a power cut of the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simkit.errors import StudyError

ROW_FILE = "row.json"
TABLE_FILES = ("requests.parquet", "iterations.parquet")


def canonical_json(obj: Any) -> str:
    """One spelling of plain data: sorted keys, no whitespace (the input of :func:`scenario_hash`)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def scenario_hash(resolved: dict[str, Any]) -> str:
    """The id of a run: sha256 of the canonical JSON of its fully resolved scenario and of what
    else decides its result (:func:`inputs_fingerprint`: the simkit version, the catalog and
    calibration files, and the files the scenario names), 16 hex digits. A stored run is reused
    only when none of them changed, so a re-calibration, an edited GPU YAML or an upgrade
    recomputes instead of returning a stale result."""
    doc = {"scenario": resolved, "inputs": inputs_fingerprint(), "files": _named_files(resolved)}
    return hashlib.sha256(canonical_json(doc).encode("utf-8")).hexdigest()[:16]


_SMALL_FILE = 1 << 20
"""Files up to this size are fingerprinted by content, larger ones (samples, traces) by size and
modification time."""


def _file_key(path: Path) -> list[Any]:
    try:
        st = path.stat()
        if st.st_size <= _SMALL_FILE:
            return [str(path), hashlib.sha256(path.read_bytes()).hexdigest()]
        return [str(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(path), None]


_FINGERPRINTS: dict[tuple[str, ...], str] = {}


def inputs_fingerprint() -> str:
    """sha256 over the simkit version and every catalog file (``hw_specs``, models,
    ``SIMKIT_CATALOG_PATH``) and calibration profile file a run could read (every folder of the
    profile search path: ``SIMKIT_PROFILE_PATH``, the per-user folder, the shipped profiles); computed once per
    process for a given set of folders."""
    from simkit import __version__
    from simkit.specs.calibration import profile_search_path
    from simkit.specs.catalog import _folders

    catalogs = tuple(str(f) for f in _folders())
    roots = (*catalogs, *(str(f.path) for f in profile_search_path()))  # every folder `calibration: auto` searches
    if roots not in _FINGERPRINTS:
        h = hashlib.sha256(f"simkit {__version__}".encode())
        for i, root in enumerate(roots):
            folder = Path(root)
            if not folder.is_dir():
                continue
            pattern = "*" if i >= len(catalogs) else "*.yaml"
            for f in sorted(folder.rglob(pattern)):
                if f.is_file():
                    h.update(canonical_json(_file_key(f)).encode("utf-8"))
        _FINGERPRINTS[roots] = h.hexdigest()
    return _FINGERPRINTS[roots]


def _named_files(resolved: Any) -> list[list[Any]]:
    """Fingerprints of the existing files a resolved scenario names (trace, model YAML or HF
    config, calibration profile): any string value that is a path to a file."""
    out: list[list[Any]] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k in sorted(x):
                walk(x[k])
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str) and ("/" in x or "\\" in x) and len(x) < 4096:
            p = Path(x)
            try:
                is_file = p.is_absolute() and p.is_file()
            except OSError:
                is_file = False
            if is_file:
                out.append(_file_key(p))
            elif p.is_absolute() and p.is_dir() and (p / "profile.yaml").is_file():
                out.extend(_file_key(f) for f in sorted(p.iterdir()) if f.is_file())

    walk(resolved)
    return out


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers (and a restart after a kill) see all or nothing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class RunStore:
    """A folder of finished runs; append-only and safe against a kill at any moment."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.runs_dir = self.folder / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def done(self) -> set[str]:
        """Run ids with a stored result row (status ok or error)."""
        if not self.runs_dir.is_dir():
            return set()
        out = set()
        with os.scandir(self.runs_dir) as it:
            for e in it:
                if e.is_dir() and os.path.exists(os.path.join(e.path, ROW_FILE)):
                    out.add(e.name)
        return out

    def has_tables(self, run_id: str) -> bool:
        d = self.run_dir(run_id)
        return all((d / f).exists() for f in TABLE_FILES)

    def _dir(self, run_id: str) -> Path:
        d = self.run_dir(run_id)
        if not d.is_dir():
            d.mkdir(parents=True, exist_ok=True)
        return d

    def put_files(self, run_id: str, files: dict[str, bytes]) -> None:
        """Store a run's files (scenario.yaml, summary.json, tables); call before :meth:`put`."""
        d = self._dir(run_id)
        for name, data in files.items():
            atomic_write(d / name, data)

    def put(self, run_id: str, row: dict[str, Any], labels: Sequence[str] = ()) -> None:
        """Store the result row of a run (atomically); from now on the run counts as done.
        ``labels`` names the row's label columns (axis keys, variant, repeat), the rest being results."""
        doc = {"row": row, "labels": sorted(labels)}
        atomic_write(self._dir(run_id) / ROW_FILE, (json.dumps(doc, sort_keys=True) + "\n").encode("utf-8"))

    def record(self, run_id: str) -> dict[str, Any]:
        """The stored document of a finished run: ``{"row": ..., "labels": [...]}``."""
        p = self.run_dir(run_id) / ROW_FILE
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(doc.get("row"), dict):
                raise ValueError("no row")
            labels = doc.get("labels", [])
            if not isinstance(labels, list) or not all(isinstance(k, str) for k in labels):
                raise ValueError("labels is not a list of column names")
            return doc
        except (OSError, ValueError, AttributeError) as e:
            raise StudyError(f"cannot read a stored run ({e.__class__.__name__}); delete its folder to recompute it",
                             where=str(p)) from None

    def row(self, run_id: str) -> dict[str, Any]:
        """The stored row of a finished run."""
        return self.record(run_id)["row"]

    def labels(self, run_id: str) -> list[str]:
        """The names of the label columns the row was stored with."""
        return list(self.record(run_id).get("labels", []))

    def rows(self) -> list[dict[str, Any]]:
        """Every stored row, ordered by run id."""
        return [self.row(r) for r in sorted(self.done())]
