"""Simulator speed and memory on the serving benchmarks of docs/performance.md.

    .venv/bin/python benchmarks/serving_speed.py                        # all cases
    .venv/bin/python benchmarks/serving_speed.py azure16k-continuous    # one case
    .venv/bin/python benchmarks/serving_speed.py --engine reference ... # the reference engine
    .venv/bin/python benchmarks/serving_speed.py --cold ...             # no cached cost tables
    .venv/bin/python benchmarks/serving_speed.py --repeat 3 ...         # least CPU of 3 runs per case
    .venv/bin/python benchmarks/serving_speed.py --against /tmp/old ... # another checkout's runs alternate
                                                                        # with these; prints the ratio
    .venv/bin/python benchmarks/serving_speed.py --cli ...              # through `simkit run`: outputs written

Each case runs in a fresh subprocess (so start-up and peak RSS are its own) and prints wall
seconds and CPU seconds of that process (start-up included: interpreter, imports, catalog,
cost tables, trace reading, simulation, summary, teardown; CPU seconds are the robust figure on
a shared machine), the wall seconds of its imports, simulated requests per wall-second, peak RSS
and the engine path that ran. By default a case runs ``simulate()`` (no outputs written);
``--cli`` runs ``python -m simkit.cli run`` on the case instead, which also writes the run folder
(Parquet tables and all) and ends as a user's run does (no interpreter teardown).
``--cold`` points the cost-table cache at an empty folder (a new model or GPU);
by default the user's cache is used, warmed by a first untimed run of the case.

The eighth round's cases (issue 16, the plans that left the reference engine; compare
``--engine reference`` with the default on the same tree): ``pp-prefix-swap`` (the Mooncake
trace with prefix caching and swap preemption on 4 pipelined replicas, PP 2), ``offload-prefix``
(300 Mooncake requests with prefix caching on an offloaded T4), ``disaggregated-sliding`` (the
``disaggregated`` case with Llama-3-8B given a 1,024-token sliding window: a model YAML written
to the temporary folder), ``disaggregated-pp2`` (the ``disaggregated`` case on replicas of PP 2);
``offload-static`` moved to the fast path too.

The ninth round's cases (offloaded plans that left the reference engine; compare
``--engine reference`` with the default on the same tree): ``offload-flexgen`` (FlexGen's block
schedule on the T4 VM: OPT-30B, 128 prompts of 256 tokens in 4 GPU batches of 32, weights 10%
on the GPU and 90% in DRAM, KV in DRAM, CPU attention; the zig-zag steps event by event),
``offload-gbs`` (``offload-serving`` with GPU batches of 4 sequences and no prefetch: steps of
up to 16 sequences in closed form) and ``kv-spill`` (workloads/scenarios/cxl-long-context.yaml:
Llama-3.1-8B, 40 prompts of 16-60k tokens, the KV past 16k tokens spilled to CXL). Tenth round:
``offload-disk-block`` (``offload-flexgen`` placed as ``simkit offload-plan`` places it: weights
over DRAM and disk, KV and activations on disk, staged through DRAM both ways).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

# (subprocess and tempfile are imported by the functions of the measuring process that use them:
# the measured child imports only what simkit needs, as a user's process would)

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "workloads" / "traces"



def _azure16k(name: str, batching: dict, replicas: int = 1) -> dict:
    """16,000 requests, lengths resampled from the Azure 2023 conversation trace, Poisson 8 req/s
    per replica, Llama-2-7B on H100 SXMs (least-outstanding routing over several replicas)."""
    return {
        "name": name,
        "hardware": "dgx-h100",
        "model": "llama-2-7b",
        "workload": {
            "synthetic": {
                "num_requests": 16000,
                "arrival": {"process": "poisson", "rate": 8 * replicas},
                "lengths": {"trace": {"path": str(TRACES / "azure_conv_2023.csv"), "format": "azure"}},
            }
        },
        "plan": {"batching": batching, "parallel": {"replicas": replicas}}
        | ({"routing": "least_outstanding"} if replicas > 1 else {}),
    }


CASES: dict[str, dict] = {
    # start-up dominated: workloads/scenarios/quickstart.yaml (200 requests)
    "quickstart": {
        "name": "quickstart",
        "hardware": "dgx-h100",
        "model": "llama-2-7b",
        "workload": {
            "synthetic": {
                "num_requests": 200,
                "arrival": {"process": "poisson", "rate": 8},
                "lengths": {"input": {"dist": "lognormal", "median": 512, "sigma": 0.8, "max": 3072},
                            "output": {"dist": "lognormal", "median": 128, "sigma": 0.8, "max": 1024}},
            }
        },
        "plan": {"batching": {"policy": "continuous", "max_num_seqs": 128, "max_num_batched_tokens": 4096},
                 "precision": {"weights": "fp16", "activations": "fp16", "kv_cache": "fp16"}},
        "slo": {"ttft_p90_s": 0.5, "tpot_p99_s": 0.05},
        "seed": 0,
    },
    "azure16k-continuous": _azure16k("azure16k-continuous", {"policy": "continuous", "max_num_seqs": 128, "max_num_batched_tokens": 4096}),
    "azure16k-chunked": _azure16k(
        "azure16k-chunked", {"policy": "chunked_prefill", "chunk_size": 512, "max_num_seqs": 128, "max_num_batched_tokens": 4096}
    ),
    "azure16k-3replicas": _azure16k(
        "azure16k-3replicas", {"policy": "continuous", "max_num_seqs": 128, "max_num_batched_tokens": 4096}, 3
    ),
    "mooncake-prefix": {
        "name": "mooncake-prefix",
        "hardware": "dgx-h100",
        "model": "llama-3.1-8b",
        "workload": {"trace": {"path": str(TRACES / "mooncake_synthetic_trace.jsonl"), "format": "mooncake"}},
        "plan": {
            "batching": {"policy": "chunked_prefill", "chunk_size": 2048, "max_num_seqs": 128},
            "prefix_cache": {"enabled": True},
            "parallel": {"replicas": 8},
            "routing": "prefix_aware",
        },
    },
    "synthetic-1m": {
        "name": "synthetic-1m",
        "hardware": "dgx-h100",
        "model": "llama-2-7b",
        "workload": {
            "synthetic": {
                "num_requests": 1_000_000,
                "arrival": {"process": "poisson", "rate": 40},
                "lengths": {
                    "input": {"dist": "lognormal", "median": 400, "sigma": 0.9, "max": 3000},
                    "output": {"dist": "lognormal", "median": 60, "sigma": 0.9, "max": 900},
                },
            }
        },
        "plan": {"batching": {"policy": "continuous", "max_num_seqs": 256, "max_num_batched_tokens": 8192}},
    },
    # issue 16 part B: offloaded and pipeline-parallel plans (docs/performance.md, offload/PP)
    "offload-static": {
        "name": "offload-static",
        "hardware": "gcp-t4-vm",
        "model": "opt-175b",
        "workload": {"batch": {"num_prompts": 32, "input_tokens": 512, "output_tokens": 128}},
        "plan": {
            "batching": {"policy": "static"},
            "offload": {"weights": {"gpu": 0.0, "cpu": 0.35, "disk": 0.65}, "kv_cache": {"gpu": 0.0, "cpu": 1.0},
                        "gpu_batch_size": 32, "cpu_attention": True},
        },
        "calibration": "none",
    },
    "offload-serving": {
        "name": "offload-serving",
        "hardware": "gcp-t4-vm",
        "model": "opt-13b",
        "workload": {
            "synthetic": {
                "num_requests": 400,
                "arrival": {"process": "poisson", "rate": 0.5},
                "lengths": {"input": {"dist": "lognormal", "median": 300, "sigma": 0.6, "max": 1500},
                            "output": {"dist": "lognormal", "median": 60, "sigma": 0.6, "max": 400}},
            }
        },
        "plan": {
            "batching": {"policy": "continuous", "max_num_seqs": 16},
            "offload": {"weights": {"gpu": 0.3, "cpu": 0.7}, "kv_cache": {"gpu": 1.0}},
        },
        "calibration": "none",
    },
    "pp4-serving": {
        "name": "pp4-serving",
        "hardware": "dgx-h100",
        "model": "llama-3-70b",
        "workload": {
            "synthetic": {
                "num_requests": 2000,
                "arrival": {"process": "poisson", "rate": 4},
                "lengths": {"trace": {"path": str(TRACES / "azure_conv_2023.csv"), "format": "azure"}},
            }
        },
        "plan": {"batching": {"policy": "continuous", "max_num_seqs": 128, "max_num_batched_tokens": 8192},
                 "parallel": {"tp": 2, "pp": 4}},
    },
    # static batching (batches of up to 32 run to completion; arrivals wait for the batch)
    "static-serving": {
        "name": "static-serving",
        "hardware": "dgx-h100",
        "model": "llama-2-7b",
        "workload": {
            "synthetic": {
                "num_requests": 4000,
                "arrival": {"process": "poisson", "rate": 4},
                "lengths": {"trace": {"path": str(TRACES / "azure_conv_2023.csv"), "format": "azure"}},
            }
        },
        "plan": {"batching": {"policy": "static", "max_num_seqs": 32}},
    },
    # issue 16, eighth round: plans that left the reference engine (see the module docstring)
    "offload-prefix": {
        "name": "offload-prefix",
        "hardware": "gcp-t4-vm",
        "model": "llama-2-7b",
        "workload": {"trace": {"path": str(TRACES / "mooncake_synthetic_trace.jsonl"), "format": "mooncake"}, "limit": 300},
        "plan": {
            "batching": {"policy": "continuous", "max_num_seqs": 8},
            "prefix_cache": {"enabled": True, "tiers": ["hbm", "dram"]},
            "offload": {"weights": {"gpu": 0.5, "cpu": 0.5}, "kv_cache": {"gpu": 1.0}},
        },
        "calibration": "none",
    },
    # disaggregated serving: 1 prefill + 3 decode replicas, the KV handed off over NVLink
    # (workloads/scenarios/disaggregated.yaml's deployment under the Azure conversation lengths)
    "disaggregated": {
        "name": "disaggregated",
        "hardware": "dgx-h100",
        "model": "llama-3-8b",
        "workload": {
            "synthetic": {
                "num_requests": 8000,
                "arrival": {"process": "poisson", "rate": 24},
                "lengths": {"trace": {"path": str(TRACES / "azure_conv_2023.csv"), "format": "azure"}},
            }
        },
        "plan": {"batching": {"policy": "disaggregated", "prefill_replicas": 1, "kv_transfer_link": "nvlink",
                              "max_num_seqs": 128, "max_num_batched_tokens": 8192},
                 "parallel": {"replicas": 4}, "routing": "least_outstanding"},
    },
}
CASES["pp-prefix-swap"] = CASES["mooncake-prefix"] | {
    "name": "pp-prefix-swap",
    "plan": CASES["mooncake-prefix"]["plan"] | {"kv_cache": {"preemption": "swap"}, "parallel": {"replicas": 4, "pp": 2}},
}
CASES["disaggregated-sliding"] = CASES["disaggregated"] | {
    "name": "disaggregated-sliding", "model": {"catalog": "llama-3-8b", "sliding_window": 1024},
}
# issue 16, ninth round: offloaded plans that left the reference engine (see the module docstring)
CASES["offload-flexgen"] = {
    "name": "offload-flexgen",
    "hardware": "gcp-t4-vm",
    "model": "opt-30b",
    "workload": {"batch": {"num_prompts": 128, "input_tokens": 256, "output_tokens": 32}},
    "plan": {
        "batching": {"policy": "static"},
        "offload": {"weights": {"gpu": 0.1, "cpu": 0.9}, "kv_cache": {"gpu": 0.0, "cpu": 1.0},
                    "gpu_batch_size": 32, "num_gpu_batches": 4, "cpu_attention": True},
    },
    "calibration": "none",
}
CASES["offload-disk-block"] = CASES["offload-flexgen"] | {
    "name": "offload-disk-block",
    "plan": {
        "batching": {"policy": "static"},
        "offload": {"weights": {"gpu": 0.1, "cpu": 0.6, "disk": 0.3}, "kv_cache": {"gpu": 0.0, "disk": 1.0},
                    "activations": {"gpu": 0.0, "disk": 1.0}, "gpu_batch_size": 32, "num_gpu_batches": 4,
                    "cpu_attention": True},
    },
}
CASES["offload-gbs"] = CASES["offload-serving"] | {
    "name": "offload-gbs",
    "plan": {"batching": {"policy": "continuous", "max_num_seqs": 16},
             "offload": {"weights": {"gpu": 0.3, "cpu": 0.7}, "kv_cache": {"gpu": 1.0}, "gpu_batch_size": 4,
                         "overlap": False}},
}
CASES["kv-spill"] = {
    "name": "kv-spill",
    "hardware": "h100-pcie-cxl-server",
    "model": "llama-3.1-8b",
    "workload": {"synthetic": {"num_requests": 40, "arrival": {"process": "poisson", "rate": 0.5},
                               "lengths": {"input": {"dist": "uniform", "low": 16000, "high": 60000},
                                           "output": {"dist": "fixed", "value": 128}}}},
    "plan": {"batching": {"policy": "chunked_prefill", "chunk_size": 4096, "max_num_batched_tokens": 8192,
                          "max_num_seqs": 32},
             "offload": {"kv_spill": {"after_tokens": 16384, "tier": "cxl"}}},
}
CASES["disaggregated-pp2"] = CASES["disaggregated"] | {
    "name": "disaggregated-pp2",
    "plan": CASES["disaggregated"]["plan"] | {"parallel": {"replicas": 4, "pp": 2}},
}


def _copied(v: object) -> object:
    """A deep copy of plain data (dicts, lists, scalars) without importing ``copy``."""
    if isinstance(v, dict):
        return {k: _copied(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copied(x) for x in v]
    return v


def _case_data(case: str) -> dict:
    """``case``'s scenario data; a model given as ``{"catalog": NAME, "sliding_window": N}`` is
    the catalog model with that window, written as a model YAML to the temporary folder."""
    data: dict = _copied(CASES[case])  # type: ignore[assignment]  # a caller may edit the plan: never the shared case
    model = data["model"]
    if isinstance(model, dict):
        import tempfile

        import yaml

        spec = yaml.safe_load((ROOT / "workloads" / "models" / f"{model['catalog']}.yaml").read_text())
        spec.update({"name": f"{model['catalog']}-sw{model['sliding_window']}", "sliding_window": model["sliding_window"]})
        path = Path(tempfile.gettempdir()) / f"simkit-bench-{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec))
        data["model"] = str(path)
    return data


def _child(case: str) -> None:
    t0 = time.perf_counter()
    from simkit.scenario import scenario_from_dict
    from simkit.simulate import simulate

    import_s = time.perf_counter() - t0
    big = case == "synthetic-1m"
    data = _case_data(case)
    if len(sys.argv) > 3:
        data["calibration"] = sys.argv[3]
    res = simulate(scenario_from_dict(data), record_iterations=not big, engine=os.environ.get("SIMKIT_BENCH_ENGINE", "auto"))
    wall = time.perf_counter() - t0
    s = res.summary
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "case": case, "requests": s["requests_total"], "completed": s["requests_completed"], "sim_wall_s": res.sim_wall_s,
        "in_process_wall_s": wall, "import_s": import_s, "peak_rss_bytes": rss, "ttft_p50_s": s["ttft_p50_s"],
        "tpot_p50_s": s["tpot_p50_s"], "makespan_s": s["makespan_s"], "engine_path": s["engine_path"],
    }))


def _measure(script: Path, case: str, env: dict[str, str], cold: bool, cli: bool) -> tuple[float, float, dict]:
    """(wall s, CPU s, the child's report) of one fresh process running ``case`` with ``script``
    (a checkout's copy of this file, which imports that checkout's simkit through ``env``);
    ``cli``: ``simkit run`` itself on the case written as a scenario YAML (see :func:`_run_cli`)."""
    import subprocess
    import tempfile

    # the child imports this file as a module (its byte-compiled form, as `simkit run` imports
    # simkit.cli) instead of running it as a script, which Python compiles from source on every
    # run: ~0.033 G instructions of the measuring harness's own, not a user's run's
    cmd = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(script.parent)!r}); import serving_speed; "
           "serving_speed.main(sys.argv[1:])", "--child", case]
    with tempfile.TemporaryDirectory() as empty:
        env = dict(env)
        # as a `simkit` process does (cli._single_threaded_blas): otherwise numpy's OpenBLAS
        # threads spin at import, ~0.1 s of another core's CPU counted in the child's CPU seconds
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        if cold:
            env["SIMKIT_CACHE_DIR"] = empty
        if cli:
            return _run_cli(case, env, warm=not cold)
        elif not cold and case != "synthetic-1m":
            subprocess.run(cmd, capture_output=True, env=env, check=False)  # warm the table cache
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return wall, cpu, json.loads(out.stdout.strip().splitlines()[-1])


def _run_cli(case: str, env: dict[str, str], warm: bool) -> tuple[float, float, dict]:
    """``python -m simkit.cli run CASE.yaml --out DIR`` as a user runs it: the command line, the
    run folder written (summary.json, the Parquet tables, scenario.yaml, provenance.json) and the
    process's exit. The report is read from the run folder (import time not known: "-")."""
    import subprocess
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / f"{case}.yaml"
        scenario.write_text(yaml.safe_dump(_case_data(case), sort_keys=False))
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "simkit.cli", "run", str(scenario), "--out", str(out)]
        if env.get("SIMKIT_BENCH_ENGINE", "auto") != "auto":
            cmd += ["--engine", env["SIMKIT_BENCH_ENGINE"]]
        # run in the temporary folder: `python -m` puts the working folder first on sys.path,
        # which must not shadow the checkout that env's PYTHONPATH names
        if warm:
            subprocess.run(cmd, capture_output=True, env=env, cwd=tmp, check=False)  # warm the table cache
        with open(Path(tmp) / "stderr", "w+") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=tmp)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            if proc.returncode != 0:
                raise RuntimeError(err.read())
        s = json.loads((out / "summary.json").read_text())
        sim_wall_s = json.loads((out / "provenance.json").read_text())["sim_wall_s"]
    report = {
        "case": case, "requests": s["requests_total"], "completed": s["requests_completed"], "sim_wall_s": sim_wall_s,
        "in_process_wall_s": wall, "import_s": None, "peak_rss_bytes": usage.ru_maxrss * 1024,
        "ttft_p50_s": s["ttft_p50_s"], "tpot_p50_s": s["tpot_p50_s"], "makespan_s": s["makespan_s"], "engine_path": s["engine_path"],
    }
    return wall, usage.ru_utime + usage.ru_stime, report


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--child":
        _child(argv[1])
        return 0
    env = dict(os.environ)
    if "--engine" in argv:
        k = argv.index("--engine")
        env["SIMKIT_BENCH_ENGINE"] = argv[k + 1]
        argv = argv[:k] + argv[k + 2 :]
    repeat = 1
    if "--repeat" in argv:
        k = argv.index("--repeat")
        repeat = int(argv[k + 1])
        argv = argv[:k] + argv[k + 2 :]
    against: Path | None = None
    if "--against" in argv:
        k = argv.index("--against")
        against = Path(argv[k + 1]).resolve()
        argv = argv[:k] + argv[k + 2 :]
        if not (against / "benchmarks" / "serving_speed.py").is_file():
            print(f"--against {against}: not a simkit checkout (no benchmarks/serving_speed.py)", file=sys.stderr)
            return 2
    cold = "--cold" in argv
    cli = "--cli" in argv
    argv = [a for a in argv if a not in ("--cold", "--cli")]
    cases = argv or list(CASES)
    for case in cases:
        if case not in CASES:
            print(f"unknown case {case!r}; known: {', '.join(CASES)}", file=sys.stderr)
            return 2
    # (label, script, environment) of each tree measured; with --against, the other checkout's
    # runs alternate with this one's, so that both see the same machine load
    trees = [("", Path(__file__).resolve(), env)]
    if against is not None:
        # this file's cases (the other checkout may not define them all) on the other checkout's simkit
        trees.insert(0, ("against ", Path(__file__).resolve(), env | {"PYTHONPATH": str(against)}))
        trees[1] = ("this    ", trees[1][1], env | {"PYTHONPATH": str(ROOT)})
    print(f"{'case':<30}{'requests':>10}{'wall s':>9}{'CPU s':>8}{'import s':>9}{'sim s':>8}{'req/wall-s':>12}{'peak RSS':>11}"
          "   simulated makespan, engine path")
    for case in cases:
        best: dict[str, float] = {}
        for _ in range(repeat):
            for label, script, tree_env in trees:
                try:
                    wall, cpu, r = _measure(script, case, tree_env, cold, cli)
                except RuntimeError as e:
                    print(e, file=sys.stderr)
                    return 1
                best[label] = min(best.get(label, float("inf")), cpu)
                imp = "-" if r["import_s"] is None else f"{r['import_s']:.2f}"
                print(f"{label + case:<30}{r['requests']:>10,}{wall:>9.2f}{cpu:>8.2f}{imp:>9}{r['sim_wall_s']:>8.2f}"
                      f"{r['requests'] / wall:>12,.0f}{r['peak_rss_bytes'] / 2**20:>9.0f} MB   {r['makespan_s']:,.0f} s, "
                      f"{r['engine_path']}")
        if len(trees) > 1 or repeat > 1:
            ratio = f", this / against: {best['this    '] / best['against ']:.2f}" if len(trees) > 1 else ""
            print(f"  {case}: least CPU s of {repeat} run(s): " + ", ".join(f"{k.strip() or 'this'} {v:.2f}" for k, v in best.items())
                  + ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
