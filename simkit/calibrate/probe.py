"""Start-up checks that a CPU calibration profile still describes this machine.

Two checks, both cheap:

* :func:`fingerprint_check`: this machine's CPU fingerprint (vendor, family, model, the ISA
  extensions that select GEMM kernels, CPU count, torch threads and version; read from
  /proc/cpuinfo and package metadata, no torch import) against the profile's
  ``device.fingerprint``.
* :func:`speed_probe`: times the kernel classes the profile predicts (``F.linear`` in every dtype
  the profile measured, at a decode-like, a small-batch and a prefill-like shape, weights cold
  as in a forward pass) and divides the profile's *predicted* time for the same operators by the
  measured one. x1.00 means the profile predicts this machine as it runs now; x0.50 that the
  machine takes twice as long as the profile predicts.

Why not a reference kernel: the previous probe timed one fp32 GEMM plus a memory copy and
compared it with the same probe recorded at calibration. A machine whose bf16 GEMMs run at a
different speed (e.g. another CPU generation with the same fp32 and memory speed) reads x1.00
on it while every bf16 prediction is off, and a profile without the recorded number could not
be checked at all. Comparing each dtype's measured GEMMs with the profile's own predictions
checks exactly what the simulator uses.

torch is imported only by :func:`speed_probe` (``pip install simkit[calibrate]``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from simkit.cost.profile import Profile, calibrate_command
from simkit.errors import CalibrationError
from simkit.specs.calibration import FingerprintMatch, compare_fingerprints

PROBE_SHAPES: tuple[tuple[str, int, int, int], ...] = (
    ("decode", 4, 2048, 2048),
    ("batch", 32, 2048, 1536),
    ("prefill", 192, 1024, 2048),
)
"""(label, m, k, n) of the probe GEMMs: F.linear of an (m, k) activation by an (n, k) weight."""

TOLERANCE = 0.15
"""A probe ratio further than this from 1 (either way) is reported as a mismatch; smaller
differences are within what a shared machine's noise does to a sub-second measurement."""

TILE = 1 << 15

PROBE_ENV = "SIMKIT_SPEED_PROBE"
"""Set to ``0`` to skip the start-up probe of ``simkit run`` on a local CPU profile."""


def fingerprint_check(profile: Profile, threads: int | None) -> FingerprintMatch | None:
    """Compare the profile's fingerprint with this machine's (None: the profile has none).
    ``threads``: the torch threads this run uses (None: not compared)."""
    from simkit.calibrate.bench import local_cpu_fingerprint

    fp = profile.fingerprint
    if fp is None:
        return None
    here = local_cpu_fingerprint(threads)
    keys = [k for k in fp if threads is not None or k != "threads"]
    return compare_fingerprints(fp, here, keys)


def mismatch_message(profile: Profile, match: FingerprintMatch | None) -> str | None:
    """What is wrong when the profile's fingerprint differs from this machine's (or is missing),
    naming what differs and the command that calibrates; None when it matches."""
    cmd = "simkit calibrate --device cpu --quick"  # (its default --out: the per-user folder auto searches)
    if match is None:
        return (f"calibration profile {profile.name!r} has no device fingerprint, so nothing shows it describes this "
                f"machine; measure this machine with `{cmd}`")  # fmt: skip
    if match.matches:
        return None
    return (f"calibration profile {profile.name!r} was measured on another machine: "
            f"{match.describe()}. Its predictions describe that machine, not this one; measure this machine with `{cmd}`")  # fmt: skip


@dataclass(frozen=True)
class ProbeRow:
    dtype: str
    label: str
    m: int
    k: int
    n: int
    measured_s: float
    predicted_s: float

    @property
    def ratio(self) -> float:
        """Predicted / measured: > 1 the machine is faster than the profile says, < 1 slower."""
        return self.predicted_s / self.measured_s if self.measured_s > 0 else float("nan")


@dataclass(frozen=True)
class ProbeResult:
    rows: tuple[ProbeRow, ...]
    threads: int
    clock: str
    wall_s: float

    def by_dtype(self) -> dict[str, float]:
        """Geometric mean ratio per dtype."""
        out: dict[str, list[float]] = {}
        for r in self.rows:
            out.setdefault(r.dtype, []).append(math.log(r.ratio))
        return {d: float(math.exp(np.mean(v))) for d, v in out.items()}

    @property
    def matches(self) -> bool:
        """Every dtype's mean ratio within :data:`TOLERANCE` of 1 (one shape alone, e.g. the
        memory-bound decode GEMM on a machine whose memory others share, may stray further)."""
        return all(abs(g - 1.0) <= TOLERANCE for g in self.by_dtype().values())

    def summary(self) -> str:
        parts = []
        for d, g in self.by_dtype().items():
            shapes = ", ".join(f"{r.label} x{r.ratio:.2f}" for r in self.rows if r.dtype == d)
            parts.append(f"{d} GEMM x{g:.2f} ({shapes})")
        return (f"machine speed vs profile prediction (GEMM probe, {self.threads} thread(s), {self.clock} clock, "
                f"{self.wall_s:.2f} s): {'; '.join(parts)}")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "clock": self.clock,
            "wall_s": self.wall_s,
            "by_dtype": self.by_dtype(),
            "matches": self.matches,
            "tolerance": TOLERANCE,
            "rows": [
                {"dtype": r.dtype, "shape": r.label, "m": r.m, "k": r.k, "n": r.n, "measured_s": r.measured_s,
                 "predicted_s": r.predicted_s, "ratio": r.ratio}
                for r in self.rows
            ],
        }  # fmt: skip

    def message(self) -> str | None:
        """A warning when some probe GEMM is off by more than :data:`TOLERANCE`; else None."""
        if self.matches:
            return None
        d, g = max(self.by_dtype().items(), key=lambda kv: abs(math.log(kv[1])))
        how = "slower" if g < 1 else "faster"
        return (f"WARNING: this machine runs the profile's kernels at another speed than the profile predicts: "
                f"{self.summary()}. {d} GEMMs run {1 / g if g < 1 else g:.2f}x {how} than predicted, and predictions "
                "for this machine are off by about that much: recalibrate with `simkit calibrate --device cpu --quick`")  # fmt: skip


def speed_probe(profile: Profile, *, threads: int | None = None, clock: str | None = None,
                dtypes: Sequence[str] | None = None, shapes: Sequence[tuple[str, int, int, int]] = PROBE_SHAPES) -> ProbeResult:  # fmt: skip
    """Time ``F.linear`` at ``shapes`` in ``dtypes`` (default: the profile's) with the profile's
    thread count and clock, and compare with the profile's predictions. Restores torch's thread
    count. Weights cycle over copies exceeding twice the last-level cache (cold, as the
    calibration timed them); activations are hot."""
    from simkit.calibrate.bench import Timer, gemm_op, require_torch, tune_allocator

    torch = require_torch()
    dev = profile.device
    if dev.get("kind") != "cpu":
        raise CalibrationError("the speed probe runs on this CPU: the profile describes a GPU", where=str(profile.path or ""), key="device.kind")
    pt = dev.get("threads")
    nthreads = int(threads if threads is not None else (pt or torch.get_num_threads()))
    use_clock = clock or str(dev.get("clock") or "wall")
    if use_clock == "cpu" and nthreads != 1:
        use_clock = "wall"
    dts = [d for d in (dtypes or profile.dtypes() or ["fp32"]) if d in ("fp32", "bf16")]
    llc = float(dev.get("llc_bytes") or 32e6)
    tune_allocator()
    before = torch.get_num_threads()
    t0 = time.perf_counter()
    rows = []
    try:
        torch.set_num_threads(nthreads)
        timer = Timer("cpu", min_rep_s=1e-3, budget_s=0.015, min_reps=3, max_reps=5, warmup=1, clock=use_clock)
        gen = torch.Generator().manual_seed(0)
        for dt in dts:
            tdt = torch.bfloat16 if dt == "bf16" else torch.float32
            eb = 2 if dt == "bf16" else 4
            # one pool of weights per dtype, twice the last-level cache, sliced into the copies
            # (a random tile of TILE values repeated: filling 64 MiB with fresh random numbers would cost
            # more than the whole probe, and GEMM speed does not depend on the values)
            rows_ = -(-(int(2.0 * llc / eb) + max(k * n for _, _, k, n in shapes)) // TILE)
            pool = torch.empty((rows_, TILE), dtype=tdt)
            pool[:] = torch.empty(TILE, dtype=tdt).uniform_(-0.05, 0.05, generator=gen)
            pool = pool.view(-1)
            for label, m, k, n in shapes:
                copies = int(max(1, pool.numel() // (k * n)))
                ws = [pool[i * k * n:(i + 1) * k * n].view(n, k) for i in range(copies)]
                a = torch.empty((m, k), dtype=tdt).uniform_(-1.0, 1.0, generator=gen)
                idx = [0]

                def fn(a: Any = a, ws: list[Any] = ws, idx: list[int] = idx) -> Any:
                    idx[0] = (idx[0] + 1) % len(ws)
                    return torch.nn.functional.linear(a, ws[idx[0]])

                with torch.inference_mode():
                    meas = timer.measure(fn)
                op = gemm_op("probe", m, k, n, dt)
                pred = float(profile.predict_time("gemm", op.flops, op.bytes, op.shape, dt)[0])
                rows.append(ProbeRow(dt, label, m, k, n, meas.median, pred))
            del pool
    finally:
        torch.set_num_threads(before)
    return ProbeResult(tuple(rows), nthreads, use_clock, time.perf_counter() - t0)


_DONE: dict[str, str | None] = {}
_NOTES: list[str] = []
"""What the start-up probes of this process measured and what they cost, not yet shown
(:func:`take_notes`)."""


def take_notes() -> list[str]:
    """The start-up probes' notes since the last call (``simkit run`` prints them on stderr: the
    probe's time is part of the run's wall time, and a passing probe prints no warning)."""
    out = _NOTES[:]
    _NOTES.clear()
    return out


def startup_check(profile: Profile) -> list[str]:
    """The checks ``simkit run`` makes when a scenario computes on a CPU whose profile was
    measured on this very machine (its hardware fingerprint matches): the speed probe, once per
    process and profile, when torch is installed and ``SIMKIT_SPEED_PROBE`` is not ``0``; and,
    for a profile whose hardware fingerprint is another machine's, a warning saying so.
    Returns the warnings (empty when the machine matches or the checks do not apply)."""
    import importlib.util

    key = str(profile.path or profile.name)
    if key in _DONE:
        return [_DONE[key]] if _DONE[key] else []
    msg = None
    match = fingerprint_check(profile, None)
    same = match is not None and not match.hardware_differs()
    if same and os.environ.get(PROBE_ENV, "1") != "0" and importlib.util.find_spec("torch") is not None:
        t0 = time.perf_counter()
        res = speed_probe(profile)
        msg = res.message()
        speeds = ", ".join(f"{d} GEMM x{g:.2f}" for d, g in res.by_dtype().items())
        took = time.perf_counter() - t0
        _NOTES.append(f"speed probe of calibration profile {profile.name!r} on this machine: {speeds} of the speed it "
                      f"predicts (x1.00 = as predicted, x0.50 = twice as slow); the probe took {took:.2f} s of this "
                      f"run's wall time, importing torch included ({PROBE_ENV}=0 skips it; docs/calibration.md)")  # fmt: skip
    # a profile measured at more than one thread under other OpenMP wait settings than this
    # process runs with (active against libgomp's default, or the reverse) times other kernels
    omp = None
    if same:
        from simkit.calibrate.bench import openmp_env_note

        omp = openmp_env_note(profile.device, int(profile.device.get("threads") or 1), profile.name)
    other = None
    if match is not None and match.hardware_differs():
        # simulating that CPU from here is fine; predicting this machine with it is not (a newer
        # CPU ran the shipped profile's bf16 steps 2x faster than it predicts), and nothing else
        # in the run's output shows it
        diff = FingerprintMatch(match.hardware_differs(), (), ()).describe()
        other = (f"calibration profile {profile.name!r} was measured on another CPU than this machine ({diff}): its "
                 "predictions describe that CPU, which is right when the scenario is about that machine; to predict this "
                 f"one, measure it (`{calibrate_command('cpu', str(profile.device.get('catalog') or 'CATALOG'))}`: "
                 "`calibration: auto` then picks the new profile, from the per-user folder it searches first)")  # fmt: skip
    msg = "\n".join(m for m in (msg, omp, other) if m) or None
    _DONE[key] = msg
    return [msg] if msg else []
