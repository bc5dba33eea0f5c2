"""``simkit calibrate``: measure this machine and write a calibration profile.

    simkit calibrate --device cuda|cpu [--quick] [--out calibration/profiles/NAME]
                     [--ssd-dir DIR] [--threads N] [--dtypes fp32,bf16] [--catalog NAME]
                     [--clock wall|cpu] [--tiny]

Writes ``NAME/profile.yaml`` (device facts, fitted efficiencies, fit errors) and
``NAME/samples.csv`` (every raw sample). Progress goes to stderr, one line per benchmark group.
Also runnable as ``python -m simkit.calibrate.cli_calibrate``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from simkit.errors import CalibrationError, SimkitError

DTYPES = {"cpu": ("fp32", "bf16"), "cuda": ("fp16", "bf16", "tf32", "fp32", "fp8")}
"""The dtypes the suite can measure on each device (whether this one is fast is checked later)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simkit calibrate",
        description="Run the torch microbenchmark suite on this machine (GEMM, attention, elementwise, "
        "memory/copy bandwidth, launch overhead, on a CPU the host first-touch rate, optionally SSD) and fit a calibration profile.",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], required=True, help="what to measure")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a reduced suite (about a minute on 2 CPU cores)")
    size.add_argument("--tiny", action="store_true", help="a smoke-test suite (seconds): for CI, not for use")
    p.add_argument("--out", default=None, help="output folder (default calibration/profiles/local-DEVICE)")
    p.add_argument("--ssd-dir", default=None, help="measure SSD bandwidth on a scratch file in this folder")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--dtypes", default=None, help="comma-separated dtypes (default: every fast dtype of the device)")
    p.add_argument("--catalog", default=None, help="catalog name of this CPU/GPU, recorded as device.catalog")
    p.add_argument("--name", default=None, help="profile name (default: the output folder's name)")
    p.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall",
        help="wall time (default), or the calling thread's CPU time: immune to other processes sharing "
        "the machine, needs --threads 1",
    )
    return p


def check_args(args: argparse.Namespace) -> tuple[str, list[str] | None]:
    """Every option's range, checked before anything is imported or measured -> (out, dtypes).
    Raises CalibrationError naming the option and what it takes."""
    out = args.out or f"calibration/profiles/local-{args.device}"
    if Path(out).exists() and not Path(out).is_dir():
        raise CalibrationError(f"--out {out!r} is a file; it takes a folder (created if missing)")
    cpus = os.cpu_count() or 1
    if args.threads is not None and not 1 <= args.threads <= cpus:
        raise CalibrationError(
            f"--threads takes 1..{cpus} (this machine's logical CPUs; more would time oversubscription), got {args.threads}"
        )
    dtypes = None
    if args.dtypes is not None:
        dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
        known = DTYPES[args.device]
        bad = [d for d in dtypes if d not in known]
        if not dtypes or bad:
            raise CalibrationError(
                f"--dtypes takes a comma-separated list of {', '.join(known)} for --device {args.device}, got {args.dtypes!r}"
            )
    if args.ssd_dir is not None and not Path(args.ssd_dir).is_dir():
        raise CalibrationError(f"--ssd-dir {args.ssd_dir!r} is not an existing folder (the scratch file goes there)")
    if args.catalog is not None:
        from simkit.specs.catalog import default_catalog

        kind = "gpu" if args.device == "cuda" else "cpu"
        names = default_catalog().names(kind)
        if args.catalog not in names:
            raise CalibrationError(f"--catalog {args.catalog!r} is not a {kind} of the catalog (hw_specs/): one of {', '.join(names)}")
    if args.name is not None and not args.name.strip():
        raise CalibrationError("--name takes a non-empty profile name")
    return out, dtypes


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out, dtypes = check_args(args)
    except SimkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from simkit.calibrate.bench import run_suite
    from simkit.calibrate.composition import StepSeries, composition_section

    t0 = time.perf_counter()
    try:
        profile = run_suite(
            device=args.device,
            quick=args.quick,
            out_dir=out,
            ssd_dir=args.ssd_dir,
            dtypes=dtypes,
            threads=args.threads,
            tiny=args.tiny,
            catalog=args.catalog,
            name=args.name,
            clock=args.clock,
            steps=StepSeries.build,
            composition=composition_section,
        )
    except SimkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"calibration profile {getattr(profile, 'name', out)!r} written to {out} in {time.perf_counter() - t0:.0f} s")
    for line in next_steps(out, args.device, args.catalog):
        print(line)
    return 0


def next_steps(out: str, device: str, catalog: str | None) -> list[str]:
    """What to do with a new profile: how to check it (CPU) and how a scenario uses it, and
    whether ``calibration: auto`` can find it (only in simkit's data folder, and only with a
    catalog name)."""
    from simkit.specs.calibration import profiles_dir

    where = Path(out).resolve()
    lines = []
    if device == "cpu":
        lines.append(f"  check it:  simkit validate --device cpu --profile {out}")
    lines.append(f"  use it:    calibration: {where}   (a scenario key; or `simkit run SCENARIO --set calibration={where}`)")
    root = profiles_dir().resolve()
    if catalog is None:
        lines.append("  note:      `calibration: auto` never picks this profile: it names no catalog device "
                     "(re-run with --catalog NAME, `simkit catalog list`); name its path as above")
    elif where.parent != root:
        lines.append(f"  note:      `calibration: auto` looks only in {root} (SIMKIT_HOME moves it), not here; "
                     "name its path as above")
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
