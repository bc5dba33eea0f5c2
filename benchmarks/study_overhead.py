"""Per-run overhead of `simkit study` (expanding, validating, hashing, scheduling, storing).

    .venv/bin/python benchmarks/study_overhead.py                 # 1,000 tiny runs, jobs 1 and all cores
    .venv/bin/python benchmarks/study_overhead.py --runs 200 --jobs 1,2

A tiny scenario (Llama-2-7B on one H100, 12 Poisson requests, datasheet efficiencies) is run
``--runs`` times with different seeds (the same work each time). It prints the single-run time two
ways: ``simulate()`` in this process, warm (median of 20), and ``simkit run`` as a command (a fresh
process: start-up included, median of 3). Then, for each jobs value, the study's wall time
against the ideal ``runs x in-process single-run time / jobs``; with one job (everything in this
process) also the time spent inside simulate() and the rest, the overhead, per run, in wall and
CPU time.
Then the finished study again: every run is reused. On a busy machine compare ratios from one
invocation, not absolute times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
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
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--jobs", default=f"1,{os.cpu_count() or 1}")
    a = ap.parse_args()
    import simkit.simulate
    from simkit.scenario import scenario_from_dict
    from simkit.simulate import simulate
    from simkit.study.runner import run_study
    from simkit.study.spec import load_study
    from simkit.study.store import RunStore

    sc = scenario_from_dict(BASE)
    simulate(sc)
    single, single_cpu = [], []
    for _ in range(20):
        t, c = time.perf_counter(), time.process_time()
        simulate(sc)
        single.append(time.perf_counter() - t)
        single_cpu.append(time.process_time() - c)
    one, one_cpu = statistics.median(single), statistics.median(single_cpu)
    tmp = Path(tempfile.mkdtemp(prefix="simkit-study-bench-"))
    try:
        (tmp / "tiny.yaml").write_text(yaml.safe_dump(BASE))
        cli = []
        for i in range(3):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "simkit.cli", "run", str(tmp / "tiny.yaml"), "--out", str(tmp / f"cli{i}")],
                           check=True, capture_output=True)
            cli.append(time.perf_counter() - t)
        print(f"single run: simulate() in-process, warm {one * 1e3:.1f} ms wall, {one_cpu * 1e3:.1f} ms CPU (median of 20); "
              f"`simkit run` command {statistics.median(cli):.2f} s (median of 3)")
        store = RunStore(tmp / "store-bench")
        files = {"scenario.yaml": yaml.safe_dump(BASE).encode(), "summary.json": b"{}" * 2000}
        t = time.perf_counter()
        for i in range(200):
            store.put_files(f"r{i}", files)
            store.put(f"r{i}", {"run_id": f"r{i}", "x": 1.0})
        print(f"storing one run's folder, files and row (atomic): {(time.perf_counter() - t) / 200 * 1e3:.2f} ms")
        study = tmp / "study.yaml"
        study.write_text(yaml.safe_dump({"name": "overhead", "base": BASE, "axes": {"grid": {
            "seed": {"range": f"0..{a.runs - 1}", "step": 1}}}}))
        t = time.perf_counter()
        n = len(load_study(study).tasks())
        prep = time.perf_counter() - t
        print(f"expand + validate + hash {n} runs: {prep:.2f} s ({prep / n * 1e3:.2f} ms per run)")
        print(f"{'jobs':>4} {'wall_s':>8} {'ideal_s':>8} {'wall/ideal':>10} {'sim_s':>8} {'overhead_ms/run':>16}")
        out = tmp / "out"
        for jobs in [int(j) for j in a.jobs.split(",")]:
            out = tmp / f"out{jobs}"
            spent = [0.0, 0.0]  # wall and CPU seconds inside simulate() (jobs 1: it runs in this process)
            real = simkit.simulate.simulate

            def timed(sc, real=real, spent=spent, **kw):  # type: ignore[no-untyped-def]
                t0, c0 = time.perf_counter(), time.process_time()
                try:
                    return real(sc, **kw)
                finally:
                    spent[0] += time.perf_counter() - t0
                    spent[1] += time.process_time() - c0

            simkit.simulate.simulate = timed
            try:
                t, c = time.perf_counter(), time.process_time()
                r = run_study(study, out, jobs=jobs, progress=False)
                wall, cpu = time.perf_counter() - t, time.process_time() - c
            finally:
                simkit.simulate.simulate = real
            assert r.stats.ran == n and r.stats.failed == 0, r.stats
            ideal = n * one / jobs
            if jobs == 1:
                print(f"{jobs:>4} {wall:>8.2f} {ideal:>8.2f} {wall / ideal:>10.2f} {spent[0]:>8.2f} "
                      f"{(wall - spent[0]) / n * 1e3:>16.2f}")
                print(f"     CPU: {cpu:.2f} s = {n} runs x ({spent[1] / n * 1e3:.2f} ms in simulate() + "
                      f"{(cpu - spent[1]) / n * 1e3:.2f} ms overhead), one-time imports included "
                      "(CPU time is robust to other load on the machine)")
            else:
                print(f"{jobs:>4} {wall:>8.2f} {ideal:>8.2f} {wall / ideal:>10.2f} {'-':>8} {'-':>16}")
        t = time.perf_counter()
        r = run_study(study, out, jobs=1, progress=False)
        print(f"resume of the finished study: {time.perf_counter() - t:.2f} s ({r.stats.reused} reused, {r.stats.ran} run)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
