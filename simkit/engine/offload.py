"""Layer-by-layer execution of an offloaded plan: streaming weights, KV and activations over the
links while layers compute.

With ``overlap`` on, layer i+1's weights and the KV it needs are requested from their tiers as
soon as layer i starts computing (double buffering), new KV and off-GPU activations are written
back asynchronously, and a layer starts once both its inputs have arrived and the previous
layer has finished. With overlap off every transfer completes before the compute that needs it
and write-backs complete before the next layer. Transfers that share a link share its
bandwidth (engine/resources.Link); a byte from CXL crosses its own link and PCIe concurrently
(pipelined DMA), a byte from disk is staged through pinned DRAM (disk read, then PCIe copy).

The sequences of a step are split into GPU batches of ``gpu_batch_size`` (FlexGen's zig-zag
block): each layer's weights are loaded once and used by every GPU batch in turn; with several
GPU batches the next layer's weights load during the layer's last batch and each batch's KV
during the batch before it (FlexGen's schedule).

Per-layer costs come from cost/offload.OffloadCompute (shared with the placement LP). CPU
attention runs between a layer's QKV and output projections; KV on disk or CXL attended on the
CPU is read into DRAM every step; pageable copies are staged by the host thread (they do not
overlap CPU attention, and in decode steps they do not overlap compute). docs/offloading.md.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from simkit.cost.iteration import IterationModel
from simkit.cost.offload import OffloadCompute, fp16_relay_h2d_factor
from simkit.engine.resources import Link
from simkit.specs.tiers import CPU_READ_PATH, STAGED_TIERS

if TYPE_CHECKING:
    import simpy

COMPUTE_PARTS = ("linear", "gpu_attention", "dequant", "cpu_attention", "embedding_and_head")
"""What an offloaded run's compute time is made of: the layers' linear operators, attention on
the GPU, int4 (de)compression, attention on the host CPU, and the embedding / LM head."""


Hop = tuple[str, Link, float]
"""(link direction, link, bytes that cross it) of one hop of a transfer."""
Share = tuple[str, str, float, list[Hop], bool]
"""(kind, tier, bytes, hops, staged) of one tier's share of a transfer (OffloadExecutor._plan_move)."""
GroupCost = tuple[float, float, float, float, float]
"""What :meth:`OffloadExecutor.group_cost` returns."""


class OffloadSettings(Protocol):
    """The plan.offload switches the executor reads."""

    @property
    def cpu_attention(self) -> bool: ...
    @property
    def compress_weights(self) -> bool: ...
    @property
    def compress_kv(self) -> bool: ...
    @property
    def dequant(self) -> str: ...
    @property
    def decode_overlap(self) -> bool: ...
    @property
    def disk_relay(self) -> str: ...


class Placement(Protocol):
    """What the executor needs of an offload placement (policies/offload.py's OffloadLayout is
    one): the bytes each layer moves per tier, the link directions a tier's bytes cross, and the
    plan's switches."""

    @property
    def plan(self) -> OffloadSettings: ...
    @property
    def kv_frac(self) -> dict[str, float]: ...
    @property
    def act_frac(self) -> dict[str, float]: ...
    @property
    def pageable_factor(self) -> float: ...
    @property
    def pageable_ratio(self) -> float: ...
    @property
    def layer_weight_bytes(self) -> float: ...
    @property
    def kv_bytes_per_token_layer(self) -> float: ...
    @property
    def spill_after(self) -> int | None: ...
    @property
    def layer_weight_elems(self) -> float: ...
    @property
    def kv_elems_per_token_layer(self) -> float: ...
    @property
    def kv_alloc_tokens(self) -> int | None: ...

    def weight_bytes(self, layer: int) -> dict[str, float]: ...
    def kv_read_bytes(self, ctx_tokens: float) -> dict[str, float]: ...
    def kv_write_bytes(self, new_tokens: float) -> dict[str, float]: ...
    def spill_read_bytes(self, ctx: np.ndarray) -> dict[str, float]: ...
    def spill_write_bytes(self, q: np.ndarray, ctx: np.ndarray) -> dict[str, float]: ...
    def spilled_tokens(self, ctx: np.ndarray) -> float: ...
    def read_path(self, tier: str) -> tuple[str, ...]: ...
    def write_path(self, tier: str) -> tuple[str, ...]: ...


class StepSetup(NamedTuple):
    """What :meth:`OffloadExecutor.step_setup` derives from a step before timing it."""

    q: np.ndarray
    ctx: np.ndarray
    groups: list[tuple[np.ndarray, np.ndarray]]
    cpu_attention: bool
    before: float
    after: float


@dataclass
class OffloadExecutor:
    env: simpy.Environment
    cost: IterationModel
    layout: Placement
    links: dict[str, Link]
    cpu_cost: IterationModel | None = None
    """Cost model of the host CPU, for attention delegated to where the KV lives."""
    cpu_stream: simpy.Resource | None = None
    gpu_batch_size: int | None = None
    overlap: bool = True
    busy_compute: float = 0.0
    busy_cpu: float = 0.0
    bytes_by_kind: dict[str, float] | None = None
    tracer: Any = None
    replica: int = 0
    compute: OffloadCompute | None = None
    """Per-layer compute costs (default: from ``cost`` and ``cpu_cost``)."""
    kv_store_slowdown: dict[str, float] | None = None
    """Link direction -> how much slower KV-cache stores run than plain copies on it (measured)."""
    compute_parts: dict[str, float] | None = None
    """Seconds of compute by part (COMPUTE_PARTS), for the breakdown of where a run's time goes."""
    closed_form: Any = None
    """An engine/offload_fast.ClosedFormStep when the steps' times are computed in closed form
    (nothing else uses the links during a step), else None: each step runs event by event."""

    def __post_init__(self) -> None:
        self.bytes_by_kind = {"weights": 0.0, "kv_read": 0.0, "kv_write": 0.0, "act_read": 0.0, "act_write": 0.0}
        self.compute_parts = dict.fromkeys(COMPUTE_PARTS, 0.0)
        if self.compute is None:
            self.compute = OffloadCompute(self.cost, self.cpu_cost)
        # int4 shares read from disk through FlexGen's fp16 relay (plan.offload.disk_relay): bytes
        # on the host-to-GPU link per stored byte, by kind (cost/offload.fp16_relay_h2d_factor)
        self.relay_h2d: dict[str, float] = {}
        lay, h2d = self.layout, self.links.get("h2d")
        if lay.plan.disk_relay == "fp16" and h2d is not None:
            host = self.compute.host_copy_bandwidth()
            if lay.plan.compress_weights and lay.layer_weight_elems > 0:
                self.relay_h2d["weights"] = fp16_relay_h2d_factor(
                    lay.layer_weight_bytes / lay.layer_weight_elems, lay.pageable_ratio, lay.pageable_factor, h2d.bandwidth, host)
            if lay.plan.compress_kv and lay.kv_elems_per_token_layer > 0:
                self.relay_h2d["kv_read"] = fp16_relay_h2d_factor(
                    lay.kv_bytes_per_token_layer / lay.kv_elems_per_token_layer, lay.pageable_ratio, lay.pageable_factor,
                    h2d.bandwidth, host)

    # ---- transfers ---------------------------------------------------------------------------
    def _plan_move(self, by_tier: dict[str, float], write: bool, kind: str, to_host: bool = False) -> list[Share]:
        """(kind, tier, bytes, hops, staged) of each share of ``by_tier`` bytes moved into (or out of)
        the compute device's memory; ``to_host``: into host DRAM instead (KV attended on the CPU:
        a disk or CXL share is read into DRAM, a DRAM share moves nowhere). A disk share passes
        through a pinned DRAM buffer (STAGED_TIERS): its hops run one after the other
        (``staged``). Every share listed counts under ``kind`` in :attr:`bytes_by_kind`."""
        out: list[Share] = []
        for tier, nbytes in by_tier.items():
            if nbytes <= 0:
                continue
            if to_host:
                path = CPU_READ_PATH[tier]
                if not path:
                    continue
            else:
                path = self.layout.write_path(tier) if write else self.layout.read_path(tier)
            hops: list[Hop] = []
            for hop in path:
                link = self.links.get(hop)
                if link is None:
                    continue
                relay = self.relay_h2d.get(kind) if hop == "h2d" and tier == "disk" else None
                if relay is not None:
                    eff_bytes = nbytes * relay
                else:
                    eff_bytes = nbytes / self.layout.pageable_factor if hop in ("h2d", "d2h") else nbytes
                if kind == "kv_write" and self.kv_store_slowdown:
                    eff_bytes *= self.kv_store_slowdown.get(hop, 1.0)
                hops.append((hop, link, eff_bytes))
            out.append((kind, tier, nbytes, hops, tier in STAGED_TIERS and len(hops) > 1))
        return out

    def count(self, plan: list[Share]) -> None:
        """Add ``plan``'s bytes to :attr:`bytes_by_kind` (once per time it is moved)."""
        by_kind = self.bytes_by_kind
        assert by_kind is not None
        for kind, _, nbytes, _, _ in plan:
            by_kind[kind] += nbytes

    def _move(
        self, by_tier: dict[str, float], write: bool, tag: str, kind: str, to_host: bool = False, gate: simpy.Event | None = None
    ) -> list[simpy.Event]:
        """Transfer events of ``by_tier`` bytes (:meth:`_plan_move`). ``gate``: a host-to-GPU hop
        starts only once it has fired (a decode step's copies that do not overlap compute)."""
        evs: list[simpy.Event] = []
        plan = self._plan_move(by_tier, write, kind, to_host)
        self.count(plan)
        for _, tier, _, hops, staged in plan:
            gated = gate is not None and any(h == "h2d" for h, _, _ in hops)
            if staged or gated:
                evs.append(self.env.process(self._hops(hops, f"{tag} {tier}", staged, gate)))
            else:
                evs += [self._transfer(hop, link, b, f"{tag} {tier}") for hop, link, b in hops]
        return evs

    def _transfer(self, hop: str, link: Link, nbytes: float, tag: str) -> simpy.Event:
        if hop in ("h2d", "d2h") and self.layout.pageable_factor < 1.0 and self.cpu_stream is not None:
            # a pageable copy is staged through a pinned bounce buffer by the host thread that
            # issued it: it holds the host, so it cannot overlap CPU attention
            return self.env.process(self._host_staged(link, nbytes, tag))
        return link.transfer(nbytes, tag)

    def _hops(
        self, hops: list[Hop], tag: str, staged: bool, gate: simpy.Event | None
    ) -> Generator[simpy.Event, Any, None]:
        """One share's hops: in order when ``staged`` (store and forward through DRAM), else the
        non-PCIe hops at once; a host-to-GPU hop waits for ``gate``."""
        if not staged:
            first = [self._transfer(h, link, b, tag) for h, link, b in hops if h != "h2d"]
            if gate is not None:
                yield gate
            rest = [self._transfer(h, link, b, tag) for h, link, b in hops if h == "h2d"]
            yield self.env.all_of(first + rest)
            return
        for h, link, b in hops:
            if h == "h2d" and gate is not None:
                yield gate
            yield self._transfer(h, link, b, tag)

    def _host_staged(self, link: Link, nbytes: float, tag: str) -> Generator[simpy.Event, Any, None]:
        assert self.cpu_stream is not None
        with self.cpu_stream.request() as req:
            yield req
            yield link.transfer(nbytes, tag)

    def _fetch(
        self, layer: int, groups: list[tuple[np.ndarray, np.ndarray]], cpu_attention: bool, gate: simpy.Event | None = None,
        weights: bool = True,
    ) -> list[simpy.Event]:
        """Transfers of ``layer``'s streamed weights (unless not ``weights``) and of the off-GPU
        KV the GPU batches ``groups`` attend."""
        lay = self.layout
        evs = self._move(lay.weight_bytes(layer), False, f"L{layer} weights", "weights", gate=gate) if weights else []
        for _, ctx in groups:
            # attended on the GPU: the off-GPU KV crosses to it; attended on the CPU: the KV on
            # disk (or CXL) is still read into DRAM for every step
            evs += self._move(lay.kv_read_bytes(float(ctx.sum())), False, f"L{layer} kv", "kv_read", to_host=cpu_attention, gate=gate)
            evs += self._move(lay.spill_read_bytes(ctx), False, f"L{layer} spilled kv", "kv_read", to_host=cpu_attention, gate=gate)
        return evs

    # ---- compute -----------------------------------------------------------------------------
    def _group_compute(self, q: np.ndarray, ctx: np.ndarray, cpu_attention: bool) -> tuple[float, float, float]:
        """(device seconds, CPU seconds, of the device seconds those of attention) of one layer
        for one GPU batch, added to the compute parts."""
        cost = self.group_cost(q, ctx, cpu_attention)
        self.add_parts(cost)
        return cost[0], cost[1], cost[2]

    def add_parts(self, cost: GroupCost) -> None:
        """Add one layer's (one GPU batch's) compute, by part, to :attr:`compute_parts`."""
        parts = self.compute_parts
        assert parts is not None
        parts["linear"] += cost[3]
        parts["gpu_attention"] += cost[2]
        parts["dequant"] += cost[4]
        parts["cpu_attention"] += cost[1]

    def group_cost(self, q: np.ndarray, ctx: np.ndarray, cpu_attention: bool) -> GroupCost:
        """(device seconds, CPU seconds, device attention seconds, linear seconds, (de)quantisation
        seconds) of one layer for one GPU batch (the same for every layer of a step)."""
        oc = self.compute
        assert oc is not None
        lay = self.layout
        T = int(q.sum())
        is_dec = (q == 1) & (ctx > 0)
        layer = oc.linear(T, decode=bool(is_dec.all()))
        attn_dev = 0.0
        cpu = 0.0
        if (~is_dec).any():
            attn_dev += oc.prefill_attention(q[~is_dec], ctx[~is_dec].astype(np.float64))
        if is_dec.any():
            nd = int(is_dec.sum())
            kv = float(ctx[is_dec].sum()) + nd
            kv_att, longest = oc.cost.decode_context(ctx[is_dec])
            full = oc.decode_attention(nd, kv_att, longest)
            if cpu_attention:
                g = lay.kv_frac.get("gpu", 0.0)
                if lay.spill_after is not None:
                    # the spilled positions are attended where they live
                    g = 1.0 - lay.spilled_tokens(ctx[is_dec]) / max(kv, 1.0)
                attn_dev += full * g
                cpu = oc.cpu_decode_attention(
                    nd, kv, lay.plan.host_kv_dtype == "fp32", lay.plan.host_temporaries == "fresh"
                ) * (1.0 - g)
            else:
                attn_dev += full
        extra = 0.0
        unfused = lay.plan.dequant == "unfused"
        if lay.plan.compress_weights:
            # compressed weights are dequantised for every GPU batch that uses them
            extra += oc.dequant(lay.layer_weight_elems, unfused)
        if lay.plan.compress_kv:
            # the cached KV is dequantised to be attended, the new KV quantised to be stored
            kv_deq = float(ctx.sum())
            if lay.kv_alloc_tokens is not None and is_dec.any():
                # FlexGen's mha_gen decompresses the whole cache it allocated on the GPU, then
                # slices the filled part; an off-GPU share arrives as its filled part
                kv_deq += lay.kv_frac.get("gpu", 0.0) * (int(is_dec.sum()) * lay.kv_alloc_tokens - float(ctx[is_dec].sum()))
            extra += oc.dequant(kv_deq * lay.kv_elems_per_token_layer, unfused)
            extra += oc.dequant(T * lay.kv_elems_per_token_layer, unfused, quantise=True)
        return layer + attn_dev + extra, cpu, attn_dev, layer, extra

    def step_setup(self, q: np.ndarray, ctx: np.ndarray, rows: int) -> StepSetup:
        """How a step of sequences (new tokens ``q``, contexts ``ctx``, ``rows`` logits rows) runs:
        its GPU batches (``gpu_batch_size`` each, one batch when unset, computed one after the
        other per layer), whether attention runs on the host CPU, and the times before and after
        the offloaded layers. One home for the event path and its closed form
        (engine/offload_fast.py)."""
        q = np.asarray(q, dtype=np.int64)
        ctx = np.asarray(ctx, dtype=np.int64)
        gbs = self.gpu_batch_size or len(q)
        groups = [(q[k : k + gbs], ctx[k : k + gbs]) for k in range(0, len(q), gbs)]
        cpu_attention = bool(self.layout.plan.cpu_attention and self.cpu_cost is not None)
        before, _, after = self.cost.split_layers(q, ctx, logits_rows=rows)
        return StepSetup(q, ctx, groups, cpu_attention, before, after)

    def run_step(self, q: np.ndarray, ctx: np.ndarray, rows: int) -> Generator[simpy.Event, Any, None]:
        env = self.env
        c = self.cost
        lay = self.layout
        L = c.layers
        q, ctx, groups, cpu_attention, before, after = self.step_setup(q, ctx, rows)
        h_bytes = c.model.hidden_size * c.precision.a_bytes
        act_off = {t: f for t, f in lay.act_frac.items() if t != "gpu" and f > 0}
        pending_writes: list[simpy.Event] = []
        ready: dict[int, simpy.Event] = {}
        computed: dict[int, simpy.Event] = {}
        # In a decode step the next layer's host-to-GPU copies and this layer's compute run one
        # after the other when the copies are pageable (the host thread that stages them is the
        # one that launches the layer; a decode step's short kernels leave nothing queued to hide
        # behind) or when the plan says its runtime does not overlap them (decode_overlap: false,
        # FlexGen's: its cost model, fitted to its runs, has T_gen = ctog + max(other terms)).
        # Reads from disk into DRAM still run ahead. A prefill's long kernels keep the GPU busy
        # while the host copies, so the prefetch overlaps there.
        decode_only = bool(((q == 1) & (ctx > 0)).all())
        prefetch = self.overlap
        gated = decode_only and (lay.pageable_factor < 1.0 or not lay.plan.decode_overlap)
        # Several GPU batches per layer run FlexGen's zig-zag block schedule
        # (flex_opt.py generation_loop_overlap_multi_batch): each GPU batch is one step that
        # ends with a device synchronisation; during step (layer j, batch k) the KV of batch k+1
        # is loaded and the stores of batch k-1 complete, and the next layer's weights load
        # during the layer's last batch only (they overlap 1/num_gpu_batches of its compute).
        blocked = prefetch and len(groups) > 1
        started: dict[tuple[int, int], simpy.Event] = {}
        kv_ready: dict[tuple[int, int], simpy.Event] = {}
        step_writes: list[list[simpy.Event]] = []
        if prefetch:
            # one reader streams the layers that need data in order into BUFFERS staging buffers:
            # a layer's fetch starts once the previous fetch is done and its buffer is free (the
            # layer BUFFERS places earlier has finished computing)
            if blocked:
                G = len(groups)
                started = {(li, gi): env.event() for li in range(L) for gi in range(G)}
                needing = [li for li in range(L) if lay.weight_bytes(li)]
                kv_steps = [(li, gi) for li in range(L) for gi in range(G) if self._needs_kv(groups[gi : gi + 1], cpu_attention)]
                kv_ready = {st: env.event() for st in kv_steps}
                env.process(self._kv_reader(kv_steps, groups, cpu_attention, kv_ready, started))
            else:
                needing = [li for li in range(L) if self._needs_fetch(li, groups, cpu_attention)]
            ready = {lay_i: env.event() for lay_i in needing}
            computed = {lay_i: env.event() for lay_i in (range(L) if gated else needing)}
            env.process(self._reader(needing, [] if blocked else groups, cpu_attention, ready, computed, gated, started))
        yield env.timeout(before)
        self.busy_compute += before
        assert self.compute_parts is not None
        self.compute_parts["embedding_and_head"] += before + after
        for layer in range(L):
            if prefetch:
                if layer in ready:
                    yield ready[layer]
            else:
                evs = self._fetch(layer, groups, cpu_attention)
                if evs:
                    yield env.all_of(evs)
            for gi, (gq, gc) in enumerate(groups):
                T = float(gq.sum())
                if blocked:
                    if (layer, gi) in kv_ready:
                        yield kv_ready[layer, gi]
                    if len(step_writes) >= 2 and step_writes[-2]:
                        # the stores issued after the batch before last were synchronised
                        yield env.all_of(step_writes[-2])
                    started[layer, gi].succeed()
                if act_off:
                    ev = self._move({t: T * h_bytes * f for t, f in act_off.items()}, False, f"L{layer} act", "act_read")
                    if ev:
                        yield env.all_of(ev)
                dev, cpu, attn_dev = self._group_compute(gq, gc, cpu_attention)
                ls = env.now
                if cpu > 0 and self.cpu_stream is not None:
                    # attention sits between the QKV projection and the output projection: the
                    # CPU's share runs alongside the GPU's share of the heads, not alongside the
                    # linear layers that produce its input and consume its output
                    yield env.timeout(dev - attn_dev)
                    yield env.all_of([env.timeout(attn_dev), env.process(self._on_cpu(cpu))])
                else:
                    yield env.timeout(dev)
                self.busy_compute += dev
                if self.tracer is not None:
                    self.tracer.events.append(
                        {"name": f"layer {layer}", "ph": "X", "pid": self.replica, "tid": "compute",
                         "ts": ls * 1e6, "dur": dev * 1e6, "args": {"tokens": T}}
                    )
                w = self._move(lay.kv_write_bytes(T), True, f"L{layer} kv", "kv_write")
                w += self._move(lay.spill_write_bytes(gq, gc), True, f"L{layer} spilled kv", "kv_write")
                if act_off:
                    w += self._move({t: T * h_bytes * f for t, f in act_off.items()}, True, f"L{layer} act", "act_write")
                if blocked:
                    step_writes.append(w)
                if self.overlap:
                    pending_writes += w
                elif w:
                    yield env.all_of(w)
            if layer in computed:
                computed[layer].succeed()
        yield env.timeout(after)
        self.busy_compute += after
        if pending_writes:
            yield env.all_of(pending_writes)

    BUFFERS = 2
    """Staging buffers for streamed layers (double buffering; check_offload_capacity reserves them)."""

    def _needs_fetch(self, layer: int, groups: list[tuple[np.ndarray, np.ndarray]], cpu_attention: bool) -> bool:
        return bool(self.layout.weight_bytes(layer)) or self._needs_kv(groups, cpu_attention)

    def _needs_kv(self, groups: list[tuple[np.ndarray, np.ndarray]], cpu_attention: bool) -> bool:
        """Whether attending ``groups`` moves any KV (to the GPU, or from disk/CXL into DRAM)."""
        lay = self.layout
        tiers = {t for _, c in groups for t in (*lay.kv_read_bytes(float(c.sum())), *lay.spill_read_bytes(c))}
        if cpu_attention:
            tiers = {t for t in tiers if CPU_READ_PATH[t]}
        return bool(tiers)

    def _kv_reader(self, steps, groups, cpu_attention, kv_ready, started):  # type: ignore[no-untyped-def]
        """Zig-zag block: the KV of step (layer, batch) loads while the step before it computes."""
        G = len(groups)
        for layer, gi in steps:
            prev = (layer, gi - 1) if gi > 0 else (layer - 1, G - 1)
            if prev[0] >= 0:
                yield started[prev]
            evs = self._fetch(layer, groups[gi : gi + 1], cpu_attention, weights=False)
            if evs:
                yield self.env.all_of(evs)
            kv_ready[layer, gi].succeed()

    def _reader(self, needing, groups, cpu_attention, ready, computed, gated=False, started=None):  # type: ignore[no-untyped-def]
        env = self.env
        last = max((gi for _, gi in started or {}), default=0)
        for k, layer in enumerate(needing):
            if k >= self.BUFFERS:
                yield computed[needing[k - self.BUFFERS]]
            if started and layer > 0:
                # zig-zag block: the next layer's weights load during this layer's last batch
                yield started[layer - 1, last]
            # gated: the layer's host-to-GPU copies wait until the previous layer has computed
            gate = computed[layer - 1] if gated and layer > 0 else None
            evs = self._fetch(layer, groups, cpu_attention, gate)
            if evs:
                yield env.all_of(evs)
            ready[layer].succeed()

    def _on_cpu(self, seconds: float) -> Generator[simpy.Event, Any, None]:
        assert self.cpu_stream is not None
        with self.cpu_stream.request() as req:
            yield req
            yield self.env.timeout(seconds)
            self.busy_cpu += seconds
