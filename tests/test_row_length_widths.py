"""Argument checks of benchmarks/row_length_widths.py (its timing run is a benchmark, not a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "row_length_widths.py"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--rows", "1,x"], "--rows: expected comma-separated positive integers"),
        (["--rows", "1,32"], "at most 16 rows"),
        (["--test-k", "0"], "--test-k: expected comma-separated positive integers"),
    ],
)
def test_bad_lists_are_one_line_errors(args: list[str], needle: str) -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), str(ROOT / "calibration" / "profiles" / "ci-vm-cpu"), *args],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_a_missing_profile_is_a_one_line_error(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "none"), "--rows", "1"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert r.returncode == 2
    assert "calibration profile not found" in r.stderr and "Traceback" not in r.stderr
