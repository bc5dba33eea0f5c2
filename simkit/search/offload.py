"""The offload placement search: the placement optimiser's LP (policies/offload_opt.py) run for a
scenario's model, node and workload shape, its best candidates confirmed by simulating them.
``simkit offload-plan`` and the plan search's ``offload: optimized`` call :func:`optimize`."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from simkit.cost.device import ComputeDevice
from simkit.cost.iteration import IterationModel
from simkit.cost.ops import Precision
from simkit.errors import ScenarioError
from simkit.policies.batching import with_policy
from simkit.policies.offload import offload_gpu_usable, static_kv_blocks
from simkit.policies.offload_opt import Candidate, solve_candidate
from simkit.scenario import Scenario, apply_overrides, scenario_from_dict


def compression_choices(sc: Scenario) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
    """The 4-bit compressions the placement search may choose for a scenario, weights and KV
    cache: (False, True) where the scenario's ``plan.offload`` enables it (the user accepts the
    quality trade), else (False,): 16-bit values as ``plan.precision`` says."""
    off = sc.plan.offload
    return ((False, True) if off.compress_weights else (False,)), ((False, True) if off.compress_kv else (False,))


def workload_batch_limit(sc: Scenario) -> int | None:
    """The largest batch a plan for this scenario can fill: a fixed batch's ``num_prompts``
    (None for arrival-driven workloads, whose prompts keep coming)."""
    return sc.workload.batch.num_prompts if sc.workload.batch is not None else None


def optimize(
    sc: Scenario,
    *,
    prompt_len: int | None = None,
    gen_len: int | None = None,
    objective: str = "throughput",
    top: int = 5,
    confirm: int = 3,
    gpu_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128),
    num_gpu_batches: tuple[int, ...] = (1, 2, 4, 8, 16),
    compress: tuple[bool, ...] | None = None,
    compress_kv: tuple[bool, ...] | None = None,
    max_batch: int | None = None,
) -> list[Candidate]:
    """Rank offload plans for the scenario's model and node; simulate the best ``confirm``.
    ``compress`` lists the choices of 4-bit weight compression the search may take,
    ``compress_kv`` those of 4-bit KV-cache compression (FlexGen's --compress-cache). By default
    (None) they are what the scenario allows: a quality trade is searched only where the scenario's
    ``plan.offload.compress_weights`` / ``compress_kv`` is true, else the plans keep
    ``plan.precision``'s 16-bit weights and KV cache (:func:`compression_choices`). A compressed
    KV cache is attended on the GPU (dequantised there): FlexGen's compressed-cache policies do
    not attend on the CPU, so CPU attention is searched with a 16-bit cache only. ``max_batch``
    drops the plans whose batch (``gbs x ngb`` sequences) is larger (a workload of that many
    prompts cannot fill them: :func:`workload_batch_limit`)."""
    from simkit.deployment import calibrated_device, check_host_temporaries
    from simkit.specs.catalog import load_model
    from simkit.specs.node import resolve_node

    if compress is None or compress_kv is None:
        allowed = compression_choices(sc)
        compress = allowed[0] if compress is None else compress
        compress_kv = allowed[1] if compress_kv is None else compress_kv
    node = resolve_node(sc.hardware, where=sc.source)
    model = load_model(sc.model, where=sc.source)
    if node.gpu is None:
        raise ScenarioError("the placement optimiser plans GPU offloading; this node has no GPU", where=sc.source, key="hardware")
    if prompt_len is None or gen_len is None:
        w = sc.workload
        if w.batch is None:
            from simkit.deployment import build_workload

            reqs = build_workload(sc)
            prompt_len = prompt_len or int(np.mean(reqs.input_tokens))
            gen_len = gen_len or int(np.mean(reqs.output_tokens))
        else:
            prompt_len = prompt_len or w.batch.input_tokens
            gen_len = gen_len or w.batch.output_tokens
    if prompt_len + gen_len > model.max_context:  # the engine would reject every such request
        raise ScenarioError(f"{prompt_len} prompt + {gen_len} generated tokens exceed {model.name}'s context of "
                            f"{model.max_context} tokens", where=sc.source, key="prompt_len + gen_len")
    precision = sc.plan.precision
    prec = Precision(precision.weights, precision.activations, precision.kv_cache, precision.group_size)
    dev = ComputeDevice.from_gpu(node.gpu)
    dev, eff, _, _ = calibrated_device(sc, dev, node)
    cost = IterationModel(model, dev, eff, prec)
    cdev = ComputeDevice.from_cpu(node.cpu, node.dram, node.sockets, node.dram_capacity)
    cdev, ceff, _, _ = calibrated_device(sc, cdev, node)
    cpu_cost = IterationModel(model, cdev, ceff, prec)
    from simkit.cost.links import measured_links
    from simkit.cost.offload import offload_compute

    if sc.plan.offload.host_kv_dtype != "kv_cache":
        raise ScenarioError(
            "the placement optimiser plans host KV caches in plan.precision.kv_cache; "
            "simulate an fp32 host cache (host_kv_dtype: fp32) as an explicit plan.offload",
            where=sc.source,
            key="plan.offload.host_kv_dtype",
        )
    check_host_temporaries(sc, node, need_cpu_attention=False)
    oc = offload_compute(node, cost, cpu_cost, False)
    lm = measured_links(eff, sc.plan.offload.io_block_size, sc.plan.offload.io_queue_depth)
    # the candidates run as static batches (confirm_by_simulation): the same memory rule
    usable = offload_gpu_usable(node.gpu.memory, sc.plan.kv_cache, True, sc.plan.execution.cuda_module_loading)[0]
    cands: list[Candidate] = []
    for gbs, ngb, catt, comp, ckv in itertools.product(gpu_batch_sizes, num_gpu_batches, (False, True), compress, compress_kv):
        if (objective == "latency" and ngb > 1) or (catt and ckv) or (max_batch is not None and gbs * ngb > max_batch):
            continue
        c = solve_candidate(
            model, node, cost, cpu_cost, prec, prompt_len, gen_len, gbs, ngb, catt, comp, usable, oc, lm, sc.plan.offload.dequant,
            sc.plan.offload.decode_overlap, ckv, sc.plan.kv_cache.block_size,
            sc.plan.kv_cache.activation_reserve, sc.plan.offload.kv_dequant, sc.plan.kv_cache.watermark,
            sc.plan.offload.lm_head_copy, sc.plan.offload.host_temporaries, sc.plan.offload.disk_relay,
        )
        if c is not None:
            cands.append(c)
    if not cands:
        raise ScenarioError(
            f"no offload plan fits {model.name} on {node.name} for prompts of {prompt_len} and {gen_len} generated tokens"
            + (f" in a batch of at most {max_batch} sequences" if max_batch is not None else ""),
            where=sc.source,
            key="plan.offload",
        )
    if objective == "latency":
        cands.sort(key=lambda c: (c.lp_time_s / c.num_gpu_batches, -c.lp_throughput))
    else:
        cands.sort(key=lambda c: -c.lp_throughput)
    best = cands[:top]
    for c in best[:confirm]:
        c.sim = confirm_by_simulation(sc, c, prompt_len, gen_len)
    # confirmed plans first, ranked by what the simulation saw; then the rest by the LP
    ok = [c for c in best if c.sim.get("output_tokens_per_s")]
    key = (lambda c: c.sim["makespan_s"]) if objective == "latency" else (lambda c: -c.sim["output_tokens_per_s"])
    ok.sort(key=key)
    return ok + [c for c in best if c not in ok]


def confirm_by_simulation(sc: Scenario, c: Candidate, prompt_len: int, gen_len: int) -> dict[str, Any]:
    from simkit.errors import SimkitError
    from simkit.simulate import simulate

    data = sc.raw_data()
    data["workload"] = {"batch": {"num_prompts": c.batch, "input_tokens": prompt_len, "output_tokens": gen_len}}
    batching = with_policy((data.get("plan") or {}).get("batching") or {}, "static", {"batch_size": c.batch})
    data = apply_overrides(data, {"plan.offload": c.offload_dict(), "plan.batching": batching})
    try:
        res = simulate(scenario_from_dict(data, where=sc.source))
    except SimkitError as e:
        return {"error": str(e)}
    s = res.summary
    kvp = sc.plan.kv_cache
    need = static_kv_blocks(c.batch, prompt_len, gen_len, kvp.block_size, kvp.watermark)
    if s["kv_blocks_total"] < need:
        # the simulation ran the batch in several static waves: not the plan the LP ranked
        return {"error": f"KV cache of {s['kv_blocks_total']} blocks; the batch of {c.batch} needs {need} to run at once "
                         f"(with the {kvp.watermark:g} watermark); it would run in several waves: not confirmed"}
    return {
        "output_tokens_per_s": s["output_tokens_per_s"],
        "makespan_s": s["makespan_s"],
        "bottleneck": s["bottleneck"],
        "utilization": {k: v["utilization"] for k, v in s["resources"].items()},
        "busy_s": {k: v["busy_s"] for k, v in s["resources"].items()},
        "offload_compute_s": s.get("offload_compute_s", {}),
    }
