"""benchmarks/host_attention_codes.py: the systems' host attention codes it times compute attention."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    return load_benchmark("host_attention_codes")


@pytest.mark.torch
@pytest.mark.parametrize("code", ["flexgen", "zero-opt", "zero-llama", "zero-bloom"])
def test_each_code_computes_the_same_attention(code: str) -> None:
    torch = pytest.importorskip("torch")
    hb = _bench()
    shape = hb.Shape(batch=2, heads=8, kv_heads=2 if code == "zero-llama" else 8, length=37, max_length=45, head_dim=16)
    parts, out = hb.make_step(code, shape, seed=3)()
    ref = hb.reference_attention(shape, seed=3)
    assert out.shape == (2, 8, 16)
    # fp32 arithmetic over fp16-exact data against a float64 reference
    assert torch.allclose(out.double(), ref, atol=1e-5, rtol=1e-4)
    assert all(sec >= 0.0 for sec in parts.values())
    assert "q.k" in parts and "p.v" in parts
    if code in ("flexgen", "zero-bloom"):
        assert {"k upcast", "v upcast"} <= set(parts)
    if code == "zero-llama":
        assert {"k repeat_kv", "v repeat_kv"} <= set(parts)


@pytest.mark.torch
def test_multi_head_codes_refuse_grouped_query_shapes() -> None:
    pytest.importorskip("torch")
    hb = _bench()
    with pytest.raises(ValueError, match="multi-head"):
        hb.make_step("zero-opt", hb.Shape(1, 8, 2, 4, 4, 8))
    with pytest.raises(ValueError, match="unknown code"):
        hb.make_step("vllm", hb.Shape(1, 8, 8, 4, 4, 8))


def test_model_bytes_are_simkits_byte_model() -> None:
    hb = _bench()
    assert hb.model_bytes(56, 56, fp32_cache=False) == pytest.approx(10.0)  # FlexGen: 2 + 4 + 4
    assert hb.model_bytes(56, 56, fp32_cache=True) == pytest.approx(4.0)  # ZeRO-Inference OPT: in place
    assert hb.model_bytes(64, 8, fp32_cache=True) == pytest.approx(8.5)  # LLaMA-2-70B: 4/8 + 4 + 4


@pytest.mark.torch
def test_every_code_is_timed_and_the_fresh_write_cost_measured() -> None:
    pytest.importorskip("torch")
    hb = _bench()
    shapes = {c: hb.Shape(1, 8, 2 if c == "zero-llama" else 8, 20, 24, 16) for c in hb.CODES}
    best = hb.time_codes(shapes, rounds=1)
    assert set(best) == set(hb.CODES)
    assert all(sum(p.values()) > 0.0 for p in best.values())
    fw = hb.fresh_write_cost(1, rounds=1)
    assert set(fw) == {"upcast, fresh", "upcast, reused", "fp32 copy, fresh", "fp32 copy, reused", "fp32 read"}
    assert all(v > 0.0 for v in fw.values())
