"""Memory arithmetic shared by the capacity checks and the placement optimiser."""

from __future__ import annotations

from simkit.cost.ops import Precision
from simkit.specs.model import ModelSpec

WORKSPACE_BYTES = 256 * 2**20
"""CUDA context, cuBLAS workspace and allocator slack held on every GPU."""


def activation_bytes(model: ModelSpec, tokens: int, seqs: int, tp: int, prec: Precision) -> float:
    """Peak activation memory of one forward pass on one GPU: a few live [tokens x hidden] and
    [tokens x ffn/tp] buffers, fp32 logits for ``seqs`` rows, plus fixed workspace."""
    ffn = max(model.ffn_size, model.moe.expert_ffn_size if model.moe else 0) / tp
    act = tokens * (4 * model.hidden_size + 2 * ffn) * prec.a_bytes
    act += seqs * model.vocab_size / tp * 4.0
    return act + WORKSPACE_BYTES
