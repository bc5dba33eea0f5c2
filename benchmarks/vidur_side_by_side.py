"""Vidur (the peer simulator, PyPI ``vidur``) and simkit side by side on the same serving case.

    .venv/bin/python benchmarks/vidur_side_by_side.py --vidur-python /work/vidur-venv/bin/python
    .venv/bin/python benchmarks/vidur_side_by_side.py --repeat 3 azure16k-continuous
    .venv/bin/python benchmarks/vidur_side_by_side.py --cold ...    # also Vidur's first run (training)

Vidur runs from its own virtual environment (``--vidur-python``, default ``$SIMKIT_VIDUR_PYTHON``;
never simkit's: Vidur is no dependency of simkit). For each case the script

1. prepares Vidur's inputs in ``--workdir`` (kept between runs): the requests simkit simulates
   (the case's arrivals and lengths, less the requests simkit's front door rejects) as a Vidur
   trace-replay CSV; Vidur's profiling datasets laid out as a Hugging Face dataset cache (Vidur
   0.0.26 downloads them from the Hub; this machine is offline, so ``HF_HUB_OFFLINE=1`` makes
   it read the local copy): Vidur's own measured ``mlp.csv`` for Llama-2-7B on H100 from
   ``--profiles`` (the shared data), an ``attention.csv`` on the grid Vidur's attention profiler
   sweeps whose times come from simkit's calibrated attention cost (Vidur's measured attention
   table is not available here), and the network tables (unused at TP 1, PP 1);
2. runs simkit's same case (``serving_speed.py``'s fresh-process child, the user's cost-table
   cache warmed) and Vidur (``python -m vidur.main``, its predictor cache warmed by a first run
   that trains its random forests), alternating, ``--repeat`` times, and prints wall and CPU
   seconds of each process, the least CPU of each and their ratio;
3. prints both simulators' medians (TTFT, end-to-end latency) and throughput on the same
   requests: a sanity cross-check of the set-up, not a fidelity claim (the attention times are
   simkit's, the scheduler semantics differ; docs/performance.md, "Vidur side by side").

``--decompose`` then splits the gap between the two medians (docs/fidelity.md, "Why simkit's
latency medians differ from Vidur's"): simkit again with its host overhead per iteration off
(``plan.execution.iteration_overhead: 0 s``; Vidur 0.0.26 models no host time), and Vidur's
scheduler with every batch priced by simkit's cost model (``vidur_simkit_prices.py``, run in
Vidur's venv with this checkout on its path) with and without that overhead. simkit - Vidur =
host (simkit - simkit without host) + scheduler (simkit without host - Vidur's scheduler at
simkit's prices without host) + step pricing (the latter - Vidur), exactly; it also prints both
simulators' time of Vidur's batches per component (linear layers, attention, ...).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PROFILES = ROOT.parent / "shared" / "data" / "gpu-profiles"
DEFAULT_WORKDIR = Path("/tmp") / "simkit-vidur"
VIDUR_MODEL = "meta-llama/Llama-2-7b-hf"
VIDUR_DEVICE = "h100"
VIDUR_NETWORK = "h100_pairwise_nvlink"
COMPUTE_DATASET = "simkit-local/vidur-llama-2-7b-hf-h100"
NETWORK_DATASET = "simkit-local/vidur-h100-pairwise-nvlink"
TRACE_DATE = "simkit"
# Llama-2-7B's context: Vidur's prediction tables then cover every request (its default, 2M
# tokens, makes tables of millions of rows that only the KV-parallel plans need)
MAX_TOKENS = 4096
_PREDICTOR = "--random_forrest_execution_time_predictor_config_"
# The training run's hyper-parameter grid. Vidur's default searches 27 random-forest settings with
# 10-fold cross-validation for each of its 12 operator models: over an hour on this 2-core
# machine. "quick" searches one setting (250 trees, depth 32, split 2: the grid's fewest trees
# and deepest trees) with the same folds; the predictor cache's key (Vidur's hash of the
# predictor config) does not include the grid, so later runs with Vidur's defaults load it.
GRIDS: dict[str, tuple[str, ...]] = {
    "vidur": (),
    "quick": (_PREDICTOR + "num_estimators", "250", _PREDICTOR + "max_depth", "32",
              _PREDICTOR + "min_samples_split", "2"),
}
# The timed Vidur runs: its default (Python execution-time lookups) and its C++ predictor
# (0.0.26's _native module, off by default), each loading the cached predictor
VARIANTS: dict[str, tuple[str, ...]] = {
    "vidur": (),
    "vidur-native": (_PREDICTOR + "use_native_execution_time_predictor",),
}


def _serving_speed() -> Any:
    """benchmarks/serving_speed.py (its cases and its fresh-process child), importable with
    this checkout's simkit."""
    for path in (str(ROOT), str(Path(__file__).resolve().parent)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import serving_speed  # type: ignore[import-not-found]

    return serving_speed


class BenchError(Exception):
    """A one-line reason the benchmark cannot run (printed, exit 2)."""


@dataclass(frozen=True)
class Case:
    simkit_case: str
    """The case of benchmarks/serving_speed.py."""
    scheduler: tuple[str, ...]
    """Vidur's replica-scheduler flags."""
    replicas: int = 1
    global_scheduler: str = "round_robin"
    """Vidur's router over the replicas ("lor": least outstanding requests)."""
    variants: tuple[str, ...] = tuple(VARIANTS)
    """The Vidur variants timed (see VARIANTS)."""


CASES: dict[str, Case] = {
    "azure16k-continuous": Case(
        "azure16k-continuous",
        ("--replica_scheduler_config_type", "vllm", "--vllm_scheduler_config_batch_size_cap", "128",
         "--vllm_scheduler_config_max_tokens_in_batch", "4096"),
    ),
    "azure16k-chunked": Case(
        "azure16k-chunked",
        ("--replica_scheduler_config_type", "sarathi", "--sarathi_scheduler_config_batch_size_cap", "128",
         "--sarathi_scheduler_config_chunk_size", "512"),
    ),
    "azure16k-3replicas": Case(
        "azure16k-3replicas",
        ("--replica_scheduler_config_type", "vllm", "--vllm_scheduler_config_batch_size_cap", "128",
         "--vllm_scheduler_config_max_tokens_in_batch", "4096"),
        # simkit routes to the least outstanding replica; Vidur 0.0.26's "lor" router, and its C++
        # predictor with any router, stop with an AssertionError on this case (request.py:
        # _num_stage_processed_tokens <= total_tokens)
        replicas=3,
        global_scheduler="round_robin",
        variants=("vidur",),
    ),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vidur_side_by_side.py", description=__doc__.split("\n\n")[0])
    p.add_argument("cases", nargs="*", default=list(CASES)[:2], help=f"cases (default the first two): {', '.join(CASES)}")
    p.add_argument("--vidur-python", default=os.environ.get("SIMKIT_VIDUR_PYTHON"),
                   help="the Python of Vidur's virtual environment (default $SIMKIT_VIDUR_PYTHON)")
    p.add_argument("--repeat", type=int, default=1, help="alternating runs of each simulator per case (default 1)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help=f"Vidur's inputs and caches (default {DEFAULT_WORKDIR})")
    p.add_argument("--profiles", type=Path, default=DEFAULT_PROFILES, help=f"Vidur's profiling data (default {DEFAULT_PROFILES})")
    p.add_argument("--cold", action="store_true", help="first time Vidur with an empty predictor cache (it trains)")
    p.add_argument("--grid", choices=list(GRIDS), default="quick",
                   help="the training run's hyper-parameter grid (default quick: one setting; vidur: Vidur's 27)")
    p.add_argument("--decompose", action="store_true",
                   help="also split the medians' gap into host overhead, scheduler and step pricing (three more runs per case)")
    a = p.parse_args(argv)
    for c in a.cases:
        if c not in CASES:
            p.error(f"unknown case {c!r}; known: {', '.join(CASES)}")
    if a.repeat < 1:
        p.error(f"--repeat: expected an integer >= 1, got {a.repeat}")
    return a


def check_vidur_python(path: str | None) -> Path:
    """The Vidur interpreter, or a :class:`BenchError` saying what is missing."""
    if not path:
        raise BenchError("Vidur's Python is not given: pass --vidur-python PATH or set SIMKIT_VIDUR_PYTHON "
                         "(a separate venv with `pip install vidur==0.0.26`)")
    py = Path(path)
    if not py.is_file() or not os.access(py, os.X_OK):
        raise BenchError(f"--vidur-python {path}: no executable there (a separate venv with `pip install vidur==0.0.26`)")
    return py


# ---- inputs --------------------------------------------------------------------------------


def trace_csv(arrival_s: Any, input_tokens: Any, output_tokens: Any) -> str:
    """Vidur's trace-replay CSV (``Time`` in seconds, ``Date``, ``PromptTokenCount``,
    ``CompletionTokenCount``) of these requests, times written exactly (``repr``)."""
    if not len(arrival_s) == len(input_tokens) == len(output_tokens):
        raise ValueError("arrival_s, input_tokens and output_tokens must have the same length")
    lines = ["Time,Date,PromptTokenCount,CompletionTokenCount"]
    for t, i, o in zip(arrival_s, input_tokens, output_tokens, strict=True):
        if int(i) < 1 or int(o) < 1 or int(i) + int(o) > MAX_TOKENS:
            raise ValueError(f"a request of {int(i)} + {int(o)} tokens: Vidur needs 1..{MAX_TOKENS} in all")
        lines.append(f"{float(t)!r},{TRACE_DATE},{int(i)},{int(o)}")
    return "\n".join(lines) + "\n"


def hf_dataset(cache_dir: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """``files`` written as the Hugging Face hub's cache holds a downloaded dataset (what
    ``snapshot_download(repo_id, repo_type="dataset", cache_dir=cache_dir)`` returns offline);
    the revision is the hash of the contents. Returns the snapshot folder."""
    h = hashlib.sha1()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name])
    rev = h.hexdigest()
    repo = cache_dir / ("datasets--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    return snap


def attention_grid(vidur_python: Path) -> list[tuple[int, int, int, bool]]:
    """(prefill chunk, KV cache tokens, batch, is prefill) of every point Vidur's attention
    profiler measures for a 4,096-token model (Vidur's own function, run in its venv)."""
    code = ("import json;from vidur.profiling.utils import get_attention_input_combinations as g;"
            f"print(json.dumps([(c.prefill_chunk_size,c.kv_cache_size,c.batch_size,c.is_prefill) for c in g({MAX_TOKENS},1,128,False,False,{MAX_TOKENS})]))")
    out = subprocess.run([str(vidur_python), "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise BenchError(f"Vidur's attention grid: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return [tuple(r) for r in json.loads(out.stdout)]


def attention_csv(cost: Any, grid: list[tuple[int, int, int, bool]], heads: int, kv_heads: int, hidden: int) -> str:
    """Vidur's ``attention.csv`` (per-layer milliseconds, TP 1, block 16) at ``grid``'s points,
    priced by simkit's ``cost`` (an IterationModel: attention_time over all its layers)."""
    import numpy as np

    cols = ["n_embd", "n_q_head", "n_kv_head", "block_size", "num_tensor_parallel_workers", "prefill_chunk_size",
            "kv_cache_size", "batch_size", "is_prefill", "time_stats.attn_prefill.median", "time_stats.attn_decode.median"]
    lines = [",".join(cols)]
    for chunk, kv, batch, prefill in grid:
        if prefill:
            q, ctx = np.array([chunk]), np.array([kv])
        else:
            q, ctx = np.ones(batch, dtype=np.int64), np.full(batch, kv, dtype=np.int64)
        ms = cost.attention_time(q, ctx) / cost.layers * 1e3
        pre, dec = (repr(ms), "") if prefill else ("", repr(ms))
        lines.append(f"{hidden},{heads},{kv_heads},16,1,{chunk},{kv},{batch},{prefill},{pre},{dec}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Prepared:
    trace: Path
    num_blocks: int
    requests: int
    admitted: int
    simkit: dict[str, float]
    """simkit's summary figures of the case (one in-process run of the same inputs)."""
    data_changed: bool
    """Vidur's input datasets were (re)written: its predictor cache, keyed by the dataset's
    name and not its contents, must be emptied (e.g. after simkit's calibration changed)."""


def prepare(case: Case, workdir: Path, profiles: Path, vidur_python: Path) -> Prepared:
    """Vidur's inputs for ``case`` under ``workdir`` (see the module docstring), and simkit's
    summary of the same case."""
    _case_data = _serving_speed()._case_data
    from simkit.deployment import build_deployment
    from simkit.scenario import scenario_from_dict
    from simkit.simulate import simulate

    mlp = profiles / "compute" / VIDUR_DEVICE / VIDUR_MODEL / "mlp.csv"
    net = profiles / "network" / VIDUR_NETWORK
    for f in (mlp, net / "all_reduce.csv", net / "send_recv.csv"):
        if not f.is_file():
            raise BenchError(f"--profiles {profiles}: no {f.relative_to(profiles)} (Vidur's profiling data, shared/data/gpu-profiles)")
    sc = scenario_from_dict(_case_data(case.simkit_case))
    dep = build_deployment(sc)
    g = dep.groups[0]
    reqs = dep.reqs
    num_blocks = g.mem.num_blocks
    ok = dep.admission.rejections(reqs.input_tokens, reqs.output_tokens, num_blocks * sc.plan.kv_cache.block_size) == 0
    workdir.mkdir(parents=True, exist_ok=True)
    trace = workdir / f"{case.simkit_case}.csv"
    trace.write_text(trace_csv(reqs.arrival_s[ok], reqs.input_tokens[ok], reqs.output_tokens[ok]))

    data = workdir / "profiling_data"
    marker = data / "made-by-simkit.json"
    m = dep.model
    att = attention_csv(g.cost, attention_grid(vidur_python), m.num_heads, m.num_kv_heads, m.hidden_size)
    xz = lzma.compress
    compute = {"mlp.csv.xz": xz(mlp.read_bytes()), "attention.csv.xz": xz(att.encode()),
               "config.json": json.dumps({"model": VIDUR_MODEL, "device_sku": VIDUR_DEVICE}).encode()}
    network = {"all_reduce.csv.xz": xz((net / "all_reduce.csv").read_bytes()),
               "send_recv.csv.xz": xz((net / "send_recv.csv").read_bytes()),
               "config.json": json.dumps({"sku": VIDUR_NETWORK}).encode()}
    digest = hashlib.sha1(b"".join(lzma.decompress(v) if k.endswith(".xz") else v
                                   for d in (compute, network) for k, v in sorted(d.items()))).hexdigest()
    stamp = json.dumps({"attention_from": g.cal_info, "sha1": digest})
    changed = not marker.is_file() or marker.read_text() != stamp
    if changed:
        # Vidur looks for the datasets under <its cache dir>/profiling_data/{compute,network}
        hf_dataset(data / "compute", COMPUTE_DATASET, compute)
        hf_dataset(data / "network", NETWORK_DATASET, network)
        marker.write_text(stamp)
    s = simulate(sc, record_iterations=False).summary
    return Prepared(trace, num_blocks, len(reqs), int(ok.sum()), {k: float(s[k]) for k in SUMMARY_KEYS}, changed)


SUMMARY_KEYS = ("ttft_p50_s", "e2e_p50_s", "requests_per_s", "output_tokens_per_s", "makespan_s", "requests_completed")
HOST_OFF = "0 s"
"""``plan.execution.iteration_overhead`` of the like-for-like runs: Vidur 0.0.26 prices a batch as
its operators' time only (no scheduling, sampling or other host time per iteration)."""


def simkit_without_host(case: Case) -> tuple[dict[str, float], dict[str, list[float]]]:
    """simkit's summary figures of ``case`` with its host overhead per iteration off, and its
    admitted requests' ``e2e`` and ``ttft`` seconds and ``output`` tokens (in the order of the
    trace given to Vidur: Vidur's request ids)."""
    from simkit.scenario import scenario_from_dict
    from simkit.simulate import simulate

    data = copy.deepcopy(_serving_speed()._case_data(case.simkit_case))  # a copy: the case's own stays as it is
    data["plan"].setdefault("execution", {})["iteration_overhead"] = HOST_OFF
    r = simulate(scenario_from_dict(data), record_iterations=False)
    t = r.table
    ok = ~t.rejected
    per = {"e2e": (t.finish - t.arrival)[ok].tolist(), "ttft": (t.first_token - t.arrival)[ok].tolist(),
           "output": t.output[ok].astype(float).tolist()}
    return {k: float(r.summary[k]) for k in SUMMARY_KEYS}, per


# ---- runs ----------------------------------------------------------------------------------


def vidur_command(vidur_python: Path, case: Case, trace: Path, num_blocks: int, cache_dir: Path, out_dir: Path,
                  grid: tuple[str, ...] = ()) -> list[str]:
    """``python -m vidur.main`` on ``case``: one replica of Llama-2-7B on an H100 at TP 1, the
    requests of ``trace`` replayed, simkit's KV blocks, the random-forest predictor (Vidur's
    default; ``grid``: its hyper-parameter flags, see GRIDS) reading the local datasets, and its
    optional outputs off where a flag allows."""
    return [
        str(vidur_python), "-m", "vidur.main",
        "--seed", "0", "--log_level", "info",
        "--cluster_config_num_replicas", str(case.replicas),
        "--global_scheduler_config_type", case.global_scheduler,
        "--replica_config_model_name", VIDUR_MODEL,
        "--replica_config_device", VIDUR_DEVICE,
        "--replica_config_network_device", VIDUR_NETWORK,
        "--replica_config_tensor_parallel_size", "1",
        "--replica_config_num_pipeline_stages", "1",
        "--cache_config_block_size", "16",
        "--cache_config_num_blocks", str(num_blocks),
        *case.scheduler,
        "--request_generator_config_type", "trace_replay",
        "--trace_request_generator_config_trace_file", str(trace),
        "--trace_request_generator_config_date", TRACE_DATE,
        "--trace_request_generator_config_prefill_scale_factor", "1",
        "--trace_request_generator_config_decode_scale_factor", "1",
        "--trace_request_generator_config_time_scale_factor", "1",
        "--trace_request_generator_config_max_tokens", str(MAX_TOKENS),
        "--execution_time_predictor_config_type", "random_forrest",
        _PREDICTOR + "model_profiling_dataset", COMPUTE_DATASET,
        _PREDICTOR + "network_profiling_dataset", NETWORK_DATASET,
        _PREDICTOR + "cache_dir", str(cache_dir),
        _PREDICTOR + "prediction_max_tokens_per_request", str(MAX_TOKENS),
        _PREDICTOR + "prediction_max_prefill_chunk_size", str(MAX_TOKENS),
        *grid,
        "--metrics_config_output_dir", str(out_dir),
        "--no-metrics_config_store_plots",
        "--no-metrics_config_enable_chrome_trace",
        "--no-metrics_config_write_json_trace",
        "--no-metrics_config_store_batch_metrics",
        "--no-metrics_config_store_utilization_metrics",
    ]


def vidur_env(base: dict[str, str]) -> dict[str, str]:
    """Vidur's environment: the Hub offline (the datasets are local), no Weights & Biases."""
    return base | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": ""}


def ended_at(log: str) -> float:
    """Vidur's simulated end time (its "Simulation ended at: T s" log line)."""
    m = re.findall(r"Simulation ended at: ([0-9.eE+-]+)s", log)
    if not m:
        raise BenchError("Vidur's log has no 'Simulation ended at' line")
    return float(m[-1])


_STAMP = re.compile(r"^[A-Z]+ \d\d-\d\d (\d\d):(\d\d):(\d\d) ", re.M)


def phases(log: str, wall: float) -> tuple[float, float, float]:
    """(start-up and teardown, simulation loop, output) wall seconds of a Vidur run of ``wall``
    seconds, from its log's time stamps (1 s resolution): "Starting simulation" to "Simulation
    ended at" is the loop, from there to "Metrics written" the output, the rest of ``wall`` is
    the interpreter, imports, configuration, the predictor's loading and teardown."""

    def at(marker: str) -> float:
        i = log.find(marker)
        m = _STAMP.match(log, log.rfind("\n", 0, i) + 1) if i >= 0 else None
        if m is None:
            raise BenchError(f"Vidur's log has no time-stamped {marker!r} line")
        h, mi, se = (int(x) for x in m.groups())
        return h * 3600.0 + mi * 60.0 + se

    start, end, written = at("Starting simulation"), at("Simulation ended at"), at("Metrics written")
    loop, output = (end - start) % 86400.0, (written - end) % 86400.0
    return max(wall - loop - output, 0.0), loop, output


def vidur_summary(metrics_csv: Path, arrival_s: list[float], output_tokens: list[int]) -> dict[str, float]:
    """simkit's summary figures from Vidur's ``request_metrics.csv`` (request ids are the
    trace's row order): TTFT (``prefill_e2e_time``) and end-to-end medians, and throughput over
    last finish - first arrival, as simkit's ``makespan_s``."""
    import csv
    import statistics

    with metrics_csv.open() as f:
        rows = list(csv.DictReader(f))
    ids = [int(float(r["Request Id"])) for r in rows]
    e2e = [float(r["request_e2e_time"]) for r in rows]
    ttft = [float(r["prefill_e2e_time"]) for r in rows]
    makespan = max(arrival_s[i] + e for i, e in zip(ids, e2e, strict=True)) - min(arrival_s)
    return {
        "ttft_p50_s": statistics.median(ttft), "e2e_p50_s": statistics.median(e2e),
        "requests_per_s": len(rows) / makespan, "output_tokens_per_s": sum(output_tokens[i] for i in ids) / makespan,
        "makespan_s": makespan, "requests_completed": float(len(rows)),
    }


def run_vidur(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """(wall s, CPU s, log) of one fresh Vidur process (its children included)."""
    with open(cwd / "vidur.log", "w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        log.seek(0)
        text = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        tail = text.strip().splitlines()[-1] if text.strip() else "no output"
        raise BenchError(f"Vidur failed (log {cwd / 'vidur.log'}): {tail}")
    # wait4's usage includes the descendants the process reaped (joblib's workers while training)
    return wall, usage.ru_utime + usage.ru_stime, text


def _vidur_once(vidur_python: Path, case: Case, prep: Prepared, cache: Path, out: Path,
                grid: tuple[str, ...] = ()) -> tuple[float, float, dict[str, float], tuple[float, float, float]]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    wall, cpu, log = run_vidur(vidur_command(vidur_python, case, prep.trace, prep.num_blocks, cache, out / "metrics", grid),
                               vidur_env(dict(os.environ)), out)
    ended_at(log)  # the simulation ran to its end
    metrics = next((out / "metrics").rglob("request_metrics.csv"), None)
    if metrics is None:
        raise BenchError(f"Vidur wrote no request_metrics.csv under {out / 'metrics'}")
    lines = prep.trace.read_text().splitlines()[1:]
    arrival = [float(x.split(",")[0]) for x in lines]
    outs = [int(x.split(",")[3]) for x in lines]
    return wall, cpu, vidur_summary(metrics, arrival, outs), phases(log, wall)


PRICES_SCRIPT = Path(__file__).resolve().parent / "vidur_simkit_prices.py"


def priced_command(vidur_python: Path, case: Case, host: str, batches_csv: Path, vidur_cmd: list[str]) -> list[str]:
    """Vidur's run ``vidur_cmd`` (see :func:`vidur_command`) with every batch priced by simkit's
    cost model of ``case`` at host overhead ``host`` (``-``: the profile's), each batch's two
    prices written to ``batches_csv`` (``vidur_simkit_prices.py``)."""
    if vidur_cmd[1:3] != ["-m", "vidur.main"]:
        raise ValueError("expected a `python -m vidur.main ...` command")
    return [str(vidur_python), str(PRICES_SCRIPT), case.simkit_case, host, str(batches_csv), "--", *vidur_cmd[3:]]


def _vidur_priced(vidur_python: Path, case: Case, prep: Prepared, cache: Path, out: Path,
                  host: str) -> tuple[dict[str, float], Path]:
    """Vidur's summary figures of ``case`` with simkit's step prices (host overhead ``host``),
    and its ``request_metrics.csv``."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = priced_command(vidur_python, case, host, out / "batches.csv",
                         vidur_command(vidur_python, case, prep.trace, prep.num_blocks, cache, out / "metrics"))
    # simkit importable in Vidur's venv (this checkout), the rest as Vidur's own runs
    _, _, log = run_vidur(cmd, vidur_env(dict(os.environ)) | {"PYTHONPATH": str(ROOT)}, out)
    ended_at(log)
    metrics = next((out / "metrics").rglob("request_metrics.csv"), None)
    if metrics is None:
        raise BenchError(f"Vidur wrote no request_metrics.csv under {out / 'metrics'}")
    lines = prep.trace.read_text().splitlines()[1:]
    return vidur_summary(metrics, [float(x.split(",")[0]) for x in lines], [int(x.split(",")[3]) for x in lines]), metrics


def vidur_per_request(metrics_csv: Path, n: int) -> dict[str, list[float]]:
    """``e2e`` and ``ttft`` seconds of Vidur's requests 0..n-1 (``request_metrics.csv``)."""
    import csv

    e2e, ttft = [float("nan")] * n, [float("nan")] * n
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            i = int(float(row["Request Id"]))
            e2e[i], ttft[i] = float(row["request_e2e_time"]), float(row["prefill_e2e_time"])
    return {"e2e": e2e, "ttft": ttft}


BANDS = ((1, 50), (50, 200), (200, 500), (500, None))
"""Output-length bands (tokens, upper bound excluded) of the per-request comparison."""


def per_request_ratios(simkit: dict[str, list[float]], vidur: dict[str, list[float]]) -> list[tuple[str, int, float, float]]:
    """(band, requests, median of simkit / Vidur e2e, of TTFT) per output-length band of
    :data:`BANDS`, request by request (the same requests in the same order)."""
    import statistics

    if len(simkit["e2e"]) != len(vidur["e2e"]):
        raise BenchError(f"simkit admitted {len(simkit['e2e']):,} requests, Vidur reported {len(vidur['e2e']):,}")
    out = []
    for lo, hi in BANDS:
        idx = [i for i, o in enumerate(simkit["output"]) if o >= lo and (hi is None or o < hi)]
        if not idx:
            continue
        label = f"output {lo}-{hi - 1}" if hi is not None else f"output {lo}+"
        out.append((label, len(idx), statistics.median(simkit["e2e"][i] / vidur["e2e"][i] for i in idx),
                    statistics.median(simkit["ttft"][i] / vidur["ttft"][i] for i in idx)))
    return out


FACTORS = ("host", "scheduler", "pricing")


def decomposition(simkit: dict[str, float], simkit_no_host: dict[str, float], vidur_simkit_prices_no_host: dict[str, float],
                  vidur: dict[str, float]) -> dict[str, dict[str, float]]:
    """For the TTFT and end-to-end medians: the gap simkit - Vidur and its three parts, which sum
    to it exactly: ``host`` (simkit - simkit without host overhead), ``scheduler`` (simkit
    without host - Vidur's scheduler at simkit's prices without host), ``pricing`` (the latter -
    Vidur). A chain: each part is measured with the parts before it removed."""
    out: dict[str, dict[str, float]] = {}
    for k in ("ttft_p50_s", "e2e_p50_s"):
        a, b, c, d = simkit[k], simkit_no_host[k], vidur_simkit_prices_no_host[k], vidur[k]
        out[k] = {"gap": a - d, "host": a - b, "scheduler": b - c, "pricing": c - d}
    return out


COMPONENTS = ("linear", "attn_prefill", "attn_decode", "norm_act_add", "head", "comm", "host", "other")
"""The columns of ``vidur_simkit_prices.py``'s batches CSV (its COLS)."""


def component_totals(batches_csv: Path) -> dict[str, dict[str, float]]:
    """Sums over the batches of ``batches_csv`` (``vidur_simkit_prices.py``'s rows) of each
    simulator's milliseconds per component and in all (``vidur_ms``, ``simkit_ms``), and the
    number of batches (``batches``), for all batches (``all``), those of decodes only
    (``decode``: no sequence with more than one new token) and the rest (``prefill``)."""
    import csv

    sums: dict[str, dict[str, float]] = {g: {} for g in ("all", "decode", "prefill")}
    with batches_csv.open() as f:
        for row in csv.DictReader(f):
            kind = "decode" if int(row["prefills"]) == 0 else "prefill"
            for g in ("all", kind):
                d = sums[g]
                d["batches"] = d.get("batches", 0.0) + 1.0
                for k, v in row.items():
                    if k.startswith(("vidur_", "simkit_")):
                        d[k] = d.get(k, 0.0) + float(v)
    return sums


def print_decomposition(rows: dict[str, dict[str, float]], parts: dict[str, dict[str, float]],
                        totals: dict[str, dict[str, float]]) -> None:
    for label, s in rows.items():
        print(f"  {label:<34} TTFT p50 {s['ttft_p50_s']:.4f} s, e2e p50 {s['e2e_p50_s']:.3f} s, "
              f"makespan {s['makespan_s']:,.1f} s")
    for k, name in (("ttft_p50_s", "TTFT p50"), ("e2e_p50_s", "e2e p50")):
        p = parts[k]
        print(f"  {name} gap simkit - Vidur {p['gap']:+.4f} s = "
              + " + ".join(f"{f} {p[f]:+.4f} s ({p[f] / p['gap'] * 100:+.0f}%)" if p["gap"] else f"{f} {p[f]:+.4f} s"
                           for f in FACTORS))
    print("  Vidur's batches (its scheduler, no host overhead) priced by both, ms summed over the batches:")
    print(f"  {'batches':<9}{'count':>8}  " + "".join(f"{c:>22}" for c in (*COMPONENTS, "total")))
    for g, d in totals.items():
        if not d:
            continue
        cells = "".join(f"{d['vidur_' + c]:>10,.0f}/{d['simkit_' + c]:<11,.0f}" for c in COMPONENTS)
        print(f"  {g:<9}{d['batches']:>8,.0f}  {cells}{d['vidur_ms']:>10,.0f}/{d['simkit_ms']:<11,.0f}  (Vidur/simkit)")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        vidur_python = check_vidur_python(args.vidur_python)
        _measure = _serving_speed()._measure
        script = Path(__file__).resolve().parent / "serving_speed.py"
        env = dict(os.environ) | {"PYTHONPATH": str(ROOT)}
        vidur_cache = args.workdir / "profiling_cache"
        for name in args.cases:
            case = CASES[name]
            prep = prepare(case, args.workdir, args.profiles, vidur_python)
            # Vidur reads the datasets from <cache_dir>/profiling_data: the predictor cache and
            # the datasets share the folder (a cold run starts from the datasets alone)
            if (args.cold or prep.data_changed) and (vidur_cache / "predictors").exists():
                for sub in ("predictors", "predictions", "training_predictions"):
                    shutil.rmtree(vidur_cache / sub, ignore_errors=True)
            vidur_cache.mkdir(parents=True, exist_ok=True)
            link = vidur_cache / "profiling_data"
            if not link.exists():
                link.symlink_to(args.workdir / "profiling_data")
            print(f"{name}: {prep.requests:,} requests, {prep.admitted:,} admitted by simkit and given to Vidur; "
                  f"KV blocks {prep.num_blocks:,}")
            print(f"{'run':<14}{'wall s':>9}{'CPU s':>9}")
            sums: dict[str, dict[str, float]] = {"simkit": prep.simkit}
            if args.cold or not (vidur_cache / "predictors").exists():
                wall, cpu, sums["vidur"], ph = _vidur_once(vidur_python, case, prep, vidur_cache, args.workdir / "run",
                                                           GRIDS[args.grid])
                print(f"{'vidur cold':<14}{wall:>9.2f}{cpu:>9.2f}   trains and caches its predictor ({args.grid} grid); "
                      f"wall s: start-up {ph[0]:.0f}, loop {ph[1]:.0f}, output {ph[2]:.0f}")
            best = {"simkit": float("inf")} | {v: float("inf") for v in case.variants}
            for _ in range(args.repeat):
                wall, cpu, r = _measure(script, case.simkit_case, env, False, False)
                best["simkit"] = min(best["simkit"], cpu)
                print(f"{'simkit':<14}{wall:>9.2f}{cpu:>9.2f}   {r['engine_path']}; simulate() {r['sim_wall_s']:.2f} s")
                for variant in case.variants:
                    wall, cpu, sums[variant], ph = _vidur_once(vidur_python, case, prep, vidur_cache, args.workdir / "run",
                                                               VARIANTS[variant])
                    best[variant] = min(best[variant], cpu)
                    print(f"{variant:<14}{wall:>9.2f}{cpu:>9.2f}   wall s: start-up {ph[0]:.0f}, loop {ph[1]:.0f}, "
                          f"output {ph[2]:.0f}")
            print(f"  {name}: least CPU s of {args.repeat}: " + ", ".join(f"{k} {v:.2f}" for k, v in best.items())
                  + "; " + ", ".join(f"{v} / simkit {best[v] / best['simkit']:.1f}x" for v in case.variants))
            for label, s in sums.items():
                print(f"  {label:<13} TTFT p50 {s['ttft_p50_s']:.3f} s, e2e p50 {s['e2e_p50_s']:.2f} s, "
                      f"{s['requests_per_s']:.2f} req/s, {s['output_tokens_per_s']:,.0f} output tok/s, "
                      f"{s['requests_completed']:,.0f} completed, makespan {s['makespan_s']:,.1f} s")
            if args.decompose:
                no_host, no_host_per = simkit_without_host(case)
                priced, files = {}, {}
                for i, h in enumerate((HOST_OFF, "-")):
                    priced[h], files[h] = _vidur_priced(vidur_python, case, prep, vidur_cache, args.workdir / f"priced-{i}", h)
                print(f"  {name}: decomposition of the medians' gap (Vidur's default predictor)")
                rows = {"simkit": sums["simkit"], f"simkit, host {HOST_OFF}": no_host,
                        "Vidur's scheduler, simkit's prices": priced["-"],
                        f"  the same, host {HOST_OFF}": priced[HOST_OFF], "vidur": sums["vidur"]}
                print_decomposition(rows, decomposition(sums["simkit"], no_host, priced[HOST_OFF], sums["vidur"]),
                                    component_totals(args.workdir / "priced-0" / "batches.csv"))
                print(f"  request by request, host {HOST_OFF}, median of simkit / Vidur's scheduler at simkit's prices:")
                for band, n, e2e, ttft in per_request_ratios(no_host_per, vidur_per_request(files[HOST_OFF], prep.admitted)):
                    print(f"    {band:<14} {n:>7,} requests: e2e {e2e:.4f}, TTFT {ttft:.4f}")
    except BenchError as e:
        print(f"vidur_side_by_side: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
