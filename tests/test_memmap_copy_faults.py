"""benchmarks/memmap_copy_faults.py: a copy from a memory map faults its pages in on the caller's
threads, from the main thread and from a Python thread, and the command runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import load_benchmark

torch = pytest.importorskip("torch")


def test_every_copy_faults_within_the_callers_team(tmp_path: Path) -> None:
    mb = load_benchmark("memmap_copy_faults")
    f = tmp_path / "t.npy"
    mb.make_file(f, 8 << 20)
    rows = mb.run(f, 1)
    assert [who for who, _, _ in rows] == ["main", "worker 0"]
    for _, _, faults in rows:
        assert faults, "a copy of a dropped memory map takes page faults"
        # the calling thread and at most its OpenMP team (never the other caller's threads)
        assert 1 <= len(faults) <= torch.get_num_threads() + 1
    main_tid, worker_tid = rows[0][1], rows[1][1]
    assert main_tid != worker_tid


def test_command_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mb = load_benchmark("memmap_copy_faults")
    assert mb.main(["--dir", str(tmp_path), "--size-mib", "4", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "main" in out and "worker 0" in out and "thread(s) faulted" in out
    assert not list(tmp_path.glob("*.npy"))


def test_make_file_refuses_an_odd_size(tmp_path: Path) -> None:
    mb = load_benchmark("memmap_copy_faults")
    with pytest.raises(ValueError, match="even"):
        mb.make_file(tmp_path / "x.npy", 3)
