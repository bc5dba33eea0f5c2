"""SSD read/write bandwidth with direct I/O (the ``ssd_read``/``ssd_write``/``ssd_seq_read``
samples of a profile).

A scratch file in the directory the user names is read and written at random block-aligned
offsets, and read sequentially (each reader streams its own contiguous share of the file, as an
offloading engine streams weights) with ``os.O_DIRECT`` (page-aligned ``mmap`` buffers, so the page cache is bypassed),
over block sizes 4 KiB..4 MiB and queue depths 1..16 (one thread per outstanding request;
``os.preadv``/``os.pwritev`` release the GIL). Where the filesystem refuses O_DIRECT (tmpfs,
some overlay or network filesystems) the benchmark falls back to buffered I/O, ``fsync`` after
writes and ``posix_fadvise(DONTNEED)`` before reads, and records ``direct_io: false``.

No torch needed. The scratch file is removed afterwards.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from simkit.calibrate.samples import Measurement, make_row
from simkit.errors import CalibrationError

ALIGN = 4096


def filesystem_of(path: str | os.PathLike[str]) -> str:
    """The filesystem type of the mount holding ``path`` (from /proc/mounts; '' if unknown)."""
    p = os.path.realpath(path)
    best, fstype = "", ""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (p == mnt or p.startswith(mnt.rstrip("/") + "/") or mnt == "/") and len(mnt) >= len(best):
            best, fstype = mnt, parts[2]
    return fstype


def _aligned(size: int, fill: bool = True) -> mmap.mmap:
    buf = mmap.mmap(-1, size)
    if fill:
        buf[:] = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    return buf


class ScratchFile:
    """The benchmark file: opened with O_DIRECT when the filesystem allows it."""

    def __init__(self, directory: str | os.PathLike[str], size: int, *, direct: bool | None = None) -> None:
        d = Path(directory)
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CalibrationError(f"cannot create the SSD benchmark directory: {e}", where=str(d)) from None
        if not os.access(d, os.W_OK):
            raise CalibrationError("the SSD benchmark directory is not writable", where=str(d))
        self.path = d / f".simkit-ssd-bench-{os.getpid()}.bin"
        self.size = max(ALIGN, (size // (1 << 20)) * (1 << 20) or size)
        self.direct = False
        self.fd = -1
        want_direct = direct is None or direct
        o_direct = getattr(os, "O_DIRECT", 0)
        if want_direct and o_direct:
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | o_direct, 0o600)
                probe = _aligned(ALIGN)
                os.pwritev(self.fd, [probe], 0)
                os.preadv(self.fd, [probe], 0)
                self.direct = True
            except OSError:
                if self.fd >= 0:
                    os.close(self.fd)
                self.fd = -1
        if direct and not self.direct:
            raise CalibrationError("O_DIRECT was refused by this filesystem", where=str(d))
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._fill()

    def _fill(self) -> None:
        chunk = min(self.size, 4 << 20)
        buf = _aligned(chunk)
        off = 0
        while off < self.size:
            n = min(chunk, self.size - off)
            os.pwritev(self.fd, [memoryview(buf)[:n]] if n < chunk else [buf], off)
            off += n
        os.fsync(self.fd)
        self.drop_cache()

    def drop_cache(self) -> None:
        if not self.direct and hasattr(os, "posix_fadvise"):
            with contextlib.suppress(OSError):
                os.fsync(self.fd)
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            self.path.unlink()

    def __enter__(self) -> ScratchFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _worker(fd: int, buf: mmap.mmap, offsets: Sequence[int], write: bool) -> int:
    done = 0
    if write:
        for off in offsets:
            done += os.pwritev(fd, [buf], off)
    else:
        for off in offsets:
            done += os.preadv(fd, [buf], off)
    return done


def _one_rep(f: ScratchFile, pool: ThreadPoolExecutor, bufs: list[mmap.mmap], block: int, depth: int, ops_per_thread: int,
             write: bool, rng: random.Random, sequential: bool = False) -> tuple[float, int]:  # fmt: skip
    """One repetition: ``depth`` threads each issue ``ops_per_thread`` requests of ``block`` bytes,
    at random block offsets, or (``sequential``) consecutively through its own contiguous share of
    the file from a random starting block, as a stream of weights is read."""
    slots = max(1, f.size // block)
    if sequential:
        share = max(1, slots // depth)
        plans = []
        for i in range(depth):
            start = rng.randrange(share)
            plans.append([(i * share + (start + j) % share) * block for j in range(ops_per_thread)])
    else:
        plans = [[rng.randrange(slots) * block for _ in range(ops_per_thread)] for _ in range(depth)]
    if not write:
        f.drop_cache()
    t0 = time.perf_counter()
    futs = [pool.submit(_worker, f.fd, bufs[i], plans[i], write) for i in range(depth)]
    moved = sum(fu.result() for fu in futs)
    if write and not f.direct:
        os.fsync(f.fd)  # buffered fallback: time until the data is on the device
    return time.perf_counter() - t0, moved


SSD_CLASSES = ("ssd_read", "ssd_write", "ssd_seq_read")
"""Random reads, random writes, and sequential reads (streamed weights: each reader walks its own
contiguous share of the file)."""


def ssd_bench(
    directory: str | os.PathLike[str],
    *,
    file_mb: int = 64,
    block_sizes: Sequence[int] = (4096, 65536, 1 << 20, 4 << 20),
    queue_depths: Sequence[int] = (1, 4, 16),
    budget_s: float = 0.3,
    min_reps: int = 3,
    max_reps: int = 9,
    source: str = "simkit calibrate",
    direct: bool | None = None,
    seed: int = 0,
    classes: Sequence[str] = SSD_CLASSES,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Measure read and write bandwidth per (block size, queue depth); returns (sample rows,
    facts). ``direct=None`` tries O_DIRECT and falls back to buffered I/O; True requires it;
    False forces the buffered path. ``classes``: which of :data:`SSD_CLASSES` to measure."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    fstype = filesystem_of(directory)
    with ScratchFile(directory, file_mb << 20, direct=direct) as f:
        mode = "direct" if f.direct else "buffered"
        target = budget_s / max(min_reps, 1)
        for cls in classes:
            write = cls == "ssd_write"
            seq = cls == "ssd_seq_read"
            for block in block_sizes:
                if block > f.size or block % ALIGN:
                    continue
                for depth in queue_depths:
                    bufs = [_aligned(block) for _ in range(depth)]
                    with ThreadPoolExecutor(max_workers=depth) as pool:
                        ops = max(1, min(4, f.size // (block * depth)))
                        t, _ = _one_rep(f, pool, bufs, block, depth, ops, write, rng, seq)  # warm-up + estimate
                        per_op = t / ops
                        ops = int(max(1, min(f.size // (block * depth), math.ceil(target / max(per_op, 1e-6)))))
                        times = []
                        volume = 0
                        t_start = time.perf_counter()
                        for r in range(max_reps):
                            t, moved = _one_rep(f, pool, bufs, block, depth, ops, write, rng, seq)
                            times.append(t)
                            volume = moved
                            if r + 1 >= min_reps and time.perf_counter() - t_start > budget_s:
                                break
                    for b in bufs:
                        b.close()
                    meas = Measurement(times)
                    rows.append(
                        make_row(
                            cls, mode, "", meas, flops=0.0, bytes_moved=float(volume), source=source,
                            bytes=float(volume), block_size=block, queue_depth=depth, threads=depth,
                        )
                    )
        facts = {
            "dir": str(Path(directory).resolve()),
            "filesystem": fstype,
            "direct_io": bool(f.direct),
            "file_bytes": int(f.size),
            "note": (
                "O_DIRECT, page-aligned buffers" if f.direct else
                f"{'O_DIRECT disabled' if direct is False else 'O_DIRECT refused by the filesystem'}: buffered I/O "
                "with fsync after writes and posix_fadvise(DONTNEED) before reads"
            ),
        }
        if fstype == "tmpfs":
            facts["warning"] = "tmpfs is memory, not an SSD: these numbers are memory bandwidth"
    best_read = max((r["bytes_moved"] / r["time_s"] for r in rows if r["op_class"] == "ssd_read"), default=0.0)
    best_write = max((r["bytes_moved"] / r["time_s"] for r in rows if r["op_class"] == "ssd_write"), default=0.0)
    best_seq = max((r["bytes_moved"] / r["time_s"] for r in rows if r["op_class"] == "ssd_seq_read"), default=0.0)
    facts["read_bandwidth"] = float(best_read)
    facts["seq_read_bandwidth"] = float(best_seq)
    facts["write_bandwidth"] = float(best_write)
    return rows, facts
