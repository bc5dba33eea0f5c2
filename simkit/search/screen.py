"""Exact screening and optimistic bounds of one candidate, without simulating it.

Screening runs the simulator's own checks in the simulator's order (scenario validation, node
and model resolution, ``check_parallel``, ``plan_memory`` / ``check_offload_capacity``, policy
and routing names), so a candidate it rejects is one ``simulate`` would reject with the same
error. It never needs to be complete: whatever it lets through is simulated, and a simulation
error is recorded as that candidate's reason.

Bounds (docs/search.md derives them): every forward pass of a stage reads the stage's weights
from device memory; the roofline charges at least ``bytes / bandwidth`` for them (efficiencies
are clipped to <= 1), so one pass of one token through the whole model takes at least
``t_pass``, and a stage admits at most ``S`` sequences (one output token each) per pass of at
least ``t_stage``. With the workload fixed, the requests the engine will reject are known
exactly (too long for the context or the KV cache, or for the token budget). From these:

    makespan >= max(last admitted arrival + its output tokens x t_pass, total admitted output
                    tokens x t_stage / (replicas x S))  - first arrival
    every TTFT, TPOT and TBT >= t_pass

and every throughput-like metric is at most its admitted total over that makespan bound.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simkit.errors import SimkitError
from simkit.scenario import Scenario, apply_overrides, scenario_from_dict
from simkit.search.spec import SearchError

INF = math.inf


@dataclass
class Screened:
    ok: bool
    reason: str = ""
    category: str = ""
    data: dict[str, Any] | None = None
    """The candidate's complete scenario data (what is simulated and written as best.yaml)."""
    exact: dict[str, float] = field(default_factory=dict)
    """Metrics known exactly without simulating (cost per hour, GPUs, KV blocks, ...)."""
    lo: dict[str, float] = field(default_factory=dict)
    """Metric -> a value the simulation cannot go below."""
    hi: dict[str, float] = field(default_factory=dict)
    """Metric -> a value the simulation cannot exceed."""


class Screener:
    """Screens candidates of one search, caching what candidates share (nodes, models,
    calibrations, workloads)."""

    def __init__(self, where: str, cost_metrics: bool) -> None:
        self.where = where
        self.cost_metrics = cost_metrics
        self._nodes: dict[str, Any] = {}
        self._models: dict[str, Any] = {}
        self._cal: dict[tuple[str, str, str], Any] = {}
        self._work: dict[str, Any] = {}
        self._floor: dict[str, tuple[float, float]] = {}
        self._devices: dict[tuple[int, bool, str], tuple[Any, Any]] = {}
        self._offload: dict[str, Any] = {}
        self.unpriced: set[str] = set()

    # ---- cached resolution -------------------------------------------------------------------
    def _node(self, sc: Scenario) -> Any:
        from simkit.specs.node import resolve_node

        k = json.dumps(sc.hardware, sort_keys=True)
        if k not in self._nodes:
            try:
                self._nodes[k] = resolve_node(sc.hardware, where=sc.source)
            except SimkitError as e:
                self._nodes[k] = e
        v = self._nodes[k]
        if isinstance(v, SimkitError):
            raise v
        return v

    def _model(self, sc: Scenario) -> Any:
        from simkit.specs.catalog import load_model

        if sc.model not in self._models:
            try:
                self._models[sc.model] = load_model(sc.model, where=sc.source)
            except SimkitError as e:
                self._models[sc.model] = e
        v = self._models[sc.model]
        if isinstance(v, SimkitError):
            raise v
        return v

    def _calibration(self, sc: Scenario, device: Any) -> Any:
        from simkit.deployment import resolve_calibration

        k = (sc.calibration, device.kind, device.name)
        if k not in self._cal:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._cal[k] = resolve_calibration(sc, device)[0]
        return self._cal[k]

    def _workload(self, sc: Scenario, raw: Any) -> Any:
        from simkit.deployment import build_workload

        k = json.dumps([raw, sc.seed, sc.source], sort_keys=True)  # plain data: cheap to serialise
        if k not in self._work:
            reqs = build_workload(sc)
            self._work[k] = reqs
        return self._work[k]

    def offload_plan(self, data: dict[str, Any]) -> dict[str, Any]:
        """Overrides for the placement optimiser's best offload plan for this candidate
        (``offload: optimized``): its fractions, GPU batch and the static batch it runs. The best
        is what ``simkit offload-plan`` ranks first: of the linear program's three best plans,
        the fastest in simulation (the LP's estimate can be optimistic by tens of percent)."""
        from simkit.policies.batching import with_policy
        from simkit.search.offload import optimize, workload_batch_limit

        sc = scenario_from_dict(data, where=self.where)
        k = json.dumps([sc.hardware, sc.model, sc.plan.precision.model_dump(), sc.workload.model_dump(mode="json"),
                        sc.plan.kv_cache.gpu_memory_utilization, sc.calibration, sc.plan.offload.compress_weights,
                        sc.plan.offload.compress_kv], sort_keys=True)
        if k not in self._offload:
            try:
                best = optimize(sc, top=3, confirm=3, max_batch=workload_batch_limit(sc))[0]
                self._offload[k] = (best.offload_dict(), best.batch)
            except SimkitError as e:
                self._offload[k] = e
        v = self._offload[k]
        if isinstance(v, SimkitError):
            raise v
        offload, batch = v
        batching = (data.get("plan") or {}).get("batching") or {}
        return {"plan.offload": offload, "plan.batching": with_policy(batching, "static", {"batch_size": batch})}

    # ---- one candidate -----------------------------------------------------------------------
    def screen(self, base: dict[str, Any], overrides: dict[str, Any], offload: str | None = None) -> Screened:
        try:
            data = apply_overrides(base, overrides)
        except SimkitError as e:
            return Screened(False, e.message, "invalid scenario")
        if offload == "optimized":
            try:
                data = apply_overrides(data, self.offload_plan(data))
            except SimkitError as e:
                return Screened(False, f"no offload plan: {e.message}", "no offload plan", data)
        try:
            sc = scenario_from_dict(data, where=self.where)
        except SimkitError as e:
            return Screened(False, str(e.key or "") + ": " + e.message if e.key else e.message, "invalid scenario", data)
        try:
            return self._screen(sc, data)
        except SearchError:
            raise
        except SimkitError as e:
            cat = _category(e)
            return Screened(False, (f"{e.key}: " if e.key else "") + e.message, cat, data)

    def _screen_fleet(self, sc: Scenario, data: dict[str, Any]) -> Screened:
        """A ``plan.fleet`` candidate: each group screened as its own plan (memory fit, layout,
        names); exact cost and GPU counts summed. No bounds: the single-plan bounds do not cover a
        mix of speeds behind one router, so a fleet is never pruned by a bound, only simulated."""
        from simkit.deployment import fleet_scenarios

        assert sc.plan.fleet is not None
        exact: dict[str, float] = {"cost_per_hour_usd": 0.0, "gpus": 0, "replicas": 0}
        sub = Screened(False)
        for k, (grp, sc_k) in enumerate(zip(sc.plan.fleet, fleet_scenarios(sc), strict=True)):
            at = f"plan.fleet[{k}] ({grp.gpu})"
            try:
                sub = self._screen(sc_k, data)
            except SearchError:
                raise
            except SimkitError as e:
                return Screened(False, f"{at}: " + (f"{e.key}: " if e.key else "") + e.message, _category(e), data)
            if not sub.ok and sub.category != "rejects every request":  # another group may serve them
                return Screened(False, f"{at}: {sub.reason}", sub.category, data)
            for m in exact:
                exact[m] += sub.exact[m]
        exact["requests_total"] = sub.exact["requests_total"]
        exact["seed"] = sc.seed
        return Screened(True, "", "", data, exact)

    def _screen(self, sc: Scenario, data: dict[str, Any]) -> Screened:
        from simkit.cost.device import ComputeDevice
        from simkit.cost.ops import Precision
        from simkit.deployment import plan_admission, plan_replica_memory
        from simkit.errors import ScenarioError
        from simkit.policies.parallel import Layout, check_parallel

        if sc.plan.fleet is not None:
            return self._screen_fleet(sc, data)
        where = sc.source
        node = self._node(sc)
        model = self._model(sc)
        plan = sc.plan
        par = plan.parallel
        layout = check_parallel(model, node, par, where=where)
        offloaded = not plan.offload.is_trivial
        if offloaded and par.pp > 1:
            raise ScenarioError("offloading with pipeline parallelism (pp > 1) is not supported", where=where, key="plan.offload")
        use_cpu = plan.execution.device == "cpu" or node.gpu is None
        if use_cpu:
            if par.tp * par.pp * par.replicas > 1:
                raise ScenarioError("tensor/pipeline parallelism and replicas need GPUs", where=where, key="plan.parallel")
            layout = Layout(1, 1, 1, 1, (model.num_layers,), 0, 1)
        dk = (id(node), use_cpu, sc.calibration)
        if dk not in self._devices:
            if use_cpu:
                device = ComputeDevice.from_cpu(node.cpu, node.dram, node.sockets, node.dram_capacity)
            else:
                device = ComputeDevice.from_gpu(node.gpu)
            eff = self._calibration(sc, device)
            # the same device simulate() times against: the profile's roofline times the
            # scenario's what-if scales (ComputeDevice.for_profile)
            device = device.for_profile(eff, node.scale)
            self._devices[dk] = (device, eff)
        device, eff = self._devices[dk]
        pp_ = plan.precision
        prec = Precision(pp_.weights, pp_.activations, pp_.kv_cache, pp_.group_size)
        tp = par.tp
        num_blocks = plan_replica_memory(sc, model, node, device, eff, prec, layout, use_cpu)[0].num_blocks
        bat = plan.batching
        disagg = bat.policy == "disaggregated"
        n_rep = par.replicas
        if disagg and n_rep < 2:
            raise ScenarioError("disaggregated serving needs plan.parallel.replicas >= 2", where=where, key="plan.parallel.replicas")
        if disagg and bat.prefill_replicas >= n_rep:
            raise ScenarioError("plan.batching.prefill_replicas must be < plan.parallel.replicas", where=where, key="plan.batching.prefill_replicas")
        reqs = self._workload(sc, data.get("workload"))
        if plan.prefix_cache.enabled and reqs.prefix_block_tokens % plan.kv_cache.block_size:
            raise ScenarioError("prefix blocks must be a multiple of plan.kv_cache.block_size", where=where, key="plan.kv_cache.block_size")
        # ---- exact facts ----
        gpus_per_replica = tp * par.pp
        n_units = gpus_per_replica * n_rep
        if use_cpu:
            price = node.price_per_hour
            gpus = 0
        else:
            price = node.price_per_hour * n_units / max(node.num_gpus, 1)
            gpus = n_units
        if self.cost_metrics and price <= 0:
            self.unpriced.add(node.gpu.name if node.gpu is not None and not use_cpu else node.name)
        exact: dict[str, float] = {
            "cost_per_hour_usd": price,
            "gpus": gpus,
            "replicas": n_rep,
            "tp": tp,
            "pp": par.pp,
            "kv_blocks_per_replica": num_blocks,
            "kv_blocks_total": num_blocks * n_rep,
            "requests_total": len(reqs),
            "seed": sc.seed,
        }
        # ---- which requests the engine rejects on arrival (deployment.plan_admission) ----
        rejected = plan_admission(sc, model).rejections(reqs.input_tokens, reqs.output_tokens, num_blocks * plan.kv_cache.block_size) > 0
        adm = ~rejected
        exact["requests_rejected"] = int(rejected.sum())
        exact["requests_unfinished"] = 0  # the engine runs until no admitted request is left
        lo: dict[str, float] = {}
        hi: dict[str, float] = {}
        if not adm.any():
            return Screened(False, f"all {len(reqs)} requests are too long for this plan's context, KV cache or token budget",
                            "rejects every request", data, exact)
        # ---- bounds ----
        t_pass, t_stage = self._floors(model, device, prec, tp, par.ep, layout.layer_split)
        seqs = max(bat.max_num_seqs, (bat.batch_size if bat.policy == "static" else None) or 0)
        if offloaded and plan.offload.gpu_batch_size:
            seqs = max(seqs, plan.offload.gpu_batch_size * plan.offload.num_gpu_batches)
        arr = reqs.arrival_s
        t0 = float(arr.min())
        out = reqs.output_tokens[adm].astype(np.float64)
        inp = reqs.input_tokens[adm].astype(np.float64)
        out_total = float(out.sum())
        in_total = float(inp.sum())
        last = float((arr[adm] + out * t_pass).max()) - t0
        work = out_total * t_stage / (n_rep * seqs)
        mk = max(last, work, float(arr[adm].max()) - t0)
        n_adm = float(adm.sum())
        lo["makespan_s"] = mk
        for m in ("ttft", "tpot", "tbt", "e2e"):
            for p in (50, 90, 99):
                lo[f"{m}_p{p}_s"] = t_pass
        lo["ttft_mean_s"] = lo["tpot_mean_s"] = lo["tbt_max_s"] = t_pass
        hi["tokens_per_s_per_user"] = 1.0 / t_pass if t_pass > 0 else INF
        if mk > 0:
            tok = out_total / mk
            hi["output_tokens_per_s"] = hi["goodput_output_tokens_per_s"] = tok
            hi["total_tokens_per_s"] = (out_total + in_total) / mk
            hi["requests_per_s"] = hi["goodput_requests_per_s"] = n_adm / mk
            lo["cost_usd"] = price * mk / 3600.0
            lo["usd_per_million_output_tokens"] = price * mk / 3600.0 / out_total * 1e6 if out_total else INF
            if gpus:
                hi["output_tokens_per_s_per_gpu"] = hi["goodput_output_tokens_per_s_per_gpu"] = tok / gpus
            if price > 0:
                hi["output_tokens_per_usd"] = hi["goodput_output_tokens_per_usd"] = tok / price * 3600.0
        hi["output_tokens"] = out_total
        hi["input_tokens"] = in_total
        hi["requests_completed"] = n_adm
        hi["slo_attainment"] = 1.0
        return Screened(True, "", "", data, exact, lo, hi)

    def _floors(self, model: Any, device: Any, prec: Any, tp: int, ep: int, layer_split: tuple[int, ...]) -> tuple[float, float]:
        """(t_pass, t_stage): the least time one token's pass through the whole model, and
        through the most loaded stage, can take: the weight bytes every pass reads from device
        memory at the device's (calibrated) bandwidth. MoE expert weights are left out (a
        token reads only the experts it is routed to)."""
        from simkit.cost.iteration import NON_LAYER_OPS
        from simkit.cost.ops import token_ops

        k = json.dumps([model.name, device.name, device.mem_bandwidth, prec.weights, prec.group_size, tp, list(layer_split)])
        if k in self._floor:
            return self._floor[k]
        ops = token_ops(model, 1.0, 1.0, tp, prec)
        L = model.num_layers
        layer_b = 0.0
        head_b = 0.0
        for op in ops:
            if "expert" in op.name or "moe" in op.name or "router" in op.name:
                continue
            if op.name == "lm_head":
                head_b += op.weight_bytes * op.count
            elif op.name not in NON_LAYER_OPS:
                layer_b += op.weight_bytes * op.count
        bw = device.mem_bandwidth
        per_layer = layer_b / L / bw
        stages = [n * per_layer for n in layer_split]
        stages[-1] += head_b / bw
        out = (float(sum(stages)), float(max(stages)))
        self._floor[k] = out
        return out


def _category(e: SimkitError) -> str:
    from simkit.errors import CapacityError

    if isinstance(e, CapacityError):
        return "does not fit in memory"
    key = e.key or ""
    if key.startswith("plan.parallel"):
        return "invalid layout"
    if key.startswith("hardware"):
        return "invalid hardware"
    if key.startswith("plan.offload"):
        return "invalid offload plan"
    if key.startswith("plan"):
        return "invalid plan"
    return "invalid scenario"
