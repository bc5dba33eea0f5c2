"""Waking sleeping OpenMP worker threads: a per-parallel-region term of the CPU cost model.

With more than one torch thread every kernel large enough to be split runs as an OpenMP parallel
region: the calling thread wakes the team's worker threads, each runs its share, all meet at the
end. Between regions the workers wait. How they wait is libgomp's wait policy: with
``OMP_WAIT_POLICY=active`` they spin (and find the next region at once); with the default they
spin ``GOMP_SPINCOUNT`` iterations (300,000 when neither variable is set, per libgomp's manual)
and then sleep in the kernel, so a region that starts after a longer serial stretch of the calling
thread (Python, dispatch, kernels too small to split) waits for them to be woken. A calibration
loop runs one kernel back to back and never pays that; a real step does, after each long enough
serial gap. The cost depends on what runs between kernels, not on the kernel's size.

The calibration suite measures it (``simkit.calibrate.bench.measure_thread_wakeup``) as a curve:
the extra seconds of a small parallel region after a serial gap of each length in a ladder,
against the same region back to back, less what the same gaps cost at one thread (cache and clock
effects that are not the wake-up). It is recorded in the profile as ``device.thread_wakeup``
together with the thread count and the OpenMP settings it was measured under. The cost model
(:func:`wakeup_extra`) walks a forward pass's operators in order, adds up the serial time before
each parallel one (the operators' own predicted times, which include the calling thread's Python
and dispatch work) and adds the curve's value at that gap to it. Profiles without the section
(every profile measured at one thread, and those measured before the term existed) add nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simkit.errors import CalibrationError

GRAIN_SIZE = 32768
"""torch's ``at::internal::GRAIN_SIZE``: an elementwise kernel over fewer elements runs on the
calling thread alone (no parallel region)."""

PARALLEL_CLASSES = frozenset({"gemm", "attn_prefill", "attn_decode"})
"""Operator classes that run as a parallel region at any size with more than one thread (oneDNN /
MKL GEMMs and torch's CPU attention split their work over the team)."""


@dataclass(frozen=True)
class ThreadWakeup:
    """The measured wake-up curve of one profile (``device.thread_wakeup``)."""

    threads: int
    gaps_s: tuple[float, ...]
    """Serial gaps before a parallel region (seconds, increasing, the first 0)."""
    excess_s: tuple[float, ...]
    """Extra seconds of the region after each gap (0 at gap 0, non-decreasing)."""
    openmp: tuple[tuple[str, str], ...] = ()
    """The OpenMP wait/placement variables it was measured under ("unset" where not set)."""

    def excess(self, gap: Any) -> np.ndarray:
        """Expected extra seconds of a parallel region after ``gap`` seconds of serial work
        (linear between the measured gaps, the last value beyond them)."""
        return np.interp(np.asarray(gap, dtype=np.float64), self.gaps_s, self.excess_s)

    @property
    def latency_s(self) -> float:
        """The wake-up latency: the excess after the longest measured gap."""
        return float(self.excess_s[-1])

    @property
    def spin_s(self) -> float | None:
        """The shortest measured gap after which a region pays at least half the latency (how
        long the workers spin before they sleep); None when no wake-up was measured."""
        lat = self.latency_s
        if lat <= 0.0:
            return None
        return next(g for g, e in zip(self.gaps_s, self.excess_s) if e >= 0.5 * lat)


def wakeup_curve(gaps_s: Sequence[float], multi_s: Sequence[float], single_s: Sequence[float]) -> tuple[float, ...]:
    """The excess curve from the medians of a region's time after each gap at the profile's
    thread count (``multi_s``) and at one thread (``single_s``): what the gap adds at more than
    one thread beyond what it adds at one, at least 0, and non-decreasing in the gap (a worker
    that slept after a gap has slept after every longer one, so the excess at a gap is taken as at
    most the excess at any longer one: noise in one rung cannot raise the curve)."""
    if not (len(gaps_s) == len(multi_s) == len(single_s)) or len(gaps_s) < 2 or gaps_s[0] != 0.0:
        raise ValueError("a wake-up curve needs the same number (>= 2) of gaps and times, the first gap 0")
    raw = [max((m - multi_s[0]) - (s - single_s[0]), 0.0) for m, s in zip(multi_s, single_s)]
    raw[0] = 0.0
    out = list(raw)
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1])
    return tuple(float(x) for x in out)


def parse_thread_wakeup(raw: Any, where: str) -> ThreadWakeup:
    """``device.thread_wakeup`` of a profile checked; CalibrationError naming the key."""
    key = "device.thread_wakeup"
    if not isinstance(raw, Mapping):
        raise CalibrationError("expected a mapping with threads, gaps_s and excess_s", where=where, key=key)
    for k in ("threads", "gaps_s", "excess_s"):
        if k not in raw:
            raise CalibrationError("required key is missing", where=where, key=f"{key}.{k}")
    threads = raw["threads"]
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 2:
        raise CalibrationError(f"expected an integer >= 2 (the wake-up exists with worker threads only), got {threads!r}",
                               where=where, key=f"{key}.threads")  # fmt: skip
    vals: dict[str, tuple[float, ...]] = {}
    for k in ("gaps_s", "excess_s"):
        v = raw[k]
        if not isinstance(v, list | tuple) or len(v) < 2 or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
            raise CalibrationError("expected a list of at least 2 numbers (seconds)", where=where, key=f"{key}.{k}")
        vals[k] = tuple(float(x) for x in v)
    g, e = vals["gaps_s"], vals["excess_s"]
    if len(g) != len(e):
        raise CalibrationError(f"expected as many values as gaps_s ({len(g)}), got {len(e)}", where=where, key=f"{key}.excess_s")
    if g[0] != 0.0 or any(b <= a for a, b in zip(g, g[1:])):
        raise CalibrationError("expected increasing gaps starting at 0", where=where, key=f"{key}.gaps_s")
    if not all(np.isfinite(x) and x >= 0.0 for x in e) or any(b < a for a, b in zip(e, e[1:])):
        raise CalibrationError("expected finite, non-negative, non-decreasing seconds", where=where, key=f"{key}.excess_s")
    omp = raw.get("openmp_env") or {}
    if not isinstance(omp, Mapping):
        raise CalibrationError("expected a mapping of OpenMP variable to value", where=where, key=f"{key}.openmp_env")
    return ThreadWakeup(int(threads), g, e, tuple(sorted((str(k), str(v)) for k, v in omp.items())))


def runs_parallel(op_class: str, shape: Mapping[str, Any]) -> np.ndarray:
    """Whether an operator runs as a parallel region (per element of its shape arrays)."""
    if op_class in PARALLEL_CLASSES:
        return np.asarray(True)
    numel = shape.get("numel")
    if numel is None:
        return np.asarray(False)
    return np.asarray(numel) >= GRAIN_SIZE


def wakeup_extra(parallel: Sequence[Any], times: Sequence[Any], wake: ThreadWakeup, counts: Sequence[int] | None = None) -> list[np.ndarray]:
    """Extra seconds per occurrence of each operator of one forward pass, in execution order:
    a parallel operator pays ``wake.excess`` of the serial time run since the previous parallel
    one (the serial operators' predicted times); serial ones pay nothing. The pass is taken as
    one of a series run back to back (serving steps), so the serial operators at its end count
    towards the gap before its first parallel one. ``parallel`` and ``times`` are per operator,
    scalars or arrays of one shape (one entry per batch size).

    ``counts`` (occurrences per pass, as :class:`~simkit.cost.ops.Op.count`): the operators that
    occur more than once are the layer block, run once per layer between the operators listed
    before it (embedding, ...) and after it (final norm, LM head, ...); a block operator pays the
    first layer's gap (after the operators before the block) once and the gap within the block
    (after the previous layer's serial tail) on every other occurrence. Without ``counts`` every
    operator occurs once."""
    n = len(times)
    if len(parallel) != n or (counts is not None and len(counts) != n):
        raise ValueError("parallel, times and counts must have one entry per operator")
    par = [np.asarray(p, dtype=bool) for p in parallel]
    ts = [np.asarray(t, dtype=np.float64) for t in times]
    shape = np.broadcast_shapes(*(x.shape for x in par), *(x.shape for x in ts)) if n else ()
    block = [i for i in range(n) if counts is not None and counts[i] > 1]
    if block:
        lo, hi = block[0], block[-1]
        order = [*range(lo), *range(lo, hi + 1), *range(lo, hi + 1), *range(hi + 1, n)]  # two layers
    else:
        lo, hi, order = 0, -1, list(range(n))
    gap: np.ndarray = np.zeros(shape)
    # the first walk only carries the serial tail around to the start
    for i in order:
        gap = np.where(par[i], 0.0, gap + ts[i])
    first: dict[int, np.ndarray] = {}
    out: list[np.ndarray] = [np.zeros(shape) for _ in range(n)]
    for i in order:
        e = np.where(par[i], wake.excess(gap), 0.0)
        if lo <= i <= hi and counts is not None:
            if i not in first:
                first[i] = e
            else:  # the second layer: every layer after the first
                c = max(int(counts[i]), 1)
                out[i] = (first[i] + (c - 1) * e) / c
        else:
            out[i] = e
        gap = np.where(par[i], 0.0, gap + ts[i])
    return out


STEP_CLASSES = frozenset({"gemm", "attn_prefill", "attn_decode", "elementwise"})
"""Operator classes of a forward pass that :class:`StepComposition` scales (the classes its
synthetic step is made of; copies, memory streams and collectives are not scaled)."""

COMPOSITION_BOUNDS = (0.5, 2.0)
"""Factors outside these bounds are refused when a profile is loaded: a synthetic step taking
half or twice the sum of its operators measured a machine that changed, not a composition cost."""


@dataclass(frozen=True)
class StepComposition:
    """How much longer a forward pass takes than the sum of its operators timed alone
    (``device.step_composition``): per dtype, the measured time of a short synthetic step at
    calibration dimensions over the freshly fitted profile's prediction for it, at the profile's
    thread count (``simkit.calibrate.composition``)."""

    threads: int
    factors: tuple[tuple[str, float], ...]
    """(dtype, factor) pairs, sorted by dtype."""

    def factor(self, dtype: str) -> float | None:
        """The factor of ``dtype``; None when it was not measured for that dtype."""
        return next((f for d, f in self.factors if d == dtype), None)


def parse_step_composition(raw: Any, where: str) -> StepComposition:
    """``device.step_composition`` of a profile checked; CalibrationError naming the key."""
    key = "device.step_composition"
    if not isinstance(raw, Mapping):
        raise CalibrationError("expected a mapping with threads and factor", where=where, key=key)
    for k in ("threads", "factor"):
        if k not in raw:
            raise CalibrationError("required key is missing", where=where, key=f"{key}.{k}")
    threads = raw["threads"]
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise CalibrationError(f"expected an integer >= 1, got {threads!r}", where=where, key=f"{key}.threads")
    fac = raw["factor"]
    if not isinstance(fac, Mapping) or not fac:
        raise CalibrationError("expected a mapping of dtype to factor (measured step / predicted step)", where=where,
                               key=f"{key}.factor")  # fmt: skip
    lo, hi = COMPOSITION_BOUNDS
    out: list[tuple[str, float]] = []
    for dt, v in fac.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not (lo <= float(v) <= hi):
            raise CalibrationError(f"expected a number from {lo} to {hi} (measured step / predicted step), got {v!r}",
                                   where=where, key=f"{key}.factor.{dt}")  # fmt: skip
        out.append((str(dt), float(v)))
    return StepComposition(int(threads), tuple(sorted(out)))
