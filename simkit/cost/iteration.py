"""One forward pass of a batch on a plan -> seconds. Vectorised over token counts and cached.

The engine never builds operator lists in its loop: it asks an :class:`IterationModel` for
``step_time(q, ctx)`` (one mixed iteration) or ``decode_steps(B, kv0, k)`` (the times of ``k``
consecutive decode iterations of an unchanged batch, in one numpy call). Token-dependent
operators are tabulated once per token count and reused.

Time of an iteration = sum over operators of count x (ideal / efficiency + launch overhead)
+ tensor-parallel collectives (two all-reduces of the activations per layer) + the host
overhead of the iteration, ``iteration_overhead + per_seq_overhead x sequences in the batch``
(scheduling, sampling, detokenisation and Python work of a real engine that a roofline of the
device alone misses; :meth:`IterationModel.host_time` is the one place it is computed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from simkit.cost.device import ComputeDevice
from simkit.cost.efficiency import EfficiencyModel
from simkit.cost.ops import OP_NAMES, Op, Precision, forward_ops, prefill_attention_sums, token_ops
from simkit.cost.tables import SparseRows, Tables, op_tables
from simkit.cost.threads import runs_parallel, wakeup_extra
from simkit.specs.model import ModelSpec

if TYPE_CHECKING:
    from simkit.cost.roofline import OpTime

NON_LAYER_OPS = ("embedding", "final_norm", "lm_head", "sampling")


def _op_time_arrays(op: Op, device: ComputeDevice, eff: EfficiencyModel, dtype: str) -> np.ndarray:
    """Seconds per occurrence of one operator whose numbers may be arrays (broadcast together)."""
    flops = np.asarray(op.flops, dtype=np.float64)
    byts = np.asarray(op.weight_bytes + op.act_bytes + op.kv_bytes, dtype=np.float64)
    return _class_time(op.op_class, op.kernel_name, flops, byts, dict(op.shape), device, eff, dtype)


def _class_time(
    op_class: str,
    name: str,
    flops: np.ndarray,
    byts: np.ndarray,
    shape: dict,
    device: ComputeDevice,
    eff: EfficiencyModel,
    dtype: str,
    peaks: tuple[float, float] | None = None,
    positive: bool = False,
) -> np.ndarray:
    """Seconds per occurrence. ``peaks`` (peak FLOP/s, bandwidth) saves looking them up;
    ``positive`` promises every operator does some work (no zero-size masking needed)."""
    pf, bw = peaks if peaks is not None else (device.peak_flops(dtype), device.mem_bandwidth)
    # efficiency models with a closed form (datasheet defaults) skip the efficiency detour
    t = eff.roofline_time(op_class, flops, byts, pf, bw)
    if t is not None:
        if positive:
            return t
        return np.where(flops + byts > 0, t, 0.0) if np.ndim(t) else (t if flops + byts > 0 else np.float64(0.0))
    shape["op"] = np.full(np.shape(flops), name, dtype=object) if np.ndim(flops) else np.asarray(name, dtype=object)
    if flops.ndim == 0 and byts.ndim == 0:
        f, b = float(flops), float(byts)
        if f + b <= 0:
            return np.float64(0.0)
        e = float(np.asarray(eff.efficiency(op_class, flops, byts, shape, pf, bw, dtype)).reshape(-1)[0])
        e = min(max(e, 1e-4), 1.0)
        return np.float64(max(f / pf, b / bw) / e + eff.launch_overhead(op_class))
    ideal = np.maximum(flops / pf, byts / bw)
    e = np.minimum(np.maximum(eff.efficiency(op_class, flops, byts, shape, pf, bw, dtype), 1e-4), 1.0)
    t = ideal / e + eff.launch_overhead(op_class)
    if t.ndim == 0:
        return t if flops + byts > 0 else np.float64(0.0)
    return np.where(flops + byts > 0, t, 0.0)


DENSE_TOKENS = 8192
"""The tables hold every token count up to the largest asked so far (growing by half again)
while that stays below this, or below what :meth:`IterationModel.reserve` asked for; a count
beyond (a static batch's whole-batch prefill: tens of thousands of tokens) is evaluated alone
and remembered (:class:`simkit.cost.tables.SparseRows`), to the same float a dense row has."""


def _ops_time_arrays(ops: list[Op], cost: IterationModel, n: int) -> list[np.ndarray]:
    """:func:`_op_time_arrays` of each of ``ops`` (their numbers arrays of ``n`` token counts).
    For a few token counts (rows beyond the dense tables) the operators of one fitted class are
    evaluated in one call of the efficiency model (a call's fixed cost, not its rows, dominates
    there); each operator's efficiency is its own (:meth:`EfficiencyModel.efficiency`), and the
    rest is :func:`_class_time`'s array arithmetic on the operator's rows, so every float is the
    one the operator alone gives."""
    eff, dev, dtype = cost.efficiency, cost.device, cost.dtype
    out: list[np.ndarray | None] = [None] * len(ops)
    if n < 64:
        pf, bw = dev.peak_flops(dtype), dev.mem_bandwidth
        by_class: dict[str, list[int]] = {}
        for i, op in enumerate(ops):
            if np.ndim(op.flops) and eff.roofline_time(op.op_class, np.zeros(1), np.ones(1), pf, bw) is None:
                by_class.setdefault(op.op_class, []).append(i)
        for op_class, idx in by_class.items():
            if len(idx) < 2:
                continue
            F = [np.broadcast_to(np.asarray(ops[i].flops, dtype=np.float64), (n,)) for i in idx]
            B = [np.broadcast_to(np.asarray(ops[i].weight_bytes + ops[i].act_bytes + ops[i].kv_bytes, dtype=np.float64), (n,))
                 for i in idx]  # fmt: skip
            keys = sorted({k for i in idx for k in ops[i].shape})
            # a key an operator lacks reads as absent (the profile's features treat NaN so)
            shape: dict[str, np.ndarray] = {
                k: np.concatenate([np.broadcast_to(np.asarray(ops[i].shape.get(k, np.nan), dtype=np.float64), (n,)) for i in idx])
                for k in keys
            }
            shape["op"] = np.repeat(np.array([ops[i].kernel_name for i in idx], dtype=object), n)
            e_all = eff.efficiency(op_class, np.concatenate(F), np.concatenate(B), shape, pf, bw, dtype)
            for j, i in enumerate(idx):
                flops, byts = F[j], B[j]
                ideal = np.maximum(flops / pf, byts / bw)
                e = np.minimum(np.maximum(e_all[j * n:(j + 1) * n], 1e-4), 1.0)
                t = ideal / e + eff.launch_overhead(op_class)
                out[i] = np.where(flops + byts > 0, t, 0.0)
    return [t if t is not None else _op_time_arrays(op, dev, eff, dtype) for op, t in zip(ops, out)]


def compute_op_tables(cost: IterationModel, size: int) -> Tables:
    """(per-layer, non-layer, head) seconds of the token-dependent operators for 0..size-1 tokens,
    collectives excluded (they are added by the caller)."""
    return op_tables_at(cost, np.arange(size, dtype=np.float64))


def op_tables_at(cost: IterationModel, T: np.ndarray) -> Tables:
    """:func:`compute_op_tables`'s rows at the token counts ``T`` (float64). Every operation is
    elementwise over the token counts, so a row is the same float whichever counts are
    evaluated with it (tests/test_cold_tables.py checks it bit for bit)."""
    ops = token_ops(cost.model, T, T, cost.tp, cost.precision, cost.ep, cost.ep_share)
    L = cost.model.num_layers
    size = len(T)
    per_layer = np.zeros(size)
    nonlayer = np.zeros(size)
    head = np.zeros(size)
    times = _ops_time_arrays(ops, cost, size)
    for op, t1 in zip(ops, times):
        t = t1 * op.count
        if op.name in ("lm_head", "sampling"):
            head += t
        elif op.name in NON_LAYER_OPS:
            nonlayer += t
        else:
            per_layer += t / L
    wake = cost.efficiency.thread_wakeup()
    if wake is not None:
        # the OpenMP wake-up before each parallel region (simkit.cost.threads), walked in
        # forward_ops' order with the attention (a parallel region, priced elsewhere) after RoPE;
        # the LM head's gap is priced with as many rows as tokens (a decode step's)
        order = {n: i for i, n in enumerate(OP_NAMES)}
        seq = sorted(range(len(ops)), key=lambda i: order[ops[i].name])
        at = next((j for j, i in enumerate(seq) if order[ops[i].name] > order["attn_decode"]), len(seq))
        par = [runs_parallel(ops[i].op_class, ops[i].shape) for i in seq]
        tim: list[Any] = [times[i] for i in seq]
        cnt = [ops[i].count for i in seq]
        par.insert(at, np.asarray(True))
        tim.insert(at, 0.0)
        cnt.insert(at, L)
        extra = wakeup_extra(par, tim, wake, cnt)
        per_layer += extra.pop(at)
        for i, x in zip(seq, extra):
            op = ops[i]
            if op.name in ("lm_head", "sampling"):
                head += x * op.count
            elif op.name in NON_LAYER_OPS:
                nonlayer += x * op.count
            else:
                per_layer += x * op.count / L
    return per_layer, nonlayer, head


@dataclass
class IterationModel:
    """Times forward passes of ``model`` on one GPU (or CPU) of a TP group, for a stage of
    ``num_layers`` layers (pipeline parallelism), with the embedding on the first stage and the
    LM head on the last."""

    model: ModelSpec
    device: ComputeDevice
    efficiency: EfficiencyModel
    precision: Precision
    tp: int = 1
    num_layers: int | None = None
    first_stage: bool = True
    last_stage: bool = True
    allreduce_time: Callable[[np.ndarray], np.ndarray] | None = None
    """Seconds of one all-reduce of the given bytes over the TP group (None when tp == 1)."""
    iteration_overhead: float = 0.0
    """Host seconds per iteration (the fixed part of the host overhead)."""
    per_seq_overhead: float = 0.0
    """Host seconds per sequence in the iteration's batch (the part that grows with the batch)."""
    ep: int = 1
    ep_share: float | None = None
    """Share of routed tokens the most loaded expert group receives (default 1/ep)."""
    alltoall_time: Callable[[np.ndarray], np.ndarray] | None = None
    """Seconds of one all-to-all of the given bytes per GPU over the EP group (None when ep == 1)."""

    def __post_init__(self) -> None:
        self.dtype = self.precision.compute
        self.layers = self.model.num_layers if self.num_layers is None else self.num_layers
        self._body = np.zeros(1)  # body[T]: seconds of token ops for T tokens, excluding head
        self._head = np.zeros(1)  # head[R]: seconds of lm_head + sampling for R rows
        self._layer = np.zeros(1)  # layer[T]: per-layer seconds (for layer-by-layer execution)
        self._comm = np.zeros(1)  # comm[T]: seconds of collectives in one pass of the stage
        self._raw: Tables = (np.zeros(0), np.zeros(0), np.zeros(0))  # op tables behind them (rows 0..)
        self._far: dict[int, tuple[np.float64, np.float64, np.float64, np.float64]] = {}
        """(body, head, layer, comm) of token counts beyond the dense tables (see DENSE_TOKENS)."""
        self._sparse: SparseRows | None = None
        self._peaks = (self.device.peak_flops(self.dtype), self.device.mem_bandwidth)
        self._dec1: dict[int, tuple] = {}  # batch -> constants of _decode_attention1
        self._fixed1: dict[int, float] = {}  # batch -> fixed_step_time
        self.scalar_tables: tuple[list[float], list[float]] = ([], [])
        """The body and head tables as lists (``body[T]``, ``head[R]``: what :meth:`mixed_step_time`
        reads for T tokens and R logits rows), for a caller that inlines it (engine/lean.py);
        every growth of the tables replaces them (read them again after any call that may grow).
        They hold the dense tables only: a count at or beyond their length (past DENSE_TOKENS)
        is priced by :meth:`body_time` / :meth:`head_time`."""
        self._pre_roof: tuple[float, ...] | None = None  # prefill_constants (() if none)

    # ---- tables ------------------------------------------------------------------------------
    def reserve(self, n: int) -> None:
        """Tabulate token counts up to ``n`` now (one evaluation instead of several growths)."""
        self._grow(n, exact=True)

    def _grow(self, n: int, exact: bool = False) -> None:
        """Tabulate every token count up to ``n`` (``exact``: up to ``n`` only; else with room,
        up to DENSE_TOKENS), evaluating only the rows not tabulated yet."""
        if n < len(self._body):
            return
        size = n + 1 if exact else max(n + 1, min(max(64, int((n + 1) * 1.5), len(self._body) * 2), DENSE_TOKENS))
        have = self._raw
        old = len(have[0])

        def extend(cost: IterationModel, size: int) -> Tables:
            new = op_tables_at(cost, np.arange(old, size, dtype=np.float64))
            return tuple(np.concatenate([h, x]) for h, x in zip(have, new)) if old else new  # type: ignore[return-value]

        self._raw = op_tables(self, size, extend)
        self._body, self._head, self._layer, self._comm = self._finish(np.arange(size, dtype=np.float64), *self._raw)
        self._dec1 = {}  # these read the tables
        self._fixed1 = {}
        self.scalar_tables = (self._body.tolist(), self._head.tolist())

    def _finish(
        self, T: np.ndarray, per_layer: np.ndarray, nonlayer: np.ndarray, head: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(body, head, per-layer, collectives) seconds at token counts ``T`` from the operator
        tables' rows there: the one place both the dense tables and the rows beyond them are
        finished, so a row is the same float either way."""
        L = self.model.num_layers
        comm = np.zeros(len(T))
        if self.allreduce_time is not None and self.tp > 1:
            act = T * self.model.hidden_size * self.precision.a_bytes
            comm += 2.0 * np.where(T > 0, self.allreduce_time(act), 0.0)
        if self.alltoall_time is not None and self.ep > 1 and self.model.moe is not None:
            # dispatch and combine: each GPU exchanges its share of the routed tokens' activations
            m = self.model.moe
            a2a = T * m.top_k * self.model.hidden_size * self.precision.a_bytes / self.ep
            comm += 2.0 * np.where(T > 0, self.alltoall_time(a2a), 0.0) * self.model.num_moe_layers / L
        per_layer = per_layer + comm
        empty = T == 0
        if empty.any():
            comm[empty] = per_layer[empty] = 0.0
            nonlayer = np.where(empty, 0.0, nonlayer)
            head = np.where(empty, 0.0, head)
        # the embedding (and the tiny final norm) are charged to the first stage
        body = per_layer * self.layers + (nonlayer if self.first_stage else 0.0)
        return body, (head if self.last_stage else np.zeros(len(T))), per_layer, comm * self.layers

    def _dense(self, n: int) -> bool:
        """Whether token count ``n`` is in the dense tables (grown to it when it is within
        DENSE_TOKENS); else it is looked up with :meth:`_far_rows`."""
        if n < len(self._body):
            return True
        if n < DENSE_TOKENS:
            self._grow(n)
            return True
        return False

    def _far_rows(self, tokens: list[int]) -> None:
        """Evaluate the token counts ``tokens`` (beyond the dense tables) not evaluated yet, in
        one block, into ``_far``."""
        missing = sorted({t for t in tokens if t not in self._far})
        if not missing:
            return
        if self._sparse is None:
            self._sparse = SparseRows(self)
        T = np.array(missing, dtype=np.float64)
        cols = self._finish(T, *self._sparse.rows(missing, op_tables_at))
        for i, t in enumerate(missing):
            self._far[t] = (cols[0][i], cols[1][i], cols[2][i], cols[3][i])

    def _far_row(self, k: int) -> tuple[np.float64, np.float64, np.float64, np.float64]:
        """(body, head, per-layer, collectives) at token count ``k`` beyond the dense tables."""
        row = self._far.get(k)
        if row is None:
            self._far_rows([k])
            row = self._far[k]
        return row

    def _lookup(self, col: int, idx: np.ndarray) -> np.ndarray:
        """Column ``col`` (0 body, 1 head, 2 per-layer, 3 collectives) at the token counts
        ``idx`` (an int64 array, any shape), dense or beyond."""
        top = int(idx.max()) if idx.size else 0
        if self._dense(top):
            return (self._body, self._head, self._layer, self._comm)[col][idx]
        if idx.ndim == 0:
            return self._far_row(int(idx))[col]
        far = idx >= len(self._body)
        self._far_rows(idx[far].tolist())
        out = np.empty(idx.shape)
        out[~far] = (self._body, self._head, self._layer, self._comm)[col][idx[~far]]
        out[far] = [self._far[k][col] for k in idx[far].tolist()]
        return out

    def _body_head(self, k: int) -> tuple[np.float64, np.float64]:
        """(body, head) seconds at token count (and logits rows) ``k``."""
        if k < len(self._body) or self._dense(k):
            return self._body[k], self._head[k]
        row = self._far_row(k)
        return row[0], row[1]

    def body_time(self, tokens: np.ndarray | int) -> np.ndarray:
        if type(tokens) is int and 0 <= tokens < len(self._body):
            return self._body[tokens]  # the usual scalar case, without the array detour
        return self._lookup(0, np.asarray(tokens, dtype=np.int64))

    def comm_time(self, tokens: int) -> float:
        """Seconds of collectives (TP all-reduces, EP all-to-alls) in one pass of ``tokens``."""
        if tokens < len(self._comm) or self._dense(tokens):
            return float(self._comm[tokens])
        return float(self._far_row(tokens)[3])

    def head_time(self, rows: np.ndarray | int) -> np.ndarray:
        if type(rows) is int and 0 <= rows < len(self._head):
            return self._head[rows]
        return self._lookup(1, np.asarray(rows, dtype=np.int64))

    def layer_time(self, tokens: int) -> float:
        if tokens < len(self._layer) or self._dense(tokens):
            return float(self._layer[tokens])
        return float(self._far_row(tokens)[2])

    # ---- attention ---------------------------------------------------------------------------
    def _attn_consts(self) -> tuple[float, float, float, float, float]:
        c = self.__dict__.get("_consts")
        if c is None:
            m = self.model
            heads = m.num_heads / self.tp
            kvh = m.kv_heads_per_gpu(self.tp)
            c = (heads, kvh, float(m.d_head), self.precision.a_bytes, self.precision.kv_bytes)
            self.__dict__["_consts"] = c
        return c

    def straggler_tokens(self, batch: int, longest: np.ndarray | float) -> np.ndarray | float:
        """The attended tokens that ``batch`` sequences would have to sum to for the longest of
        them (``longest`` attended tokens) to cost what it does on its own.

        Decode attention kernels (FlashAttention-2's split-KV decode, vLLM's paged attention)
        give each (sequence, KV head) one thread block when the batch has enough of them to fill
        the GPU (``batch x kv heads >= 0.8 x SMs``: FlashAttention's split heuristic then keeps
        one split): blocks run at a fair share of the bandwidth, 1/SMs, so the iteration cannot
        end before the longest sequence's block has read its whole context, however short the
        others are. That takes as long as reading ``longest x SMs / kv heads`` tokens with the
        whole GPU. Smaller batches split every sequence's context over many blocks and balance
        (0 here: the sum governs). 0 on devices without a known SM count (CPUs)."""
        sms = self.device.sm_count
        if sms <= 0:
            return 0.0
        kvh = self._attn_consts()[1]
        if batch * kvh < 0.8 * sms:
            return 0.0
        return np.asarray(longest, dtype=np.float64) * (sms / kvh)

    def decode_attention(self, batch: int, kv_tokens: np.ndarray | float, longest: np.ndarray | float | None = None) -> np.ndarray:
        """Seconds of decode attention over all layers of the stage, for ``batch`` sequences whose
        attended tokens sum to ``kv_tokens`` (an array: one entry per iteration), the longest
        attending ``longest`` tokens (then costed as the straggler it is, if it is one: see
        :meth:`straggler_tokens`; None: sequences of equal length)."""
        kv = np.asarray(kv_tokens, dtype=np.float64)
        if longest is not None:
            kv = np.maximum(kv, self.straggler_tokens(batch, longest))
        heads, kvh, d, ab, kb = self._attn_consts()
        flops = 4.0 * heads * d * kv
        byts = 2.0 * batch * heads * d * ab + 2.0 * kv * kvh * d * kb + 2.0 * batch * kvh * d * kb
        shape = {"tokens": float(batch), "ctx": kv, "batch": float(batch), "heads": heads, "kv_heads": kvh, "head_dim": d}
        t = _class_time(
            "attn_decode", "attn_decode", flops, byts, shape, self.device, self.efficiency, self.dtype, self._peaks, True
        )
        return t * self.layers

    def decode_context(self, ctx: np.ndarray) -> tuple[float, float]:
        """(sum, max) over decoding sequences of the tokens each attends: its cached context plus
        itself, at most the model's sliding window."""
        a = np.asarray(ctx, dtype=np.float64) + 1.0
        w = self.model.sliding_window
        if w is not None:
            a = np.minimum(a, float(w))
        return float(a.sum()), float(a.max())

    def prefill_attention(self, q: np.ndarray, ctx: np.ndarray) -> float:
        """Seconds of prefill attention (one varlen kernel per layer) over all layers of the stage."""
        heads, kvh, d, ab, kb = self._attn_consts()
        qf = q.astype(np.float64)
        tokens = float(qf.sum())
        pairs, kv_tokens = prefill_attention_sums(qf, np.asarray(ctx, dtype=np.float64), self.model.sliding_window)
        flops = np.asarray(4.0 * heads * d * pairs)
        byts = np.asarray(2.0 * tokens * heads * d * ab + 2.0 * kv_tokens * kvh * d * kb + 2.0 * tokens * kvh * d * kb)
        shape = {"tokens": tokens, "ctx": kv_tokens, "batch": float(len(q)), "heads": heads, "kv_heads": kvh, "head_dim": d, "pairs": pairs}
        t = _class_time(
            "attn_prefill", "attn_prefill", flops, byts, shape, self.device, self.efficiency, self.dtype, self._peaks, True
        )
        return float(t) * self.layers

    def attention_time(self, q: np.ndarray, ctx: np.ndarray) -> float:
        q = np.asarray(q, dtype=np.int64)
        ctx = np.asarray(ctx, dtype=np.int64)
        is_dec = (q == 1) & (ctx > 0)
        total = 0.0
        nd = int(is_dec.sum())
        if nd:
            kv, longest = self.decode_context(ctx[is_dec])
            total += float(self.decode_attention(nd, kv, longest))
        if nd < len(q):
            pre = ~is_dec
            total += self.prefill_attention(q[pre], ctx[pre].astype(np.float64))
        return total

    # ---- iterations --------------------------------------------------------------------------
    def host_time(self, num_seqs: int) -> float:
        """Host seconds of one iteration over ``num_seqs`` sequences (see the module docstring)."""
        return self.iteration_overhead + self.per_seq_overhead * num_seqs

    def step_time(self, q: np.ndarray, ctx: np.ndarray, logits_rows: int | None = None) -> float:
        """Seconds of one iteration over sequences with ``q`` new tokens over ``ctx`` cached."""
        q = np.asarray(q)
        if q.size == 0:
            return 0.0
        rows = len(q) if logits_rows is None else logits_rows
        t = float(self.body_time(int(q.sum()))) + float(self.head_time(rows))
        return t + self.attention_time(q, ctx) + self.host_time(len(q))

    def fixed_step_time(self, batch: int) -> float:
        """The part of a decode step of ``batch`` sequences that does not depend on context."""
        t = self._fixed1.get(batch)
        if t is None:
            body, head = self._body_head(batch)
            t = self._fixed1[batch] = float(body + head) + self.host_time(batch)
        return t

    def decode_steps(
        self, batch: int, kv0: float, k: int, longest0: float | None = None, contexts: np.ndarray | None = None
    ) -> np.ndarray:
        """Seconds of each of ``k`` consecutive decode iterations of ``batch`` sequences whose
        contexts (tokens already cached) sum to ``kv0`` at the first iteration, the longest
        being ``longest0`` (None: all of equal length). With a sliding-window model, pass the
        ``contexts`` themselves: each sequence attends at most the window."""
        steps = np.arange(k, dtype=np.float64)
        kv = (kv0 + batch) + float(batch) * steps  # each new token attends itself
        longest = None if longest0 is None else (longest0 + 1.0) + steps
        w = self.model.sliding_window
        if w is not None and contexts is not None:
            # at step j sequence i attends min(c_i + 1 + j, w): sum the uncapped ones (sorted
            # prefix sums) and w for the rest, for every step at once
            c = np.sort(np.asarray(contexts, dtype=np.float64)) + 1.0
            cs = np.concatenate([[0.0], np.cumsum(c)])
            n_unc = np.searchsorted(c, w - steps, side="left")
            kv = cs[n_unc] + n_unc * steps + (batch - n_unc) * float(w)
            if longest is not None:
                longest = np.minimum(longest, float(w))
        body, head = self._body_head(batch)
        fixed = float(body + head) + self.host_time(batch)
        return fixed + self.decode_attention(batch, kv, longest)

    # ---- scalar forms for the fast engine path (the same arithmetic on Python floats) --------
    def _dec_consts(self, batch: int) -> tuple | None:
        """Constants of one decode iteration of ``batch`` sequences on scalars: its
        context-independent seconds (as :meth:`decode_steps` sums them), the batch-only factors
        of :meth:`decode_attention`'s expressions grouped as Python evaluates them there (left to
        right), and the decode-attention roofline coefficients; None when the efficiency model
        has no closed form for decode attention."""
        c = self._dec1.get(batch)
        if c is None:
            roof = self.efficiency.roofline_coeffs("attn_decode", self._peaks[0], self._peaks[1])
            if roof is None:
                return None
            sms = self.device.sm_count
            heads, kvh, d, ab, kb = self._attn_consts()
            ratio = sms / kvh if sms > 0 and batch * kvh >= 0.8 * sms else None
            fixed = self.fixed_step_time(batch)
            c = self._dec1[batch] = (
                4.0 * heads * d, 2.0 * batch * heads * d * ab, 2.0 * batch * kvh * d * kb, ratio, kvh, d, kb, *roof, fixed,
            )
        return c

    def decode_constants(self, batch: int) -> tuple | None:
        """The constants :meth:`decode_step_times` prices a decode iteration of ``batch``
        sequences with, ``(f4, c1, c3, ratio, kvh, d, kb, cf, cb, ov, fixed)`` (see
        :meth:`_dec_consts`), for a caller that inlines that loop (engine/lean.py); None where
        the scalar form does not apply (sliding window, fitted decode-attention efficiency)."""
        if self.model.sliding_window is not None:
            return None
        return self._dec_consts(batch)

    def _decode_attention1(self, batch: int, kv: float, longest: float) -> float | None:
        """:meth:`decode_attention` of one iteration (``kv``, ``longest``: attended tokens, as
        passed to it) with the same operations in the same order on scalars, so the result is
        bit-identical; None when the efficiency model has no closed form for decode attention."""
        c = self._dec1.get(batch)  # the usual case: known batch size (else computed, or None)
        if c is None:
            c = self._dec_consts(batch)
            if c is None:
                return None
        f4, c1, c3, ratio, kvh, d, kb, cf, cb, ov, _ = c
        # max(a, b) as ``b if b > a else a`` (what max returns, without a call)
        if ratio is not None:
            y = longest * ratio
            if y > kv:
                kv = y
        a = f4 * kv * cf
        b = (c1 + 2.0 * kv * kvh * d * kb + c3) * cb
        return ((b if b > a else a) + ov) * self.layers

    def decode_step_times(
        self, batch: int, kv0: float, k: int, longest0: float, until: float = float("inf")
    ) -> tuple[list[float], list[float]] | None:
        """:meth:`decode_steps` (``contexts`` None) on Python floats, bit-identical, with the
        running sums of the times (``np.cumsum``'s, which adds sequentially): ``(times, ends)``
        of the first ``k`` steps, or of fewer when a step's end reaches ``until`` (that step is
        the last). None where the scalar form does not apply (sliding window, fitted
        decode-attention efficiency): use :meth:`decode_steps`."""
        if self.model.sliding_window is not None:
            return None
        c = self._dec_consts(batch)
        if c is None:
            return None
        f4, c1, c3, ratio, kvh, d, kb, cf, cb, ov, fixed = c
        layers = self.layers
        base = kv0 + batch
        fb = float(batch)
        lo = longest0 + 1.0
        times: list[float] = []
        ends: list[float] = []
        add_time, add_end = times.append, ends.append
        # ``max(a, b)`` is written ``b if b > a else a`` (what max returns, without a call); the
        # running sum starts at 0.0, and 0.0 + x is x exactly for a step time x > 0, so it is
        # np.cumsum's (whose first element is the first time)
        acc = 0.0
        for j in range(k):
            kv = base + fb * j
            if ratio is not None:
                y = (lo + j) * ratio
                if y > kv:
                    kv = y
            a = f4 * kv * cf
            b = (c1 + 2.0 * kv * kvh * d * kb + c3) * cb
            x = fixed + ((b if b > a else a) + ov) * layers
            acc += x
            add_time(x)
            add_end(acc)
            if acc >= until:
                break
        return times, ends

    def mixed_step_time(
        self, pq: list[int], ctx: list[int], nb: int, dec_sum: int, dec_longest: int, rows: int
    ) -> float | None:
        """:meth:`step_time` of an iteration prefilling ``pq`` tokens over ``ctx`` cached ones and
        decoding ``nb`` sequences whose contexts sum to ``dec_sum`` (longest ``dec_longest``), on
        scalars and bit-identical (the attended-token sums are of integers, exact in any order);
        None where the scalar form does not apply: use :meth:`step_time`."""
        n_pq = len(pq)
        n = n_pq + nb
        if n == 0 or self.model.sliding_window is not None:
            return None
        if n_pq == 1:
            q0, c0 = pq[0], ctx[0]
            if q0 == 1 and c0 > 0:
                return None  # a one-token chunk over a cache is priced as a decode: not here
            n_tok = q0
        else:
            if any(q == 1 and c > 0 for q, c in zip(pq, ctx)):
                return None
            n_tok = sum(pq)
        T = n_tok + nb
        lists = self.scalar_tables
        if len(lists[0]) <= T or len(lists[1]) <= rows:
            t = float(self.body_time(T)) + float(self.head_time(rows))  # grows the tables as step_time does
        else:
            t = lists[0][T] + lists[1][rows]
        total = 0.0
        if nb:
            a = self._decode_attention1(nb, float(dec_sum + nb), dec_longest + 1.0)
            if a is None:
                return None
            total += a
        if n_pq:
            pc = self.prefill_constants()
            if pc is None:
                return None
            f4, heads, kvh, d, ab, kb, cf, cb, ov = pc
            tokens = float(n_tok)
            if n_pq == 1:
                pairs = float(q0 * c0 + q0 * (q0 + 1) // 2)
                kv_tokens = float(c0) + tokens
            else:
                pairs = float(sum(q * c + q * (q + 1) // 2 for q, c in zip(pq, ctx)))
                kv_tokens = float(sum(ctx)) + tokens
            # 4.0 * heads * d * pairs: ``f4`` is its first two products (left to right)
            flops = f4 * pairs
            byts = 2.0 * tokens * heads * d * ab + 2.0 * kv_tokens * kvh * d * kb + 2.0 * tokens * kvh * d * kb
            fc, bc = flops * cf, byts * cb
            total += ((bc if bc > fc else fc) + ov) * self.layers  # max(fc, bc), without a call
        return t + total + (self.iteration_overhead + self.per_seq_overhead * n)

    def prefill_constants(self) -> tuple[float, float, float, float, float, float, float, float, float] | None:
        """The constants :meth:`mixed_step_time` prices prefill attention with on scalars,
        ``(4.0 * heads * d, heads, kvh, d, a_bytes, kv_bytes, cf, cb, ov)`` (the attention shape
        and the prefill-attention roofline coefficients), for a caller that inlines it
        (engine/lean.py); None where the efficiency model has no closed form for prefill
        attention, or for a sliding-window model (as :meth:`decode_constants`)."""
        if self.model.sliding_window is not None:
            return None
        pc = self._pre_roof
        if pc is None:
            roof = self.efficiency.roofline_coeffs("attn_prefill", self._peaks[0], self._peaks[1])
            heads, kvh, d, ab, kb = self._attn_consts()
            pc = self._pre_roof = () if roof is None else (4.0 * heads * d, heads, kvh, d, ab, kb, *roof)
        return pc or None

    def breakdown(self, q: np.ndarray, ctx: np.ndarray) -> list[OpTime]:
        """Per-operator times for one iteration (for `simkit estimate ops` and reports)."""
        ops = forward_ops(self.model, q, ctx, tp=self.tp, precision=self.precision)
        from simkit.cost.roofline import time_ops  # (a breakdown's: a run's tables do not need it)

        return time_ops(ops, self.device, self.efficiency, self.dtype)

    def split_layers(self, q: np.ndarray, ctx: np.ndarray, logits_rows: int | None = None) -> tuple[float, float, float]:
        """(before, per_layer, after) seconds of one iteration, for layer-by-layer execution:
        the sum before + layers * per_layer + after equals ``step_time``."""
        q = np.asarray(q)
        T = int(q.sum())
        per_layer = self.layer_time(T) + self.attention_time(q, ctx) / max(self.layers, 1)
        # before: the non-layer body (embedding) and the host overhead; after: the LM head. Each is
        # computed from its own table, never as a difference of totals, so round-off cannot make it
        # negative (body - layers * layer is the non-layer part, >= 0 up to round-off)
        before = max(float(self.body_time(T)) - self.layer_time(T) * self.layers, 0.0) + self.host_time(len(q))
        rows = len(q) if logits_rows is None else logits_rows
        after = float(self.head_time(rows)) if q.size else 0.0
        return before, per_layer, after
