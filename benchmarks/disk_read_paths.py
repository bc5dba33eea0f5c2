"""Read one file from disk the two ways the offloading systems read theirs, on this machine.

    python benchmarks/disk_read_paths.py [--dir DIR] [--size-mib N] [--threads 1 4 8] [--rounds R]

- ``o_direct``: ZeRO-Inference's NVMe path (DeepSpeed's async I/O: ``O_DIRECT`` reads of 1 MiB
  blocks, several in flight, into pinned buffers): here ``--threads`` threads each issue
  ``O_DIRECT`` reads of 1 MiB into their own page-aligned buffer, taking blocks in turn (the number
  of threads plays the queue depth).
- ``mmap``: FlexGen's TorchDisk path (flexgen/pytorch_backend.py ``copy_worker_func``): the file is
  opened with ``np.lib.format.open_memmap`` and copied into a relay buffer, so every page is read
  by a page fault through the page cache (read-around of ``read_ahead_kb``); here ``--threads``
  threads each copy their share of the file, 64 MiB at a time, into their own reused buffer.

Before every timed read the file's pages are dropped from the page cache
(``posix_fadvise(POSIX_FADV_DONTNEED)``, which needs no privileges for a file one owns), so both
paths read the device. Prints GB/s per path and thread count (the best of ``--rounds``) and the
ratio mmap / O_DIRECT; docs/offloading.md ("FlexGen's disk path on the A6000") quotes a run on the
development VM and what it does and does not show. The figures are this machine's: a virtual
disk, a shared CPU; the ratio within one run is the figure to read.
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

BLOCK = 1 << 20
"""O_DIRECT read size (DeepSpeed's aio ``block_size`` in ZeRO-Inference's disk runs: 1 MiB)."""
CHUNK = 64 << 20
"""Bytes a memory-mapped copy moves per call (each thread's relay buffer)."""


def write_file(path: Path, size: int) -> None:
    """A file of ``size`` bytes (a multiple of BLOCK) of non-zero data, synced to the device."""
    if size <= 0 or size % BLOCK:
        raise ValueError(f"size must be a positive multiple of {BLOCK} bytes, got {size}")
    block = (np.arange(BLOCK, dtype=np.uint32) % 251 + 1).astype(np.uint8).tobytes()
    with open(path, "wb") as f:
        for _ in range(size // BLOCK):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def drop_cache(path: Path) -> None:
    """Evict ``path``'s clean pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_o_direct(path: Path, threads: int, check: bool = False) -> tuple[int, float, int]:
    """(bytes read, seconds, byte sum of what was read if ``check``, else 0) of the whole file by
    ``threads`` threads of O_DIRECT 1 MiB reads. Raises OSError where the file system refuses
    O_DIRECT (tmpfs)."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    offsets = list(range(0, size, BLOCK))
    lock = threading.Lock()
    got = [0] * threads
    sums = [0] * threads
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
        view = np.frombuffer(buf, dtype=np.uint8)
        try:
            while True:
                with lock:
                    if not offsets:
                        return
                    off = offsets.pop()
                n = os.preadv(fd, [buf], off)
                got[i] += n
                if check:
                    sums[i] += int(view[:n].sum(dtype=np.uint64))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)
        finally:
            del view
            buf.close()

    try:
        sec = _timed_threads(worker, threads)
    finally:
        os.close(fd)
    if errors:
        raise errors[0]
    return sum(got), sec, sum(sums)


def read_mmap(path: Path, threads: int, check: bool = False) -> tuple[int, float, int]:
    """(bytes read, seconds, byte sum of what was read if ``check``, else 0) of the whole file by
    ``threads`` threads, each copying its share of a read-only memory map into its own reused
    buffer."""
    size = path.stat().st_size
    src = np.memmap(path, dtype=np.uint8, mode="r")
    share = -(-size // threads)
    bufs = [np.zeros(min(CHUNK, share), dtype=np.uint8) for _ in range(threads)]  # touched: no first-write faults
    got = [0] * threads
    sums = [0] * threads

    def worker(i: int) -> None:
        buf = bufs[i]
        for off in range(i * share, min((i + 1) * share, size), buf.size):
            n = min(buf.size, size - off, (i + 1) * share - off)
            np.copyto(buf[:n], src[off : off + n])
            got[i] += n
            if check:
                sums[i] += int(buf[:n].sum(dtype=np.uint64))

    sec = _timed_threads(worker, threads)
    return sum(got), sec, sum(sums)


def _timed_threads(worker: Callable[[int], None], threads: int) -> float:
    """Wall seconds of ``worker(0..threads-1)`` run in as many threads, from the first start to the
    last join."""
    t = time.perf_counter()
    ths = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    return time.perf_counter() - t


PATHS = {"o_direct": read_o_direct, "mmap": read_mmap}


def measure(path: Path, threads: list[int], rounds: int) -> dict[tuple[str, int], float]:
    """Best GB/s of each (path, thread count) over ``rounds`` rounds, the cache dropped before each
    read."""
    best: dict[tuple[str, int], float] = {}
    for _ in range(rounds):
        for nt in threads:
            for name, fn in PATHS.items():
                drop_cache(path)
                n, sec, _ = fn(path, nt)
                best[(name, nt)] = max(best.get((name, nt), 0.0), n / sec / 1e9)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp"), help="directory on the disk to measure (not tmpfs)")
    ap.add_argument("--size-mib", type=int, default=2048, help="file size (larger than the disk's cache)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--rounds", type=int, default=2)
    ns = ap.parse_args(argv)
    if ns.size_mib <= 0 or ns.rounds <= 0 or any(t <= 0 for t in ns.threads):
        print("disk_read_paths: --size-mib, --rounds and --threads must be positive", file=sys.stderr)
        return 2
    path = ns.dir / f"simkit-disk-read-paths-{os.getpid()}.bin"
    try:
        write_file(path, ns.size_mib * BLOCK)
        best = measure(path, ns.threads, ns.rounds)
    except OSError as e:
        print(f"disk_read_paths: {ns.dir}: {e.strerror or e} (O_DIRECT needs a disk file system, not tmpfs)", file=sys.stderr)
        return 2
    finally:
        path.unlink(missing_ok=True)
    print(f"{'threads':>7s} {'O_DIRECT GB/s':>14s} {'mmap GB/s':>10s} {'mmap / O_DIRECT':>16s}")
    for nt in ns.threads:
        a, b = best[("o_direct", nt)], best[("mmap", nt)]
        print(f"{nt:7d} {a:14.3f} {b:10.3f} {b / a:16.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
