"""Microbenchmarks that measure what a calibration profile is fitted from (``simkit calibrate``).

:func:`run_suite` measures, on one device (``"cpu"`` or ``"cuda"``):

* ``gemm``: ``F.linear`` over the (tokens x in -> out) shapes LLM inference produces (tokens 1, 2, 3, 4, 6, 8, 12,
  16..8192 in powers of two; in/out from real model dims 2048..16384 and their TP shards), per dtype;
* ``attn_prefill`` / ``attn_decode``: the attention block of :mod:`simkit.calibrate.validate`'s
  model (KV-cache write + ``scaled_dot_product_attention`` with GQA + output reshape) over batch,
  context, heads and KV heads;
* ``elementwise``: the norm (RMSNorm and LayerNorm), SiLU*mul, residual add, RoPE, embedding
  gather and sampling (argmax) kernels, the very functions the validation model runs;
* ``mem_bw`` (stream copy/read/write of the device memory), ``copy`` (host memcpy; on CUDA also
  device-to-device and host<->device pinned and pageable, both directions), ``launch`` (the fixed
  cost of a tiny operator of each class) and, with ``ssd_dir``, ``ssd_read``/``ssd_write``/``ssd_seq_read``
  (:mod:`simkit.calibrate.ssd`);
* on a CPU, the host's first-touch rate (writing freshly allocated memory beyond writing reused
  memory, at 1 thread and at the suite's threads: ``device.host_first_touch``,
  :mod:`simkit.calibrate.host_memory`);
* on a GPU, the host gap per iteration of a minimal synchronous decode loop (``device.host_gap``,
  fitted into the profile's ``host_overhead`` by :func:`run_suite`; :mod:`simkit.calibrate.host_gap`).

Every sample row carries ``flops`` and ``bytes_moved`` counted by :mod:`simkit.cost.ops` for the
same shape (the row's shape columns are those ops.py puts in ``Op.shape``), so that a fitted
efficiency = ideal / measured time is what the simulator divides by when it predicts. Each
configuration is warmed up, then timed over several repetitions (each repetition long enough to
average out timer resolution: an inner loop for tiny operators; CUDA events and synchronisation
on a GPU); ``time_s`` is the median per call, ``time_s_p10``/``time_s_p90`` the spread, and
``raw_times`` every repetition (';'-joined seconds per call). Inputs are random (never zero).

Conditions are those of inference: GEMM weights (and decode KV caches) are timed cold, cycling
through copies that together exceed twice the last-level cache, since a forward pass reads each
layer's weights once per step; activations are hot (the previous operator just wrote them). On a
CPU each elementwise operator is timed one call at a time right after the GEMM that precedes it in
a decode layer (:meth:`Bench.predecessor`): small operators cost several times more there than in
a loop of themselves. The
host allocator is pinned (:func:`tune_allocator`) so the same kernel allocates the same way in
the benchmark and in a model. ``clock="cpu"`` (one thread) times the thread's CPU time instead of
the wall clock, for machines that other processes share; the device facts record the clock, the
threads, the allocator and how many cores other processes kept busy meanwhile.

torch is imported lazily inside functions: ``pip install simkit[calibrate]``.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from simkit.calibrate.samples import OPTIONAL_COLUMNS, SAMPLE_COLUMNS, Measurement, make_row, require_torch
from simkit.errors import CalibrationError
from simkit.specs.calibration import KERNEL_ISA_FLAGS, make_fingerprint

OP_CLASSES = (
    "gemm",
    "attn_prefill",
    "attn_decode",
    "elementwise",
    "copy",
    "ssd_read",
    "ssd_seq_read",
    "ssd_write",
    "mem_bw",
    "launch",
)
DEFAULT_PROFILE_LICENSE = "Apache-2.0"

ProgressFn = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# torch access
# ---------------------------------------------------------------------------------------------
TORCH_DTYPES = {
    "fp32": "float32",
    "tf32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
    "fp8": "float8_e4m3fn",
}


def torch_dtype(name: str) -> Any:
    torch = require_torch()
    if name not in TORCH_DTYPES:
        raise CalibrationError(f"unsupported dtype {name!r} (expected one of {', '.join(TORCH_DTYPES)})")
    dt = getattr(torch, TORCH_DTYPES[name], None)
    if dt is None:
        raise CalibrationError(f"dtype {name!r} is not available in torch {torch.__version__}")
    return dt


@contextlib.contextmanager
def tf32_mode(enabled: bool) -> Any:
    """Let fp32 matmuls use TF32 tensor cores (CUDA) only while ``enabled``."""
    torch = require_torch()
    old_mm = torch.backends.cuda.matmul.allow_tf32
    old_cudnn = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_mm
        torch.backends.cudnn.allow_tf32 = old_cudnn


def rand(shape: Sequence[int], dtype: str, device: str, *, scale: float = 1.0) -> Any:
    """Random (normal, never all-zero) data of ``dtype`` (fp8 is drawn in fp16 and cast)."""
    torch = require_torch()
    if dtype == "fp8":
        return (torch.randn(*shape, device=device, dtype=torch.float16) * scale).to(torch_dtype("fp8"))
    t = torch.randn(*shape, device=device, dtype=torch_dtype(dtype))
    if scale != 1.0:
        t.mul_(scale)
    return t


# ---------------------------------------------------------------------------------------------
# The kernels: one definition, used by the benchmarks and by the validation model
# ---------------------------------------------------------------------------------------------
def k_rmsnorm(x: Any, w: Any, eps: float = 1e-6) -> Any:
    torch = require_torch()
    fn = getattr(torch.nn.functional, "rms_norm", None)
    if fn is not None:
        return fn(x, (x.shape[-1],), w, eps)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def k_layernorm(x: Any, w: Any, b: Any, eps: float = 1e-5) -> Any:
    torch = require_torch()
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps)


def k_silu_mul(gate_up: Any) -> Any:
    """SwiGLU activation of a fused [gate | up] projection: silu(gate) * up."""
    torch = require_torch()
    g, u = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(g) * u


def k_add(x: Any, y: Any) -> Any:
    return x + y


def k_embedding(ids: Any, table: Any) -> Any:
    torch = require_torch()
    return torch.nn.functional.embedding(ids, table)


def k_sampling(logits: Any) -> Any:
    """Greedy sampling: the argmax over the vocabulary of each row."""
    torch = require_torch()
    return torch.argmax(logits, dim=-1)


def rope_tables(max_pos: int, head_dim: int, dtype: str, device: str, base: float = 10000.0) -> tuple[Any, Any]:
    torch = require_torch()
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    ang = torch.outer(torch.arange(max_pos, device=device, dtype=torch.float32), inv)
    dt = torch_dtype(dtype)
    return torch.cos(ang).to(dt), torch.sin(ang).to(dt)


def k_rope(qkv: Any, cos: Any, sin: Any, batch: int, seq: int, heads: int, kv_heads: int, head_dim: int, pos: int) -> tuple[Any, Any, Any]:
    """Split a fused QKV projection (tokens x (heads+2kv)*d) into q, k, v of shape
    (batch, seq, heads|kv_heads, d) and rotate q and k (rotate-half RoPE) at positions pos.."""
    torch = require_torch()
    x = qkv.view(batch, seq, heads + 2 * kv_heads, head_dim)
    qk = x[:, :, : heads + kv_heads]
    v = x[:, :, heads + kv_heads :]
    half = head_dim // 2
    c = cos[pos : pos + seq].view(1, seq, 1, half)
    s = sin[pos : pos + seq].view(1, seq, 1, half)
    x1, x2 = qk[..., :half], qk[..., half:]
    out = torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
    return out[:, :, :heads], out[:, :, heads:], v


def _sdpa_gqa_supported() -> bool:
    torch = require_torch()
    try:
        q = torch.zeros(1, 2, 1, 4)
        k = torch.zeros(1, 1, 1, 4)
        torch.nn.functional.scaled_dot_product_attention(q, k, k, enable_gqa=True)
        return True
    except (TypeError, RuntimeError):
        return False


_GQA: list[bool] = []


def k_attention(q: Any, k: Any, v: Any, k_cache: Any, v_cache: Any, pos: int) -> Any:
    """Attention of new tokens q (batch, seq, heads, d) with their k, v (batch, seq, kv_heads, d):
    write k, v into the caches (batch, kv_heads, max_ctx, d) at ``pos``, attend over the cache
    up to pos+seq (causal within the new tokens) and return (batch*seq, heads*d)."""
    torch = require_torch()
    F = torch.nn.functional
    b, s, h, d = q.shape
    kvh = k.shape[2]
    k_cache[:, :, pos : pos + s] = k.transpose(1, 2)
    v_cache[:, :, pos : pos + s] = v.transpose(1, 2)
    kk = k_cache[:, :, : pos + s]
    vv = v_cache[:, :, : pos + s]
    qt = q.transpose(1, 2)
    causal = s > 1
    if s > 1 and pos > 0:
        raise CalibrationError("chunked prefill over a filled cache is not benchmarked")
    if h != kvh:
        if not _GQA:
            _GQA.append(_sdpa_gqa_supported())
        if _GQA[0]:
            o = F.scaled_dot_product_attention(qt, kk, vv, is_causal=causal, enable_gqa=True)
        else:
            rep = h // kvh
            o = F.scaled_dot_product_attention(
                qt, kk.repeat_interleave(rep, 1), vv.repeat_interleave(rep, 1), is_causal=causal
            )
    else:
        o = F.scaled_dot_product_attention(qt, kk, vv, is_causal=causal)
    return o.transpose(1, 2).reshape(b * s, h * d)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
@dataclass
class Timer:
    """Times a callable on one device: warm-up, an inner loop making each repetition at least
    ``min_rep_s`` long, then repetitions until ``budget_s`` is spent (between ``min_reps`` and
    ``max_reps``). CUDA work is timed with events after a synchronisation."""

    device: str = "cpu"
    min_rep_s: float = 2e-3
    budget_s: float = 0.3
    min_reps: int = 5
    max_reps: int = 25
    warmup: int = 2
    clock: str = "wall"
    """"wall" (time.perf_counter) or "cpu" (the calling thread's CPU time, time.thread_time:
    immune to other processes taking the CPU; valid only with one torch thread)."""

    def now(self) -> float:
        return time.thread_time() if self.clock == "cpu" else time.perf_counter()

    def measure(
        self, fn: Callable[[], Any], *, budget_s: float | None = None, min_reps: int | None = None,
        before: Callable[[], Any] | None = None,
    ) -> Measurement:  # fmt: skip
        """``before`` (CPU only): run, untimed, before every call, which is then timed alone (no
        inner loop): the state a call finds in a forward pass rather than after itself."""
        budget = self.budget_s if budget_s is None else budget_s
        lo = self.min_reps if min_reps is None else min_reps
        if self.device == "cuda":
            return self._measure_cuda(fn, budget, lo)
        now = self.now
        if before is not None:
            for _ in range(max(1, self.warmup - 1)):
                before()
                fn()
            t0 = now()
            before()
            fn()
            reps = int(min(max(lo, budget // max(now() - t0, 1e-7)), self.max_reps))
            times = []
            for _ in range(reps):
                before()
                t0 = now()
                fn()
                times.append(now() - t0)
            return Measurement(times, 1)
        for _ in range(max(1, self.warmup - 1)):
            fn()
        t0 = now()
        fn()
        est = max(now() - t0, 1e-7)
        inner = int(min(max(1, math.ceil(self.min_rep_s / est)), 2000))
        reps = int(min(max(lo, budget // (inner * est)), self.max_reps))
        times = []
        for _ in range(reps):
            t0 = now()
            for _ in range(inner):
                fn()
            times.append((now() - t0) / inner)
        return Measurement(times, inner)

    def _measure_cuda(self, fn: Callable[[], Any], budget: float, lo: int) -> Measurement:
        torch = require_torch()
        for _ in range(self.warmup):
            fn()
        torch.cuda.synchronize()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        est = max(s.elapsed_time(e) / 1e3, 1e-7)
        inner = int(min(max(1, math.ceil(self.min_rep_s / est)), 2000))
        reps = int(min(max(lo, budget // (inner * est)), self.max_reps))
        times = []
        for _ in range(reps):
            s.record()
            for _ in range(inner):
                fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) / 1e3 / inner)
        return Measurement(times, inner)


# ---------------------------------------------------------------------------------------------
# Suite configuration and progress
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SuiteSize:
    """How much of each grid a run measures. ``tiny`` is the CI smoke test (seconds), ``quick``
    about a minute on a 2-core machine, ``full`` several minutes."""

    name: str
    gemm_configs: int
    gemm_max_s: float
    """Largest estimated time of one GEMM call measured."""
    attn_configs: int
    attn_max_s: float
    elem_configs: int
    elem_max_numel: float
    bw_sizes: tuple[int, ...]
    ssd_file_mb: int
    ssd_blocks: tuple[int, ...]
    ssd_depths: tuple[int, ...]
    budget_s: float
    """Time budget of one configuration (sets the repetitions)."""
    min_reps: int
    max_reps: int
    min_rep_s: float
    decode_gemm_configs: int = 0
    """Extra GEMMs with a few rows (<= 16: decode batches), on top of ``gemm_configs``: on a CPU
    these are memory-bound kernels whose speed changes with the exact row count (fp32: 3 rows
    stream weights at about a third of the rate of 1 row) and the row length, so the fit needs
    several samples of each count, not one per stratum."""
    decode_attn_configs: int = 0
    """Extra decode-attention configurations on a CPU, on top of ``attn_configs`` (whose strata are
    head shapes): spread over batch 1..16 x short/medium/long context x grouped-query (GQA) or
    not, the batches and contexts a CPU decodes at."""
    wide_gemm_configs: int = 0
    """Extra GEMMs on a CPU with many rows (>= 64) and weights larger than the last-level cache,
    on top of ``gemm_configs``: the time cap keeps the grid's many-row GEMMs to weights that fit
    the cache, so without these the residual trees learn a slowdown for large weights from the
    few-row (DRAM-bound) samples only and carry it to prefill GEMMs, which the kernel blocks for
    the cache and which run as fast with large weights as with small ones (fp32 on the CI VM:
    prefill MLP up-projections predicted up to 36% too slow; docs/fidelity.md)."""
    row_length_rows: tuple[int, ...] = ()
    """CPU: row counts (<= FEW_ROWS) at which GEMMs are also measured at every row length k of
    ROW_LENGTH_GRID, on top of the other GEMMs: the per-row streaming rate of few-row GEMMs grows
    with k (fp32 on the CI VM, 1 row: 10 GB/s at k = 512, 17 at 1024, 19-23 at 3072-8192), and
    the model projections' k values are mostly powers of two, so without these the residual trees
    place a model's k = 1280 or 896 at the nearest sampled length (docs/fidelity.md). The quick
    suite adds 8 rows to 1-3: without a grid there, the trees carried the slow rate of 3 rows at a
    wide n to 5-12 rows (fp32 GEMMs at 8 and 12 rows predicted 13-15% too slow)."""


SIZES = {
    "tiny": SuiteSize("tiny", 10, 0.004, 6, 0.004, 10, 2e5, (1 << 16, 1 << 22), 16, (1 << 12, 1 << 20), (1, 4), 0.03, 3, 5, 5e-4),
    "quick": SuiteSize(
        "quick", 68, 0.06, 28, 0.04, 63, 4e6, (1 << 14, 1 << 18, 1 << 22, 1 << 26), 64,
        (1 << 12, 1 << 16, 1 << 20, 1 << 22), (1, 4, 16), 0.12, 5, 15, 2e-3, 40, 30, wide_gemm_configs=8,
        row_length_rows=(1, 2, 3, 8),
    ),
    "full": SuiteSize(
        "full", 150, 0.15, 84, 0.12, 120, 3.2e7,
        (1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 26, 1 << 28), 256,
        (1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22), (1, 2, 4, 8, 16), 0.3, 5, 25, 3e-3, 80, 60, wide_gemm_configs=12,
        row_length_rows=(1, 2, 3, 4, 6, 8, 12, 16),
    ),
}


@dataclass
class Progress:
    """One line per benchmark group on stderr: groups done/total, samples, elapsed, ETA."""

    total_groups: int
    planned_s: list[float]
    out: ProgressFn
    start: float = field(default_factory=time.perf_counter)
    done: int = 0
    spent_planned: float = 0.0

    def group_done(self, name: str, n_samples: int, took_s: float) -> None:
        self.done += 1
        self.spent_planned += self.planned_s[self.done - 1] if self.done - 1 < len(self.planned_s) else 0.0
        elapsed = time.perf_counter() - self.start
        left_planned = sum(self.planned_s[self.done :])
        ratio = elapsed / self.spent_planned if self.spent_planned > 0 else 1.0
        eta = left_planned * ratio
        self.out(
            f"[{self.done}/{self.total_groups}] {name}: {n_samples} samples in {took_s:.1f} s "
            f"(elapsed {elapsed:.0f} s, ETA {eta:.0f} s)"
        )


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Rows: flops and bytes counted by simkit.cost.ops for the same shapes
# ---------------------------------------------------------------------------------------------
def bench_model(
    hidden: int = 4096,
    heads: int = 32,
    kv_heads: int = 8,
    head_dim: int | None = None,
    ffn: int = 14336,
    vocab: int = 32000,
    layers: int = 1,
    norm: str = "rmsnorm",
) -> Any:
    """A Llama-architecture ModelSpec with the given dims (what ops.py counts FLOPs/bytes on)."""
    from simkit.specs.model import ModelSpec

    return ModelSpec(
        name="bench",
        family="llama",
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        ffn_size=ffn,
        gated_mlp=True,
        activation="silu",
        vocab_size=vocab,
        norm=norm,  # type: ignore[arg-type]
        positional="rope",
        max_context=1 << 20,
    )


def precision(dtype: str) -> Any:
    """Weights, activations and KV cache all in ``dtype`` (what a benchmark of that dtype runs)."""
    from simkit.cost.ops import Precision

    return Precision(weights=dtype, activations=dtype, kv_cache=dtype)


def gemm_op(name: str, m: int, k: int, n: int, dtype: str) -> Any:
    from simkit.cost.ops import _gemm

    return _gemm(name, 1, float(m), float(k), float(n), precision(dtype))


def elementwise_op(name: str, tokens: int, model: Any, dtype: str) -> Any:
    """The ops.py operator ``name`` (input_norm, rope, mlp_act, residual_add, embedding,
    sampling) for ``tokens`` tokens of ``model``."""
    from simkit.cost.ops import token_ops

    rows = tokens if name == "sampling" else 0
    for op in token_ops(model, float(tokens), float(rows), 1, precision(dtype)):
        if op.name == name:
            return op
    raise CalibrationError(f"ops.py has no operator {name!r} for this model")


def attention_op(batch: int, seq: int, ctx: int, model: Any, dtype: str) -> Any:
    from simkit.cost.ops import attention_ops

    q = np.full(batch, float(seq))
    c = np.full(batch, float(ctx))
    ops = attention_ops(model, q, c, 1, precision(dtype))
    return ops[0]


# ---------------------------------------------------------------------------------------------
# Benchmark groups
# ---------------------------------------------------------------------------------------------
# (hidden, q_dim, kv_dim, ffn, vocab) of real models whose projections we time (and TP shards)
GEMM_MODELS = (
    ("llama-3.2-1b", 2048, 2048, 512, 8192, 128256),
    ("llama-3.2-3b", 3072, 3072, 1024, 8192, 128256),
    ("llama-2-7b", 4096, 4096, 4096, 11008, 32000),
    ("llama-3-8b", 4096, 4096, 1024, 14336, 128256),
    ("llama-2-13b", 5120, 5120, 5120, 13824, 32000),
    ("llama-3-70b", 8192, 8192, 1024, 28672, 128256),
    ("llama-3.1-405b", 16384, 16384, 1024, 53248, 128256),
)
TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
BIG_TOKENS = (*TOKENS, 8192)
"""Tokens per pass: decode batches to long prefills; 8192 = a batch of prefills (time cap permitting)."""
GEMM_TOKENS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
"""GEMM rows: BIG_TOKENS plus the decode batches 3, 6 and 12. CPU GEMM libraries pick other
kernels for a few rows that are not a power of two (fp32 on the CI VM's CPU: 9.6 ms at 3 rows of
1280 -> 7168 against 6.5 ms at 2 and 7.4 ms at 4), which a grid of powers of two interpolates
away."""


ROW_LENGTH_GRID = tuple(64 * round(512 * 2 ** (i / 4) / 64) for i in range(17))
"""Row lengths k of the few-row GEMMs (SuiteSize.row_length_rows): a geometric grid from 512 to
8192, four steps per doubling, rounded to multiples of 64 (the kernels' vector and cache-line
granularity): adjacent lengths differ by at most 25%, so every k from 512 to 8192 is within 12%
of a sampled one."""
ROW_LENGTH_NARROW = (1024, 2048)
ROW_LENGTH_WIDE = (4096, 8192, 16384)
ROW_LENGTH_WIDTHS = ROW_LENGTH_NARROW + ROW_LENGTH_WIDE
"""Output widths n of the row-length grid: every (rows, k) is timed at one narrow and one wide n,
each cycled over its list (a wide one over the time cap falls back to the next narrower width).
One width per k let the residual trees read a rate set by k as one set by n (fp32 on the CI VM,
one row: 14 GB/s at k = 1216 and 1280 for every n from 1024 to 16000, 16 at k = 1024; sampled at
k = 1216 with n = 1024 only, the trees put the slow rate on narrow n and predicted k = 1280 with
n = 1792..16000 at 15.5-16.3 GB/s; docs/fidelity.md)."""


def row_length_shapes(rows: Sequence[int]) -> list[tuple[int, int, int]]:
    """(m, k, n) of the row-length grid: every k of ROW_LENGTH_GRID at every row count of
    ``rows``, twice: n cycling through ROW_LENGTH_NARROW, then through ROW_LENGTH_WIDE."""
    out = []
    for i, k in enumerate(ROW_LENGTH_GRID):
        for j, m in enumerate(rows):
            out.append((m, k, ROW_LENGTH_NARROW[(i + j) % len(ROW_LENGTH_NARROW)]))
            out.append((m, k, ROW_LENGTH_WIDE[(i + j) % len(ROW_LENGTH_WIDE)]))
    return out


GEMM_HEAD_DIM = {"llama-3.2-1b": 64}
"""Head size of the GEMM_MODELS whose heads are not 128 wide (the attention that precedes their O
projection in a decode layer: :meth:`Bench.gemm_predecessor`)."""


@dataclass(frozen=True)
class GemmLayer:
    """The decode layer a projection of GEMM_MODELS comes from: the model's dims and its TP degree."""

    hidden: int
    q_dim: int
    kv_dim: int
    ffn: int
    vocab: int
    tp: int
    head_dim: int

    def projections(self) -> tuple[tuple[str, int, int], ...]:
        """(op, in, out) of the layer's projections (and the LM head) on one TP shard."""
        h, q, kv, f, v, tp = self.hidden, self.q_dim, self.kv_dim, self.ffn, self.vocab, self.tp
        return (
            ("qkv_proj", h, (q + 2 * kv) // tp),
            ("o_proj", q // tp, h),
            ("mlp_up", h, 2 * f // tp),
            ("mlp_down", f // tp, h),
            ("lm_head", h, v // tp),
        )


def gemm_layers() -> list[GemmLayer]:
    """Every (model, TP degree) of GEMM_MODELS, in the order gemm_shapes visits them."""
    return [GemmLayer(h, q, kv, f, v, tp, GEMM_HEAD_DIM.get(name, 128))
            for name, h, q, kv, f, v in GEMM_MODELS for tp in (1, 2, 4, 8)]  # fmt: skip


def gemm_layer(op: str, k: int, n: int) -> GemmLayer | None:
    """The first layer of :func:`gemm_layers` with projection ``op`` of shape ``k -> n`` (the one
    :func:`gemm_shapes` names it after); None for shapes of no such projection (the row-length grid)."""
    for layer in gemm_layers():
        if (op, k, n) in layer.projections():
            return layer
    return None


GEMM_TIMING = "few-row bf16 GEMMs after their decode-layer predecessor"
"""``device.gemm_timing`` of a CPU profile whose few-row GEMMs in GEMM_BEFORE_DTYPES were timed
after their decode-layer predecessor (:meth:`Bench.gemm_predecessor`); profiles measured before
(2026-11-30 17:00 UTC) lack the key: they timed them in a loop of themselves."""


def gemm_timing_note(device: dict[str, Any], dtype: str, name: str) -> str | None:
    """A note for CPU profile ``name`` (its ``device`` section) predicting ``dtype``, when its
    few-row GEMMs of that dtype were timed in a loop of themselves (measured before GEMM_TIMING):
    such a profile predicts the small projections of a decode step too fast (O x1.2-1.4 and QKV
    x1.05-1.15 inside steps on the CI VM); None when it has nothing to say."""
    if device.get("kind") != "cpu" or dtype not in Bench.GEMM_BEFORE_DTYPES or device.get("gemm_timing") == GEMM_TIMING:
        return None
    return (f"note: calibration profile {name!r} timed its few-row {dtype} GEMMs in a loop of themselves (measured "
            f"before they were timed after their decode-layer predecessor): it predicts a decode step's small "
            f"projections too fast (the O projection by up to ~30%, docs/fidelity.md); re-measure with "
            f"`simkit calibrate --device cpu --quick --threads 1 --clock cpu`")


def gemm_shapes(max_dim: int = 16384, max_weight: float = 2**28) -> list[tuple[str, int, int]]:
    """(op, in, out) of every projection of GEMM_MODELS under TP 1, 2, 4, 8 (both dims within
    256..max_dim), deduplicated."""
    seen: dict[tuple[int, int], str] = {}
    for layer in gemm_layers():
        for op, k, n in layer.projections():
            n_max = 2 * max_dim if op == "lm_head" else max_dim
            if 256 <= k <= max_dim and 256 <= n <= n_max and k * n <= max_weight:
                seen.setdefault((k, n), op)
    return [(op, k, n) for (k, n), op in sorted(seen.items())]


ELEM_MODELS = (
    # (hidden, heads, kv_heads, head_dim, ffn, vocab): the norms, activations, RoPE, embedding and
    # sampling of Llama-3.2-1B, Llama-3-8B, Llama-2-7B, Llama-3-70B, a 1B-class model and two
    # small models (GPT-2-small-like 768/3072/50257, Qwen2-0.5B-like 896/4864/151936)
    (2048, 32, 8, 64, 8192, 32000),
    (4096, 32, 8, 128, 14336, 128256),
    (4096, 32, 32, 128, 11008, 32000),
    (8192, 64, 8, 128, 28672, 128256),
    (1024, 8, 8, 128, 3584, 16000),
    (768, 12, 12, 64, 3072, 50257),
    (896, 14, 2, 64, 4864, 151936),
)


@dataclass
class Bench:
    torch: Any
    device: str
    size: SuiteSize
    timer: Timer
    source: str
    rng: random.Random
    rows: list[dict[str, Any]] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)
    """Rough FLOP/s per dtype from a probe GEMM (used to skip configurations over the time cap)."""
    mem_bw: float = 10e9
    cold_bytes: float = 64e6
    """Twice the last-level cache: operands read once per step are rotated over this much memory."""
    pools: dict[tuple[str, str], Any] = field(default_factory=dict)
    contention: ContentionCheck | None = None
    """Set for wall-clock CPU measurements: every sample is checked for other load (and measured
    again while contended)."""
    sentinel: SpeedSentinel | None = None
    """Set for CPU runs: the machine's speed read every few seconds, before a sample."""
    steps: StepReadings | None = None
    """Set for CPU runs but ``--tiny`` when the caller passes them: the synthetic steps of the
    step composition, read every few seconds, before a sample."""
    slow: SlowStretches | None = None
    """Set with the sentinel: the GEMM, attention and elementwise samples, to re-measure those of
    slow stretches at the end."""
    start: float = field(default_factory=time.perf_counter)
    last_window: tuple[float, float] = (0.0, 0.0)
    """Wall time (time.perf_counter) at the start and end of the last :meth:`measure`."""

    def take(self, shape: Sequence[int], dtype: str, slot: str) -> Any:
        """A random tensor of ``shape``: a view of a per-(dtype, slot) pool of random data that
        grows as needed (drawing fresh random numbers per configuration would dominate the run)."""
        numel = int(np.prod(shape)) if len(shape) else 1
        key = (dtype, slot)
        buf = self.pools.get(key)
        if buf is None or buf.numel() < numel:
            self.pools.pop(key, None)
            size = max(numel, 1 << 16, 0 if buf is None else min(2 * buf.numel(), 1 << 28))
            buf = rand((size,), dtype, self.device)
            self.pools[key] = buf
        return buf[:numel].view(*shape)

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def measure(self, fn: Callable[[], Any], **kw: Any) -> Measurement:
        if self.sentinel is not None:
            self.sentinel.tick()
        if self.steps is not None:
            self.steps.tick()
        t0 = time.perf_counter()
        if self.contention is not None:
            meas = self.contention.measure(lambda: self.timer.measure(fn, **kw))
        else:
            meas = self.timer.measure(fn, **kw)
        self.last_window = (t0, time.perf_counter())
        return meas

    def keep(self, sample: Callable[[], dict[str, Any]], dtype: str) -> None:
        """Append the row ``sample()`` measures (``t_s``: seconds into the run); register it for a
        re-measurement when measured in a slow stretch (:class:`SlowStretches`)."""
        row = sample()
        row["t_s"] = round(self.last_window[0] - self.start, 3)
        self.rows.append(row)
        kernel = f"{dtype}_gemm"
        if self.slow is not None and kernel in self.slow.sentinel.kernels:

            def redo() -> tuple[dict[str, Any], tuple[float, float]]:
                again = sample()
                again["t_s"] = round(self.last_window[0] - self.start, 3)
                return again, self.last_window

            self.slow.add(len(self.rows) - 1, kernel, self.last_window, redo)

    # ---- GEMM ------------------------------------------------------------------------------
    def probe_rate(self, dtype: str) -> float:
        torch = self.torch
        m, k, n = (256, 1024, 1024) if self.size.name == "tiny" else (512, 2048, 2048)
        a, w = self.take((m, k), dtype, "a"), self.take((n, k), dtype, "w")
        fn = self._linear_fn(a, w, dtype)
        with self._dtype_ctx(dtype):
            meas = Timer(self.device, min_rep_s=1e-3, budget_s=0.05, min_reps=2, max_reps=3, clock=self.timer.clock).measure(fn)
        del a, w
        _ = torch
        rate = 2.0 * m * k * n / max(meas.median, 1e-9)
        self.rates[dtype] = rate
        return rate

    def _dtype_ctx(self, dtype: str) -> Any:
        if self.device == "cuda":
            return tf32_mode(dtype == "tf32")
        return contextlib.nullcontext()

    def _linear_fn(self, a: Any, w: Any, dtype: str) -> Callable[[], Any]:
        """``F.linear(a, W)`` cycling through the weight copies ``w[i]`` (w is (copies, n, k)):
        in a forward pass every weight is read once per step, after all the others, so weights
        are timed cold (their copies together exceed the last-level cache) as inference sees them."""
        torch = self.torch
        ws = [w[i] for i in range(w.shape[0])] if w.dim() == 3 else [w]
        it = itertools.cycle(ws)
        if dtype == "fp8":
            scale = torch.ones((), device=self.device, dtype=torch.float32)
            wts = itertools.cycle([x.t() for x in ws])

            def fp8() -> Any:
                return torch._scaled_mm(a, next(wts), scale_a=scale, scale_b=scale, out_dtype=torch.float16)

            return fp8
        F = torch.nn.functional
        return lambda: F.linear(a, next(it))

    # (k, n) of the GEMM that precedes each elementwise operator in a decode layer of a model with
    # (hidden, heads, kv_heads, head_dim, ffn, vocab): the norms follow the residual add after the
    # MLP down-projection, RoPE the QKV projection, the activation the MLP up-projection, the
    # residual add the O projection; embedding (the next step) and sampling follow the LM head
    PREDECESSOR: ClassVar[dict[str, Callable[..., tuple[int, int]]]] = {
        "input_norm": lambda h, heads, kvh, d, f, v: (f, h),
        "layernorm": lambda h, heads, kvh, d, f, v: (f, h),
        "rope": lambda h, heads, kvh, d, f, v: (h, (heads + 2 * kvh) * d),
        "mlp_act": lambda h, heads, kvh, d, f, v: (h, 2 * f),
        "residual_add": lambda h, heads, kvh, d, f, v: (heads * d, h),
        "embedding": lambda h, heads, kvh, d, f, v: (h, v),
        "sampling": lambda h, heads, kvh, d, f, v: (h, v),
    }

    def predecessor(self, op: str, dims: tuple[int, int, int, int, int, int], dtype: str) -> Callable[[], Any]:
        """The GEMM that precedes elementwise operator ``op`` in a decode layer of a model with
        ``dims`` (:attr:`PREDECESSOR`), as a callable: one row by that GEMM's weights, cold (cycled
        over copies exceeding twice the last-level cache), the weights capped at one LLC (longer
        streams change nothing more: RMSNorm of 3 x 1280 bf16 tokens after streaming 32 and 64 MiB,
        192 and 205 us). A small operator costs several times more right after a GEMM than in a
        loop of itself, and more than after a plain read stream of the same size (CI VM, RMSNorm of
        8 x 896 bf16 tokens: 17 us in a loop, 118 us after summing one LLC (32 MiB), 228 us after a
        GEMM streaming 17 MB of weights, about 230 us inside decode steps; docs/fidelity.md, CPU
        validation): the elementwise benchmarks run it, untimed, before every call."""
        k, n = self.PREDECESSOR[op](*dims)
        eb = {"fp8": 1, "fp16": 2, "bf16": 2}.get(dtype, 4)
        n = max(1, min(n, int(self.cold_bytes / 2.0) // (k * eb)))
        w = self.take((self.copies(k * n * eb), n, k), dtype, "pw")
        a = self.take((1, k), dtype, "pa")
        return self._linear_fn(a, w, dtype)

    def _cold_linear(self, m: int, k: int, n: int, dtype: str, slot: str) -> Callable[[], Any]:
        """``F.linear`` of ``m`` rows by cold ``k -> n`` weights (cycled over copies exceeding twice
        the LLC), the weights capped at one LLC (a longer stream evicts nothing more), on the
        pools ``slot + "w"`` / ``slot + "a"``."""
        eb = {"fp8": 1, "fp16": 2, "bf16": 2}.get(dtype, 4)
        n = max(1, min(n, int(self.cold_bytes / 2.0) // (k * eb)))
        w = self.take((self.copies(k * n * eb), n, k), dtype, slot + "w")
        return self._linear_fn(self.take((m, k), dtype, slot + "a"), w, dtype)

    GEMM_BEFORE_DTYPES = ("bf16",)
    """Dtypes whose CPU ``F.linear`` goes through oneDNN's matmul, which packs the weights at every
    call (bf16 on the CI VM, ``ONEDNN_VERBOSE=1``: ``brg_matmul`` with the weights in their plain
    layout): their few-row GEMMs are timed after their layer predecessor. (fp16, which may take the
    same path, could not be checked: the CI VM's CPU has no fast fp16.) fp32 ``F.linear`` runs MKL's GEMM
    without that per-call state; its projections inside decode steps were within the machine's
    noise of a loop of themselves (x0.93-1.30 over 1, 3 and 8 rows; docs/fidelity.md), and timing
    them after a predecessor moved the fp32 validations by noise only (17:00 section there)."""

    GEMM_BEFORE_CONTEXT = 256
    """Cached tokens per sequence of the decode attention run before an O projection: a context in
    the middle of the decode-attention grid (the 2026-11-30 measurements used 300; other lengths
    were not compared)."""

    def gemm_predecessor(self, op: str, m: int, k: int, n: int, dtype: str) -> Callable[[], Any] | None:
        """What precedes the projection ``op`` (``k -> n``, ``m`` rows) in a decode layer, as a
        callable run untimed before each timed call; None where the suite times it in a loop of
        itself: GPUs, GEMMs with more than FEW_ROWS rows (another kernel, other trees) and dtypes
        outside GEMM_BEFORE_DTYPES.

        On a CPU a small bf16 projection costs more inside a decode step than in a loop of itself:
        bf16 ``F.linear`` runs oneDNN's brg_matmul, which packs its weights at every call into its
        own buffer; what ran before evicts that state (its code, the primitive, the packing
        buffer) and a preceding GEMM of another shape replaces it (held-out model of
        docs/fidelity.md, 2 and 8 rows: O projection x1.2-1.4 after decode attention, QKV
        x1.04-1.05 after MLP down + add + RMSNorm). So each is timed after its predecessor in the
        layer of GEMM_MODELS it comes from (:func:`gemm_layer`), with ``m`` rows, cold weights:

        * ``qkv_proj``, ``lm_head``: the MLP down-projection, the residual add, the RMSNorm;
        * ``o_proj``: decode attention of ``m`` sequences over GEMM_BEFORE_CONTEXT cached tokens,
          the layer's head shape, KV caches cold;
        * ``mlp_up``: the O projection, the residual add, the RMSNorm;
        * ``mlp_down``: the MLP up-projection and the SiLU-and-multiply;
        * anything else (the row-length grid): a GEMM writing ``k``-wide rows, the residual add
          and the RMSNorm (a projection reading normalised hidden states, as QKV and MLP up do).
        """
        from simkit.cost.profile import FEW_ROWS

        if self.device != "cpu" or m > FEW_ROWS or dtype not in self.GEMM_BEFORE_DTYPES:
            return None
        layer = gemm_layer(op, k, n)
        if layer is not None and op == "o_proj":
            d = layer.head_dim
            heads, kvh = max(1, layer.q_dim // d // layer.tp), max(1, layer.kv_dim // d // layer.tp)
            c = self.GEMM_BEFORE_CONTEXT
            eb = {"fp8": 1, "fp16": 2, "bf16": 2}.get(dtype, 4)
            q = self.take((m, 1, heads, d), dtype, "gq")
            kk = self.take((m, 1, kvh, d), dtype, "gk")
            v = self.take((m, 1, kvh, d), dtype, "gv")
            n_cache = self.copies(2.0 * m * kvh * (c + 1) * d * eb, cap=16)
            kcs = self.take((n_cache, m, kvh, c + 1, d), dtype, "gkc")
            vcs = self.take((n_cache, m, kvh, c + 1, d), dtype, "gvc")
            caches = itertools.cycle([(kcs[i], vcs[i]) for i in range(n_cache)])

            def attention() -> Any:
                kc, vc = next(caches)
                return k_attention(q, kk, v, kc, vc, c)

            return attention
        if layer is not None and op == "mlp_down":
            h, f2 = layer.hidden, 2 * layer.ffn // layer.tp
            up = self._cold_linear(m, h, f2, dtype, "g")
            gu = self.take((m, f2), dtype, "gx")
            return lambda: (up(), k_silu_mul(gu))
        if layer is not None and op == "mlp_up":
            prev = self._cold_linear(m, layer.q_dim // layer.tp, layer.hidden, dtype, "g")
        elif layer is not None and op in ("qkv_proj", "lm_head"):
            prev = self._cold_linear(m, layer.ffn // layer.tp, layer.hidden, dtype, "g")
        else:
            prev = self._cold_linear(m, k, k, dtype, "g")
        x, y, w = self.take((m, k), dtype, "gx"), self.take((m, k), dtype, "gy"), self.take((k,), dtype, "gn")
        return lambda: (prev(), k_add(x, y), k_rmsnorm(x, w))

    def copies(self, nbytes: float, cap: int = 64) -> int:
        """How many copies of an ``nbytes`` operand together exceed twice the last-level cache."""
        return int(min(cap, max(1, math.ceil(self.cold_bytes / max(nbytes, 1.0)))))

    def gemm(self, dtype: str) -> int:
        rate = self.rates.get(dtype) or self.probe_rate(dtype)
        eb = {"fp8": 1, "fp16": 2, "bf16": 2}.get(dtype, 4)
        cap = self.size.gemm_max_s
        max_dim = 16384
        shapes = gemm_shapes(max_dim=max_dim, max_weight=(2**28 if self.size.name == "full" else 2**26))
        cands = []
        for op, k, n in shapes:
            for m in GEMM_TOKENS:
                est = max(2.0 * m * k * n / rate, (k * n + m * (k + n)) * eb / self.mem_bw) + 2e-5
                if est <= cap and (m * (k + n) + k * n) * eb < 1.5e9:
                    if dtype == "fp8" and (m % 16 or k % 16 or n % 16):
                        continue
                    cands.append((m, op, k, n, est))
        if len(cands) < self.size.gemm_configs // 2:  # slow machine: take the cheapest shapes too
            every = sorted(
                ((m, op, k, n, max(2.0 * m * k * n / rate, k * n * eb / self.mem_bw)) for op, k, n in shapes for m in GEMM_TOKENS),
                key=lambda c: c[4],
            )
            cands = every[: self.size.gemm_configs]
        # strata: every token count x short/long rows (k) x narrow/wide outputs (n), so that the
        # small TP shards (whose short rows reach a fraction of the bandwidth of long ones) are
        # measured at decode batch sizes too
        chosen = _stratified(cands, self.size.gemm_configs, self.rng, key=lambda c: (c[0], c[2] <= 1024, c[3] <= 2048))
        if self.device == "cpu" and self.size.decode_gemm_configs:
            taken = {c[:4] for c in chosen}
            few = [c for c in cands if c[0] <= 16 and c[:4] not in taken]
            chosen += _stratified(few, self.size.decode_gemm_configs, self.rng, key=lambda c: (c[0], c[2] <= 1024))
        if self.device == "cpu" and self.size.wide_gemm_configs:
            taken = {c[:4] for c in chosen}
            llc = self.cold_bytes / 2.0
            wide = [c for c in cands if c[0] >= 64 and c[2] * c[3] * eb > llc and c[:4] not in taken]
            chosen += _stratified(wide, self.size.wide_gemm_configs, self.rng, key=lambda c: (c[0], c[2] <= 2048))
        if self.device == "cpu" and self.size.row_length_rows:
            chosen += self.row_length_configs(rate, eb, {(c[0], c[2], c[3]) for c in chosen})
        return self.time_gemms(chosen, dtype, eb)

    def row_length_configs(self, rate: float, eb: int, have: set[tuple[int, int, int]]) -> list[tuple[int, str, int, int, float]]:
        """(m, "row_length", k, n, estimated s) of the row-length grid (row_length_shapes) within
        the time cap, leaving out the (m, k, n) in ``have`` (measured already)."""
        cap = self.size.gemm_max_s
        have = set(have)
        out = []
        for m, k, n0 in row_length_shapes(self.size.row_length_rows):
            for n in [n0, *(w for w in reversed(ROW_LENGTH_WIDTHS) if w < n0)]:
                est = max(2.0 * m * k * n / rate, (k * n + m * (k + n)) * eb / self.mem_bw) + 2e-5
                if est <= cap:
                    if (m, k, n) not in have:  # else the shape is measured already
                        have.add((m, k, n))
                        out.append((m, "row_length", k, n, est))
                    break
        return out

    def time_gemms(self, chosen: Sequence[tuple[int, str, int, int, float]], dtype: str, eb: int) -> int:
        """Time the (m, op, k, n, _) GEMMs with cold weights (on a CPU the few-row ones after their
        predecessor in a decode layer: :meth:`gemm_predecessor`); one sample row each."""
        for m, op, k, n, _ in chosen:
            self.keep(lambda m=m, op=op, k=k, n=n: self._gemm_row(m, op, k, n, dtype, eb), dtype)
        return len(chosen)

    def _gemm_row(self, m: int, op: str, k: int, n: int, dtype: str, eb: int) -> dict[str, Any]:
        a = self.take((m, k), dtype, "a")
        w = self.take((self.copies(k * n * eb), n, k), dtype, "w")
        fn = self._linear_fn(a, w, dtype)
        before = self.gemm_predecessor(op, m, k, n, dtype)
        with self._dtype_ctx(dtype), (self.torch.inference_mode() if before is not None else contextlib.nullcontext()):
            meas = self.measure(fn, before=before)
        o = gemm_op(op, m, k, n, dtype)
        return make_row("gemm", op, dtype, meas, flops=o.flops, bytes_moved=o.bytes, source=self.source, shape=o.shape)

    # ---- attention ---------------------------------------------------------------------------
    ATTN_HEADS = (
        (32, 8, 128), (32, 32, 128), (8, 8, 128), (16, 2, 128), (8, 1, 128), (4, 1, 128),
        (24, 8, 128), (12, 4, 128), (12, 2, 128), (16, 8, 128),
        (32, 8, 64), (8, 8, 64), (12, 12, 64), (14, 2, 64),
    )  # fmt: skip
    """(heads, kv_heads, head_dim) per GPU: Llama-3-8B/70B and Llama-2-7B at TP 1..8, Llama-3.2-3B
    (24/8) and its TP-2 shard, Qwen2-1.5B (12/2), a GQA-2 model (16/8), Llama-3.2-1B, GPT-2-small-
    like and Qwen2-0.5B-like small models: GQA group sizes 1, 2, 3, 4, 6, 7 and 8."""

    def attention(self, dtype: str, kind: str) -> int:
        if dtype in ("fp8", "tf32"):
            return 0
        eb = 2 if dtype in ("fp16", "bf16") else 4
        # rough attention FLOP/s: a fraction of the GEMM rate (CPU SDPA is far from GEMM speed)
        rate = 0.15 * (self.rates.get(dtype) or self.probe_rate(dtype))
        cap = self.size.attn_max_s
        cands = []
        if kind == "attn_prefill":
            for b in (1, 2, 4, 8, 16):
                for s in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
                    for h, kvh, d in self.ATTN_HEADS:
                        est = 2.0 * b * h * d * s * s / rate + 4e-5 * b
                        if est <= cap:
                            cands.append((b, s, h, kvh, d, est))
        else:
            for b in (1, 2, 4, 8, 16, 32, 64):
                for c in (64, 128, 256, 512, 1024, 2048, 4096, 8192):
                    for h, kvh, d in self.ATTN_HEADS:
                        kv_bytes = 2.0 * b * kvh * c * d * eb
                        est = max(4.0 * b * h * d * c / rate, kv_bytes / (0.1 * self.mem_bw)) + 2e-5
                        if est <= cap and kv_bytes <= 6e8:
                            cands.append((b, c, h, kvh, d, est))
        # strata: every (heads, kv heads, head dim) x short/long context; batch and context at random
        chosen = _stratified(cands, self.size.attn_configs, self.rng, key=lambda c: (c[2], c[3], c[4], c[1] >= 512))
        if kind == "attn_decode" and self.device == "cpu" and self.size.decode_attn_configs:
            taken = set(chosen)
            few = [c for c in cands if c[0] <= 16 and c not in taken]
            # strata: batch x short/medium/long context x grouped (GQA) or not: a CPU's decode
            # attention costs per query head, whatever the KV heads (docs/fidelity.md), so both
            # kinds of head shape are sampled at every batch and context band
            extra = _stratified(few, self.size.decode_attn_configs, self.rng,
                                key=lambda c: (c[0], 0 if c[1] <= 128 else 1 if c[1] <= 512 else 2, c[2] > c[3]))  # fmt: skip
            # contexts off the power-of-two grid (a real batch's are anywhere): x0.7..1.4
            chosen += [(b, int(c * self.rng.uniform(0.7, 1.4)), h, kvh, d, e) for b, c, h, kvh, d, e in extra]
        for b, s, h, kvh, d, _ in chosen:
            self.keep(lambda b=b, s=s, h=h, kvh=kvh, d=d: self._attention_row(kind, b, s, h, kvh, d, dtype, eb), dtype)
        return len(chosen)

    def _attention_row(self, kind: str, b: int, s: int, h: int, kvh: int, d: int, dtype: str, eb: int) -> dict[str, Any]:
        model = bench_model(hidden=h * d, heads=h, kv_heads=kvh, head_dim=d, ffn=256)
        if kind == "attn_prefill":
            seq, pos, max_ctx = s, 0, s
        else:
            seq, pos, max_ctx = 1, s, s + 1
        q = self.take((b, seq, h, d), dtype, "q")
        k = self.take((b, seq, kvh, d), dtype, "k")
        v = self.take((b, seq, kvh, d), dtype, "v")
        # decode reads each layer's cache once per step: rotate copies so it is timed cold
        n_cache = self.copies(2.0 * b * kvh * max_ctx * d * eb, cap=16) if kind == "attn_decode" else 1
        kcs = self.take((n_cache, b, kvh, max_ctx, d), dtype, "kc")
        vcs = self.take((n_cache, b, kvh, max_ctx, d), dtype, "vc")
        caches = itertools.cycle([(kcs[i], vcs[i]) for i in range(n_cache)])

        def fn(q: Any = q, k: Any = k, v: Any = v, caches: Any = caches, pos: int = pos) -> Any:
            kc, vc = next(caches)
            return k_attention(q, k, v, kc, vc, pos)

        with self.torch.inference_mode():
            meas = self.measure(fn)
        o = attention_op(b, seq, pos, model, dtype)
        return make_row(kind, kind, dtype, meas, flops=o.flops, bytes_moved=o.bytes, source=self.source, shape=o.shape)

    # ---- elementwise -------------------------------------------------------------------------
    ELEM_OPS = ("input_norm", "layernorm", "mlp_act", "residual_add", "rope", "embedding", "sampling")

    def elementwise(self, dtype: str) -> int:
        if dtype in ("fp8", "tf32"):
            return 0
        cands = []
        for op in self.ELEM_OPS:
            for t in BIG_TOKENS:
                for h, heads, kvh, d, f, vocab in ELEM_MODELS:
                    if op == "sampling":
                        numel = t * vocab
                        if t > 256:
                            continue
                    elif op == "mlp_act":
                        numel = t * f
                    elif op == "rope":
                        numel = t * (heads + kvh) * d
                    else:
                        numel = t * h
                    if numel <= self.size.elem_max_numel:
                        cands.append((op, t, h, heads, kvh, d, f, vocab))
        # strata: every operator x decode (< 64 tokens), short-prefill (64-511) and long-prefill
        # (>= 512) token counts: with two bands (< 64, >= 64) the quick suite's few samples per
        # operator at >= 64 tokens were mostly at 64-128, and a prefill step's RoPE and norms at
        # 128-3200 tokens were predicted 2-3.5x too fast (docs/fidelity.md, 2026-11-30 17:00)
        chosen = _stratified(cands, self.size.elem_configs, self.rng, key=lambda c: (c[0], self.token_band(c[1])))
        for c in chosen:
            self.keep(lambda c=c: self._elementwise_row(*c, dtype=dtype), dtype)
        return len(chosen)

    def _elementwise_row(self, op: str, t: int, h: int, heads: int, kvh: int, d: int, f: int, vocab: int, *, dtype: str) -> dict[str, Any]:
        dev = self.device
        model = bench_model(
            hidden=h, heads=heads, kv_heads=kvh, head_dim=d, ffn=f, vocab=vocab,
            norm="layernorm" if op == "layernorm" else "rmsnorm",
        )
        fn = self._elem_fn(op, t, h, heads, kvh, d, f, vocab, dtype, dev)
        before = self.predecessor(op, (h, heads, kvh, d, f, vocab), dtype) if dev == "cpu" else None
        with self.torch.inference_mode():
            meas = self.measure(fn, before=before)
        o = elementwise_op("input_norm" if op == "layernorm" else op, t, model, dtype)
        shape = dict(o.shape)
        shape["tokens"] = t
        return make_row("elementwise", op, dtype, meas, flops=o.flops, bytes_moved=o.bytes, source=self.source, shape=shape)

    @staticmethod
    def token_band(tokens: int) -> int:
        """The elementwise samples' token stratum: 0 decode (< 64), 1 short prefill (64-511), 2 long (>= 512)."""
        return 0 if tokens < 64 else 1 if tokens < 512 else 2

    def _elem_fn(self, op: str, t: int, h: int, heads: int, kvh: int, d: int, f: int, vocab: int, dtype: str, dev: str) -> Callable[[], Any]:
        torch = self.torch
        if op == "input_norm":
            x, w = self.take((t, h), dtype, "x"), self.take((h,), dtype, "w")
            return lambda: k_rmsnorm(x, w)
        if op == "layernorm":
            x, w, b = self.take((t, h), dtype, "x"), self.take((h,), dtype, "w"), self.take((h,), dtype, "b")
            return lambda: k_layernorm(x, w, b)
        if op == "mlp_act":
            gu = self.take((t, 2 * f), dtype, "x")
            return lambda: k_silu_mul(gu)
        if op == "residual_add":
            x, y = self.take((t, h), dtype, "x"), self.take((t, h), dtype, "y")
            return lambda: k_add(x, y)
        if op == "rope":
            qkv = self.take((t, (heads + 2 * kvh) * d), dtype, "x")
            cos, sin = rope_tables(t, d, dtype, dev)
            return lambda: k_rope(qkv, cos, sin, 1, t, heads, kvh, d, 0)
        if op == "embedding":
            rows = min(vocab, 8192)  # the gather's cost depends on tokens x hidden, not on the table
            table = self.take((rows, h), dtype, "y")
            ids = torch.randint(0, rows, (t,), device=dev)
            return lambda: k_embedding(ids, table)
        if op == "sampling":
            logits = self.take((t, vocab), dtype, "x")
            return lambda: k_sampling(logits)
        raise CalibrationError(f"unknown elementwise benchmark {op!r}")

    # ---- launch / dispatch overhead ----------------------------------------------------------
    def launch(self, dtype: str) -> int:
        """The fixed cost of one operator (dispatch + kernel launch): each canonical operator run on
        a tiny input. ``op`` is the canonical name (its class is ``simkit.cost.ops.OP_CLASS[op]``):
        qkv_proj (gemm), attn_prefill, attn_decode, and the elementwise residual_add, input_norm,
        rope, mlp_act, embedding, sampling, each through the same kernel code as the benchmarks."""
        dev, torch = self.device, self.torch
        x = rand((1, 16), dtype, dev)
        w = rand((16, 16), dtype, dev)
        nw = rand((16,), dtype, dev)
        q1 = rand((1, 1, 1, 16), dtype, dev)
        q2 = rand((1, 2, 1, 16), dtype, dev)
        kc = rand((1, 1, 3, 16), dtype, dev)
        vc = rand((1, 1, 3, 16), dtype, dev)
        qkv = rand((1, 48), dtype, dev)
        cos, sin = rope_tables(4, 16, dtype, dev)
        gu = rand((1, 32), dtype, dev)
        table = rand((16, 16), dtype, dev)
        ids = torch.randint(0, 16, (1,), device=dev)
        benches: list[tuple[str, Callable[[], Any]]] = [
            ("qkv_proj", lambda: torch.nn.functional.linear(x, w)),
            ("attn_prefill", lambda: k_attention(q2, q2, q2, kc, vc, 0)),
            ("attn_decode", lambda: k_attention(q1, q1, q1, kc, vc, 2)),
            ("residual_add", lambda: k_add(x, x)),
            ("input_norm", lambda: k_rmsnorm(x, nw)),
            ("rope", lambda: k_rope(qkv, cos, sin, 1, 1, 1, 1, 16, 0)),
            ("mlp_act", lambda: k_silu_mul(gu)),
            ("embedding", lambda: k_embedding(ids, table)),
            ("sampling", lambda: k_sampling(x)),
        ]
        t = Timer(self.device, min_rep_s=max(self.timer.min_rep_s, 2e-3), budget_s=self.timer.budget_s,
                  min_reps=max(self.timer.min_reps, 7), max_reps=self.timer.max_reps, clock=self.timer.clock)
        for name, fn in benches:
            with torch.inference_mode():
                meas = t.measure(fn)
            self.rows.append(
                make_row("launch", name, dtype, meas, flops=0.0, bytes_moved=0.0, source=self.source, bytes=0.0)
            )
        return len(benches)

    # ---- memory bandwidth and copies ---------------------------------------------------------
    def mem_bw_bench(self) -> int:
        torch, dev = self.torch, self.device
        n = 0
        best = 0.0
        for size in self.size.bw_sizes:
            numel = size // 4
            a = torch.rand(numel, device=dev, dtype=torch.float32) + 0.5
            b = torch.empty_like(a)
            for op, moved, fn in (
                ("stream_copy", 2 * size, lambda a=a, b=b: b.copy_(a)),
                ("stream_read", size, lambda a=a: torch.sum(a)),
                ("stream_write", size, lambda b=b: b.fill_(1.5)),
            ):
                meas = self.measure(fn)
                self.rows.append(
                    make_row("mem_bw", op, "fp32", meas, flops=0.0, bytes_moved=moved, source=self.source,
                             bytes=size, direction="d2d" if dev == "cuda" else "host")
                )
                if op == "stream_copy":
                    best = moved / meas.median  # the largest buffer's: closest to DRAM
                n += 1
            del a, b
        if best > 0:
            self.mem_bw = best
        return n

    def copy_bench(self) -> int:
        """Host memcpy over sizes (and, on CUDA, d2d and h2d/d2h pinned and pageable)."""
        torch, dev = self.torch, self.device
        n = 0
        for size in self.size.bw_sizes:
            numel = size // 4
            src = torch.rand(numel, dtype=torch.float32) + 0.5
            dst = torch.empty_like(src)
            meas = self.measure(lambda src=src, dst=dst: dst.copy_(src))
            self.rows.append(
                make_row("copy", "memcpy", "fp32", meas, flops=0.0, bytes_moved=2 * size, source=self.source,
                         bytes=size, direction="host", pinned=0)
            )
            n += 1
            if dev == "cuda":
                for pinned in (0, 1):
                    h = torch.rand(numel, dtype=torch.float32, pin_memory=bool(pinned)) + 0.5
                    d = torch.empty(numel, device="cuda", dtype=torch.float32)
                    for direction, fn in (
                        ("h2d", lambda h=h, d=d, p=pinned: d.copy_(h, non_blocking=bool(p))),
                        ("d2h", lambda h=h, d=d, p=pinned: h.copy_(d, non_blocking=bool(p))),
                    ):
                        meas = self.measure(fn)
                        self.rows.append(
                            make_row("copy", direction, "fp32", meas, flops=0.0, bytes_moved=size,
                                     source=self.source, bytes=size, direction=direction, pinned=pinned, num_gpus=1)
                        )
                        n += 1
                    del h, d
                d1 = torch.rand(numel, device="cuda", dtype=torch.float32)
                d2 = torch.empty_like(d1)
                meas = self.measure(lambda d1=d1, d2=d2: d2.copy_(d1))
                self.rows.append(
                    make_row("copy", "d2d", "fp32", meas, flops=0.0, bytes_moved=2 * size, source=self.source,
                             bytes=size, direction="d2d", pinned=0, num_gpus=1)
                )
                n += 1
                del d1, d2
            del src, dst
        return n


def _stratified(cands: list[Any], count: int, rng: random.Random, key: Callable[[Any], Any]) -> list[Any]:
    """Up to ``count`` candidates spread evenly over the strata ``key`` defines (round-robin over
    strata, random within one), so every token count / group is represented."""
    strata: dict[Any, list[Any]] = {}
    for c in cands:
        strata.setdefault(key(c), []).append(c)
    for v in strata.values():
        rng.shuffle(v)
    keys = sorted(strata, key=str)
    out: list[Any] = []
    while len(out) < count and any(strata[k] for k in keys):
        for k in keys:
            if strata[k] and len(out) < count:
                out.append(strata[k].pop())
    return out


# ---------------------------------------------------------------------------------------------
# Device facts
# ---------------------------------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


_CPUINFO_KEYS = {"vendor_id": "vendor", "cpu family": "cpu_family", "model": "cpu_model", "stepping": "cpu_stepping", "microcode": "microcode"}


def cpu_facts() -> dict[str, Any]:
    """CPU model, cores, memory, clocks and vector extensions from /proc and /sys (Linux)."""
    info: dict[str, Any] = {"name": platform.processor() or platform.machine()}
    text = _read("/proc/cpuinfo") or ""
    flags: set[str] = set()
    mhz = []
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "model name" and val:
            info["name"] = val
        elif key in ("flags", "Features") and not flags:
            flags = set(val.split())
        elif key in _CPUINFO_KEYS and _CPUINFO_KEYS[key] not in info:
            info[_CPUINFO_KEYS[key]] = val
        elif key == "cpu MHz":
            with contextlib.suppress(ValueError):
                mhz.append(float(val))
    info["logical_cpus"] = os.cpu_count()
    with contextlib.suppress(AttributeError, OSError):
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    cores = {line.split(":")[1].strip() for line in text.splitlines() if line.startswith("core id")}
    sockets = {line.split(":")[1].strip() for line in text.splitlines() if line.startswith("physical id")}
    if cores:
        info["cores_per_socket"] = len(cores)
    if sockets:
        info["sockets"] = len(sockets)
    if mhz:
        info["clock_mhz"] = round(float(np.median(mhz)), 1)
    mx = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if mx and mx.isdigit():
        info["max_clock_mhz"] = int(mx) / 1000.0
    info["vector_flags"] = sorted(f for f in KERNEL_ISA_FLAGS if f in flags)
    meminfo = _read("/proc/meminfo") or ""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            info["memory_bytes"] = int(line.split()[1]) * 1024
    for level, idx in (("l2_cache", 2), ("l3_cache", 3)):
        size = _read(f"/sys/devices/system/cpu/cpu0/cache/index{idx}/size")
        if size:
            info[level] = size
    l3 = info.get("l3_cache") or info.get("l2_cache")
    if l3:
        with contextlib.suppress(ValueError):
            num = float(l3.rstrip("KMG"))
            info["llc_bytes"] = int(num * {"K": 1024, "M": 1 << 20, "G": 1 << 30}.get(l3[-1], 1))
    hyper = "hypervisor" in flags
    info["virtualized"] = hyper
    return info


def _fast_bf16_cpu(flags: Iterable[str]) -> bool:
    return any(f in flags for f in ("avx512_bf16", "amx_bf16", "bf16"))


def supported_dtypes(device: str, facts: dict[str, Any]) -> dict[str, bool]:
    torch = require_torch()
    if device == "cpu":
        return {"fp32": True, "bf16": _fast_bf16_cpu(facts.get("vector_flags", ())), "fp16": "avx512_fp16" in facts.get("vector_flags", ()),
                "tf32": False, "fp8": False}
    major, _minor = torch.cuda.get_device_capability()
    has_fp8 = major * 10 + _minor >= 89 and hasattr(torch, "_scaled_mm") and hasattr(torch, "float8_e4m3fn")
    return {"fp32": True, "tf32": major >= 8, "fp16": True, "bf16": major >= 8, "fp8": bool(has_fp8)}


OPENMP_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY")
"""Environment variables that change how torch's OpenMP threads wait for work and where they run:
with more than one thread a kernel's time depends on them (a thread that sleeps between kernels
wakes late, one that spins keeps a vCPU busy); libgomp reads them once, at start-up."""


def openmp_env() -> dict[str, str]:
    """The OPENMP_ENV variables as this process was started with them ("unset" where not set)."""
    return {k: os.environ.get(k, "unset") for k in OPENMP_ENV}


def openmp_env_note(device: dict[str, Any], threads: int, name: str) -> str | None:
    """A warning when CPU profile ``name`` (its ``device`` section) was measured with more than one
    thread under other OpenMP wait/placement settings than this process runs with (profiles
    measured before 2026-11-30 17:00 UTC did not record them: no note); None otherwise."""
    rec = device.get("openmp_env")
    if threads <= 1 or device.get("kind") != "cpu" or not isinstance(rec, dict):
        return None
    now = openmp_env()
    diff = [f"{k}: profile {rec.get(k, 'unset')}, now {now[k]}" for k in OPENMP_ENV if str(rec.get(k, "unset")) != now[k]]
    if not diff:
        return None
    wake = " and its thread wake-up term (docs/calibration.md)" if isinstance(device.get("thread_wakeup"), dict) else ""
    return (f"WARNING: calibration profile {name!r} was measured with other OpenMP settings ({'; '.join(diff)}): with "
            f"{threads} threads they change every kernel's time{wake}; run with the profile's settings")


def thread_wakeup_note(device: dict[str, Any], threads: int, name: str) -> str | None:
    """A note when CPU profile ``name`` (its ``device`` section) predicts more than one thread
    without a measured thread wake-up (``device.thread_wakeup``, simkit.cost.threads: profiles
    measured before 2026-11-30 20:00 UTC): its steps carry no wake-up time, which under libgomp's
    default wait policy they pay; None otherwise."""
    if threads <= 1 or device.get("kind") != "cpu" or "thread_wakeup" in device:
        return None
    return (f"note: calibration profile {name!r} has no measured thread wake-up (measured before the term existed): "
            f"its {threads}-thread steps are predicted without the time worker threads take to wake after a serial "
            f"stretch; re-measure with `simkit calibrate --device cpu --quick --threads {threads}`")


WAKE_GAPS_S = (0.0, 25e-6, 50e-6, 100e-6, 200e-6, 400e-6, 800e-6, 1.6e-3, 3.2e-3)
"""The serial gaps (seconds) after which :func:`measure_thread_wakeup` times a parallel region:
from back to back to well past libgomp's default spin (300,000 spins; its length in seconds is
what the ladder finds)."""

WAKE_ROUNDS = 40
"""Timed regions per gap and thread count (interleaved over the gaps, in a shuffled order per round)."""


def _region_after_gaps(torch: Any, gaps: Sequence[float], rounds: int, rng: random.Random) -> list[float]:
    """Median wall seconds of one small parallel region (a two-input add over 4 x GRAIN_SIZE fp32
    elements: split over the team at more than one thread) after each serial gap of the calling
    thread (a busy Python loop: the thread stays on its core, as between a step's kernels)."""
    from simkit.cost.threads import GRAIN_SIZE

    n = 4 * GRAIN_SIZE
    x, y, z = torch.randn(n), torch.randn(n), torch.empty(n)
    for _ in range(50):
        torch.add(x, y, out=z)
    per: list[list[float]] = [[] for _ in gaps]
    clock = time.perf_counter
    for _ in range(rounds):
        order = list(range(len(gaps)))
        rng.shuffle(order)
        for i in order:
            end = clock() + gaps[i]
            while clock() < end:
                pass
            t0 = clock()
            torch.add(x, y, out=z)
            per[i].append(clock() - t0)
    return [float(np.median(v)) for v in per]


def measure_thread_wakeup(threads: int, rounds: int = WAKE_ROUNDS, seed: int = 0) -> dict[str, Any]:
    """The OpenMP wake-up curve at ``threads`` threads (simkit.cost.threads): a small parallel
    region timed after each serial gap of :data:`WAKE_GAPS_S` at ``threads`` threads and at one,
    the excess of the first over the second against back to back (``wakeup_curve``). Recorded as
    ``device.thread_wakeup`` with the OpenMP settings in force; about 0.5 s."""
    from simkit.cost.threads import wakeup_curve

    torch = require_torch()
    rng = random.Random(seed)
    multi = _region_after_gaps(torch, WAKE_GAPS_S, rounds, rng)
    torch.set_num_threads(1)
    try:
        single = _region_after_gaps(torch, WAKE_GAPS_S, rounds, rng)
    finally:
        torch.set_num_threads(threads)
    excess = wakeup_curve(WAKE_GAPS_S, multi, single)
    return {
        "threads": int(threads),
        "openmp_env": openmp_env(),
        "gaps_s": [float(g) for g in WAKE_GAPS_S],
        "excess_s": [round(e, 9) for e in excess],
        "region_s": round(multi[0], 9),
        "median_after_gap_s": [round(m, 9) for m in multi],
        "median_after_gap_1_thread_s": [round(m, 9) for m in single],
    }


def device_facts(device: str, threads: int) -> dict[str, Any]:
    """What the profile records about the machine it was measured on."""
    torch = require_torch()
    facts: dict[str, Any] = {"kind": "cpu" if device == "cpu" else "gpu"}
    cpu = cpu_facts()
    facts["torch_version"] = str(torch.__version__)
    facts["python_version"] = platform.python_version()
    facts["os"] = f"{platform.system()} {platform.release()}"
    facts["threads"] = int(threads)
    if device == "cpu":
        facts["openmp_env"] = openmp_env()
    facts["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if device == "cpu":
        facts.update({k: v for k, v in cpu.items()})
        facts["mkldnn"] = bool(torch.backends.mkldnn.is_available())
        with contextlib.suppress(Exception):
            facts["cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
    else:
        props = torch.cuda.get_device_properties(0)
        facts["name"] = torch.cuda.get_device_name(0)
        facts["memory_bytes"] = int(props.total_memory)
        facts["sm_count"] = int(props.multi_processor_count)
        facts["compute_capability"] = f"{props.major}.{props.minor}"
        facts["cuda_version"] = torch.version.cuda
        l2 = getattr(props, "L2_cache_size", 0) or 0
        if l2:
            facts["llc_bytes"] = int(l2)
        facts["num_gpus"] = torch.cuda.device_count()
        facts["host_cpu"] = cpu
        facts.update(_nvidia_smi())
    facts["dtype_support"] = supported_dtypes(device, cpu)
    facts["fingerprint"] = make_fingerprint(facts["kind"], facts)
    return facts


def local_cpu_fingerprint(threads: int | None) -> dict[str, Any]:
    """This machine's CPU fingerprint (see simkit.specs.calibration) without importing torch:
    its version comes from the installed package metadata; ``threads`` unknown when None."""
    import importlib.metadata

    facts: dict[str, Any] = dict(cpu_facts())
    facts["threads"] = threads
    try:
        facts["torch_version"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        facts["torch_version"] = None
    return make_fingerprint("cpu", facts)


def _nvidia_smi() -> dict[str, Any]:
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if not exe:
        return {}
    q = "driver_version,clocks.max.sm,clocks.max.mem,power.limit,pcie.link.gen.max,pcie.link.width.max"
    try:
        out = subprocess.run([exe, f"--query-gpu={q}", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0 or not out.stdout.strip():
        return {}
    vals = [v.strip() for v in out.stdout.splitlines()[0].split(",")]
    keys = ("driver_version", "sm_clock_max_mhz", "mem_clock_max_mhz", "power_limit_w", "pcie_gen_max", "pcie_width_max")
    return dict(zip(keys, vals))


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------
_ALLOCATOR: dict[str, Any] = {}


def tune_allocator() -> str:
    """Make host allocations reproducible (Linux/glibc): serve blocks up to 32 MiB from the heap
    (``M_MMAP_THRESHOLD``) and never give freed heap memory back (``M_TRIM_THRESHOLD``).

    glibc's default moves its mmap threshold with the allocation history, so the same operator
    either reuses heap memory or page-faults fresh ``mmap`` pages on every call (a 4 MiB
    temporary costs ~1-5 ms of faults in a VM): the same kernel then takes 1x or 10x as long
    depending on what ran before. The calibration and the validation both call this, so the
    kernels they time allocate the same way (serving engines use jemalloc/tcmalloc for the same
    reason). Returns a description recorded in the device facts."""
    if "desc" in _ALLOCATOR:
        return str(_ALLOCATOR["desc"])
    desc = "default"
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3
            if libc.mallopt(m_mmap_threshold, 32 << 20) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1:
                desc = "glibc mallopt: M_MMAP_THRESHOLD=32MiB, M_TRIM_THRESHOLD=1GiB"
        except (OSError, AttributeError):
            pass
    _ALLOCATOR["desc"] = desc
    return desc


def check_clock(clock: str, device: str, threads: int) -> None:
    if clock not in ("wall", "cpu"):
        raise CalibrationError(f"unknown clock {clock!r} (expected wall or cpu)")
    if clock == "cpu" and (device != "cpu" or threads != 1):
        raise CalibrationError(
            "--clock cpu times the calling thread's CPU time: it needs --device cpu and --threads 1 "
            f"(got --device {device}, {threads} threads)"
        )


def drift_probe(device: str = "cpu", clock: str = "wall") -> float:
    """Seconds of a fixed reference workload on ``device`` (an fp32 256x1024x1024 GEMM plus a
    16 MiB copy; median of 9 repetitions), run at the start and the end of a calibration: their
    ratio shows whether the machine's speed drifted while it was measured (on a shared VM the
    host's other tenants move it by 10% and more). Whether a profile fits the machine *now* is
    :func:`simkit.calibrate.probe.speed_probe`'s job (it times the kernels the profile predicts,
    in every dtype)."""
    torch = require_torch()
    g = torch.Generator(device="cpu").manual_seed(1234)
    a = torch.randn(256, 1024, generator=g).to(device)
    w = torch.randn(1024, 1024, generator=g).to(device)
    src = torch.rand(1 << 22, generator=g).to(device)
    dst = torch.empty_like(src)

    def work() -> None:
        torch.nn.functional.linear(a, w)
        dst.copy_(src)

    timer = Timer(device, min_rep_s=0.0, budget_s=0.0, min_reps=9, max_reps=9, warmup=2, clock=clock)
    return timer.measure(work).median


class LoadMonitor:
    """How many CPU cores other processes kept busy (incl. hypervisor steal) while we measured:
    the machine's busy time (/proc/stat) less this process's own CPU time, over the wall time;
    and, apart, the steal alone (:meth:`steal_cores`)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.busy0 = _machine_busy_s()
        self.own0 = _own_cpu_s()
        self.steal0 = _steal_s()

    def steal_cores(self) -> float | None:
        """Cores' worth of time the hypervisor gave the VM's vCPUs to others (/proc/stat steal)
        since the start: other guests of the host, which no process list inside the VM shows; a
        multi-threaded kernel waits for a vCPU that is stolen (docs/calibration.md, 2 threads)."""
        steal = _steal_s()
        dt = time.perf_counter() - self.t0
        if steal is None or self.steal0 is None or dt <= 0:
            return None
        return max(0.0, (steal - self.steal0) / dt)

    def other_cores(self) -> float | None:
        busy = _machine_busy_s()
        if busy is None or self.busy0 is None:
            return None
        dt = time.perf_counter() - self.t0
        if dt <= 0:
            return None
        return max(0.0, (busy - self.busy0 - (_own_cpu_s() - self.own0)) / dt)


CONTENTION_MARGIN_CORES = 0.25
"""A wall-clock sample is contended when other processes (and steal) took more than the cores its
threads left free plus this much: then at least one of its threads waited for a core."""
CONTENTION_RETRIES = 2
"""Re-measurements of a contended sample (the least contended of the tries is kept)."""
CONTENTION_RETRY_BUDGET_S = {"tiny": 2.0, "quick": 15.0, "full": 60.0}
"""Wall seconds a suite may spend re-measuring contended samples; beyond it they are kept as
measured (and counted)."""


def _clock_tick_s() -> float:
    try:
        return 1.0 / float(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 0.01


def _load_now() -> tuple[float, float, float] | None:
    """(wall clock, the machine's busy CPU seconds incl. steal, this process's CPU seconds)."""
    busy = _machine_busy_s()
    if busy is None:
        return None
    return time.perf_counter(), busy, time.process_time()


@dataclass
class ContentionCheck:
    """Per-sample check for other load on a shared machine (wall-clock CPU measurements).

    Around each measurement it reads the machine's busy CPU time (``/proc/stat``, the hypervisor's
    steal included) and this process's own CPU time; what the machine did beyond this process,
    over the measurement's wall time, is the cores other work took meanwhile. With ``threads``
    torch threads on ``logical_cpus`` CPUs, ``logical_cpus - threads`` cores are spare; when the
    others took more than that plus :data:`CONTENTION_MARGIN_CORES` (and more than the counters'
    resolution, one tick per CPU at each end), a thread of the measurement waited for a core, and
    at more than one thread every parallel region waits for its slowest thread: a contended sample
    measured the other load. It is measured again (up to :data:`CONTENTION_RETRIES` times, while
    the suite's re-measurement budget lasts) and the least contended try is kept; the sample row
    records the other load of the kept try (``other_cores``). The load counters are the machine's
    only; what the hypervisor does to shared caches, memory bandwidth or the host's clock without
    taking the vCPUs away is invisible to them (docs/fidelity.md, CPU validation, 2 threads)."""

    logical_cpus: int
    threads: int
    budget_s: float
    read: Callable[[], tuple[float, float, float] | None] = _load_now
    tick_s: float = field(default_factory=lambda: _clock_tick_s())
    """Resolution of the machine's CPU-time counters (one clock tick)."""
    margin_cores: float = CONTENTION_MARGIN_CORES
    retries: int = CONTENTION_RETRIES
    checked: int = 0
    contended: int = 0
    """Samples whose first measurement was contended."""
    remeasured: int = 0
    """Re-measurements made."""
    still_contended: int = 0
    """Samples kept although every try was contended (retries or budget exhausted)."""
    spent_s: float = 0.0

    @property
    def spare_cores(self) -> int:
        return max(self.logical_cpus - self.threads, 0)

    def other_cores(self, start: tuple[float, float, float], end: tuple[float, float, float]) -> tuple[float, bool]:
        """(cores other work took between two readings, whether that contended the measurement)."""
        wall = max(end[0] - start[0], 1e-9)
        other_s = max((end[1] - start[1]) - (end[2] - start[2]), 0.0)
        allowed_s = (self.spare_cores + self.margin_cores) * wall + 2.0 * self.tick_s * self.logical_cpus
        return other_s / wall, other_s > allowed_s

    def measure(self, run: Callable[[], Measurement]) -> Measurement:
        """``run()`` measured, again while contended (see the class); the kept Measurement carries
        its ``other_cores``."""
        self.checked += 1
        best: Measurement | None = None
        best_other = math.inf
        for attempt in range(1 + self.retries):
            start = self.read()
            meas = run()
            end = self.read()
            if start is None or end is None:
                return meas
            other, contended = self.other_cores(start, end)
            if attempt:
                self.remeasured += 1
                self.spent_s += end[0] - start[0]
            if not contended or other < best_other:  # an uncontended try is kept whatever the others read
                best, best_other = meas, other
                best.other_cores = other
            if not contended:
                break
            if attempt == 0:
                self.contended += 1
            if attempt == self.retries or self.spent_s >= self.budget_s:
                self.still_contended += 1
                break
        assert best is not None
        return best

    def facts(self) -> dict[str, Any]:
        """What the check did, for the profile's device facts (``device.contention``)."""
        return {"margin_cores": self.margin_cores, "spare_cores": self.spare_cores, "samples_checked": self.checked,
                "contended": self.contended, "remeasured": self.remeasured, "still_contended": self.still_contended,
                "retry_s": round(self.spent_s, 2)}  # fmt: skip


def _cpu_times_s() -> list[float] | None:
    """The machine's CPU times in seconds, all CPUs together (/proc/stat's first line: user nice
    system idle iowait irq softirq steal ...); None where there is no /proc/stat."""
    text = _read("/proc/stat")
    if not text or not text.startswith("cpu "):
        return None
    tick = float(os.sysconf("SC_CLK_TCK"))
    return [float(x) / tick for x in text.splitlines()[0].split()[1:]]


def _machine_busy_s() -> float | None:
    v = _cpu_times_s()
    if v is None:
        return None
    return v[0] + v[1] + v[2] + sum(v[i] for i in (5, 6, 7) if len(v) > i)


def _steal_s() -> float | None:
    v = _cpu_times_s()
    return v[7] if v is not None and len(v) > 7 else None


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


SENTINEL_EVERY_S = 2.0
"""Wall seconds between two readings of the speed sentinel during a CPU calibration."""
SENTINEL_SHAPE = (192, 1024, 2048)
"""(rows, k, n) of the sentinel GEMM: compute-bound, weights warm, a few ms on the CI VM."""
SENTINEL_SPREAD_WARN = 0.10
"""A sentinel whose p90 / p10 - 1 over the run exceeds this prints a warning."""


SLOW_MOMENT_THRESHOLD = 0.05
"""A sample whose neighbouring sentinel readings (its dtype's GEMM) were more than this slower than
the run's median reading was measured in a slow stretch: it is measured again at the end."""
SLOW_REMEASURE_BUDGET_S = {"tiny": 1.0, "quick": 18.0, "full": 60.0}
"""Wall seconds a suite spends at its end re-measuring the samples of slow stretches (quick: the
idle quick suite takes 85-92 s, so it stays under 2 minutes)."""
SLOW_REMEASURE_TRIES = 3
"""Re-measurements of one sample at most (the budget permitting)."""
SLOW_KEPT_WARN = 0.10
"""A profile whose samples kept at a much slower moment (:data:`SLOW_WARN_SLOWDOWN`) exceed this
fraction of the re-measurable ones prints a warning that it is not trustworthy."""
SLOW_WARN_SLOWDOWN = 0.10
"""How much slower than the run's median the sentinel must have read around a kept sample for it
to count towards the warning. Larger than :data:`SLOW_MOMENT_THRESHOLD`: a slowdown is the larger
of two noisy readings, so on a steady machine (idle 1-thread run 2026-12-01 10:18 UTC, sentinel
spread 6%) a third of the samples read over 1.05 and 133 of 790 were kept there, none over 1.10;
the same day's 2-thread run whose sentinel moved 32% kept 89 of 789 over 1.10."""


@dataclass
class SpeedSentinel:
    """The machine's speed over a CPU calibration run: every :data:`SENTINEL_EVERY_S` of wall time
    (checked before each sample) the same GEMM per dtype is timed (median of 3 calls, the suite's
    clock). Each sample carries the machine state of its moment; this series says how much that
    state moved over the run, which no load counter shows when the host (not another process)
    moves it (docs/fidelity.md, "22:40-23:00 UTC": the same GEMM 0.77-1.20 of its predicted time
    within 20 s on an idle VM). Recorded as ``device.speed_sentinel`` with its time series
    (``t_s``: wall seconds since the sentinel started, ``series_s``: the readings);
    :class:`SlowStretches` re-measures the samples taken while it read slow."""

    kernels: dict[str, Callable[[], Any]]
    now: Callable[[], float]
    every_s: float = SENTINEL_EVERY_S
    wall: Callable[[], float] = time.perf_counter
    readings: dict[str, list[float]] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=dict)
    """Wall time (``wall()``) at the end of each reading, per kernel."""
    last: float = -math.inf
    start: float | None = None

    def read(self, name: str) -> float:
        """Take one reading of kernel ``name`` now (seconds, median of 3 calls) and record it."""
        fn = self.kernels[name]
        if self.start is None:
            self.start = self.wall()
        if name not in self.readings:
            fn()  # warm-up: the first call packs and allocates
        times = []
        for _ in range(3):
            t0 = self.now()
            fn()
            times.append(self.now() - t0)
        r = float(np.median(times))
        self.readings.setdefault(name, []).append(r)
        self.times.setdefault(name, []).append(self.wall())
        return r

    def tick(self) -> None:
        """Take a reading when the last one is at least ``every_s`` old."""
        if self.wall() - self.last < self.every_s:
            return
        for name in self.kernels:
            self.read(name)
        self.last = self.wall()

    def facts(self) -> dict[str, Any]:
        """Per kernel: readings, median, p10, p90 (seconds), spread = p90 / p10 - 1, and the
        series (``t_s`` since the first reading, ``series_s``)."""
        out: dict[str, Any] = {"every_s": self.every_s, "shape_mkn": list(SENTINEL_SHAPE)}
        t00 = self.start if self.start is not None else 0.0
        for name, v in self.readings.items():
            p10, p90 = float(np.percentile(v, 10)), float(np.percentile(v, 90))
            out[name] = {"readings": len(v), "median_s": float(np.median(v)), "p10_s": p10, "p90_s": p90,
                         "spread": round(p90 / p10 - 1.0, 4) if p10 > 0 else None,
                         "t_s": [round(t - t00, 2) for t in self.times.get(name, [])],
                         "series_s": [float(f"{x:.4g}") for x in v]}  # fmt: skip
        return out


@dataclass
class _Redo:
    index: int
    kernel: str
    slowdown: float
    redo: Callable[[], tuple[dict[str, Any], tuple[float, float]]]
    tries: int = 0


@dataclass
class SlowStretches:
    """Re-measures the samples a CPU calibration took while the machine ran slow.

    The sentinel (:class:`SpeedSentinel`) reads its dtype's GEMM every few seconds; a sample's
    moment is the wall-time window of its measurement, its *slowdown* the larger of the readings
    just before and just after that window over the run's median reading (the steady speed: the
    speed the machine ran at most of the run). At the end of the suite, the samples whose slowdown
    exceeds ``1 + threshold`` are measured again, slowest first, with a fresh reading of their
    sentinel right before and after (taken again when older than ``fresh_s``), while the budget
    lasts, up to :data:`SLOW_REMEASURE_TRIES` times each. The re-measurement replaces the sample
    when its moment is within the threshold, or slower than the first by less; a sample never
    measured at a steady moment is counted as kept slow (``kept_slow``; a warning when they exceed
    :data:`SLOW_KEPT_WARN` of the samples). Nothing is scaled: the GEMM sentinel only says *when*
    the machine was slow, which holds whatever moved it; how much a slow host slows another kernel
    differs by kernel (docs/fidelity.md, "cpurobust")."""

    sentinel: SpeedSentinel
    threshold: float = SLOW_MOMENT_THRESHOLD
    budget_s: float = 12.0
    wall: Callable[[], float] = time.perf_counter
    fresh_s: float = 0.5
    entries: list[tuple[int, str, tuple[float, float], Callable[[], tuple[dict[str, Any], tuple[float, float]]]]] = field(
        default_factory=list)  # fmt: skip
    reference: dict[str, float] = field(default_factory=dict)
    facts_: dict[str, Any] = field(default_factory=dict)

    def add(self, index: int, kernel: str, window: tuple[float, float],
            redo: Callable[[], tuple[dict[str, Any], tuple[float, float]]]) -> None:  # fmt: skip
        """Sample ``index`` (a row of the suite) measured over wall ``window``; its dtype's sentinel
        ``kernel``; ``redo()`` measures it again and returns (row, window)."""
        self.entries.append((index, kernel, window, redo))

    def slowdown(self, kernel: str, window: tuple[float, float]) -> float | None:
        """The sentinel's slowdown around ``window`` (None without a reading or a reference)."""
        ref = self.reference.get(kernel)
        times = self.sentinel.times.get(kernel) or []
        if not ref or not times:
            return None
        vals = self.sentinel.readings[kernel]
        i = bisect.bisect_right(times, window[0]) - 1  # the last reading before the window
        j = bisect.bisect_left(times, window[1])  # the first after it
        near = [vals[x] for x in (i, j) if 0 <= x < len(vals)]
        return max(near) / ref if near else None

    def _fresh(self, kernel: str) -> None:
        times = self.sentinel.times.get(kernel) or []
        if not times or self.wall() - times[-1] > self.fresh_s:
            self.sentinel.read(kernel)

    def run(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Re-measure the slow samples of ``rows`` in place; return what was done (the
        ``device.speed_sentinel.slow_stretches`` facts). Each row's ``slowdown`` column is set to
        the slowdown of the moment it was kept at."""
        self.reference = {k: float(np.median(v)) for k, v in self.sentinel.readings.items() if v}
        todo: list[_Redo] = []
        for index, kernel, window, redo in self.entries:
            sd = self.slowdown(kernel, window)
            if sd is None:
                continue
            rows[index]["slowdown"] = round(sd, 4)
            if sd > 1.0 + self.threshold:
                todo.append(_Redo(index, kernel, sd, redo))
        flagged = len(todo)
        t_start = self.wall()
        spent = 0.0
        remeasured = replaced = 0
        ratios: list[float] = []
        todo.sort(key=lambda r: -r.slowdown)
        while todo and spent < self.budget_s:
            left: list[_Redo] = []
            for r in todo:
                if spent >= self.budget_s:
                    left.append(r)
                    continue
                self._fresh(r.kernel)
                row, window = r.redo()
                self.sentinel.read(r.kernel)
                sd = self.slowdown(r.kernel, window)
                r.tries += 1
                remeasured += 1
                spent = self.wall() - t_start
                if sd is not None and (sd <= 1.0 + self.threshold or sd < r.slowdown):
                    row["slowdown"] = round(sd, 4)
                    old = float(rows[r.index].get("time_s") or 0.0)
                    if old > 0 and row.get("time_s"):
                        ratios.append(float(row["time_s"]) / old)
                    rows[r.index] = row
                    r.slowdown = sd
                    replaced += 1
                if r.slowdown > 1.0 + self.threshold and r.tries < SLOW_REMEASURE_TRIES:
                    left.append(r)
            todo = left
        kept_sd = [float(rows[index].get("slowdown") or 0.0) for index, _, _, _ in self.entries]
        kept = sum(1 for sd in kept_sd if sd > 1.0 + self.threshold)
        much = sum(1 for sd in kept_sd if sd > 1.0 + SLOW_WARN_SLOWDOWN)
        self.facts_ = {"threshold": self.threshold, "samples": len(self.entries), "flagged": flagged,
                       "remeasured": remeasured, "replaced": replaced, "kept_slow": kept,
                       "warn_slowdown": SLOW_WARN_SLOWDOWN, "kept_much_slower": much,
                       "budget_s": self.budget_s, "spent_s": round(spent, 2),
                       # new / first time of the replaced samples (< 1: the re-measurement ran faster)
                       "replaced_time_ratio": {"median": round(float(np.median(ratios)), 4),
                                               "p10": round(float(np.percentile(ratios, 10)), 4),
                                               "p90": round(float(np.percentile(ratios, 90)), 4)} if ratios else None,
                       "reference_s": {k: float(f"{v:.4g}") for k, v in sorted(self.reference.items())}}  # fmt: skip
        return self.facts_


def _kept_much_slower(f: dict[str, Any]) -> tuple[int, float]:
    """(samples kept at a moment more than the warning's slowdown slower, that slowdown) of
    :meth:`SlowStretches.run`'s facts; facts written before the warning had its own level count
    every kept sample at their re-measurement threshold."""
    if "kept_much_slower" in f:
        return int(f["kept_much_slower"] or 0), float(f.get("warn_slowdown", SLOW_WARN_SLOWDOWN))
    return int(f.get("kept_slow") or 0), float(f.get("threshold", SLOW_MOMENT_THRESHOLD))


def slow_stretch_report(f: dict[str, Any], out: ProgressFn) -> None:
    """The calibration's lines about the slow stretches (:meth:`SlowStretches.run`'s facts)."""
    thr = 100 * f["threshold"]
    out(f"slow stretches: {f['flagged']} of {f['samples']} samples were measured while the sentinel read more than "
        f"{thr:.0f}% slower than its run median; re-measured {f['remeasured']} time(s) in {f['spent_s']:.1f} s "
        f"(budget {f['budget_s']:.0f} s), {f['replaced']} replaced, {f['kept_slow']} kept slow"
        + (f" (replaced: new / first time median x{r['median']:.3f}, p10-p90 x{r['p10']:.3f}-x{r['p90']:.3f})"
           if (r := f.get("replaced_time_ratio")) else ""))  # fmt: skip
    much, warn = _kept_much_slower(f)
    if f["samples"] and much > SLOW_KEPT_WARN * f["samples"]:
        out(f"WARNING: this profile is not trustworthy: {much} of {f['samples']} samples "
            f"({100 * much / f['samples']:.0f}%) were measured only while the machine ran more than {100 * warn:.0f}% "
            "slower than its usual speed (see `slowdown` in samples.csv); calibrate again when the machine is steadier, "
            "or with the full suite (a larger re-measurement budget), and check it with `simkit validate`")  # fmt: skip


def speed_note(device: dict[str, Any], name: str) -> str | None:
    """A warning when CPU profile ``name`` (its ``device`` section) kept more than
    :data:`SLOW_KEPT_WARN` of its samples at slow moments of the machine; None otherwise (and for
    profiles measured before the re-measurement)."""
    s = device.get("speed_sentinel")
    f = s.get("slow_stretches") if isinstance(s, dict) else None
    if not isinstance(f, dict) or not f.get("samples"):
        return None
    n, warn = _kept_much_slower(f)
    of = int(f["samples"])
    if n <= SLOW_KEPT_WARN * of:
        return None
    return (f"WARNING: calibration profile {name!r} kept {n} of {of} samples measured while the machine ran more than "
            f"{100 * warn:.0f}% slower than its usual speed: its predictions carry that slowness; "
            "calibrate again when the machine is steadier")  # fmt: skip


class StepReadings(Protocol):
    """What a CPU calibration reads along its run besides the sentinel: the synthetic steps of
    the step composition (``simkit.calibrate.composition.StepSeries``, which the caller passes
    in: this module does not import it, the composition's model being built from it)."""

    def tick(self) -> None:
        """Take a reading when one is due (called before every sample)."""

    def top_up(self) -> None:
        """Take readings until every cell has enough (at the end of the run)."""

    def readings(self) -> dict[str, Any]:
        """The measurements as plain data."""


StepReadingsFactory = Callable[[Sequence[str], Callable[[], float]], StepReadings]
"""Builds the step readings of a run from its dtypes and its clock (``Timer.now``)."""
CompositionFn = Callable[[dict[str, Any], Any, int, str], dict[str, Any]]
"""The ``device.step_composition`` section from the readings, the fitted profile, the thread
count and the clock (``simkit.calibrate.composition.composition_section``)."""


def describe_step_composition(section: dict[str, Any]) -> str:
    """One line for the calibration's output: the factor per dtype and the cells' spread."""
    parts = ", ".join(f"{dt} x{f:.3f}" for dt, f in sorted(section["factor"].items()))
    ratios = [float(r["ratio"]) for r in section["rows"]]
    reads = min(int(r.get("readings", 0)) for r in section["rows"])
    return (f"step composition ({section['threads']} thread(s), synthetic 1-layer step of hidden {section['model']['hidden']}, "
            f"{reads}+ readings per cell): measured / predicted {parts} (cells x{min(ratios):.2f}-x{max(ratios):.2f})")  # fmt: skip


def _sentinel_kernels(torch: Any, dtypes: Sequence[str]) -> dict[str, Callable[[], Any]]:
    m, k, n = SENTINEL_SHAPE
    g = torch.Generator(device="cpu").manual_seed(4321)
    out: dict[str, Callable[[], Any]] = {}
    for dt in dtypes:
        a = torch.randn(m, k, generator=g).to(torch_dtype(dt))
        w = torch.randn(n, k, generator=g).to(torch_dtype(dt))
        out[f"{dt}_gemm"] = lambda a=a, w=w: torch.nn.functional.linear(a, w)
    return out


def _sentinel_report(sentinel: SpeedSentinel, out: ProgressFn) -> dict[str, Any]:
    f = sentinel.facts()
    parts = [f"{k.split('_')[0]} {100 * v['spread']:.1f}% over {v['readings']}" for k, v in f.items()
             if isinstance(v, dict) and v.get("spread") is not None]  # fmt: skip
    if parts:
        out(f"machine speed over the run (sentinel GEMM {'x'.join(map(str, SENTINEL_SHAPE))} every {sentinel.every_s:.0f} s, "
            f"p90/p10 - 1): {', '.join(parts)}")  # fmt: skip
    worst = max((v["spread"] for v in f.values() if isinstance(v, dict) and v.get("spread") is not None), default=0.0)
    if worst > SENTINEL_SPREAD_WARN:
        out(f"warning: the machine's speed moved by {100 * worst:.0f}% while measuring (the sentinel GEMM): the samples "
            "carry the speed of their moment; a second calibration may fit other speeds (compare both with "
            "`simkit validate --profile DIR --json FILE` each, or in a source checkout "
            "`python benchmarks/repredict_validation.py`)")  # fmt: skip
    return f


def contention_note(device: dict[str, Any], name: str) -> str | None:
    """A warning when CPU profile ``name`` (its ``device`` section) kept samples that were measured
    while other work took a core they needed (``device.contention.still_contended``): its
    predictions carry that load; None otherwise (and for profiles measured before the check)."""
    c = device.get("contention")
    if not isinstance(c, dict) or not c.get("still_contended"):
        return None
    n, of = int(c["still_contended"]), int(c.get("samples_checked") or 0)
    return (f"WARNING: calibration profile {name!r} kept {n} of {of} samples measured while other work took a core "
            "they needed: its predictions include that load (too slow for an idle machine); re-measure on an idle "
            "machine, or with `--threads 1 --clock cpu`")


def _contention_report(check: ContentionCheck, out: ProgressFn) -> dict[str, Any]:
    """The per-sample contention check's counts as device facts; a line on ``out`` when any
    sample was contended."""
    f = check.facts()
    if check.contended:
        out(f"contention: {check.contended} of {check.checked} samples were measured while other work took more than the "
            f"{check.spare_cores} spare core(s) + {check.margin_cores}; re-measured {check.remeasured} time(s) "
            f"({check.spent_s:.1f} s), {check.still_contended} kept contended")  # fmt: skip
    if check.still_contended:
        out(f"warning: {check.still_contended} sample(s) stayed contended (see `other_cores` in samples.csv): "
            "calibrate on an idle machine, or with --threads 1 --clock cpu")
    return f


def set_threads(threads: int | None) -> int:
    torch = require_torch()
    if threads is not None:
        if threads < 1:
            raise CalibrationError(f"--threads must be >= 1 (got {threads})")
        torch.set_num_threads(int(threads))
    return int(torch.get_num_threads())


def measure_suite(
    device: str = "cpu",
    *,
    quick: bool = False,
    tiny: bool = False,
    ssd_dir: str | os.PathLike[str] | None = None,
    dtypes: Sequence[str] | None = None,
    threads: int | None = None,
    progress: ProgressFn | None = None,
    catalog: str | None = None,
    clock: str = "wall",
    seed: int = 0,
    steps: StepReadingsFactory | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Run the benchmarks; return (samples DataFrame, device facts). Nothing is fitted here.
    ``steps`` (CPU, not ``--tiny``): the step composition's readings, taken along the run and
    returned as ``facts["step_composition_readings"]``.

    ``clock="cpu"`` times the calling thread's CPU time instead of wall time: on a machine that
    other processes share it excludes the time they take the CPU away; it needs ``threads=1``."""
    import pandas as pd

    torch = require_torch()
    if device not in ("cpu", "cuda"):
        raise CalibrationError(f"unknown device {device!r} (expected cpu or cuda)")
    if device == "cuda" and not torch.cuda.is_available():
        raise CalibrationError("--device cuda but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    out = progress or _stderr
    size = SIZES["tiny" if tiny else "quick" if quick else "full"]
    nthreads = set_threads(threads)
    check_clock(clock, device, nthreads)
    facts = device_facts(device, nthreads)
    facts["clock"] = clock
    facts["allocator"] = tune_allocator()
    if catalog:
        facts["catalog"] = catalog
    support = facts["dtype_support"]
    if dtypes is None:
        order = ("fp32", "bf16") if device == "cpu" else ("fp16", "bf16", "tf32", "fp32", "fp8")
        dts = [d for d in order if support.get(d)]
    else:
        dts = list(dtypes)
        bad = [d for d in dts if not support.get(d)]
        if bad:
            raise CalibrationError(
                f"dtype(s) {', '.join(bad)} not supported (fast) on this {device}: supported "
                f"{', '.join(d for d, ok in support.items() if ok)}"
            )
    facts["dtypes"] = dts
    source = f"simkit calibrate --device {device}{' --quick' if quick else ''}{' --tiny' if tiny else ''}"
    timer = Timer(device, min_rep_s=size.min_rep_s, budget_s=size.budget_s, min_reps=size.min_reps,
                  max_reps=size.max_reps, clock=clock)
    bench = Bench(torch, device, size, timer, source, random.Random(seed))
    bench.cold_bytes = 2.0 * float(facts.get("llc_bytes") or 32e6)
    if device == "cpu" and clock == "wall":
        bench.contention = ContentionCheck(int(facts.get("logical_cpus") or os.cpu_count() or 1), nthreads,
                                           CONTENTION_RETRY_BUDGET_S[size.name])  # fmt: skip
    if device == "cpu":
        bench.sentinel = SpeedSentinel(_sentinel_kernels(torch, dts), timer.now)
        bench.slow = SlowStretches(bench.sentinel, budget_s=SLOW_REMEASURE_BUDGET_S[size.name])
    if device == "cpu" and not tiny and steps is not None:
        bench.steps = steps(dts, timer.now)
    torch.manual_seed(seed)

    groups: list[tuple[str, float, Callable[[], int]]] = []
    # planned seconds per group (quick suite on a 2-core VM; the others scaled): only for the ETA
    scale = {"tiny": 0.15, "quick": 1.0, "full": 7.0}[size.name]
    groups.append(("mem_bw", 0.8 * scale, bench.mem_bw_bench))
    groups.append(("copy", 0.4 * scale, bench.copy_bench))
    for dt in dts:
        groups.append((f"launch {dt}", 0.2 * scale, lambda dt=dt: bench.launch(dt)))
    for dt in dts:
        groups.append((f"gemm {dt}", 18.0 * scale, lambda dt=dt: bench.gemm(dt)))
        if dt not in ("fp8", "tf32"):
            groups.append((f"attn_prefill {dt}", 2.5 * scale, lambda dt=dt: bench.attention(dt, "attn_prefill")))
            groups.append((f"attn_decode {dt}", 5.0 * scale, lambda dt=dt: bench.attention(dt, "attn_decode")))
            groups.append((f"elementwise {dt}", 2.5 * scale, lambda dt=dt: bench.elementwise(dt)))
    if ssd_dir is not None:
        from simkit.calibrate.ssd import ssd_bench

        def run_ssd() -> int:
            rows, ssd_facts = ssd_bench(
                ssd_dir, file_mb=size.ssd_file_mb, block_sizes=size.ssd_blocks, queue_depths=size.ssd_depths,
                budget_s=size.budget_s, min_reps=min(size.min_reps, 3), source=source,
            )
            bench.rows.extend(rows)
            facts["ssd"] = ssd_facts
            return len(rows)

        groups.append(("ssd", 3.5 * scale, run_ssd))
    prog = Progress(len(groups), [g[1] for g in groups], out)
    load = LoadMonitor()
    probe0 = drift_probe(device, clock)
    out(f"simkit calibrate: {size.name} suite on {facts.get('name')} ({device}, {nthreads} threads, dtypes {', '.join(dts)}), "
        f"{len(groups)} groups, planned ~{sum(g[1] for g in groups):.0f} s")
    bench.start = prog.start
    for name, _, fn in groups:
        t0 = time.perf_counter()
        count = fn()
        bench.pools.clear()
        prog.group_done(name, count, time.perf_counter() - t0)
    slow_facts = None
    if bench.slow is not None:
        slow_facts = bench.slow.run(bench.rows)
        bench.pools.clear()
        slow_stretch_report(slow_facts, out)
    df = pd.DataFrame(bench.rows, columns=[*SAMPLE_COLUMNS, *OPTIONAL_COLUMNS])
    facts.update(roofline_facts(df, dts))
    if device == "cpu" and nthreads > 1:
        t0 = time.perf_counter()
        facts["thread_wakeup"] = measure_thread_wakeup(nthreads, seed=seed)
        wk = facts["thread_wakeup"]
        out(f"thread wake-up ({nthreads} threads, OMP_WAIT_POLICY {wk['openmp_env']['OMP_WAIT_POLICY']}): "
            f"{1e6 * wk['excess_s'][-1]:.1f} us after a {1e3 * WAKE_GAPS_S[-1]:.1f} ms serial gap "
            f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip
        if wk["region_s"] > 2.0 * wk["median_after_gap_1_thread_s"][0]:
            out(f"warning: a small parallel region took {1e6 * wk['region_s']:.0f} us at {nthreads} threads against "
                f"{1e6 * wk['median_after_gap_1_thread_s'][0]:.0f} us at one: the worker threads were waiting for a "
                "core (other load), so the thread wake-up (and every sample at this thread count) measured that load")  # fmt: skip
    if bench.contention is not None:
        facts["contention"] = _contention_report(bench.contention, out)
    if bench.sentinel is not None:
        facts["speed_sentinel"] = _sentinel_report(bench.sentinel, out)
        if slow_facts is not None:
            facts["speed_sentinel"]["slow_stretches"] = slow_facts
    if bench.steps is not None:
        bench.steps.top_up()
        # plain readings: run_suite turns them into device.step_composition after the fit
        facts["step_composition_readings"] = bench.steps.readings()
    if device == "cpu":
        from simkit.calibrate.host_memory import describe_first_touch, measure_first_touch

        t0 = time.perf_counter()
        try:
            facts["host_first_touch"] = measure_first_touch(
                torch, size.name, nthreads, facts["allocator"], time.thread_time if clock == "cpu" else time.perf_counter
            )
            out(f"{describe_first_touch(facts['host_first_touch'])} ({time.perf_counter() - t0:.1f} s)")
        except CalibrationError as e:
            out(f"warning: host first-touch rate not recorded: {e}")
    if device == "cuda":
        from simkit.calibrate.host_gap import measure_host_gap

        t0 = time.perf_counter()
        facts["host_gap"] = measure_host_gap(torch, "cuda", seed=seed)
        gaps = ", ".join(f"{1e6 * r['gap_s']:.0f} us at batch {r['batch']}" for r in facts["host_gap"])
        out(f"host gap per iteration of a synchronous decode loop: {gaps} ({time.perf_counter() - t0:.1f} s)")
    probe1 = drift_probe(device, clock)
    facts["speed_probe_s"] = float(0.5 * (probe0 + probe1))
    facts["speed_probe_start_end_s"] = [float(probe0), float(probe1)]
    other = load.other_cores()
    steal = load.steal_cores()
    if steal is not None:
        facts["steal_cores"] = round(steal, 3)
    if other is not None:
        facts["other_load_cores"] = round(other, 2)
        if other > 0.25:
            if clock == "wall":
                out(f"warning: other processes kept {other:.1f} CPU cores busy while measuring; "
                    "wall-clock samples are inflated (consider --threads 1 --clock cpu)")
            else:  # the thread's CPU clock leaves out the others' time, not their use of caches and memory
                out(f"note: other processes kept {other:.1f} CPU cores busy while measuring; the samples are on this "
                    "thread's CPU clock, which leaves out their time but not their share of caches and memory bandwidth")
    facts["suite"] = size.name
    if device == "cpu":
        facts["gemm_timing"] = GEMM_TIMING
    facts["wall_s"] = round(time.perf_counter() - prog.start, 1)
    return df, plain(facts)


def plain(x: Any) -> Any:
    """Plain Python types (YAML-safe): str subclasses such as torch's version to str, numpy
    scalars to int/float/bool, tuples to lists."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set):
        return [plain(v) for v in x]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x)
    if isinstance(x, str):
        return str(x)
    return x if x is None else str(x)


def roofline_facts(df: Any, dtypes: Sequence[str]) -> dict[str, Any]:
    """The peaks a roofline over this profile uses: upper bounds of what was measured, so that
    every fitted efficiency is <= 1 (a CPU's caches let small operators beat DRAM bandwidth).

    ``peak_flops[dtype]``: the best FLOP/s of any operator in that dtype (a GEMM);
    ``mem_bandwidth``: the best bytes/s of any operator or stream benchmark (cache-resident
    included); ``dram_bandwidth``: the stream copy bandwidth of the largest buffer measured."""
    out: dict[str, Any] = {}
    comp = df[df.op_class.isin(["gemm", "attn_prefill", "attn_decode", "elementwise"])]
    peak: dict[str, float] = {}
    for dt in dtypes:
        g = comp[(comp.dtype == dt) & (comp.flops > 0)]
        if len(g):
            peak[dt] = float((g.flops / g.time_s).max())
    out["peak_flops"] = peak
    mem = df[df.op_class.isin(["gemm", "attn_prefill", "attn_decode", "elementwise", "mem_bw"])]
    mem = mem[mem.bytes_moved > 0]
    if len(mem):
        out["mem_bandwidth"] = float((mem.bytes_moved / mem.time_s).max())
    bw = df[(df.op_class == "mem_bw") & (df.op == "stream_copy")]
    if len(bw):
        big = bw[bw.bytes == bw.bytes.max()]
        out["dram_bandwidth"] = float((big.bytes_moved / big.time_s).median())
    return out


def run_suite(
    device: str = "cpu",
    quick: bool = False,
    out_dir: str | os.PathLike[str] | None = None,
    ssd_dir: str | os.PathLike[str] | None = None,
    dtypes: Sequence[str] | None = None,
    threads: int | None = None,
    progress: ProgressFn | None = None,
    *,
    tiny: bool = False,
    catalog: str | None = None,
    name: str | None = None,
    license: str = DEFAULT_PROFILE_LICENSE,
    clock: str = "wall",
    steps: StepReadingsFactory | None = None,
    composition: CompositionFn | None = None,
) -> Any:
    """Measure, fit every op class (``simkit.calibrate.fit.fit_profile``) and, with ``out_dir``,
    save ``profile.yaml`` + ``samples.csv`` there. Returns the Profile. With ``steps`` and
    ``composition`` (CPU, not ``--tiny``; ``simkit calibrate`` passes
    ``simkit.calibrate.composition``'s) the profile records ``device.step_composition``."""
    samples, facts = measure_suite(
        device, quick=quick, tiny=tiny, ssd_dir=ssd_dir, dtypes=dtypes, threads=threads,
        progress=progress, catalog=catalog, clock=clock, steps=steps if composition is not None else None,
    )
    from simkit.calibrate.fit import fit_profile

    out = progress or _stderr
    prof_name = name or (Path(out_dir).name if out_dir is not None else f"local-{device}")
    t0 = time.perf_counter()
    flags = "".join(
        f" {flag}" for flag, on in (("--quick", quick), ("--tiny", tiny), (f"--threads {facts['threads']}", threads is not None),
                                    (f"--clock {clock}", clock != "wall"), ("--ssd-dir DIR", ssd_dir is not None)) if on
    )
    source = (
        f"measured with `simkit calibrate --device {device}{flags}` on {facts.get('name')} "
        f"({facts['threads']} torch thread(s), {clock} clock, torch {facts['torch_version']}), {time.strftime('%Y-%m-%d')}"
    )
    readings = facts.pop("step_composition_readings", None)
    profile = fit_profile(samples, facts, name=prof_name, source=source, license=license)
    if facts.get("host_gap"):
        from simkit.calibrate.host_gap import fit_host_overhead, measured_source

        rows = facts["host_gap"]
        profile.host = fit_host_overhead(rows, measured_source(str(facts.get("name")), str(facts.get("torch_version")), rows))
    out(f"fitted profile {prof_name!r} in {time.perf_counter() - t0:.1f} s")
    if readings is not None and composition is not None:
        from simkit.cost.threads import COMPOSITION_BOUNDS

        comp = composition(readings, profile, int(facts["threads"]), clock)
        out(describe_step_composition(comp))
        lo, hi = COMPOSITION_BOUNDS
        off = {dt: f for dt, f in comp["factor"].items() if not lo <= f <= hi}
        if off:
            out(f"warning: step composition not recorded: the synthetic step took {', '.join(f'{dt} x{f:.2f}' for dt, f in off.items())} "
                f"its predicted time (outside x{lo}-x{hi}: the machine changed, not the composition); predictions price "
                "the operators as timed alone")  # fmt: skip
        else:
            profile.device["step_composition"] = comp
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        from simkit.calibrate.store import save_profile

        save_profile(profile, out_dir)
        out(f"wrote {Path(out_dir) / 'profile.yaml'} and {Path(out_dir) / 'samples.csv'}")
    return profile
