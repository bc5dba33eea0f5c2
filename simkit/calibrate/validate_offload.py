"""Real weight offloading on this machine vs simkit's prediction (``simkit validate --offload``).

A small Llama-architecture model with random weights (RMSNorm, RoPE, attention through
``scaled_dot_product_attention`` with a real KV cache, SwiGLU MLP, LM head, greedy sampling; the
very kernels :mod:`simkit.calibrate.bench` calibrates) is written to ONE file on disk: every
layer's weights contiguously, each layer's region starting on a 4096-byte boundary (the
embedding, final norm and LM head follow in a last aligned region).

It then runs for real on the CPU with the weights streamed from that file layer by layer:

* a reader thread reads each streamed layer's region with direct I/O (``os.O_DIRECT`` into
  page-aligned, pre-faulted ``mmap.mmap(-1, n)`` buffers) into one of two DRAM buffers (double
  buffering) while the previous layer computes (``os.preadv`` and torch's kernels release the GIL);
  the compute thread wraps the buffer with ``torch.frombuffer`` (no copy) and hands the buffer
  back when the layer is done. Within a forward pass the reader runs ahead as far as the two
  buffers allow; it starts at the beginning of the pass (no prefetch across passes);
* where the filesystem refuses O_DIRECT the run says so loudly and falls back to buffered reads
  with ``posix_fadvise(POSIX_FADV_DONTNEED)`` on the range before every read, so every read
  still comes from the device (recorded as ``io_mode: buffered+fadvise``);
* the first ``resident`` layers (and the embedding, final norm and LM head) are read once into
  DRAM before timing and never re-read.

Prefill (``batch`` x ``context`` tokens from an empty cache, up to the first sampled token) and
decode (``batch`` sequences, one new token each over a real KV cache) are timed with the wall
clock: after a warm-up generation, ``--repeats`` generations of ``--decode-tokens`` tokens, in
``--rounds`` passes over all configurations (so drifts of a shared disk spread over all of them);
the prefill time is the median of the prefill steps, the per-token decode time the median of the
generations' mean decode step (what simkit's TPOT is). The reader's achieved bandwidth is
recorded, and the calibration's own SSD benchmark is re-run at the reader's block size and queue
depth afterwards, so a stale profile figure shows.

The prediction is :func:`simkit.simulate.simulate` on a scenario for the same configuration:
hardware ``ci-vm``, ``plan.execution.device: cpu``, the same model dims (a temporary model YAML),
the precision that ran, ``plan.offload: {weights: {gpu: 0, disk: 1}, resident_layers: R,
overlap: true}``, a fixed batch with static batching, and the calibration profile; TTFT is the
predicted prefill time and TPOT the predicted per-token decode time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import mmap
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simkit.errors import CalibrationError, SimkitError
from simkit.units import comma_items

ALIGN = 4096
"""Alignment of every layer's region in the weight file (and of the O_DIRECT reads)."""
TENSOR_ALIGN = 64
"""Alignment of each tensor inside a region (a cache line; what SIMD kernels like)."""
DEFAULT_PROFILE = "calibration/profiles/ci-vm-cpu"
HARDWARE = "ci-vm"
FIDELITY_DATE = "2026-11-22"
LAYER_TENSORS = ("ln1", "wqkv", "wo", "ln2", "wup", "wdown")
EXTRA_TENSORS = ("embed", "norm", "lm_head")


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OffloadConfig:
    layers: tuple[int, ...] = (4, 8)
    hidden: int = 1024
    heads: int = 16
    kv_heads: int = 16
    ffn: int = 2816
    vocab: int = 8192
    batch_sizes: tuple[int, ...] = (1, 4)
    context_lens: tuple[int, ...] = (128,)
    resident: tuple[int, ...] = (0, 2)
    decode_tokens: int = 8
    """Tokens generated per request (the first by prefill, the rest by decode steps)."""
    repeats: int = 3
    """Timed generations per configuration per round."""
    rounds: int = 3
    """Passes over all configurations (the measurement is the median over rounds x repeats)."""
    warmup: int = 1
    dtype: str | None = None
    """fp32 or bf16; None: what the profile calibrated (bf16 when it has it, else fp32)."""
    threads: int | None = None
    """torch threads; None: the profile's thread count, else torch's default."""
    directory: str | None = None
    """Where the weight file lives; None: a temporary folder on the repository's filesystem."""
    block_bytes: int = 4 << 20
    """Bytes per read request of the reader (0: one request per layer region); the scenario's
    ``plan.offload.io_block_size``."""
    io_depth: int = 8
    """Read requests the reader keeps in flight (threads issuing ``block_bytes`` reads); the
    scenario's ``plan.offload.io_queue_depth``."""
    direct: bool | None = None
    """None: O_DIRECT, falling back loudly; True: require O_DIRECT; False: force the fallback."""
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def check(self) -> None:
        for name in ("hidden", "heads", "kv_heads", "ffn", "vocab", "repeats", "rounds", "decode_tokens"):
            if getattr(self, name) < 1:
                raise CalibrationError(f"--{name.replace('_', '-')} must be >= 1")
        if self.decode_tokens < 2:
            raise CalibrationError("--decode-tokens must be >= 2 (one prefill token and at least one decode step)")
        if not self.layers or min(self.layers) < 1:
            raise CalibrationError("--layers takes positive layer counts")
        if self.hidden % self.heads:
            raise CalibrationError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.heads % self.kv_heads:
            raise CalibrationError(f"heads ({self.heads}) must be a multiple of kv heads ({self.kv_heads})")
        if self.head_dim % 2:
            raise CalibrationError("hidden / heads must be even (RoPE rotates pairs)")
        if any(r < 0 for r in self.resident):
            raise CalibrationError("--resident takes layer counts >= 0")
        if self.block_bytes < 0 or self.block_bytes % ALIGN:
            raise CalibrationError(f"--block must be a multiple of {ALIGN} bytes (or 0: one request per layer)")
        if self.io_depth < 1:
            raise CalibrationError("--io-depth must be >= 1")
        if self.dtype not in (None, "fp32", "bf16"):
            raise CalibrationError(f"--dtype must be fp32 or bf16 (got {self.dtype!r})")


# ---------------------------------------------------------------------------------------------
# The weight file
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    """One tensor inside a region: byte offset from the region's start, shape."""

    name: str
    offset: int
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class WeightFile:
    """Where every tensor of the model lives in the file."""

    path: str
    dtype: str
    elem_bytes: int
    num_layers: int
    layer_slots: tuple[Slot, ...]
    layer_payload: int
    """Bytes of one layer's tensors (what the simulator streams per layer)."""
    layer_stride: int
    """Bytes between two layers' regions (the payload rounded up to ALIGN): what is read."""
    extra_slots: tuple[Slot, ...]
    extra_offset: int
    extra_stride: int

    def layer_offset(self, i: int) -> int:
        if not 0 <= i < self.num_layers:
            raise IndexError(f"layer {i} not in the file ({self.num_layers} layers)")
        return i * self.layer_stride

    @property
    def file_bytes(self) -> int:
        return self.extra_offset + self.extra_stride


def _slots(shapes: Sequence[tuple[str, tuple[int, ...]]], elem: int) -> tuple[tuple[Slot, ...], int]:
    out = []
    off = 0
    for name, shape in shapes:
        off = _round_up(off, TENSOR_ALIGN)
        n = int(np.prod(shape)) * elem
        out.append(Slot(name, off, tuple(shape), n))
        off += n
    return tuple(out), off


def layer_shapes(cfg: OffloadConfig) -> list[tuple[str, tuple[int, ...]]]:
    h, f, d = cfg.hidden, cfg.ffn, cfg.head_dim
    qkv = (cfg.heads + 2 * cfg.kv_heads) * d
    return [("ln1", (h,)), ("wqkv", (qkv, h)), ("wo", (h, cfg.heads * d)), ("ln2", (h,)), ("wup", (2 * f, h)), ("wdown", (h, f))]


def extra_shapes(cfg: OffloadConfig) -> list[tuple[str, tuple[int, ...]]]:
    h, v = cfg.hidden, cfg.vocab
    return [("embed", (v, h)), ("norm", (h,)), ("lm_head", (v, h))]


def plan_file(cfg: OffloadConfig, num_layers: int, dtype: str, path: str | os.PathLike[str]) -> WeightFile:
    elem = {"fp32": 4, "bf16": 2}[dtype]
    ls, payload = _slots(layer_shapes(cfg), elem)
    es, epayload = _slots(extra_shapes(cfg), elem)
    stride = _round_up(payload, ALIGN)
    return WeightFile(str(path), dtype, elem, num_layers, ls, payload, stride, es, num_layers * stride, _round_up(epayload, ALIGN))


def _gen_tensor(torch: Any, name: str, shape: tuple[int, ...], cfg: OffloadConfig, gen: Any, dtype: str) -> Any:
    """Random weights as validate.TorchLlama draws them (norm weights near 1, projections ~1/sqrt(fan_in))."""
    from simkit.calibrate.bench import torch_dtype

    t = torch.randn(*shape, generator=gen, dtype=torch.float32)
    if name in ("ln1", "ln2", "norm"):
        t.mul_(0.1).add_(1.0)
    elif name == "wdown":
        t.mul_(1.0 / math.sqrt(cfg.ffn))
    elif name != "embed":
        t.mul_(1.0 / math.sqrt(cfg.hidden))
    return t.to(torch_dtype(dtype)).contiguous()


def _region_bytes(torch: Any, tensors: dict[str, Any], slots: Sequence[Slot], size: int) -> bytearray:
    buf = bytearray(size)
    for s in slots:
        raw = tensors[s.name].reshape(-1).view(torch.uint8).numpy()
        assert raw.nbytes == s.nbytes
        buf[s.offset : s.offset + s.nbytes] = raw.tobytes()
    return buf


def write_weight_file(
    cfg: OffloadConfig, num_layers: int, dtype: str, path: str | os.PathLike[str], *, keep: bool = False
) -> tuple[WeightFile, dict[str, Any] | None]:
    """Write ``num_layers`` layers (+ embedding, final norm, LM head) of random weights to ``path``,
    each layer's region 4096-aligned; fsync and drop the file from the page cache. With ``keep``
    also return the tensors (``{"layers": [dict, ...], "extra": dict}``) for an in-memory run."""
    from simkit.calibrate.bench import require_torch

    torch = require_torch()
    wf = plan_file(cfg, num_layers, dtype, path)
    kept: dict[str, Any] | None = {"layers": [], "extra": {}} if keep else None
    fd = os.open(wf.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for i in range(num_layers + 1):
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + i)
            shapes = layer_shapes(cfg) if i < num_layers else extra_shapes(cfg)
            tensors = {n: _gen_tensor(torch, n, s, cfg, gen, dtype) for n, s in shapes}
            slots, off, size = (
                (wf.layer_slots, wf.layer_offset(i), wf.layer_stride) if i < num_layers else (wf.extra_slots, wf.extra_offset, wf.extra_stride)
            )
            data = _region_bytes(torch, tensors, slots, size)
            done = 0
            while done < size:
                done += os.pwrite(fd, memoryview(data)[done:], off + done)
            if kept is not None:
                if i < num_layers:
                    kept["layers"].append(tensors)
                else:
                    kept["extra"] = tensors
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return wf, kept


# ---------------------------------------------------------------------------------------------
# Direct I/O
# ---------------------------------------------------------------------------------------------
def aligned_buffer(nbytes: int) -> mmap.mmap:
    """A page-aligned anonymous buffer, pre-faulted (a first O_DIRECT read into untouched pages
    pays for faulting them in)."""
    buf = mmap.mmap(-1, _round_up(max(nbytes, 1), ALIGN))
    step = mmap.PAGESIZE
    zero = b"\0"
    for off in range(0, len(buf), step):
        buf[off : off + 1] = zero
    return buf


def filesystem_of(path: str | os.PathLike[str]) -> str:
    from simkit.calibrate.ssd import filesystem_of as fs

    return fs(path)


class DirectReader:
    """Reads aligned regions of one file: O_DIRECT where the filesystem allows it, else buffered
    reads with ``posix_fadvise(DONTNEED)`` on the range before every read."""

    def __init__(self, path: str, *, direct: bool | None = None, block_bytes: int = 0, io_depth: int = 1, quiet: bool = False) -> None:
        self.path = path
        self.block_bytes = block_bytes
        self.io_depth = io_depth
        self.direct = False
        self.fd = -1
        self.note = ""
        o_direct = getattr(os, "O_DIRECT", 0)
        reason = "O_DIRECT disabled (--buffered)" if direct is False else ""
        if direct is not False:
            if not o_direct:
                reason = "this platform has no O_DIRECT"
            else:
                try:
                    self.fd = os.open(path, os.O_RDONLY | o_direct)
                    probe = aligned_buffer(ALIGN)
                    os.preadv(self.fd, [probe], 0)
                    probe.close()
                    self.direct = True
                except OSError as e:
                    reason = f"O_DIRECT refused by the filesystem ({filesystem_of(path) or 'unknown'}): {e.strerror or e}"
                    if self.fd >= 0:
                        os.close(self.fd)
                    self.fd = -1
        if direct and not self.direct:
            raise CalibrationError(f"direct I/O required but unavailable: {reason}", where=path)
        if not self.direct:
            self.fd = os.open(path, os.O_RDONLY)
            self.note = (
                f"{reason}; FALLBACK: buffered reads with posix_fadvise(POSIX_FADV_DONTNEED) on the range before "
                "every read (no page-cache hits, but the data is copied through the page cache)"
            )
            if not quiet:
                bar = "!" * 100
                _log(f"{bar}\nWARNING: {path}: {self.note}\n{bar}")
        else:
            self.note = "O_DIRECT into page-aligned mmap buffers"
        self.pool = ThreadPoolExecutor(io_depth) if io_depth > 1 else None

    @property
    def mode(self) -> str:
        return "direct" if self.direct else "buffered+fadvise"

    def _pread(self, view: memoryview, offset: int) -> int:
        n = len(view)
        if not self.direct and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, offset, n, os.POSIX_FADV_DONTNEED)
        done = 0
        while done < n:
            got = os.preadv(self.fd, [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"short read at offset {offset + done} of {self.path}")
            done += got
        return done

    def read(self, buf: mmap.mmap, offset: int, nbytes: int) -> int:
        """Read ``nbytes`` (a multiple of ALIGN) at ``offset`` (aligned) into ``buf``."""
        if offset % ALIGN or nbytes % ALIGN:
            raise ValueError("direct reads need aligned offsets and sizes")
        mv = memoryview(buf)[:nbytes]
        block = self.block_bytes or nbytes
        chunks = [(a, min(block, nbytes - a)) for a in range(0, nbytes, block)]
        if self.pool is None or len(chunks) == 1:
            for a, n in chunks:
                self._pread(mv[a : a + n], offset + a)
        else:
            list(self.pool.map(lambda c: self._pread(mv[c[0] : c[0] + c[1]], offset + c[0]), chunks))
        return nbytes

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def tensor_views(torch: Any, buf: mmap.mmap, slots: Sequence[Slot], dtype: str) -> dict[str, Any]:
    """Zero-copy torch tensors over ``buf`` (torch.frombuffer)."""
    from simkit.calibrate.bench import torch_dtype

    dt = torch_dtype(dtype)
    out = {}
    for s in slots:
        count = int(np.prod(s.shape))
        out[s.name] = torch.frombuffer(buf, dtype=dt, count=count, offset=s.offset).view(*s.shape)
    return out


# ---------------------------------------------------------------------------------------------
# Weight providers: streamed from the file, or all in memory
# ---------------------------------------------------------------------------------------------
@dataclass
class PassStats:
    read_s: float = 0.0
    """Reader-thread seconds spent reading this pass."""
    wait_s: float = 0.0
    """Seconds the compute thread waited for a layer's weights this pass."""
    bytes_read: int = 0


class InMemoryWeights:
    """Every layer already in DRAM (the reference the streamed run must reproduce)."""

    def __init__(self, layers: Sequence[dict[str, Any]], extra: dict[str, Any]) -> None:
        self.layers = list(layers)
        self.extra = extra
        self.stats = PassStats()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def begin_pass(self) -> None:
        self.stats = PassStats()

    def layer(self, i: int) -> dict[str, Any]:
        return self.layers[i]

    def release(self, i: int) -> None:
        pass

    def end_pass(self) -> PassStats:
        return self.stats

    def close(self) -> None:
        pass


class StreamedWeights:
    """Layers ``resident..num_layers-1`` streamed from the file by a reader thread into two DRAM
    buffers per forward pass; layers ``0..resident-1`` and the extras read once into DRAM."""

    def __init__(
        self,
        wf: WeightFile,
        num_layers: int,
        resident: int,
        *,
        direct: bool | None = None,
        block_bytes: int = 0,
        io_depth: int = 1,
        quiet: bool = False,
    ) -> None:
        from simkit.calibrate.bench import require_torch

        torch = require_torch()
        if num_layers > wf.num_layers:
            raise CalibrationError(f"the weight file has {wf.num_layers} layers, {num_layers} asked for")
        self.wf = wf
        self._n = num_layers
        self.resident = min(resident, num_layers)
        self.reader = DirectReader(wf.path, direct=direct, block_bytes=block_bytes, io_depth=io_depth, quiet=quiet)
        # resident layers and the extras: read once, before timing
        self._keep: list[mmap.mmap] = []
        self.resident_views: list[dict[str, Any]] = []
        for i in range(self.resident):
            b = aligned_buffer(wf.layer_stride)
            self.reader.read(b, wf.layer_offset(i), wf.layer_stride)
            self._keep.append(b)
            self.resident_views.append(tensor_views(torch, b, wf.layer_slots, wf.dtype))
        eb = aligned_buffer(wf.extra_stride)
        self.reader.read(eb, wf.extra_offset, wf.extra_stride)
        self._keep.append(eb)
        self.extra = tensor_views(torch, eb, wf.extra_slots, wf.dtype)
        # the double buffers and their (fixed) tensor views
        self.bufs = [aligned_buffer(wf.layer_stride) for _ in range(2)]
        self.views = [tensor_views(torch, b, wf.layer_slots, wf.dtype) for b in self.bufs]
        self._free: queue.Queue[int] = queue.Queue()
        for k in range(len(self.bufs)):
            self._free.put(k)
        self._jobs: queue.Queue[list[int] | None] = queue.Queue()
        self._ready: queue.Queue[tuple[int, int, float, BaseException | None]] = queue.Queue()
        self._slot_of: dict[int, int] = {}
        self.stats = PassStats()
        self.read_log: list[tuple[float, int]] = []
        """(seconds, bytes) of every streamed layer read (the reader's achieved bandwidth)."""
        self._thread = threading.Thread(target=self._run, name="simkit-layer-reader", daemon=True)
        self._thread.start()

    @property
    def num_layers(self) -> int:
        return self._n

    @property
    def io_mode(self) -> str:
        return self.reader.mode

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            for i in job:
                slot = self._free.get()
                if slot < 0:  # shutting down
                    return
                t0 = time.perf_counter()
                err: BaseException | None = None
                try:
                    self.reader.read(self.bufs[slot], self.wf.layer_offset(i), self.wf.layer_stride)
                except BaseException as e:  # noqa: BLE001 - handed to the compute thread
                    err = e
                self._ready.put((i, slot, time.perf_counter() - t0, err))
                if err is not None:
                    break

    def begin_pass(self) -> None:
        """Start streaming this pass's layers (the reader runs ahead by up to two layers)."""
        self.stats = PassStats()
        streamed = list(range(self.resident, self._n))
        if streamed:
            self._jobs.put(streamed)

    def layer(self, i: int) -> dict[str, Any]:
        if i < self.resident:
            return self.resident_views[i]
        t0 = time.perf_counter()
        got, slot, dt, err = self._ready.get()
        self.stats.wait_s += time.perf_counter() - t0
        if err is not None:
            raise CalibrationError(f"reading layer {got} failed: {err}", where=self.wf.path)
        if got != i:
            raise RuntimeError(f"layer reader out of order: wanted {i}, got {got}")
        self.stats.read_s += dt
        self.stats.bytes_read += self.wf.layer_stride
        self.read_log.append((dt, self.wf.layer_stride))
        self._slot_of[i] = slot
        return self.views[slot]

    def release(self, i: int) -> None:
        if i >= self.resident:
            self._free.put(self._slot_of.pop(i))

    def end_pass(self) -> PassStats:
        return self.stats

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._free.put(-1)
            self._thread.join(timeout=30)
        self.reader.close()
        self.views = []
        self.resident_views = []
        self.extra = {}


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
class OffloadLlama:
    """A Llama-architecture decoder whose layer weights come from a weight provider."""

    def __init__(self, cfg: OffloadConfig, weights: Any, dtype: str, max_ctx: int) -> None:
        from simkit.calibrate.bench import require_torch, rope_tables

        self.torch = require_torch()
        self.cfg = cfg
        self.w = weights
        self.dtype = dtype
        self.d = cfg.head_dim
        self.max_ctx = max_ctx
        self.cos, self.sin = rope_tables(max_ctx + 1, self.d, dtype, "cpu")
        self.cache: list[tuple[Any, Any]] = []
        self.cache_batch = 0

    def alloc_cache(self, batch: int) -> None:
        from simkit.calibrate.bench import torch_dtype

        if self.cache_batch == batch and len(self.cache) == self.w.num_layers:
            return
        dt = torch_dtype(self.dtype)
        shape = (batch, self.cfg.kv_heads, self.max_ctx + 1, self.d)
        self.cache = [(self.torch.zeros(shape, dtype=dt), self.torch.zeros(shape, dtype=dt)) for _ in range(self.w.num_layers)]
        self.cache_batch = batch

    def logits(self, ids: Any, pos: int) -> Any:
        """One forward pass of ``ids`` (batch, seq) at positions pos..: the last position's logits
        of each sequence (batch, vocab). Writes K/V into the cache."""
        from simkit.calibrate.bench import k_embedding, k_rmsnorm
        from simkit.calibrate.validate import layer_forward

        F = self.torch.nn.functional
        cfg = self.cfg
        b, s = ids.shape
        w = self.w
        w.begin_pass()
        x = k_embedding(ids.reshape(-1), w.extra["embed"])
        for i in range(w.num_layers):
            lw = w.layer(i)
            kc, vc = self.cache[i]
            x = layer_forward(F, x, lw, kc, vc, self.cos, self.sin, b, s, cfg, self.d, pos)
            w.release(i)
        x = k_rmsnorm(x, w.extra["norm"])
        last = x.view(b, s, -1)[:, -1]
        return F.linear(last, w.extra["lm_head"])

    def step(self, ids: Any, pos: int) -> Any:
        """One forward pass plus greedy sampling: the next token of each sequence (batch, 1)."""
        from simkit.calibrate.bench import k_sampling

        return k_sampling(self.logits(ids, pos)).view(-1, 1)


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------
@dataclass
class Measured:
    prefill_s: float
    decode_s: float
    prefill_all: list[float]
    decode_all: list[float]
    """Mean decode step of each timed generation."""
    prefill_read_s: float = 0.0
    prefill_wait_s: float = 0.0
    decode_read_s: float = 0.0
    decode_wait_s: float = 0.0
    bytes_per_pass: int = 0


def measure(
    model: OffloadLlama, batch: int, context: int, decode_tokens: int, repeats: int, warmup: int, seed: int = 0
) -> Measured:
    """Time ``warmup + repeats`` generations of ``decode_tokens`` tokens for ``batch`` prompts of
    ``context`` tokens; keep the timed ones (medians over repeats)."""
    torch = model.torch
    g = torch.Generator().manual_seed(seed + 7919 * batch + context)
    ids = torch.randint(0, model.cfg.vocab, (batch, context), generator=g)
    model.alloc_cache(batch)
    pre: list[float] = []
    dec: list[float] = []
    pre_stats: list[PassStats] = []
    dec_stats: list[PassStats] = []
    with torch.inference_mode():
        for rep in range(warmup + repeats):
            t0 = time.perf_counter()
            tok = model.step(ids, 0)
            t_pre = time.perf_counter() - t0
            ps = model.w.end_pass()
            steps = []
            ds = PassStats()
            for j in range(decode_tokens - 1):
                t0 = time.perf_counter()
                tok = model.step(tok, context + j)
                steps.append(time.perf_counter() - t0)
                st = model.w.end_pass()
                ds.read_s += st.read_s / (decode_tokens - 1)
                ds.wait_s += st.wait_s / (decode_tokens - 1)
                ds.bytes_read = st.bytes_read
            if rep >= warmup:
                pre.append(t_pre)
                dec.append(float(np.mean(steps)))
                pre_stats.append(ps)
                dec_stats.append(ds)
    return Measured(
        float(np.median(pre)),
        float(np.median(dec)),
        pre,
        dec,
        float(np.median([s.read_s for s in pre_stats])),
        float(np.median([s.wait_s for s in pre_stats])),
        float(np.median([s.read_s for s in dec_stats])),
        float(np.median([s.wait_s for s in dec_stats])),
        pre_stats[-1].bytes_read,
    )


# ---------------------------------------------------------------------------------------------
# Profile and prediction
# ---------------------------------------------------------------------------------------------
def read_profile_facts(profile: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The profile's device facts (threads, dtypes, ssd), with ``_path`` (its profile.yaml) and
    ``_name``; None for no profile (``None`` or ``none``: datasheet defaults). The profile is
    read as ``simkit validate`` reads it (:func:`simkit.calibrate.validate.load_profile`): a
    relative path not under the working folder is looked up in simkit's data folder (the default
    ``calibration/profiles/ci-vm-cpu`` of an installed simkit), and a profile named but not found,
    or one that does not load, is refused (CalibrationError naming the file and key) rather than
    replaced by datasheet defaults."""
    if profile is None or str(profile) == "none":
        return None
    from simkit.calibrate.validate import load_profile, profile_device

    prof = load_profile(profile)
    dev = dict(profile_device(prof))
    f = Path(prof.path) if prof.path is not None else Path(profile)
    dev["_path"] = str(f)
    dev["_name"] = prof.name or f.parent.name
    return dev


def profile_dtypes(facts: dict[str, Any]) -> set[str]:
    dts = facts.get("dtypes")
    if dts:
        return set(dts)
    sup = facts.get("dtype_support") or {}
    return {k for k, v in sup.items() if v and k in ("fp32", "bf16")}


def model_yaml(cfg: OffloadConfig, num_layers: int, max_ctx: int) -> dict[str, Any]:
    return {
        "kind": "model",
        "name": f"validate-offload-llama-{num_layers}l",
        "family": "llama",
        "description": "simkit validate --offload: random-weight Llama-architecture model",
        "num_layers": num_layers,
        "hidden_size": cfg.hidden,
        "num_heads": cfg.heads,
        "num_kv_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "ffn_size": cfg.ffn,
        "gated_mlp": True,
        "activation": "silu",
        "vocab_size": cfg.vocab,
        "norm": "rmsnorm",
        "positional": "rope",
        "max_context": max(max_ctx, 16),
    }


def scenario_dict(
    model_path: str, dtype: str, layers: int, resident: int, batch: int, context: int, decode_tokens: int, calibration: str,
    io_block: int = 4 << 20, io_depth: int = 8,
) -> dict[str, Any]:
    return {
        "name": f"validate-offload L{layers} R{resident} b{batch} ctx{context}",
        "hardware": HARDWARE,
        "model": model_path,
        "calibration": calibration,
        "workload": {"batch": {"num_prompts": batch, "input_tokens": context, "output_tokens": decode_tokens}},
        "plan": {
            "execution": {"device": "cpu"},
            "precision": {"weights": dtype, "activations": dtype, "kv_cache": dtype},
            "batching": {"policy": "static"},
            "offload": {
                "weights": {"gpu": 0, "disk": 1}, "resident_layers": resident, "overlap": True,
                "io_block_size": f"{int(io_block)} B", "io_queue_depth": int(io_depth),
            },
        },
    }


@dataclass
class Predicted:
    prefill_s: float
    decode_s: float
    calibration: str
    resources: dict[str, Any] = field(default_factory=dict)
    nvme_read_bw: float = 0.0


def predict(
    model_path: str, dtype: str, layers: int, resident: int, batch: int, context: int, decode_tokens: int, calibration: str,
    io_block: int = 4 << 20, io_depth: int = 8,
) -> Predicted:
    import warnings

    from simkit.scenario import scenario_from_dict
    from simkit.simulate import simulate

    sc = scenario_from_dict(
        scenario_dict(model_path, dtype, layers, resident, batch, context, decode_tokens, calibration, io_block, io_depth)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = simulate(sc, record_iterations=False)
    s = res.summary
    rs = s.get("resources", {})
    nv = rs.get("nvme_read", {})
    bw = nv["bytes"] / nv["busy_s"] if nv.get("busy_s") else 0.0
    return Predicted(float(s["ttft_p50_s"]), float(s["tpot_p50_s"]), str(s.get("calibration", calibration)), rs, bw)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
IN_MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


def _default_dir() -> str:
    """A fresh folder for the weight file on a disk: the system's temporary folder unless it is
    in memory (tmpfs: nothing would be read from a disk), else the current folder, else the home
    folder. Never inside the installed package or its data (a wheel's folder may be read-only)."""
    tried = []
    for base in (tempfile.gettempdir(), os.getcwd(), os.path.expanduser("~")):
        real = os.path.realpath(base)
        kind = filesystem_of(real)
        tried.append(f"{real} ({kind or 'unknown filesystem'})")
        if kind in IN_MEMORY_FILESYSTEMS or not os.access(real, os.W_OK):
            continue
        return tempfile.mkdtemp(prefix=".simkit-offload-", dir=real)
    raise CalibrationError(
        "no writable folder on a disk for the weight file (tried " + ", ".join(tried) + "); pass --dir",
        key="--dir",
    )


def run_offload_validation(
    cfg: OffloadConfig,
    profile: str | None = DEFAULT_PROFILE,
    *,
    progress: Callable[[str], None] | None = None,
    keep_file: bool = False,
    ssd_check: bool = True,
) -> dict[str, Any]:
    """Measure every configuration of ``cfg``, then predict them (:func:`add_predictions`).
    With ``ssd_check``, right after the measurements the calibration's own SSD benchmark
    (:func:`simkit.calibrate.ssd.ssd_bench`, random offsets) runs once more at the reader's block
    size and queue depth in the same folder, so a stale or noisy profile figure shows."""
    from simkit.calibrate.bench import LoadMonitor, require_torch, set_threads

    cfg.check()
    facts = read_profile_facts(profile)  # (a profile named but not there is refused before anything is measured)
    torch = require_torch()
    out = progress or _log
    if facts is None:
        calibration = "none"
    else:
        calibration = str(Path(facts["_path"]).parent.resolve())
    have = profile_dtypes(facts) if facts else set()
    dtype = cfg.dtype or ("bf16" if "bf16" in have else "fp32")
    if have and dtype not in have:
        raise CalibrationError(f"the profile has no {dtype} measurements (it has {', '.join(sorted(have))})", where=str(profile))
    want_threads = cfg.threads if cfg.threads is not None else (int(facts["threads"]) if facts and facts.get("threads") else None)
    threads = set_threads(want_threads)
    if facts and facts.get("threads") and int(facts["threads"]) != threads:
        out(f"WARNING: torch uses {threads} threads but the profile was measured with {facts['threads']}")
    made_dir = cfg.directory is None
    directory = cfg.directory or _default_dir()
    Path(directory).mkdir(parents=True, exist_ok=True)
    fstype = filesystem_of(directory)
    if fstype == "tmpfs":
        out(f"WARNING: {directory} is on tmpfs (memory, not a disk): the reads measure memory copies")
    max_layers = max(cfg.layers)
    max_ctx = max(cfg.context_lens) + cfg.decode_tokens
    path = Path(directory) / f"simkit-offload-weights-{os.getpid()}.bin"
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    mon = LoadMonitor()
    rows: list[dict[str, Any]] = []
    read_log: list[tuple[float, int]] = []
    io_mode = note = ""
    try:
        t0 = time.perf_counter()
        wf, _ = write_weight_file(cfg, max_layers, dtype, path)
        # what the reader issues, as the scenario's plan.offload.io_block_size / io_queue_depth
        io_block = min(cfg.block_bytes or wf.layer_stride, wf.layer_stride)
        io_depth = min(cfg.io_depth, -(-wf.layer_stride // io_block))
        out(
            f"weight file {path} ({fstype or 'unknown fs'}): {max_layers} layers x {wf.layer_stride / 2**20:.1f} MiB "
            f"({dtype}) + {wf.extra_stride / 2**20:.1f} MiB embedding/norm/LM head, written in {time.perf_counter() - t0:.1f} s"
        )
        # rounds: every configuration once per round, so slow drifts of the (shared, virtual) disk
        # spread over all configurations instead of biasing one; medians over rounds x repeats
        acc: dict[tuple[int, int, int, int], list[Measured]] = {}
        for rnd in range(cfg.rounds):
            if cfg.rounds > 1:
                out(f"round {rnd + 1}/{cfg.rounds}")
            for L in cfg.layers:
                for R in cfg.resident:
                    if R > L:
                        continue
                    w = StreamedWeights(wf, L, R, direct=cfg.direct, block_bytes=cfg.block_bytes, io_depth=cfg.io_depth, quiet=bool(io_mode))
                    io_mode, note = w.io_mode, w.reader.note
                    try:
                        model = OffloadLlama(cfg, w, dtype, max_ctx)
                        for b in cfg.batch_sizes:
                            for c in cfg.context_lens:
                                m = measure(model, b, c, cfg.decode_tokens, cfg.repeats, cfg.warmup, cfg.seed)
                                acc.setdefault((L, R, b, c), []).append(m)
                                out(
                                    f"  L={L} R={R} b={b} ctx={c}: prefill {m.prefill_s * 1e3:.1f} ms, decode {m.decode_s * 1e3:.1f} ms/token "
                                    f"(reader {m.decode_read_s * 1e3:.1f} ms/pass, compute waited {m.decode_wait_s * 1e3:.1f} ms/pass)"
                                )
                        read_log += w.read_log
                    finally:
                        w.close()
        for (L, R, b, c), ms in acc.items():
            for phase in ("prefill", "decode"):
                alls = [x for m in ms for x in (m.prefill_all if phase == "prefill" else m.decode_all)]
                rows.append(
                    {
                        "config": f"{phase} L={L} R={R} b={b} ctx={c}",
                        "phase": phase,
                        "layers": L,
                        "resident": R,
                        "batch": b,
                        "context": c,
                        "measured_s": float(np.median(alls)),
                        "measured_all_s": alls,
                        "streamed_bytes_per_pass": ms[0].bytes_per_pass,
                        "reader_read_s": float(np.median([m.prefill_read_s if phase == "prefill" else m.decode_read_s for m in ms])),
                        "compute_wait_s": float(np.median([m.prefill_wait_s if phase == "prefill" else m.decode_wait_s for m in ms])),
                    }
                )
        ssd_now = None
        if ssd_check:
            from simkit.calibrate.ssd import ssd_bench

            srows, _ = ssd_bench(directory, file_mb=256, block_sizes=(io_block,), queue_depths=(io_depth,), budget_s=0.5, direct=cfg.direct,
                                 classes=("ssd_read", "ssd_write"))
            ssd_now = next((r["bytes_moved"] / r["time_s"] for r in srows if r["op_class"] == "ssd_read"), None)
            out(f"ssd_bench now (random {io_block / 2**20:g} MiB reads, queue depth {io_depth}): {ssd_now / 1e9:.2f} GB/s" if ssd_now else "ssd_bench: no read sample")
    finally:
        if not keep_file:
            with contextlib.suppress(OSError):
                path.unlink()
            if made_dir:
                shutil.rmtree(directory, ignore_errors=True)
    if not rows:
        raise CalibrationError("no configuration to run (every --resident exceeds every --layers)")
    reads = np.asarray([b / t for t, b in read_log if t > 0]) if read_log else np.zeros(0)
    other = mon.other_cores()
    result = {
        "median_ape": float("nan"),
        "p90_ape": float("nan"),
        "rows": rows,
        "dtype": dtype,
        "threads": threads,
        "io_mode": io_mode,
        "io_note": note,
        "filesystem": fstype,
        "io_block_size": io_block,
        "io_queue_depth": io_depth,
        "reader_bandwidth_median": float(np.median(reads)) if reads.size else None,
        "reader_bandwidth_p10": float(np.percentile(reads, 10)) if reads.size else None,
        "reader_bandwidth_p90": float(np.percentile(reads, 90)) if reads.size else None,
        "ssd_bench_read_bandwidth_now": ssd_now,
        "calibration": calibration,
        "hardware": HARDWARE,
        "model": {k: v for k, v in asdict(cfg).items() if k in ("hidden", "heads", "kv_heads", "ffn", "vocab")}
        | {"layers": list(cfg.layers), "layer_bytes": wf.layer_payload, "layer_stride": wf.layer_stride},
        "decode_tokens": cfg.decode_tokens,
        "repeats": cfg.repeats,
        "rounds": cfg.rounds,
        "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "other_load_cores": None if other is None else round(other, 2),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "date": time.strftime("%Y-%m-%d"),
        "torch_version": torch.__version__,
    }
    return add_predictions(result, progress=out)


def add_predictions(result: dict[str, Any], calibration: str | None = None, *, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Predict every measured row of ``result`` with simkit (in place; also returned) and set the
    errors and their median/p90. ``calibration`` overrides the result's. A simulator failure is
    recorded (``prediction_failed``) rather than raised, so the measurements are kept."""
    import yaml

    out = progress or _log
    cal = calibration or result["calibration"]
    result["calibration"] = cal
    result.pop("prediction_failed", None)
    m = result["model"]
    cfg = OffloadConfig(hidden=m["hidden"], heads=m["heads"], kv_heads=m["kv_heads"], ffn=m["ffn"], vocab=m["vocab"])
    max_ctx = max(r["context"] for r in result["rows"]) + int(result["decode_tokens"])
    cache: dict[tuple[int, int, int, int], Predicted] = {}
    with tempfile.TemporaryDirectory(prefix="simkit-offload-models-") as mdir:
        for r in result["rows"]:
            key = (r["layers"], r["resident"], r["batch"], r["context"])
            if key not in cache:
                mpath = Path(mdir) / f"model-{r['layers']}.yaml"
                if not mpath.exists():
                    mpath.write_text(yaml.safe_dump(model_yaml(cfg, r["layers"], max_ctx), sort_keys=False))
                try:
                    cache[key] = predict(
                        str(mpath), result["dtype"], *key, int(result["decode_tokens"]), cal,
                        int(result["io_block_size"]), int(result["io_queue_depth"]),
                    )
                except SimkitError:
                    raise
                except Exception as e:  # noqa: BLE001 - a simulator bug must not lose the measurements
                    msg = f"simkit.simulate raised {type(e).__name__}: {e}"
                    if "prediction_failed" not in result:
                        bar = "!" * 100
                        out(f"{bar}\nPREDICTION FAILED ({r['config']} and maybe others): {msg}\n{bar}")
                    result["prediction_failed"] = msg
                    cache[key] = Predicted(float("nan"), float("nan"), cal)
            p = cache[key]
            pred = p.prefill_s if r["phase"] == "prefill" else p.decode_s
            err = (pred - r["measured_s"]) / r["measured_s"]
            r.update(
                predicted_s=pred, error=err, abs_error=abs(err), predicted_nvme_read_bw=p.nvme_read_bw,
                predicted_compute_busy_s=float(p.resources.get("compute", {}).get("busy_s", float("nan"))),
            )
    ape = np.abs([r["error"] for r in result["rows"]])
    result["median_ape"] = float(np.median(ape))
    result["p90_ape"] = float(np.percentile(ape, 90))
    return result


def format_table(result: dict[str, Any]) -> str:
    w = max([len(r["config"]) for r in result["rows"]] + [13])
    lines = [f"{'configuration':<{w}} {'measured ms':>12} {'predicted ms':>13} {'error':>8}", "-" * (w + 36)]
    for r in result["rows"]:
        lines.append(f"{r['config']:<{w}} {r['measured_s'] * 1e3:>12.1f} {r['predicted_s'] * 1e3:>13.1f} {r['error']:>+8.1%}")
    lines.append("-" * (w + 36))
    bw = result.get("reader_bandwidth_median")
    lines.append(
        f"median |error| {result['median_ape']:.1%}, p90 |error| {result['p90_ape']:.1%} over {len(result['rows'])} "
        f"configurations ({result['dtype']}, {result['threads']} torch thread(s), {result['io_mode']} reads of "
        f"{result['io_block_size'] / 2**20:g} MiB x {result['io_queue_depth']} in flight"
        + (f" at {bw / 1e6:.0f} MB/s median per layer" if bw else "")
        + f", calibration {result['calibration']})"
    )
    sim_bw = [r.get("predicted_nvme_read_bw") or 0.0 for r in result["rows"]]
    now = result.get("ssd_bench_read_bandwidth_now")
    if bw or max(sim_bw, default=0.0) > 0 or now:
        lines.append(
            "SSD read bandwidth: reader achieved "
            + (f"{bw / 1e9:.2f} GB/s (p10 {result['reader_bandwidth_p10'] / 1e9:.2f}, p90 {result['reader_bandwidth_p90'] / 1e9:.2f})" if bw else "n/a")
            + (f"; simulator used {max(sim_bw) / 1e9:.2f} GB/s" if max(sim_bw, default=0.0) > 0 else "")
            + (f"; calibration's ssd_bench re-run now: {now / 1e9:.2f} GB/s" if now else "")
        )
    if result.get("prediction_failed"):
        lines.append(f"PREDICTION FAILED: {result['prediction_failed']}")
    return "\n".join(lines)


def markdown_table(result: dict[str, Any]) -> str:
    """The rows of ``result`` as a Markdown table (for docs/fidelity.md)."""
    lines = [
        "| configuration | measured ms | predicted ms | error | reader ms/pass | compute waited ms/pass |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['config']} | {r['measured_s'] * 1e3:.1f} | {r['predicted_s'] * 1e3:.1f} | {r['error']:+.1%} | "
            f"{r.get('reader_read_s', 0.0) * 1e3:.1f} | {r.get('compute_wait_s', 0.0) * 1e3:.1f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _ints(text: str, low: int = 1) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in comma_items(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < low for v in vals):
        raise argparse.ArgumentTypeError(f"expected integers >= {low}, got {text!r}")
    return vals


def _bytes(text: str) -> int:
    from simkit.units import parse_bytes

    try:
        return int(parse_bytes(text))
    except (SimkitError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a size like 4MiB or 0, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simkit validate --offload",
        description="Run a small Llama-architecture model on this CPU with its weights streamed layer by layer "
        "from one file on disk (O_DIRECT, double-buffered, overlapped with compute) and compare measured "
        "prefill/decode times with simkit's prediction of the same offloaded plan on hardware ci-vm.",
    )
    p.add_argument("--layers", type=_ints, default=(4, 8), help="comma-separated layer counts (default 4,8)")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=16)
    p.add_argument("--ffn", type=int, default=2816)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch-sizes", type=_ints, default=(1, 4), help="comma-separated (default 1,4)")
    p.add_argument("--context-lens", type=_ints, default=(128,), help="comma-separated (default 128)")
    p.add_argument("--resident", type=lambda s: _ints(s, 0), default=(0, 2), help="comma-separated resident layer counts (default 0,2)")
    p.add_argument("--decode-tokens", type=int, default=8, help="tokens generated per request (default 8: 7 decode steps)")
    p.add_argument("--dir", dest="directory", default=None, help="folder for the weight file (default: a new folder in the system temporary folder, or the current folder when that is tmpfs)")
    p.add_argument("--profile", default=DEFAULT_PROFILE, help=f"calibration profile folder, or none (default {DEFAULT_PROFILE})")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 if the profile calibrated it, else fp32")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the profile's)")
    p.add_argument("--block", type=_bytes, default=4 << 20, help="bytes per read request (default 4MiB; 0: one request per layer)")
    p.add_argument("--io-depth", type=int, default=8, help="read requests in flight (default 8)")
    p.add_argument("--buffered", action="store_true", help="skip O_DIRECT: buffered reads with fadvise(DONTNEED) before each")
    p.add_argument("--repeats", type=int, default=3, help="timed generations per configuration (median kept; default 3)")
    p.add_argument("--rounds", type=int, default=3,
                   help="passes over all configurations; measured = median over rounds x repeats (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed generations first (default 1)")
    p.add_argument("--json", dest="json_path", default=None, help="write {median_ape, p90_ape, rows} here")
    p.add_argument("--keep-file", action="store_true", help="keep the weight file")
    p.add_argument("--no-ssd-check", action="store_true",
                   help="skip re-running the calibration's SSD benchmark at the reader's block size and depth after measuring")
    p.add_argument("--from-json", default=None, metavar="FILE",
                   help="do not measure: re-predict the measurements stored in FILE (a --json output), with --profile "
                   "if given explicitly, else the calibration stored there")
    return p


def config_from_args(a: argparse.Namespace) -> OffloadConfig:
    return OffloadConfig(
        layers=tuple(a.layers), hidden=a.hidden, heads=a.heads, kv_heads=a.kv_heads, ffn=a.ffn, vocab=a.vocab,
        batch_sizes=tuple(a.batch_sizes), context_lens=tuple(a.context_lens), resident=tuple(a.resident),
        decode_tokens=a.decode_tokens, repeats=a.repeats, rounds=a.rounds, warmup=a.warmup, dtype=a.dtype, threads=a.threads,
        directory=a.directory, block_bytes=a.block, io_depth=a.io_depth, direct=False if a.buffered else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0] == "--offload":
        args_in = args_in[1:]
    parser = build_parser()
    args = parser.parse_args(args_in)
    try:
        if args.from_json:
            result = json.loads(Path(args.from_json).read_text())
            cal = None
            if "--profile" in args_in:
                facts = read_profile_facts(args.profile)
                cal = "none" if facts is None else str(Path(facts["_path"]).parent.resolve())
            add_predictions(result, cal)
        else:
            cfg = config_from_args(args)
            result = run_offload_validation(cfg, args.profile, keep_file=args.keep_file, ssd_check=not args.no_ssd_check)
            result["command"] = "simkit validate --offload " + " ".join(args_in)
    except SimkitError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result.get("prediction_failed") else 0


if __name__ == "__main__":
    sys.exit(main())
