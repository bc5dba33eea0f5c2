"""``simulate()`` alone: a serving_speed.py case run several times in one warm process.

    .venv/bin/python benchmarks/simulate_repeat.py azure16k-continuous               # least CPU of 7 runs
    .venv/bin/python benchmarks/simulate_repeat.py --repeat 5 azure16k-chunked
    .venv/bin/python benchmarks/simulate_repeat.py --against /tmp/old --rounds 3 CASE # alternating with another checkout

Start-up (interpreter, imports, catalog, cost tables) is paid once, before the timed runs, so
what is printed is the run itself: ``build_deployment``, the engine's loop and the summary (the
scenario is validated once). On a VM whose speed moves from minute to minute this is the
steadier comparison of two trees' loops than whole processes (``serving_speed.py``'s rows carry
start-up's own noise): ``--against DIR`` runs the same case in a fresh process of each checkout
in turn, ``--rounds`` times, and prints both least CPU figures and their ratio per round.
CPU seconds (``time.process_time``), least of ``--repeat`` runs after one untimed run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def least_cpu(case: str, repeat: int) -> float:
    """Least CPU seconds of ``repeat`` ``simulate()`` runs of ``case`` in this process."""
    import time

    sys.path.insert(0, str(HERE))
    import serving_speed

    from simkit.scenario import scenario_from_dict
    from simkit.simulate import simulate

    if case not in serving_speed.CASES:
        raise SystemExit(f"simulate_repeat.py: error: unknown case {case!r} (cases: {', '.join(serving_speed.CASES)})")
    sc = scenario_from_dict(serving_speed._case_data(case))
    simulate(sc)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        simulate(sc)
        best = min(best, time.process_time() - t0)
    return best


def _child(tree: Path, case: str, repeat: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    cmd = [sys.executable, str(tree / "benchmarks" / "simulate_repeat.py"), "--repeat", str(repeat), "--bare", case]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"simulate_repeat.py: error: {tree}: {proc.stderr.strip()[-500:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="simulate_repeat.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("case", help="a case of benchmarks/serving_speed.py")
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per process (least CPU is printed)")
    ap.add_argument("--against", help="another simkit checkout: alternate fresh processes of both trees")
    ap.add_argument("--rounds", type=int, default=3, help="alternations with --against")
    ap.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)  # (--against's children: the figure only)
    a = ap.parse_args(argv)
    if a.repeat < 1 or a.rounds < 1:
        ap.error("--repeat and --rounds must be >= 1")
    if a.against is None:
        s = least_cpu(a.case, a.repeat)
        print(f"{s:.4f}" if a.bare else f"{a.case}: simulate() least CPU s of {a.repeat}: {s:.4f}")
        return 0
    other = Path(a.against).resolve()
    if not (other / "benchmarks" / "serving_speed.py").is_file():
        ap.error(f"--against {other}: not a simkit checkout (no benchmarks/serving_speed.py)")
    if not (other / "benchmarks" / "simulate_repeat.py").is_file():
        ap.error(f"--against {other}: it has no benchmarks/simulate_repeat.py (copy this file there)")
    this = HERE.parent
    for r in range(a.rounds):
        s_other = _child(other, a.case, a.repeat)
        s_this = _child(this, a.case, a.repeat)
        print(f"{a.case} round {r + 1}: simulate() least CPU s of {a.repeat}: against {s_other:.4f}, this {s_this:.4f}, "
              f"this / against {s_this / s_other:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
