"""Offload plans: where weights, KV cache and activations live across HBM, DRAM, CXL and SSD,
the bytes each layer moves, and whether a plan fits.

Semantics (docs/scenario.md, plan.offload):
- ``weights``: fractions of every streamed layer's weights per tier (FlexGen's wg/wc/wd, plus
  cxl). With ``resident_layers: k`` the first k layers stay wholly in the compute device's
  memory and the rest follow the fractions (if those are all gpu, streamed layers live in cpu).
  The embedding and LM head follow the fractions as written (all-gpu fractions with
  ``resident_layers`` keep them on the GPU, where every step uses them).
- ``kv_cache``: fractions of every layer's KV per tier, split by KV heads (head-wise offload:
  some heads' KV on the GPU, the rest where the fraction says); with ``cpu_attention`` the
  off-GPU heads' decode attention runs on the CPU where that KV lives (only q and the
  attention output cross PCIe), otherwise their KV is fetched for each layer.
- ``activations``: fraction of the hidden states kept off-GPU between layers.
- ``compress_weights`` / ``compress_kv``: group-wise 4-bit quantisation (one fp16 scale and zero
  per group) of what is stored, dequantised on the GPU before use (an elementwise cost).
- On a CPU-computing node the compute memory is DRAM: ``gpu`` and ``cpu`` both mean DRAM, and
  only ``cxl`` and ``disk`` shares move.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from simkit.cost.dtypes import bytes_per_element
from simkit.cost.ops import Precision
from simkit.engine.kvcache import watermark_blocks
from simkit.errors import CapacityError
from simkit.specs.model import ModelSpec
from simkit.specs.node import Node
from simkit.specs.tiers import PLACES, read_path, tier_of, write_path
from simkit.units import fmt_bytes


class TierShares(Protocol):
    """Fractions per placement tier (scenario.py's ``plan.offload.weights`` is one)."""

    @property
    def gpu(self) -> float: ...
    @property
    def cpu(self) -> float: ...
    @property
    def cxl(self) -> float: ...
    @property
    def disk(self) -> float: ...


class KVSpillPlan(Protocol):
    @property
    def after_tokens(self) -> int: ...
    @property
    def tier(self) -> str: ...


class OffloadPlan(Protocol):
    """What an offload layout is made from (scenario.py's ``plan.offload`` is one)."""

    @property
    def weights(self) -> TierShares: ...
    @property
    def kv_cache(self) -> TierShares: ...
    @property
    def activations(self) -> TierShares: ...
    @property
    def resident_layers(self) -> int | None: ...
    @property
    def compress_weights(self) -> bool: ...
    @property
    def compress_kv(self) -> bool: ...
    @property
    def pinned(self) -> bool: ...
    @property
    def cpu_attention(self) -> bool: ...
    @property
    def dequant(self) -> str: ...
    @property
    def kv_dequant(self) -> str: ...
    @property
    def disk_relay(self) -> str: ...
    @property
    def num_gpu_batches(self) -> int: ...
    @property
    def lm_head_copy(self) -> bool: ...
    @property
    def host_kv_dtype(self) -> str: ...
    @property
    def kv_spill(self) -> KVSpillPlan | None: ...


class KVCachePlan(Protocol):
    """The KV-cache settings the GPU-memory rule reads (scenario.py's ``plan.kv_cache`` is one)."""

    @property
    def gpu_memory_utilization(self) -> float: ...
    @property
    def model_fields_set(self) -> set[str]:
        """The settings the scenario gave explicitly (pydantic's model_fields_set)."""
        ...


PAGEABLE_RATIO_DEFAULT = 0.6
"""Pageable/pinned host-device copy rate where no calibration profile measured it."""


@dataclass(frozen=True)
class OffloadLayout:
    """Bytes per layer per tier, derived from a plan, a model and a precision (per replica,
    i.e. summed over a TP group's GPUs, which stream their shards in parallel)."""

    plan: OffloadPlan
    num_layers: int
    resident_layers: int
    layer_weight_bytes: float
    """Stored bytes of one layer's weights (compressed if compress_weights)."""
    layer_weight_elems: float
    weight_frac: dict[str, float]
    kv_frac: dict[str, float]
    act_frac: dict[str, float]
    kv_bytes_per_token_layer: float
    """Stored KV bytes of one token in one layer (compressed if compress_kv)."""
    compute_on_cpu: bool
    pageable_factor: float = 1.0
    """Rate of the plan's host-device copies relative to pinned ones (1: pinned)."""
    pageable_ratio: float = PAGEABLE_RATIO_DEFAULT
    """The node's pageable/pinned copy rate, whatever the plan's pinning (copies a runtime makes
    from pageable memory of its own: ``disk_relay: fp16``)."""
    spill_after: int | None = None
    """Positions >= this spill to ``spill_tier`` (None: no positional spill)."""
    spill_tier: str = "cpu"
    kv_elems_per_token_layer: float = 0.0
    """KV values of one token in one layer (keys and values, all KV heads of the replica)."""
    emb_frac: dict[str, float] | None = None
    """Where the embedding and LM head live (the plan's weight fractions as written; default
    ``weight_frac``)."""
    kv_alloc_tokens: int | None = None
    """Positions a decoding sequence dequantises of the GPU share of a compressed KV cache: the
    positions allocated for it (``kv_dequant: allocated``); None: the filled ones."""

    def spilled_tokens(self, ctx: np.ndarray) -> float:
        """Cached tokens beyond the spill threshold, summed over sequences."""
        if self.spill_after is None:
            return 0.0
        return float(np.maximum(np.asarray(ctx) - self.spill_after, 0).sum())

    def spill_read_bytes(self, ctx: np.ndarray) -> dict[str, float]:
        n = self.spilled_tokens(ctx)
        return {self.spill_tier: n * self.kv_bytes_per_token_layer} if n > 0 else {}

    def spill_write_bytes(self, q: np.ndarray, ctx: np.ndarray) -> dict[str, float]:
        """New tokens (positions ctx .. ctx+q-1) that land beyond the threshold."""
        if self.spill_after is None:
            return {}
        q = np.asarray(q)
        ctx = np.asarray(ctx)
        n = float((np.maximum(ctx + q - np.maximum(ctx, self.spill_after), 0)).sum())
        return {self.spill_tier: n * self.kv_bytes_per_token_layer} if n > 0 else {}

    def weight_bytes(self, layer: int) -> dict[str, float]:
        """Off-device weight bytes of ``layer`` per tier (what must be streamed in each pass)."""
        if layer < self.resident_layers:
            return {}
        return {t: self.layer_weight_bytes * f for t, f in self.weight_frac.items() if t != "gpu" and f > 0}

    def kv_read_bytes(self, ctx_tokens: float) -> dict[str, float]:
        """KV bytes per tier one layer must read for ``ctx_tokens`` cached tokens."""
        return {t: ctx_tokens * self.kv_bytes_per_token_layer * f for t, f in self.kv_frac.items() if t != "gpu" and f > 0}

    def kv_write_bytes(self, new_tokens: float) -> dict[str, float]:
        return {t: new_tokens * self.kv_bytes_per_token_layer * f for t, f in self.kv_frac.items() if t != "gpu" and f > 0}

    def read_path(self, tier: str) -> tuple[str, ...]:
        return read_path(tier, self.compute_on_cpu)

    def write_path(self, tier: str) -> tuple[str, ...]:
        return write_path(tier, self.compute_on_cpu)

    @property
    def streams_anything(self) -> bool:
        off_w = any(f > 0 for t, f in self.weight_frac.items() if t != "gpu") and self.resident_layers < self.num_layers
        off_kv = any(f > 0 for t, f in self.kv_frac.items() if t != "gpu")
        off_a = any(f > 0 for t, f in self.act_frac.items() if t != "gpu")
        return off_w or off_kv or off_a or self.spill_after is not None


def _fracs(share: object) -> dict[str, float]:
    return {t: float(getattr(share, t)) for t in PLACES}


def measured_pageable_ratio(rates: Mapping[str, tuple[float, float]]) -> float | None:
    """The pageable/pinned host-to-GPU rate a calibration profile measured (``rates``: cost/links
    measured_links), else None."""
    return rates["h2d_pageable"][0] / rates["h2d"][0] if "h2d_pageable" in rates and "h2d" in rates else None


def build_offload_layout(
    plan: OffloadPlan, model: ModelSpec, prec: Precision, tp: int, compute_on_cpu: bool, pageable_factor: float | None = None,
    kv_alloc_tokens: int | None = None,
) -> OffloadLayout:
    w_bytes = bytes_per_element("int4", prec.group_size) if plan.compress_weights else prec.w_bytes
    kv_bytes = bytes_per_element("int4", prec.group_size) if plan.compress_kv else prec.kv_bytes
    elems = model.params_layers / model.num_layers
    wf = _fracs(plan.weights)
    ef = dict(wf)
    resident = plan.resident_layers or 0
    if plan.resident_layers is not None and wf["gpu"] == 1.0:
        wf = {"gpu": 0.0, "cpu": 1.0, "cxl": 0.0, "disk": 0.0}
    kvf = _fracs(plan.kv_cache)
    af = _fracs(plan.activations)
    if compute_on_cpu:
        # the compute memory is DRAM: gpu and cpu shares are the same place
        for f in (wf, ef, kvf, af):
            f["gpu"] += f["cpu"]
            f["cpu"] = 0.0
    # the replica's TP group together (replicated KV heads count on every GPU)
    kv_tok_layer = model.kv_bytes_per_token(kv_bytes, tp, layers=1) * tp
    return OffloadLayout(
        plan,
        model.num_layers,
        min(resident, model.num_layers),
        elems * w_bytes,
        elems,
        wf,
        kvf,
        af,
        kv_tok_layer,
        compute_on_cpu,
        1.0 if plan.pinned else (pageable_factor if pageable_factor is not None else PAGEABLE_RATIO_DEFAULT),
        pageable_factor if pageable_factor is not None else PAGEABLE_RATIO_DEFAULT,
        plan.kv_spill.after_tokens if plan.kv_spill is not None else None,
        plan.kv_spill.tier if plan.kv_spill is not None else "cpu",
        model.kv_bytes_per_token(1.0, tp, layers=1) * tp,  # elements: one byte each
        ef,
        kv_alloc_tokens if plan.compress_kv else None,
    )


CUDA_CONTEXT_BYTES = 287e6
"""GPU memory the CUDA context of a PyTorch process holds outside its allocator: 287,047,680 bytes
with lazy module loading (PyTorch >= 1.13 sets CUDA_MODULE_LOADING=LAZY; pytorch/pytorch PR #86509
measured 666,632,192 bytes eager)."""
CUDA_CONTEXT_EAGER_BYTES = 666_632_192.0
"""The same context with every kernel module loaded at start (``plan.execution.cuda_module_loading:
eager``: CUDA < 11.7 or PyTorch < 1.13; pytorch/pytorch PR #86509's measurement)."""


def embedding_head_bytes(model: ModelSpec, prec: Precision, lm_head_copy: bool) -> float:
    """Bytes of the embedding, the LM head and the final norm as a run holds them: a tied head is
    the embedding's tensor, unless the runtime loads its own copy (``plan.offload.lm_head_copy``:
    FlexGen's OutputEmbed reads decoder.embed_tokens.weight again, flex_opt.py)."""
    head = model.params_lm_head
    if lm_head_copy and head == 0:
        head = model.vocab_size * model.hidden_size
    return (model.params_embedding + head + model.norm_params) * prec.w_bytes


def offload_gpu_usable(gpu_memory: float, kv: KVCachePlan, static: bool, module_loading: str = "lazy") -> tuple[float, str]:
    """Bytes of each GPU a run may fill, offloaded or not, and the rule that decided it.

    A static run (FlexGen, ZeRO-Inference: one batch, every buffer planned ahead) may
    use the GPU's memory as the driver reports it (ECC on) less the CUDA context: it keeps no KV
    pool that grows, so a serving engine's headroom (``gpu_memory_utilization``, vLLM's 0.9 by
    default) does not apply unless the scenario sets it. Other plans use memory x
    ``gpu_memory_utilization``."""
    if static and "gpu_memory_utilization" not in kv.model_fields_set:
        ctx = CUDA_CONTEXT_EAGER_BYTES if module_loading == "eager" else CUDA_CONTEXT_BYTES
        return gpu_memory - ctx, f"GPU memory less {fmt_bytes(ctx)} of CUDA context ({module_loading} modules; static run)"
    return gpu_memory * kv.gpu_memory_utilization, f"x gpu_memory_utilization {kv.gpu_memory_utilization}"


def placed_bytes(
    weight_frac: Mapping[str, float],
    emb_frac: Mapping[str, float],
    act_frac: Mapping[str, float],
    *,
    layer_weight_bytes: float,
    num_layers: int,
    resident_layers: int,
    emb_head_bytes: float,
    act_bytes_gpu: float,
    hidden_bytes: float,
    num_gpu_batches: int,
    compute_on_cpu: bool,
) -> list[tuple[str, str, float]]:
    """(place, owner, bytes) of everything an offload plan holds besides its KV cache: the one
    accounting of the simulator's capacity check (:func:`check_offload_capacity`) and of the
    placement optimiser's capacity rows (policies/offload_opt.py), which reads it as the affine
    function of the fractions it is (with ``resident_layers`` fixed).

    - weights: the resident layers on the compute device; the streamed layers' bytes and the
      embedding and LM head by their fractions;
    - staging buffers, only while some layer streams: two of a layer's off-GPU weights on the GPU
      (double buffering), and two of its disk and CXL share in pinned DRAM (it passes through
      DRAM: specs/tiers.STAGED_TIERS); a CPU-computing node reads its disk and CXL share into two
      DRAM buffers;
    - activations: one GPU batch's forward pass (``act_bytes_gpu``, which holds that batch's
      hidden states) on the compute device, and the hidden states of every GPU batch of a block
      between layers (``hidden_bytes``, all ``num_gpu_batches`` of them: FlexGen keeps one per GPU
      batch, flex_opt.py's hidden[k]) by the activations' fractions, less the computing batch's
      on the compute device."""
    out: list[tuple[str, str, float]] = []
    streamed = num_layers - resident_layers
    out.append(("gpu", "weights (resident)", resident_layers * layer_weight_bytes))
    out += [(t, "embedding and LM head", emb_head_bytes * f) for t, f in emb_frac.items()]
    out += [(t, "weights", streamed * layer_weight_bytes * f) for t, f in weight_frac.items()]
    if streamed > 0:
        via = sum(f for t, f in weight_frac.items() if t in ("disk", "cxl")) * layer_weight_bytes
        if compute_on_cpu:
            out.append(("gpu", "weight read buffers", 2 * via))
        else:
            off = sum(f for t, f in weight_frac.items() if t != "gpu") * layer_weight_bytes
            out.append(("gpu", "weight prefetch buffers", 2 * off))
            out.append(("cpu", "pinned staging buffers", 2 * via))
    out.append(("gpu", "activations", act_bytes_gpu))
    own = (num_gpu_batches - 1) / num_gpu_batches
    out += [(t, "hidden states", hidden_bytes * f * (own if t == "gpu" else 1.0)) for t, f in act_frac.items()]
    return out


def static_kv_tokens(prompt_len: int, gen_len: int, block_tokens: int) -> int:
    """KV positions one sequence of a static batch holds at its longest (prompt plus generated
    tokens), in whole blocks of ``block_tokens``."""
    return -(-(prompt_len + gen_len) // block_tokens) * block_tokens


def static_kv_blocks(batch: int, prompt_len: int, gen_len: int, block_tokens: int, watermark: float) -> int:
    """The fewest KV blocks with which a static batch of ``batch`` sequences is admitted at once:
    every sequence's :func:`static_kv_tokens`, plus the blocks the engine keeps free at admission
    (engine/kvcache.watermark_blocks of the pool). With fewer the simulation runs the batch in
    several waves, streaming every layer's weights once per wave. The placement optimiser sizes
    its KV rows by it and the search refuses a plan below it (search/offload.py)."""
    need = batch * static_kv_tokens(prompt_len, gen_len, block_tokens) // block_tokens
    n = need if watermark <= 0 else int(np.ceil(need / (1.0 - watermark)))
    while n > need and n - 1 - watermark_blocks(n - 1, watermark) >= need:
        n -= 1
    while n - watermark_blocks(n, watermark) < need:
        n += 1
    return n


@dataclass(frozen=True)
class OffloadMemory:
    """Bytes each tier must hold for a plan, and the KV blocks that fit."""

    need: dict[str, dict[str, float]]
    """tier -> owner -> bytes."""
    capacity: dict[str, float]
    num_blocks: int
    spill_tokens: float = 0.0
    """Tokens of spilled KV (all layers) the spill tier can hold."""


def check_offload_capacity(
    lay: OffloadLayout,
    model: ModelSpec,
    prec: Precision,
    node: Node,
    tp: int,
    block_tokens: int,
    act_bytes_gpu: float,
    hidden_bytes: float,
    hbm_usable: tuple[float, str],
    num_blocks: int | None,
    where: str | None,
) -> OffloadMemory:
    """Place weights, activations and staging buffers; size the KV cache from what is left in
    every tier that holds a share of it. Raise CapacityError naming the tier that overflows."""
    tiers = node.tiers()
    cap: dict[str, float] = {}
    for t in ("hbm", "dram", "cxl", "ssd"):
        if t in tiers:
            c = tiers[t].capacity
            if t == "hbm":
                c = hbm_usable[0] * tp  # a replica's GPUs together
            cap[t] = c
    need: dict[str, dict[str, float]] = {t: {} for t in cap}

    def put(tier_key: str, owner: str, nbytes: float) -> None:
        tier = tier_of(tier_key, lay.compute_on_cpu)
        if nbytes <= 0:
            return
        if tier not in cap:
            raise CapacityError(
                f"the plan puts {owner} ({fmt_bytes(nbytes)}) in {tier}, but {node.name} has no {tier} tier",
                where=where,
                key=f"tier {tier}",
            )
        need[tier][owner] = need[tier].get(owner, 0.0) + nbytes

    for t, owner, nbytes in placed_bytes(
        lay.weight_frac, lay.emb_frac or lay.weight_frac, lay.act_frac,
        layer_weight_bytes=lay.layer_weight_bytes, num_layers=lay.num_layers, resident_layers=lay.resident_layers,
        emb_head_bytes=embedding_head_bytes(model, prec, lay.plan.lm_head_copy),
        act_bytes_gpu=act_bytes_gpu, hidden_bytes=hidden_bytes, num_gpu_batches=lay.plan.num_gpu_batches,
        compute_on_cpu=lay.compute_on_cpu,
    ):
        put(t, owner, nbytes)
    for tier, owners in need.items():
        used = sum(owners.values())
        if used > cap[tier]:
            detail = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in owners.items())
            raise CapacityError(
                f"the plan needs {fmt_bytes(used)} in {tier} ({detail}) but {node.name} has {fmt_bytes(cap[tier])}"
                + (f" usable ({tp} GPU(s), {hbm_usable[1]})" if tier == "hbm" else ""),
                where=where,
                key=f"tier {tier}",
            )
    # KV blocks: every tier holding a share of the KV bounds the block count
    L = lay.num_layers
    block_layer = block_tokens * lay.kv_bytes_per_token_layer * L
    # a host cache held in fp32 (host_kv_dtype) takes 4 bytes a value in DRAM
    host_block = block_tokens * lay.kv_elems_per_token_layer * 4.0 * L if lay.plan.host_kv_dtype == "fp32" else block_layer

    def kv_block(t: str) -> float:
        return host_block if t == "cpu" else block_layer

    fit = []
    for t, f in lay.kv_frac.items():
        if f <= 0:
            continue
        tier = tier_of(t, lay.compute_on_cpu)
        if tier not in cap:
            raise CapacityError(f"the plan puts KV cache in {tier}, but {node.name} has no {tier} tier", where=where, key=f"tier {tier}")
        left = cap[tier] - sum(need[tier].values())
        fit.append((int(left // (kv_block(t) * f)), tier, left))
    blocks, tier, left = min(fit)
    if blocks < 1:
        raise CapacityError(
            f"no room for a single KV block in {tier}: {fmt_bytes(max(left, 0))} left after weights and buffers",
            where=where,
            key=f"tier {tier}",
        )
    if num_blocks is not None:
        if num_blocks > blocks:
            raise CapacityError(
                f"plan.kv_cache.num_blocks={num_blocks} needs more {tier} than is left ({blocks} blocks fit)",
                where=where,
                key="plan.kv_cache.num_blocks",
            )
        blocks = num_blocks
    for t, f in lay.kv_frac.items():
        if f > 0:
            tier = tier_of(t, lay.compute_on_cpu)
            need[tier]["kv cache"] = need[tier].get("kv cache", 0.0) + blocks * kv_block(t) * f
    spill_tokens = 0.0
    if lay.spill_after is not None:
        tier = tier_of(lay.spill_tier, lay.compute_on_cpu)
        if tier not in cap:
            raise CapacityError(f"kv_spill goes to {tier}, but {node.name} has no {tier} tier", where=where, key=f"tier {tier}")
        left = cap[tier] - sum(need[tier].values())
        spill_tokens = max(left, 0.0) / (lay.kv_bytes_per_token_layer * L)
        if spill_tokens < 1:
            raise CapacityError(f"no room for spilled KV in {tier}: {fmt_bytes(max(left, 0))} left", where=where, key=f"tier {tier}")
        need[tier]["spilled kv cache (max)"] = spill_tokens * lay.kv_bytes_per_token_layer * L
    return OffloadMemory(need, cap, blocks, spill_tokens)
