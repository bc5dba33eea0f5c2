"""docs/examples.md stays true: its files are written, its `simkit` commands run (in order, in
one empty folder) and every line of a ```text block appears in the output of the commands of
the ```sh block before it (whitespace runs compared as one space)."""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import pytest

from simkit.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "examples.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


def _blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(DOC.read_text())]


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_the_doc_has_files_commands_and_checked_output() -> None:
    kinds = [k for k, _ in _blocks()]
    assert kinds.count("yaml") >= 5 and kinds.count("sh") >= 5 and kinds.count("text") >= 5
    for kind, body in _blocks():
        if kind == "yaml":
            assert body.startswith("# file: "), body[:40]
        if kind == "sh":
            assert all(line.startswith("simkit ") for line in body.splitlines() if line.strip())


def test_doc_examples_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    out = ""
    checked = 0
    for kind, body in _blocks():
        if kind == "yaml":
            name = body.splitlines()[0].removeprefix("# file: ").strip()
            (tmp_path / name).write_text(body)
        elif kind == "sh":
            out = ""
            for line in body.splitlines():
                if not line.strip():
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rc = main(shlex.split(line)[1:])
                captured = capsys.readouterr()
                assert rc == 0, f"{line}: exit {rc}\n{captured.err}"
                out += captured.out
        elif kind == "text":
            got = _squash(out)
            for line in body.splitlines():
                if line.strip():
                    assert _squash(line) in got, f"docs/examples.md quotes a line the commands did not print:\n{line}\n--- printed:\n{out}"
                    checked += 1
    assert checked >= 10
