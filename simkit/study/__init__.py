"""What-if studies: sweeps of scenario overrides, run resumably on local processes or Ray.

``simkit study STUDY.yaml --out DIR`` (docs/study.md). From Python, :func:`load` reads a study
folder into a pandas DataFrame (one row per run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load(folder: str | Path) -> Any:
    """The study folder's runs.parquet as a pandas DataFrame (one row per run)."""
    from simkit.study.show import load_runs

    return load_runs(folder)
