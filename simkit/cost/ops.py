"""A forward pass over a batch -> the operator list with FLOPs and bytes per operator.

A batch is a set of sequences, each with ``q`` new tokens this pass (a prefill chunk, or 1 for
a decode step) and ``ctx`` tokens already in its KV cache. Operators use the canonical names
below everywhere (tables, calibration, reports). Shapes are per GPU of a tensor-parallel group
of ``tp`` GPUs, sharded as Megatron-style tensor parallelism shards them (QKV and MLP-up by
columns, O and MLP-down by rows); collectives are not operators here (see cost/collectives.py).

Counting conventions (documented in docs/architecture.md): a multiply-add is 2 FLOPs;
attention FLOPs count QK^T and PV (causal prefill: each new token attends to the context plus
the new tokens up to itself); bytes are what the kernel must move to/from device memory at
least once (weights, activations in and out, KV read and written).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simkit.cost.dtypes import bytes_per_element
from simkit.specs.model import ModelSpec

OP_NAMES = (
    "embedding",
    "input_norm",
    "qkv_proj",
    "rope",
    "attn_prefill",
    "attn_decode",
    "o_proj",
    "post_attn_norm",
    "mlp_up",
    "mlp_act",
    "mlp_down",
    "moe_router",
    "moe_experts",
    "residual_add",
    "final_norm",
    "lm_head",
    "sampling",
)

# Which fitted efficiency model times each operator.
OP_CLASS = {
    "embedding": "elementwise",
    "input_norm": "elementwise",
    "qkv_proj": "gemm",
    "rope": "elementwise",
    "attn_prefill": "attn_prefill",
    "attn_decode": "attn_decode",
    "o_proj": "gemm",
    "post_attn_norm": "elementwise",
    "mlp_up": "gemm",
    "mlp_act": "elementwise",
    "mlp_down": "gemm",
    "moe_router": "gemm",
    "moe_experts": "gemm",
    "residual_add": "elementwise",
    "final_norm": "elementwise",
    "lm_head": "gemm",
    "sampling": "elementwise",
}

LINEAR_OPS = ("qkv_proj", "o_proj", "mlp_up", "mlp_down", "moe_router", "moe_experts", "lm_head")
ELEMENTWISE_OPS = (
    "embedding",
    "input_norm",
    "rope",
    "post_attn_norm",
    "mlp_act",
    "residual_add",
    "final_norm",
    "sampling",
)


@dataclass(frozen=True)
class Precision:
    """Storage dtypes of weights, activations and KV cache, and the int4 group size."""

    weights: str = "bf16"
    activations: str = "bf16"
    kv_cache: str = "bf16"
    group_size: int = 128

    @property
    def w_bytes(self) -> float:
        return bytes_per_element(self.weights, self.group_size)

    @property
    def a_bytes(self) -> float:
        return bytes_per_element(self.activations, self.group_size)

    @property
    def kv_bytes(self) -> float:
        return bytes_per_element(self.kv_cache, self.group_size)

    @property
    def compute(self) -> str:
        from simkit.cost.dtypes import compute_dtype

        return compute_dtype(self.weights, self.activations)


@dataclass(frozen=True)
class Op:
    """One operator of a forward pass, per occurrence, on one GPU of the TP group."""

    name: str
    count: int
    """How many times it runs in the pass (num_layers for per-layer operators)."""
    flops: float
    weight_bytes: float
    act_bytes: float
    kv_bytes: float = 0.0
    shape: dict[str, float] = field(default_factory=dict)
    """Shape features the efficiency model sees: m, n, k for matmuls; numel for elementwise;
    tokens, ctx, batch, heads, kv_heads, head_dim for attention."""
    kernel: str = ""
    """Elementwise operators whose kernel differs from the Llama-style one the canonical name
    stands for (RMSNorm, SiLU-and-multiply, two-input add, full RoPE): the kernel the model's
    config selects (see :func:`elementwise_kernels`); empty for the Llama-style kernel."""

    @property
    def op_class(self) -> str:
        return OP_CLASS[self.name]

    @property
    def kernel_name(self) -> str:
        """What the efficiency model is told the operator is: ``name@kernel`` for a non-default
        kernel (e.g. ``input_norm@layernorm``), else the canonical name."""
        return f"{self.name}@{self.kernel}" if self.kernel else self.name

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.act_bytes + self.kv_bytes


def _gemm(name: str, count: int, m: float, k: float, n: float, p: Precision, n_weights: float | None = None) -> Op:
    nw = n * k if n_weights is None else n_weights
    return Op(
        name,
        count,
        flops=2.0 * m * n * k,
        weight_bytes=nw * p.w_bytes,
        act_bytes=(m * k + m * n) * p.a_bytes,
        shape={"m": m, "n": n, "k": k},
    )


def _elementwise(
    name: str,
    count: int,
    numel: Any,
    reads: float,
    writes: float,
    flops_per: float,
    p: Precision,
    extra_bytes: Any = 0.0,
    tokens: Any = None,
    kernel: str = "",
) -> Op:
    return Op(
        name,
        count,
        flops=flops_per * numel,
        weight_bytes=extra_bytes,
        act_bytes=(reads + writes) * numel * p.a_bytes,
        shape={"numel": numel} if tokens is None else {"numel": numel, "tokens": tokens},
        kernel=kernel,
    )


_ACTIVATION_KERNEL = {"silu": "silu", "swiglu": "silu", "gelu": "gelu", "gelu_new": "gelu_new", "geglu": "gelu", "relu": "relu"}


def elementwise_kernels(model: ModelSpec) -> dict[str, str]:
    """Canonical elementwise operator -> the kernel ``model``'s config selects where it is not the
    Llama-style one: ``layernorm`` norms (``norm: layernorm``; mean and variance, weight and bias),
    the MLP activation ``gelu``/``gelu_new``/``relu``/``silu`` (non-gated: one input) or
    ``gelu_mul``/``gelu_new_mul``/``relu_mul`` (gated, other than SiLU), ``add3`` (the parallel
    attention/MLP block adds attention output, MLP output and residual once per layer: two
    additions, counted as 4 reads and 2 writes per element) and ``partial_rope`` (rotary embedding
    on part of each head; it reads and writes the whole q and k tensors, so its size is full
    RoPE's). Operators absent here run the
    Llama-style kernel (RMSNorm, SiLU-and-multiply, two-input add, full RoPE)."""
    out: dict[str, str] = {}
    if model.norm == "layernorm":
        for n in ("input_norm", "post_attn_norm", "final_norm"):
            out[n] = "layernorm"
    act = _ACTIVATION_KERNEL[model.activation]
    if not (model.gated_mlp and act == "silu"):
        out["mlp_act"] = f"{act}_mul" if model.gated_mlp else act
    if model.parallel_attn_mlp:
        out["residual_add"] = "add3"
    if model.positional == "partial_rope":
        out["rope"] = "partial_rope"
    return out


def expected_experts_touched(tokens: Any, num_experts: int, top_k: int) -> Any:
    """Expected number of distinct experts that receive at least one of ``tokens`` tokens under
    uniform top-k routing: E * (1 - (1 - k/E)^T). Works on scalars and numpy arrays."""
    t = np.maximum(np.asarray(tokens, dtype=np.float64), 0.0)
    out = num_experts * (1.0 - (1.0 - top_k / num_experts) ** t)
    return float(out) if out.ndim == 0 else out


def _qkv_out(model: ModelSpec, tp: int, kv_mats: int) -> float:
    """Output features per GPU of the Q projection plus ``kv_mats`` K/V projections: split over
    ``tp`` GPUs, with every GPU computing one whole KV head when ``tp`` exceeds the KV heads (the
    heads replicate, as vLLM does; ModelSpec.kv_heads_per_gpu)."""
    if tp <= model.num_kv_heads:
        return (model.q_dim + kv_mats * model.kv_dim) / tp
    return model.q_dim / tp + kv_mats * model.kv_heads_per_gpu(tp) * model.d_head


def prefill_attention_sums(q: np.ndarray, ctx: np.ndarray, window: int | None) -> tuple[float, float]:
    """(query-key pairs, KV tokens read) of causal prefill chunks of ``q`` new tokens over ``ctx``
    cached ones (float arrays). With a sliding ``window``, query position p attends min(p, window)
    keys and at most ``window`` cached tokens are read."""
    tokens = float(q.sum())
    if window is None:
        return float((q * ctx + q * (q + 1.0) / 2.0).sum()), float(ctx.sum()) + tokens
    w = float(window)

    def S(n: np.ndarray) -> np.ndarray:  # pairs of the first n positions: sum of min(p, w)
        return np.where(n <= w, n * (n + 1.0) / 2.0, w * (w + 1.0) / 2.0 + (n - w) * w)

    return float((S(ctx + q) - S(ctx)).sum()), float(np.minimum(ctx, w).sum()) + tokens


def attention_ops(
    model: ModelSpec, q: np.ndarray, ctx: np.ndarray, tp: int, p: Precision
) -> list[Op]:
    """The attention operators (per layer) for sequences with ``q`` new tokens over ``ctx`` cached."""
    q = np.asarray(q, dtype=np.float64)
    ctx = np.asarray(ctx, dtype=np.float64)
    heads = model.num_heads / tp
    kv_heads = model.kv_heads_per_gpu(tp)  # KV heads replicate when tp > num_kv_heads
    d = model.d_head
    L = model.num_layers
    ops: list[Op] = []
    is_decode = (q == 1) & (ctx > 0)
    pre = ~is_decode
    if pre.any():
        qp, cp = q[pre], ctx[pre]
        # causal: token j of the chunk attends ctx + j + 1 keys (at most the sliding window)
        pairs, kv_tokens = prefill_attention_sums(qp, cp, model.sliding_window)
        flops = 4.0 * heads * d * pairs
        kv_read = 2.0 * kv_tokens * kv_heads * d * p.kv_bytes
        kv_write = 2.0 * float(qp.sum()) * kv_heads * d * p.kv_bytes
        act = 2.0 * float(qp.sum()) * heads * d * p.a_bytes  # read Q, write O
        ops.append(
            Op(
                "attn_prefill",
                L,
                flops,
                0.0,
                act,
                kv_read + kv_write,
                {
                    "tokens": float(qp.sum()),
                    "ctx": kv_tokens,
                    "batch": float(pre.sum()),
                    "heads": heads,
                    "kv_heads": kv_heads,
                    "head_dim": float(d),
                    "pairs": pairs,
                },
            )
        )
    if is_decode.any():
        cd = ctx[is_decode] + 1.0  # the new token attends to itself too
        if model.sliding_window is not None:
            cd = np.minimum(cd, float(model.sliding_window))
        b = float(is_decode.sum())
        kv_tokens = float(cd.sum())
        flops = 4.0 * heads * d * kv_tokens
        kv_read = 2.0 * kv_tokens * kv_heads * d * p.kv_bytes
        kv_write = 2.0 * b * kv_heads * d * p.kv_bytes
        act = 2.0 * b * heads * d * p.a_bytes
        ops.append(
            Op(
                "attn_decode",
                L,
                flops,
                0.0,
                act,
                kv_read + kv_write,
                {
                    "tokens": b,
                    "ctx": kv_tokens,
                    "batch": b,
                    "heads": heads,
                    "kv_heads": kv_heads,
                    "head_dim": float(d),
                },
            )
        )
    return ops


def token_ops(
    model: ModelSpec, tokens: Any, logits_rows: Any, tp: int, p: Precision, ep: int = 1, ep_share: float | None = None
) -> list[Op]:
    """Every operator whose cost depends only on the number of tokens in the pass (not on context):
    projections, MLP/MoE, norms, RoPE, residual adds, embedding, LM head and sampling.

    ``tokens`` and ``logits_rows`` may be numpy arrays (of one shape): each Op's numbers are then
    arrays too, which is how cost/iteration.py tabulates thousands of token counts at once."""
    h = model.hidden_size
    L = model.num_layers
    T = tokens if isinstance(tokens, np.ndarray) else float(tokens)
    kern = elementwise_kernels(model)
    norm_k = kern.get("input_norm", "")
    ops: list[Op] = [
        _elementwise("embedding", 1, T * h, 0.0, 1.0, 0.0, p, extra_bytes=T * h * p.w_bytes, tokens=T),
        _elementwise("input_norm", L, T * h, 1.0, 1.0, 5.0, p, extra_bytes=model.norm_params * p.a_bytes, tokens=T, kernel=norm_k),
        _gemm("qkv_proj", L, T, h, _qkv_out(model, tp, 2), p),
    ]
    if model.positional in ("rope", "partial_rope"):
        # partial RoPE rotates part of each head but the kernel reads and writes the whole q and k
        # tensors (the pass-through part is copied), so it moves what full RoPE moves; its FLOPs
        # are counted as full RoPE's too (an upper bound: the op is memory-bound)
        ops.append(_elementwise("rope", L, T * _qkv_out(model, tp, 1), 1.0, 1.0, 3.0, p, tokens=T, kernel=kern.get("rope", "")))
    ops.append(_gemm("o_proj", L, T, model.q_dim / tp, h, p))
    if not model.parallel_attn_mlp:
        ops.append(
            _elementwise("post_attn_norm", L, T * h, 1.0, 1.0, 5.0, p, extra_bytes=model.norm_params * p.a_bytes, tokens=T,
                         kernel=norm_k)
        )
    n_dense = model.num_dense_layers
    up_mult = 2 if model.gated_mlp else 1
    if n_dense:
        f = model.ffn_size / tp
        ops.append(_gemm("mlp_up", n_dense, T, h, up_mult * f, p))
        ops.append(_elementwise("mlp_act", n_dense, T * f, float(up_mult), 1.0, 8.0, p, tokens=T, kernel=kern.get("mlp_act", "")))
        ops.append(_gemm("mlp_down", n_dense, T, f, h, p))
    if model.moe is not None and model.num_moe_layers:
        m = model.moe
        n_moe = model.num_moe_layers
        ops.append(_gemm("moe_router", n_moe, T, h, m.num_experts, p))
        # expert parallelism: experts split into ep groups, each sharded over tp/ep GPUs; one GPU
        # computes the tokens routed to its group (the most loaded group bounds the layer)
        shard = tp / ep
        share = (1.0 / ep) if ep_share is None else ep_share
        fe = m.expert_ffn_size / shard
        per_expert_w = (up_mult + 1) * h * fe
        group_experts = m.num_experts / ep
        routed = T * m.top_k * share
        touched = expected_experts_touched(routed / m.top_k, int(group_experts), min(m.top_k, int(group_experts)))
        shared_ffn = (m.shared_expert_ffn_size or m.expert_ffn_size) / tp
        shared_w = m.num_shared_experts * (up_mult + 1) * h * shared_ffn
        flops = 2.0 * routed * per_expert_w + 2.0 * T * shared_w
        w_bytes = (touched * per_expert_w + shared_w) * p.w_bytes
        act = (routed * (2 * h + (up_mult + 1) * fe) + T * m.num_shared_experts * (2 * h + (up_mult + 1) * shared_ffn)) * p.a_bytes
        with np.errstate(invalid="ignore", divide="ignore"):
            tokens_per_expert = np.where(np.asarray(touched) > 0, routed / np.maximum(touched, 1e-30), 0.0)
        ops.append(
            Op(
                "moe_experts",
                n_moe,
                flops,
                w_bytes,
                act,
                0.0,
                {"m": tokens_per_expert, "n": up_mult * fe, "k": h, "experts": touched},
            )
        )
    if model.parallel_attn_mlp:
        # x + attn(x) + mlp(x): one operator per layer made of two additions (4 reads, 2 writes
        # and 2 FLOPs per element), which is what the parallel block's residual costs
        ops.append(_elementwise("residual_add", L, T * h, 4.0, 2.0, 2.0, p, tokens=T, kernel=kern.get("residual_add", "")))
    else:
        ops.append(_elementwise("residual_add", 2 * L, T * h, 2.0, 1.0, 1.0, p, tokens=T))
    ops.append(_elementwise("final_norm", 1, T * h, 1.0, 1.0, 5.0, p, extra_bytes=model.norm_params * p.a_bytes, tokens=T,
                            kernel=norm_k))
    R = logits_rows if isinstance(logits_rows, np.ndarray) else float(logits_rows)
    if isinstance(R, np.ndarray) or R > 0:
        ops.append(_gemm("lm_head", 1, R, h, model.vocab_size / tp, p))
        ops.append(_elementwise("sampling", 1, R * model.vocab_size / tp, 1.0, 0.0, 3.0, p, tokens=R))
    return ops


def forward_ops(
    model: ModelSpec,
    q: Sequence[int] | np.ndarray,
    ctx: Sequence[int] | np.ndarray | None = None,
    *,
    tp: int = 1,
    precision: Precision | None = None,
    logits_rows: float | None = None,
) -> list[Op]:
    """All operators of one forward pass over a batch of sequences.

    ``q[i]`` new tokens of sequence i over ``ctx[i]`` cached ones. ``logits_rows`` defaults to one
    row per sequence (the last position), which is what serving engines compute.
    """
    p = precision or Precision()
    qa = np.asarray(q, dtype=np.float64)
    ca = np.zeros_like(qa) if ctx is None else np.asarray(ctx, dtype=np.float64)
    rows = float(len(qa)) if logits_rows is None else float(logits_rows)
    ops = token_ops(model, float(qa.sum()), rows, tp, p)
    att = attention_ops(model, qa, ca, tp, p)
    # keep canonical order: attention after rope
    order = {n: i for i, n in enumerate(OP_NAMES)}
    return sorted(ops + att, key=lambda o: order[o.name])
