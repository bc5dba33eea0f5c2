"""Scenario -> a built deployment: the hardware (node or cluster), the model, the parallel
layout, the calibration and the calibrated compute device, the cost models, the memory plan,
the workload, and (:func:`build_replicas`) the replicas with their links, KV blocks, pipeline
stages, offload executors, batching policies and engines, built into a
:class:`~simkit.engine.cluster.Cluster` that runs them. Every check of a plan that can be made
without simulating is made here, in the order the scenario's sections are read."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simkit.cost.device import ComputeDevice
from simkit.cost.efficiency import DatasheetEfficiency, EfficiencyModel
from simkit.cost.iteration import IterationModel
from simkit.cost.links import comm_fn, group_link, kv_store_slowdown, link_rates, measured_links
from simkit.cost.memory import activation_bytes
from simkit.cost.ops import Precision, elementwise_kernels
from simkit.cost.profile import Profile, roof_from_device
from simkit.engine.cluster import Admission, Cluster, HandOff
from simkit.engine.engine import Engine, EngineConfig, Stage
from simkit.engine.fast import FastEngine, fast_path_reason
from simkit.engine.kvcache import KVBlockManager, PrefixCache, watermark_blocks
from simkit.engine.lean import fused_loop_reason
from simkit.engine.replica import Replica
from simkit.engine.resources import Link
from simkit.errors import CapacityError, ScenarioError, SimkitError
from simkit.policies.batching import build_policy
from simkit.policies.offload import (
    OffloadLayout,
    build_offload_layout,
    check_offload_capacity,
    measured_pageable_ratio,
    offload_gpu_usable,
)
from simkit.policies.parallel import Layout, check_parallel, expert_group_shares
from simkit.policies.routing import ROUTING_POLICIES
from simkit.scenario import BatchingOptions, Plan, Scenario, apply_overrides, scenario_from_dict
from simkit.specs.calibration import NO_HOST_OVERHEAD, HostOverhead
from simkit.specs.catalog import load_model
from simkit.specs.hardware import DTYPE_FALLBACK, GPUSpec
from simkit.specs.model import ModelSpec
from simkit.specs.node import Node, gpu_swap, resolve_node
from simkit.units import fmt_bytes
from simkit.workload.base import Requests

# the offloaded and pipelined plans' modules (engine.offload, offload_fast, fast_offload,
# pipeline_fast, cost.offload) are imported where such a plan is built: a plain run uses none
if TYPE_CHECKING:
    import simpy

    from simkit.engine.clock import PlainClock
    from simkit.engine.offload import OffloadExecutor
    from simkit.engine.pipeline_fast import PipelineConflict


def _trace_path(sc: Scenario, path: str, key: str) -> Path:
    """The trace file ``path`` names (:meth:`Scenario.resolve_path`); a missing one is an error
    naming the scenario key, where relative paths were looked for and the shipped traces."""
    from simkit.errors import TraceError
    from simkit.specs.catalog import repo_path

    found = sc.resolve_path(path)
    try:
        missing = not found.exists()
    except OSError:  # not a usable path (e.g. too long): the reader names it
        return found
    if not missing:
        return found
    shipped = repo_path("workloads", "traces")
    names = sorted(f.name for f in shipped.glob("*") if f.suffix in (".csv", ".jsonl", ".parquet")) if shipped.is_dir() else []
    hint = ""
    if not Path(path).is_absolute():
        folder = (Path(sc.source).parent if sc.source is not None else Path.cwd()).resolve()
        hint = f"; a relative path resolves against the scenario's folder ({folder}), then the working folder"
    if names:
        hint += f"; the shipped traces are in {shipped}: {', '.join(names)}"
    raise TraceError(f"trace file {path} not found{hint}", where=sc.source, key=key)


def build_workload(sc: Scenario) -> Requests:
    w = sc.workload
    where = sc.source
    if w.batch is not None:
        n = w.batch.num_prompts
        reqs = Requests(
            np.zeros(n),
            np.full(n, w.batch.input_tokens, dtype=np.int64),
            np.full(n, w.batch.output_tokens, dtype=np.int64),
            meta={"source": "fixed batch"},
        )
    elif w.synthetic is not None:
        from simkit.specs.validated import plain
        from simkit.workload.synthetic import make_synthetic

        spec = plain(w.synthetic, exclude_none=True)  # model_dump(exclude_none=True) without building its serializer
        lengths = spec["lengths"]
        if "trace" in lengths:
            lengths["trace"]["path"] = str(_trace_path(sc, lengths["trace"]["path"], "workload.synthetic.lengths.trace.path"))
        reqs = make_synthetic(spec["num_requests"], spec["arrival"], lengths, seed=sc.seed)
    else:
        from simkit.workload.traces import read_trace

        tr = w.trace
        assert tr is not None
        reqs = read_trace(
            str(_trace_path(sc, tr.path, "workload.trace.path")),
            tr.format,
            window=tr.window,
            rate_scale=tr.rate_scale,
            sample=tr.sample,
            seed=sc.seed,
            model_filter=tr.model_filter,
            on_bad_line=tr.on_bad_line,
            keep_failed=tr.keep_failed,
        )
    if w.limit is not None and len(reqs) > w.limit:
        reqs = reqs.take(np.arange(w.limit))
    if len(reqs) == 0:
        raise ScenarioError("the workload has no requests", where=where, key="workload")
    return reqs


def resolve_calibration(sc: Scenario, device: ComputeDevice) -> tuple[EfficiencyModel, str, str | None]:
    """(the efficiency model the scenario's ``calibration`` names for ``device``, its
    description, a warning or None)."""
    if sc.calibration == "none":
        return DatasheetEfficiency(), "datasheet defaults (calibration: none)", None
    from simkit.cost.profile import resolve_calibration as _resolve

    setting = sc.calibration
    if setting != "auto":
        # absolute, so the description (in summary.json) does not depend on how the path is spelt
        path = sc.resolve_path(setting)
        try:
            setting = str(path.resolve())
        except RuntimeError:  # a symlink loop (Path.resolve): the profile's loading names the file
            setting = str(path.absolute())
    return _resolve(setting, device.kind, device.name)


def calibrated_device(
    sc: Scenario, device: ComputeDevice, node: Node
) -> tuple[ComputeDevice, EfficiencyModel, str, str | None]:
    """The one home of "resolve the calibration, then calibrate the device": (the device timed
    against the roofline the profile's efficiencies were fitted to, scaled by the scenario's
    what-if multipliers; its efficiency model; the calibration's description; a warning or None)."""
    eff, cal_info, cal_warn = resolve_calibration(sc, device)
    return device.for_profile(eff, node.scale), eff, cal_info, cal_warn


def resolve_compute(sc: Scenario, node: Node) -> tuple[bool, ComputeDevice, EfficiencyModel, str, str | None]:
    """(computes on the CPU?, the compute device, its efficiency model, the calibration's
    description, a warning or None). With a profile, the device carries the roofline the
    profile's efficiencies were fitted to."""
    use_cpu = sc.plan.execution.device == "cpu" or node.gpu is None
    if use_cpu:
        device = ComputeDevice.from_cpu(node.cpu, node.dram, node.sockets, node.dram_capacity)
    else:
        assert node.gpu is not None
        device = ComputeDevice.from_gpu(node.gpu)
    device, eff, cal_info, cal_warn = calibrated_device(sc, device, node)
    return use_cpu, device, eff, cal_info, cal_warn


def check_host_temporaries(sc: Scenario, node: Node, need_cpu_attention: bool) -> None:
    """Refuse ``plan.offload.host_temporaries: fresh`` where it cannot take effect: without CPU
    attention (``need_cpu_attention``: a plan as written; the optimiser searches both) or where
    neither the host CPU's calibration profile (device.host_first_touch) nor the node preset
    (measured.host_first_touch_bandwidth) gives a first-touch rate (cost/offload.host_first_touch)."""
    off = sc.plan.offload
    if off.host_temporaries != "fresh":
        return
    if need_cpu_attention and not off.cpu_attention:
        raise ScenarioError(
            "host_temporaries: fresh prices the host attention code's copies; it needs cpu_attention: true",
            where=sc.source,
            key="plan.offload.host_temporaries",
        )
    from simkit.cost.offload import host_first_touch

    cpu_dev = ComputeDevice.from_cpu(node.cpu, node.dram, node.sockets, node.dram_capacity)
    cpu_eff = resolve_calibration(sc, cpu_dev)[0]
    ft = host_first_touch(node.spec.measured, cpu_eff)
    if ft is None:
        prof = (f"its calibration profile {cpu_eff.name!r} has no device.host_first_touch" if cpu_eff.measured_device()
                else "no calibration profile of it is used")
        raise ScenarioError(
            f"host_temporaries: fresh needs the host's first-touch write rate, which node {node.name!r} does not give "
            f"(measured.host_first_touch_bandwidth in its preset), nor its CPU {node.cpu.name!r} ({prof}; "
            "`simkit calibrate --device cpu` on the machine measures it)",
            where=sc.source,
            key="plan.offload.host_temporaries",
        )


def plan_replica_memory(
    sc: Scenario, model: ModelSpec, node: Node, device: ComputeDevice, eff: EfficiencyModel, prec: Precision,
    layout: Layout, use_cpu: bool,
) -> tuple[MemoryPlan, Any, Any]:
    """(memory plan of one replica's devices, offload layout or None, offload capacity check or
    None): the one place that decides what fits, for simulate() and the plan search's screening.
    Raises CapacityError naming the tier when the plan does not fit."""
    plan = sc.plan
    tp = plan.parallel.tp
    if plan.offload.is_trivial:
        return plan_memory(sc, model, device, prec, tp, layout.layer_split, plan.parallel.ep), None, None
    lm = measured_links(eff, plan.offload.io_block_size, plan.offload.io_queue_depth)
    pageable = measured_pageable_ratio(lm)
    check_host_temporaries(sc, node, need_cpu_attention=True)
    if use_cpu and plan.offload.host_temporaries == "fresh":
        raise ScenarioError(
            "host_temporaries: fresh prices a GPU run's host attention copies; this plan computes on the CPU",
            where=sc.source,
            key="plan.offload.host_temporaries",
        )
    if use_cpu and plan.offload.host_kv_dtype == "fp32":
        raise ScenarioError(
            "host_kv_dtype: fp32 describes a GPU run's KV cache held in host DRAM; this plan computes on the CPU",
            where=sc.source,
            key="plan.offload.host_kv_dtype",
        )
    alloc = None
    if plan.offload.kv_dequant == "allocated" and plan.offload.compress_kv:
        if sc.workload.batch is None:
            raise ScenarioError(
                "kv_dequant: allocated dequantises the KV positions allocated for a fixed batch's prompt and generated "
                "tokens; it needs workload.batch",
                where=sc.source,
                key="plan.offload.kv_dequant",
            )
        # FlexGen allocates prompt + generated - 1 positions per sequence (init_cache_one_gpu_batch)
        alloc = sc.workload.batch.input_tokens + sc.workload.batch.output_tokens - 1
    off_layout = build_offload_layout(plan.offload, model, prec, tp, use_cpu, pageable, alloc)
    mem0 = plan_memory(sc, model, device, prec, tp, layout.layer_split, plan.parallel.ep, check=False)
    # the hidden states of every GPU batch of a block (every prompt token of a known static batch)
    # live between layers where plan.offload.activations says
    tokens, seqs = forward_pass_shape(sc)
    if sc.workload.batch is not None:
        tokens = seqs * sc.workload.batch.input_tokens
    hidden = tokens * plan.offload.num_gpu_batches * model.hidden_size * prec.a_bytes * tp
    off_mem = check_offload_capacity(
        off_layout, model, prec, node, tp, plan.kv_cache.block_size, mem0.activations_per_gpu * tp, hidden,
        offload_gpu_usable(device.memory, plan.kv_cache, plan.batching.policy == "static", plan.execution.cuda_module_loading),
        plan.kv_cache.num_blocks, sc.source,
    )
    mem = MemoryPlan(
        sum(v for k, v in off_mem.need.get("hbm" if not use_cpu else "dram", {}).items() if k.startswith("weights")) / tp,
        mem0.activations_per_gpu,
        mem0.kv_bytes_per_token_per_gpu,
        mem0.block_bytes,
        off_mem.num_blocks,
        mem0.usable_per_gpu,
        mem0.tier,
    )
    return mem, off_layout, off_mem


def host_overhead(scenario_value: float | None, eff: EfficiencyModel) -> HostOverhead:
    """The host time per iteration: the scenario's ``plan.execution.iteration_overhead`` when set
    (a fixed term), else the calibration profile's ``host_overhead``, else none."""
    if scenario_value is not None:
        return HostOverhead(float(scenario_value), 0.0, "plan.execution.iteration_overhead")
    return eff.host_overhead() or NO_HOST_OVERHEAD


@dataclass
class MemoryPlan:
    weights_per_gpu: float
    activations_per_gpu: float
    kv_bytes_per_token_per_gpu: float
    block_bytes: float
    num_blocks: int
    usable_per_gpu: float
    tier: str


def weights_per_gpu(model: ModelSpec, prec: Precision, tp: int, ep: int, layer_split: tuple[int, ...]) -> float:
    """Bytes of weights on the most loaded GPU: the stage with the most layers (plus the
    embedding on the first stage and the LM head on the last), sharded over ``tp`` GPUs; with
    expert parallelism each GPU holds 1/ep of the experts, sharded tp/ep ways (= /tp overall). With
    tp above the KV heads, each GPU also holds the K and V weights of one whole replicated head."""
    per_layer = model.params_layers / model.num_layers
    pp = len(layer_split)
    stage_params = []
    for k, n in enumerate(layer_split):
        p = per_layer * n
        if k == 0:
            p += model.params_embedding
        if k == pp - 1:
            p += model.params_lm_head + model.norm_params
        if tp > model.num_kv_heads:  # every GPU holds the K and V weights of one whole (replicated) head
            p += n * 2 * model.hidden_size * (model.kv_heads_per_gpu(tp) * model.d_head * tp - model.kv_dim)
        stage_params.append(p)
    return max(stage_params) * prec.w_bytes / tp


def forward_pass_shape(sc: Scenario) -> tuple[int, int]:
    """(tokens, sequences) of the forward pass that sizes one GPU's activation memory: an offloaded
    block computes one GPU batch at a time, its prompts' tokens up to the policy's token budget
    (activation_bytes' 4 hidden and 2 FFN rows per token overstate what a layer-by-layer runtime
    holds for a large GPU batch: FlexGen's published OPT-30B policy, 160 prompts of 256 in one GPU
    batch on the T4, would need 7 GB by it; the placement optimiser, policies/offload_opt.py, sizes
    the whole GPU batch, the stricter of the two); a static batch of a known workload otherwise prefills every prompt of the batch
    in one pass (the static policy schedules them together, with no token budget); else the
    policy's token budget."""
    tokens = sc.plan.batching.iteration_tokens()
    seqs = sc.plan.batching.max_num_seqs
    off = sc.plan.offload
    w = sc.workload
    static = sc.plan.batching.policy == "static"
    longest = w.batch.input_tokens if w.batch is not None else tokens
    if not off.is_trivial and off.gpu_batch_size:
        return min(tokens, off.gpu_batch_size * longest), off.gpu_batch_size
    if static and w.batch is not None:
        seqs = min(seqs, sc.plan.batching.batch_size or w.batch.num_prompts)
        return seqs * longest, seqs
    return tokens, seqs


def plan_memory(
    sc: Scenario,
    model: ModelSpec,
    device: ComputeDevice,
    prec: Precision,
    tp: int,
    layer_split: tuple[int, ...],
    ep: int = 1,
    check: bool = True,
) -> MemoryPlan:
    kvp = sc.plan.kv_cache
    where = sc.source
    static = sc.plan.batching.policy == "static"
    pp = len(layer_split)
    tier = "hbm" if device.kind == "gpu" else "dram"
    weights = weights_per_gpu(model, prec, tp, ep, layer_split)
    kv_tok = model.kv_bytes_per_token(prec.kv_bytes, tp, layers=max(layer_split))
    if kvp.activation_reserve is not None:
        act = kvp.activation_reserve
    else:
        tokens, seqs = forward_pass_shape(sc)
        act = activation_bytes(model, tokens, seqs, tp, prec)
    if device.kind == "gpu":
        # one rule for the GPU memory a run may fill, offloaded or not (a static run keeps no
        # growing KV pool: policies/offload.offload_gpu_usable)
        usable, usable_rule = offload_gpu_usable(device.memory, kvp, static, sc.plan.execution.cuda_module_loading)
    else:
        usable, usable_rule = device.memory * kvp.gpu_memory_utilization, f"x gpu_memory_utilization {kvp.gpu_memory_utilization}"
    block_bytes = kvp.block_size * kv_tok
    left = usable - weights - act
    if not check:
        return MemoryPlan(weights, act, kv_tok, block_bytes, 0, usable, tier)
    if left < block_bytes:
        raise CapacityError(
            f"{model.name} does not fit: {tier} needs {fmt_bytes(weights)} of weights + {fmt_bytes(act)} of activations "
            f"per GPU (tp={tp}, pp={pp}, {prec.weights}) plus room for KV blocks, but has {fmt_bytes(usable)} "
            f"usable ({fmt_bytes(device.memory)}, {usable_rule}); "
            "try more tensor/pipeline parallelism, a smaller dtype, or plan.offload",
            where=where,
            key=f"tier {tier}",
        )
    blocks = int(left // block_bytes)
    if kvp.num_blocks is not None:
        if kvp.num_blocks > blocks:
            raise CapacityError(
                f"plan.kv_cache.num_blocks={kvp.num_blocks} needs {fmt_bytes(kvp.num_blocks * block_bytes)} of {tier} "
                f"but only {fmt_bytes(left)} is left after weights and activations ({blocks} blocks)",
                where=where,
                key="plan.kv_cache.num_blocks",
            )
        blocks = kvp.num_blocks
    return MemoryPlan(weights, act, kv_tok, block_bytes, blocks, usable, tier)


_LINK_NAMES = {"h2d": "PCIe H2D", "d2h": "PCIe D2H", "nvme_read": "NVMe read", "nvme_write": "NVMe write",
               "cxl_read": "CXL read", "cxl_write": "CXL write", "network": "network", "nvlink": "GPU-GPU"}


def _links(
    env: simpy.Environment | PlainClock, node: Node, gpus: int, trace: bool, measured: dict[str, tuple[float, float]] | None = None
) -> dict[str, Link]:
    """Per-replica link directions (link_rates), as engine links."""
    out: dict[str, Link] = {}
    for key, (bw, lat) in link_rates(node, gpus, measured).items():
        if key in _LINK_NAMES:
            tag = " (measured)" if measured and key in measured else ""
            out[key] = Link(env, _LINK_NAMES[key] + tag, bw, lat)
    if trace:
        for link in out.values():
            link.intervals = []
    return out


def fleet_scenarios(sc: Scenario) -> list[Scenario]:
    """One scenario per ``plan.fleet`` group: the base node with the group's GPU put in
    (:func:`simkit.specs.node.gpu_swap`) and the group's tp and replicas, no fleet."""
    assert sc.plan.fleet is not None
    out = []
    for k, grp in enumerate(sc.plan.fleet):
        over: dict[str, Any] = {f"hardware.{f}": v for f, v in gpu_swap(grp.gpu, key=f"plan.fleet[{k}].gpu").items()}
        over.update({"plan.parallel.tp": grp.tp, "plan.parallel.replicas": grp.replicas, "plan.fleet": None})
        out.append(scenario_from_dict(apply_overrides(sc.raw_data(), over), where=sc.source))
    return out


@contextmanager
def _in_group(sc: Scenario, k: int) -> Iterator[None]:
    """Name fleet group ``k`` in an error raised while setting it up (no-op without a fleet)."""
    try:
        yield
    except SimkitError as e:
        if sc.plan.fleet is None:
            raise
        at = f"plan.fleet[{k}]"
        raise type(e)(f"{at} ({sc.plan.fleet[k].gpu}): {e.message}" + (f" (as {e.key})" if e.key else ""), e.where, at) from None


@dataclass
class Group:
    """What one group of identical replicas runs on (one group without ``plan.fleet``)."""

    gpu: str
    replicas: int
    node: Node
    layout: Layout
    device: ComputeDevice
    eff: EfficiencyModel
    cal_info: str
    mem: MemoryPlan
    cost: IterationModel
    gpus_per_replica: int
    link_meas: dict[str, tuple[float, float]]
    swap_bytes: float
    warnings: list[str] = field(default_factory=list)


def _fleet_group(sc: Scenario, gpu: str, model: ModelSpec, prec: Precision, algo: str, reserve: int, where: str | None) -> Group:
    """Set up a further fleet group as :func:`build_deployment` sets up the first (GPU, no offload, pp = 1,
    ep = 1: the fleet's checks refuse the rest)."""
    node = resolve_node(sc.hardware, where=where)
    par = sc.plan.parallel
    layout = check_parallel(model, node, par, where=where)
    _, device, eff, cal_info, cal_warn = resolve_compute(sc, node)
    mem, _, _ = plan_replica_memory(sc, model, node, device, eff, prec, layout, False)  # no offload in a fleet
    host = host_overhead(sc.plan.execution.iteration_overhead, eff)
    cross = layout.tp_spans_nodes(0, 0)
    cost = IterationModel(
        model, device, eff, prec, tp=par.tp,
        allreduce_time=comm_fn("all_reduce", node, par.tp, cross, algo, eff) if par.tp > 1 else None,
        iteration_overhead=host.per_iteration_s, per_seq_overhead=host.per_sequence_s,
    )
    cost.reserve(reserve)
    kvc = sc.plan.kv_cache
    swap = kvc.swap_space if kvc.swap_space is not None else 4 * 2**30 * par.tp
    lm = measured_links(eff, sc.plan.offload.io_block_size, sc.plan.offload.io_queue_depth)
    kern_warn = unmeasured_kernel_warning(eff, model)
    path_warn = matmul_path_warning(node.gpu, prec) if node.gpu is not None else None
    return Group(gpu, par.replicas, node, layout, device, eff, cal_info, mem, cost, par.tp, lm, swap,
                 [w for w in (cal_warn, kern_warn, path_warn, node.price_warning()) if w])  # fmt: skip


def matmul_path_warning(gpu: GPUSpec, prec: Precision) -> str | None:
    """A warning when ``gpu`` has no tensor-core path for the dtype the plan's matmuls run in
    (fp8 on Ampere, bf16 on Turing): they are timed at the peak of the dtype it falls back to
    (:data:`simkit.specs.hardware.DTYPE_FALLBACK`), with the plan's storage sizes; None otherwise."""
    dtype = prec.compute
    if dtype not in DTYPE_FALLBACK or getattr(gpu.peak_flops, dtype, None):
        return None
    used = next((d for d in DTYPE_FALLBACK[dtype] if getattr(gpu.peak_flops, d, None)), "fp32")
    return (f"gpu {gpu.name} has no {dtype} matmul path: plan.precision's {dtype} matmuls are timed at its {used} peak, "
            f"i.e. as {used} compute (weights and KV keep their plan.precision sizes)")


def unmeasured_kernel_warning(eff: EfficiencyModel, model: ModelSpec) -> str | None:
    """A warning when the calibration profile has not measured elementwise kernels ``model`` runs
    (LayerNorm, GELU, ...: :func:`simkit.cost.ops.elementwise_kernels`) and so predicts them as the
    Llama-style kernels of the same operators; None otherwise."""
    if not isinstance(eff, Profile):
        return None
    missing = eff.unmeasured_kernels(elementwise_kernels(model))
    if not missing:
        return None
    return (f"calibration profile {eff.name!r} has no fitted kind for the elementwise kernel(s) {', '.join(missing)} that "
            f"model {model.name} runs: they are predicted as the Llama-style kernels of the same operators (RMSNorm, "
            "SiLU-and-multiply, two-input add, full RoPE), whose times can differ (docs/fidelity.md, Elementwise); "
            "a profile fitted on samples of them predicts them (docs/calibration.md, elementwise kernel kinds)")


def unmeasured_dtype_warning(eff: EfficiencyModel, dtype: str) -> str | None:
    """A warning when the calibration profile measured none of the dtypes with the peak the plan's
    matmuls run at (e.g. a CPU profile of fp32 only for a bf16 plan, an fp16 GPU profile for an fp8
    one): its efficiencies are then carried to another kernel family; None otherwise (no profile,
    a profile that lists no dtypes, or one that measured this dtype or one of the same peak, such as
    fp16 for bf16 on a GPU)."""
    if not isinstance(eff, Profile):
        return None
    measured = eff.dtypes()
    if not measured or dtype in measured:
        return None
    roof = roof_from_device(eff.device)
    if any(roof.peak(d) == roof.peak(dtype) for d in measured):
        return None
    dev = "cuda" if eff.device.get("kind") == "gpu" else "cpu"
    return (f"calibration profile {eff.name!r} measured {', '.join(measured)} only, and this plan's matmuls run in {dtype} "
            f"(another peak, {roof.peak(dtype) / 1e12:.4g} TFLOP/s): its {dtype} operators are predicted from the "
            f"{'/'.join(measured)} efficiencies, not measured; `simkit calibrate --device {dev} --dtypes {dtype}` measures them")


def calibration_provenance(sc: Scenario, eff: EfficiencyModel, description: str) -> dict[str, Any]:
    """What provenance.json records of the calibration: the scenario's setting, the description
    summary.json carries, and for a profile its name, file and measured fidelity per operator
    class (in-sample fit error and, where the profile has it, the leave-one-model-out errors that
    docs/fidelity.md tabulates), as fractions."""
    out: dict[str, Any] = {"setting": sc.calibration, "description": description, "profile": None, "path": None, "fidelity": {}}
    quality = eff.fit_quality()
    if quality is None:
        return out
    out["profile"] = eff.name
    out["path"] = str(Path(eff.path).resolve()) if eff.path is not None else None
    for cls, q in quality.items():
        entry: dict[str, Any] = {"fit_error": q.fit_error}
        cv = q.cross_validation
        per = cv.get("per_model") or {}
        if per:
            meds = [float(v["median_ape"]) for v in per.values() if "median_ape" in v]
            p90s = [float(v["p90_ape"]) for v in per.values() if "p90_ape" in v]
            entry["cross_validation"] = {
                "method": cv.get("method", ""),
                "scored": cv.get("scored", ""),
                "median_ape_range": [min(meds), max(meds)] if meds else None,
                "p90_ape_range": [min(p90s), max(p90s)] if p90s else None,
                "per_model": {k: {kk: v[kk] for kk in ("median_ape", "p90_ape", "n") if kk in v} for k, v in per.items()},
            }
        out["fidelity"][cls] = entry
    return out



@dataclass
class Deployment:
    """A built deployment, everything a run needs but its SimPy world: ``groups[0]`` holds the
    node, layout, device, calibration, memory plan and cost model of the (first group of)
    replicas; a ``plan.fleet`` adds one group per further GPU type."""

    scenario: Scenario
    """The scenario as given (with its ``plan.fleet``)."""
    sc: Scenario
    """The scenario of the first group (the scenario itself without a fleet)."""
    model: ModelSpec
    prec: Precision
    use_cpu: bool
    groups: list[Group]
    off_layout: OffloadLayout | None
    off_mem: Any
    stage_costs: list[IterationModel] | None
    cpu_cost: IterationModel | None
    reqs: Requests
    admission: Admission
    group_shares: list[float]
    cross_tp: bool
    engine_cls: type[Engine]
    engine_path: str
    warnings: list[str] = field(default_factory=list)
    offload_closed_form: bool = False
    """The offloaded steps' times are computed in closed form (engine/offload_fast.py)."""
    pipeline_closed_form: bool = False
    """The pipeline stages' schedule is computed in closed form (engine/pipeline_fast.py)."""
    fused_loop: bool = False
    """The run goes through the fused loop (engine/lean.py), falling back to the stepping fast
    path if it stops."""

    @property
    def fleet(self) -> bool:
        return self.scenario.plan.fleet is not None

    @property
    def n_rep(self) -> int:
        return sum(g.replicas for g in self.groups)

    @property
    def rep_group(self) -> list[int]:
        """The group of every replica, in replica order."""
        return [k for k, g in enumerate(self.groups) for _ in range(g.replicas)]


def _warn(warn: list[str], msg: str) -> None:
    warn.append(msg)
    warnings.warn(msg, stacklevel=4)


def plan_admission(sc: Scenario, model: ModelSpec) -> Admission:
    """What the front door refuses for this plan (:class:`~simkit.engine.cluster.Admission`), for
    the run and the plan search's screening: requests beyond the model's context; KV beyond a
    replica's capacity, where a sliding-window model keeps the window (plus the block being
    filled) per sequence; with continuous batching (also behind disaggregation), a prompt beyond
    one iteration's token budget."""
    bat = sc.plan.batching
    kv_cap = model.sliding_window + sc.plan.kv_cache.block_size if model.sliding_window is not None else None
    budget = bat.max_num_batched_tokens if bat.policy in ("continuous", "disaggregated") else None
    return Admission(model.max_context, kv_cap, budget)


def build_deployment(scenario: Scenario, engine: str = "auto", trace: bool = False) -> Deployment:
    """Resolve and check everything a run of ``scenario`` needs (see the module docstring).
    ``engine``: ``auto`` or ``reference`` (which engine class runs, :mod:`simkit.engine.fast`)."""
    warn: list[str] = []
    where = scenario.source
    sc = scenario
    fleet_sc = fleet_scenarios(sc) if sc.plan.fleet is not None else None
    if fleet_sc is not None:
        p0 = sc.plan
        if (not p0.offload.is_trivial or p0.batching.policy == "disaggregated" or p0.execution.device == "cpu"
                or p0.prefix_cache.enabled or p0.parallel.ep > 1):
            raise ScenarioError(
                "plan.fleet supports GPU replicas without offloading, disaggregated batching, prefix caching or "
                "expert parallelism", where=where, key="plan.fleet",
            )
        sc = fleet_sc[0]  # the first group runs through the single-node set-up below
    node = resolve_node(sc.hardware, where=where)
    model = load_model(sc.model, where=where)
    plan = sc.plan
    par = plan.parallel
    with _in_group(scenario, 0):
        layout = check_parallel(model, node, par, where=where)
    offloaded = not plan.offload.is_trivial
    if offloaded and par.pp > 1:
        raise ScenarioError("offloading with pipeline parallelism (pp > 1) is not supported; use tp or replicas", where=where, key="plan.offload")
    use_cpu, device, eff, cal_info, cal_warn = resolve_compute(sc, node)
    if use_cpu:
        if par.tp * par.pp * par.replicas > 1:
            raise ScenarioError("tensor/pipeline parallelism and replicas need GPUs; this plan computes on the CPU", where=where, key="plan.parallel")
        layout = Layout(1, 1, 1, 1, (model.num_layers,), 0, 1)
    if cal_warn:
        _warn(warn, cal_warn)
    if price_warn := node.price_warning():
        _warn(warn, price_warn)
    if kern_warn := unmeasured_kernel_warning(eff, model):
        _warn(warn, kern_warn)
    if use_cpu and isinstance(eff, Profile):
        # a profile of this very machine: check at start-up that it still runs at the profile's
        # speed (simkit.calibrate.probe; stderr only, so results stay byte-identical)
        from simkit.calibrate.probe import startup_check

        for msg in startup_check(eff):
            warnings.warn(msg, stacklevel=3)
    precision = plan.precision
    prec = Precision(precision.weights, precision.activations, precision.kv_cache, precision.group_size)
    if not use_cpu and node.gpu is not None and (path_warn := matmul_path_warning(node.gpu, prec)):
        _warn(warn, path_warn)
    if dtype_warn := unmeasured_dtype_warning(eff, prec.compute):
        _warn(warn, dtype_warn)
    tp = par.tp
    with _in_group(scenario, 0):
        mem, off_layout, off_mem = plan_replica_memory(sc, model, node, device, eff, prec, layout, use_cpu)
    cross_tp = layout.tp_spans_nodes(0, 0) if not use_cpu else False
    ep_share = None
    group_shares: list[float] = []
    if par.ep > 1:
        group_shares = expert_group_shares(model, par.ep, par.expert_routing.distribution, par.expert_routing.skew).tolist()
        ep_share = max(group_shares)
    algo = par.collective_algorithm

    host = host_overhead(plan.execution.iteration_overhead, eff)

    def make_cost(layers: int | None = None, first: bool = True, last: bool = True) -> IterationModel:
        return IterationModel(
            model,
            device,
            eff,
            prec,
            tp=tp,
            num_layers=layers,
            first_stage=first,
            last_stage=last,
            allreduce_time=comm_fn("all_reduce", node, tp, cross_tp, algo, eff) if tp > 1 else None,
            iteration_overhead=host.per_iteration_s if first else 0.0,
            per_seq_overhead=host.per_sequence_s if first else 0.0,
            ep=par.ep,
            ep_share=ep_share,
            alltoall_time=comm_fn("all_to_all", node, par.ep, cross_tp, algo, eff) if par.ep > 1 else None,
        )

    cost = make_cost()
    # tabulate every token count an iteration can have, once
    b = plan.batching
    if b.policy == "chunked_prefill":
        most = min(b.chunk_size, b.max_num_batched_tokens)  # decodes and chunks share the budget
    else:
        most = max(b.iteration_tokens(), b.max_num_seqs)
    stage_costs = (
        [make_cost(n, k == 0, k == par.pp - 1) for k, n in enumerate(layout.layer_split)] if par.pp > 1 else None
    )
    reqs = build_workload(sc)
    # no iteration holds more tokens than the whole workload's prompts plus one token per request
    reserve = min(most, int(reqs.input_tokens.sum()) + len(reqs))
    cost.reserve(reserve)
    for stage in stage_costs or ():
        stage.reserve(reserve)  # the replica's table, read back from the cache (one key for all stages)
    bad_lines = (reqs.meta.get("bad_lines") or {}).get("count", 0)
    if bad_lines:
        shown = ", ".join(str(x) for x in reqs.meta["bad_lines"].get("lines", []))
        warn.append(f"trace {reqs.meta.get('source', '')}: {bad_lines} malformed line(s) skipped (on_bad_line: skip; first: {shown})")

    bat = plan.batching
    policy_name = bat.policy
    disagg = policy_name == "disaggregated"
    if policy_name in ("continuous", "disaggregated") and bat.max_num_batched_tokens < bat.max_num_seqs:
        raise ScenarioError(
            f"max_num_batched_tokens ({bat.max_num_batched_tokens}) is below max_num_seqs ({bat.max_num_seqs}): the "
            "decodes of a full batch would exceed one iteration's token budget (vLLM refuses this too); raise "
            "max_num_batched_tokens or lower max_num_seqs",
            where=where,
            key="plan.batching.max_num_batched_tokens",
        )
    if policy_name == "chunked_prefill" and min(bat.chunk_size, bat.max_num_batched_tokens) < bat.max_num_seqs:
        # every running request decodes one token per iteration inside the budget: decodes alone
        # must never exceed it (vLLM refuses max_num_batched_tokens < max_num_seqs too)
        raise ScenarioError(
            f"chunked_prefill's token budget min(chunk_size, max_num_batched_tokens) = "
            f"{min(bat.chunk_size, bat.max_num_batched_tokens)} is below max_num_seqs ({bat.max_num_seqs}): the decodes "
            "of a full batch would not fit one iteration; raise chunk_size or lower max_num_seqs",
            where=where,
            key="plan.batching.chunk_size" if bat.chunk_size <= bat.max_num_batched_tokens else "plan.batching.max_num_batched_tokens",
        )
    n_rep = par.replicas
    if disagg and n_rep < 2:
        raise ScenarioError(
            "disaggregated serving needs plan.parallel.replicas >= 2 (prefill_replicas of them prefill, the rest decode)",
            where=where,
            key="plan.parallel.replicas",
        )
    if disagg and bat.prefill_replicas >= n_rep:
        raise ScenarioError(
            f"plan.batching.prefill_replicas ({bat.prefill_replicas}) must be < plan.parallel.replicas ({n_rep})",
            where=where,
            key="plan.batching.prefill_replicas",
        )
    gpus_per_replica = tp * par.pp
    pc = plan.prefix_cache
    hash_tokens = reqs.prefix_block_tokens
    if pc.enabled and hash_tokens % plan.kv_cache.block_size:
        raise ScenarioError(
            f"prefix blocks of {hash_tokens} tokens must be a multiple of plan.kv_cache.block_size ({plan.kv_cache.block_size})",
            where=where,
            key="plan.kv_cache.block_size",
        )
    if pc.enabled and not reqs.has_prefixes:
        warn.append("plan.prefix_cache is enabled but the workload carries no prefix hashes: no hits are possible")
    adm = plan_admission(sc, model)
    kv_cap = adm.kv_cap_tokens
    if kv_cap is not None and offloaded:
        warn.append(
            f"{model.name} attends a sliding window of {model.sliding_window} tokens, but plan.offload places, "
            "streams and sizes the KV of the whole context (as FlexGen does): KV traffic and capacity are those of "
            "full attention"
        )
    link_meas = measured_links(eff, plan.offload.io_block_size, plan.offload.io_queue_depth)
    cpu_cost = None
    if offloaded and plan.offload.cpu_attention and not use_cpu:
        from simkit.cost.offload import host_first_touch

        cpu_dev = ComputeDevice.from_cpu(node.cpu, node.dram, node.sockets, node.dram_capacity)
        cpu_dev, cpu_eff, _, _ = calibrated_device(sc, cpu_dev, node)
        cpu_cost = IterationModel(model, cpu_dev, cpu_eff, prec, tp=1)
        if plan.offload.host_temporaries == "fresh" and (ft := host_first_touch(node.spec.measured, cpu_eff)) is not None:
            # the run output names the rate the fresh host temporaries are priced at, and its source
            cal_info += f"; host first-touch rate {ft[0] / 1e9:.3g} GB/s from {ft[1]}"

    swap_bytes = plan.kv_cache.swap_space if plan.kv_cache.swap_space is not None else 4 * 2**30 * gpus_per_replica
    groups = [Group(scenario.plan.fleet[0].gpu if fleet_sc else "", n_rep, node, layout, device, eff, cal_info, mem, cost,
                    gpus_per_replica, link_meas, swap_bytes)]
    if fleet_sc is not None:
        for k, (grp, sc_k) in enumerate(zip(scenario.plan.fleet[1:], fleet_sc[1:], strict=True), start=1):
            with _in_group(scenario, k):
                g = _fleet_group(sc_k, grp.gpu, model, prec, algo, reserve, where)
            for w in g.warnings:
                _warn(warn, w)
            groups.append(g)
        if len(groups) > 1 and plan.routing == "round_robin":
            warn.append("plan.fleet mixes GPU types under round_robin routing, which sends every replica the same share "
                        "of requests whatever its speed; least_outstanding balances by load")
    closed = False
    off_why = None
    if off_layout is not None:
        from simkit.engine.fast_offload import OffloadFastEngine
        from simkit.engine.offload_fast import act_off_gpu, blocked_reason, closed_form_reason

        # an offloaded step's layer pipeline: in closed form unless something else uses its links
        off_why = "requested" if engine == "reference" else closed_form_reason(
            off_layout, cpu_cost is not None, sum(g.replicas for g in groups), trace, pc.enabled, plan.kv_cache.preemption,
            disagg, par.pp, plan.offload.overlap, plan.offload.num_gpu_batches,
        )
        closed = off_why is None
    slow_reason = "requested" if engine == "reference" else fast_path_reason(
        policy_name, plan.execution.mode == "layer_by_layer", trace,
    )
    engine_cls: type[Engine] = Engine if slow_reason else OffloadFastEngine if off_layout is not None else FastEngine
    engine_path = f"reference ({slow_reason})" if slow_reason else "fast"
    # the fused loop keeps no prefix cache, swaps nothing and caps no sequence's KV (sliding
    # window): such plans step the fast engine
    fused = (engine == "auto" and not slow_reason and par.pp == 1 and off_layout is None and not pc.enabled
             and plan.kv_cache.preemption == "recompute" and kv_cap is None
             and fused_loop_reason(policy_name, plan.routing) is None)
    if fused:
        engine_path = "fast (fused loop)"
    if off_layout is not None:
        engine_path += "; offloaded steps in closed form" if closed else f"; offloaded steps event by event ({off_why})"
        gbs = plan.offload.gpu_batch_size
        if (closed and plan.offload.overlap and gbs is not None and not (policy_name == "static" and bat.batch_size is None)
                and blocked_reason(off_layout, cpu_cost is not None) is not None):
            # a step of more sequences than a GPU batch runs the zig-zag block schedule, event by
            # event where it reads spilled KV
            engine_path += f", event by event for steps of more sequences than gpu_batch_size ({gbs})"
        if closed and plan.offload.overlap and act_off_gpu(off_layout):
            # with prefetch, only the block schedule times activations off the GPU: a step of one
            # GPU batch (at most gpu_batch_size sequences) runs its events
            engine_path += ", event by event for steps of one GPU batch (activations off the GPU)"
    pipe = False
    if stage_costs is not None:
        from simkit.engine.pipeline_fast import closed_form_reason as pipeline_reason

        why = "requested" if engine == "reference" else pipeline_reason(
            trace, pc.enabled, plan.kv_cache.preemption, issubclass(engine_cls, FastEngine))
        pipe = why is None
        engine_path += "; pipeline stages in closed form" if pipe else f"; pipeline stages event by event ({why})"
    return Deployment(scenario, sc, model, prec, use_cpu, groups, off_layout, off_mem, stage_costs, cpu_cost, reqs, adm,
                      group_shares, cross_tp, engine_cls, engine_path, warn, closed, pipe, fused)


def _static_options(plan: Plan) -> BatchingOptions:
    """``plan.batching``, with an offloaded static plan's default batch (``gpu_batch_size`` x
    ``num_gpu_batches``) filled in: the options its policy is built with."""
    bat, off = plan.batching, plan.offload
    if not off.is_trivial and bat.policy == "static" and bat.batch_size is None and off.gpu_batch_size:
        return bat.model_copy(update={"batch_size": off.gpu_batch_size * off.num_gpu_batches})
    return bat


def without_pipeline_closed_form(dep: Deployment, conflict: PipelineConflict) -> Deployment:
    """``dep`` to run again after ``conflict`` (a micro-batch overtook another or shared a link
    with it): the stages event by event, on the reference engine where the fast one ran (it
    schedules its stages only in closed form); ``engine_path`` names the conflict."""
    fast = issubclass(dep.engine_cls, FastEngine)
    path = "reference (pipeline parallelism)" + dep.engine_path[len("fast"):] if fast else dep.engine_path
    path = path.replace("; pipeline stages in closed form", f"; pipeline stages event by event ({conflict.reason()})")
    return replace(dep, pipeline_closed_form=False, engine_cls=Engine if fast else dep.engine_cls, engine_path=path)


def build_replicas(dep: Deployment, cluster: Cluster) -> list[OffloadExecutor]:
    """Build the deployment's replicas (links, KV blocks and prefix cache, pipeline stages,
    offload executor, batching policy, engines) into ``cluster``'s world and set it to serve
    them (routing, admission, disaggregated hand-off); the offload executors, for the summary."""
    sc, plan = dep.sc, dep.sc.plan
    par, bat, pc = plan.parallel, plan.batching, plan.prefix_cache
    env, table, tracer = cluster.env, cluster.table, cluster.tracer
    trace = tracer is not None
    g0 = dep.groups[0]
    node, layout, tp = g0.node, g0.layout, par.tp
    tiers = node.tiers()
    policy_name = bat.policy
    disagg = policy_name == "disaggregated"
    hash_tokens = dep.reqs.prefix_block_tokens
    off_layout, off_mem, stage_costs, cpu_cost = dep.off_layout, dep.off_mem, dep.stage_costs, dep.cpu_cost
    if cpu_cost is not None or stage_costs is not None:
        import simpy  # (only such worlds queue for a resource: SimPy's loop runs them)
    if off_layout is not None or stage_costs is not None:
        from simkit.cost.offload import offload_compute
        from simkit.engine.offload import OffloadExecutor
        from simkit.engine.offload_fast import ClosedFormStep
        from simkit.engine.pipeline_fast import PipelineEngine, PipelineFastEngine, PipelineSchedule
    cpu_stream = simpy.Resource(env, capacity=1) if cpu_cost is not None else None
    n_rep = dep.n_rep
    rep_group = dep.rep_group
    n_prefill = bat.prefill_replicas if disagg else 0
    replicas: list[Replica] = []
    executors: list[OffloadExecutor] = []
    for r in range(n_rep):
        gk = dep.groups[rep_group[r]]
        mem, cost, gpus_per_replica, swap_bytes = gk.mem, gk.cost, gk.gpus_per_replica, gk.swap_bytes
        role = "both"
        if disagg:
            role = "prefill" if r < n_prefill else "decode"
        cache = None
        if pc.enabled and role != "decode":
            per_hash = hash_tokens * mem.kv_bytes_per_token_per_gpu * gpus_per_replica
            caps: dict[str, int] = {}
            use = ["hbm"] + [t for t in pc.tiers if t != "hbm" and t in tiers]
            for t in use[1:]:
                default = tiers[t].capacity * (0.1 if t == "ssd" else 0.5) / n_rep
                caps[t] = int(pc.capacity.get(t, default) // per_hash)
            cache = PrefixCache(use, caps, hash_tokens // plan.kv_cache.block_size)
        kv = KVBlockManager(
            mem.num_blocks, plan.kv_cache.block_size, watermark_blocks(mem.num_blocks, plan.kv_cache.watermark), cache=cache,
            clock=partial(attrgetter("_now"), env),  # env.now without two Python calls (hot: every KV change)
        )
        cfg = EngineConfig(
            plan.kv_cache.block_size,
            mem.kv_bytes_per_token_per_gpu,
            plan.kv_cache.preemption,
            int(swap_bytes // (mem.block_bytes * gpus_per_replica)),
            role,
            hash_tokens,
            gpus_per_replica,
            layerwise=plan.execution.mode == "layer_by_layer",
            spill_after=off_layout.spill_after if off_layout is not None else None,
            spill_capacity_tokens=off_mem.spill_tokens / n_rep if off_mem is not None else 0.0,
            kv_cap_tokens=dep.admission.kv_cap_tokens,
        )
        links = _links(env, gk.node, gpus_per_replica, trace, gk.link_meas)
        rep = Replica(r)
        stages = None
        if stage_costs is not None:
            stages = []
            for k, sc_k in enumerate(stage_costs):
                link_out = None
                if k < par.pp - 1:
                    bw, lat, kind = group_link(node, layout.pp_crosses_nodes(r, k))
                    link_out = Link(env, f"PP {kind} {k}->{k + 1}", bw * tp, lat)
                    if trace:
                        link_out.intervals = []
                    links[f"pp{k}"] = link_out
                stages.append(Stage(sc_k, simpy.Resource(env, capacity=1), link_out, tp))
        pipe = PipelineSchedule(env, stages, r) if stages is not None and dep.pipeline_closed_form else None
        executor = None
        if off_layout is not None:
            executor = OffloadExecutor(
                env, cost, off_layout, links, cpu_cost, cpu_stream if cpu_cost is not None else None,
                plan.offload.gpu_batch_size, plan.offload.overlap, tracer=tracer, replica=r,
                compute=offload_compute(node, cost, cpu_cost, dep.use_cpu),
                kv_store_slowdown=kv_store_slowdown(link_rates(node, gpus_per_replica, gk.link_meas)),
            )
            if dep.offload_closed_form:
                executor.closed_form = ClosedFormStep(executor)
            executors.append(executor)
        engines = par.pp if stages is not None else 1
        for v in range(engines):
            policy = build_policy(_static_options(plan), role)
            cls = dep.engine_cls
            if pipe is not None:
                cls = PipelineFastEngine if issubclass(cls, FastEngine) else PipelineEngine
            eng = cls(
                env, r, table, cost, policy, kv, cfg, cluster.tbt, cluster.log, cluster.next_arrival, links,
                cluster.on_prefilled if role == "prefill" else None, tracer, replica=rep, stages=stages, engine_id=v,
                offload=executor,
            )
            eng.pipe = pipe
            if cache is not None:
                cache.on_demote = eng.demote_traffic
        replicas.append(rep)
    front = replicas[:n_prefill] if disagg else replicas
    # a fleet's replicas hold different KV: a request goes to the replicas that can hold it
    front_caps = [dep.groups[rep_group[g.index]].mem.num_blocks * plan.kv_cache.block_size for g in front]
    handoff = None
    if disagg:
        if bat.kv_transfer_link not in replicas[0].links:
            raise ScenarioError(f"the node has no {bat.kv_transfer_link!r} link for the KV transfer", where=sc.source,
                                key="plan.batching.kv_transfer_link")
        handoff = HandOff(n_prefill, bat.kv_transfer_link, g0.mem.kv_bytes_per_token_per_gpu, g0.gpus_per_replica,
                          ROUTING_POLICIES[plan.routing]())
    cluster.serve(replicas, front_caps, ROUTING_POLICIES[plan.routing](), dep.admission, handoff)
    return executors
