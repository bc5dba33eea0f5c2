"""Measure the OpenMP thread wake-up curve (simkit.cost.threads) and add it to an existing profile.

    python benchmarks/thread_wakeup.py --threads 2                 # print the curve only
    python benchmarks/thread_wakeup.py PROFILE --out DIR           # PROFILE + the curve, written to DIR
    python benchmarks/thread_wakeup.py PROFILE --out DIR --without # PROFILE without its curve (measures nothing)

The measurement is the calibration suite's (``simkit.calibrate.bench.measure_thread_wakeup``, run
by `simkit calibrate` at more than one thread): a small parallel region timed after serial gaps of
0 to 3.2 ms at the thread count and at one. With PROFILE it runs at the profile's thread count and
writes a copy of it (samples and fitted models unchanged) whose ``device.thread_wakeup`` is the
curve just measured, in this process's OpenMP environment (set OMP_WAIT_POLICY as the profile
was calibrated, or the copy will warn): profiles calibrated before the term existed can then be
scored with and without it on the same `simkit validate --json` measurements
(benchmarks/repredict_validation.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from simkit.calibrate import bench
    from simkit.cost.threads import parse_thread_wakeup
    from simkit.errors import SimkitError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", nargs="?", help="a CPU profile folder measured at more than one thread")
    ap.add_argument("--out", help="folder for the profile with the measured curve (needs PROFILE)")
    ap.add_argument("--threads", type=int, default=None, help="threads (default: the profile's)")
    ap.add_argument("--rounds", type=int, default=bench.WAKE_ROUNDS, help="timed regions per gap and thread count")
    ap.add_argument("--without", action="store_true", help="write PROFILE without device.thread_wakeup to --out instead")
    a = ap.parse_args(argv)
    try:
        prof = None
        if a.profile:
            from simkit.calibrate.validate import load_profile

            prof = load_profile(a.profile)
            if prof.device.get("kind") != "cpu":
                raise SimkitError(f"{a.profile}: not a CPU profile")
        if a.out and prof is None:
            raise SimkitError("--out needs a PROFILE to add the curve to")
        if a.out and Path(a.out).is_file():
            raise SimkitError(f"--out {a.out}: is a file, expected a folder")
        if a.without:
            if prof is None or not a.out:
                raise SimkitError("--without needs PROFILE and --out")
            _save(prof, {k: v for k, v in prof.device.items() if k != "thread_wakeup"}, a.out, "without its thread wake-up")
            return 0
        threads = a.threads or (int(prof.device.get("threads") or 1) if prof is not None else 2)
        if threads < 2 or a.rounds < 1:
            raise SimkitError(f"--threads must be >= 2 (got {threads}: one thread has no worker to wake) and --rounds >= 1")
        if prof is not None and int(prof.device.get("threads") or 1) != threads:
            raise SimkitError(f"{a.profile} was measured at {prof.device.get('threads')} thread(s), not {threads}")
        bench.set_threads(threads)
        raw = bench.measure_thread_wakeup(threads, rounds=a.rounds)
        wake = parse_thread_wakeup(raw, "measured")
        print(f"{threads} threads, OpenMP {', '.join(f'{k}={v}' for k, v in raw['openmp_env'].items() if v != 'unset') or 'defaults'}; "
              f"region back to back {1e6 * raw['region_s']:.1f} us ({1e6 * raw['median_after_gap_1_thread_s'][0]:.1f} us at one thread)")  # fmt: skip
        for g, e, m, s in zip(raw["gaps_s"], raw["excess_s"], raw["median_after_gap_s"], raw["median_after_gap_1_thread_s"]):
            print(f"  gap {1e6 * g:7.0f} us: region {1e6 * m:8.1f} us, at one thread {1e6 * s:8.1f} us, wake-up excess {1e6 * e:6.1f} us")
        spin = "none measured" if wake.spin_s is None else f"{1e6 * wake.spin_s:.0f} us"
        print(f"wake-up latency {1e6 * wake.latency_s:.1f} us; workers sleep after a serial gap of about {spin}")
        if prof is not None and a.out:
            _save(prof, {**prof.device, "thread_wakeup": raw}, a.out, "thread wake-up measured by benchmarks/thread_wakeup.py")
    except SimkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _save(prof: Any, device: dict[str, Any], out: str, what: str) -> None:
    """``prof`` with ``device`` as its device facts, named after ``out`` and written there."""
    from simkit.calibrate.store import save_profile

    prof.device = device
    prof.name = Path(out).name
    prof.source = f"{prof.source}; {what}"
    Path(out).mkdir(parents=True, exist_ok=True)
    save_profile(prof, out)
    print(f"wrote {Path(out) / 'profile.yaml'}")


if __name__ == "__main__":
    sys.exit(main())
