"""Which threads fault in a memory-mapped tensor that FlexGen's disk path copies, on this machine.

    python benchmarks/memmap_copy_faults.py [--dir DIR] [--size-mib N] [--workers K]

FlexGen's copy threads (flexgen/pytorch_backend.py ``copy_worker_func``) read a disk tensor as
``torch.from_numpy(np.lib.format.open_memmap(path))`` and copy it into their relay buffer with
``Tensor.copy_``. This script makes such a file (a ``.npy`` of fp16), drops its pages from the page
cache (``posix_fadvise(POSIX_FADV_DONTNEED)``), copies it once from the main thread and once from
each of ``--workers`` Python threads, and prints, for each copy, the minor and major page faults
each OS thread of the process took during it (``/proc/self/task/*/stat``; the destination is
touched beforehand, as FlexGen's reused relay buffer is, so the faults are the source's). ATen splits a large CPU
copy over the calling thread's OpenMP team, so the faults fall on up to ``torch.get_num_threads()``
threads, not on the calling thread alone (docs/offloading.md, Known gaps, ninth round).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # (imported by tests as well as run)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from disk_read_paths import drop_cache  # noqa: E402  (one home for the page-cache eviction)

Faults = dict[int, tuple[int, int]]
"""OS thread id -> (minor, major) page faults."""


def thread_faults() -> Faults:
    """Minor and major page faults of every thread of this process so far."""
    out: Faults = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[int(tid)] = (int(fields[7]), int(fields[9]))
    return out


def make_file(path: Path, size: int) -> None:
    """An fp16 ``.npy`` of ``size`` bytes of ones, synced to the device."""
    if size <= 0 or size % 2:
        raise ValueError(f"size must be a positive even number of bytes, got {size}")
    a = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(size // 2,))
    a[:] = 1
    a.flush()
    del a
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_faults(path: Path) -> tuple[int, Faults]:
    """Copy ``path``'s memory map into a tensor as FlexGen does, in the calling thread; return that
    thread's id and the page faults each thread took during the copy."""
    import torch

    drop_cache(path)
    src = torch.from_numpy(np.lib.format.open_memmap(path))  # FlexGen's map_to_torch_tensor (mode r+)
    dst = torch.zeros(src.shape, dtype=src.dtype)  # touched beforehand, as FlexGen's reused relay buffer
    before = thread_faults()
    dst.copy_(src)
    after = thread_faults()
    delta = {t: (v[0] - before.get(t, (0, 0))[0], v[1] - before.get(t, (0, 0))[1]) for t, v in after.items()}
    return threading.get_native_id(), {t: d for t, d in delta.items() if d != (0, 0)}


def run(path: Path, workers: int) -> list[tuple[str, int, Faults]]:
    """(caller, caller's thread id, faults by thread) of one copy from the main thread and one from
    each of ``workers`` Python threads in turn."""
    out = [("main", *copy_faults(path))]
    got: list[tuple[int, Faults]] = []
    for i in range(workers):
        th = threading.Thread(target=lambda: got.append(copy_faults(path)))
        th.start()
        th.join()
        out.append((f"worker {i}", *got[-1]))
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp"), help="directory on the disk to read (not tmpfs)")
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    path = args.dir / f"memmap_copy_faults_{os.getpid()}.npy"
    try:
        make_file(path, args.size_mib << 20)
        print(f"torch intra-op threads: {torch.get_num_threads()}; {args.size_mib} MiB fp16 memory map")
        for who, tid, faults in run(path, args.workers):
            cells = ", ".join(f"{t}{' (caller)' if t == tid else ''}: {mn} minor / {mj} major" for t, (mn, mj) in sorted(faults.items()))
            print(f"{who:9s} {len(faults)} thread(s) faulted: {cells}")
    finally:
        path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
