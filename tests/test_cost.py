"""FLOP and byte counts against hand-computed values; roofline regimes; the iteration model."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simkit.cost.device import ComputeDevice
from simkit.cost.efficiency import DatasheetEfficiency
from simkit.cost.iteration import IterationModel
from simkit.cost.ops import OP_NAMES, Precision, forward_ops
from simkit.cost.roofline import time_ops, total_time
from simkit.specs.catalog import default_catalog, load_model

P16 = Precision("fp16", "fp16", "fp16")


@pytest.fixture(scope="module")
def llama7b():
    return load_model("llama-2-7b")


@pytest.fixture(scope="module")
def h100():
    return ComputeDevice.from_gpu(default_catalog().get("gpu", "h100-sxm"))


def _op(ops, name):
    (o,) = [o for o in ops if o.name == name]
    return o


def test_linear_flops_and_bytes_by_hand(llama7b):
    T = 512
    ops = forward_ops(llama7b, [T], [0], tp=1, precision=P16)
    qkv = _op(ops, "qkv_proj")
    assert qkv.flops == 2 * T * 4096 * (3 * 4096)
    assert qkv.weight_bytes == 4096 * 3 * 4096 * 2
    assert qkv.act_bytes == (T * 4096 + T * 3 * 4096) * 2
    up = _op(ops, "mlp_up")
    assert up.flops == 2 * T * 4096 * 2 * 11008
    down = _op(ops, "mlp_down")
    assert down.shape == {"m": T, "n": 4096, "k": 11008}
    assert _op(ops, "lm_head").flops == 2 * 1 * 4096 * 32000  # one logits row


def test_tp_shards_linear_layers(llama7b):
    a = _op(forward_ops(llama7b, [64], tp=1, precision=P16), "qkv_proj")
    b = _op(forward_ops(llama7b, [64], tp=4, precision=P16), "qkv_proj")
    assert b.flops == a.flops / 4 and b.weight_bytes == a.weight_bytes / 4
    o = _op(forward_ops(llama7b, [64], tp=4, precision=P16), "o_proj")
    assert o.shape["k"] == 4096 / 4 and o.shape["n"] == 4096


def test_attention_flops_by_hand(llama7b):
    # prefill of 100 tokens, no context: causal pairs = 100*101/2
    ops = forward_ops(llama7b, [100], [0], precision=P16)
    att = _op(ops, "attn_prefill")
    assert att.flops == 4 * 32 * 128 * (100 * 101 / 2)
    # decode of 3 sequences at contexts 10, 20, 30: each attends ctx + 1 keys
    ops = forward_ops(llama7b, [1, 1, 1], [10, 20, 30], precision=P16)
    dec = _op(ops, "attn_decode")
    assert dec.flops == 4 * 32 * 128 * (11 + 21 + 31)
    assert dec.kv_bytes == 2 * (63 * 32 * 128 * 2) + 2 * 3 * 32 * 128 * 2


def test_gqa_kv_bytes():
    m = load_model("llama-3-70b")
    dec = _op(forward_ops(m, [1], [999], precision=P16), "attn_decode")
    assert dec.kv_bytes == 2 * 1000 * 8 * 128 * 2 + 2 * 8 * 128 * 2


def test_int4_weights_are_group_quantised(llama7b):
    p = Precision("int4", "fp16", "fp16", group_size=128)
    qkv = _op(forward_ops(llama7b, [1], precision=p), "qkv_proj")
    assert qkv.weight_bytes == pytest.approx(4096 * 3 * 4096 * (0.5 + 4 / 128))


def test_canonical_names_only(llama7b):
    ops = forward_ops(load_model("mixtral-8x7b"), [8, 1], [0, 50], precision=P16)
    assert {o.name for o in ops} <= set(OP_NAMES)
    assert {"moe_router", "moe_experts", "attn_prefill", "attn_decode"} <= {o.name for o in ops}


def test_roofline_regimes(llama7b, h100):
    eff = DatasheetEfficiency()
    one = {t.op.name: t for t in time_ops(forward_ops(llama7b, [1], precision=P16), h100, eff, "fp16")}
    big = {t.op.name: t for t in time_ops(forward_ops(llama7b, [4096], precision=P16), h100, eff, "fp16")}
    for name in ("qkv_proj", "o_proj", "mlp_up", "mlp_down"):
        assert one[name].bound == "memory"
        assert big[name].bound == "compute"


def test_iteration_model_matches_operator_sum(llama7b, h100):
    it = IterationModel(llama7b, h100, DatasheetEfficiency(), P16)
    q = np.array([300, 1, 1])
    ctx = np.array([0, 50, 70])
    ops = forward_ops(llama7b, q, ctx, precision=P16)
    assert it.step_time(q, ctx) == pytest.approx(total_time(time_ops(ops, h100, DatasheetEfficiency(), "fp16")), rel=1e-9)


def test_decode_steps_match_single_steps(llama7b, h100):
    it = IterationModel(llama7b, h100, DatasheetEfficiency(), P16)
    ctx = np.array([100, 200, 300, 400])
    fast = it.decode_steps(4, float(ctx.sum()), 5, float(ctx.max()))
    slow = [it.step_time(np.ones(4, dtype=int), ctx + k) for k in range(5)]
    np.testing.assert_allclose(fast, slow, rtol=1e-9)


def test_split_layers_sums_to_step(llama7b, h100):
    it = IterationModel(llama7b, h100, DatasheetEfficiency(), P16)
    q, ctx = np.array([64, 1]), np.array([0, 500])
    before, per, after = it.split_layers(q, ctx)
    assert before + per * 32 + after == pytest.approx(it.step_time(q, ctx), rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4096), st.floats(1.1, 8.0))
def test_more_bandwidth_or_flops_is_never_slower(tokens, factor):
    from dataclasses import replace

    m = load_model("llama-2-7b")
    base = ComputeDevice.from_gpu(default_catalog().get("gpu", "a100-80gb-sxm"))
    faster_bw = replace(base, mem_bandwidth=base.mem_bandwidth * factor)
    eff = DatasheetEfficiency()
    ops = forward_ops(m, [tokens], precision=P16)
    t0 = total_time(time_ops(ops, base, eff, "fp16"))
    assert total_time(time_ops(ops, faster_bw, eff, "fp16")) <= t0 * (1 + 1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 2048), st.integers(1, 2048))
def test_time_monotone_in_tokens(a, b):
    m = load_model("llama-2-7b")
    dev = ComputeDevice.from_gpu(default_catalog().get("gpu", "h100-sxm"))
    it = IterationModel(m, dev, DatasheetEfficiency(), P16)
    lo, hi = sorted((a, b))
    assert it.body_time(lo) <= it.body_time(hi) + 1e-15
