"""A finished run -> summary.json: throughput, latency and cost metrics (:func:`simkit.metrics.summarize`)
plus what the deployment was and how its resources were used (per-GPU busy time, link and
collective utilisation, the bottleneck, memory by tier and owner), and the warnings a reader must
not miss. Definitions in docs/metrics.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simkit.cost.efficiency import EfficiencyModel
from simkit.cost.links import group_link
from simkit.deployment import Deployment, Group
from simkit.engine.cluster import Cluster
from simkit.engine.replica import Replica
from simkit.metrics import OVERLOAD_GROWTH, CostInputs, run_makespan, run_window, summarize

if TYPE_CHECKING:
    from simkit.engine.offload import OffloadExecutor


def summarize_run(
    dep: Deployment, cluster: Cluster, executors: list[OffloadExecutor]
) -> tuple[dict[str, Any], list[str], list[dict[str, Any]] | None, list[tuple[int, str, float, float]]]:
    """(summary.json, the deployment's and the run's warnings, the Chrome-trace events or None,
    every link direction's busy periods as (replica, link, start_s, end_s))."""
    table, tbt, replicas, tracer = cluster.table, cluster.tbt, cluster.replicas, cluster.tracer
    sc = dep.sc
    plan = sc.plan
    par = plan.parallel
    pc = plan.prefix_cache
    groups, rep_group, n_rep, use_cpu = dep.groups, dep.rep_group, dep.n_rep, dep.use_cpu
    g0 = groups[0]
    node, layout, device, mem = g0.node, g0.layout, g0.device, g0.mem
    gpus_per_replica, swap_bytes, link_meas, cal_info = g0.gpus_per_replica, g0.swap_bytes, g0.link_meas, g0.cal_info
    tp = par.tp
    tiers = node.tiers()
    policy_name = plan.batching.policy
    model, engine_path, group_shares, cross_tp = dep.model, dep.engine_path, dep.group_shares, dep.cross_tp
    cpu_cost, off_mem = dep.cpu_cost, dep.off_mem
    if executors:  # an offloaded run's (a plain run does not import engine.offload)
        from simkit.engine.offload import COMPUTE_PARTS
    bad_lines = (dep.reqs.meta.get("bad_lines") or {}).get("count", 0)
    warn = list(dep.warnings)

    # KV utilisation, time-weighted: blocks in use integrated over the run by each replica's
    # block pool (shared by a replica's pipeline engines, so each block counts once)
    kv_tw = 0.0
    t0, t_end = run_window(table)
    if t_end > t0:  # from t = 0 to the last finish (docs/metrics.md)
        kv_tw = sum(g.engines[0].kv.block_seconds(t_end) for g in replicas) / t_end / n_rep
    engines_all = [e for g in replicas for e in g.engines]
    busy = sum(e.busy_gpu_s for e in engines_all)
    n_units = gpus_per_replica * n_rep
    if use_cpu:
        price = node.price_per_hour
        idle_w, tdp_w, n_dev = node.cpu.tdp * 0.3, node.cpu.tdp, node.sockets
        busy = sum(e.busy_time for e in engines_all) * node.sockets
    elif not dep.fleet:
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
    span = run_makespan(table)
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
            "link": group_link(node, cross_tp)[2],
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
    if dep.fleet:
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
    warn.extend(swap_warnings(engines_all, summary["preemptions"]))
    longest_by = {c: max(e.max_context[c] for e in engines_all) for c in ("attn_prefill", "attn_decode")}
    summary["max_context_tokens"] = max(longest_by.values())
    for cls, top in sorted({k: v for g in reversed(groups) for k, v in measured_context(g.eff).items()}.items()):
        longest = longest_by[cls]
        if longest > top:
            warn.append(
                f"sequences attended up to {longest} tokens, beyond the {int(top)} tokens per sequence the calibration "
                f"profile measured for {cls}: its time there is extrapolated by the fitted model"
            )
    if not dep.fleet:
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
    return summary, warn, events, link_busy


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


def measured_context(eff: EfficiencyModel) -> dict[str, float]:
    """The longest context per sequence (tokens attended) a calibration profile measured, per
    attention class it measured (``attn_decode``, ``attn_prefill``); {} for datasheet models.
    Read from the profile's samples (its ``ctx`` column sums the batch's contexts)."""
    import csv

    path = eff.path
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
    if summary["overloaded"] and summary["queue_growth"] > OVERLOAD_GROWTH:
        # the time in the system can shrink while the wait grows (the later requests are served
        # faster once admitted, e.g. a warmer prefix cache): say so instead of "grows by -0.21 s"
        q = f"the wait for admission grows by {summary['queue_growth']:.2f} s"
        grow = (f"{q} and the time in the system by {summary['e2e_growth']:.2f} s per second of arrivals" if summary["e2e_growth"] > 0 else
                f"{q} per second of arrivals and the time in the system does not ({summary['e2e_growth']:.2f} s: the later "
                "requests are served faster once admitted)")
        out.append(
            f"the run is overloaded: {grow} (more requests arrive than the deployment serves, so the backlog grows without bound and "
            "latency percentiles depend on how long the trace is); add capacity or lower the rate"
        )
    elif summary["overloaded"]:
        # only the time in the system grows: the running batch grows and its steps slow down,
        # which a backlog the batch absorbs and a rising arrival rate both do
        out.append(
            f"the run is overloaded: the time in the system grows by {summary['e2e_growth']:.2f} s per second of arrivals "
            f"while the wait for admission does not ({summary['queue_growth']:.2f} s): the running batch grows and its steps "
            "slow down. Either more requests arrive than the deployment serves (a backlog the batch absorbs before "
            "requests queue) or the arrival rate rises over the trace; a longer trace tells them apart (latency "
            "percentiles of this one depend on where it ends)"
        )
    return out


def swap_warnings(engines: list[Any], preemptions: int) -> list[str]:
    """A swap plan whose preemptions were (partly) recomputed instead: the setting did not take
    full effect, and the reader must know why."""
    refused: dict[str, int] = {}
    for e in engines:
        for why, n in e.swap_refused.items():
            refused[why] = refused.get(why, 0) + n
    if not refused:
        return []
    why = "; ".join(f"{n} because {k}" for k, n in sorted(refused.items()))
    return [
        f"plan.kv_cache.preemption is swap, but {sum(refused.values())} of {preemptions} preemptions recomputed "
        f"the request instead ({why}): a request holding shared prefix-cache blocks is always recomputed, and a "
        "full swap space (plan.kv_cache.swap_space) falls back to recompute"
    ]


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


def _fleet_memory(groups: list[Group], pc: Any, rep_group: list[int], replicas: list[Replica]) -> dict[str, Any]:
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

