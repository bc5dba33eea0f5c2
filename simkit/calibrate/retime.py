"""Re-timing part of a CPU profile's samples another way and refitting it, for A/B comparisons on
the same machine (``benchmarks/elementwise_before.py``, ``benchmarks/gemm_before.py``): the
profile opened with its own threads, clock, suite size and timer; each variant's samples refitted
and written as a profile of its own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simkit.errors import SimkitError


@dataclass
class Retiming:
    """A CPU profile opened for re-timing: the profile, its device facts, torch, and the suite
    size and timer its samples were taken with."""

    prof: Any
    dev: dict[str, Any]
    torch: Any
    size: Any
    timer: Any
    llc: float
    """Last-level cache bytes of the profile's machine (32 MB if it did not record them)."""


def open_cpu_profile(prof: Any, path: str, outs: list[str], flags: str) -> Retiming:
    """The profile ``prof`` (loaded from ``path``) set up for re-timing; ``outs`` are the folders
    the variants will be written to (``flags`` names their options in errors). SimkitError for a
    profile that is not a CPU one or an output that is a file."""
    from simkit.calibrate import bench

    dev = dict(prof.device)
    if dev.get("kind") != "cpu":
        raise SimkitError(f"{path}: not a CPU profile (device.kind {dev.get('kind')!r})")
    for out in outs:
        if Path(out).is_file():
            raise SimkitError(f"{flags} {out}: is a file, expected a folder")
    torch = bench.require_torch()
    threads = bench.set_threads(int(dev.get("threads") or 1))
    clock = str(dev.get("clock") or "wall")
    bench.check_clock(clock, "cpu", threads)
    bench.tune_allocator()
    size = bench.SIZES[str(dev.get("suite") or "quick")]
    timer = bench.Timer("cpu", min_rep_s=size.min_rep_s, budget_s=size.budget_s, min_reps=size.min_reps,
                        max_reps=size.max_reps, clock=clock)  # fmt: skip
    return Retiming(prof, dev, torch, size, timer, float(dev.get("llc_bytes") or 32e6))


def write_refit(r: Retiming, kept: Any, rows: list[dict[str, Any]], out: str, facts: dict[str, Any], source: str) -> None:
    """The profile's ``kept`` samples (a DataFrame) plus the re-timed ``rows``, refitted with the
    device ``facts`` and written to ``out``."""
    import pandas as pd

    from simkit.calibrate.fit import fit_profile
    from simkit.calibrate.store import save_profile

    s = r.prof.samples
    df = pd.concat([kept, pd.DataFrame(rows).reindex(columns=s.columns)], ignore_index=True)
    p = fit_profile(df, facts, name=Path(out).name, source=f"{r.prof.source}; {source}", license=r.prof.license)
    Path(out).mkdir(parents=True, exist_ok=True)
    save_profile(p, out)
