"""Placement optimiser: the best offload plan for a model, node and workload shape.

For every candidate batch configuration (GPU batch size x number of GPU batches x CPU
attention x weight compression x KV-cache compression) a linear program (FlexGen's formulation, solved with scipy's
HiGHS) chooses the fractions of weights, KV cache and activations on each tier to minimise
the time of one prefill plus ``gen_len - 1`` decode passes, subject to every tier's capacity.
Per-layer time is a max over resources when transfers overlap compute (each resource's time
is linear in the fractions) and their sum when they do not. The best candidates are then
confirmed by simulating them (static batch of ``gpu_batch_size x num_gpu_batches`` prompts),
which sees contention and the layer schedule exactly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simkit.cost.dtypes import bytes_per_element
from simkit.cost.iteration import IterationModel
from simkit.cost.memory import activation_bytes
from simkit.cost.offload import OffloadCompute, fp16_relay_h2d_factor
from simkit.cost.ops import Precision
from simkit.policies.offload import (
    PAGEABLE_RATIO_DEFAULT,
    embedding_head_bytes,
    measured_pageable_ratio,
    placed_bytes,
    static_kv_blocks,
)
from simkit.specs.model import ModelSpec
from simkit.specs.node import Node
from simkit.specs.tiers import OFF_GPU, PLACES, TIER_OF

VARS = ("w", "c", "h")  # weights, cache, activations
FRACTION_DECIMALS = 4
"""Decimals of the fractions a candidate's plan carries (the LP's solution, rounded)."""
ROUNDING_SLACK = 2.5 * 10.0**-FRACTION_DECIMALS
"""How much of an owner's bytes the rounding to FRACTION_DECIMALS may add to a tier: half a unit
of the last decimal per fraction, plus the renormalisation (the rounding of the other two
fractions of that owner, added to the largest): 2.5 units of it at most."""
TIE_BREAK_S = 1e-9
"""Seconds per layer and token charged per unit of a fraction on each tier below the GPU (x its
rank: cpu 1, cxl 2, disk 3): breaks the LP's ties towards the faster tiers, far below any cost."""


@dataclass
class Candidate:
    gpu_batch_size: int
    num_gpu_batches: int
    cpu_attention: bool
    compress_weights: bool
    fractions: dict[str, dict[str, float]]
    lp_time_s: float
    lp_throughput: float
    lp_bottleneck: str
    num_layers: int = 0
    dequant: str = "fused"
    """plan.offload.dequant of the scenario searched (how compressed weights are dequantised)."""
    decode_overlap: bool = True
    """plan.offload.decode_overlap of the scenario searched (whether decode copies overlap compute)."""
    compress_kv: bool = False
    """KV cache stored and moved as group-wise int4 (FlexGen's --compress-cache)."""
    kv_dequant: str = "filled"
    """plan.offload.kv_dequant of the scenario searched (which positions of a compressed cache's GPU
    share a decode step dequantises)."""
    lm_head_copy: bool = False
    """plan.offload.lm_head_copy of the scenario searched (the runtime's own copy of a tied LM head)."""
    host_temporaries: str = "workspace"
    """plan.offload.host_temporaries of the scenario searched (where the host attention code writes its copies)."""
    disk_relay: str = "native"
    """plan.offload.disk_relay of the scenario searched (how a disk share reaches the GPU)."""
    sim: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.gpu_batch_size * self.num_gpu_batches

    def offload_dict(self) -> dict[str, Any]:
        return {
            "weights": self.fractions["w"],
            "kv_cache": self.fractions["c"],
            "activations": self.fractions["h"],
            "gpu_batch_size": self.gpu_batch_size,
            "num_gpu_batches": self.num_gpu_batches,
            "cpu_attention": self.cpu_attention,
            "compress_weights": self.compress_weights,
            "compress_kv": self.compress_kv,
            "dequant": self.dequant,
            "kv_dequant": self.kv_dequant,
            "lm_head_copy": self.lm_head_copy,
            "host_temporaries": self.host_temporaries,
            "disk_relay": self.disk_relay,
            "overlap": True,
            "decode_overlap": self.decode_overlap,
            # an all-GPU plan still runs layer by layer in the offloading runtime (as FlexGen runs
            # it), on the costs the LP priced it with
            "resident_layers": None if self.fractions["w"]["gpu"] < 1.0 else self.num_layers,
        }


def _bw(node: Node, measured: dict[str, tuple[float, float]] | None = None) -> dict[str, float]:
    """Bandwidth of each link direction: the simulator's own (cost/links.py: link_rates), with KV
    stores at their own rate where the machine was measured to store KV slower."""
    from simkit.cost.links import link_rates

    return {k: bw for k, (bw, _) in link_rates(node, 1, measured).items()}


def solve_candidate(
    model: ModelSpec,
    node: Node,
    cost: IterationModel,
    cpu_cost: IterationModel | None,
    prec: Precision,
    prompt_len: int,
    gen_len: int,
    gbs: int,
    ngb: int,
    cpu_attention: bool,
    compress: bool,
    gpu_usable: float | None = None,
    compute: OffloadCompute | None = None,
    measured_links: dict[str, tuple[float, float]] | None = None,
    dequant: str = "fused",
    decode_overlap: bool = True,
    compress_kv: bool = False,
    block_tokens: int = 16,
    activation_reserve: float | None = None,
    kv_dequant: str = "filled",
    kv_watermark: float = 0.01,
    lm_head_copy: bool = False,
    host_temporaries: str = "workspace",
    disk_relay: str = "native",
) -> Candidate | None:
    from scipy.optimize import linprog

    from simkit.cost.links import kv_store_slowdown, link_rates

    tiers = node.tiers()
    have = {t: t == "cpu" or TIER_OF[t] in tiers for t in PLACES}
    L = model.num_layers
    bls = gbs * ngb
    wb = bytes_per_element("int4", prec.group_size) if compress else prec.w_bytes
    W = model.params_layers / L * wb
    kvb = bytes_per_element("int4", prec.group_size) if compress_kv else prec.kv_bytes
    kvtl = model.kv_bytes_per_token(kvb, tp=1, layers=1)  # the LP plans one GPU (its cost model is tp=1)
    ctx_avg = prompt_len + gen_len / 2.0
    KVd = bls * ctx_avg * kvtl
    KVnew = bls * kvtl
    KVpre = bls * prompt_len * kvtl
    Hd = bls * model.hidden_size * prec.a_bytes
    Hp = Hd * prompt_len
    # compute per layer (decode and prefill), per GPU batch summed over the block
    oc = compute or OffloadCompute(cost, cpu_cost)
    lin_d = oc.linear(gbs, decode=True) * ngb
    att_d = oc.decode_attention(gbs, gbs * (ctx_avg + 1)) * ngb
    cpu_att_d = (
        oc.cpu_decode_attention(gbs, gbs * (ctx_avg + 1), fresh_temporaries=host_temporaries == "fresh") * ngb
        if cpu_attention
        else 0.0
    )
    lin_p = oc.linear(gbs * prompt_len, decode=False) * ngb
    att_p = oc.prefill_attention(np.full(gbs, prompt_len), np.zeros(gbs)) * ngb
    # compressed weights are dequantised for every GPU batch (the simulator's rule, same cost)
    deq = oc.dequant(model.params_layers / L, dequant == "unfused") * ngb if compress else 0.0
    # compressed KV: the cached KV is dequantised to be attended and the new KV quantised to be
    # stored, per GPU batch (the simulator's rule, same cost)
    deq_kv_d = deq_kv_p = 0.0
    if compress_kv:
        kve = model.kv_bytes_per_token(1.0, tp=1, layers=1)  # KV values of one token in one layer
        unf = dequant == "unfused"
        deq_kv_d = (oc.dequant(gbs * ctx_avg * kve, unf) + oc.dequant(gbs * kve, unf, quantise=True)) * ngb
        deq_kv_p = oc.dequant(gbs * prompt_len * kve, unf, quantise=True) * ngb
    # kv_dequant: allocated (FlexGen's mha_gen): the GPU share of the cache is dequantised over the
    # positions allocated per sequence (prompt + generated - 1), not the filled ones
    deq_kv_gpu = 0.0
    if compress_kv and kv_dequant == "allocated":
        alloc = prompt_len + gen_len - 1
        deq_kv_gpu = (oc.dequant(gbs * alloc * kve, unf) - oc.dequant(gbs * ctx_avg * kve, unf)) * ngb
    bw = _bw(node, measured_links)
    # int4 shares read from disk through FlexGen's fp16 relay (disk_relay: fp16): host-to-GPU bytes
    # per stored byte, as the simulator prices them (engine/offload.py, same function); the LP
    # plans pinned copies
    relay = {"w": 1.0, "c": 1.0}
    if disk_relay == "fp16" and "h2d" in bw:
        ratio = measured_pageable_ratio(measured_links or {})
        ratio = PAGEABLE_RATIO_DEFAULT if ratio is None else ratio
        for v, on, b in (("w", compress, wb), ("c", compress_kv, kvb)):
            if on:
                relay[v] = fp16_relay_h2d_factor(b, ratio, 1.0, bw["h2d"], oc.host_copy_bandwidth())
    # KV stores at their own measured rate where the machine has one (cost/links.kv_store_slowdown)
    kv_slow = kv_store_slowdown(link_rates(node, 1, measured_links))
    # variable index: 12 fractions then T_pre, T_dec
    idx = {(v, t): k for k, (v, t) in enumerate(itertools.product(VARS, PLACES))}
    n = len(idx) + 2
    TP, TD = n - 2, n - 1
    A_ub: list[np.ndarray] = []
    b_ub: list[float] = []
    labels: list[tuple[str, str]] = []

    def row(coefs: dict[int, float], const: float, which: int, label: str) -> None:
        """coefs . x + const <= T_which  ->  coefs . x - T <= -const"""
        r = np.zeros(n)
        for k, c in coefs.items():
            r[k] += c
        r[which] -= 1.0
        A_ub.append(r)
        b_ub.append(-const)
        labels.append((label, "pre" if which == TP else "dec"))

    def plus(*parts: dict[int, float]) -> dict[int, float]:
        out: dict[int, float] = {}
        for p in parts:
            for k, v in p.items():
                out[k] = out.get(k, 0.0) + v
        return out

    for which, KVr, KVw, H, lin, att, catt, deq_kv in (
        (TD, KVd, KVnew, Hd, lin_d, att_d, cpu_att_d, deq_kv_d),
        (TP, 0.0, KVpre, Hp, lin_p, att_p, 0.0, deq_kv_p),
    ):
        cpu_att = cpu_attention and which == TD
        # GPU compute: linear layers, attention over GPU-resident KV (all of it unless CPU
        # attention). CPU attention sits between the GPU's QKV and output projections, so its
        # time adds to the layer's (an upper bound of the simulator's max with the GPU's heads)
        comp = {idx["c", "gpu"]: att} if cpu_att else {}
        if cpu_att:
            comp.update({idx["c", t]: catt for t in OFF_GPU})
        if which == TD and deq_kv_gpu:
            comp[idx["c", "gpu"]] = comp.get(idx["c", "gpu"], 0.0) + deq_kv_gpu
        comp_const = lin + deq + deq_kv + (0.0 if cpu_att else att)
        row(comp, comp_const, which, "compute")
        h2d = {idx["w", t]: W * (relay["w"] if t == "disk" else 1.0) / bw.get("h2d", np.inf) for t in OFF_GPU}
        for t in OFF_GPU:
            if not cpu_att:
                h2d[idx["c", t]] = h2d.get(idx["c", t], 0.0) + KVr * (relay["c"] if t == "disk" else 1.0) / bw.get("h2d", np.inf)
            h2d[idx["h", t]] = h2d.get(idx["h", t], 0.0) + H / bw.get("h2d", np.inf)
        row(h2d, 0.0, which, "h2d")
        d2h = {idx["c", t]: KVw * kv_slow.get("d2h", 1.0) / bw.get("d2h", np.inf) for t in OFF_GPU}
        for t in OFF_GPU:
            d2h[idx["h", t]] = d2h.get(idx["h", t], 0.0) + H / bw.get("d2h", np.inf)
        row(d2h, 0.0, which, "d2h")
        disk_r: dict[int, float] = {}
        if "nvme_read" in bw:
            disk_r = {idx["w", "disk"]: W / bw["nvme_read"], idx["c", "disk"]: KVr / bw["nvme_read"], idx["h", "disk"]: H / bw["nvme_read"]}
            disk_w = {idx["c", "disk"]: KVw * kv_slow.get("nvme_write", 1.0) / bw["nvme_write"], idx["h", "disk"]: H / bw["nvme_write"]}
            row(disk_r, 0.0, which, "nvme_read")
            row(disk_w, 0.0, which, "nvme_write")
            # a disk share is staged through pinned DRAM (specs/tiers.STAGED_TIERS): its
            # disk read and its PCIe copy follow one another, as do the PCIe copy and disk write
            staged = [idx[v, "disk"] for v in VARS]
            row(plus(disk_r, {k: v for k, v in h2d.items() if k in staged}), 0.0, which, "nvme_read+h2d")
            row(plus(disk_w, {k: v for k, v in d2h.items() if k in staged}), 0.0, which, "d2h+nvme_write")
        if ngb > 1:
            # several GPU batches run FlexGen's zig-zag block schedule (engine/offload.py; its
            # flex_opt.py syncs after every (layer, batch) step): the next layer's weights load
            # alongside one batch's compute only, so the other batches' compute follows the load
            zig = (ngb - 1) / ngb
            w_load = {idx["w", t]: W * (relay["w"] if t == "disk" else 1.0) / bw.get("h2d", np.inf) for t in OFF_GPU}
            if "nvme_read" in bw:
                w_load[idx["w", "disk"]] += W / bw["nvme_read"]  # staged through DRAM: read, then copy
            row(plus(w_load, {k: v * zig for k, v in comp.items()}), comp_const * zig, which, "weights+compute")
        if which == TD and not decode_overlap:
            # the decode step's host-to-GPU copies follow the previous layer's compute and the
            # disk reads that ran alongside it (engine/offload: gated copies)
            row(plus(h2d, comp), comp_const, which, "h2d+compute")
            if disk_r:
                row(plus(h2d, disk_r), 0.0, which, "h2d+nvme_read")
        if "cxl_read" in bw:
            row({idx["w", "cxl"]: W / bw["cxl_read"], idx["c", "cxl"]: KVr / bw["cxl_read"], idx["h", "cxl"]: H / bw["cxl_read"]}, 0.0, which, "cxl_read")
            row({idx["c", "cxl"]: KVw / bw["cxl_write"], idx["h", "cxl"]: H / bw["cxl_write"]}, 0.0, which, "cxl_write")
    # capacities: the simulator's accounting (policies/offload.placed_bytes, check_offload_capacity),
    # an affine function of the fractions read off as a constant and one coefficient per fraction
    emb = embedding_head_bytes(model, prec, lm_head_copy)
    # one GPU batch's whole prefill, unless the scenario reserves a fixed amount
    # (plan.kv_cache.activation_reserve). The simulator caps it at the static policy's token budget
    # (deployment.forward_pass_shape), so that published policies of large GPU batches run; the LP
    # does not: activation_bytes overstates a layer-by-layer runtime's peak for large batches and
    # understates it, capped, for larger ones (docs/offloading.md), and the stricter LP plans only
    # what the simulation then holds
    act = activation_bytes(model, gbs * prompt_len, gbs, 1, prec) if activation_reserve is None else activation_reserve

    def placed(x: dict[tuple[str, str], float]) -> dict[str, float]:
        fr = {v: {t: x.get((v, t), 0.0) for t in PLACES} for v in VARS}
        out = dict.fromkeys(PLACES, 0.0)
        for t, _, nbytes in placed_bytes(fr["w"], fr["w"], fr["h"], layer_weight_bytes=W, num_layers=L, resident_layers=0,
                                         emb_head_bytes=emb, act_bytes_gpu=act, hidden_bytes=Hp,
                                         num_gpu_batches=ngb, compute_on_cpu=False):
            out[t] += nbytes
        return out

    const = placed({})
    # the KV cache: the blocks with which the static batch the plan is confirmed with is admitted
    # at once (every sequence's prompt and generated tokens, and the engine's free watermark)
    KVpk = static_kv_blocks(bls, prompt_len, gen_len, block_tokens, kv_watermark) * block_tokens * kvtl * L
    cap = {
        "gpu": ((tiers["hbm"].capacity * 0.9 if gpu_usable is None else gpu_usable) if "hbm" in tiers else 0.0),
        "cpu": tiers["dram"].capacity,
        "cxl": tiers["cxl"].capacity if "cxl" in tiers else 0.0,
        "disk": tiers["ssd"].capacity if "ssd" in tiers else 0.0,
    }
    for t in PLACES:
        r = np.zeros(n)
        for v in ("w", "h"):
            for t2 in PLACES:
                r[idx[v, t2]] = placed({(v, t2): 1.0})[t] - const[t]
        r[idx["c", t]] = KVpk
        # the fractions are written rounded to FRACTION_DECIMALS (and renormalised): room for what
        # that may add to this tier
        A_ub.append(r)
        movable = sum(abs(r[k]) for (_, t2), k in idx.items() if have[t2])  # fractions the bounds leave free
        b_ub.append(cap[t] - const[t] - ROUNDING_SLACK * movable)
        labels.append((f"capacity {t}", ""))
    A_eq = []
    b_eq = []
    for v in VARS:
        r = np.zeros(n)
        for t in PLACES:
            r[idx[v, t]] = 1.0
        A_eq.append(r)
        b_eq.append(1.0)
    bounds = [(0.0, 1.0 if have[t] else 0.0) for (_, t) in idx] + [(0, None), (0, None)]
    c = np.zeros(n)
    c[TP] = L
    c[TD] = L * (gen_len - 1)
    # among placements equally fast, prefer the faster tiers (a share placed on disk for free
    # when compute bounds the step still costs disk reads the LP's max() does not see)
    tie = np.zeros(n)
    for (_, t), k in idx.items():
        tie[k] = TIE_BREAK_S * PLACES.index(t) * L * gen_len
    res = linprog(c + tie, A_ub=np.array(A_ub), b_ub=np.array(b_ub), A_eq=np.array(A_eq), b_eq=np.array(b_eq), bounds=bounds, method="highs")
    if not res.success:
        return None
    x = res.x
    fr = {v: {t: max(float(round(x[idx[v, t]], FRACTION_DECIMALS)), 0.0) for t in PLACES} for v in VARS}
    for v in VARS:  # renormalise after rounding
        s = sum(fr[v].values())
        k = max(fr[v], key=lambda t: fr[v][t])
        fr[v][k] = round(fr[v][k] + 1.0 - s, 6)
    total = float(c @ x)
    slack = np.array(A_ub) @ x - np.array(b_ub)
    dec_rows = [k for k, (_, w) in enumerate(labels) if w == "dec"]
    bott = labels[max(dec_rows, key=lambda k: slack[k])][0] if dec_rows else "compute"
    return Candidate(
        gbs, ngb, cpu_attention, compress, fr, total, bls * gen_len / total if total > 0 else 0.0, bott, L, dequant, decode_overlap,
        # only a plan attending on the CPU runs the host attention code whose copies it prices
        compress_kv, kv_dequant, lm_head_copy, host_temporaries if cpu_attention else "workspace", disk_relay,
    )

