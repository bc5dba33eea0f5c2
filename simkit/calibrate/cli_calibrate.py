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
import sys
import time

from simkit.errors import SimkitError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simkit calibrate",
        description="Run the torch microbenchmark suite on this machine (GEMM, attention, elementwise, "
        "memory/copy bandwidth, launch overhead, optionally SSD) and fit a calibration profile.",
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from simkit.calibrate.bench import run_suite

    out = args.out or f"calibration/profiles/local-{args.device}"
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()] if args.dtypes else None
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
        )
    except SimkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"calibration profile {getattr(profile, 'name', out)!r} written to {out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
