"""Real torch runs vs simkit's prediction (``simkit validate``).

A small Llama-architecture model with random weights (RMSNorm, RoPE, GQA attention through
``scaled_dot_product_attention`` with a real KV cache, SwiGLU MLP, LM head, greedy sampling) runs
prefill (``batch`` sequences of ``context`` tokens from an empty cache) and decode steps (``batch``
sequences each with ``context`` cached tokens, one new token) on this machine. Every step is
warmed up, then the repetitions of all configurations are interleaved round-robin over the run
(at least ``--repeats`` each, more for short steps), so a slow period of a shared machine is
spread over every configuration; the median is compared with
``total_time(time_ops(forward_ops(model, q, ctx), device, profile, dtype))`` for the same model
and batch, the device being the profile's roofline (its ``peak_flops``/``mem_bandwidth`` device
facts, which the fitted efficiencies refer to) and the efficiencies the profile's fit.

The model runs exactly the kernels the calibration measured (simkit.calibrate.bench ``k_*``),
but at dims the calibration never timed: the calibration's GEMMs are projections of real models
(dims 2048..16384 and their TP shards, 256..16384) while the default validation model has hidden
512, QKV 1536, FFN 1408 and vocabulary 4096, so every operator here is predicted by the fit, not
looked up.

The run must match the profile: its thread count (default: the profile's; a different
``--threads`` is a CalibrationError), a dtype it measured, and its clock (``wall``, or ``cpu``:
the thread's CPU time, for one thread on a machine other processes share). Both the calibration
and the validation set the same allocator policy (:func:`simkit.calibrate.bench.tune_allocator`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simkit.errors import CalibrationError, SimkitError
from simkit.units import comma_items

DEFAULT_PROFILE = "calibration/profiles/ci-vm-cpu"
FIDELITY_DATE = "2026-11-22"


@dataclass(frozen=True)
class ValidationConfig:
    layers: int = 2
    hidden: int = 512
    heads: int = 8
    kv_heads: int = 8
    ffn: int = 1408
    vocab: int = 4096
    batch_sizes: tuple[int, ...] = (1, 4, 16)
    context_lens: tuple[int, ...] = (128, 512)
    dtype: str | None = None
    """None: bf16 when the profile has it, else fp32."""
    repeats: int = 5
    warmup: int = 2
    min_time_s: float = 0.25
    """Short steps are repeated until at least this long has been timed (noisy machines)."""
    threads: int | None = None
    phases: tuple[str, ...] = ("prefill", "decode")
    clock: str | None = None
    """"wall" or "cpu" (thread CPU time, one thread only); None: the clock the profile was measured with."""
    force: bool = False
    """Validate even when the profile's device fingerprint differs from this machine's (warns)."""


# ---------------------------------------------------------------------------------------------
# The torch model
# ---------------------------------------------------------------------------------------------
class TorchLlama:
    """A Llama-architecture decoder with random weights, run with the calibration's kernels."""

    def __init__(self, cfg: ValidationConfig, dtype: str, max_ctx: int, seed: int = 0) -> None:
        from simkit.calibrate.bench import rand, require_torch, rope_tables

        torch = require_torch()
        torch.manual_seed(seed)
        self.torch = torch
        self.cfg = cfg
        self.dtype = dtype
        h, f, v = cfg.hidden, cfg.ffn, cfg.vocab
        if h % cfg.heads:
            raise CalibrationError(f"hidden ({h}) must be a multiple of heads ({cfg.heads})")
        if cfg.heads % cfg.kv_heads:
            raise CalibrationError(f"heads ({cfg.heads}) must be a multiple of kv heads ({cfg.kv_heads})")
        self.d = d = h // cfg.heads
        qkv = (cfg.heads + 2 * cfg.kv_heads) * d
        s = 1.0 / math.sqrt(h)
        self.embed = rand((v, h), dtype, "cpu")
        self.layers = []
        for _ in range(cfg.layers):
            self.layers.append(
                {
                    "ln1": rand((h,), dtype, "cpu", scale=0.1).add_(1.0),
                    "wqkv": rand((qkv, h), dtype, "cpu", scale=s),
                    "wo": rand((h, cfg.heads * d), dtype, "cpu", scale=s),
                    "ln2": rand((h,), dtype, "cpu", scale=0.1).add_(1.0),
                    "wup": rand((2 * f, h), dtype, "cpu", scale=s),
                    "wdown": rand((h, f), dtype, "cpu", scale=1.0 / math.sqrt(f)),
                }
            )
        self.norm = rand((h,), dtype, "cpu", scale=0.1).add_(1.0)
        self.lm_head = rand((v, h), dtype, "cpu", scale=s)
        self.cos, self.sin = rope_tables(max_ctx + 1, d, dtype, "cpu")
        self.max_ctx = max_ctx
        self.cache: list[tuple[Any, Any]] = []
        self.cache_batch = 0

    def make_cache(self, batch: int) -> list[tuple[Any, Any]]:
        """A KV cache per layer: (batch, kv_heads, max_ctx + 1, head_dim) for K and for V."""
        from simkit.calibrate.bench import rand

        cfg = self.cfg
        shape = (batch, cfg.kv_heads, self.max_ctx + 1, self.d)
        return [(rand(shape, self.dtype, "cpu"), rand(shape, self.dtype, "cpu")) for _ in range(cfg.layers)]

    def alloc_cache(self, batch: int) -> None:
        """Give the model a default KV cache for ``batch`` sequences (used when forward gets none)."""
        if self.cache_batch != batch:
            self.cache = self.make_cache(batch)
            self.cache_batch = batch

    def forward(self, ids: Any, pos: int, cache: list[tuple[Any, Any]] | None = None) -> Any:
        """One forward pass of ``ids`` (batch, seq) at positions pos..pos+seq; returns the next
        token of each sequence (greedy). Writes K/V into ``cache`` (default: alloc_cache's)."""
        from simkit.calibrate.bench import (
            k_embedding,
            k_rmsnorm,
            k_sampling,
        )

        F = self.torch.nn.functional
        cfg = self.cfg
        b, s = ids.shape
        x = k_embedding(ids.reshape(-1), self.embed)
        for lw, (kc, vc) in zip(self.layers, self.cache if cache is None else cache):
            x = layer_forward(F, x, lw, kc, vc, self.cos, self.sin, b, s, cfg, self.d, pos)
        x = k_rmsnorm(x, self.norm)
        last = x.view(b, s, -1)[:, -1]
        return k_sampling(F.linear(last, self.lm_head))


def layer_forward(F: Any, x: Any, lw: dict, kc: Any, vc: Any, cos: Any, sin: Any, b: int, s: int, cfg: Any, d: int, pos: int) -> Any:
    """One Llama block (RMSNorm, QKV, RoPE, attention over the KV cache, O, RMSNorm, SwiGLU MLP,
    residual adds) with the kernels the calibration times; shared by both validations."""
    from simkit.calibrate.bench import k_add, k_attention, k_rmsnorm, k_rope, k_silu_mul

    hn = k_rmsnorm(x, lw["ln1"])
    qkv = F.linear(hn, lw["wqkv"])
    q, k, v = k_rope(qkv, cos, sin, b, s, cfg.heads, cfg.kv_heads, d, pos)
    a = k_attention(q, k, v, kc, vc, pos)
    x = k_add(x, F.linear(a, lw["wo"]))
    hn = k_rmsnorm(x, lw["ln2"])
    return k_add(x, F.linear(k_silu_mul(F.linear(hn, lw["wup"])), lw["wdown"]))


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------
def model_spec(cfg: ValidationConfig) -> Any:
    from simkit.calibrate.bench import bench_model

    m = bench_model(hidden=cfg.hidden, heads=cfg.heads, kv_heads=cfg.kv_heads, ffn=cfg.ffn, vocab=cfg.vocab, layers=cfg.layers)
    return m.model_copy(update={"name": "validation-llama", "max_context": 1 << 20})


def profile_device(profile: Any) -> dict[str, Any]:
    dev = getattr(profile, "device", None)
    if dev is None:
        raise CalibrationError("the profile records no device facts", where=str(getattr(profile, "path", "")))
    return dev if isinstance(dev, dict) else dict(dev)


def compute_device(profile: Any) -> Any:
    """The CPU as the roofline sees it: the profile's measured peaks (upper bounds of what was
    measured, so efficiencies stay <= 1), else the catalog CPU it names + its memory."""
    from simkit.cost.device import ComputeDevice
    from simkit.specs.hardware import PeakFlops

    dev = profile_device(profile)
    peaks = dev.get("peak_flops") or {}
    bw = dev.get("mem_bandwidth")
    if peaks and bw:
        pf = PeakFlops.model_validate({k: f"{float(v):.6g} FLOPS" for k, v in peaks.items() if k in ("fp32", "tf32", "fp16", "bf16", "fp8", "int8")} | ({} if "fp32" in peaks else {"fp32": f"{float(max(peaks.values())):.6g} FLOPS"}))
        mem = float(dev.get("memory_bytes") or 0) or 1.0
        return ComputeDevice(str(dev.get("catalog") or dev.get("name") or "cpu"), "cpu", pf, float(bw), mem, launch_overhead=0.0)
    cat = dev.get("catalog")
    if not cat:
        raise CalibrationError("the profile has neither measured peaks (peak_flops, mem_bandwidth) nor a catalog CPU")
    from simkit.specs.catalog import default_catalog

    c = default_catalog()
    cpu = c.get("cpu", cat)
    dram = c.get("memory", cpu.memory_type)
    return ComputeDevice.from_cpu(cpu, dram, 1, dram.capacity)


def predict_step(spec: Any, q: Sequence[int], ctx: Sequence[int], device: Any, profile: Any, dtype: str) -> tuple[float, list[Any]]:
    from simkit.cost.ops import Precision, forward_ops
    from simkit.cost.roofline import time_ops, total_time

    p = Precision(weights=dtype, activations=dtype, kv_cache=dtype)
    ops = forward_ops(spec, np.asarray(q), np.asarray(ctx), tp=1, precision=p)
    times = time_ops(ops, device, profile, dtype)
    return total_time(times), times


# ---------------------------------------------------------------------------------------------
# Checks and measurement
# ---------------------------------------------------------------------------------------------
def step_batch(phase: str, batch: int, context: int) -> tuple[list[int], list[int]]:
    """(new tokens, cached tokens) per sequence of one validated step: a prefill of ``context``
    tokens per sequence over an empty cache, or a decode step over ``context`` cached tokens."""
    if phase == "prefill":
        return [context] * batch, [0] * batch
    return [1] * batch, [context] * batch


def repredict(result: Mapping[str, Any], profile: Any) -> dict[str, Any]:
    """Predict the steps a validation measured (its ``--json`` result) with another profile: the
    same measurements scored against another model, which separates a model change from the
    machine's drift between two runs. Returns {median_ape, p90_ape, errors} (signed errors in the
    result's row order)."""
    m = result["model"]
    dtype = str(result["dtype"])
    cfg = ValidationConfig(layers=int(m["layers"]), hidden=int(m["hidden"]), heads=int(m["heads"]),
                           kv_heads=int(m["kv_heads"]), ffn=int(m["ffn"]), vocab=int(m["vocab"]))  # fmt: skip
    spec = model_spec(cfg)
    device = compute_device(profile)
    errors = []
    for row in result["rows"]:
        q, ctx = step_batch(str(row["phase"]), int(row["batch"]), int(row["context"]))
        pred, _ = predict_step(spec, q, ctx, device, profile, dtype)
        errors.append(pred / float(row["measured_s"]) - 1.0)
    ape = np.abs(errors)
    return {"median_ape": float(np.median(ape)), "p90_ape": float(np.percentile(ape, 90)), "errors": errors}


def machine_profile() -> str:
    """``--profile``'s default: the first CPU profile (in the order ``calibration: auto`` tries
    them: ``SIMKIT_PROFILE_PATH``, the per-user folder, the shipped ones; newest first within a
    folder) whose hardware fingerprint is this machine's CPU, not a ``--tiny`` one; else
    :data:`DEFAULT_PROFILE`."""
    from simkit.calibrate.bench import local_cpu_fingerprint
    from simkit.specs.calibration import compare_fingerprints, list_profiles, parse_fingerprint

    here = local_cpu_fingerprint(None)
    for p in list_profiles()[0]:
        raw = p.device.get("fingerprint")
        if p.device.get("kind") != "cpu" or p.device.get("suite") == "tiny" or not isinstance(raw, dict):
            continue
        try:
            fp = parse_fingerprint(raw, "cpu", str(p.file))
        except SimkitError:
            continue
        if not compare_fingerprints(fp, here).hardware_differs():
            return str(p.file.parent)
    return DEFAULT_PROFILE


def load_profile(path: str | Path) -> Any:
    from simkit.cost.profile import Profile
    from simkit.specs.catalog import repo_path

    p = Path(path)
    if not p.exists() and not p.is_absolute() and repo_path(*p.parts).exists():
        # a relative path not under the working folder: simkit's own data folder (the shipped
        # profiles of an installed simkit, e.g. the default calibration/profiles/ci-vm-cpu)
        p = repo_path(*p.parts)
    if not p.exists():
        raise CalibrationError(
            f"calibration profile not found here or in simkit's data folder ({repo_path()}); run "
            "`simkit calibrate --device cpu --out DIR` first", where=str(p),
        )  # fmt: skip
    return Profile.load(p)


def check_profile(profile: Any, threads: int, dtype: str, clock: str | None = None) -> str:
    """Raise CalibrationError unless the profile matches this run; return the clock to time with."""
    dev = profile_device(profile)
    where = str(getattr(profile, "path", "") or getattr(profile, "name", "profile"))
    pclock = str(dev.get("clock") or "wall")
    if clock is not None and clock != pclock:
        raise CalibrationError(
            f"clock mismatch: --clock {clock} but the profile was measured with the {pclock} clock",
            where=where, key="device.clock",
        )
    kind = dev.get("kind")
    if kind not in (None, "cpu"):
        raise CalibrationError(f"the profile was measured on a {kind}, not this CPU", where=where, key="device.kind")
    pt = dev.get("threads")
    if pt is not None and int(pt) != int(threads):
        raise CalibrationError(
            f"thread mismatch: torch uses {threads} threads here but the profile was measured with {pt} "
            f"(pass --threads {pt}, or recalibrate with --threads {threads})",
            where=where,
            key="device.threads",
        )
    have = profile_dtypes(profile)
    if have and dtype not in have:
        raise CalibrationError(
            f"the profile has no {dtype} measurements (it has {', '.join(sorted(have))}): pass --dtype "
            f"{sorted(have)[0]} or recalibrate with that dtype",
            where=where,
            key="device.dtypes",
        )
    if pclock == "cpu" and threads != 1:
        raise CalibrationError("the profile was measured with the cpu clock, which needs --threads 1", where=where)
    return pclock


def profile_dtypes(profile: Any) -> set[str]:
    dev = profile_device(profile)
    dts = dev.get("dtypes")
    if dts:
        return set(dts)
    getter = getattr(profile, "dtypes", None)
    if callable(getter):
        return set(getter())
    if getter:
        return set(getter)
    return set()


def _time_step(fn: Any, repeats: int, warmup: int, min_time_s: float) -> tuple[list[float], list[float]]:
    """(wall seconds, this thread's CPU seconds) of each timed repetition."""
    for _ in range(warmup):
        fn()
    wall: list[float] = []
    cpu: list[float] = []
    start = time.perf_counter()
    while len(wall) < repeats or (time.perf_counter() - start < min_time_s and len(wall) < 200):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return wall, cpu


def drift(times: Sequence[float]) -> float | None:
    """How far this machine moved while one configuration was timed: ``|median of the second half
    of its repetitions / median of the first half - 1|`` (repetitions in the order they ran, which
    are interleaved with every other configuration over the whole run). None under 4 repetitions.

    A prediction error smaller than this cannot be told apart from the machine's own drift: on a
    shared machine the same kernel runs 10-20% slower or faster a minute later (docs/fidelity.md)."""
    if len(times) < 4:
        return None
    h = len(times) // 2
    return abs(float(np.median(times[h:])) / float(np.median(times[:h])) - 1.0)


@dataclass
class Row:
    phase: str
    batch: int
    context: int
    measured_s: float
    predicted_s: float
    measured_p10_s: float
    measured_p90_s: float
    repeats: int
    error: float
    """(predicted - measured) / measured."""
    breakdown: dict[str, float] = field(default_factory=dict)
    """Predicted seconds per operator name (all occurrences)."""
    wall_s: float = 0.0
    """Median wall time (equals measured_s with the wall clock)."""
    drift: float | None = None
    """See :func:`drift`."""

    @property
    def config(self) -> str:
        return f"{self.phase} b={self.batch} ctx={self.context}"


def run_validation(
    cfg: ValidationConfig,
    profile: Any,
    *,
    progress: Any = None,
) -> dict[str, Any]:
    """Measure every (phase, batch, context) of ``cfg`` and compare with the prediction."""
    from simkit.calibrate.bench import (
        LoadMonitor,
        contention_note,
        gemm_timing_note,
        openmp_env,
        openmp_env_note,
        require_torch,
        set_threads,
        speed_note,
        thread_wakeup_note,
        tune_allocator,
    )
    from simkit.calibrate.probe import fingerprint_check, mismatch_message, speed_probe

    torch = require_torch()
    allocator = tune_allocator()  # as the calibration did (see bench.tune_allocator)
    pt = profile_device(profile).get("threads")
    # no --threads: run with the profile's thread count; an explicit different one is an error below
    threads = set_threads(cfg.threads if cfg.threads is not None else (int(pt) if pt else None))
    have = profile_dtypes(profile)
    dtype = cfg.dtype or ("bf16" if "bf16" in have else "fp32")
    clock = check_profile(profile, threads, dtype, cfg.clock)
    out = progress or (lambda s: print(s, file=sys.stderr, flush=True))
    match = fingerprint_check(profile, threads)
    mismatch = mismatch_message(profile, match)
    if mismatch and not cfg.force:
        raise CalibrationError(f"{mismatch}; pass --force to validate it here anyway",
                               where=str(getattr(profile, "path", "") or ""), key="device.fingerprint")  # fmt: skip
    if mismatch:
        out(f"WARNING: {mismatch} (--force: validating anyway)")
    probe = speed_probe(profile, threads=threads, clock=clock)
    out(probe.summary())
    if probe.message():
        out(probe.message())
    note = gemm_timing_note(dict(profile_device(profile)), dtype, str(getattr(profile, "name", "")))
    if note:
        out(note)
    omp_note = openmp_env_note(dict(profile_device(profile)), threads, str(getattr(profile, "name", "")))
    if omp_note:
        out(omp_note)
    wake_note = thread_wakeup_note(dict(profile_device(profile)), threads, str(getattr(profile, "name", "")))
    if wake_note:
        out(wake_note)
    busy_note = contention_note(dict(profile_device(profile)), str(getattr(profile, "name", "")))
    if busy_note:
        out(busy_note)
    slow_note = speed_note(dict(profile_device(profile)), str(getattr(profile, "name", "")))
    if slow_note:
        out(slow_note)
    if profile_device(profile).get("suite") == "tiny":
        out(f"WARNING: calibration profile {getattr(profile, 'name', '')!r} was measured by `simkit calibrate --tiny`, "
            "a smoke test of the command (a few samples per class, not for predictions): expect errors of orders of "
            "magnitude; validate a --quick or full profile")  # fmt: skip
    device = compute_device(profile)
    spec = model_spec(cfg)
    max_ctx = max(cfg.context_lens)
    model = TorchLlama(cfg, dtype, max_ctx)
    rows: list[Row] = []
    t_start = time.perf_counter()
    load = LoadMonitor()
    # every configuration is warmed up, then their repetitions are interleaved round-robin over
    # the whole run, so a slow period of the machine spreads over all of them instead of
    # inflating one (short steps get more repetitions: at least min_time_s of timing each)
    configs: list[tuple[str, int, int, Any, list[int], list[int]]] = []
    with torch.inference_mode():
        for b in cfg.batch_sizes:
            cache = model.make_cache(b)
            for c in cfg.context_lens:
                for phase in cfg.phases:
                    if phase == "prefill":
                        ids = torch.randint(0, cfg.vocab, (b, c))

                        def step(ids: Any = ids, cache: Any = cache) -> Any:
                            return model.forward(ids, 0, cache)

                        configs.append((phase, b, c, step, *step_batch(phase, b, c)))
                    else:
                        ids = torch.randint(0, cfg.vocab, (b, 1))

                        def step(ids: Any = ids, c: int = c, cache: Any = cache) -> Any:
                            return model.forward(ids, c, cache)

                        configs.append((phase, b, c, step, *step_batch(phase, b, c)))
        want = []
        for cf in configs:
            w, _ = _time_step(cf[3], 1, cfg.warmup, 0.0)
            want.append(int(min(200, max(cfg.repeats, math.ceil(cfg.min_time_s / max(w[0], 1e-6))))))
        rounds = max(want)
        wall: list[list[float]] = [[] for _ in configs]
        cpu: list[list[float]] = [[] for _ in configs]
        for r in range(rounds):
            for i, cf in enumerate(configs):
                while len(wall[i]) < math.ceil((r + 1) * want[i] / rounds):
                    w, c_ = _time_step(cf[3], 1, 0, 0.0)
                    wall[i] += w
                    cpu[i] += c_
    # the probe again, right after the last step: how far the machine moved while the steps ran
    # (at 2 threads on the CI VM the start probe read x0.83-0.97 in one run, x1.03-1.07 in the
    # next; a change between the two probes of one run is the machine, not the model)
    probe_end = speed_probe(profile, threads=threads, clock=clock)
    out("at the end: " + probe_end.summary())
    for i, (phase, b, c, _, q, ctx) in enumerate(configs):
        times = cpu[i] if clock == "cpu" else wall[i]
        pred, optimes = predict_step(spec, q, ctx, device, profile, dtype)
        meas = float(np.median(times))
        br: dict[str, float] = {}
        for t in optimes:
            br[t.op.name] = br.get(t.op.name, 0.0) + t.time_s * t.op.count
        rows.append(
            Row(phase, b, c, meas, pred, float(np.percentile(times, 10)), float(np.percentile(times, 90)),
                len(times), (pred - meas) / meas, br, float(np.median(wall[i])), drift(times))
        )
        out(f"  {rows[-1].config}: measured {meas * 1e3:.2f} ms, predicted {pred * 1e3:.2f} ms ({rows[-1].error:+.1%})")
    ape = np.abs([r.error for r in rows])
    drifts = [r.drift for r in rows if r.drift is not None]
    other = load.other_cores()
    steal = load.steal_cores()
    result = {
        "median_ape": float(np.median(ape)),
        "p90_ape": float(np.percentile(ape, 90)),
        # the measurement's own repeatability (first vs second half of each configuration's
        # repetitions): errors below it are the machine's drift, not the model's
        "drift_median": float(np.median(drifts)) if drifts else None,
        "drift_p90": float(np.percentile(drifts, 90)) if drifts else None,
        "dtype": dtype,
        "threads": threads,
        "clock": clock,
        "allocator": allocator,
        "profile": str(getattr(profile, "name", "")),
        "model": {k: v for k, v in asdict(cfg).items() if k in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab")},
        "wall_s": round(time.perf_counter() - t_start, 1),
        "other_load_cores": None if other is None else round(other, 2),
        # of which the hypervisor's steal (other guests of the host; at 2 threads a kernel waits for it)
        "steal_cores": None if steal is None else round(steal, 3),
        "gemm_timing_note": note,
        "openmp_env": openmp_env(),
        "openmp_env_note": omp_note,
        "thread_wakeup_note": wake_note,
        "contention_note": busy_note,
        "speed_note": slow_note,
        "fingerprint": {"matches": mismatch is None, "differs": [list(d) for d in match.differs] if match else None,
                        "forced": bool(mismatch and cfg.force)},
        # the profile's predicted / measured time of GEMMs in each dtype (> 1: this machine is faster)
        "speed_probe": probe.to_dict(),
        "speed_probe_end": probe_end.to_dict(),
        # the profile's measured step / predicted step of its synthetic step in this dtype, which
        # every prediction above includes (docs/calibration.md, "Step composition"); None: none
        "step_composition": _composition_factor(profile, dtype),
        "date": time.strftime("%Y-%m-%d"),
        "rows": [
            {
                "config": r.config,
                "phase": r.phase,
                "batch": r.batch,
                "context": r.context,
                "measured_s": r.measured_s,
                "measured_wall_s": r.wall_s,
                "measured_p10_s": r.measured_p10_s,
                "measured_p90_s": r.measured_p90_s,
                "predicted_s": r.predicted_s,
                "repeats": r.repeats,
                "error": r.error,
                "abs_error": abs(r.error),
                "drift": r.drift,
                "predicted_breakdown_s": r.breakdown,
            }
            for r in rows
        ],
    }
    return result


def _composition_factor(profile: Any, dtype: str) -> float | None:
    getter = getattr(profile, "step_composition", None)
    comp = getter() if callable(getter) else None
    return None if comp is None else comp.factor(dtype)


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{'configuration':<26} {'measured ms':>12} {'predicted ms':>13} {'error':>8}",
        "-" * 62,
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['config']:<26} {r['measured_s'] * 1e3:>12.2f} {r['predicted_s'] * 1e3:>13.2f} {r['error']:>+8.1%}"
        )
    lines.append("-" * 62)
    lines.append(
        f"median |error| {result['median_ape']:.1%}, p90 |error| {result['p90_ape']:.1%} "
        f"over {len(result['rows'])} configurations ({result['dtype']}, {result['threads']} thread(s), "
        f"{result['clock']} clock, profile {result['profile']})"
    )
    if result.get("drift_median") is not None:
        lines.append(
            f"measurement drift (second vs first half of each configuration's repetitions): median "
            f"{result['drift_median']:.1%}, p90 {result['drift_p90']:.1%}; errors within it are the machine's, not the model's"
        )
    sp = result.get("speed_probe")
    if sp:
        per = ", ".join(f"{d} GEMM x{g:.2f}" for d, g in sp["by_dtype"].items())
        end = result.get("speed_probe_end")
        if end:
            per += " at the start, " + ", ".join(f"{d} x{g:.2f}" for d, g in end["by_dtype"].items()) + " at the end"
        lines.append(
            f"machine speed vs profile prediction (GEMM probe, > 1 faster): {per}; other processes kept "
            f"{result.get('other_load_cores')} cores busy (hypervisor steal {result.get('steal_cores')})"
        )
    if result.get("step_composition") is not None:
        lines.append(f"predictions include the profile's step composition x{result['step_composition']:.3f} "
                     "(its synthetic step against the sum of its operators)")
    fp = result.get("fingerprint")
    if fp and fp.get("forced"):
        lines.append("WARNING: the profile's device fingerprint differs from this machine (validated with --force)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in comma_items(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simkit validate",
        description="Run a small Llama-architecture model in torch on this machine and compare measured "
        "prefill/decode step times with simkit's prediction from a calibration profile.",
    )
    p.add_argument("--device", choices=["cpu"], default="cpu", help="only cpu is supported (default cpu)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=1408)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--batch-sizes", type=_ints, default=(1, 4, 16), help="comma-separated (default 1,4,16)")
    p.add_argument("--context-lens", type=_ints, default=(128, 512), help="comma-separated (default 128,512)")
    p.add_argument("--profile", default=None, help="profile folder or profile.yaml (default: the first CPU profile of this "
                   "machine's CPU in the order `calibration: auto` searches, `simkit calibrate list`; else "
                   f"{DEFAULT_PROFILE})")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 if the profile has it, else fp32")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the profile's; a different count is an error)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per step (median kept; default 5)")
    p.add_argument("--phases", default="prefill,decode", help="prefill, decode or both (default)")
    p.add_argument("--clock", choices=["wall", "cpu"], default=None,
                   help="wall time, or the thread's CPU time (one thread; immune to other processes); "
                   "default: the clock the profile was measured with")
    p.add_argument("--force", action="store_true",
                   help="validate even if the profile's device fingerprint differs from this machine (warns)")
    p.add_argument("--json", dest="json_path", default=None, help="write {median_ape, p90_ape, rows} here")
    return p


def config_from_args(a: argparse.Namespace) -> ValidationConfig:
    try:
        phases = tuple(comma_items(a.phases))
    except ValueError:
        phases = ()
    bad = [x for x in phases if x not in ("prefill", "decode")]
    if bad or not phases:
        raise CalibrationError(f"--phases takes prefill and/or decode (got {a.phases!r})")
    for name in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "repeats"):
        if getattr(a, name) < 1:
            raise CalibrationError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(a, name)})")
    if a.heads % a.kv_heads:
        raise CalibrationError(f"--heads ({a.heads}) must be a multiple of --kv-heads ({a.kv_heads})")
    if a.hidden % a.heads or (a.hidden // a.heads) % 2:
        raise CalibrationError(
            f"--hidden ({a.hidden}) must be --heads ({a.heads}) x an even head size (RoPE rotates pairs)"
        )
    cpus = os.cpu_count() or 1
    if a.threads is not None and not 1 <= a.threads <= cpus:
        raise CalibrationError(f"--threads takes 1..{cpus} (this machine's logical CPUs), got {a.threads}")
    if a.json_path is not None:
        _check_json_path(a.json_path)
    # the real model holds its weights, a KV cache of the largest batch x context and a prefill's
    # activations in memory: refuse a run that cannot fit instead of swapping or being killed
    need = _validation_bytes(a)
    avail = _available_bytes()
    if avail is not None and need > 0.8 * avail:
        raise CalibrationError(
            f"--batch-sizes/--context-lens/--vocab need about {need / 1e9:.1f} GB for the largest step "
            f"(weights, KV cache, prefill activations in fp32), more than 80% of the {avail / 1e9:.1f} GB available"
        )
    return ValidationConfig(
        layers=a.layers, hidden=a.hidden, heads=a.heads, kv_heads=a.kv_heads, ffn=a.ffn, vocab=a.vocab,
        batch_sizes=tuple(a.batch_sizes), context_lens=tuple(a.context_lens), dtype=a.dtype,
        repeats=a.repeats, threads=a.threads, phases=phases, clock=a.clock, force=a.force,
    )


def _check_json_path(path: str) -> None:
    """``--json``'s file can be written: checked before the minutes of measuring, not after
    (an empty path wrote nothing, a folder or a path below a file failed at the end)."""
    if not path.strip():
        raise CalibrationError("--json takes a file name, got an empty string")
    p = Path(path)
    if p.is_dir():
        raise CalibrationError(f"--json {path!r} is a folder; it takes a file name (the folders above it are created)")
    for up in p.parents:
        if up.exists():
            if not up.is_dir():
                raise CalibrationError(f"--json {path!r}: {str(up)!r} is a file, not a folder")
            break


def _validation_bytes(a: argparse.Namespace) -> float:
    """Upper estimate of the validation model's memory (fp32 bytes): weights, the KV cache of the
    largest batch at the longest context, and a prefill's activations (MLP, attention scores; logits of the last token only)."""
    head = a.hidden // a.heads
    qkv = a.hidden + 2 * a.kv_heads * head
    weights = a.layers * (a.hidden * qkv + a.hidden * a.hidden + 3 * a.hidden * a.ffn) + 2 * a.vocab * a.hidden
    b, c = max(a.batch_sizes), max(a.context_lens)
    cache = 2 * a.layers * b * c * a.kv_heads * head
    acts = b * c * (4 * a.hidden + 3 * a.ffn) + b * a.vocab + b * a.heads * c * c
    return 4.0 * (weights + cache + acts)


def _available_bytes() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024.0
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        path = args.profile
        if path is None:
            path = machine_profile()
            why = ("the first profile of this machine's CPU in the profile search path" if path != DEFAULT_PROFILE
                   else "no profile in the profile search path was measured on this CPU: the shipped one")
            print(f"validating calibration profile {path} (--profile not given: {why})", file=sys.stderr)
        profile = load_profile(path)
        result = run_validation(cfg, profile)
    except SimkitError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------
# Fidelity report (benchmarks/fidelity.py)
# ---------------------------------------------------------------------------------------------
def cpu_validation_report(
    profile: str | Path = DEFAULT_PROFILE,
    cfg: ValidationConfig | None = None,
) -> tuple[str, dict[str, Any]]:
    """The CPU section of the fidelity report: ``simkit validate --device cpu`` with the shipped
    profile on this machine (the default model, batch sizes 1/4/16, contexts 128/512, bf16 and
    fp32 when the profile has them). Returns (markdown text, {dtype: result}); skips with a note
    (no exception) without torch or without the profile. Restores torch's thread count."""
    try:
        from simkit.calibrate.bench import require_torch

        torch = require_torch()
        prof = load_profile(profile)
    except SimkitError as e:
        return f"## CPU validation\n\nSkipped: {e}\n", {"skipped": str(e)}
    n_threads = torch.get_num_threads()
    results: dict[str, Any] = {}
    parts = ["## CPU validation\n"]
    try:
        base = cfg or ValidationConfig()
        dts = [base.dtype] if base.dtype else [d for d in ("bf16", "fp32") if d in profile_dtypes(prof)]
        for dt in dts:
            try:
                res = run_validation(ValidationConfig(**{**asdict(base), "dtype": dt}), prof, progress=lambda s: None)
            except SimkitError as e:
                parts.append(f"{dt}: skipped: {e}\n")
                results[dt] = {"skipped": str(e)}
                continue
            results[dt] = res
            m = res["model"]
            parts.append(
                f"Measured vs predicted step times of a small Llama model (layers {m['layers']}, hidden {m['hidden']}, "
                f"heads {m['heads']}/{m['kv_heads']}, FFN {m['ffn']}, vocab {m['vocab']}; dims the calibration never "
                f"timed) on this CPU with profile `{res['profile']}` ({res['dtype']}, {res['threads']} thread(s), "
                f"{res['clock']} clock; other processes kept {res['other_load_cores']} cores busy). "
                f"Command: `simkit validate --device cpu --dtype {dt}`.\n\n```\n{format_table(res)}\n```\n"
            )
    finally:
        torch.set_num_threads(n_threads)
    return "\n".join(parts), results


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
