"""``simkit calibrate``: measure this machine and write a calibration profile.

    simkit calibrate --device cuda|cpu [--quick] [--out DIR] [--ssd-dir DIR] [--threads N]
                     [--dtypes fp32,bf16] [--catalog NAME] [--clock wall|cpu] [--tiny]
    simkit calibrate list [SCENARIO] [--set KEY=VALUE]

The default ``--out`` is the per-user profile folder (``$XDG_DATA_HOME/simkit/profiles``, by
default ``~/.local/share/simkit/profiles``), ``local-DEVICE`` or, with ``--catalog``,
``CATALOG-local`` in it: a folder ``calibration: auto`` searches. ``list`` prints the profiles
``calibration: auto`` can see, in the order it tries them, and which one a scenario's run uses.

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
from simkit.units import comma_items

DTYPES = {"cpu": ("fp32", "bf16"), "cuda": ("fp16", "bf16", "tf32", "fp32", "fp8")}
"""The dtypes the suite can measure on each device (whether this one is fast is checked later)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simkit calibrate",
        description="Run the torch microbenchmark suite on this machine (GEMM, attention, elementwise, "
        "memory/copy bandwidth, launch overhead, on a CPU the host first-touch rate, optionally SSD) and fit a calibration profile.",
        epilog="`simkit calibrate list [SCENARIO]` prints the profiles `calibration: auto` can see, in the order it tries "
        "them, and the one each compute device of SCENARIO uses (docs/calibration.md, \"Where profiles are found\").",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], required=True, help="what to measure")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a reduced suite (about a minute on 2 CPU cores)")
    size.add_argument("--tiny", action="store_true", help="a smoke-test suite (seconds): for CI, not for use")
    p.add_argument("--out", default=None, help="output folder (default: local-DEVICE, or CATALOG-local with --catalog, -tiny "
                   "added with --tiny, in the "
                   "per-user profile folder ~/.local/share/simkit/profiles ($XDG_DATA_HOME/simkit/profiles), which "
                   "`calibration: auto` searches)")
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


def default_out(device: str, catalog: str | None, tiny: bool = False) -> str:
    """``--out``'s default: ``local-DEVICE`` (``CATALOG-local`` with ``--catalog``; ``-tiny`` added
    for the smoke-test suite, so that it never replaces a real profile) in the per-user profile
    folder, which ``calibration: auto`` searches from any working folder."""
    from simkit.specs.calibration import user_profiles_dir

    root = user_profiles_dir()
    if root is None:
        raise CalibrationError("--out has no default here: no home folder (HOME) and no XDG_DATA_HOME to hold the "
                               "per-user profile folder; pass --out DIR")  # fmt: skip
    return str(root / ((f"{catalog}-local" if catalog else f"local-{device}") + ("-tiny" if tiny else "")))


def check_args(args: argparse.Namespace) -> tuple[str, list[str] | None]:
    """Every option's range, checked before anything is imported or measured -> (out, dtypes).
    Raises CalibrationError naming the option and what it takes."""
    for opt, v in (("--out", args.out), ("--ssd-dir", args.ssd_dir)):
        if v is not None and not v.strip():  # "" is not "the default" (nor the working folder)
            raise CalibrationError(f"{opt} takes a folder, got an empty string")
    out = args.out or default_out(args.device, args.catalog, args.tiny)
    if Path(out).exists() and not Path(out).is_dir():
        raise CalibrationError(f"--out {out!r} is a file; it takes a folder (created if missing)")
    cpus = os.cpu_count() or 1
    if args.threads is not None and not 1 <= args.threads <= cpus:
        raise CalibrationError(
            f"--threads takes 1..{cpus} (this machine's logical CPUs; more would time oversubscription), got {args.threads}"
        )
    dtypes = None
    if args.dtypes is not None:
        try:
            dtypes = comma_items(args.dtypes)
        except ValueError:
            dtypes = []
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
    if argv and argv[0] == "list":
        return main_list(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        out, dtypes = check_args(args)
    except SimkitError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    if args.catalog is None and not args.tiny:  # said before the minutes of measuring, not only after
        print(f"note: without --catalog, `calibration: auto` will not pick this profile{_catalog_hint(args.device)}",
              file=sys.stderr)
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
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(f"calibration profile {getattr(profile, 'name', out)!r} written to {out} in {time.perf_counter() - t0:.0f} s")
    for line in next_steps(out, args.device, args.catalog, tiny=args.tiny):
        print(line)
    return 0


def _catalog_hint(device: str) -> str:
    """`` (pass --catalog NAME ...)`` naming the catalog CPUs a CPU profile of this machine would
    match (the catalog's hardware threads = this machine's logical CPUs: what auto compares)."""
    if device != "cpu":
        return " (pass --catalog NAME, `simkit catalog list --kind gpu`)"
    from simkit.calibrate.bench import local_cpu_fingerprint
    from simkit.specs.catalog import default_catalog

    cpus = local_cpu_fingerprint(None).get("logical_cpus")
    cat = default_catalog()
    fits = [n for n in cat.names("cpu") if cat.get("cpu", n).threads == cpus]
    if fits:
        return (f" (pass --catalog NAME; catalog CPUs with this machine's {cpus} hardware threads: "
                f"{', '.join(fits)})")  # fmt: skip
    return (f" (no catalog CPU has this machine's {cpus} hardware threads: add one (a CPU YAML like hw_specs/cpus/*.yaml) in a folder of SIMKIT_CATALOG_PATH "
            "and pass --catalog NAME)")  # fmt: skip


def auto_choice(kind: str, catalog: str) -> tuple[Path | None, str | None]:
    """(the profile.yaml ``calibration: auto`` uses for catalog device ``catalog``, or None; the
    warning the run would print, or None)."""
    from simkit.cost.profile import Profile, resolve_calibration

    eff, _, warn = resolve_calibration("auto", kind, catalog)
    return (Path(eff.path).resolve() if isinstance(eff, Profile) and eff.path is not None else None), warn


def next_steps(out: str, device: str, catalog: str | None, tiny: bool = False) -> list[str]:
    """What to do with a new profile: how to check it (CPU) and how a scenario uses it: whether
    ``calibration: auto`` picks it (the folder is on its search path, the profile names a catalog
    device whose facts its fingerprint matches, and no profile before it matches too), and if not,
    why and how to name it instead."""
    from simkit.specs.calibration import PROFILE_FILE, profile_search_path

    where = Path(out).resolve()
    kind = "gpu" if device == "cuda" else "cpu"
    lines = []
    if device == "cpu":
        lines.append(f"  check it:  simkit validate --device cpu --profile {out}")
    by_path = f"calibration: {where}   (a scenario key; or `simkit run SCENARIO --set calibration={where}`)"
    if tiny:
        lines.append(f"  use it:    {by_path}")
        lines.append("  note:      `calibration: auto` never picks a --tiny profile (a smoke test of the command, not a "
                     "calibration); --quick measures one for use")  # fmt: skip
        return lines
    if catalog is None:
        lines.append(f"  use it:    {by_path}")
        lines.append(f"  note:      `calibration: auto` never picks this profile: it names no catalog device{_catalog_hint(device)}")
        return lines
    folders = [f.path.resolve() for f in profile_search_path()]
    if where.parent not in folders and where not in folders:
        lines.append(f"  use it:    {by_path}")
        lines.append(f"  note:      `calibration: auto` does not search {where.parent} (it searches "
                     f"{', '.join(str(f) for f in folders)}; add the folder to SIMKIT_PROFILE_PATH, or leave --out at "
                     "its default)")  # fmt: skip
        return lines
    chosen, warn = auto_choice(kind, catalog)
    if chosen == where / PROFILE_FILE:
        lines.append(f"  use it:    calibration: auto   (it picks this profile for {kind} {catalog}; "
                     "`simkit calibrate list` shows what auto sees)")  # fmt: skip
        return lines
    lines.append(f"  use it:    {by_path}")
    why = (f"it picks {chosen.parent} first" if chosen is not None
           else f"it rejects it: {warn}" if warn else "it does not pick it")
    lines.append(f"  note:      `calibration: auto` does not pick this profile for {kind} {catalog}: {why} "
                 "(`simkit calibrate list` shows the order)")  # fmt: skip
    return lines


def main_list(argv: list[str]) -> int:
    """``simkit calibrate list [SCENARIO] [--set KEY=VALUE]``."""
    p = argparse.ArgumentParser(prog="simkit calibrate list",
                                description="The calibration profiles `calibration: auto` can see, in the order it tries "
                                "them, and (with a scenario) the profile each of its compute devices uses.")  # fmt: skip
    p.add_argument("scenario", nargs="?", help="a scenario YAML or the name of a shipped scenario")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a dotted key, e.g. hardware=ci-vm")
    a = p.parse_args(argv)
    try:
        lines = list_lines()
        if a.scenario is not None:
            lines += scenario_lines(a.scenario, a.set or [])
        for line in lines:
            print(line)
    except SimkitError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


def list_lines() -> list[str]:
    """The search path, each profile in the order ``auto`` tries it (what it is, whether auto can
    pick it and, for a CPU profile, whether it was measured on this machine), the skipped files."""
    from simkit.cost.profile import _catalog_facts
    from simkit.specs.calibration import (
        compare_fingerprints,
        list_profiles,
        parse_fingerprint,
        profile_search_path,
    )

    folders = profile_search_path()
    found, skipped = list_profiles()
    lines = ["calibration profiles `calibration: auto` searches, in this order (docs/calibration.md):"]
    for i, f in enumerate(folders, 1):
        n = sum(1 for p in found if p.folder == f.path)
        state = f"{n} profile{'s' if n != 1 else ''}" if f.path.is_dir() else "does not exist yet" if f.origin == "user" else "missing"
        origin = {"user": "per-user folder", "shipped": "shipped with simkit"}.get(f.origin, f.origin)
        lines.append(f"  {i}. {f.path}  ({origin}; {state})")
    here = None
    first: dict[tuple[str, str], str] = {}
    lines.append("profiles, in the order auto tries them (the first one of a catalog device whose fingerprint agrees "
                 "with the catalog is used):" if found else "no profiles found")  # fmt: skip
    for p in found:
        kind = str(p.device.get("kind", "?"))
        cat = p.device.get("catalog")
        name = p.file.parent.name
        when = p.measured_at.isoformat() if p.measured_at is not None else "no measured_at"
        if p.device.get("suite") == "tiny":
            status = "a --tiny smoke-test profile: auto never picks it"
        elif not cat:
            status = "names no catalog device: auto never picks it (name its folder in calibration:)"
        elif not isinstance(p.device.get("fingerprint"), dict):
            status = "has no device fingerprint: auto skips it"
        else:
            try:
                fp = parse_fingerprint(p.device["fingerprint"], kind, str(p.file))
            except SimkitError as e:
                fp, status = None, f"auto stops on it: {e}"
            if fp is not None:
                m = compare_fingerprints(fp, _catalog_facts(kind, str(cat)))
                if not m.matches:
                    status = f"auto skips it: {m.describe(f'catalog {cat}')}"
                elif (kind, str(cat)) in first:
                    status = f"matches catalog {cat}, but auto picks {first[(kind, str(cat))]} first"
                else:
                    first[(kind, str(cat))] = name
                    status = f"AUTO PICKS IT for {kind} {cat}"
        machine = ""
        if kind == "cpu" and isinstance(p.device.get("fingerprint"), dict):
            from simkit.calibrate.bench import local_cpu_fingerprint

            here = here or local_cpu_fingerprint(None)
            try:
                d = compare_fingerprints(parse_fingerprint(p.device["fingerprint"], "cpu", str(p.file)), here).hardware_differs()
                machine = "; measured on this machine's CPU" if not d else "; measured on another CPU than this machine"
            except SimkitError:
                pass
        lines.append(f"  {name:<24} {kind:<4} {str(cat or '-'):<20} {when:<26} {status}{machine}")
        lines.append(f"      {p.file.parent}")
    for w in skipped:
        lines.append(f"  warning: {w}")
    return lines


def scenario_lines(scenario: str, overrides: list[str]) -> list[str]:
    """What a run of the scenario uses on each compute device (each group of a fleet)."""
    from simkit.deployment import fleet_scenarios, resolve_compute
    from simkit.scenario import load_scenario
    from simkit.specs.node import resolve_node

    sc = load_scenario(scenario, overrides)
    lines = []
    for s in fleet_scenarios(sc) if sc.plan.fleet is not None else [sc]:
        node = resolve_node(s.hardware, where=sc.source)
        _, device, _, info, warn = resolve_compute(s, node)
        lines.append(f"scenario {sc.name}: computes on {device.kind} {device.name}, calibration: {s.calibration} -> {info}")
        if warn:
            lines.append(f"  warning: {warn}")
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
