"""Elementwise kernel kinds from the model config (issue 15): LayerNorm, GELU/ReLU, the parallel
block's add and partial RoPE are kernels of their own, not the Llama-style ones their canonical
operator names stand for; profiles that never measured a kernel predict it as before."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simkit.calibrate.fit import fit_profile
from simkit.cost.ops import Precision, elementwise_kernels, forward_ops
from simkit.cost.profile import Profile, elementwise_kind
from simkit.specs.catalog import default_catalog, load_model

ROOT = Path(__file__).resolve().parents[1]
FP16 = Precision("fp16", "fp16", "fp16")


def test_kernels_follow_the_model_config() -> None:
    assert elementwise_kernels(load_model("llama-2-70b")) == {}
    assert elementwise_kernels(load_model("qwen-72b")) == {}
    phi = load_model("phi-2")
    assert phi.norm == "layernorm" and phi.parallel_attn_mlp and phi.positional == "partial_rope"
    assert elementwise_kernels(phi) == {
        "input_norm": "layernorm", "post_attn_norm": "layernorm", "final_norm": "layernorm",
        "mlp_act": "gelu_new", "residual_add": "add3", "rope": "partial_rope",
    }  # fmt: skip
    opt = load_model("opt-6.7b")
    assert elementwise_kernels(opt)["mlp_act"] == ("relu_mul" if opt.gated_mlp else "relu")
    gated_gelu = load_model("llama-2-7b").model_copy(update={"activation": "geglu"})
    assert elementwise_kernels(gated_gelu) == {"mlp_act": "gelu_mul"}


def test_llama_style_operators_keep_their_canonical_names() -> None:
    cat = default_catalog()
    for name in cat.names("model"):
        m = cat.get("model", name)
        ops = forward_ops(m, [1, 1], [100, 200], precision=FP16)
        kern = elementwise_kernels(m)
        for o in ops:
            assert o.kernel == kern.get(o.name, ""), (name, o.name)
            assert o.kernel_name == (f"{o.name}@{o.kernel}" if o.kernel else o.name)


def test_kind_of_an_unmeasured_kernel_falls_back_to_its_canonical_operator() -> None:
    assert elementwise_kind("input_norm") == "norm"
    assert elementwise_kind("input_norm@layernorm") == "layernorm"
    assert elementwise_kind("input_norm@layernorm", ("norm", "add")) == "norm"
    assert elementwise_kind("input_norm@layernorm", ("layernorm", "norm")) == "layernorm"
    assert elementwise_kind("mlp_act@gelu_new", ("act",)) == "act"
    assert elementwise_kind("residual_add@add3", ("add", "add3")) == "add3"


def _samples(rng: np.random.Generator, with_layernorm: bool) -> pd.DataFrame:
    """Elementwise samples where LayerNorm takes 3x the time of RMSNorm at equal size."""
    rows = []
    for op, kernel, slow in (("input_norm", "", 1.0), ("residual_add", "", 1.0), ("input_norm", "layernorm", 3.0)):
        if kernel and not with_layernorm:
            continue
        for _ in range(80):
            tokens = float(np.round(2.0 ** rng.uniform(0, 12)))
            numel = tokens * float(rng.choice([2048.0, 4096.0]))
            B = 4.0 * numel
            rows.append({"op_class": "elementwise", "op": op, "kernel": kernel, "dtype": "fp16", "numel": numel,
                         "tokens": tokens, "flops": 5.0 * numel, "bytes_moved": B,
                         "time_s": slow * (2e-6 + B / 2e12), "source": "synthetic"})  # fmt: skip
    return pd.DataFrame(rows)


DEVICE = {"kind": "gpu", "peak_flops": {"fp16": 1e15}, "mem_bandwidth": 3e12, "sm_count": 132}


def test_a_profile_that_measured_a_kernel_predicts_it_as_that_kernel() -> None:
    rng = np.random.default_rng(0)
    prof = fit_profile(_samples(rng, True), DEVICE, name="k", source="synthetic", license="test")
    cm = prof.models["elementwise"]
    assert "layernorm" in cm.kinds and "norm" in cm.kinds
    numel = np.array([512 * 4096.0])
    sh_rms = {"numel": numel, "tokens": np.array([512.0]), "op": np.array(["input_norm"], dtype=object)}
    sh_ln = {**sh_rms, "op": np.array(["input_norm@layernorm"], dtype=object)}
    t_rms = prof.predict_time("elementwise", 5.0 * numel, 4.0 * numel, sh_rms, "fp16")[0]
    t_ln = prof.predict_time("elementwise", 5.0 * numel, 4.0 * numel, sh_ln, "fp16")[0]
    assert t_ln / t_rms == pytest.approx(3.0, rel=0.15)


def test_a_profile_without_the_kernel_predicts_it_exactly_as_the_canonical_operator() -> None:
    """Profiles fitted before kernels were distinguished (every shipped GPU profile's trees) give
    bit-identical times for a LayerNorm/GELU model's operators."""
    rng = np.random.default_rng(1)
    prof = fit_profile(_samples(rng, False), DEVICE, name="k", source="synthetic", license="test")
    numel = np.geomspace(1e3, 1e8, 9)
    tok = np.round(numel / 2560.0) + 1
    for canon, kernel in (("input_norm", "layernorm"), ("residual_add", "add3"), ("mlp_act", "gelu_new")):
        a = {"numel": numel, "tokens": tok, "op": np.array([canon] * 9, dtype=object)}
        b = {**a, "op": np.array([f"{canon}@{kernel}"] * 9, dtype=object)}
        ta = prof.predict_time("elementwise", 5.0 * numel, 4.0 * numel, a, "fp16")
        tb = prof.predict_time("elementwise", 5.0 * numel, 4.0 * numel, b, "fp16")
        assert np.array_equal(ta, tb), canon
    # the shipped Vidur profiles measured phi-2's kernels (its LayerNorm, GELU, three-way add and
    # partial RoPE) but no ReLU: OPT's activation is predicted exactly as SiLU-and-multiply
    h100 = Profile.load(ROOT / "calibration/profiles/h100-sxm-vidur", with_samples=False)
    assert {"layernorm", "gelu_new", "add3", "partial_rope"} <= set(h100.models["elementwise"].kinds)
    assert "relu" not in h100.models["elementwise"].kinds
    from simkit.cost.device import ComputeDevice
    from simkit.cost.roofline import time_ops

    dev = ComputeDevice.from_gpu(default_catalog().get("gpu", "h100-sxm"))
    opt = load_model("opt-6.7b")
    ops = [o for o in forward_ops(opt, [1] * 8, [700] * 8, precision=FP16) if o.name == "mlp_act"]
    assert ops and ops[0].kernel.startswith("relu")
    plain = [dataclasses.replace(o, kernel="") for o in ops]
    assert [t.time_s for t in time_ops(ops, dev, h100, "fp16")] == [t.time_s for t in time_ops(plain, dev, h100, "fp16")]


def test_vidur_samples_name_phi2_kernels() -> None:
    df = pd.read_csv(ROOT / "calibration/profiles/h100-sxm-vidur/samples.csv", usecols=["op", "source", "kernel"], low_memory=False)
    df["kernel"] = df["kernel"].fillna("")
    phi = df[df.source == "vidur/microsoft/phi-2"]
    got = set(zip(phi.op, phi.kernel))
    assert {("input_norm", "layernorm"), ("mlp_act", "gelu_new"), ("residual_add", "add3"), ("rope", "partial_rope")} <= got
    assert set(phi[phi.op.isin(["qkv_proj", "embedding"])].kernel) == {""}
    assert set(df[df.source.str.contains("llama|Qwen|codellama", case=False)].kernel) == {""}


def test_runs_warn_about_kernels_the_profile_has_no_kind_for() -> None:
    from simkit.deployment import unmeasured_kernel_warning

    h100 = Profile.load(ROOT / "calibration/profiles/h100-sxm-vidur", with_samples=False)
    cpu = Profile.load(ROOT / "calibration/profiles/ci-vm-cpu", with_samples=False)
    assert unmeasured_kernel_warning(h100, load_model("llama-2-70b")) is None
    assert unmeasured_kernel_warning(h100, load_model("phi-2")) is None  # its kernels are in the Vidur data
    opt = load_model("opt-6.7b")
    relu = elementwise_kernels(opt)["mlp_act"]
    w = unmeasured_kernel_warning(h100, opt)
    assert w is not None and f"kernel(s) {relu} that model opt-6.7b runs" in w
    assert "h100-sxm-vidur" in w and "Llama-style" in w
    assert cpu.unmeasured_kernels(elementwise_kernels(opt)) == [elementwise_kernels(opt)["mlp_act"]]  # LayerNorm measured
    from simkit.cost.efficiency import DatasheetEfficiency

    assert unmeasured_kernel_warning(DatasheetEfficiency(), load_model("phi-2")) is None


def test_parallel_block_add_and_partial_rope_bytes() -> None:
    """The parallel block's residual ``x + attn(x) + mlp(x)`` is two additions per layer (4 reads,
    2 writes per element), and partial RoPE reads and writes the whole q and k tensors (the
    pass-through part is copied): both are counted as such, per layer, whatever the model."""
    llama = load_model("llama-2-7b")
    par = llama.model_copy(update={"parallel_attn_mlp": True, "positional": "partial_rope"})
    T, h, L = 64.0, float(llama.hidden_size), llama.num_layers
    seq = {o.name: o for o in forward_ops(llama, [int(T)], [0], precision=FP16)}
    pa = {o.name: o for o in forward_ops(par, [int(T)], [0], precision=FP16)}
    add, add3 = seq["residual_add"], pa["residual_add"]
    assert add.count == 2 * L and add.act_bytes == 3 * T * h * 2 and add.flops == T * h
    assert add3.count == L and add3.kernel == "add3"
    assert add3.act_bytes == 6 * T * h * 2 and add3.flops == 2 * T * h and add3.shape["numel"] == T * h
    # per layer, the parallel block moves the same bytes as the sequential block's two adds
    assert add3.count * add3.bytes == add.count * add.bytes
    rope, prope = seq["rope"], pa["rope"]
    assert prope.kernel == "partial_rope"
    assert prope.shape["numel"] == rope.shape["numel"] == T * (llama.q_dim + llama.kv_dim)
    assert prope.bytes == rope.bytes and prope.count == rope.count == L
