"""benchmarks/disk_read_paths.py: both read paths read the whole file, and the command runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    return load_benchmark("disk_read_paths")


def _expected_sum(size: int) -> int:
    block = (np.arange(1 << 20, dtype=np.uint32) % 251 + 1).astype(np.uint8)
    return int(block.sum(dtype=np.uint64)) * (size >> 20)


@pytest.mark.parametrize("threads", [1, 3])
def test_mmap_path_reads_every_byte(tmp_path: Path, threads: int) -> None:
    db = _bench()
    f = tmp_path / "f.bin"
    db.write_file(f, 5 << 20)
    db.drop_cache(f)
    n, sec, total = db.read_mmap(f, threads, check=True)
    assert n == 5 << 20 and sec > 0.0
    assert total == _expected_sum(5 << 20)


@pytest.mark.parametrize("threads", [1, 3])
def test_o_direct_path_reads_every_byte(tmp_path: Path, threads: int) -> None:
    db = _bench()
    f = tmp_path / "f.bin"
    db.write_file(f, 5 << 20)
    try:
        n, sec, total = db.read_o_direct(f, threads, check=True)
    except OSError as e:  # tmpfs and some overlay file systems refuse O_DIRECT
        pytest.skip(f"O_DIRECT not supported under {tmp_path}: {e}")
    assert n == 5 << 20 and sec > 0.0
    assert total == _expected_sum(5 << 20)


def test_file_size_must_be_whole_blocks(tmp_path: Path) -> None:
    db = _bench()
    with pytest.raises(ValueError, match="multiple of"):
        db.write_file(tmp_path / "f.bin", 1000)


def test_command_prints_both_paths_or_refuses_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _bench()
    rc = db.main(["--dir", str(tmp_path), "--size-mib", "4", "--threads", "1", "2", "--rounds", "1"])
    out, err = capsys.readouterr()
    if rc == 2:  # O_DIRECT refused by the test machine's file system: one line, no traceback
        assert "O_DIRECT" in err and "Traceback" not in err
    else:
        assert rc == 0
        lines = out.strip().splitlines()
        assert "mmap / O_DIRECT" in lines[0] and len(lines) == 3
        assert all(float(x) > 0 for x in lines[1].split()[1:])
    assert not list(tmp_path.iterdir())  # the measured file is removed
    assert db.main(["--size-mib", "0"]) == 2
