"""benchmarks/simulate_repeat.py times simulate() in a warm process, alone or against a checkout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import simulate_repeat  # noqa: E402


def test_one_tree(capsys):
    assert simulate_repeat.main(["--repeat", "1", "quickstart"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("quickstart: simulate() least CPU s of 1: ") and float(line.rsplit(" ", 1)[1]) > 0


def test_against_itself(capsys):
    assert simulate_repeat.main(["--repeat", "1", "--rounds", "1", "--against", str(ROOT), "quickstart"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("quickstart round 1: simulate() least CPU s of 1: against ") and "this / against" in line


@pytest.mark.parametrize(("argv", "message"), [
    (["nosuch"], "unknown case 'nosuch'"),
    (["--repeat", "0", "quickstart"], "--repeat and --rounds must be >= 1"),
    (["--against", "/", "quickstart"], "not a simkit checkout"),
])  # fmt: skip
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        simulate_repeat.main(argv)
    assert e.value.code == 2 or message in str(e.value.code)
    assert message in capsys.readouterr().err + str(e.value.code)
