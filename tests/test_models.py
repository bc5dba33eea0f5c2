"""The model catalog (workloads/models/*.yaml), its parameter arithmetic, and Hugging Face config import."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from simkit.errors import SpecError
from simkit.specs.catalog import default_catalog, load_model, parse_item, repo_path
from simkit.specs.hf import model_from_hf_config
from simkit.specs.model import ModelSpec

CATALOG_MODELS = [
    "opt-6.7b",
    "opt-13b",
    "opt-30b",
    "opt-66b",
    "opt-175b",
    "bloom-176b",
    "llama-2-7b",
    "llama-2-13b",
    "llama-2-70b",
    "llama-3-8b",
    "llama-3-70b",
    "llama-3.1-8b",
    "llama-3.1-70b",
    "llama-3.1-405b",
    "codellama-34b",
    "qwen-72b",
    "internlm-20b",
    "phi-2",
    "mixtral-8x7b",
    "deepseek-moe-16b",
]

# Largest |num_params / published_params - 1| over the catalog is InternLM-20B (20.09e9 against the
# stated "20B", 0.44%); every other model is within 0.23% (OPT-175B against its nominal 175B).
PUBLISHED_TOLERANCE = 0.005

# Exact parameter counts of the released checkpoints (safetensors metadata on the HF hub, or
# tensor counts printed by PEFT's print_trainable_parameters in public write-ups): the
# arithmetic in ModelSpec must reproduce them to the parameter.
CHECKPOINT_COUNTS = {
    "llama-2-7b": 6_738_415_616,
    "llama-2-13b": 13_015_864_320,
    "llama-2-70b": 68_976_648_192,
    "llama-3-8b": 8_030_261_248,
    "llama-3-70b": 70_553_706_496,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
    "llama-3.1-405b": 405_853_388_800,
    "codellama-34b": 33_743_970_304,
    "qwen-72b": 72_287_920_128,
    "phi-2": 2_779_683_840,
    "mixtral-8x7b": 46_702_792_704,
    "deepseek-moe-16b": 16_375_728_128,
}


def _catalog_model(name: str) -> ModelSpec:
    m = default_catalog().get("model", name)
    assert isinstance(m, ModelSpec)
    return m


# ---- the catalog ------------------------------------------------------------------------------
def test_catalog_holds_exactly_the_listed_models() -> None:
    shipped = sorted(p.stem for p in repo_path("workloads", "models").glob("*.yaml"))
    assert shipped == sorted(CATALOG_MODELS)
    assert set(CATALOG_MODELS) <= set(default_catalog().names("model"))


@pytest.mark.parametrize("name", CATALOG_MODELS)
def test_catalog_model_loads(name: str) -> None:
    m = _catalog_model(name)
    path = repo_path("workloads", "models", f"{name}.yaml")
    assert path.exists(), "file name must be the model name + .yaml"
    assert default_catalog().file_of("model", name) == path
    assert m.name == name and m.kind == "model"
    assert m.num_params > 0 and m.num_active_params <= m.num_params
    assert {"architecture", "params"} <= set(m.sources), "sources must name the architecture and the count"
    assert m.published_params is not None
    # loading by path gives the same item
    assert load_model(str(path)) == m


@pytest.mark.parametrize("name", CATALOG_MODELS)
def test_num_params_matches_published(name: str) -> None:
    m = _catalog_model(name)
    assert m.published_params is not None
    err = m.num_params / m.published_params - 1
    assert abs(err) <= PUBLISHED_TOLERANCE, f"{name}: {m.num_params:,} vs published {m.published_params:,.0f}"


@pytest.mark.parametrize(("name", "count"), sorted(CHECKPOINT_COUNTS.items()))
def test_num_params_matches_checkpoint_exactly(name: str, count: int) -> None:
    assert _catalog_model(name).num_params == count


@pytest.mark.parametrize(
    ("name", "count"),
    [
        # OPT: exact counts of the HF OPTForCausalLM modules (tied LM head counted once,
        # position table of max_position_embeddings + 2 rows, biases everywhere, final LayerNorm).
        ("opt-6.7b", 6_658_473_984),
        ("opt-13b", 12_853_473_280),
        ("opt-30b", 29_974_540_288),
        ("opt-66b", 65_719_701_504),
    ],
)
def test_opt_counts(name: str, count: int) -> None:
    m = _catalog_model(name)
    assert m.num_params == count == m.published_params
    assert m.params_embedding == (50272 + 2048 + 2) * m.hidden_size
    assert m.params_lm_head == 0


def test_opt_by_hand() -> None:
    m = _catalog_model("opt-6.7b")
    h, f = 4096, 16384
    per_layer = (4 * h * h + 4 * h) + (2 * h * f + f + h) + 2 * 2 * h
    assert m.params_layers == 32 * per_layer
    assert m.num_params == 50272 * h + 2050 * h + 32 * per_layer + 2 * h


def test_moe_active_params() -> None:
    mixtral = _catalog_model("mixtral-8x7b")
    assert mixtral.num_active_params == 12_879_925_248
    assert mixtral.num_active_params == pytest.approx(12.9e9, rel=0.002)  # Mistral AI: 12.9B per token
    assert mixtral.num_params == pytest.approx(46.7e9, rel=0.001)

    ds = _catalog_model("deepseek-moe-16b")
    assert ds.num_moe_layers == 27 and ds.num_dense_layers == 1
    # DeepSeekMoE paper: 2.8B activated. 2.83e9 here, embeddings and LM head (0.42e9) included.
    assert ds.num_active_params == pytest.approx(2.8e9, rel=0.011)
    assert ds.num_active_params == 2_828_650_496
    h = 2048
    expert = 3 * h * 1408
    assert ds.params_moe_per_layer == 64 * expert + 2 * expert + h * 64
    assert ds.params_active_moe_per_layer == 6 * expert + 2 * expert + h * 64


def test_kv_bytes_per_token() -> None:
    assert _catalog_model("llama-2-7b").kv_bytes_per_token(2, tp=1) == 2 * 32 * 4096 * 2 == 524_288
    l3 = _catalog_model("llama-3-70b")
    assert l3.attention_kind == "GQA"
    assert l3.kv_bytes_per_token(2, tp=1) == 2 * 80 * 8 * 128 * 2 == 327_680
    assert _catalog_model("llama-3.1-405b").kv_bytes_per_token(2, tp=1) == 2 * 126 * 8 * 128 * 2
    assert _catalog_model("mixtral-8x7b").kv_bytes_per_token(1, tp=1) == 2 * 32 * 8 * 128


@pytest.mark.parametrize(
    ("name", "layers", "hidden", "heads", "kv", "ffn", "vocab", "ctx"),
    [
        ("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
        ("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192),
        ("llama-3.1-8b", 32, 4096, 32, 8, 14336, 128256, 131072),
        ("llama-3.1-405b", 126, 16384, 128, 8, 53248, 128256, 131072),
        ("codellama-34b", 48, 8192, 64, 8, 22016, 32000, 16384),
        ("qwen-72b", 80, 8192, 64, 64, 24576, 152064, 32768),
        ("internlm-20b", 60, 5120, 40, 40, 13824, 103168, 4096),
        ("phi-2", 32, 2560, 32, 32, 10240, 51200, 2048),
        ("mixtral-8x7b", 32, 4096, 32, 8, 14336, 32000, 32768),
        ("deepseek-moe-16b", 28, 2048, 16, 16, 10944, 102400, 4096),
        ("opt-175b", 96, 12288, 96, 96, 49152, 50272, 2048),
    ],
)
def test_catalog_shapes(
    name: str, layers: int, hidden: int, heads: int, kv: int, ffn: int, vocab: int, ctx: int
) -> None:
    m = _catalog_model(name)
    assert (
        m.num_layers,
        m.hidden_size,
        m.num_heads,
        m.num_kv_heads,
        m.ffn_size,
        m.vocab_size,
        m.max_context,
    ) == (
        layers,
        hidden,
        heads,
        kv,
        ffn,
        vocab,
        ctx,
    )


def test_catalog_architecture_flags() -> None:
    phi = _catalog_model("phi-2")
    assert phi.parallel_attn_mlp and phi.norms_per_layer == 1
    assert phi.positional == "partial_rope" and phi.norm == "layernorm"
    assert phi.qkv_bias and phi.out_bias and phi.mlp_bias and phi.lm_head_bias and not phi.tied_embeddings
    qwen = _catalog_model("qwen-72b")
    assert qwen.qkv_bias and not qwen.out_bias and not qwen.mlp_bias
    bloom = _catalog_model("bloom-176b")
    assert bloom.positional == "alibi" and bloom.norm == "layernorm" and not bloom.gated_mlp
    for name in CATALOG_MODELS:
        m = _catalog_model(name)
        assert m.tied_embeddings == name.startswith(("opt-", "bloom-")), name
        assert (m.positional == "learned") == name.startswith("opt-"), name


# ---- Hugging Face config import -----------------------------------------------------------------
LLAMA_2_7B_CONFIG: dict[str, Any] = {
    "_name_or_path": "meta-llama/Llama-2-7b-hf",
    "architectures": ["LlamaForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 4096,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.31.0.dev0",
    "use_cache": True,
    "vocab_size": 32000,
}

LLAMA_3_70B_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 8192,
    "initializer_range": 0.02,
    "intermediate_size": 28672,
    "max_position_embeddings": 8192,
    "model_type": "llama",
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}

MIXTRAL_CONFIG: dict[str, Any] = {
    "architectures": ["MixtralForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mixtral",
    "num_attention_heads": 32,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 8,
    "output_router_logits": False,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.02,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.36.0.dev0",
    "use_cache": True,
    "vocab_size": 32000,
}

OPT_6_7B_CONFIG: dict[str, Any] = {
    "_name_or_path": "facebook/opt-6.7b",
    "_remove_final_layer_norm": False,
    "activation_dropout": 0.0,
    "activation_function": "relu",
    "architectures": ["OPTForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 2,
    "do_layer_norm_before": True,
    "dropout": 0.1,
    "eos_token_id": 2,
    "ffn_dim": 16384,
    "hidden_size": 4096,
    "init_std": 0.02,
    "layerdrop": 0.0,
    "max_position_embeddings": 2048,
    "model_type": "opt",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "pad_token_id": 1,
    "prefix": "</s>",
    "torch_dtype": "float16",
    "transformers_version": "4.21.0.dev0",
    "use_cache": True,
    "vocab_size": 50272,
    "word_embed_proj_dim": 4096,
}

PHI_2_CONFIG: dict[str, Any] = {
    "_name_or_path": "microsoft/phi-2",
    "architectures": ["PhiForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 50256,
    "embd_pdrop": 0.0,
    "eos_token_id": 50256,
    "hidden_act": "gelu_new",
    "hidden_size": 2560,
    "initializer_range": 0.02,
    "intermediate_size": 10240,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048,
    "model_type": "phi",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "partial_rotary_factor": 0.4,
    "qk_layernorm": False,
    "resid_pdrop": 0.1,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.37.0",
    "use_cache": True,
    "vocab_size": 51200,
}

QWEN_72B_CONFIG: dict[str, Any] = {
    "architectures": ["QWenLMHeadModel"],
    "attn_dropout_prob": 0.0,
    "bf16": False,
    "emb_dropout_prob": 0.0,
    "hidden_size": 8192,
    "initializer_range": 0.02,
    "intermediate_size": 49152,
    "kv_channels": 128,
    "layer_norm_epsilon": 1e-06,
    "max_position_embeddings": 32768,
    "model_type": "qwen",
    "no_bias": True,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
    "rotary_emb_base": 1000000,
    "rotary_pct": 1.0,
    "scale_attn_weights": True,
    "seq_length": 32768,
    "tie_word_embeddings": False,
    "tokenizer_class": "QWenTokenizer",
    "use_cache": True,
    "use_dynamic_ntk": False,
    "use_logn_attn": False,
    "vocab_size": 152064,
}

INTERNLM_20B_CONFIG: dict[str, Any] = {
    "architectures": ["InternLMForCausalLM"],
    "bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 5120,
    "initializer_range": 0.02,
    "intermediate_size": 13824,
    "max_position_embeddings": 4096,
    "model_type": "internlm",
    "num_attention_heads": 40,
    "num_hidden_layers": 60,
    "num_key_value_heads": 40,
    "pad_token_id": 2,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-06,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 103168,
    "rotary": {"base": 10000, "type": "dynamic"},
}

DEEPSEEK_MOE_16B_CONFIG: dict[str, Any] = {
    "architectures": ["DeepseekForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 100000,
    "eos_token_id": 100001,
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 10944,
    "max_position_embeddings": 4096,
    "model_type": "deepseek",
    "moe_intermediate_size": 1408,
    "moe_layer_freq": 1,
    "n_routed_experts": 64,
    "n_shared_experts": 2,
    "norm_topk_prob": False,
    "num_attention_heads": 16,
    "num_experts_per_tok": 6,
    "num_hidden_layers": 28,
    "num_key_value_heads": 16,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 10000,
    "scoring_func": "softmax",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 102400,
}

DEEPSEEK_V2_LITE_CONFIG: dict[str, Any] = {
    "architectures": ["DeepseekV2ForCausalLM"],
    "first_k_dense_replace": 1,
    "hidden_size": 2048,
    "intermediate_size": 10944,
    "kv_lora_rank": 512,
    "max_position_embeddings": 163840,
    "model_type": "deepseek_v2",
    "moe_intermediate_size": 1408,
    "n_routed_experts": 64,
    "n_shared_experts": 2,
    "num_attention_heads": 16,
    "num_experts_per_tok": 6,
    "num_hidden_layers": 27,
    "num_key_value_heads": 16,
    "q_lora_rank": None,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "vocab_size": 102400,
}

GEMMA_7B_CONFIG: dict[str, Any] = {
    "architectures": ["GemmaForCausalLM"],
    "attention_bias": False,
    "head_dim": 256,
    "hidden_act": "gelu",
    "hidden_size": 3072,
    "intermediate_size": 24576,
    "max_position_embeddings": 8192,
    "model_type": "gemma",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "num_key_value_heads": 16,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "vocab_size": 256000,
}

PYTHIA_6_9B_CONFIG: dict[str, Any] = {
    "architectures": ["GPTNeoXForCausalLM"],
    "hidden_act": "gelu",
    "hidden_size": 4096,
    "intermediate_size": 16384,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048,
    "model_type": "gpt_neox",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "rotary_emb_base": 10000,
    "rotary_pct": 0.25,
    "tie_word_embeddings": False,
    "use_parallel_residual": True,
    "vocab_size": 50432,
}

MISTRAL_7B_CONFIG: dict[str, Any] = {
    "architectures": ["MistralForCausalLM"],
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "vocab_size": 32000,
}

QWEN1_5_MOE_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2MoeForCausalLM"],
    "decoder_sparse_step": 1,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "max_position_embeddings": 8192,
    "mlp_only_layers": [],
    "model_type": "qwen2_moe",
    "moe_intermediate_size": 1408,
    "num_attention_heads": 16,
    "num_experts": 60,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 24,
    "num_key_value_heads": 16,
    "shared_expert_intermediate_size": 5632,
    "tie_word_embeddings": False,
    "vocab_size": 151936,
}


def _write_config(folder: Path, cfg: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def _derived(m: ModelSpec) -> dict[str, Any]:
    return {
        "num_params": m.num_params,
        "num_active_params": m.num_active_params,
        "params_layers": m.params_layers,
        "params_embedding": m.params_embedding,
        "params_lm_head": m.params_lm_head,
        "params_attention_per_layer": m.params_attention_per_layer,
        "params_dense_mlp_per_layer": m.params_dense_mlp_per_layer,
        "params_moe_per_layer": m.params_moe_per_layer,
        "kv_bytes_per_token": m.kv_bytes_per_token(2, tp=1),
        "weight_bytes": m.weight_bytes(2),
        "attention_kind": m.attention_kind,
        "shape": (m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.d_head, m.ffn_size),
        "vocab_size": m.vocab_size,
        "max_context": m.max_context,
        "flags": (m.gated_mlp, m.activation, m.norm, m.positional, m.tied_embeddings, m.parallel_attn_mlp),
        "biases": (m.qkv_bias, m.out_bias, m.mlp_bias, m.lm_head_bias),
        "moe": m.moe,
    }


@pytest.mark.parametrize(
    ("catalog_name", "cfg"),
    [
        ("llama-2-7b", LLAMA_2_7B_CONFIG),
        ("llama-3-70b", LLAMA_3_70B_CONFIG),
        ("mixtral-8x7b", MIXTRAL_CONFIG),
        ("opt-6.7b", OPT_6_7B_CONFIG),
        ("phi-2", PHI_2_CONFIG),
        ("qwen-72b", QWEN_72B_CONFIG),
        ("internlm-20b", INTERNLM_20B_CONFIG),
        ("deepseek-moe-16b", DEEPSEEK_MOE_16B_CONFIG),
    ],
)
def test_hf_round_trip_matches_catalog(tmp_path: Path, catalog_name: str, cfg: dict[str, Any]) -> None:
    path = _write_config(tmp_path / catalog_name, cfg)
    imported = load_model(str(path))
    catalog = _catalog_model(catalog_name)
    assert _derived(imported) == _derived(catalog)
    assert imported.family == catalog.family
    # a folder holding config.json works too
    assert _derived(load_model(str(path.parent))) == _derived(catalog)


@pytest.mark.parametrize(
    ("cfg", "count"),
    [
        (GEMMA_7B_CONFIG, 8_537_680_896),  # google/gemma-7b safetensors count
        (PYTHIA_6_9B_CONFIG, 6_857_302_016),  # EleutherAI/pythia-6.9b (Pythia paper)
        (MISTRAL_7B_CONFIG, 7_241_732_096),  # mistralai/Mistral-7B-v0.1
    ],
)
def test_hf_other_families_exact(cfg: dict[str, Any], count: int) -> None:
    m = model_from_hf_config(cfg, where="cfg.json")
    assert m.num_params == count


def test_hf_gemma_head_dim_and_tying() -> None:
    m = model_from_hf_config(GEMMA_7B_CONFIG, where="cfg.json")
    assert m.d_head == 256 and m.q_dim == 4096 != m.hidden_size
    assert m.tied_embeddings and m.gated_mlp and m.activation == "gelu"
    assert m.kv_bytes_per_token(2, tp=1) == 2 * 28 * 16 * 256 * 2


def test_hf_qwen2_moe() -> None:
    m = model_from_hf_config(QWEN1_5_MOE_CONFIG, where="cfg.json")
    assert m.moe is not None and m.moe.num_shared_experts == 1 and m.moe.shared_expert_ffn_size == 5632
    # Qwen1.5-MoE-A2.7B: 14.3B total, 2.7B activated (the per-layer shared-expert gate, 2048
    # parameters a layer, is not modelled)
    assert m.num_params == pytest.approx(14.3e9, rel=0.002)
    assert m.num_active_params == pytest.approx(2.7e9, rel=0.01)
    assert m.qkv_bias and not m.out_bias


def test_hf_name(tmp_path: Path) -> None:
    assert load_model(str(_write_config(tmp_path / "a", LLAMA_2_7B_CONFIG))).name == "Llama-2-7b-hf"
    assert load_model(str(_write_config(tmp_path / "my-mixtral", MIXTRAL_CONFIG))).name == "my-mixtral"
    local = {**OPT_6_7B_CONFIG, "_name_or_path": "/models/opt-6.7b/"}
    assert load_model(str(_write_config(tmp_path / "b", local))).name == "opt-6.7b"


def test_hf_repo_from_name_or_path(tmp_path: Path) -> None:
    """A config whose _name_or_path names a Hub repository carries it as hf_repo (the vLLM hint of
    `simkit search` names it); a local folder does not."""
    assert load_model(str(_write_config(tmp_path / "a", LLAMA_2_7B_CONFIG))).hf_repo == "meta-llama/Llama-2-7b-hf"
    local = {**OPT_6_7B_CONFIG, "_name_or_path": "/models/opt-6.7b/"}
    assert load_model(str(_write_config(tmp_path / "b", local))).hf_repo is None


def test_catalog_models_name_their_hub_repository() -> None:
    """Every catalog model whose weights are on the Hugging Face Hub names the repository its
    architecture source cites (OPT-175B's weights are not on the Hub)."""
    for name in CATALOG_MODELS:
        m = _catalog_model(name)
        if name == "opt-175b":
            assert m.hf_repo is None
        else:
            assert m.hf_repo and m.hf_repo in m.sources["architecture"], name


def test_hf_repo_must_be_owner_slash_name() -> None:
    with pytest.raises(SpecError, match="hf_repo"):
        parse_item({**_catalog_model("llama-2-7b").model_dump(), "hf_repo": "not a repo"}, where="m.yaml", kind="model")


def test_hf_model_type_fallback() -> None:
    cfg = {k: v for k, v in LLAMA_2_7B_CONFIG.items() if k != "architectures"}
    assert model_from_hf_config(cfg, where="x").num_params == 6_738_415_616
    old_phi = {
        "architectures": ["PhiForCausalLM"],
        "model_type": "phi-msft",
        "n_embd": 2560,
        "n_head": 32,
        "n_inner": None,
        "n_layer": 32,
        "n_positions": 2048,
        "rotary_dim": 32,
        "activation_function": "gelu_new",
        "vocab_size": 51200,
    }
    m = model_from_hf_config(old_phi, where="x")
    assert m.num_params == 2_779_683_840 and m.positional == "partial_rope"


def test_hf_unknown_architecture(tmp_path: Path) -> None:
    cfg = {**LLAMA_2_7B_CONFIG, "architectures": ["FalconForCausalLM"], "model_type": "falcon"}
    path = _write_config(tmp_path / "falcon", cfg)
    with pytest.raises(SpecError) as err:
        load_model(str(path))
    e = err.value
    assert e.where == str(path) and e.key == "architectures"
    assert "FalconForCausalLM" in e.message
    assert "LlamaForCausalLM" in e.message and "OPTForCausalLM" in e.message  # says what is supported
    assert str(path) in str(e)


def test_hf_no_architecture_at_all(tmp_path: Path) -> None:
    path = _write_config(tmp_path / "x", {"hidden_size": 4096})
    with pytest.raises(SpecError) as err:
        load_model(str(path))
    assert err.value.where == str(path) and err.value.key == "architectures"


def test_hf_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096,')
    with pytest.raises(SpecError) as err:
        load_model(str(path))
    assert err.value.where == str(path)
    assert "malformed JSON" in err.value.message


def test_hf_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(SpecError) as err:
        load_model(str(path))
    assert err.value.where == str(path)


@pytest.mark.parametrize(
    ("cfg", "drop", "key"),
    [
        (LLAMA_2_7B_CONFIG, "intermediate_size", "intermediate_size"),
        (MIXTRAL_CONFIG, "num_local_experts", "num_local_experts"),
        (OPT_6_7B_CONFIG, "ffn_dim", "ffn_dim"),
        (PHI_2_CONFIG, "hidden_size", "hidden_size"),
        (DEEPSEEK_MOE_16B_CONFIG, "moe_intermediate_size", "moe_intermediate_size"),
    ],
)
def test_hf_missing_key(tmp_path: Path, cfg: dict[str, Any], drop: str, key: str) -> None:
    path = _write_config(tmp_path / "m", {k: v for k, v in cfg.items() if k != drop})
    with pytest.raises(SpecError) as err:
        load_model(str(path))
    assert err.value.where == str(path) and err.value.key == key
    assert "missing" in err.value.message


def test_hf_bad_values() -> None:
    with pytest.raises(SpecError) as err:
        model_from_hf_config({**LLAMA_2_7B_CONFIG, "hidden_size": "4096"}, where="c.json")
    assert err.value.key == "hidden_size"
    with pytest.raises(SpecError) as err:
        model_from_hf_config({**LLAMA_2_7B_CONFIG, "hidden_act": "mish"}, where="c.json")
    assert err.value.key == "hidden_act"
    with pytest.raises(SpecError) as err:  # 32 heads cannot share 5 KV heads
        model_from_hf_config({**LLAMA_2_7B_CONFIG, "num_key_value_heads": 5}, where="c.json")
    assert err.value.where == "c.json"


def test_hf_deepseek_v2_mla_rejected() -> None:
    with pytest.raises(SpecError) as err:
        model_from_hf_config(DEEPSEEK_V2_LITE_CONFIG, where="dsv2/config.json")
    assert err.value.key == "kv_lora_rank" and err.value.where == "dsv2/config.json"
    assert "MLA" in err.value.message and "not model" in err.value.message


def test_hf_opt_350m_rejected() -> None:
    cfg = {**OPT_6_7B_CONFIG, "hidden_size": 1024, "word_embed_proj_dim": 512}
    with pytest.raises(SpecError) as err:
        model_from_hf_config(cfg, where="c.json")
    assert err.value.key == "word_embed_proj_dim"
