"""Speed and exactness of `simkit search` on a plan space of >= 10,000 candidates.

    python benchmarks/search_speed.py [SEARCH.yaml] [--jobs J] [--audit N] [--seed S]

Default search file: workloads/searches/fleet-10k.yaml (12,480 candidates: six GPU types x 26
tp/pp/replica layouts on up to 8 GPUs x 5 batch sizes x 4 precisions x 2 batching policies x 2
token budgets). Prints the number of candidates, how many were screened out, simulated and
pruned by the bound, and the wall and CPU seconds of screening and of the whole search.

``--audit N`` then simulates N randomly chosen pruned candidates (seeded) and checks that none
of them beats the N-th best plan the search returned and that every bound held: an empirical
check of the pruning on top of the derivation in docs/search.md. Timings on a shared machine
are noisy: CPU seconds (of this process; with --jobs > 1 the workers' are not counted) are the
steadier figure.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("search", nargs="?", default=str(ROOT / "workloads" / "searches" / "fleet-10k.yaml"))
    ap.add_argument("--audit", type=int, default=0, help="simulate this many pruned candidates and check them")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="worker processes simulating at once")
    a = ap.parse_args(argv)

    from simkit.search import load_spec, run_search
    from simkit.search.run import _check_bounds, evaluate

    spec = load_spec(a.search)
    w0, c0 = time.perf_counter(), time.process_time()
    res = run_search(spec, jobs=a.jobs)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    n = len(res.cands)
    screened_out = sum(1 for c in res.cands if not c.screen.ok)
    bound_infeasible = sum(1 for c in res.cands if c.screen.ok and not c.simulated and not c.pruned)
    simulated = sum(c.simulated for c in res.cands)
    pruned = sum(c.pruned for c in res.cands)
    print(f"search file         {a.search}")
    print(f"candidates          {n}")
    print(f"screened out        {screened_out} (layout, memory, plan checks)")
    print(f"infeasible by bound {bound_infeasible} (a constraint provably violated)")
    print(f"simulated           {simulated}")
    print(f"pruned by bound     {pruned}")
    print(f"wall                {wall:.1f} s  (CPU {cpu:.1f} s)")
    best = res.best
    if best is not None:
        print(f"best                {best.cid} {best.labels}  {spec.objective} = {best.row[spec.objective]:.6g}")
    print(f"bound violations    {len(res.bound_violations)}")
    if a.audit and best is not None:
        sign = -1.0 if spec.maximize else 1.0
        nth = (sign * float(res.top[-1].row[spec.objective]), res.top[-1].index)
        pool = [c for c in res.cands if c.pruned]
        rng = random.Random(a.seed)
        sample = rng.sample(pool, min(a.audit, len(pool)))
        beat = 0
        broke = 0
        t0 = time.perf_counter()
        for c in sample:
            assert c.screen.data is not None
            row = evaluate(c.screen.data, spec.where)
            if row.get("status") != "ok":
                continue
            broke += bool(_check_bounds(c.screen, row))
            ok = all(k.ok(row.get(k.metric)) for k in spec.constraints)
            v = row.get(spec.objective)
            if ok and v is not None and (sign * float(v), c.index) < nth:
                beat += 1
        print(f"audit               {len(sample)} pruned candidates simulated in {time.perf_counter() - t0:.1f} s: "
              f"{beat} would have entered the top {spec.top}, {broke} broke a bound")
        if beat or broke:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
