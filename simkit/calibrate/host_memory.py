"""Host first-touch microbenchmark (``simkit calibrate --device cpu``): what writing freshly
allocated host memory costs beyond writing memory that is already mapped.

The mechanism it measures: a host tensor larger than glibc's mmap threshold (32 MiB at most:
its dynamic threshold's ceiling, and the calibration's own :func:`~simkit.calibrate.bench.tune_allocator`
setting) is served by PyTorch's CPU allocator (``c10::alloc_cpu``, ``posix_memalign``) from a
fresh anonymous ``mmap`` and given back with ``munmap`` when it is freed. Its first write faults
every page in, and the kernel zero-fills each page before the write lands (PyTorch asks for
transparent huge pages only where ``C10_THP_MEM_ALLOC_ENABLE`` is set, so with the kernel's
default ``madvise`` mode these are 4 KiB pages). A code that allocates such temporaries at every
layer and step (``plan.offload.host_temporaries: fresh``) pays this on every call; a reused
buffer (FlexGen's workspace) pays it once.

Per thread count, the suite times, for each size, ``torch.empty`` + ``fill_`` + free of a new
tensor (``fresh``) and ``fill_`` of a tensor allocated and written before (``reused``), and fits
the extra time ``fresh - reused`` as ``fixed_s + bytes / first_touch_bandwidth``
(:func:`fit_first_touch`). The result goes into the profile's ``device.host_first_touch``;
``bandwidth`` (at the profile's thread count) is what ``cost/offload.OffloadCompute`` divides the
fresh bytes by. torch is imported by the caller (the suite).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simkit.errors import CalibrationError

MIB = 2**20
FIRST_TOUCH_SIZES = {
    "tiny": (48 * MIB, 96 * MIB),
    "quick": (128 * MIB, 384 * MIB),
    "full": (128 * MIB, 512 * MIB, 1024 * MIB, 2048 * MIB),
}
"""Bytes of the tensors timed per suite size: above the 32 MiB mmap threshold, up to the
0.7-3.5 GB temporaries of the published ZeRO-Inference runs (the full suite's 2 GiB)."""
FIRST_TOUCH_REPS = {"tiny": 2, "quick": 3, "full": 5}
"""Repetitions of each (threads, size); the fit uses every one."""
THP_PATH = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(path: Path = THP_PATH) -> str:
    """The kernel's transparent-huge-page mode (the bracketed word of ``enabled``), or ``unknown``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return "unknown"


def time_first_touch(
    torch: Any, sizes: Sequence[int], threads: Sequence[int], reps: int, clock: Callable[[], float] = time.perf_counter
) -> list[dict[str, float]]:
    """Raw timings: one row per (threads, size, repetition) with ``fresh_s`` (allocate a new fp32
    tensor of ``bytes``, write it once, free it) and ``reused_s`` (write a tensor of the same size
    allocated and written before). Restores torch's thread count."""
    before = int(torch.get_num_threads())
    rows: list[dict[str, float]] = []
    try:
        for t in threads:
            torch.set_num_threads(int(t))
            for size in sizes:
                numel = int(size) // 4
                reused = torch.empty(numel, dtype=torch.float32)
                reused.fill_(1.0)  # faulted in once, as a workspace is
                for _ in range(reps):
                    t0 = clock()
                    x = torch.empty(numel, dtype=torch.float32)
                    x.fill_(1.0)
                    del x
                    t1 = clock()
                    reused.fill_(2.0)
                    t2 = clock()
                    rows.append({"threads": float(t), "bytes": float(numel * 4), "fresh_s": t1 - t0, "reused_s": t2 - t1})
                del reused
    finally:
        torch.set_num_threads(before)
    return rows


def fit_first_touch(rows: Sequence[Mapping[str, float]], threads: int) -> dict[str, Any]:
    """Fit the raw rows of :func:`time_first_touch`: per thread count, the extra seconds of a fresh
    tensor over a reused one as ``fixed_s + bytes / first_touch_bandwidth`` (least relative error,
    :func:`simkit.calibrate.fit.fit_latency_bandwidth`), and the plain write rates of both at the
    largest size (median). ``bandwidth`` is the first-touch rate at ``threads`` (the profile's
    thread count). Raises CalibrationError when a thread count has fewer than two sizes or a
    fresh write is not slower than a reused one (nothing to fit)."""
    from simkit.calibrate.fit import fit_latency_bandwidth

    if not rows:
        raise CalibrationError("no first-touch timings to fit")
    by: dict[int, list[Mapping[str, float]]] = {}
    for r in rows:
        by.setdefault(int(r["threads"]), []).append(r)
    if threads not in by:
        raise CalibrationError(f"no first-touch timings at the profile's {threads} thread(s)")
    out: list[dict[str, Any]] = []
    for t in sorted(by):
        rs = by[t]
        size = np.array([r["bytes"] for r in rs], dtype=np.float64)
        fresh = np.array([r["fresh_s"] for r in rs], dtype=np.float64)
        reused = np.array([r["reused_s"] for r in rs], dtype=np.float64)
        extra = fresh - reused
        if len(set(size.tolist())) < 2:
            raise CalibrationError(f"first-touch timings at {t} thread(s) need at least two sizes to fit")
        if np.any(extra <= 0) or np.any(reused <= 0):
            raise CalibrationError(
                f"at {t} thread(s) a fresh tensor was not slower to write than a reused one: no first-touch cost "
                "to fit (another process disturbed the timing, or the allocator reuses freed memory)"
            )
        bw, fixed, err = fit_latency_bandwidth(size, extra)
        big = size >= size.max()
        out.append({
            "threads": t,
            "first_touch_bandwidth": bw,
            "fixed_s": fixed,
            "fit_error": err,
            "fresh_write_bandwidth": float(np.median(size[big] / fresh[big])),
            "reused_write_bandwidth": float(np.median(size[big] / reused[big])),
        })
    at = next(e for e in out if e["threads"] == threads)
    return {"bandwidth": at["first_touch_bandwidth"], "threads": threads, "by_threads": out}


def measure_first_touch(torch: Any, suite: str, threads: int, allocator: str, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Time and fit the first-touch cost at 1 thread and at ``threads`` (the suite's size
    ``suite``: tiny, quick or full) -> the profile's ``device.host_first_touch`` mapping, raw
    timings included (``samples``: threads, bytes, fresh_s, reused_s)."""
    counts = sorted({1, int(threads)})
    sizes = FIRST_TOUCH_SIZES[suite]
    rows = time_first_touch(torch, sizes, counts, FIRST_TOUCH_REPS[suite], clock)
    fit = fit_first_touch(rows, int(threads))
    fit.update({
        "method": "torch.empty + fill_ + free of a new fp32 tensor minus fill_ of a reused one (simkit.calibrate.host_memory)",
        "sizes": [int(s) for s in sizes],
        "repetitions": FIRST_TOUCH_REPS[suite],
        "transparent_hugepage": thp_mode(),
        "allocator": allocator,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "samples": [[int(r["threads"]), int(r["bytes"]), float(r["fresh_s"]), float(r["reused_s"])] for r in rows],
    })
    return fit


def describe_first_touch(ft: Mapping[str, Any]) -> str:
    """One line of ``simkit calibrate``'s output for a ``device.host_first_touch`` mapping."""
    parts = [
        f"{e['threads']} thread(s) {e['first_touch_bandwidth'] / 1e9:.2f} GB/s (fresh writes {e['fresh_write_bandwidth'] / 1e9:.2f}, "
        f"reused {e['reused_write_bandwidth'] / 1e9:.2f} GB/s)"
        for e in ft["by_threads"]
    ]
    return (f"host first-touch rate {ft['bandwidth'] / 1e9:.2f} GB/s at {ft['threads']} thread(s): " + "; ".join(parts)
            + f"; transparent huge pages {ft.get('transparent_hugepage', 'unknown')}")
