"""Calibration profiles, fitted efficiency models, the Vidur GPU profiles and collectives."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.calibrate import fit
from simkit.calibrate.store import save_profile
from simkit.cost import collectives as coll
from simkit.cost.efficiency import DatasheetEfficiency
from simkit.cost.profile import Profile, resolve_calibration
from simkit.errors import CalibrationError
from simkit.specs.calibration import find_profile
from simkit.specs.catalog import repo_path

PROFILES = repo_path("calibration", "profiles")
VIDUR = {"h100-sxm": PROFILES / "h100-sxm-vidur", "a100-80gb-sxm": PROFILES / "a100-80gb-sxm-vidur", "a40": PROFILES / "a40-vidur"}
P, BW, SM = 1e14, 1e12, 100
DEVICE = {"kind": "gpu", "name": "synthetic", "peak_flops": {"fp16": P}, "mem_bandwidth": BW, "sm_count": SM}


# ---------------------------------------------------------------------------------------------
# Synthetic samples from a known efficiency curve
# ---------------------------------------------------------------------------------------------
def true_gemm_time(m: np.ndarray, n: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A known curve: compute efficiency 0.75 m/(m+32), memory 0.8, 4 us launch."""
    F = 2.0 * m * n * k
    B = 2.0 * (n * k + m * k + m * n)
    ec = 0.75 * m / (m + 32.0)
    return F, B, 4e-6 + np.maximum(F / (P * ec), B / (BW * 0.8))


def gemm_samples(rng: np.random.Generator, count: int) -> pd.DataFrame:
    m = np.round(2.0 ** rng.uniform(0, 12, count))
    n = np.round(2.0 ** rng.uniform(9, 14, count))
    k = np.round(2.0 ** rng.uniform(9, 14, count))
    F, B, T = true_gemm_time(m, n, k)
    return pd.DataFrame({"op_class": "gemm", "op": "qkv_proj", "dtype": "fp16", "m": m, "n": n, "k": k,
                         "flops": F, "bytes_moved": B, "time_s": T, "source": "synthetic", "tp": 1})  # fmt: skip


def elementwise_samples(rng: np.random.Generator, count: int) -> pd.DataFrame:
    tokens = np.round(2.0 ** rng.uniform(0, 12, count))
    hidden = rng.choice([2048.0, 4096.0, 8192.0], count)
    numel = tokens * hidden
    B = 4.0 * numel
    T = 2e-6 + B / (BW * 0.6)
    ops = rng.choice(["input_norm", "residual_add"], count)
    return pd.DataFrame({"op_class": "elementwise", "op": ops, "dtype": "fp16", "numel": numel, "tokens": tokens,
                         "flops": 5.0 * numel, "bytes_moved": B, "time_s": T, "source": "synthetic", "tp": 1})  # fmt: skip


def extra_samples() -> pd.DataFrame:
    rows = []
    for size in (1e4, 1e5, 1e6, 1e7, 1e8):
        rows.append({"op_class": "copy", "op": "h2d", "direction": "h2d", "pinned": 1, "bytes": size,
                     "bytes_moved": size, "time_s": 10e-6 + size / 25e9, "dtype": "fp32"})  # fmt: skip
        rows.append({"op_class": "copy", "op": "memcpy", "direction": "host", "pinned": 0, "bytes": size,
                     "bytes_moved": 2 * size, "time_s": 1e-6 + size / 10e9, "dtype": "fp32"})  # fmt: skip
    for s in np.geomspace(4e3, 1e8, 40):
        rows.append({"op_class": "collective", "op": "all_reduce", "bytes": s, "num_gpus": 4, "topology": "nvswitch",
                     "time_s": float(coll.all_reduce_time(s, 4, 300e9, 5e-6)), "dtype": "fp16"})  # fmt: skip
    for op in ("qkv_proj", "residual_add"):
        rows.append({"op_class": "launch", "op": op, "time_s": 3e-6, "dtype": "fp16"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def synthetic_profile() -> Profile:
    rng = np.random.default_rng(0)
    df = pd.concat([gemm_samples(rng, 600), elementwise_samples(rng, 300), extra_samples()], ignore_index=True)
    return fit.fit_profile(df, DEVICE, name="synthetic", source="test", license="CC0")


def test_fit_recovers_known_efficiency_curve():
    rng = np.random.default_rng(1)
    train = gemm_samples(rng, 800)
    cm = fit.fit_class(fit.prepare(train, "gemm"), "gemm", fit.Roof({"fp16": P}, BW, SM))
    test = gemm_samples(np.random.default_rng(2), 400)  # shapes never seen
    pred = cm.predict_time(test.flops.values, test.bytes_moved.values, {k: test[k].values for k in "mnk"}, "fp16")
    ape = np.abs(pred / test.time_s.values - 1)
    assert np.median(ape) < 0.03 and np.quantile(ape, 0.9) < 0.06
    # compute-bound shapes: the recovered efficiency (ideal / busy time) matches the curve
    big = (test.m.values >= 512) & (test.n.values >= 4096) & (test.k.values >= 4096)
    eff = cm.efficiency(test.flops.values[big], test.bytes_moved.values[big],
                        {k: test[k].values[big] for k in "mnk"}, "fp16")  # fmt: skip
    m = test.m.values[big]
    true_eff = 0.75 * m / (m + 32.0)
    assert np.median(np.abs(eff / true_eff - 1)) < 0.03


def test_profile_round_trip_gives_equal_predictions(synthetic_profile: Profile, tmp_path: Path):
    prof = synthetic_profile
    save_profile(prof, tmp_path / "p")
    assert {p.name for p in (tmp_path / "p").iterdir()} == {"profile.yaml", "samples.csv", "models.json"}
    back = Profile.load(tmp_path / "p")
    rng = np.random.default_rng(3)
    g = gemm_samples(rng, 50)
    shape = {k: g[k].values for k in "mnk"}
    for p in (prof, back):
        assert p.is_measured("gemm") and p.is_measured("elementwise") and not p.is_measured("attn_decode")
    a = prof.efficiency("gemm", g.flops.values, g.bytes_moved.values, shape, P, BW, "fp16")
    b = back.efficiency("gemm", g.flops.values, g.bytes_moved.values, shape, P, BW, "fp16")
    np.testing.assert_allclose(a, b, rtol=1e-9)
    e = elementwise_samples(rng, 20)
    for with_tokens in (True, False):
        sh = {"numel": e.numel.values, "op": e.op.values} | ({"tokens": e.tokens.values} if with_tokens else {})
        np.testing.assert_allclose(
            prof.predict_time("elementwise", e.flops.values, e.bytes_moved.values, sh, "fp16"),
            back.predict_time("elementwise", e.flops.values, e.bytes_moved.values, sh, "fp16"),
            rtol=1e-9,
        )
    for cls in ("gemm", "elementwise", "attn_prefill", "attn_decode"):
        assert back.launch_overhead(cls) == pytest.approx(prof.launch_overhead(cls), rel=1e-5)
    assert back.launch_overhead("gemm") == pytest.approx(3e-6)  # the measured launch rows
    assert back.links["h2d_pinned"]["bandwidth"] == pytest.approx(25e9, rel=1e-3)
    assert back.links["h2d_pinned"]["latency"] == pytest.approx(10e-6, rel=1e-3)
    assert back.links["host_memcpy"]["bandwidth"] == pytest.approx(10e9, rel=1e-3)
    f = back.collective_fit("all_reduce", "nvswitch", 4)
    s = np.geomspace(1e4, 1e8, 7)
    np.testing.assert_allclose(coll.all_reduce_time(s, 4, 1, 0, fit=f), coll.all_reduce_time(s, 4, 300e9, 5e-6), rtol=0.02)
    # unmeasured classes delegate to the datasheet defaults
    ds = DatasheetEfficiency()
    args = (np.array([1e12]), np.array([1e9]), {}, P, BW, "fp16")
    assert back.efficiency("attn_decode", *args) == pytest.approx(ds.efficiency("attn_decode", *args))


# ---------------------------------------------------------------------------------------------
# Errors name the file and the key
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def saved(synthetic_profile: Profile, tmp_path: Path) -> Path:
    d = tmp_path / "prof"
    save_profile(synthetic_profile, d)
    return d


def _edit(d: Path, fn) -> None:  # type: ignore[no-untyped-def]
    data = yaml.safe_load((d / "profile.yaml").read_text())
    fn(data)
    (d / "profile.yaml").write_text(yaml.safe_dump(data))


def test_missing_profile_names_the_file(tmp_path: Path):
    with pytest.raises(CalibrationError, match="nope") as e:
        Profile.load(tmp_path / "nope")
    assert "not found" in str(e.value)


def test_corrupt_yaml_names_the_file(saved: Path):
    (saved / "profile.yaml").write_text("simkit_profile: 1\nname: [unclosed\n")
    with pytest.raises(CalibrationError, match=r"profile\.yaml.*malformed YAML"):
        Profile.load(saved)


def test_wrong_version_and_missing_key(saved: Path):
    _edit(saved, lambda d: d.update(simkit_profile=2))
    with pytest.raises(CalibrationError, match=r"profile\.yaml: simkit_profile: unsupported profile version"):
        Profile.load(saved)
    _edit(saved, lambda d: d.update(simkit_profile=1))
    _edit(saved, lambda d: d["efficiency"]["gemm"]["model"]["base"].pop("launch_s"))
    with pytest.raises(CalibrationError, match=r"profile\.yaml: efficiency\.gemm\.model\.base\.launch_s: required key"):
        Profile.load(saved)
    _edit(saved, lambda d: d.pop("device"))
    with pytest.raises(CalibrationError, match=r"profile\.yaml: device: required key"):
        Profile.load(saved)


def test_unreadable_samples_and_models(saved: Path):
    (saved / "samples.csv").write_bytes(b"")
    with pytest.raises(CalibrationError, match=r"samples\.csv"):
        Profile.load(saved)
    (saved / "samples.csv").unlink()
    with pytest.raises(CalibrationError, match=r"samples\.csv"):
        Profile.load(saved)
    Profile.load(saved, with_samples=False)  # the fitted models alone still load
    (saved / "models.json").write_text("{not json")
    with pytest.raises(CalibrationError, match=r"models\.json"):
        Profile.load(saved, with_samples=False)


def test_resolve_calibration(saved: Path):
    eff, info, warn = resolve_calibration("none", "gpu", "h100-sxm")
    assert isinstance(eff, DatasheetEfficiency) and warn is None
    eff, info, warn = resolve_calibration("auto", "gpu", "no-such-gpu")
    assert isinstance(eff, DatasheetEfficiency) and warn and "no calibration profile" in warn
    eff, info, warn = resolve_calibration(str(saved), "gpu", "h100-sxm")
    assert isinstance(eff, Profile) and eff.name == "synthetic"
    with pytest.raises(CalibrationError, match="device.kind"):
        resolve_calibration(str(saved), "cpu", "epyc-9654")
    with pytest.raises(CalibrationError, match="not found"):
        resolve_calibration(str(saved / "missing"), "gpu", "h100-sxm")


# ---------------------------------------------------------------------------------------------
# Shipped Vidur profiles
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def h100() -> Profile:
    return Profile.load(VIDUR["h100-sxm"], with_samples=False)


def test_vidur_profiles_found_and_attention_not_measured():
    for catalog, d in VIDUR.items():
        assert find_profile("gpu", catalog) == d / "profile.yaml"
        prof = Profile.load(d, with_samples=False)
        assert prof.is_measured("gemm") and prof.is_measured("elementwise")
        for cls in ("attn_prefill", "attn_decode"):
            assert not prof.is_measured(cls)
            assert "no attention timings in the source data" in prof.notes[cls]
            assert "not a measurement" in prof.notes[cls]
        assert (repo_path("calibration") / "LICENSE-vidur-MIT.txt").exists()
        assert "MIT" in prof.license
    assert find_profile("gpu", "no-such-gpu") is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    m=st.integers(1, 8192),
    n=st.sampled_from([1024, 2560, 4096, 5120, 8192, 14336, 28672]),
    k=st.sampled_from([1024, 2560, 4096, 8192, 11008]),
    f1=st.floats(1e3, 1e13),
    f2=st.floats(1e3, 1e13),
    b1=st.floats(1e3, 1e10),
    b2=st.floats(1e3, 1e10),
)
def test_predicted_time_monotone_in_flops_and_bytes(h100: Profile, m, n, k, f1, f2, b1, b2):
    shape = {"m": np.array([m] * 4, float), "n": np.array([n] * 4, float), "k": np.array([k] * 4, float)}
    lo_f, hi_f = sorted((f1, f2))
    lo_b, hi_b = sorted((b1, b2))
    t = h100.predict_time("gemm", [lo_f, hi_f, lo_f, lo_f], [lo_b, lo_b, lo_b, hi_b], shape, "fp16")
    assert t[1] >= t[0] * (1 - 1e-12) and t[3] >= t[2] * (1 - 1e-12)
    es = {"numel": np.array([m * n] * 4, float), "op": np.array(["input_norm"] * 4)}
    t = h100.predict_time("elementwise", [lo_f, hi_f, lo_f, lo_f], [lo_b, lo_b, lo_b, hi_b], es, "fp16")
    assert t[1] >= t[0] * (1 - 1e-12) and t[3] >= t[2] * (1 - 1e-12)


def _stored_lomo(catalog: str, cls: str) -> dict:
    data = yaml.safe_load((VIDUR[catalog] / "profile.yaml").read_text())
    return data["efficiency"][cls]["cross_validation"]["per_model"]


def test_shipped_lomo_numbers_are_what_a_fit_reproduces():
    """Refit one leave-one-model-out fold of the H100 profile from its samples.csv and compare with
    the numbers stored in profile.yaml (and the linear-layer goal for that model)."""
    from simkit.calibrate.vidur import LINEAR, model_of

    data = yaml.safe_load((VIDUR["h100-sxm"] / "profile.yaml").read_text())
    df = pd.read_csv(VIDUR["h100-sxm"] / "samples.csv", low_memory=False)
    df = df[df.op_class == "gemm"]
    df = df.assign(model=df.source.map(model_of))
    tab = fit.leave_one_out(df, "model", op_class="gemm", device=data["device"], ops=LINEAR, groups=["Qwen-72B"], datasheet=True)
    row = tab.iloc[0]
    stored = _stored_lomo("h100-sxm", "gemm")["Qwen-72B"]
    assert row.median_ape == pytest.approx(stored["median_ape"], abs=2e-3)
    assert row.p90_ape == pytest.approx(stored["p90_ape"], abs=5e-3)
    assert row.datasheet_p90_ape == pytest.approx(stored["datasheet_p90_ape"], abs=2e-3)
    assert row.median_ape <= 0.05 and row.p90_ape <= 0.12
    assert row.datasheet_median_ape > 2 * row.median_ape


def test_stored_lomo_errors_bounds():
    """Regression guard on the stored leave-one-model-out errors (docs/fidelity.md has the table):
    every left-out model beats the datasheet roofline; the 34B-72B models meet the 5% / 12% goal;
    the small models (phi-2, Llama-2-7B: shapes no other model has) stay within 7% / 20%."""
    for catalog in VIDUR:
        for model, e in _stored_lomo(catalog, "gemm").items():
            assert e["median_ape"] < e["datasheet_median_ape"] and e["p90_ape"] < e["datasheet_p90_ape"]
            if model in ("CodeLlama-34b-Instruct-hf", "Qwen-72B"):
                assert e["median_ape"] <= 0.05 and e["p90_ape"] <= 0.12, (catalog, model, e)
            else:
                assert e["median_ape"] <= 0.07 and e["p90_ape"] <= 0.20, (catalog, model, e)


def test_time_ops_with_vidur_profile_matches_its_samples(h100: Profile):
    """End to end through the cost model: forward_ops + time_ops with the H100 profile reproduce
    Vidur's measured Llama-2-70B projection times at TP 2."""
    from simkit.cost.device import ComputeDevice
    from simkit.cost.ops import Precision, forward_ops
    from simkit.cost.roofline import time_ops
    from simkit.specs.catalog import default_catalog, load_model

    cat = default_catalog()
    dev = ComputeDevice.from_gpu(cat.get("gpu", "h100-sxm"))
    model = load_model("llama-2-70b")
    df = pd.read_csv(VIDUR["h100-sxm"] / "samples.csv", usecols=["op", "source", "tp", "tokens", "time_s"])
    df = df[(df.source == "vidur/meta-llama/Llama-2-70b-hf") & (df.tp == 2)]
    errs = []
    for tokens in (1, 64, 512, 2048):
        ops = forward_ops(model, [tokens], [0], tp=2, precision=Precision("fp16", "fp16", "fp16"))
        for ot in time_ops(ops, dev, h100, "fp16"):
            if ot.op.name in ("qkv_proj", "o_proj", "mlp_up", "mlp_down"):
                meas = df[(df.op == ot.op.name) & (df.tokens == tokens)].time_s.median()
                errs.append(abs(ot.time_s / meas - 1))
    assert np.median(errs) < 0.05 and max(errs) < 0.25


def test_efficiency_call_is_fast_when_repeated(h100: Profile):
    shape = {"m": np.array([7.0, 7.0, 7.0, 7.0]), "n": np.array([10240.0, 8192.0, 57344.0, 8192.0]),
             "k": np.array([8192.0, 8192.0, 8192.0, 28672.0]), "op": np.array(["qkv_proj", "o_proj", "mlp_up", "mlp_down"])}  # fmt: skip
    F = 2 * shape["m"] * shape["n"] * shape["k"]
    B = 2 * (shape["n"] * shape["k"] + shape["m"] * (shape["n"] + shape["k"]))
    first = h100.efficiency("gemm", F, B, shape, 989.4e12, 3.35e12, "fp16")
    # a repeated call is a dictionary lookup per operator: the fitted model is not evaluated again
    # (what makes it fast; checked by its mechanism, not a clock: timed tests flake on loaded machines)
    cm = h100.models["gemm"]

    def evaluated(*_a, **_k):
        raise AssertionError("the repeated call evaluated the fitted model")

    cm._raw_time = evaluated  # instance attribute: shadows the method for this object only
    try:
        for _ in range(3):
            again = h100.efficiency("gemm", F, B, shape, 989.4e12, 3.35e12, "fp16")
            assert again.tobytes() == first.tobytes()
        with pytest.raises(AssertionError, match="evaluated the fitted model"):  # a new shape does evaluate it
            h100.efficiency("gemm", F, B, {**shape, "m": shape["m"] + 1.0}, 989.4e12, 3.35e12, "fp16")
    finally:
        del cm._raw_time


def test_profile_copy_loads_elsewhere(tmp_path: Path):
    """A profile folder is self-contained (relative samples/models paths)."""
    dst = tmp_path / "copy"
    shutil.copytree(VIDUR["a40"], dst)
    prof = Profile.load(dst, with_samples=False)
    assert prof.device["catalog"] == "a40"


# ---------------------------------------------------------------------------------------------
# Collectives
# ---------------------------------------------------------------------------------------------
def test_ring_all_reduce_hand_computed():
    # p=4, 1 MB, 100 GB/s, 5 us: 2*3*5us + 2*3/4 * 1e6/1e11 = 30 us + 15 us
    assert float(coll.all_reduce_time(1e6, 4, 100e9, 5e-6)) == pytest.approx(45e-6)
    # tree, p=8: 2*3*5us + 2 * 1e6/1e11 = 30 us + 20 us
    assert float(coll.all_reduce_time(1e6, 8, 100e9, 5e-6, algorithm="tree")) == pytest.approx(50e-6)
    # all-gather / reduce-scatter ring: (p-1) a + (p-1)/p S/B
    assert float(coll.all_gather_time(1e6, 4, 100e9, 5e-6)) == pytest.approx(15e-6 + 7.5e-6)
    assert float(coll.reduce_scatter_time(1e6, 4, 100e9, 5e-6)) == pytest.approx(22.5e-6)
    assert float(coll.send_recv_time(1e6, 2, 100e9, 5e-6)) == pytest.approx(15e-6)
    assert float(coll.all_to_all_time(1e6, 4, 100e9, 5e-6)) == pytest.approx(22.5e-6)
    assert float(coll.all_reduce_time(1e6, 1, 100e9, 5e-6)) == 0.0
    np.testing.assert_allclose(coll.all_reduce_time(np.array([0.0, 2e6]), 2, 1e11, 1e-6), [0.0, 2e-6 + 2e-5])


def test_fit_collective_recovers_alpha_beta():
    s = np.geomspace(4e3, 2e8, 60)
    t = coll.all_reduce_time(s, 8, 250e9, 3e-6)
    f = coll.fit_collective("all_reduce", s, t, 8, edges=None)
    (upper, bw, lat), = f.bands
    assert math.isinf(upper) and bw == pytest.approx(250e9, rel=1e-3) and lat == pytest.approx(3e-6, rel=1e-3)
    banded = coll.fit_collective("all_reduce", s, t, 8)
    assert len(banded.bands) == 3 and banded.fit_error["p90_ape"] < 1e-3
    again = coll.CollectiveFit.from_dict("all_reduce", 8, banded.to_dict())
    np.testing.assert_allclose(coll.all_reduce_time(s, 8, 1, 0, fit=again), t, rtol=1e-4)


def test_vidur_collectives_in_profiles(h100: Profile):
    assert set(h100.collectives) >= {"nvswitch", "pairwise_nvlink"}
    assert set(h100.collectives["nvswitch"]["all_reduce"]) == {2, 4, 8}
    a40 = Profile.load(VIDUR["a40"], with_samples=False)
    assert set(a40.collectives["pairwise_nvlink"]) == {"send_recv"}
    f = h100.collective_fit("all_reduce", "nvswitch", 8)
    t = float(coll.all_reduce_time(128e6, 8, 1.0, 0.0, fit=f))
    assert 200e-6 < t < 600e-6  # Vidur measured ~340 us for 64M fp16 elements on 8 H100s


# ---------------------------------------------------------------------------------------------
# CPU GEMMs: one set of residual trees per row regime
# ---------------------------------------------------------------------------------------------
CPU = {"kind": "cpu", "name": "synthetic-cpu", "peak_flops": {"fp32": 1e11}, "mem_bandwidth": 9e10, "sm_count": 1}


def cpu_gemm_samples(rng: np.random.Generator, count: int, many_rows: bool, max_weight: float) -> pd.DataFrame:
    """A CPU-like GEMM: with <= 16 rows the weights stream from memory once per row (slower when
    they exceed a 32 MB cache); with more rows the kernel is compute-bound whatever the weights."""
    m = np.round(2.0 ** rng.uniform(5, 11, count)) if many_rows else rng.choice([1.0, 2, 3, 4, 6, 8, 12, 16], count)
    n = np.round(2.0 ** rng.uniform(9, 14, count))
    k = np.minimum(np.round(2.0 ** rng.uniform(9, 13, count)), np.floor(max_weight / (4.0 * n)))
    w = 4.0 * n * k
    F, B = 2.0 * m * n * k, 4.0 * (n * k + m * k + m * n)
    few_t = m * w / np.where(w > 32e6, 15e9, 40e9)
    T = 2e-6 + np.where(m > 16, F / 9e10, few_t)
    return pd.DataFrame({"op_class": "gemm", "op": "mlp_up", "dtype": "fp32", "m": m, "n": n, "k": k,
                         "flops": F, "bytes_moved": B, "time_s": T, "source": "synthetic", "tp": 1})  # fmt: skip


def test_cpu_profile_fits_gemm_residuals_per_row_regime(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    train = pd.concat([cpu_gemm_samples(rng, 300, False, 4e8), cpu_gemm_samples(rng, 300, True, 3e7)], ignore_index=True)
    prof = fit.fit_profile(train, CPU, name="cpu", source="test", license="CC0")
    cm = prof.models["gemm"]
    assert cm.forest is not None and cm.forest_many_rows is not None
    # prefill-sized GEMMs with weights beyond the cache (never sampled): compute-bound, as measured
    test = cpu_gemm_samples(np.random.default_rng(6), 60, True, 2e8)
    test = test[4.0 * test.n * test.k > 4e7]
    shape = {k: test[k].values for k in "mnk"}
    pred = prof.predict_time("gemm", test.flops.values, test.bytes_moved.values, shape, "fp32")
    assert np.median(np.abs(pred / test.time_s.values - 1)) < 0.05
    # few-row GEMMs keep their own trees (3 rows: three passes over the weights)
    few = cpu_gemm_samples(np.random.default_rng(7), 60, False, 4e8)
    sh = {k: few[k].values for k in "mnk"}
    pf = prof.predict_time("gemm", few.flops.values, few.bytes_moved.values, sh, "fp32")
    assert np.median(np.abs(pf / few.time_s.values - 1)) < 0.05
    # saved and loaded: the same predictions; the YAML names the regimes
    save_profile(prof, tmp_path / "c")
    model = yaml.safe_load((tmp_path / "c" / "profile.yaml").read_text())["efficiency"]["gemm"]["model"]
    assert model["residual_many_rows"]["used_when"] == "more than 16 rows (m > 16)"
    assert model["residual"]["used_when"].startswith("at most 16 rows")
    back = Profile.load(tmp_path / "c")
    for sh_, t in ((shape, test), (sh, few)):
        np.testing.assert_array_equal(
            prof.predict_time("gemm", t.flops.values, t.bytes_moved.values, sh_, "fp32"),
            back.predict_time("gemm", t.flops.values, t.bytes_moved.values, sh_, "fp32"),
        )


def test_gpu_profiles_keep_one_set_of_gemm_trees(synthetic_profile: Profile, saved: Path) -> None:
    assert synthetic_profile.models["gemm"].forest_many_rows is None
    model = yaml.safe_load((saved / "profile.yaml").read_text())["efficiency"]["gemm"]["model"]
    assert "residual_many_rows" not in model and "used_when" not in model["residual"]


def test_row_regimes_only_for_gemm(saved: Path) -> None:
    def add(d: dict) -> None:
        d["efficiency"]["elementwise"]["model"]["residual_many_rows"] = dict(d["efficiency"]["elementwise"]["model"]["residual"])

    _edit(saved, add)
    with pytest.raises(CalibrationError) as e:
        Profile.load(saved)
    assert "efficiency.elementwise.model.residual_many_rows" in str(e.value)


def test_many_row_trees_need_the_few_row_ones(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    train = pd.concat([cpu_gemm_samples(rng, 60, False, 4e8), cpu_gemm_samples(rng, 60, True, 3e7)], ignore_index=True)
    save_profile(fit.fit_profile(train, CPU, name="cpu", source="test", license="CC0"), tmp_path / "c")
    _edit(tmp_path / "c", lambda d: d["efficiency"]["gemm"]["model"].pop("residual"))
    with pytest.raises(CalibrationError) as e:
        Profile.load(tmp_path / "c")
    assert "efficiency.gemm.model.residual" in str(e.value) and "at most 16 rows" in str(e.value)


# ---------------------------------------------------------------------------------------------
# Attention: a roofline base per dtype (a CPU runs other attention kernels per dtype)
# ---------------------------------------------------------------------------------------------
CPU_DEVICE = {"kind": "cpu", "name": "synthetic-cpu", "peak_flops": {"fp32": 1e11, "bf16": 2e11}, "mem_bandwidth": 5e10, "sm_count": 1}
DECODE_RATE = {"fp32": 1.1e10, "bf16": 2.2e9}
"""Effective FLOP/s of the synthetic decode attention per dtype: bf16 at a fifth of fp32's rate
although its peak is twice fp32's (the CI VM's SDPA, docs/fidelity.md)."""


def decode_attention_samples(rng: np.random.Generator, count: int, heads: tuple[tuple[int, int, int], ...]) -> pd.DataFrame:
    rows = []
    for _ in range(count):
        h, kvh, d = heads[int(rng.integers(len(heads)))]
        b = int(rng.choice([1, 2, 4, 8, 16]))
        c = float(np.round(2.0 ** rng.uniform(6, 12)))
        for dt, eb in (("fp32", 4), ("bf16", 2)):
            kv_tokens = b * (c + 1.0)
            F = 4.0 * h * d * kv_tokens
            B = 2.0 * kv_tokens * kvh * d * eb
            rows.append({"op_class": "attn_decode", "op": "attn_decode", "dtype": dt, "batch": b, "tokens": b, "ctx": kv_tokens,
                         "heads": h, "kv_heads": kvh, "head_dim": d, "flops": F, "bytes_moved": B,
                         "time_s": 5e-6 + F / DECODE_RATE[dt], "source": "synthetic"})  # fmt: skip
    return pd.DataFrame(rows)


def test_attention_gets_a_base_per_dtype_and_predicts_unseen_head_shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    train = decode_attention_samples(np.random.default_rng(0), 40, ((8, 8, 64), (32, 8, 128), (16, 2, 128), (4, 1, 128)))
    test = decode_attention_samples(np.random.default_rng(1), 30, ((14, 2, 64), (10, 2, 128), (20, 4, 64)))  # never seen

    def errors(prof: Profile) -> dict[str, float]:
        cm = prof.models["attn_decode"]
        out = {}
        for dt in ("fp32", "bf16"):
            t = test[test.dtype == dt]
            shape = {k: t[k].values.astype(float) for k in ("tokens", "ctx", "batch", "heads", "kv_heads", "head_dim")}
            pred = cm.predict_time(t.flops.values, t.bytes_moved.values, shape, dt)
            out[dt] = float(np.median(np.abs(pred / t.time_s.values - 1)))
        return out

    prof = fit.fit_profile(train, CPU_DEVICE, name="perdtype", source="test", license="CC0")
    cm = prof.models["attn_decode"]
    assert set(cm.base_by_dtype) == {"fp32", "bf16"}
    err = errors(prof)
    assert max(err.values()) < 0.03, err
    # one base for both dtypes cannot describe a kernel that is slower in bf16 than in fp32
    monkeypatch.setattr(fit, "BASE_PER_DTYPE_CLASSES", ())
    shared = fit.fit_profile(train, CPU_DEVICE, name="shared", source="test", license="CC0")
    assert not shared.models["attn_decode"].base_by_dtype
    err_shared = errors(shared)
    assert max(err_shared.values()) > 3 * max(err.values()), (err, err_shared)
    # saved and loaded: the same bases, the same predictions
    save_profile(prof, tmp_path / "p")
    back = Profile.load(tmp_path / "p")
    assert back.models["attn_decode"].base_by_dtype == cm.base_by_dtype
    assert errors(back) == err
    text = (tmp_path / "p" / "profile.yaml").read_text()
    assert "base_by_dtype:" in text


def test_a_dtype_with_too_few_samples_keeps_the_shared_base():
    df = decode_attention_samples(np.random.default_rng(2), 40, ((8, 8, 64), (32, 8, 128)))
    few_bf16 = df[(df.dtype == "fp32") | (df.index < 2 * (fit.MIN_SAMPLES_PER_DTYPE_BASE - 1))]
    assert 0 < int((few_bf16.dtype == "bf16").sum()) < fit.MIN_SAMPLES_PER_DTYPE_BASE
    cm = fit.fit_class(fit.prepare(few_bf16, "attn_decode"), "attn_decode", fit.roof_from_device(CPU_DEVICE))
    assert cm.base_by_dtype == {}


def test_malformed_base_by_dtype_is_a_clear_error(tmp_path: Path):
    prof = fit.fit_profile(decode_attention_samples(np.random.default_rng(3), 20, ((8, 8, 64),)), CPU_DEVICE,
                           name="p", source="test", license="CC0")  # fmt: skip
    save_profile(prof, tmp_path / "p")
    path = tmp_path / "p" / "profile.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["efficiency"]["attn_decode"]["model"]["base_by_dtype"]["bf16"].pop("sharpness")
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CalibrationError, match="required key is missing") as e:
        Profile.load(tmp_path / "p")
    assert "efficiency.attn_decode.model.base_by_dtype.bf16.sharpness" in str(e.value)
    doc["efficiency"]["attn_decode"]["model"]["base_by_dtype"] = [1, 2]
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CalibrationError, match="expected a mapping of dtype") as e:
        Profile.load(tmp_path / "p")
    assert str(path) in str(e.value)


def test_profiles_fitted_before_per_dtype_bases_predict_as_before():
    cpu = Profile.load(PROFILES / "ci-vm-cpu", with_samples=False)
    assert all(not cm.base_by_dtype for cm in cpu.models.values())


def test_gpu_elementwise_base_counts_bytes_only(synthetic_profile: Profile, saved: Path):
    """GPU elementwise: the base is launch + bytes / (bandwidth x efficiency), so the FLOPs counted
    for a kernel do not move its time; a CPU profile (and every other class) keeps both terms."""
    cm = synthetic_profile.models["elementwise"]
    assert cm.base_bytes_only and not synthetic_profile.models["gemm"].base_bytes_only
    assert cm.base.compute_efficiency == cm.base.sharpness == 1.0
    # the synthetic curve is 2 us + B / (0.6 BW): the base recovers it
    assert cm.base.memory_efficiency == pytest.approx(0.6, rel=0.02) and cm.base.launch_s == pytest.approx(2e-6, rel=0.05)
    shape = {"numel": np.array([4096.0 * 64]), "tokens": np.array([64.0]), "op": np.array(["input_norm"], dtype=object)}
    B = np.array([4.0 * 4096 * 64])
    t_few = cm.predict_time(np.array([1.0]), B, shape, "fp16", memo=False)
    t_many = cm.predict_time(np.array([1e12]), B, shape, "fp16", memo=False)
    assert t_few == t_many
    doc = yaml.safe_load((saved / "profile.yaml").read_text())
    assert doc["efficiency"]["elementwise"]["model"]["base_inputs"] == "bytes"
    assert "base_inputs" not in doc["efficiency"]["gemm"]["model"]
    assert Profile.load(saved).models["elementwise"].base_bytes_only
    assert fit.bytes_only_base("elementwise", {"kind": "gpu"}) and fit.bytes_only_base("elementwise", {})
    assert not fit.bytes_only_base("elementwise", {"kind": "cpu"}) and not fit.bytes_only_base("gemm", {"kind": "gpu"})
    cpu = Profile.load(PROFILES / "ci-vm-cpu", with_samples=False)
    assert not any(m.base_bytes_only for m in cpu.models.values())
    assert all(Profile.load(p, with_samples=False).models["elementwise"].base_bytes_only for p in VIDUR.values())


def test_unknown_base_inputs_is_a_clear_error(saved: Path, tmp_path: Path):
    shutil.copytree(saved, tmp_path / "p")
    path = tmp_path / "p" / "profile.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["efficiency"]["elementwise"]["model"]["base_inputs"] = "flops"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CalibrationError, match="expected one of flops_and_bytes, bytes, got 'flops'") as e:
        Profile.load(tmp_path / "p")
    assert "efficiency.elementwise.model.base_inputs" in str(e.value) and str(path) in str(e.value)
