"""Per-layer compute of an offloaded plan: the one home of these costs for the simulator
(engine/offload.py) and the placement optimiser (policies/offload_opt.py).

- Linear layers on the GPU: the roofline cost model, or, where the node preset carries rates
  measured on that machine (``measured.gpu_gemm_flops_prefill/decode``), layer FLOPs at the
  measured rate of the phase (never faster than the roofline).
- Attention on the GPU: likewise (``gpu_attention_flops_prefill/decode``).
- Decode attention on the host CPU (offloaded KV, ``cpu_attention``): memory-bound, its time is
  the host memory traffic of the attention code (HOST_ATTENTION_REF_BYTES per cached element for
  FlexGen's code, less over an fp32 cache, more with grouped-query heads) at the rate of
  ``measured.cpu_attention_flops`` (measured on FlexGen's code); else a calibration profile's
  measured CPU attention; else the host DRAM's sustained bandwidth x
  HOST_ATTENTION_BW_EFFICIENCY (what FlexGen's code reached on the T4 VM).
- Group-wise int4 (de)compression on the GPU: an elementwise pass per tensor (see ``dequant``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from simkit.cost.efficiency import EfficiencyModel
from simkit.cost.iteration import IterationModel, _class_time
from simkit.errors import CalibrationError
from simkit.specs.hardware import NodeMeasured
from simkit.specs.node import Node

HOST_ATTENTION_COMPUTE_BYTES = 4.0
"""Both offloading systems attend on the host in fp32 (FlexGen's mha_gen: ``k.float()``,
``v.float()``; ZeRO-Inference's Hugging Face fork: ``query_states.float()``)."""
HOST_ATTENTION_REF_BYTES = 10.0
"""Host memory bytes FlexGen's CPU attention moves per cached element (flexgen/pytorch_backend.py
mha_gen over an fp16 cache): the upcast ``k.float()`` / ``v.float()`` reads 2 and writes 4, the
fp32 bmm reads the 4 again. Its measured rate (FlexGen's ``cpu_flops`` of the T4 VM) is this code's."""
HOST_ATTENTION_BW_EFFICIENCY = 0.615
"""Fraction of the host DRAM's sustained bandwidth that host attention's traffic reaches: FlexGen
measured 0.0123 TFLOP/s on the T4 VM for its code, 2 FLOPs per cached element and
HOST_ATTENTION_REF_BYTES bytes moved, i.e. 61.5 GB/s of the VM's 100 GB/s (gcp-t4-vm's DRAM).
Used where neither the node preset nor a calibration profile measured the host's attention."""

MMAP_THRESHOLD_MAX = 32 * 2**20
"""glibc's malloc serves an allocation above this (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: its
dynamic mmap threshold never rises above it) with a new mmap and unmaps it when freed, so every
page of such a host tensor is faulted in and zero-filled by the kernel on first write; smaller
ones are reused from the heap once the threshold has risen past them. PyTorch's CPU allocator
takes its memory from malloc (c10 alloc_cpu: posix_memalign)."""


def host_first_touch(measured: NodeMeasured | None, cpu_eff: EfficiencyModel | None) -> tuple[float, str] | None:
    """(bytes/s, where it comes from) of the host's first-touch cost (writing freshly mapped pages
    beyond writing reused ones: page faults, the kernel's zero-fill, the unmap on free), the one
    home of this rate for the simulator, the placement optimiser and the refusal of
    ``host_temporaries: fresh``: the host CPU's calibration profile (``device.host_first_touch``,
    measured on the machine by ``simkit calibrate --device cpu``) where it has one, else the node
    preset's ``measured.host_first_touch_bandwidth``, else None. A profile whose entry is not a
    positive bandwidth raises CalibrationError naming the file and key."""
    dev = cpu_eff.measured_device() if cpu_eff is not None else None
    ft = dev.get("host_first_touch") if dev else None
    if ft is not None:
        where = f"calibration profile {cpu_eff.name}"  # type: ignore[union-attr]
        bw = ft.get("bandwidth") if isinstance(ft, Mapping) else None
        if isinstance(bw, bool) or not isinstance(bw, int | float) or not math.isfinite(bw) or bw <= 0:
            raise CalibrationError(
                f"expected a positive number of bytes/s (measured by `simkit calibrate --device cpu`), got {bw!r}",
                where=where, key="device.host_first_touch.bandwidth",
            )
        threads = ft.get("threads")
        at = f", {threads} thread(s)" if threads else ""
        return float(bw), f"calibration profile {cpu_eff.name!r} (device.host_first_touch{at})"  # type: ignore[union-attr]
    if measured is not None and measured.host_first_touch_bandwidth:
        return float(measured.host_first_touch_bandwidth), "node preset (measured.host_first_touch_bandwidth)"
    return None


UNFUSED_DEQUANT_BYTES_PER_ELEM_EXTRA = 3.0
"""FlexGen's group-wise int4 decompression (flexgen/compression.py ``decompress``) runs six
elementwise kernels per tensor: a right shift and a mask of the packed bytes (each reads and writes
the N/2 packed bytes), two strided copies of those nibbles into the 16-bit output (read N/2 bytes,
write N 16-bit values), then an in-place divide by the scale and an in-place add of the offset
(each reads and writes the N 16-bit values). Bytes moved per output element: 3 + 5 x (16-bit
size) = 13, against one fused pass's 0.5 + 2 = 2.5."""
UNFUSED_QUANT_BYTES_PER_ELEM_EXTRA = 3.5
"""FlexGen's compression (``compress``) per 16-bit element of size a: min and max over each group
(read twice: 2a), subtract the offset, multiply by the scale, clamp and round (four read+write
passes: 8a), cast to uint8 (a + 1), shift the even nibbles (1) and OR the pairs (1.5):
3.5 + 11a bytes = 25.5 for fp16."""


@dataclass
class OffloadCompute:
    cost: IterationModel
    """The GPU's (or, computing on the CPU, the CPU's) cost model."""
    cpu_cost: IterationModel | None = None
    """The host CPU's cost model (attention where the KV lives)."""
    measured: NodeMeasured | None = None
    """Rates measured on this node (hardware preset ``measured:``)."""
    host_dram_bandwidth: float = 0.0
    """Sustained bandwidth of the host's DRAM, bytes/s (for HOST_ATTENTION_BW_EFFICIENCY)."""
    _first_touch: tuple[tuple[float, str] | None] | None = field(default=None, init=False, repr=False, compare=False)

    def first_touch(self) -> tuple[float, str] | None:
        """:func:`host_first_touch` of this node's preset and host CPU's calibration (resolved once)."""
        if self._first_touch is None:
            eff = self.cpu_cost.efficiency if self.cpu_cost is not None else None
            self._first_touch = (host_first_touch(self.measured, eff),)
        return self._first_touch[0]

    @property
    def _attn_width(self) -> float:
        """Query heads x head dim per GPU of the stage."""
        m = self.cost.model
        return m.num_heads / self.cost.tp * m.d_head

    def _layer_flops(self, tokens: float) -> float:
        m = self.cost.model
        return 2.0 * tokens * m.params_layers / m.num_layers / self.cost.tp

    def linear(self, tokens: int, decode: bool) -> float:
        """Seconds of one layer's non-attention operators for ``tokens`` tokens."""
        t = self.cost.layer_time(tokens)
        m = self.measured
        rate = None if m is None else (m.gpu_gemm_flops_decode if decode else m.gpu_gemm_flops_prefill)
        if rate and tokens > 0:
            t = max(t, self._layer_flops(tokens) / rate)
        return t

    def decode_attention(self, batch: int, kv_tokens: float, longest: float | None = None) -> float:
        """Seconds of one layer's decode attention on the GPU (``longest``: the longest sequence's
        attended tokens, costed as a straggler by :meth:`IterationModel.decode_attention`)."""
        t = float(self.cost.decode_attention(batch, kv_tokens, longest)) / self.cost.layers
        rate = self.measured.gpu_attention_flops_decode if self.measured is not None else None
        if rate:
            t = max(t, 4.0 * self._attn_width * kv_tokens / rate)
        return t

    def prefill_attention(self, q: np.ndarray, ctx: np.ndarray) -> float:
        """Seconds of one layer's prefill attention on the GPU."""
        t = self.cost.prefill_attention(q, ctx) / self.cost.layers
        rate = self.measured.gpu_attention_flops_prefill if self.measured is not None else None
        if rate:
            qf = np.asarray(q, dtype=np.float64)
            pairs = float((qf * ctx + qf * (qf + 1.0) / 2.0).sum())
            t = max(t, 4.0 * self._attn_width * pairs / rate)
        return t

    def host_attention_bytes(self, cache_bytes: float) -> float:
        """Host memory bytes the decode attention on the CPU moves per cached element and query
        head, over a host KV cache of ``cache_bytes`` per element. Attention runs in fp32
        (HOST_ATTENTION_COMPUTE_BYTES): a 16-bit cache is first upcast to fp32 copies (read
        ``cache_bytes``, write 4: FlexGen's mha_gen, ZeRO-Inference's BLOOM); an fp32 cache is
        read in place (ZeRO-Inference's OPT and LLaMA keep their host cache in fp32). A
        grouped-query model's KV heads are then copied once per query head of their group
        (Hugging Face's ``repeat_kv``: read 4 per KV element, write 4 per query head) before
        the matmuls read 4 per query head."""
        m = self.cost.model
        g = m.num_heads / m.num_kv_heads if m.num_kv_heads < m.num_heads else 1.0
        f = HOST_ATTENTION_COMPUTE_BYTES
        b = f
        if cache_bytes != f:
            b += (cache_bytes + f) / g
        if g > 1.0:
            b += f / g + f
        return b

    def host_attention_fresh_bytes(self, cache_bytes: float, kv_tokens: float) -> float:
        """Bytes per cached element and query head that a host attention code allocating its
        temporaries per call (``host_temporaries: fresh``) writes into new memory, over a host cache
        of ``cache_bytes`` per element and ``kv_tokens`` cached tokens: the fp32 copies of a 16-bit
        cache (4 per KV head) and ``repeat_kv``'s copies (4 per query head), each counted where
        one copy of the keys (or values) exceeds MMAP_THRESHOLD_MAX (:meth:`host_attention_bytes`
        counts the same writes as traffic)."""
        m = self.cost.model
        g = m.num_heads / m.num_kv_heads if m.num_kv_heads < m.num_heads else 1.0
        f = HOST_ATTENTION_COMPUTE_BYTES
        kv_copy = kv_tokens * m.num_kv_heads * m.d_head * f
        b = 0.0
        if cache_bytes != f and kv_copy > MMAP_THRESHOLD_MAX:
            b += f / g
        if g > 1.0 and kv_copy * g > MMAP_THRESHOLD_MAX:
            b += f
        return b

    def cpu_decode_attention(
        self, batch: int, kv_tokens: float, fp32_cache: bool = False, fresh_temporaries: bool = False
    ) -> float:
        """Seconds of one layer's decode attention on the host CPU over ``kv_tokens`` cached tokens
        (``fp32_cache``: the host holds the cache in fp32). Host attention is memory-bound (FlexGen's
        measured rate is 0.6% of the T4 VM's CPU peak), so its time is the bytes it moves
        (:meth:`host_attention_bytes`) at the rate measured for FlexGen's code, which writes into a
        reused workspace; ``fresh_temporaries``: the code writes its copies into new tensors every
        call, whose first-touch cost (:meth:`host_attention_fresh_bytes` at the host's first-touch
        rate, :meth:`first_touch`) comes on top."""
        cache = HOST_ATTENTION_COMPUTE_BYTES if fp32_cache else self.cost.precision.kv_bytes
        t = self._cpu_attention_traffic(batch, kv_tokens, cache)
        if fresh_temporaries:
            ft = self.first_touch()
            if ft is None:
                raise ValueError(
                    "fresh host temporaries need the host's first-touch rate: the CPU calibration profile's "
                    "device.host_first_touch or the node's measured.host_first_touch_bandwidth"
                )
            rate = ft[0]
            per_head = 2.0 * self.cost.model.num_heads * self.cost.model.d_head * kv_tokens
            t += per_head * self.host_attention_fresh_bytes(cache, kv_tokens) / rate
        return t

    def _cpu_attention_traffic(self, batch: int, kv_tokens: float, cache: float) -> float:
        """Seconds of the host attention's memory traffic over a cache of ``cache`` bytes per element."""
        flops = 4.0 * self.cost.model.num_heads * self.cost.model.d_head * kv_tokens
        traffic = self.host_attention_bytes(cache) / HOST_ATTENTION_REF_BYTES
        if self.measured is not None and self.measured.cpu_attention_flops:
            return flops * traffic / self.measured.cpu_attention_flops
        c = self.cpu_cost
        if c is not None and c.efficiency.is_measured("attn_decode"):
            return float(c.decode_attention(batch, kv_tokens)) / c.layers
        if self.host_dram_bandwidth > 0:
            # 2 FLOPs per cached element and query head, HOST_ATTENTION_REF_BYTES moved for them
            rate = self.host_dram_bandwidth * HOST_ATTENTION_BW_EFFICIENCY * 2.0 / HOST_ATTENTION_REF_BYTES
            return flops * traffic / rate
        if c is not None:
            return float(c.decode_attention(batch, kv_tokens)) / c.layers
        return 0.0

    def host_copy_bandwidth(self) -> float:
        """Bytes/s a host-side elementwise pass over large tensors moves (read plus written): the rate
        FlexGen's own host code reached on this node where it was measured
        (``measured.cpu_attention_flops``: its upcast copies and fp32 matmuls, HOST_ATTENTION_REF_BYTES
        per 2 FLOPs), else the host DRAM's sustained bandwidth x HOST_ATTENTION_BW_EFFICIENCY."""
        m = self.measured
        if m is not None and m.cpu_attention_flops:
            return m.cpu_attention_flops * HOST_ATTENTION_REF_BYTES / 2.0
        return self.host_dram_bandwidth * HOST_ATTENTION_BW_EFFICIENCY

    def dequant(self, elems: float, unfused: bool = False, quantise: bool = False) -> float:
        """GPU seconds to dequantise ``elems`` group-wise int4 values into 16-bit (``quantise``:
        to quantise them): fused, one elementwise pass reading the packed values and writing the
        16-bit tensor (either way); ``unfused``, the passes of FlexGen's PyTorch implementation
        (UNFUSED_DEQUANT_BYTES_PER_ELEM_EXTRA, UNFUSED_QUANT_BYTES_PER_ELEM_EXTRA)."""
        if elems <= 0:
            return 0.0
        c = self.cost
        a = c.precision.a_bytes
        if not unfused:
            byts = elems * (0.5 + a)
        elif quantise:
            byts = elems * (UNFUSED_QUANT_BYTES_PER_ELEM_EXTRA + 11.0 * a)
        else:
            byts = elems * (UNFUSED_DEQUANT_BYTES_PER_ELEM_EXTRA + 5.0 * a)
        return float(
            _class_time("elementwise", "dequantize", np.asarray(4.0 * elems), np.asarray(byts), {"numel": elems}, c.device, c.efficiency, c.dtype)
        )


RELAY_NARROW_BYTES = 3.0
"""Host bytes per packed int4 byte of the narrowing pass of FlexGen's fp16 relay: ATen converts a
blocking host-to-device copy between dtypes on the host (copy_kernel_cuda: ``src.to(dst dtype)``,
then a same-dtype copy), reading the 2-byte relay values and writing 1-byte ones into a new
pageable tensor."""


def fp16_relay_h2d_factor(int4_bytes_per_elem: float, pageable_ratio: float, pinned_factor: float, h2d_bandwidth: float,
                          host_bandwidth: float) -> float:
    """Host-to-GPU link bytes per stored byte of a group-wise int4 tensor that FlexGen's copy threads
    read from disk to the GPU (``plan.offload.disk_relay: fp16``). Its relay buffer is fp16
    (flexgen/pytorch_backend.py copy_worker_func: ``cpu_buf = torch.empty((1 * GB,),
    dtype=torch.float16, pin_memory=True)``, viewed to the source's shape): the packed uint8 data
    (0.5 bytes of the ``int4_bytes_per_elem``) is widened into it as it is read from the memory map,
    then ``dst_data.copy_(tmp_cpu_buf)`` narrows it back on the host into a new pageable tensor
    (RELAY_NARROW_BYTES at ``host_bandwidth``) that crosses PCIe pageable (``pageable_ratio`` of
    ``h2d_bandwidth``); both are the copy call's time, counted on the link as the pageable factor
    counts a pageable copy's host staging. The fp16 scales and minima keep the plan's pinning
    (``pinned_factor``: 1, or the pageable factor of a pageable plan)."""
    data = 0.5 / int4_bytes_per_elem
    narrow = RELAY_NARROW_BYTES * h2d_bandwidth / host_bandwidth if host_bandwidth > 0 else 0.0
    return data * (1.0 / pageable_ratio + narrow) + (1.0 - data) / pinned_factor


def offload_compute(node: Node, cost: IterationModel, cpu_cost: IterationModel | None, plain: bool) -> OffloadCompute:
    """The per-layer costs of an offloaded plan on ``node`` (shared by the simulator and the
    placement optimiser). The rates a node preset measured (``measured:``, e.g. FlexGen's of
    the T4 VM) are those of an offloading runtime running layer by layer: they apply to every
    plan the offload executor runs on a GPU (not to ``plain`` ones computing on the CPU); a plan
    without plan.offload keeps the cost model of a non-offloaded run."""
    return OffloadCompute(cost, cpu_cost, None if plain else node.spec.measured, node.dram.bandwidth * node.sockets)

