"""How steady the speed-up of a second torch thread is over time (the 2-thread reproducibility question).

    python benchmarks/thread_speedup.py [--rounds 40] [--seconds 20]

Alternates, round after round over about ``--seconds``, a compute-bound bf16 GEMM (prefill-like,
256 x 2048 x 2048) and a memory-bound one (decode-like, 4 rows x 4096 x 4096, weights cycled over
twice the last-level cache) at one and at two torch threads (wall clock, medians of a few calls),
and reads the machine's CPU counters around each round (other processes' and the hypervisor's
steal, as `simkit calibrate`'s contention check does). Prints per round the 1-thread times and the
2-thread speed-ups, then their spread over the rounds without other load.

What to read: on an idle machine a steady speed-up (p10 and p90 within a few % of each other)
means the 2-thread spread between calibration runs is not the machine's placement of its two
vCPUs; a speed-up that moves between rounds while the 1-thread times stay (e.g. x1.3 in some
rounds, x1.9 in others) is the host running the two vCPUs sometimes on one physical core's two
hardware threads (sharing its vector units) and sometimes on two cores, which no counter inside
the VM shows and which moves every 2-thread measurement, compute-bound ones (prefill) most.
docs/fidelity.md (CPU validation, "2 threads: reproducibility") has the measurements.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _median_call(fn: Any, calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    from simkit.calibrate import bench
    from simkit.errors import SimkitError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=20.0, help="spread the rounds over about this long")
    ap.add_argument("--threads", type=int, default=2, help="the thread count compared with one")
    a = ap.parse_args(argv)
    try:
        if a.rounds < 2 or a.seconds <= 0:
            raise SimkitError(f"--rounds must be >= 2 and --seconds > 0 (got {a.rounds}, {a.seconds})")
        cpus = bench.cpu_facts().get("logical_cpus") or 1
        if not 2 <= a.threads <= cpus:
            raise SimkitError(f"--threads takes 2..{cpus} (the machine's logical CPUs), got {a.threads}")
        torch = bench.require_torch()
        bench.tune_allocator()
        F = torch.nn.functional
        x_p, w_p = bench.rand((256, 2048), "bf16", "cpu"), bench.rand((2048, 2048), "bf16", "cpu")
        llc = float(bench.cpu_facts().get("llc_bytes") or 32e6)
        copies = max(1, int(-(-2 * llc // (4096 * 4096 * 2))))
        ws = itertools.cycle([bench.rand((4096, 4096), "bf16", "cpu") for _ in range(copies)])
        x_d = bench.rand((4, 4096), "bf16", "cpu")
        kernels = {"prefill": (lambda: F.linear(x_p, w_p), 5), "decode": (lambda: F.linear(x_d, next(ws)), 9)}
        check = bench.ContentionCheck(int(cpus), a.threads, 0.0)
        pause = a.seconds / a.rounds
        print(f"bf16 GEMMs, 1 and {a.threads} threads, wall clock; per round: 1-thread ms and the {a.threads}-thread speed-up; "
              "other = cores other work took (incl. steal)")  # fmt: skip
        rows: list[tuple[float, dict[str, tuple[float, float]]]] = []
        with torch.inference_mode():
            for fn, _ in kernels.values():  # warm-up at both counts
                for n in (1, a.threads):
                    bench.set_threads(n)
                    fn()
                    fn()
            for r in range(a.rounds):
                t_round = time.perf_counter()
                start = check.read()
                res = {}
                for name, (fn, calls) in kernels.items():
                    bench.set_threads(1)
                    one = _median_call(fn, calls)
                    bench.set_threads(a.threads)
                    many = _median_call(fn, calls)
                    res[name] = (one, one / many)
                end = check.read()
                other = check.other_cores(start, end)[0] if start is not None and end is not None else float("nan")
                rows.append((other, res))
                print(f"round {r + 1:3d}: " + " | ".join(f"{k} {1e3 * v[0]:7.2f} ms x{v[1]:.2f}" for k, v in res.items())
                      + f" | other {other:.2f}", flush=True)  # fmt: skip
                time.sleep(max(0.0, pause - (time.perf_counter() - t_round)))
        quiet = [res for other, res in rows if other <= bench.CONTENTION_MARGIN_CORES]
        print(f"{len(quiet)} of {len(rows)} rounds without other load (<= {bench.CONTENTION_MARGIN_CORES} cores):")
        for name in kernels:
            if len(quiet) < 2:
                break
            one = sorted(q[name][0] for q in quiet)
            up = sorted(q[name][1] for q in quiet)

            def pct(v: list[float], p: float) -> float:
                return v[min(len(v) - 1, int(p * (len(v) - 1) + 0.5))]

            print(f"  {name}: 1 thread p10/median/p90 {1e3 * pct(one, 0.1):.2f} / {1e3 * pct(one, 0.5):.2f} / {1e3 * pct(one, 0.9):.2f} ms;"
                  f" speed-up p10/median/p90 x{pct(up, 0.1):.2f} / x{pct(up, 0.5):.2f} / x{pct(up, 0.9):.2f}")  # fmt: skip
    except SimkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
