"""Layer-by-layer execution of an offloaded plan: streaming weights, KV and activations over the
links while layers compute.

With ``overlap`` on, layer i+1's weights and the KV it needs are requested from their tiers as
soon as layer i starts computing (double buffering), new KV and off-GPU activations are written
back asynchronously, and a layer starts once both its inputs have arrived and the previous
layer has finished. With overlap off every transfer completes before the compute that needs it
and write-backs complete before the next layer. Transfers that share a link share its
bandwidth (engine/resources.Link); a byte from CXL or disk crosses its own link and PCIe
concurrently (pipelined DMA), so the slower hop bounds it.

The sequences of a step are split into GPU batches of ``gpu_batch_size`` (FlexGen's zig-zag
block): each layer's weights are loaded once and used by every GPU batch in turn.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from simkit.cost.iteration import IterationModel, _class_time
from simkit.engine.resources import Link
from simkit.policies.offload import OffloadLayout


@dataclass
class OffloadExecutor:
    env: simpy.Environment
    cost: IterationModel
    layout: OffloadLayout
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

    def __post_init__(self) -> None:
        self.bytes_by_kind = {"weights": 0.0, "kv_read": 0.0, "kv_write": 0.0, "act_read": 0.0, "act_write": 0.0}

    # ---- transfers ---------------------------------------------------------------------------
    def _move(self, by_tier: dict[str, float], write: bool, tag: str, kind: str) -> list[simpy.Event]:
        evs: list[simpy.Event] = []
        for tier, nbytes in by_tier.items():
            if nbytes <= 0:
                continue
            assert self.bytes_by_kind is not None
            self.bytes_by_kind[kind] += nbytes
            path = self.layout.write_path(tier) if write else self.layout.read_path(tier)
            for hop in path:
                link = self.links.get(hop)
                if link is None:
                    continue
                eff_bytes = nbytes / self.layout.pageable_factor if hop in ("h2d", "d2h") else nbytes
                evs.append(link.transfer(eff_bytes, f"{tag} {tier}"))
        return evs

    def _fetch(self, layer: int, groups: list[tuple[np.ndarray, np.ndarray]], cpu_attention: bool) -> list[simpy.Event]:
        lay = self.layout
        evs = self._move(lay.weight_bytes(layer), False, f"L{layer} weights", "weights")
        if not cpu_attention:
            for _, ctx in groups:
                evs += self._move(lay.kv_read_bytes(float(ctx.sum())), False, f"L{layer} kv", "kv_read")
                evs += self._move(lay.spill_read_bytes(ctx), False, f"L{layer} spilled kv", "kv_read")
        return evs

    # ---- compute -----------------------------------------------------------------------------
    def _dequant_time(self, elems: float) -> float:
        """GPU time to dequantise ``elems`` int4 values into 16-bit (an elementwise pass)."""
        if elems <= 0:
            return 0.0
        c = self.cost
        byts = elems * (0.5 + c.precision.a_bytes)
        return float(
            _class_time("elementwise", "dequantize", np.asarray(4.0 * elems), np.asarray(byts), {"numel": elems}, c.device, c.efficiency, c.dtype)
        )

    def _group_compute(self, q: np.ndarray, ctx: np.ndarray, cpu_attention: bool) -> tuple[float, float]:
        """(device seconds, CPU seconds) of one layer for one GPU batch."""
        c = self.cost
        lay = self.layout
        T = int(q.sum())
        layer = c.layer_time(T)
        is_dec = (q == 1) & (ctx > 0)
        attn_dev = 0.0
        cpu = 0.0
        if (~is_dec).any():
            attn_dev += c.prefill_attention(q[~is_dec], ctx[~is_dec].astype(np.float64)) / c.layers
        if is_dec.any():
            nd = int(is_dec.sum())
            kv = float(ctx[is_dec].sum()) + nd
            full = float(c.decode_attention(nd, *c.decode_context(ctx[is_dec]))) / c.layers
            if cpu_attention and self.cpu_cost is not None:
                g = lay.kv_frac.get("gpu", 0.0)
                if lay.spill_after is not None:
                    # the spilled positions are attended where they live
                    g = 1.0 - lay.spilled_tokens(ctx[is_dec]) / max(kv, 1.0)
                attn_dev += full * g
                cpu = float(self.cpu_cost.decode_attention(nd, kv)) / self.cpu_cost.layers * (1.0 - g)
            else:
                attn_dev += full
        extra = 0.0
        if lay.plan.compress_kv:
            extra += self._dequant_time(float(ctx.sum()) * lay.kv_bytes_per_token_layer * 2)
        return layer + attn_dev + extra, cpu

    def run_step(self, q: np.ndarray, ctx: np.ndarray, rows: int) -> Generator[simpy.Event, Any, None]:
        env = self.env
        c = self.cost
        lay = self.layout
        L = c.layers
        q = np.asarray(q, dtype=np.int64)
        ctx = np.asarray(ctx, dtype=np.int64)
        gbs = self.gpu_batch_size or len(q)
        groups = [(q[k : k + gbs], ctx[k : k + gbs]) for k in range(0, len(q), gbs)]
        cpu_attention = bool(lay.plan.cpu_attention and self.cpu_cost is not None)
        before, _, after = c.split_layers(q, ctx, logits_rows=rows)
        h_bytes = c.model.hidden_size * c.precision.a_bytes
        act_off = {t: f for t, f in lay.act_frac.items() if t != "gpu" and f > 0}
        dequant_w = self._dequant_time(lay.layer_weight_elems) if lay.plan.compress_weights else 0.0
        pending_writes: list[simpy.Event] = []
        ready: dict[int, simpy.Event] = {}
        computed: dict[int, simpy.Event] = {}
        if self.overlap:
            # one reader streams the layers that need data in order into BUFFERS staging buffers:
            # a layer's fetch starts once the previous fetch is done and its buffer is free (the
            # layer BUFFERS places earlier has finished computing)
            needing = [lay_i for lay_i in range(L) if self._needs_fetch(lay_i, groups, cpu_attention)]
            ready = {lay_i: env.event() for lay_i in needing}
            computed = {lay_i: env.event() for lay_i in needing}
            env.process(self._reader(needing, groups, cpu_attention, ready, computed))
        yield env.timeout(before)
        self.busy_compute += before
        for layer in range(L):
            if self.overlap:
                if layer in ready:
                    yield ready[layer]
            else:
                evs = self._fetch(layer, groups, cpu_attention)
                if evs:
                    yield simpy.AllOf(env, evs)
            if layer >= lay.resident_layers and dequant_w:
                yield env.timeout(dequant_w)
                self.busy_compute += dequant_w
            for gq, gc in groups:
                T = float(gq.sum())
                if act_off:
                    ev = self._move({t: T * h_bytes * f for t, f in act_off.items()}, False, f"L{layer} act", "act_read")
                    if ev:
                        yield simpy.AllOf(env, ev)
                dev, cpu = self._group_compute(gq, gc, cpu_attention)
                ls = env.now
                if cpu > 0 and self.cpu_stream is not None:
                    yield simpy.AllOf(env, [env.timeout(dev), env.process(self._on_cpu(cpu))])
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
                if self.overlap:
                    pending_writes += w
                elif w:
                    yield simpy.AllOf(env, w)
            if layer in computed:
                computed[layer].succeed()
        yield env.timeout(after)
        self.busy_compute += after
        if pending_writes:
            yield simpy.AllOf(env, pending_writes)

    BUFFERS = 2
    """Staging buffers for streamed layers (double buffering; check_offload_capacity reserves them)."""

    def _needs_fetch(self, layer: int, groups: list[tuple[np.ndarray, np.ndarray]], cpu_attention: bool) -> bool:
        lay = self.layout
        if lay.weight_bytes(layer):
            return True
        if cpu_attention:
            return False
        return any(lay.kv_read_bytes(float(c.sum())) or lay.spill_read_bytes(c) for _, c in groups)

    def _reader(self, needing, groups, cpu_attention, ready, computed):  # type: ignore[no-untyped-def]
        env = self.env
        for k, layer in enumerate(needing):
            if k >= self.BUFFERS:
                yield computed[needing[k - self.BUFFERS]]
            evs = self._fetch(layer, groups, cpu_attention)
            if evs:
                yield simpy.AllOf(env, evs)
            ready[layer].succeed()

    def _on_cpu(self, seconds: float) -> Generator[simpy.Event, Any, None]:
        assert self.cpu_stream is not None
        with self.cpu_stream.request() as req:
            yield req
            yield self.env.timeout(seconds)
            self.busy_cpu += seconds
