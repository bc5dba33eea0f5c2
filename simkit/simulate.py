"""Scenario -> specs, policies and engine wired together -> run -> :class:`Result`.

This is the one place that wires the layers: it resolves the hardware and model, loads the
calibration, builds the cost model, checks the plan against memory, builds the workload,
creates the SimPy environment with its replicas, links and router, runs it, and summarises.
``simulate(scenario)`` is what the CLI, studies and sweeps call.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import simpy

from simkit.cost.device import ComputeDevice
from simkit.cost.efficiency import DatasheetEfficiency, EfficiencyModel
from simkit.cost.iteration import IterationModel
from simkit.cost.memory import activation_bytes
from simkit.cost.offload import OffloadCompute
from simkit.cost.ops import Precision
from simkit.cost.profile import Profile
from simkit.engine.engine import Engine, EngineConfig, IterationLog, Stage
from simkit.engine.fast import FastEngine, fast_path_reason
from simkit.engine.kvcache import KVBlockManager, PrefixCache
from simkit.engine.offload import COMPUTE_PARTS, OffloadExecutor
from simkit.engine.replica import Replica
from simkit.engine.resources import Link
from simkit.engine.state import RequestTable, TBTHistogram
from simkit.errors import CapacityError, ScenarioError, SimkitError
from simkit.metrics import CostInputs, summarize
from simkit.policies.batching import BATCHING_POLICIES
from simkit.policies.offload import build_offload_layout, check_offload_capacity, offload_gpu_usable
from simkit.policies.parallel import Layout, check_parallel, expert_group_shares
from simkit.policies.routing import ROUTING_POLICIES
from simkit.scenario import Scenario, apply_overrides, scenario_from_dict
from simkit.specs.calibration import NO_HOST_OVERHEAD, HostOverhead
from simkit.specs.catalog import load_model
from simkit.specs.model import ModelSpec
from simkit.specs.node import Node, gpu_swap, resolve_node
from simkit.units import fmt_bytes
from simkit.workload.base import Requests


@dataclass
class Result:
    """What one simulation produced. ``summary`` is summary.json; the tables are columnar."""

    scenario: Scenario
    summary: dict[str, Any]
    table: RequestTable
    iterations: list[tuple[Any, ...]]
    memory: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    trace_events: list[dict[str, Any]] | None = None
    sim_wall_s: float = 0.0
    """Wall-clock seconds of ``simulate()`` (in provenance.json, not summary.json: not deterministic)."""
    calibration: dict[str, Any] = field(default_factory=dict)
    """The calibration used: setting, description, profile name/path and its measured fidelity."""
    link_busy: list[tuple[int, str, float, float]] = field(default_factory=list)
    """(replica, link, start_s, end_s) of every busy period of every link direction (links.parquet)."""

    def links_frame(self):  # type: ignore[no-untyped-def]
        import pandas as pd

        return pd.DataFrame(link_columns(self.link_busy))

    def requests_frame(self):  # type: ignore[no-untyped-def]
        from simkit.metrics import requests_frame

        return requests_frame(self.table)

    def iterations_frame(self):  # type: ignore[no-untyped-def]
        import pandas as pd

        return pd.DataFrame(iteration_columns(self.iterations))


# ---- building blocks -------------------------------------------------------------------------
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
        from simkit.workload.synthetic import make_synthetic

        spec = w.synthetic.model_dump(exclude_none=True)
        lengths = spec["lengths"]
        if "trace" in lengths:
            lengths["trace"]["path"] = str(sc.resolve_path(lengths["trace"]["path"]))
        reqs = make_synthetic(spec["num_requests"], spec["arrival"], lengths, seed=sc.seed)
    else:
        from simkit.workload.traces import read_trace

        tr = w.trace
        assert tr is not None
        reqs = read_trace(
            str(sc.resolve_path(tr.path)),
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


def resolve_calibration(sc: Scenario, device: ComputeDevice, quiet: bool = False) -> tuple[EfficiencyModel, str, str | None]:
    if sc.calibration == "none":
        return DatasheetEfficiency(), "datasheet defaults (calibration: none)", None
    from simkit.cost.profile import resolve_calibration as _resolve

    setting = sc.calibration
    if setting != "auto":
        # absolute, so the description (in summary.json) does not depend on how the path is spelt
        setting = str(sc.resolve_path(setting).resolve())
    return _resolve(setting, device.kind, device.name)


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
    eff, cal_info, cal_warn = resolve_calibration(sc, device)
    # time operators against the roofline the profile's efficiencies were fitted to, scaled by
    # the scenario's what-if multipliers
    device = device.for_profile(eff, node.scale)
    return use_cpu, device, eff, cal_info, cal_warn


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
    pageable = lm["h2d_pageable"][0] / lm["h2d"][0] if "h2d_pageable" in lm and "h2d" in lm else None
    off_layout = build_offload_layout(plan.offload, model, prec, tp, use_cpu, pageable)
    mem0 = plan_memory(sc, model, device, prec, tp, layout.layer_split, plan.parallel.ep, check=False)
    off_mem = check_offload_capacity(
        off_layout, model, prec, node, tp, plan.kv_cache.block_size, mem0.activations_per_gpu * tp,
        offload_gpu_usable(device.memory, plan.kv_cache, plan.batching.policy == "static"), plan.kv_cache.num_blocks, sc.source,
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


def _group_link(node: Node, cross_node: bool) -> tuple[float, float, str]:
    """(bandwidth per GPU, latency, kind) of the link a group of GPUs communicates over."""
    if cross_node:
        net = node.link("network")
        assert net is not None
        return net.achieved_bandwidth, net.latency, "network"
    link = node.link("gpu_to_gpu")
    if link is not None:
        return link.achieved_bandwidth, link.latency, "nvlink"
    pcie = node.link("host_to_gpu")
    assert pcie is not None
    return pcie.achieved_bandwidth, pcie.latency, "pcie"


def topology(node: Node) -> str:
    """How a node's GPUs are wired, as calibration profiles key collectives: ``nvswitch`` (every
    GPU to every GPU over NVLink through switches), ``pairwise_nvlink`` (NVLink bridges between
    pairs), or ``pcie``."""
    gg = node.link("gpu_to_gpu")
    if gg is None or gg.type != "nvlink":
        return "pcie"
    return "nvswitch" if node.num_gpus >= 4 and "bridge" not in gg.name else "pairwise_nvlink"


def comm_fn(kind: str, node: Node, n: int, cross_node: bool, algorithm: str = "ring", eff: EfficiencyModel | None = None):  # type: ignore[no-untyped-def]
    """Seconds of one collective of ``kind`` over ``n`` GPUs, as a function of bytes per GPU:
    the calibration profile's fitted model for this topology and GPU count where it has one,
    else the alpha-beta model over the link's achieved bandwidth and latency."""
    from simkit.cost import collectives

    bw, lat, link_kind = _group_link(node, cross_node)
    fit = None
    if not cross_node and eff is not None:
        fit = eff.collective_fit(kind, topology(node), n)
        if fit is not None:
            # measured on the unscaled link: a what-if bandwidth scales its bands
            fit = fit.scaled(node.scale_of("gpu_to_gpu" if node.link("gpu_to_gpu") is not None else "host_to_gpu"))

    def f(nbytes: np.ndarray) -> np.ndarray:
        return collectives.collective_time(kind, np.asarray(nbytes, dtype=np.float64), n, bw, lat, algorithm, fit)

    return f


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
    expert parallelism each GPU holds 1/ep of the experts, sharded tp/ep ways (= /tp overall)."""
    per_layer = model.params_layers / model.num_layers
    pp = len(layer_split)
    stage_params = []
    for k, n in enumerate(layer_split):
        p = per_layer * n
        if k == 0:
            p += model.params_embedding
        if k == pp - 1:
            p += model.params_lm_head + model.norm_params
        stage_params.append(p)
    return max(stage_params) * prec.w_bytes / tp


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
    kvh = max(model.num_kv_heads / tp, 1.0)
    kv_tok = 2.0 * max(layer_split) * kvh * model.d_head * prec.kv_bytes
    if kvp.activation_reserve is not None:
        act = kvp.activation_reserve
    else:
        tokens = sc.plan.batching.max_num_batched_tokens
        seqs = sc.plan.batching.max_num_seqs
        off = sc.plan.offload
        w = sc.workload
        longest = w.batch.input_tokens if w.batch is not None else tokens
        if not off.is_trivial and off.gpu_batch_size:
            # an offloaded block computes one GPU batch at a time
            tokens = min(tokens, off.gpu_batch_size * longest)
            seqs = off.gpu_batch_size
        elif static and w.batch is not None:
            # a static batch of a known workload: its prefill is the largest forward pass
            seqs = min(seqs, sc.plan.batching.batch_size or w.batch.num_prompts)
            tokens = min(tokens, seqs * longest)
        act = activation_bytes(model, tokens, seqs, tp, prec)
    if device.kind == "gpu":
        # one rule for the GPU memory a run may fill, offloaded or not (a static run keeps no
        # growing KV pool: policies/offload.offload_gpu_usable)
        usable, usable_rule = offload_gpu_usable(device.memory, kvp, static)
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


def measured_links(eff: EfficiencyModel, io_block: float, io_depth: int) -> dict[str, tuple[float, float]]:
    """Link bandwidths and latencies a calibration profile measured on this machine, keyed like
    the engine's links: SSD reads/writes at the streaming block size and queue depth (the
    closest measured configuration; reads from the sequential-read benchmark where the profile
    has it, since streamed weights are read sequentially), and pinned host<->device copies."""
    out: dict[str, tuple[float, float]] = {}
    ssd = eff.measured_ssd()
    for d, key in (("seq_read" if ssd.get("seq_read") else "read", "nvme_read"), ("write", "nvme_write")):
        entry = ssd.get(d)
        if not entry:
            continue
        table = entry.get("by_block_and_depth") or []
        # the device's own latency (4 KiB at queue depth 1); a row's latency includes the
        # queueing delay that its bandwidth already accounts for, so it must not be added again
        base_lat = float(entry.get("latency", 0.0))
        if table:
            # the measured block size closest to the streaming one; the best bandwidth reached
            # with at most io_depth requests in flight (more in flight never slows a sequential
            # stream, so dips between queue depths are measurement noise)
            blk = min({r["block_size"] for r in table}, key=lambda b: abs(np.log2(b / io_block)))
            rows = [r for r in table if r["block_size"] == blk]
            rows_ok = [r for r in rows if r["queue_depth"] <= io_depth] or rows
            out[key] = (float(max(r["bandwidth"] for r in rows_ok)), base_lat)
        elif entry.get("bandwidth"):
            out[key] = (float(entry["bandwidth"]), base_lat)
    links = eff.measured_links()
    for name, key in (("h2d_pinned", "h2d"), ("d2h_pinned", "d2h")):
        e = links.get(name)
        if e and e.get("bandwidth"):
            out[key] = (float(e["bandwidth"]), float(e.get("latency", 0.0)))
    for name, key in (("h2d_pageable", "h2d_pageable"), ("d2h_pageable", "d2h_pageable")):
        e = links.get(name)
        if e and e.get("bandwidth"):
            out[key] = (float(e["bandwidth"]), float(e.get("latency", 0.0)))
    return out


def _measured_link_scale(node: Node, key: str) -> float:
    """The what-if multiplier (``hardware.bandwidth_scale``) for a link rate measured on the
    unscaled machine (by a calibration profile, or in a node preset's ``measured:``): PCIe copies scale with ``host_to_gpu``; SSD streams by
    how much the scaled catalog path (the drives' bandwidth, capped by their NVMe links)
    speeds up over the unscaled one."""
    if key in ("h2d", "d2h", "d2h_kv", "h2d_pageable", "d2h_pageable"):
        return node.scale_of("host_to_gpu")
    if key in ("nvme_read", "nvme_write", "nvme_write_kv") and node.ssd:
        t = node.tiers()["ssd"]
        drive = t.read_bw if key == "nvme_read" else t.write_bw
        nv = node.link("nvme")
        cap = nv.achieved_bandwidth * len(node.ssd) if nv else float("inf")
        s_ssd, s_nv = node.scale_of("ssd"), node.scale_of("nvme")
        return min(drive, cap) / min(drive / s_ssd, cap / s_nv)
    return 1.0


def link_rates(node: Node, gpus: int, measured: dict[str, tuple[float, float]] | None = None) -> dict[str, tuple[float, float]]:
    """(bandwidth, latency) of every link direction of a replica of ``gpus`` GPUs, the one home
    of these numbers for the simulator and the placement optimiser: the catalog's achieved
    figures, replaced by what the node preset says was measured on that machine
    (``measured:``), replaced in turn by a calibration profile's measurements (``measured``).
    ``d2h_kv`` / ``nvme_write_kv``: the rate of KV-cache stores where the machine was measured
    to store KV slower than plain copies (strided writes into the host cache)."""
    out: dict[str, tuple[float, float]] = {}
    meas = node.spec.measured
    h2g = node.link("host_to_gpu")
    if h2g is not None and node.gpu is not None:
        out["h2d"] = (h2g.achieved_bandwidth * gpus, h2g.latency)
        out["d2h"] = (h2g.achieved_bandwidth * gpus, h2g.latency)
        if meas is not None:
            for key, v in (("h2d", meas.h2d_bandwidth), ("d2h", meas.d2h_bandwidth), ("d2h_kv", meas.d2h_kv_bandwidth)):
                if v is not None:
                    out[key] = (v * gpus * _measured_link_scale(node, key), h2g.latency)
    tiers = node.tiers()
    if "ssd" in tiers:
        t = tiers["ssd"]
        nv = node.link("nvme")
        cap = nv.achieved_bandwidth * len(node.ssd) if nv else float("inf")
        out["nvme_read"] = (min(t.read_bw, cap), t.latency)
        out["nvme_write"] = (min(t.write_bw, cap), t.latency)
        if meas is not None:
            for key, v in (("nvme_read", meas.ssd_read_bandwidth), ("nvme_write", meas.ssd_write_bandwidth),
                           ("nvme_write_kv", meas.ssd_kv_write_bandwidth)):
                if v is not None:
                    out[key] = (v * _measured_link_scale(node, key), t.latency)
    if "cxl" in tiers:
        t = tiers["cxl"]
        cx = node.link("cxl")
        cap = cx.achieved_bandwidth * len(node.cxl) if cx else float("inf")
        out["cxl_read"] = (min(t.read_bw, cap), t.latency)
        out["cxl_write"] = (min(t.write_bw, cap), t.latency)
    net = node.link("network")
    if net is not None:
        out["network"] = (net.achieved_bandwidth * max(node.num_nics, 1), net.latency)
    gg = node.link("gpu_to_gpu")
    if gg is not None:
        out["nvlink"] = (gg.achieved_bandwidth, gg.latency)
    for key, (bw, lat) in (measured or {}).items():
        if key in out:
            out[key] = (bw * (gpus if key in ("h2d", "d2h") else 1) * _measured_link_scale(node, key), lat)
            if key in ("d2h", "nvme_write"):
                out.pop(f"{key}_kv", None)  # the profile measured this machine's stores itself
    return out


KV_STORE_RATES = {"d2h": "d2h_kv", "nvme_write": "nvme_write_kv"}
"""Link directions whose KV-cache stores run at their own measured rate (see link_rates)."""

def kv_store_slowdown(rates: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Link direction -> (plain copy bandwidth / KV-store bandwidth), from link_rates."""
    out = {}
    for hop, kv_key in KV_STORE_RATES.items():
        if hop in rates and kv_key in rates:
            out[hop] = max(rates[hop][0] / rates[kv_key][0], 1.0)
    return out


def offload_compute(node: Node, cost: IterationModel, cpu_cost: IterationModel | None, plain: bool) -> OffloadCompute:
    """The per-layer costs of an offloaded plan on ``node`` (shared by the simulator and the
    placement optimiser). The rates a node preset measured (``measured:``, e.g. FlexGen's of
    the T4 VM) are those of an offloading runtime running layer by layer: they apply to every
    plan the offload executor runs on a GPU (not to ``plain`` ones computing on the CPU); a plan
    without plan.offload keeps the cost model of a non-offloaded run."""
    return OffloadCompute(cost, cpu_cost, None if plain else node.spec.measured, node.cpu.peak_flops.fp32 * node.sockets)


_LINK_NAMES = {"h2d": "PCIe H2D", "d2h": "PCIe D2H", "nvme_read": "NVMe read", "nvme_write": "NVMe write",
               "cxl_read": "CXL read", "cxl_write": "CXL write", "network": "network", "nvlink": "GPU-GPU"}


def _links(
    env: simpy.Environment, node: Node, gpus: int, trace: bool, measured: dict[str, tuple[float, float]] | None = None
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


class _Tracer:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def stage(self, replica: int, stage: int, engine: int, start: float, end: float) -> None:
        self.events.append(
            {"name": f"micro-batch {engine}", "ph": "X", "pid": replica, "tid": f"stage {stage} compute",
             "ts": start * 1e6, "dur": (end - start) * 1e6, "args": {"engine": engine}}
        )

    def step(self, replica: int, start: float, end: float, prefill_tokens: int, decode: int, steps: int = 1) -> None:
        name = "prefill+decode" if prefill_tokens and decode else ("prefill" if prefill_tokens else "decode")
        self.events.append(
            {
                "name": name if steps == 1 else f"decode x{steps}",
                "ph": "X",
                "pid": replica,
                "tid": "compute",
                "ts": start * 1e6,
                "dur": (end - start) * 1e6,
                "args": {"prefill_tokens": prefill_tokens, "decode_seqs": decode, "steps": steps},
            }
        )


# ---- the one call ----------------------------------------------------------------------------
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
class _Group:
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


def _fleet_group(sc: Scenario, gpu: str, model: ModelSpec, prec: Precision, algo: str, reserve: int, where: str | None) -> _Group:
    """Set up a further fleet group as :func:`simulate` sets up the first (GPU, no offload, pp = 1,
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
    return _Group(gpu, par.replicas, node, layout, device, eff, cal_info, mem, cost, par.tp, lm, swap, [cal_warn] if cal_warn else [])


def _fleet_memory(groups: list[_Group], pc: Any, rep_group: list[int], replicas: list[Replica]) -> dict[str, Any]:
    """summary.json's ``memory`` of a fleet: each group accounted as :func:`account_memory` does
    (on its own node type), tiers summed over the groups."""
    out: dict[str, Any] = {}
    for k, g in enumerate(groups):
        mine = [r for r in replicas if rep_group[r.index] == k]
        part = account_memory(g.node, g.mem, None, g.node.tiers(), g.replicas, g.gpus_per_replica, False, pc, g.swap_bytes, mine)
        for name, t in part.items():
            acc = out.setdefault(name, {"capacity_bytes": 0.0, "used_bytes": 0.0, "by_owner": {}})
            acc["capacity_bytes"] += t["capacity_bytes"]
            acc["used_bytes"] += t["used_bytes"]
            for owner, v in t["by_owner"].items():
                acc["by_owner"][owner] = acc["by_owner"].get(owner, 0.0) + v
    return out


def simulate(sc: Scenario, *, record_iterations: bool = True, trace: bool = False, engine: str = "auto") -> Result:
    """Run a scenario. ``engine``: ``auto`` runs the fast exact path where it covers the plan
    (:mod:`simkit.engine.fast`) and the reference engine elsewhere; ``reference`` always runs the
    reference engine (``summary["engine_path"]`` says which ran, and why)."""
    if engine not in ("auto", "reference"):
        raise ScenarioError(f"expected engine 'auto' or 'reference', got {engine!r}", where=sc.source, key="engine")
    wall0 = time.perf_counter()
    warn: list[str] = []
    where = sc.source
    scenario = sc
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
        warn.append(cal_warn)
        warnings.warn(cal_warn, stacklevel=2)
    if use_cpu and isinstance(eff, Profile):
        # a profile of this very machine: check at start-up that it still runs at the profile's
        # speed (simkit.calibrate.probe; stderr only, so results stay byte-identical)
        from simkit.calibrate.probe import startup_check

        for msg in startup_check(eff):
            warnings.warn(msg, stacklevel=2)
    precision = plan.precision
    prec = Precision(precision.weights, precision.activations, precision.kv_cache, precision.group_size)
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
        most = max(b.max_num_batched_tokens, b.max_num_seqs)
    stage_costs = (
        [make_cost(n, k == 0, k == par.pp - 1) for k, n in enumerate(layout.layer_split)] if par.pp > 1 else None
    )
    reqs = build_workload(sc)
    # no iteration holds more tokens than the whole workload's prompts plus one token per request
    reserve = min(most, int(reqs.input_tokens.sum()) + len(reqs))
    cost.reserve(reserve)
    bad_lines = (reqs.meta.get("bad_lines") or {}).get("count", 0)
    if bad_lines:
        shown = ", ".join(str(x) for x in reqs.meta["bad_lines"].get("lines", []))
        warn.append(f"trace {reqs.meta.get('source', '')}: {bad_lines} malformed line(s) skipped (on_bad_line: skip; first: {shown})")
    table = RequestTable(reqs)
    env = simpy.Environment()
    tbt = TBTHistogram()
    log = IterationLog(record_iterations)
    tracer = _Tracer() if trace else None

    bat = plan.batching
    policy_name = bat.policy
    disagg = policy_name == "disaggregated"
    if not disagg and policy_name not in BATCHING_POLICIES:
        raise ScenarioError(
            f"unknown batching policy {policy_name!r} (expected one of {', '.join([*BATCHING_POLICIES, 'disaggregated'])})",
            where=where,
            key="plan.batching.policy",
        )
    if plan.routing not in ROUTING_POLICIES:
        raise ScenarioError(
            f"unknown routing policy {plan.routing!r} (expected one of {', '.join(ROUTING_POLICIES)})",
            where=where,
            key="plan.routing",
        )
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
    tiers = node.tiers()
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
    # a sliding-window model keeps the window (plus the block being filled) per sequence
    kv_cap = model.sliding_window + plan.kv_cache.block_size if model.sliding_window is not None else None
    if kv_cap is not None and offloaded:
        warn.append(
            f"{model.name} attends a sliding window of {model.sliding_window} tokens, but plan.offload places, "
            "streams and sizes the KV of the whole context (as FlexGen does): KV traffic and capacity are those of "
            "full attention"
        )
    replicas: list[Replica] = []
    executors: list[OffloadExecutor] = []
    link_meas = measured_links(eff, plan.offload.io_block_size, plan.offload.io_queue_depth)
    cpu_cost = None
    cpu_stream = None
    if offloaded and plan.offload.cpu_attention and not use_cpu:
        cpu_dev = ComputeDevice.from_cpu(node.cpu, node.dram, node.sockets, node.dram_capacity)
        cpu_eff, _, _ = resolve_calibration(sc, cpu_dev, quiet=True)
        cpu_dev = cpu_dev.for_profile(cpu_eff, node.scale)
        cpu_cost = IterationModel(model, cpu_dev, cpu_eff, prec, tp=1)
        cpu_stream = simpy.Resource(env, capacity=1)
    arrivals = table.arrival
    order = np.argsort(arrivals, kind="stable")
    ptr = [0]

    def next_arrival() -> float:
        k = ptr[0]
        return float(arrivals[order[k]]) if k < len(order) else float("inf")

    swap_bytes = plan.kv_cache.swap_space if plan.kv_cache.swap_space is not None else 4 * 2**30 * gpus_per_replica
    groups = [_Group(scenario.plan.fleet[0].gpu if fleet_sc else "", n_rep, node, layout, device, eff, cal_info, mem, cost,
                     gpus_per_replica, link_meas, swap_bytes)]
    if fleet_sc is not None:
        for k, (grp, sc_k) in enumerate(zip(scenario.plan.fleet[1:], fleet_sc[1:], strict=True), start=1):
            with _in_group(scenario, k):
                g = _fleet_group(sc_k, grp.gpu, model, prec, algo, reserve, where)
            for w in g.warnings:
                warn.append(w)
                warnings.warn(w, stacklevel=2)
            groups.append(g)
        n_rep = sum(g.replicas for g in groups)
        if len(groups) > 1 and plan.routing == "round_robin":
            warn.append("plan.fleet mixes GPU types under round_robin routing, which sends every replica the same share "
                        "of requests whatever its speed; least_outstanding balances by load")
    decode_router = ROUTING_POLICIES[plan.routing]()
    n_prefill = bat.prefill_replicas if disagg else 0

    def on_prefilled(i: int, src: int) -> None:
        env.process(_ship_kv(i, src))

    def _ship_kv(i: int, src: int):  # type: ignore[no-untyped-def]
        link_kind = bat.kv_transfer_link
        nbytes = float(table.kv_len[i]) * mem.kv_bytes_per_token_per_gpu * gpus_per_replica
        link = replicas[src].links.get(link_kind)
        if link is None:
            raise ScenarioError(f"the node has no {link_kind!r} link for the KV transfer", where=where, key="plan.batching.kv_transfer_link")
        yield link.transfer(nbytes, f"kv r{src}->decode")
        replicas[src].release_after_transfer(i)
        dec = replicas[n_prefill:]
        k = decode_router.choose(i, dec)
        table.target[i] = table.kv_len[i]
        table.handoff[i] = env.now
        dec[k].hand_off(i)

    slow_reason = "requested" if engine == "reference" else fast_path_reason(
        policy_name, pc.enabled, plan.kv_cache.preemption, offloaded, par.pp,
        plan.execution.mode == "layer_by_layer", off_layout is not None and off_layout.spill_after is not None, trace,
        model.sliding_window is not None,
    )
    engine_cls = Engine if slow_reason else FastEngine
    engine_path = f"reference ({slow_reason})" if slow_reason else "fast"
    rep_group = [k for k, g in enumerate(groups) for _ in range(g.replicas)]
    for r in range(n_rep):
        gk = groups[rep_group[r]]
        mem, cost, gpus_per_replica, swap_bytes = gk.mem, gk.cost, gk.gpus_per_replica, gk.swap_bytes
        role = "both"
        if disagg:
            role = "prefill" if r < n_prefill else "decode"
        pname = "prefill_only" if role == "prefill" else ("continuous" if disagg else policy_name)
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
            mem.num_blocks, plan.kv_cache.block_size, int(plan.kv_cache.watermark * mem.num_blocks), cache=cache,
            clock=lambda: env.now,
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
            kv_cap_tokens=kv_cap,
        )
        links = _links(env, gk.node, gpus_per_replica, trace, gk.link_meas)
        rep = Replica(r)
        stages = None
        if stage_costs is not None:
            stages = []
            for k, sc_k in enumerate(stage_costs):
                link_out = None
                if k < par.pp - 1:
                    bw, lat, kind = _group_link(node, layout.pp_crosses_nodes(r, k))
                    link_out = Link(env, f"PP {kind} {k}->{k + 1}", bw * tp, lat)
                    if trace:
                        link_out.intervals = []
                    links[f"pp{k}"] = link_out
                stages.append(Stage(sc_k, simpy.Resource(env, capacity=1), link_out, tp))
        executor = None
        if off_layout is not None:
            executor = OffloadExecutor(
                env, cost, off_layout, links, cpu_cost, cpu_stream if cpu_cost is not None else None,
                plan.offload.gpu_batch_size, plan.offload.overlap, tracer=tracer, replica=r,
                compute=offload_compute(node, cost, cpu_cost, use_cpu),
                kv_store_slowdown=kv_store_slowdown(link_rates(node, gpus_per_replica, link_meas)),
            )
            executors.append(executor)
        engines = par.pp if stages is not None else 1
        for v in range(engines):
            bopts = bat.model_dump()
            if offloaded and bopts["batch_size"] is None and plan.offload.gpu_batch_size:
                bopts["batch_size"] = plan.offload.gpu_batch_size * plan.offload.num_gpu_batches
            policy = BATCHING_POLICIES[pname](**bopts)
            eng = engine_cls(
                env, r, table, cost, policy, kv, cfg, tbt, log, next_arrival, links,
                on_prefilled if role == "prefill" else None, tracer, replica=rep, stages=stages, engine_id=v,
                offload=executor,
            )
            if cache is not None:
                cache.on_demote = eng.demote_traffic
        replicas.append(rep)
    g0 = groups[0]
    mem, cost, gpus_per_replica, swap_bytes = g0.mem, g0.cost, g0.gpus_per_replica, g0.swap_bytes
    front = replicas[:n_prefill] if disagg else replicas
    # a fleet's replicas hold different KV: a request goes to the replicas that can hold it
    front_caps = [groups[rep_group[g.index]].mem.num_blocks * plan.kv_cache.block_size for g in front]
    most_cap, least_cap = max(front_caps), min(front_caps)
    router = ROUTING_POLICIES[plan.routing]()
    max_tokens = bat.max_num_batched_tokens
    max_ctx = model.max_context

    def arrival_process():  # type: ignore[no-untyped-def]
        for k in range(len(order)):
            i = int(order[k])
            dt = arrivals[i] - env.now
            if dt > 0:
                yield env.timeout(dt)
            ptr[0] = k + 1
            total = int(table.input[i] + table.output[i])
            reason = None
            if total > max_ctx:
                reason = "exceeds_max_context"
            elif most_cap < (kv_need := total if kv_cap is None else min(total, kv_cap)):
                reason = "exceeds_kv_capacity"
            elif policy_name in ("continuous", "disaggregated") and table.input[i] > max_tokens:
                reason = "prompt_exceeds_token_budget"
            if reason is not None:
                table.reject(i, reason)
                continue
            fits = front if kv_need <= least_cap else [g for g, c in zip(front, front_caps, strict=True) if c >= kv_need]
            fits[router.choose(i, fits)].enqueue(i)

    env.process(arrival_process())
    if record_iterations:
        for g in replicas:
            for link in g.links.values():
                link.busy_log = []
    env.run()
    for g in replicas:
        for e in g.engines:
            if isinstance(e, FastEngine):
                e.sync()

    # KV utilisation, time-weighted: blocks in use integrated over the run by each replica's
    # block pool (shared by a replica's pipeline engines, so each block counts once)
    kv_tw = 0.0
    t_end = float(np.nanmax(table.finish)) if np.isfinite(table.finish).any() else 0.0
    if t_end > 0:
        kv_tw = sum(g.engines[0].kv.block_seconds(t_end) for g in replicas) / t_end / n_rep
    engines_all = [e for g in replicas for e in g.engines]
    busy = sum(e.busy_gpu_s for e in engines_all)
    n_units = gpus_per_replica * n_rep
    if use_cpu:
        price = node.price_per_hour
        idle_w, tdp_w, n_dev = node.cpu.tdp * 0.3, node.cpu.tdp, node.sockets
        busy = sum(e.busy_time for e in engines_all) * node.sockets
    elif fleet_sc is None:
        assert node.gpu is not None
        price = node.price_per_hour * n_units / max(node.num_gpus, 1)
        idle_w, tdp_w, n_dev = node.gpu.idle_watts, node.gpu.tdp, n_units
    else:
        # energy = sum over groups of (GPUs x idle W x makespan + (TDP - idle) x busy GPU-seconds),
        # written as one fleet-wide idle power and one busy power above idle
        n_units = n_dev = sum(g.gpus_per_replica * g.replicas for g in groups)
        price = sum(g.node.price_per_hour * (g.gpus_per_replica * g.replicas) / max(g.node.num_gpus, 1) for g in groups)
        g_busy = [sum(e.busy_gpu_s for r in replicas if rep_group[r.index] == k for e in r.engines) for k in range(len(groups))]
        idle_w = sum(g.node.gpu.idle_watts * g.gpus_per_replica * g.replicas for g in groups if g.node.gpu) / n_dev
        above = sum((g.node.gpu.tdp - g.node.gpu.idle_watts) * b for g, b in zip(groups, g_busy, strict=True) if g.node.gpu)
        tdp_w = idle_w + (above / busy if busy > 0 else 0.0)
    link_stats = {}
    for r in replicas:
        for k, link in r.links.items():
            st = link_stats.setdefault(k, {"bytes": 0.0, "busy_s": 0.0})
            st["bytes"] += link.bytes_moved
            st["busy_s"] += link.busy_time
    per_gpu = []
    span = float(summary_span(table))
    for g in replicas:
        gl = groups[rep_group[g.index]]
        local = g.index - sum(x.replicas for x in groups[: rep_group[g.index]])
        for k in range(layout.pp if not use_cpu else 1):
            comp = sum(e.stage_busy[k] for e in g.engines) if layout.pp > 1 else sum(e.stage_busy[0] for e in g.engines)
            comm = sum(e.stage_comm[k] for e in g.engines) if layout.pp > 1 else sum(e.stage_comm[0] for e in g.engines)
            per_gpu.append(
                {
                    "replica": g.index,
                    "stage": k,
                    "gpus": [gl.layout.gpu(local, k, t) for t in range(gl.layout.tp)] if not use_cpu else [],
                    "compute_s": comp - comm,
                    "comm_s": comm,
                    "idle_s": max(span - comp, 0.0),
                }
            )
    tot_busy = sum(x["compute_s"] + x["comm_s"] for x in per_gpu)
    resources: dict[str, dict[str, float]] = {}
    # compute: per GPU group (a replica's stage), averaged; the busiest group's utilisation too
    group_busy = [x["compute_s"] + x["comm_s"] for x in per_gpu] or [0.0]
    comp_busy = float(np.mean(group_busy))
    resources["compute"] = {
        "busy_s": comp_busy,
        "utilization": comp_busy / span if span > 0 else 0.0,
        "max_utilization": max(group_busy) / span if span > 0 else 0.0,
    }
    for k, v in link_stats.items():
        resources[k] = {
            "busy_s": v["busy_s"] / n_rep,
            "utilization": v["busy_s"] / n_rep / span if span > 0 else 0.0,
            "bytes": v["bytes"],
        }
    if executors and cpu_cost is not None:
        cb = sum(x.busy_cpu for x in executors)
        resources["cpu_attention"] = {"busy_s": cb, "utilization": cb / span if span > 0 else 0.0}
    # collectives (TP all-reduces, EP all-to-alls) occupy the GPUs' stream but are bound by the
    # link they cross: a resource of their own
    group_comm = [x["comm_s"] for x in per_gpu] or [0.0]
    if max(group_comm) > 0:
        resources["collectives"] = {
            "busy_s": float(np.mean(group_comm)),
            "utilization": float(np.mean(group_comm)) / span if span > 0 else 0.0,
            "max_utilization": max(group_comm) / span if span > 0 else 0.0,
            "link": _group_link(node, cross_tp)[2],
        }
    bottleneck = bottleneck_of(resources, [x["compute_s"] for x in per_gpu], group_comm)
    extra = {
        "resources": resources,
        "bottleneck": bottleneck,
        "offload_bytes": {k: sum((x.bytes_by_kind or {}).get(k, 0.0) for x in executors) for k in ("weights", "kv_read", "kv_write", "act_read", "act_write")} if executors else {},
        "offload_compute_s": {k: sum((x.compute_parts or {}).get(k, 0.0) for x in executors) / n_rep for k in COMPUTE_PARTS} if executors else {},
        "per_gpu": per_gpu,
        "expert_group_shares": group_shares,
        "collective_share": sum(x["comm_s"] for x in per_gpu) / tot_busy if tot_busy > 0 else 0.0,
        "engine_path": engine_path,
        "model": model.name,
        "hardware": node.name,
        "device": device.name,
        "calibration": cal_info,
        "policy": policy_name,
        "replicas": n_rep,
        "tp": tp,
        "pp": par.pp,
        "gpus": n_units if not use_cpu else 0,
        "kv_blocks_per_replica": mem.num_blocks,
        "weights_bytes_per_gpu": mem.weights_per_gpu,
        "measured_links": sorted(k for k in link_meas if not k.endswith("_pageable")),
        "link_bytes": {k: v["bytes"] for k, v in link_stats.items()},
        "link_busy_s": {k: v["busy_s"] for k, v in link_stats.items()},
        "seed": sc.seed,
        "trace_bad_lines": int(bad_lines),
    }
    kv_total = mem.num_blocks * n_rep
    kv_peak = max(g.engines[0].kv.peak for g in replicas) * n_rep
    if fleet_sc is not None:
        kv_total = sum(g.mem.num_blocks * g.replicas for g in groups)
        kv_peak = sum(max(r.engines[0].kv.peak for r in replicas if rep_group[r.index] == k) * g.replicas for k, g in enumerate(groups))
        for key, val in (("hardware", "+".join(dict.fromkeys(g.node.name for g in groups))),
                         ("device", "+".join(dict.fromkeys(g.device.name for g in groups))),
                         ("tp", tp), ("kv_blocks_per_replica", mem.num_blocks), ("weights_bytes_per_gpu", mem.weights_per_gpu)):
            extra[key] = val if key in ("hardware", "device") or all(
                val == {"tp": g.gpus_per_replica, "kv_blocks_per_replica": g.mem.num_blocks, "weights_bytes_per_gpu": g.mem.weights_per_gpu}[key]
                for g in groups) else None
        served = np.bincount(np.asarray([rep_group[x] for x in table.replica[np.isfinite(table.finish)]], dtype=np.int64),
                             minlength=len(groups))
        if len(groups) > 1:
            extra["calibration"] = "; ".join(f"{g.gpu}: {g.cal_info}" for g in groups)
        extra["fleet_groups"] = [
            {
                "gpu": g.gpu,
                "replicas": g.replicas,
                "tp": g.gpus_per_replica,
                "device": g.device.name,
                "calibration": g.cal_info,
                "kv_blocks_per_replica": g.mem.num_blocks,
                "cost_per_hour_usd": g.node.price_per_hour * (g.gpus_per_replica * g.replicas) / max(g.node.num_gpus, 1),
                "requests_completed": int(served[k]),
            }
            for k, g in enumerate(groups)
        ]
    summary = summarize(table, tbt, CostInputs(price, n_dev, idle_w, tdp_w, busy, kv_total, kv_tw * n_rep, kv_peak), sc.slo, extra)
    warn.extend(run_warnings(summary))
    longest_by = {c: max(e.max_context[c] for e in engines_all) for c in ("attn_prefill", "attn_decode")}
    summary["max_context_tokens"] = max(longest_by.values())
    for cls, top in sorted({k: v for g in reversed(groups) for k, v in measured_context(g.eff).items()}.items()):
        longest = longest_by[cls]
        if longest > top:
            warn.append(
                f"sequences attended up to {longest} tokens, beyond the {int(top)} tokens per sequence the calibration "
                f"profile measured for {cls}: its time there is extrapolated by the fitted model"
            )
    if fleet_sc is None:
        memory = account_memory(node, mem, off_mem, tiers, n_rep, gpus_per_replica, use_cpu, pc, swap_bytes, replicas)
    else:
        memory = _fleet_memory(groups, pc, rep_group, replicas)
    summary["memory"] = memory
    events = None
    if tracer is not None:
        events = list(tracer.events)
        for r in replicas:
            for k, link in r.links.items():
                for s0, s1, tag, nb in link.intervals or []:
                    events.append({"name": tag or k, "ph": "X", "pid": r.index, "tid": link.name, "ts": s0 * 1e6, "dur": (s1 - s0) * 1e6, "args": {"bytes": nb}})
    link_busy = [(g.index, k, s0, s1) for g in replicas for k, link in g.links.items() for s0, s1 in link.busy_log or []]
    return Result(scenario, summary, table, log.rows, memory, warn, events,  # memory: per tier, by owner
                  time.perf_counter() - wall0, calibration_provenance(sc, eff, cal_info), link_busy)


def bottleneck_of(resources: dict[str, dict[str, float]], group_kernels: list[float], group_comm: list[float]) -> str | None:
    """The resource that bounds the run: the one busy longest. Compute counts the busiest GPU
    group's kernel time without its collectives, ``collectives`` the busiest group's time in
    collectives (bound by the link they cross), a link direction or the CPU attention stream
    its busy seconds (docs/metrics.md)."""
    busy = {k: v["busy_s"] for k, v in resources.items() if k not in ("compute", "collectives")}
    if "compute" in resources:
        busy["compute"] = max(group_kernels, default=0.0)
    if "collectives" in resources:
        busy["collectives"] = max(group_comm, default=0.0)
    return max(busy, key=lambda k: busy[k]) if busy else None


_MEASURED_CONTEXT: dict[str, dict[str, float]] = {}


def measured_context(eff: Any) -> dict[str, float]:
    """The longest context per sequence (tokens attended) a calibration profile measured, per
    attention class it measured (``attn_decode``, ``attn_prefill``); {} for datasheet models.
    Read from the profile's samples (its ``ctx`` column sums the batch's contexts)."""
    import csv

    path = getattr(eff, "path", None)
    classes = [c for c in ("attn_decode", "attn_prefill") if eff.is_measured(c)]
    if path is None or not classes:
        return {}
    f = Path(path).parent / "samples.csv"
    key = str(f)
    if key not in _MEASURED_CONTEXT:
        out: dict[str, float] = {}
        try:
            with open(f, encoding="utf-8", newline="") as fh:
                for row in csv.DictReader(fh):
                    c = row.get("op_class")
                    if c in classes and row.get("ctx") and row.get("batch"):
                        out[c] = max(out.get(c, 0.0), float(row["ctx"]) / max(float(row["batch"]), 1.0))
        except (OSError, ValueError, UnicodeDecodeError):
            out = {}
        _MEASURED_CONTEXT[key] = out
    return _MEASURED_CONTEXT[key]


def run_warnings(summary: dict[str, Any]) -> list[str]:
    """What a reader of the summary must not miss: rejected requests and an overloaded run."""
    out = []
    if summary["requests_rejected"]:
        why = ", ".join(f"{k} {v}" for k, v in summary["rejection_reasons"].items())
        out.append(
            f"{summary['requests_rejected']} of {summary['requests_total']} requests were rejected ({why}); "
            "they count as missing the SLO (requests table: reject_reason)"
        )
    if summary["overloaded"]:
        out.append(
            f"the run is overloaded: the wait for admission grows by {summary['queue_growth']:.2f} s and the time in "
            f"the system by {summary['e2e_growth']:.2f} s per second of arrivals (more requests arrive than the deployment serves, so the backlog grows without bound and "
            "latency percentiles depend on how long the trace is); add capacity or lower the rate"
        )
    return out


def account_memory(node, mem, off_mem, tiers, n_rep, gpus_per_replica, use_cpu, pc, swap_bytes, replicas):  # type: ignore[no-untyped-def]
    """Every tier as a MemoryPool holding each owner's bytes (whole deployment), as summary.json's
    ``memory``: {tier: {capacity_bytes, used_bytes, peak_bytes, by_owner}}. Raises CapacityError
    if an allocation does not fit (the plan checks should have caught it first)."""
    from simkit.engine.resources import MemoryPool

    pools: dict[str, MemoryPool] = {}
    for name, tier in tiers.items():
        cap = tier.capacity * (node.num_gpus * node.num_nodes if name == "hbm" else node.num_nodes)
        pools[name] = MemoryPool(name, cap)
    dev = "dram" if use_cpu else "hbm"
    n_dev = n_rep * (1 if use_cpu else gpus_per_replica)
    if off_mem is None:
        pools[dev].alloc("weights", mem.weights_per_gpu * n_dev)
        pools[dev].alloc("activations and workspace", mem.activations_per_gpu * n_dev)
        pools[dev].alloc("kv cache", mem.num_blocks * mem.block_bytes * n_dev)
    else:
        for tier, owners in off_mem.need.items():
            for owner, nbytes in owners.items():
                pools[tier].alloc(owner, nbytes * n_rep)
    if not use_cpu and "dram" in pools and swap_bytes and any(e.cfg.preemption == "swap" for g in replicas for e in g.engines):
        pools["dram"].alloc("kv swap space", swap_bytes * n_rep)
    if pc.enabled:
        for g in replicas:
            cache = g.engines[0].kv.cache
            if cache is None:
                continue
            per_hash = cache.blocks_per_hash * mem.block_bytes * gpus_per_replica
            for tier, n in cache.capacity.items():
                if tier in pools:
                    pools[tier].alloc("prefix cache", n * per_hash)
    return {
        name: {
            "capacity_bytes": p.capacity,
            "used_bytes": p.used,
            "by_owner": {k: v for k, v in p.used_by.items() if v > 0},
        }
        for name, p in pools.items()
    }


def summary_span(table: RequestTable) -> float:
    done = np.isfinite(table.finish)
    if not done.any():
        return 0.0
    return float(np.nanmax(table.finish) - table.arrival.min())


def calibration_provenance(sc: Scenario, eff: Any, description: str) -> dict[str, Any]:
    """What provenance.json records of the calibration: the scenario's setting, the description
    summary.json carries, and for a profile its name, file and measured fidelity per operator
    class (in-sample fit error and, where the profile has it, the leave-one-model-out errors that
    docs/fidelity.md tabulates), as fractions."""
    out: dict[str, Any] = {"setting": sc.calibration, "description": description, "profile": None, "path": None, "fidelity": {}}
    models = getattr(eff, "models", None)
    if not isinstance(models, dict) or not hasattr(eff, "cross_validation"):
        return out
    out["profile"] = getattr(eff, "name", None)
    path = getattr(eff, "path", None)
    out["path"] = str(Path(path).resolve()) if path is not None else None
    for cls, cm in models.items():
        entry: dict[str, Any] = {"fit_error": dict(getattr(cm, "fit_error", {}) or {})}
        cv = (eff.cross_validation or {}).get(cls) or {}
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


_PATH_KEYS = (("workload", "trace", "path"), ("workload", "synthetic", "lengths", "trace", "path"))


def _unit_suffix(ann: Any) -> str | None:
    """" B" or " s" for a size or duration field type (they must be written with a unit)."""
    from typing import Annotated, Union, get_args, get_origin

    from simkit.specs.base import Bytes, Seconds

    origin = get_origin(ann)
    if origin is Annotated:
        meta = get_args(ann)[1:]
        if any(m is Bytes.__metadata__[0] for m in meta):
            return " B"
        if any(m is Seconds.__metadata__[0] for m in meta):
            return " s"
        return None
    if origin is Union or type(ann).__name__ == "UnionType":
        for a in get_args(ann):
            u = _unit_suffix(a)
            if u:
                return u
    return None


def _plain(value: Any, ann: Any) -> Any:
    """A validated scenario object as plain YAML data that validates back to the same object:
    None fields left out, sizes and durations written with their unit (repr keeps every digit)."""
    from typing import Annotated, get_args, get_origin

    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        out = {}
        for name, f in type(value).model_fields.items():
            v = getattr(value, name)
            if v is None:
                continue
            fa = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
            out[name] = _plain(v, fa)
        return out
    if isinstance(value, dict):
        inner = get_args(ann)[1] if get_origin(ann) is dict else None
        if get_origin(ann) is Annotated:
            base = get_args(ann)[0]
            inner = get_args(base)[1] if get_origin(base) is dict else None
        return {k: _plain(v, inner) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, None) for v in value]
    unit = _unit_suffix(ann) if ann is not None else None
    if unit and isinstance(value, int | float) and not isinstance(value, bool):
        return f"{float(value)!r}{unit}"
    return value


def resolved_scenario_data(sc: Scenario, out_dir: str | Path) -> dict[str, Any]:
    """The scenario with every default filled in (overrides already applied), as plain data a
    file in ``out_dir`` can hold: trace and calibration paths are rewritten relative to
    ``out_dir`` (they resolve against the scenario file's folder), a model file path becomes
    absolute (model paths resolve against the working directory)."""
    import os

    data = _plain(sc, type(sc))
    data["hardware"] = sc.raw_data().get("hardware", data["hardware"])
    base = Path(out_dir).resolve()

    def rel(p: str) -> str:
        return os.path.relpath(sc.resolve_path(p).resolve(), base)

    for keys in _PATH_KEYS:
        node: Any = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and keys[-1] in node:
            node[keys[-1]] = rel(node[keys[-1]])
    if data.get("calibration") not in ("auto", "none"):
        data["calibration"] = rel(data["calibration"])
    m = data["model"]
    if m.endswith((".json", ".yaml", ".yml")) or Path(m).is_dir():
        data["model"] = str(Path(m).resolve())
    return data


def write_outputs(
    result: Result, out_dir: str | Path, trace_out: str | Path | None = None, command: str | None = None
) -> list[Path]:
    """A run folder: summary.json (deterministic), requests.parquet, iterations.parquet,
    scenario.yaml (the resolved scenario; ``simkit run DIR/scenario.yaml`` reproduces
    summary.json), provenance.json (version, time, command, calibration, wall time), and a
    Chrome trace when asked. ``command`` is the command line that made the run, if any."""
    import datetime
    import json
    import shlex

    import yaml

    from simkit import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    p = out / "summary.json"
    p.write_text(json.dumps(_jsonable(result.summary), indent=2, sort_keys=True) + "\n")
    paths.append(p)
    from simkit.metrics import requests_columns

    p = out / "requests.parquet"
    _write_parquet(requests_columns(result.table), p)
    paths.append(p)
    p = out / "iterations.parquet"
    _write_parquet(iteration_columns(result.iterations), p)
    paths.append(p)
    p = out / "links.parquet"
    _write_parquet(link_columns(result.link_busy), p)
    paths.append(p)
    p = out / "scenario.yaml"
    src = result.scenario.source or "(built in Python)"
    header = (f"# resolved scenario written by simkit {__version__} from {src}, every default filled in;\n"
              f"# reproduce: simkit run {shlex.quote(str(p))}\n")
    p.write_text(header + yaml.safe_dump(resolved_scenario_data(result.scenario, out), sort_keys=False, allow_unicode=True))
    paths.append(p)
    prov = {
        "simkit_version": __version__,
        "created_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "reproduce": f"simkit run {shlex.quote(str(p))} --out {shlex.quote(str(out))}",
        "scenario_source": result.scenario.source,
        "calibration": result.calibration,
        "sim_wall_s": result.sim_wall_s,
        "warnings": list(result.warnings),
    }
    p = out / "provenance.json"
    p.write_text(json.dumps(_jsonable(prov), indent=2) + "\n")
    paths.append(p)
    if trace_out is not None and result.trace_events is not None:
        tp = Path(trace_out)
        tp.parent.mkdir(parents=True, exist_ok=True)
        tp.write_text(json.dumps({"traceEvents": result.trace_events, "displayTimeUnit": "ms"}))
        paths.append(tp)
    return paths


def iteration_columns(rows: list[tuple[Any, ...]]) -> dict[str, np.ndarray]:
    """The per-iteration table's columns (iterations.parquet), typed like the table pandas
    infers from the rows (int64 counts, float64 times)."""
    cols: dict[str, np.ndarray] = {}
    for k, name in enumerate(IterationLog.COLS):
        kind = np.float64 if name.endswith("_s") else np.int64
        cols[name] = np.fromiter((r[k] for r in rows), dtype=kind, count=len(rows))
    return cols


def link_columns(rows: list[tuple[int, str, float, float]]) -> dict[str, np.ndarray]:
    """links.parquet's columns: replica, link, start_s, end_s of every busy period."""
    return {
        "replica": np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
        "link": np.array([r[1] for r in rows], dtype=object),
        "start_s": np.fromiter((r[2] for r in rows), dtype=np.float64, count=len(rows)),
        "end_s": np.fromiter((r[3] for r in rows), dtype=np.float64, count=len(rows)),
    }


def _write_parquet(columns: dict[str, np.ndarray], path: Path) -> None:
    """A table of numpy columns as Parquet, with pyarrow alone: arrays are built from their
    buffers (pyarrow's converters import pandas to look for frames). NaN floats are written as
    nulls, as pandas' writer does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = []
    for v in columns.values():
        v = np.ascontiguousarray(v)
        valid = None
        nulls = 0
        if v.dtype.kind in "OU":
            # strings (large_string, as pandas writes them): offsets into their UTF-8 bytes
            enc = [str(x).encode() for x in v.tolist()]
            offsets = np.zeros(len(enc) + 1, dtype=np.int64)
            np.cumsum([len(x) for x in enc], out=offsets[1:])
            buffers = [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(enc))]
            arrays.append(pa.Array.from_buffers(pa.large_string(), len(v), buffers))
            continue
        if v.dtype == np.bool_:
            typ, data = pa.bool_(), np.packbits(v, bitorder="little")
        else:
            typ, data = pa.from_numpy_dtype(v.dtype), v
            if v.dtype.kind == "f":
                nan = np.isnan(v)
                nulls = int(nan.sum())
                if nulls:
                    valid = pa.py_buffer(np.packbits(~nan, bitorder="little"))
        arrays.append(pa.Array.from_buffers(typ, len(v), [valid, pa.py_buffer(data)], null_count=nulls))
    pq.write_table(pa.Table.from_arrays(arrays, names=list(columns)), path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float | np.floating):
        v = float(x)
        return None if not np.isfinite(v) else v
    if isinstance(x, np.integer):
        return int(x)
    return x
