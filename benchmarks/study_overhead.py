"""Per-run overhead of `simkit study` (expanding, validating, hashing, scheduling, storing).

    .venv/bin/python benchmarks/study_overhead.py                 # 1,000 tiny runs, jobs 1 and all cores
    .venv/bin/python benchmarks/study_overhead.py --runs 200 --jobs 1,2

A tiny scenario (Llama-2-7B on one H100, 12 Poisson requests, datasheet efficiencies) is swept
over ``--runs`` distinct arrival rates. It prints: the single-run time (``simulate`` in this
process, warm, median of 20), the time to expand and validate the study, and for each jobs
value the wall time of the whole study against the ideal ``runs x single-run time / jobs``,
with the overhead per run measured against the runs' own simulate() time. Then the same study
again, resumed: every run is reused. On a busy machine use the ratios of one run, not absolutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import yaml

BASE = {
    "name": "tiny",
    "hardware": "dgx-h100",
    "model": "llama-2-7b",
    "workload": {"synthetic": {"num_requests": 12, "arrival": {"process": "poisson", "rate": 4},
                               "lengths": {"input": {"dist": "fixed", "value": 128}, "output": {"dist": "fixed", "value": 8}}}},
    "calibration": "none",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--jobs", default=f"1,{os.cpu_count() or 1}")
    a = ap.parse_args()
    from simkit.scenario import scenario_from_dict
    from simkit.simulate import simulate
    from simkit.study.runner import run_study
    from simkit.study.spec import load_study

    sc = scenario_from_dict(BASE)
    simulate(sc)
    single = []
    for _ in range(20):
        t = time.perf_counter()
        simulate(sc)
        single.append(time.perf_counter() - t)
    one = statistics.median(single)
    print(f"single run (in-process, warm, median of 20): {one * 1e3:.1f} ms")
    tmp = Path(tempfile.mkdtemp(prefix="simkit-study-bench-"))
    try:
        study = tmp / "study.yaml"
        study.write_text(yaml.safe_dump({"name": "overhead", "base": BASE, "axes": {"grid": {
            "workload.synthetic.arrival.rate": {"range": "1..50", "count": a.runs}}}}))
        from simkit.study.store import RunStore

        store = RunStore(tmp / "store-bench")
        files = {"scenario.yaml": yaml.safe_dump(BASE).encode(), "summary.json": b"{}" * 2000}
        t = time.perf_counter()
        for i in range(200):
            store.put_files(f"r{i}", files)
            store.put(f"r{i}", {"run_id": f"r{i}", "x": 1.0})
        print(f"storing one run's files and row (3 files, atomic): {(time.perf_counter() - t) / 200 * 1e3:.2f} ms")
        t = time.perf_counter()
        n = len(load_study(study).tasks())
        prep = time.perf_counter() - t
        print(f"expand + validate + hash {n} runs: {prep:.2f} s ({prep / n * 1e3:.2f} ms per run)")
        print("ideal = runs x single-run time / jobs; sim = the runs' own simulate() wall time (sim_wall_s) / jobs;")
        print("overhead = (wall x jobs - sum of sim_wall_s) / runs: what the study adds per run")
        print(f"{'jobs':>4} {'wall_s':>8} {'ideal_s':>8} {'wall/ideal':>10} {'sim_s':>8} {'overhead_ms/run':>16}")
        for jobs in [int(j) for j in a.jobs.split(",")]:
            out = tmp / f"out{jobs}"
            t = time.perf_counter()
            r = run_study(study, out, jobs=jobs, progress=False)
            wall = time.perf_counter() - t
            assert r.stats.ran == n and r.stats.failed == 0, r.stats
            ideal = n * one / jobs
            sim = sum(row["sim_wall_s"] for row in r.rows)
            print(f"{jobs:>4} {wall:>8.2f} {ideal:>8.2f} {wall / ideal:>10.2f} {sim / jobs:>8.2f} "
                  f"{(wall * jobs - sim) / n * 1e3:>16.2f}")
        t = time.perf_counter()
        r = run_study(study, out, jobs=1, progress=False)
        print(f"resume of the finished study: {time.perf_counter() - t:.2f} s ({r.stats.reused} reused, {r.stats.ran} run)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
