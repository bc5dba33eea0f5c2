"""benchmarks/import_floor.py runs its four fresh processes and reports each one's CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import import_floor  # noqa: E402


def test_rows_run_and_are_reported(tmp_path, capsys):
    out = tmp_path / "floor.json"
    assert import_floor.main(["--repeat", "1", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["repeat"] == 1 and list(got["cpu_s"]) == list(import_floor.rows())
    cpu = list(got["cpu_s"].values())
    assert all(v > 0 for v in cpu)
    assert cpu[-1] > cpu[0]  # the whole case costs more than the bare interpreter
    text = capsys.readouterr().out
    assert "least CPU s of 1 fresh process(es) per row" in text and "python -c pass" in text


def test_bad_repeat(capsys):
    try:
        import_floor.main(["--repeat", "0"])
    except SystemExit as e:
        assert e.code == 2
    assert "--repeat must be >= 1" in capsys.readouterr().err
