"""The GPU linear-layer error analysis of docs/fidelity.md: held-out predictions per row
(simkit.calibrate.fit.leave_one_out_predictions) and benchmarks/fidelity.py's breakdown of the
held-out error and of what the measurements themselves allow (linear_error_breakdown, linear_floor)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from simkit.calibrate import fit
from tests.conftest import load_benchmark

DEVICE = {"peak_flops": {"fp16": 1e15}, "mem_bandwidth": 3e12, "sm_count": 132}


def _gemm_rows(model: str, shapes: list[tuple[int, int]], tokens: list[int], times: dict | None = None) -> list[dict]:
    rows = []
    for op, (n, k) in zip(("qkv_proj", "o_proj", "mlp_up", "mlp_down"), shapes):
        for m in tokens:
            flops = 2.0 * m * n * k
            nbytes = 2.0 * (m * k + k * n + m * n)
            t = (times or {}).get((op, m), 4e-6 + max(flops / 6e14, nbytes / 2.4e12))
            rows.append({"op_class": "gemm", "op": op, "dtype": "fp16", "m": m, "n": n, "k": k, "tokens": m,
                         "flops": flops, "bytes_moved": nbytes, "time_s": t, "source": f"vidur/org/{model}", "tp": 1,
                         "model": model})  # fmt: skip
    return rows


def _samples() -> pd.DataFrame:
    tokens = [1, 8, 16, 32, 64, 128, 256, 512, 1024]
    big = [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)]
    small = [(7680, 2560), (2560, 2560), (10240, 2560), (2560, 10240)]
    return pd.DataFrame(_gemm_rows("big-a", big, tokens) + _gemm_rows("big-b", big, tokens) + _gemm_rows("small", small, tokens))


def test_leave_one_out_is_the_aggregate_of_its_predictions():
    df = _samples()
    pred = fit.leave_one_out_predictions(df, "model", op_class="gemm", device=DEVICE)
    tab = fit.leave_one_out(df, "model", op_class="gemm", device=DEVICE, datasheet=True)
    assert list(tab.group) == ["big-a", "big-b", "small"] == list(dict.fromkeys(pred.group))
    for _, row in tab.iterrows():
        te = pred[pred.group == row.group]
        assert len(te) == row.n == 36
        assert (te.model == row.group).all()
        assert row.median_ape == fit.ape_stats(te.pred.values, te.time_s.values)["median_ape"]
    again = fit.leave_one_out_predictions(df, "model", op_class="gemm", device=DEVICE)
    assert np.array_equal(pred.pred.values, again.pred.values)  # deterministic
    only = fit.leave_one_out_predictions(df, "model", op_class="gemm", device=DEVICE, ops=["o_proj"], groups=["small"])
    assert set(only.op) == {"o_proj"} and set(only.group) == {"small"} and len(only) == 9


def test_breakdown_splits_rows_by_distance_to_training_shapes():
    fid = load_benchmark("fidelity")
    df = _samples()
    pred = df.assign(group=df.model, pred=df.time_s * 1.1)
    pred.loc[pred.model == "small", "pred"] = pred.time_s * 0.8
    out = fid.linear_error_breakdown(pred)
    # big-a's shapes are all big-b's: every row "same"; small's are > 0.3 octave from them
    assert out["big-a"]["same"]["n"] == 36 and out["big-a"]["near"]["n"] == out["big-a"]["far"]["n"] == 0
    assert out["big-a"]["same"]["median_ape"] == pytest.approx(0.1)
    assert out["big-a"]["same"]["signed_median"] == pytest.approx(0.1)
    assert out["small"]["far"]["n"] == 36 and out["small"]["far"]["signed_median"] == pytest.approx(-0.2)
    near = pd.DataFrame(_gemm_rows("near", [(12288, 4096 + 512)], [64]))  # log2(4608/4096) = 0.17 octave
    out = fid.linear_error_breakdown(pd.concat([pred, near.assign(group="near", pred=near.time_s)]))
    assert out["near"]["near"]["n"] == 1 and out["near"]["near"]["median_ape"] == 0.0


def test_floor_measures_repeats_other_models_and_inversions():
    fid = load_benchmark("fidelity")
    tokens = [8, 16, 24, 32, 40]
    # one curve that falls by 20% from 24 to 32 tokens (a slower kernel picked at 24), measured twice at 40 tokens
    t = {("o_proj", m): v for m, v in zip(tokens, [10e-6, 11e-6, 15e-6, 12e-6, 13e-6])}
    a = _gemm_rows("a", [(1, 1), (4096, 4096)], tokens, t)[len(tokens):]
    a.append({**a[-1], "time_s": 13e-6 * 1.05})
    b = _gemm_rows("b", [(1, 1), (4096, 4096)], tokens, {("o_proj", m): v * 1.02 for (_, m), v in t.items()})[len(tokens):]
    out = fid.linear_floor(pd.DataFrame(a + b), ("o_proj",))
    fa = out["a"]
    assert fa["repeat"][2] == 1 and fa["repeat"][0] == pytest.approx(0.05)
    assert fa["other_model"][2] == 5 and fa["other_model"][0] == pytest.approx(1 - 1 / 1.02)
    # the 24-token row is 25% slower than 32 tokens: 1 of 5 rows inverted; the best monotone fit errs there
    assert fa["inverted"] == pytest.approx(0.2)
    assert 0.0 < fa["monotone"][1] < 0.25
    smooth = {("o_proj", m): (10 + m) * 1e-6 for m in tokens}
    c = _gemm_rows("c", [(1, 1), (4096, 4096)], tokens, smooth)[len(tokens):]
    fc = fid.linear_floor(pd.DataFrame(c), ("o_proj",))["c"]
    assert fc["inverted"] == 0.0 and fc["monotone"] == pytest.approx((0.0, 0.0), abs=1e-12) and fc["repeat"][2] == 0 and fc["other_model"][2] == 0


def test_elementwise_breakdown_per_operator_kind_and_few_tokens():
    fid = load_benchmark("fidelity")
    rows = []
    for model, kern in (("a", ""), ("b", "layernorm")):
        for op in ("input_norm", "post_attn_norm", "mlp_act"):
            for tok in (1, 64, 512, 4096):
                rows.append({"op_class": "elementwise", "op": op, "kernel": kern if op != "mlp_act" else "", "dtype": "fp16",
                             "numel": tok * 4096.0, "tokens": float(tok), "flops": 5.0 * tok * 4096, "bytes_moved": 4.0 * tok * 4096,
                             "time_s": 1e-5, "group": model})  # fmt: skip
    pred = pd.DataFrame(rows)
    # a: every norm 10% too slow; b: its LayerNorm 20% too fast up to 64 tokens, 40% too slow above
    slow = np.where(pred.tokens <= 64, 0.8, 1.4)
    pred["pred"] = pred.time_s * np.where(pred.group == "a", 1.1, np.where(pred.op == "mlp_act", 1.0, slow))
    out = fid.elementwise_error_breakdown(pred)
    assert set(out) == {"a", "b"} and list(out["a"]) == list(fid.EW_KINDS)
    na = out["a"]["norm"]
    assert na["n"] == 8 and na["median_ape"] == pytest.approx(0.1) and na["signed_median"] == pytest.approx(0.1)
    nb = out["b"]["norm"]  # a kernel of its own (layernorm) counts under the operator it implements
    assert nb["n"] == 8 and nb["signed_median_few_tokens"] == pytest.approx(-0.2) and nb["p90_ape"] == pytest.approx(0.4)
    assert out["b"]["act"]["median_ape"] == 0.0 and out["b"]["rope"]["n"] == 0
    assert np.isnan(out["b"]["rope"]["median_ape"]) and np.isnan(out["b"]["rope"]["signed_median"])
