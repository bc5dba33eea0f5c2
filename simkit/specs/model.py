"""Model architecture specs and the arithmetic that follows from them (parameters, KV bytes)."""

from functools import cached_property
from typing import Literal

from pydantic import Field, model_validator

from simkit.specs.base import Frozen


class MoESpec(Frozen):
    num_experts: int = Field(ge=1)
    top_k: int = Field(ge=1)
    expert_ffn_size: int = Field(gt=0)
    num_shared_experts: int = Field(default=0, ge=0)
    shared_expert_ffn_size: int | None = Field(default=None, gt=0)
    """FFN size of each shared expert; default expert_ffn_size."""
    first_dense_layers: int = Field(default=0, ge=0)
    """Leading layers with a dense MLP of ``ffn_size`` (DeepSeek-MoE style)."""

    @model_validator(mode="after")
    def _topk(self) -> "MoESpec":
        if self.top_k > self.num_experts:
            raise ValueError("top_k exceeds num_experts")
        return self


class ModelSpec(Frozen):
    kind: Literal["model"] = "model"
    name: str
    family: str
    description: str = ""
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int | None = Field(default=None, gt=0)
    """Per-head dimension; default hidden_size / num_heads."""
    ffn_size: int = Field(gt=0)
    """Intermediate size of the dense MLP (per gate/up projection for gated MLPs)."""
    gated_mlp: bool
    activation: Literal["silu", "gelu", "gelu_new", "relu", "swiglu", "geglu"] = "silu"
    vocab_size: int = Field(gt=0)
    tied_embeddings: bool = False
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    positional: Literal["rope", "learned", "alibi", "partial_rope"] = "rope"
    max_context: int = Field(gt=0)
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    lm_head_bias: bool = False
    parallel_attn_mlp: bool = False
    """Attention and MLP read the same normed input (GPT-J/phi-2 style): one norm per layer."""
    sliding_window: int | None = Field(default=None, gt=0)
    """Every layer attends only the last ``sliding_window`` tokens (Mistral-7B v0.1 style): a
    sequence's attention reads at most that many cached tokens, and the engine keeps at most
    that many (plus the block being filled) in its KV cache, as vLLM's block manager does.
    None: full attention."""
    moe: MoESpec | None = None
    published_params: float | None = Field(default=None, gt=0)
    """The parameter count the authors publish, for checking the arithmetic here."""
    sources: dict[str, str] = Field(default_factory=dict)
    hf_repo: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
    """The Hugging Face Hub repository of the weights (``owner/name``, e.g. ``meta-llama/Llama-2-7b-hf``),
    named in the vLLM launch hint of `simkit search`; None where the weights are not on the Hub."""

    @model_validator(mode="after")
    def _heads(self) -> "ModelSpec":
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError("hidden_size is not a multiple of num_heads: give head_dim explicitly")
        if self.moe is not None and self.moe.first_dense_layers > self.num_layers:
            raise ValueError(f"moe.first_dense_layers ({self.moe.first_dense_layers}) exceeds num_layers ({self.num_layers})")
        return self

    # ---- derived shapes -------------------------------------------------------------------
    @property
    def d_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.d_head

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.d_head

    @property
    def attention_kind(self) -> str:
        if self.num_kv_heads == self.num_heads:
            return "MHA"
        return "MQA" if self.num_kv_heads == 1 else "GQA"

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def num_moe_layers(self) -> int:
        return 0 if self.moe is None else self.num_layers - self.moe.first_dense_layers

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    # ---- parameter arithmetic --------------------------------------------------------------
    @cached_property
    def params_attention_per_layer(self) -> int:
        h = self.hidden_size
        p = h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h
        if self.qkv_bias:
            p += self.q_dim + 2 * self.kv_dim
        if self.out_bias:
            p += h
        return p

    def _mlp_params(self, ffn: int) -> int:
        h = self.hidden_size
        p = (2 if self.gated_mlp else 1) * h * ffn + ffn * h
        if self.mlp_bias:
            p += (2 if self.gated_mlp else 1) * ffn + h
        return p

    @cached_property
    def params_dense_mlp_per_layer(self) -> int:
        return self._mlp_params(self.ffn_size)

    @cached_property
    def params_moe_per_layer(self) -> int:
        """All experts, shared experts and the router of one MoE layer."""
        if self.moe is None:
            return 0
        m = self.moe
        shared_ffn = m.shared_expert_ffn_size or m.expert_ffn_size
        return (
            m.num_experts * self._mlp_params(m.expert_ffn_size)
            + m.num_shared_experts * self._mlp_params(shared_ffn)
            + self.hidden_size * m.num_experts
        )

    @cached_property
    def params_active_moe_per_layer(self) -> int:
        """Parameters one token touches in an MoE layer (top-k routed + shared + router)."""
        if self.moe is None:
            return 0
        m = self.moe
        shared_ffn = m.shared_expert_ffn_size or m.expert_ffn_size
        return (
            m.top_k * self._mlp_params(m.expert_ffn_size)
            + m.num_shared_experts * self._mlp_params(shared_ffn)
            + self.hidden_size * m.num_experts
        )

    @property
    def norm_params(self) -> int:
        return self.hidden_size * (2 if self.norm == "layernorm" else 1)

    @property
    def norms_per_layer(self) -> int:
        return 1 if self.parallel_attn_mlp else 2

    @cached_property
    def params_per_layer_avg(self) -> float:
        return self.params_layers / self.num_layers

    @cached_property
    def params_layers(self) -> int:
        """Parameters of all transformer blocks (no embeddings, final norm or LM head)."""
        per_layer_common = self.params_attention_per_layer + self.norms_per_layer * self.norm_params
        return (
            self.num_layers * per_layer_common
            + self.num_dense_layers * self.params_dense_mlp_per_layer
            + self.num_moe_layers * self.params_moe_per_layer
        )

    @cached_property
    def params_embedding(self) -> int:
        p = self.vocab_size * self.hidden_size
        if self.positional == "learned":
            # OPT keeps 2 extra position slots
            p += (self.max_context + (2 if self.family == "opt" else 0)) * self.hidden_size
        return p

    @cached_property
    def params_lm_head(self) -> int:
        p = 0 if self.tied_embeddings else self.vocab_size * self.hidden_size
        if self.lm_head_bias:
            p += self.vocab_size
        return p

    @cached_property
    def num_params(self) -> int:
        """Total parameters (embeddings, blocks, final norm and untied LM head)."""
        return self.params_embedding + self.params_layers + self.norm_params + self.params_lm_head

    @cached_property
    def num_active_params(self) -> int:
        """Parameters touched per token (differs from num_params only for MoE)."""
        if self.moe is None:
            return self.num_params
        return self.num_params - self.num_moe_layers * (
            self.params_moe_per_layer - self.params_active_moe_per_layer
        )

    def kv_heads_per_gpu(self, tp: int) -> float:
        """KV heads each GPU of a tensor-parallel group of ``tp`` holds: the heads split over the
        GPUs, and replicated (one whole head each) when ``tp`` exceeds ``num_kv_heads``."""
        return max(self.num_kv_heads / tp, 1.0)

    def kv_bytes_per_token(self, dtype_bytes: float, tp: int, layers: int | None = None) -> float:
        """Bytes of K and V cache one token occupies on EACH GPU of a tensor-parallel group of
        ``tp`` GPUs, over ``layers`` layers (default: all of them), stored in ``dtype_bytes`` per
        element (the KV precision's bytes; int4 groups included). KV heads replicate when
        ``tp > num_kv_heads`` (:meth:`kv_heads_per_gpu`), so the group holds ``tp`` times this.
        The one home of this number: the memory plan, the offload layout and optimiser, and
        ``simkit models`` all use it."""
        n = self.num_layers if layers is None else layers
        return 2.0 * n * self.kv_heads_per_gpu(tp) * self.d_head * dtype_bytes

    def weight_bytes(self, dtype_bytes: float = 2.0) -> float:
        return self.num_params * dtype_bytes
