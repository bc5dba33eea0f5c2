"""Build a :class:`ModelSpec` from a Hugging Face ``config.json`` already on disk (nothing is downloaded).

The architecture is read from ``architectures[0]`` (or ``model_type`` when that is absent or
unknown). Each supported family maps its own key names onto the spec; anything the spec cannot
express is rejected with a :class:`SpecError` that names the config key, rather than silently
mis-counted. A ``sliding_window`` on every layer (Mistral-7B v0.1; Qwen2 with
``use_sliding_window``) is read into the spec; what is not modelled: per-layer windows, RoPE scaling (``max_context`` is the
config's ``max_position_embeddings``), the tiny Qwen2-MoE shared-expert gate (``hidden_size``
parameters a layer), phi's optional q/k LayerNorms.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simkit.errors import SpecError
from simkit.specs.base import format_validation_error
from simkit.specs.model import ModelSpec

_MISSING = object()

_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "swiglu": "silu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
    "gelu_python": "gelu",
    "gelu_accurate": "gelu",
    "gelu_10": "gelu",
    "gelu_new": "gelu_new",
    "relu": "relu",
}


class _Config:
    """Typed access to the config's keys; every problem names the key and the file."""

    def __init__(self, cfg: dict[str, Any], where: str) -> None:
        self.cfg = cfg
        self.where = where

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        v = self.cfg.get(key)
        if v is None:
            if default is _MISSING:
                raise SpecError(
                    "required key is missing from the Hugging Face config", where=self.where, key=key
                )
            return default
        return v

    def integer(self, *keys: str, default: Any = _MISSING, positive: bool = True) -> Any:
        """The first of ``keys`` present, as an int (the first key is named when all are missing)."""
        for key in keys:
            if self.has(key):
                v = self.cfg[key]
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                if isinstance(v, bool) or not isinstance(v, int):
                    raise SpecError(f"expected an integer, got {v!r}", where=self.where, key=key)
                if positive and v <= 0:
                    raise SpecError(f"expected a positive integer, got {v}", where=self.where, key=key)
                return v
        if default is _MISSING:
            raise SpecError(
                "required key is missing from the Hugging Face config", where=self.where, key=keys[0]
            )
        return default

    def number(self, key: str, default: float) -> float:
        v = self.cfg.get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise SpecError(f"expected a number, got {v!r}", where=self.where, key=key)
        return float(v)

    def flag(self, key: str, default: bool) -> bool:
        v = self.cfg.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise SpecError(f"expected true or false, got {v!r}", where=self.where, key=key)
        return v

    def activation(self, *keys: str, default: str) -> str:
        for key in keys:
            if self.has(key):
                v = self.cfg[key]
                act = _ACTIVATIONS.get(str(v).lower()) if isinstance(v, str) else None
                if act is None:
                    raise SpecError(
                        f"unsupported activation {v!r} (expected one of {', '.join(sorted(_ACTIVATIONS))})",
                        where=self.where,
                        key=key,
                    )
                return act
        return default

    def head_dim(self, hidden: int, heads: int, *keys: str) -> int | None:
        """An explicit head dimension, or None where it is hidden_size / num_heads anyway."""
        hd = self.integer(*keys, default=None) if keys else None
        if hd is None or (hidden % heads == 0 and hd == hidden // heads):
            return None
        return hd

    def fail(self, message: str, key: str) -> SpecError:
        return SpecError(message, where=self.where, key=key)


# ---- families --------------------------------------------------------------------------------
def _llama_like(c: _Config, family: str) -> dict[str, Any]:
    """Llama and its close relatives (Mistral, Qwen2, InternLM, InternLM2, Mixtral's attention)."""
    hidden = c.integer("hidden_size")
    heads = c.integer("num_attention_heads")
    out: dict[str, Any] = {
        "family": family,
        "num_layers": c.integer("num_hidden_layers"),
        "hidden_size": hidden,
        "num_heads": heads,
        "num_kv_heads": c.integer("num_key_value_heads", default=heads),
        "head_dim": c.head_dim(hidden, heads, "head_dim"),
        "ffn_size": c.integer("intermediate_size"),
        "gated_mlp": True,
        "activation": c.activation("hidden_act", default="silu"),
        "vocab_size": c.integer("vocab_size"),
        "tied_embeddings": c.flag("tie_word_embeddings", False),
        "norm": "rmsnorm",
        "positional": "rope",
        "max_context": c.integer("max_position_embeddings"),
    }
    if family in ("internlm", "internlm2"):
        bias = c.flag("bias", True)  # InternLM(2): one switch for the q/k/v and output projections
        out["qkv_bias"] = out["out_bias"] = bias
    elif family in ("qwen2", "qwen2_moe"):
        out["qkv_bias"] = True  # Qwen2 always has q/k/v biases, no output bias
    else:
        bias = c.flag("attention_bias", False)
        out["qkv_bias"] = out["out_bias"] = bias
        out["mlp_bias"] = c.flag("mlp_bias", False)
    if c.has("sliding_window") and c.flag("use_sliding_window", True):
        window = c.integer("sliding_window")
        layers = out["num_layers"]
        # Qwen2: layers from max_window_layers on use the window (>= num_layers: none does)
        first = c.integer("max_window_layers", default=0, positive=False) if family.startswith("qwen2") else 0
        if 0 < first < layers:
            raise c.fail(
                f"a sliding window on layers {first}..{layers - 1} only is not modelled (simkit models a window on "
                "every layer or none): set max_window_layers to 0 or num_hidden_layers",
                "max_window_layers",
            )
        if first == 0 and window < out["max_context"]:
            out["sliding_window"] = window
    return out


def _llama(c: _Config, model_type: str) -> dict[str, Any]:
    return _llama_like(c, model_type)


def _mixtral(c: _Config, model_type: str) -> dict[str, Any]:
    out = _llama_like(c, "mixtral")
    out["moe"] = {
        "num_experts": c.integer("num_local_experts"),
        "top_k": c.integer("num_experts_per_tok"),
        "expert_ffn_size": out["ffn_size"],
    }
    return out


def _qwen2_moe(c: _Config, model_type: str) -> dict[str, Any]:
    out = _llama_like(c, "qwen2_moe")
    if c.integer("decoder_sparse_step", default=1) != 1:
        raise c.fail("only decoder_sparse_step 1 (every layer MoE) is supported", "decoder_sparse_step")
    dense = c.raw("mlp_only_layers", [])
    if not isinstance(dense, list) or sorted(dense) != list(range(len(dense))):
        raise c.fail(
            f"only leading dense layers can be modelled (mlp_only_layers = [0, 1, ...]), got {dense!r}",
            "mlp_only_layers",
        )
    expert_ffn = c.integer("moe_intermediate_size")
    shared_ffn = c.integer("shared_expert_intermediate_size", default=0, positive=False)
    out["moe"] = {
        "num_experts": c.integer("num_experts"),
        "top_k": c.integer("num_experts_per_tok"),
        "expert_ffn_size": expert_ffn,
        "num_shared_experts": 1 if shared_ffn else 0,
        "shared_expert_ffn_size": shared_ffn or None,
        "first_dense_layers": len(dense),
    }
    return out


def _deepseek(c: _Config, model_type: str) -> dict[str, Any]:
    out = _llama_like(c, "deepseek")
    if c.integer("moe_layer_freq", default=1) != 1:
        raise c.fail(
            "only moe_layer_freq 1 (every layer after the dense ones is MoE) is supported", "moe_layer_freq"
        )
    if c.has("n_routed_experts"):
        expert_ffn = c.integer("moe_intermediate_size")
        out["moe"] = {
            "num_experts": c.integer("n_routed_experts"),
            "top_k": c.integer("num_experts_per_tok"),
            "expert_ffn_size": expert_ffn,
            # DeepSeek fuses its shared experts into one MLP of n_shared * moe_intermediate_size:
            # the same parameters as n_shared experts of moe_intermediate_size each.
            "num_shared_experts": c.integer("n_shared_experts", default=0, positive=False),
            "shared_expert_ffn_size": expert_ffn,
            "first_dense_layers": c.integer("first_k_dense_replace", default=0, positive=False),
        }
    return out


def _deepseek_mla(c: _Config, model_type: str) -> dict[str, Any]:
    key = "kv_lora_rank" if c.has("kv_lora_rank") else "model_type"
    rank = c.cfg.get("kv_lora_rank")
    detail = f" (kv_lora_rank {rank})" if rank is not None else ""
    raise c.fail(
        f"{model_type} uses multi-head latent attention (MLA){detail}, which simkit does not model yet: "
        "its KV cache and attention cost differ from MHA/GQA. DeepSeek V1 (DeepseekForCausalLM) is supported",
        key,
    )


def _opt(c: _Config, model_type: str) -> dict[str, Any]:
    hidden = c.integer("hidden_size")
    if c.integer("word_embed_proj_dim", default=hidden) != hidden:
        raise c.fail(
            "word_embed_proj_dim differs from hidden_size (OPT-350m's project_in/project_out): not modelled",
            "word_embed_proj_dim",
        )
    if c.flag("_remove_final_layer_norm", False):
        raise c.fail("OPT without its final LayerNorm is not modelled", "_remove_final_layer_norm")
    if not c.flag("do_layer_norm_before", True):
        raise c.fail(
            "post-LayerNorm OPT (do_layer_norm_before false, OPT-350m) is not modelled",
            "do_layer_norm_before",
        )
    bias = c.flag("enable_bias", True)
    heads = c.integer("num_attention_heads")
    return {
        "family": "opt",
        "num_layers": c.integer("num_hidden_layers"),
        "hidden_size": hidden,
        "num_heads": heads,
        "num_kv_heads": heads,
        "ffn_size": c.integer("ffn_dim"),
        "gated_mlp": False,
        "activation": c.activation("activation_function", default="relu"),
        "vocab_size": c.integer("vocab_size"),
        "tied_embeddings": c.flag("tie_word_embeddings", True),
        "norm": "layernorm",
        "positional": "learned",  # 2 extra position rows, added by ModelSpec for family "opt"
        "max_context": c.integer("max_position_embeddings"),
        "qkv_bias": bias,
        "out_bias": bias,
        "mlp_bias": bias,
    }


def _phi(c: _Config, model_type: str) -> dict[str, Any]:
    """phi-1/1.5/2 in both the transformers ("phi") and the older remote-code ("phi-msft") key names."""
    hidden = c.integer("hidden_size", "n_embd")
    heads = c.integer("num_attention_heads", "n_head")
    head_dim = hidden // heads
    if c.has("partial_rotary_factor"):
        partial = c.number("partial_rotary_factor", 1.0) < 1.0
    else:
        partial = c.integer("rotary_dim", default=head_dim) < head_dim
    return {
        "family": "phi",
        "num_layers": c.integer("num_hidden_layers", "n_layer"),
        "hidden_size": hidden,
        "num_heads": heads,
        "num_kv_heads": c.integer("num_key_value_heads", "n_head_kv", default=heads),
        "ffn_size": c.integer("intermediate_size", "n_inner", default=4 * hidden),
        "gated_mlp": False,
        "activation": c.activation("hidden_act", "activation_function", default="gelu_new"),
        "vocab_size": c.integer("vocab_size"),
        "tied_embeddings": c.flag("tie_word_embeddings", False),
        "norm": "layernorm",
        "positional": "partial_rope" if partial else "rope",
        "max_context": c.integer("max_position_embeddings", "n_positions"),
        "qkv_bias": True,
        "out_bias": True,
        "mlp_bias": True,
        "lm_head_bias": True,
        "parallel_attn_mlp": True,
    }


def _qwen_v1(c: _Config, model_type: str) -> dict[str, Any]:
    hidden = c.integer("hidden_size")
    heads = c.integer("num_attention_heads")
    inter = c.integer("intermediate_size")
    if inter % 2:
        raise c.fail(
            f"Qwen (v1) intermediate_size counts both MLP projections and must be even, got {inter}",
            "intermediate_size",
        )
    no_bias = c.flag("no_bias", True)
    return {
        "family": "qwen",
        "num_layers": c.integer("num_hidden_layers"),
        "hidden_size": hidden,
        "num_heads": heads,
        "num_kv_heads": heads,
        "head_dim": c.head_dim(hidden, heads, "kv_channels"),
        "ffn_size": inter // 2,  # modeling_qwen.py: w1/w2 are intermediate_size // 2 wide
        "gated_mlp": True,
        "activation": "silu",
        "vocab_size": c.integer("vocab_size"),
        "tied_embeddings": c.flag("tie_word_embeddings", False),
        "norm": "rmsnorm",
        "positional": "partial_rope" if c.number("rotary_pct", 1.0) < 1.0 else "rope",
        "max_context": c.integer("max_position_embeddings", "seq_length"),
        "qkv_bias": True,  # c_attn always has a bias; no_bias covers the other projections
        "out_bias": not no_bias,
        "mlp_bias": not no_bias,
    }


def _gpt_neox(c: _Config, model_type: str) -> dict[str, Any]:
    heads = c.integer("num_attention_heads")
    bias = c.flag("attention_bias", True)
    return {
        "family": "gpt_neox",
        "num_layers": c.integer("num_hidden_layers"),
        "hidden_size": c.integer("hidden_size"),
        "num_heads": heads,
        "num_kv_heads": heads,
        "ffn_size": c.integer("intermediate_size"),
        "gated_mlp": False,
        "activation": c.activation("hidden_act", default="gelu"),
        "vocab_size": c.integer("vocab_size"),
        "tied_embeddings": c.flag("tie_word_embeddings", False),
        "norm": "layernorm",
        "positional": "partial_rope" if c.number("rotary_pct", 0.25) < 1.0 else "rope",
        "max_context": c.integer("max_position_embeddings"),
        "qkv_bias": bias,
        "out_bias": bias,
        "mlp_bias": True,
        # GPT-NeoX's parallel residual still norms attention and MLP inputs separately (two
        # LayerNorms), so it is not the one-norm parallel block of phi/GPT-J.
        "parallel_attn_mlp": False,
    }


def _gemma(c: _Config, model_type: str) -> dict[str, Any]:
    hidden = c.integer("hidden_size")
    heads = c.integer("num_attention_heads")
    return {
        "family": "gemma",
        "num_layers": c.integer("num_hidden_layers"),
        "hidden_size": hidden,
        "num_heads": heads,
        "num_kv_heads": c.integer("num_key_value_heads", default=heads),
        "head_dim": c.head_dim(hidden, heads, "head_dim"),
        "ffn_size": c.integer("intermediate_size"),
        "gated_mlp": True,
        "activation": c.activation("hidden_activation", "hidden_act", default="gelu"),
        "vocab_size": c.integer("vocab_size"),
        "tied_embeddings": c.flag("tie_word_embeddings", True),
        "norm": "rmsnorm",
        "positional": "rope",
        "max_context": c.integer("max_position_embeddings"),
        "qkv_bias": c.flag("attention_bias", False),
        "out_bias": c.flag("attention_bias", False),
    }


_Handler = Callable[[_Config, str], dict[str, Any]]

# architectures[0] -> (model_type used as the family, handler)
_ARCHITECTURES: dict[str, tuple[str, _Handler]] = {
    "LlamaForCausalLM": ("llama", _llama),
    "MistralForCausalLM": ("mistral", _llama),
    "Qwen2ForCausalLM": ("qwen2", _llama),
    "InternLMForCausalLM": ("internlm", _llama),
    "InternLM2ForCausalLM": ("internlm2", _llama),
    "MixtralForCausalLM": ("mixtral", _mixtral),
    "Qwen2MoeForCausalLM": ("qwen2_moe", _qwen2_moe),
    "DeepseekForCausalLM": ("deepseek", _deepseek),
    "DeepseekV2ForCausalLM": ("deepseek_v2", _deepseek_mla),
    "DeepseekV3ForCausalLM": ("deepseek_v3", _deepseek_mla),
    "OPTForCausalLM": ("opt", _opt),
    "PhiForCausalLM": ("phi", _phi),
    "QWenLMHeadModel": ("qwen", _qwen_v1),
    "GPTNeoXForCausalLM": ("gpt_neox", _gpt_neox),
    "GemmaForCausalLM": ("gemma", _gemma),
}
_MODEL_TYPES: dict[str, tuple[str, _Handler]] = {mt: (mt, h) for mt, h in _ARCHITECTURES.values()}
_MODEL_TYPES["phi-msft"] = ("phi", _phi)


def supported_architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


def _detect(c: _Config) -> tuple[str, _Handler]:
    archs = c.cfg.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    if arch in _ARCHITECTURES:
        return _ARCHITECTURES[arch]
    model_type = c.cfg.get("model_type")
    if isinstance(model_type, str) and model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    if arch is None and model_type is None:
        raise c.fail(
            "cannot tell the model family: neither 'architectures' nor 'model_type' is set "
            f"(supported: {', '.join(supported_architectures())})",
            "architectures",
        )
    what = f"architecture {arch!r}" if arch is not None else f"model_type {model_type!r}"
    raise c.fail(
        f"unsupported {what}; supported architectures: {', '.join(supported_architectures())} "
        "(or write a model YAML by hand)",
        "architectures" if arch is not None else "model_type",
    )


def _name(cfg: dict[str, Any], where: str) -> str:
    raw = cfg.get("_name_or_path")
    if isinstance(raw, str) and raw.strip().strip("/\\"):
        return Path(raw.strip().rstrip("/\\")).name
    parent = Path(where).resolve().parent.name if where else ""
    return parent or "hf-model"


_HUB_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _hub_repo(cfg: dict[str, Any]) -> str | None:
    """``_name_or_path`` when it names a Hub repository (``owner/name``), not a local folder."""
    raw = cfg.get("_name_or_path")
    if isinstance(raw, str) and _HUB_REPO.match(raw.strip()) and not Path(raw.strip()).exists():
        return raw.strip()
    return None


def model_from_hf_config(cfg: dict[str, Any], where: str) -> ModelSpec:
    """A ModelSpec from an already-parsed Hugging Face ``config.json`` (``where`` names the file)."""
    if not isinstance(cfg, dict):
        raise SpecError("expected a JSON object at the top level of the Hugging Face config", where=where)
    c = _Config(cfg, where)
    model_type, handler = _detect(c)
    fields = handler(c, model_type)
    arch = cfg.get("architectures")
    arch_name = arch[0] if isinstance(arch, list) and arch else model_type
    fields = {k: v for k, v in fields.items() if v is not None}
    fields.update(
        name=_name(cfg, where),
        description=f"imported from a Hugging Face config ({arch_name})",
        sources={"architecture": f"Hugging Face config {where}"},
        hf_repo=_hub_repo(cfg),
    )
    try:
        return ModelSpec.model_validate(fields)
    except ValidationError as e:
        raise format_validation_error(e, where, ModelSpec) from None
