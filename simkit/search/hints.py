"""The serving-engine launch settings a simulated plan corresponds to, where they map: vLLM
``serve`` flags. A hint, not a guarantee (docs/search.md lists what maps and what does not).

A plan that computes on the CPU maps to vLLM's CPU backend, which sizes its KV cache with the
``VLLM_CPU_KVCACHE_SPACE`` environment variable (GiB) and has no GPU memory: no
``--gpu-memory-utilization``, ``--swap-space`` or ``--cpu-offload-gb`` for it."""

from __future__ import annotations

from simkit.scenario import Scenario

_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
GIB = 2**30


def computes_on_cpu(sc: Scenario) -> bool:
    """The plan runs its forward passes on the CPU (``plan.execution.device: cpu``, or a node
    without a GPU), as :func:`simkit.deployment.resolve_compute` decides."""
    if sc.plan.execution.device == "cpu":
        return True
    from simkit.specs.node import resolve_node

    try:
        return resolve_node(sc.hardware, where=sc.source).gpu is None
    except Exception:  # noqa: BLE001 - a hint must never fail the search
        return False


def cpu_kv_cache_gib(sc: Scenario) -> float | None:
    """The KV cache the simulated CPU plan holds (its blocks x block bytes), in GiB; None if it
    cannot be worked out."""
    try:
        from simkit.cost.device import ComputeDevice
        from simkit.cost.ops import Precision
        from simkit.deployment import plan_memory
        from simkit.specs.catalog import load_model
        from simkit.specs.node import resolve_node

        node = resolve_node(sc.hardware, where=sc.source)
        model = load_model(sc.model, where=sc.source)
        prec = sc.plan.precision
        pr = Precision(prec.weights, prec.activations, prec.kv_cache, prec.group_size)
        device = ComputeDevice.from_cpu(node.cpu, node.dram, node.sockets, node.dram_capacity)
        mem = plan_memory(sc, model, device, pr, 1, (model.num_layers,))
        return float(mem.num_blocks * mem.block_bytes / GIB)
    except Exception:  # noqa: BLE001 - a hint must never fail the search
        return None


def vllm_env(sc: Scenario) -> list[str]:
    """Environment settings the ``vllm serve`` line needs: for a CPU plan, the KV cache size
    (``VLLM_CPU_KVCACHE_SPACE``, whole GiB, at least 1)."""
    if not computes_on_cpu(sc):
        return []
    gib = cpu_kv_cache_gib(sc)
    return [f"VLLM_CPU_KVCACHE_SPACE={max(1, int(gib))}"] if gib is not None else []


def vllm_flags(sc: Scenario) -> tuple[list[str], list[str]]:
    """(flags, notes): ``vllm serve`` flags for the plan, and what has no vLLM equivalent."""
    p = sc.plan
    on_cpu = computes_on_cpu(sc)
    par, bat, prec, kv = p.parallel, p.batching, p.precision, p.kv_cache
    flags: list[str] = [f"--tensor-parallel-size {par.tp}", f"--pipeline-parallel-size {par.pp}"]
    notes: list[str] = []
    if p.fleet is not None:
        tps = {g.tp for g in p.fleet}
        flags = [f"--tensor-parallel-size {tps.pop()}"] if len(tps) == 1 else []
        groups = ", ".join(f"{g.replicas} x {g.gpu} (--tensor-parallel-size {g.tp})" for g in p.fleet)
        notes.append(f"a heterogeneous fleet: one vLLM server per replica ({groups}) behind a load balancer "
                     f"({p.routing} routing), each with the other flags shown")
    if par.replicas > 1:
        flags.append(f"--data-parallel-size {par.replicas}")
        notes.append(f"{par.replicas} replicas: --data-parallel-size (recent vLLM), or {par.replicas} servers behind a load balancer "
                     f"({p.routing} routing)")
    if par.ep > 1:
        flags.append("--enable-expert-parallel")
    seqs = bat.max_num_seqs
    if bat.policy == "static":  # the sequences a static batch runs at once (what the engine does)
        off_batch = p.offload.gpu_batch_size * p.offload.num_gpu_batches if p.offload.gpu_batch_size else None
        seqs = bat.batch_size or off_batch or seqs
    flags.append(f"--max-num-seqs {seqs}")
    if bat.policy == "chunked_prefill":
        flags.append("--enable-chunked-prefill")
        flags.append(f"--max-num-batched-tokens {min(bat.chunk_size, bat.max_num_batched_tokens)}")
    else:
        if bat.policy in ("continuous", "disaggregated"):
            flags.append("--no-enable-chunked-prefill")
        flags.append(f"--max-num-batched-tokens {bat.iteration_tokens()}")
    if bat.policy == "static":
        notes.append("static batching has no vLLM equivalent (vLLM batches continuously)")
    if bat.policy == "disaggregated":
        notes.append(f"disaggregated prefill ({bat.prefill_replicas} prefill replicas) needs vLLM's KV-transfer "
                     "connector setup (--kv-transfer-config); not expressed as a single flag")
    if prec.weights in _DTYPE:
        flags.append(f"--dtype {_DTYPE[prec.weights]}")
    elif prec.weights == "fp8":
        flags.append("--quantization fp8")
    elif prec.weights == "int4":
        flags.append("--dtype float16")
        notes.append(f"int4 weights (group size {prec.group_size}): serve an AWQ or GPTQ checkpoint (--quantization awq|gptq)")
    elif prec.weights == "int8":
        notes.append("int8 weights: serve a W8A8 (compressed-tensors) checkpoint")
    if prec.kv_cache in ("fp8", "int8"):
        flags.append("--kv-cache-dtype fp8")
    if prec.kv_cache == "int4":
        notes.append("int4 KV cache has no vLLM flag")
    if on_cpu:
        gib = cpu_kv_cache_gib(sc)
        size = (f"VLLM_CPU_KVCACHE_SPACE={max(1, int(gib))} (GiB; the plan's KV cache is {gib:.2f} GiB)" if gib is not None
                else "VLLM_CPU_KVCACHE_SPACE (GiB)")
        notes.append(f"the plan computes on the CPU: vLLM's CPU backend (a CPU build of vLLM), whose KV cache size is "
                     f"{size}, not --gpu-memory-utilization")  # fmt: skip
    else:
        flags.append(f"--gpu-memory-utilization {kv.gpu_memory_utilization}")
    flags.append(f"--block-size {kv.block_size}")
    if kv.preemption == "swap" and on_cpu:
        notes.append("preemption: swap has no CPU-backend equivalent (the KV cache is already in host memory)")
    elif kv.preemption == "swap":
        swap = kv.swap_space if kv.swap_space is not None else 4 * GIB * par.tp * par.pp
        flags.append(f"--swap-space {swap / GIB / max(par.tp * par.pp, 1):g}")
    if p.prefix_cache.enabled:
        flags.append("--enable-prefix-caching")
        lower = [t for t in p.prefix_cache.tiers if t != "hbm"]
        if lower:
            notes.append(f"prefix cache tiers {lower} beyond HBM need a KV offloading connector (e.g. LMCache)")
    else:
        flags.append("--no-enable-prefix-caching")
    off = p.offload
    if not off.is_trivial and not on_cpu:
        if off.compress_weights:
            notes.append(f"weights stored as group-wise int4 (plan.offload.compress_weights; group size {prec.group_size}): "
                         "serve an AWQ or GPTQ checkpoint (--quantization awq|gptq)")
        if off.compress_kv:
            notes.append("int4 KV cache (plan.offload.compress_kv) has no vLLM flag")
        w_off = 1.0 - off.weights.gpu
        if w_off > 0:
            from simkit.cost.ops import Precision
            from simkit.specs.catalog import load_model

            try:
                model = load_model(sc.model, where=sc.source)
                stored = "int4" if off.compress_weights else prec.weights  # the bytes the plan keeps off the GPU
                pr = Precision(stored, prec.activations, prec.kv_cache, prec.group_size)
                gb = model.num_params * pr.w_bytes / par.tp * w_off / GIB
                flags.append(f"--cpu-offload-gb {gb:.0f}")
            except Exception:  # noqa: BLE001 - a hint must never fail the search
                notes.append(f"offload {w_off:.0%} of the weights with --cpu-offload-gb")
        if off.kv_cache.gpu < 1 or off.cpu_attention or off.weights.disk or off.weights.cxl or off.kv_spill:
            notes.append("KV-cache offload, CPU attention and SSD/CXL placement have no vLLM flag (FlexGen-style plan)")
    return flags, notes


def vllm_hint(sc: Scenario) -> str:
    from simkit.specs.catalog import load_model

    flags, notes = vllm_flags(sc)
    repo = load_model(sc.model, where=sc.source).hf_repo
    lines = [
        "# vLLM launch settings equivalent to the best plan, where they map (a hint: check them",
        "# against your vLLM version; simkit simulated the plan, it did not run vLLM)",
        f"{''.join(e + ' ' for e in vllm_env(sc))}vllm serve {repo or f'<Hugging Face id of {sc.model}>'} \\",
    ]
    if repo is None:
        notes.append(f"model {sc.model} names no Hugging Face repository (hf_repo in its model file)")
    lines += [f"  {f} \\" for f in flags[:-1]] + [f"  {flags[-1]}"]
    for n in notes:
        lines.append(f"# note: {n}")
    return "\n".join(lines) + "\n"
