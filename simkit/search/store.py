"""A resumable store of finished evaluations, keyed by the hash of the complete scenario.

One JSON line per evaluation, appended and flushed as each finishes, so an interrupted search
loses at most the simulation it was running. ``RunStore(None)`` keeps rows in memory only.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any


def scenario_hash(data: dict[str, Any]) -> str:
    """A short stable id of a scenario's plain data (key order does not matter)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if hasattr(v, "item") and not isinstance(v, str | bytes):
        return _clean(v.item())
    return v


def _restore(v: Any) -> Any:
    if v is None:
        return math.nan
    if v == "inf":
        return math.inf
    if v == "-inf":
        return -math.inf
    return v


class RunStore:
    """``done()`` (ids finished), ``put(run_id, row)``, ``get(run_id)``, ``rows()``."""

    def __init__(self, folder: str | Path | None, name: str = "evaluations.jsonl") -> None:
        self._rows: dict[str, dict[str, Any]] = {}
        self.path = Path(folder) / name if folder is not None else None
        if self.path is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interruption: that run is simply redone
                if isinstance(rec, dict) and "run_id" in rec and isinstance(rec.get("row"), dict):
                    self._rows[rec["run_id"]] = {k: _restore(v) for k, v in rec["row"].items()}

    def done(self) -> set[str]:
        return set(self._rows)

    def get(self, run_id: str) -> dict[str, Any]:
        return dict(self._rows[run_id])

    def put(self, run_id: str, row: dict[str, Any]) -> None:
        self._rows[run_id] = dict(row)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps({"run_id": run_id, "row": {k: _clean(v) for k, v in row.items()}}, sort_keys=True) + "\n")
                f.flush()

    def rows(self) -> list[tuple[str, dict[str, Any]]]:
        return [(k, dict(v)) for k, v in self._rows.items()]
