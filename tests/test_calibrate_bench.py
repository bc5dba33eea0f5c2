"""simkit calibrate / simkit validate: the microbenchmark suite, the SSD benchmark, the end-to-end
pipeline (measure -> fit -> save -> load -> predict) and the profile/run consistency checks.

The torch tests run the ``--tiny`` suite (a few seconds on 2 cores): the same code paths as
``--quick`` and the full suite, over fewer configurations.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from simkit.calibrate.ssd import filesystem_of, ssd_bench
from simkit.errors import CalibrationError
from tests.conftest import load_benchmark

REQUIRED = (
    "op_class", "op", "dtype", "m", "n", "k", "numel", "batch", "tokens", "ctx", "heads", "kv_heads",
    "head_dim", "bytes", "flops", "bytes_moved", "time_s", "time_s_p10", "time_s_p90", "reps", "source", "tp",
)

TINY_MODEL = ["--layers", "1", "--hidden", "128", "--heads", "4", "--kv-heads", "2", "--ffn", "256", "--vocab", "512"]


# ---------------------------------------------------------------------------------------------
# No torch needed
# ---------------------------------------------------------------------------------------------
def test_missing_torch_says_how_to_install(monkeypatch):
    from simkit.calibrate import bench

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(CalibrationError, match=r"simkit\[calibrate\]"):
        bench.require_torch()


@pytest.mark.parametrize("direct", [None, False])
def test_ssd_bench_on_tmp(tmp_path, direct):
    rows, facts = ssd_bench(
        tmp_path / "ssd", file_mb=4, block_sizes=(4096, 1 << 20), queue_depths=(1, 2), budget_s=0.02, min_reps=2,
        direct=direct,
    )
    assert {r["op_class"] for r in rows} == {"ssd_read", "ssd_write", "ssd_seq_read"}
    assert len(rows) == 3 * 2 * 2
    for r in rows:
        assert r["time_s"] > 0 and math.isfinite(r["time_s"])
        assert r["time_s_p10"] <= r["time_s"] <= r["time_s_p90"]
        assert r["bytes_moved"] >= r["block_size"]
        assert r["queue_depth"] == r["threads"]
        assert r["op"] == ("direct" if facts["direct_io"] else "buffered")
        assert len(r["raw_times"].split(";")) == r["reps"]
        for c in REQUIRED:
            assert c in r
    assert isinstance(facts["direct_io"], bool)
    if direct is False:
        assert facts["direct_io"] is False  # the buffered + fadvise(DONTNEED) fallback
    assert facts["read_bandwidth"] > 0 and facts["write_bandwidth"] > 0 and facts["seq_read_bandwidth"] > 0
    assert facts["filesystem"] == filesystem_of(tmp_path)
    assert not list((tmp_path / "ssd").iterdir())  # the scratch file is removed


def test_ssd_bench_unwritable_dir_is_an_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CalibrationError):
        ssd_bench(f / "sub", file_mb=1)


# ---------------------------------------------------------------------------------------------
# torch: the suite, end to end
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def keep_threads():
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    """`simkit calibrate --device cpu --tiny` through the CLI: measure, fit, save."""
    torch = pytest.importorskip("torch")
    from simkit.calibrate.cli_calibrate import main

    n = torch.get_num_threads()
    out = tmp_path_factory.mktemp("cal") / "tiny-cpu"
    ssd = tmp_path_factory.mktemp("ssd")
    try:
        rc = main(["--device", "cpu", "--tiny", "--out", str(out), "--ssd-dir", str(ssd), "--threads", "1",
                   "--dtypes", "fp32", "--catalog", "generic-2core-vm"])
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    return out


@pytest.mark.torch
def test_calibrate_writes_profile_and_samples(tiny_profile):
    import pandas as pd

    assert (tiny_profile / "profile.yaml").exists()
    assert (tiny_profile / "samples.csv").exists()
    df = pd.read_csv(tiny_profile / "samples.csv")
    for c in REQUIRED:
        assert c in df.columns, c
    classes = set(df.op_class)
    assert {"gemm", "attn_prefill", "attn_decode", "elementwise", "copy", "mem_bw", "launch", "ssd_read", "ssd_write",
            "ssd_seq_read"} <= classes
    assert (df.time_s > 0).all()
    assert (df.time_s_p10 <= df.time_s * (1 + 1e-9)).all() and (df.time_s <= df.time_s_p90 * (1 + 1e-9)).all()
    assert set(df[df.op_class == "gemm"].dtype) == {"fp32"}
    assert (df.raw_times.astype(str).str.split(";").str.len() == df.reps.astype(int)).all()


@pytest.mark.torch
def test_calibrated_profile_carries_this_machines_fingerprint(tiny_profile):
    """The profile `simkit calibrate` writes identifies this machine: the probe's fingerprint
    check matches, and it describes catalog generic-2core-vm well enough for calibration: auto."""
    from simkit.calibrate.bench import local_cpu_fingerprint
    from simkit.calibrate.probe import fingerprint_check
    from simkit.cost.profile import Profile
    from simkit.specs.calibration import compare_fingerprints

    prof = Profile.load(tiny_profile)
    assert prof.fingerprint == local_cpu_fingerprint(1)
    assert fingerprint_check(prof, 1).matches
    assert "seq_read" in prof.ssd and prof.device["ssd"]["seq_read_bandwidth"] > 0
    assert compare_fingerprints(prof.fingerprint, {"logical_cpus": 2}).matches == (prof.fingerprint["logical_cpus"] == 2)


@pytest.mark.torch
def test_samples_count_flops_and_bytes_as_ops_py(tiny_profile):
    import pandas as pd

    from simkit.calibrate.bench import attention_op, bench_model, elementwise_op, gemm_op

    df = pd.read_csv(tiny_profile / "samples.csv")
    g = df[df.op_class == "gemm"].iloc[0]
    o = gemm_op(g.op, int(g.m), int(g.k), int(g.n), g["dtype"])
    assert g.flops == pytest.approx(2 * g.m * g.n * g.k)
    assert g.flops == pytest.approx(o.flops) and g.bytes_moved == pytest.approx(o.bytes)
    for kind in ("attn_prefill", "attn_decode"):
        a = df[df.op_class == kind].iloc[0]
        b = int(a.batch)
        model = bench_model(hidden=int(a.heads * a.head_dim), heads=int(a.heads), kv_heads=int(a.kv_heads),
                            head_dim=int(a.head_dim), ffn=256)
        if kind == "attn_prefill":
            seq, ctx = int(a.tokens) // b, 0
        else:
            seq, ctx = 1, int(a.ctx) // b - 1
        o = attention_op(b, seq, ctx, model, a["dtype"])
        assert a.flops == pytest.approx(o.flops) and a.bytes_moved == pytest.approx(o.bytes)
    e = df[(df.op_class == "elementwise") & (df.op == "residual_add")]
    if len(e):
        r = e.iloc[0]
        o = elementwise_op("residual_add", int(r.tokens), bench_model(hidden=int(r.numel) // int(r.tokens)), r["dtype"])
        assert r.flops == pytest.approx(o.flops) and r.bytes_moved == pytest.approx(o.bytes)


@pytest.mark.torch
def test_profile_records_device_facts(tiny_profile):
    from simkit.calibrate.validate import load_profile, profile_device

    prof = load_profile(tiny_profile)
    dev = profile_device(prof)
    assert dev["kind"] == "cpu"
    assert dev["catalog"] == "generic-2core-vm"
    assert dev["threads"] == 1
    assert dev["name"]
    assert dev["torch_version"]
    assert dev["memory_bytes"] > 0
    assert dev["dtype_support"]["fp32"] is True
    assert "fp32" in dev["dtypes"]
    assert dev["peak_flops"]["fp32"] > 0 and dev["mem_bandwidth"] > 0
    assert isinstance(dev["ssd"]["direct_io"], bool)
    from simkit.calibrate.bench import GEMM_TIMING, OPENMP_ENV

    assert dev["gemm_timing"] == GEMM_TIMING  # how its few-row GEMMs were timed (bench.gemm_timing_note)
    assert set(dev["openmp_env"]) == set(OPENMP_ENV)  # the OpenMP wait/placement settings (bench.openmp_env_note)


@pytest.mark.torch
def test_validate_tiny_config_end_to_end(tiny_profile, tmp_path, keep_threads, capsys):
    from simkit.calibrate.validate import main

    out = tmp_path / "val.json"
    # no --threads: the profile's thread count (1) is used
    rc = main(["--device", "cpu", *TINY_MODEL, "--batch-sizes", "1,2", "--context-lens", "16", "--profile",
               str(tiny_profile), "--dtype", "fp32", "--repeats", "2", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "median |error|" in text and "prefill b=2 ctx=16" in text
    res = json.loads(out.read_text())
    assert math.isfinite(res["median_ape"]) and math.isfinite(res["p90_ape"])
    assert len(res["rows"]) == 4
    for r in res["rows"]:
        assert r["measured_s"] > 0 and r["predicted_s"] > 0
        assert math.isfinite(r["error"])
        assert r["abs_error"] == pytest.approx(abs(r["error"]))
    assert res["median_ape"] == pytest.approx(float(np.median([r["abs_error"] for r in res["rows"]])))
    assert res["steal_cores"] is None or res["steal_cores"] >= 0  # the hypervisor's steal, apart
    assert res["gemm_timing_note"] is None  # fp32: its GEMMs are timed in a loop either way


@pytest.mark.torch
def test_validate_thread_mismatch_is_an_error(tiny_profile, keep_threads, capsys):
    from simkit.calibrate.validate import ValidationConfig, load_profile, main, run_validation

    prof = load_profile(tiny_profile)
    with pytest.raises(CalibrationError, match="thread"):
        run_validation(ValidationConfig(threads=2, dtype="fp32", batch_sizes=(1,), context_lens=(8,)), prof)
    rc = main(["--device", "cpu", *TINY_MODEL, "--profile", str(tiny_profile), "--threads", "2"])
    assert rc == 2
    assert "thread mismatch" in capsys.readouterr().err


@pytest.mark.torch
def test_validate_missing_dtype_is_an_error(tiny_profile, keep_threads):
    from simkit.calibrate.validate import ValidationConfig, load_profile, run_validation

    prof = load_profile(tiny_profile)
    assert prof.device["dtypes"] == ["fp32"]  # calibrated with --dtypes fp32
    with pytest.raises(CalibrationError, match="bf16"):
        run_validation(ValidationConfig(threads=1, dtype="bf16", batch_sizes=(1,), context_lens=(8,)), prof)


@pytest.mark.torch
def test_clock_cpu_needs_one_thread(keep_threads):
    from simkit.calibrate.bench import measure_suite

    with pytest.raises(CalibrationError, match="--threads 1"):
        measure_suite("cpu", tiny=True, threads=2, clock="cpu")


@pytest.mark.torch
def test_validation_model_matches_forward_ops(keep_threads):
    """The torch model runs the operators ops.py counts: same parameter count."""
    from simkit.calibrate.validate import TorchLlama, ValidationConfig, model_spec

    cfg = ValidationConfig(layers=2, hidden=64, heads=4, kv_heads=2, ffn=96, vocab=128)
    m = TorchLlama(cfg, "fp32", 16)
    n = m.embed.numel() + m.norm.numel() + m.lm_head.numel() + sum(t.numel() for lw in m.layers for t in lw.values())
    assert n == model_spec(cfg).num_params
    torch = pytest.importorskip("torch")
    m.alloc_cache(2)
    with torch.inference_mode():
        nxt = m.forward(torch.randint(0, 128, (2, 8)), 0)
        assert nxt.shape == (2,)
        nxt = m.forward(nxt.view(2, 1), 8)
        assert nxt.shape == (2,)


@pytest.mark.torch
def test_cpu_validation_report(tiny_profile, tmp_path, keep_threads):
    from simkit.calibrate.validate import ValidationConfig, cpu_validation_report

    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    cfg = ValidationConfig(layers=1, hidden=128, heads=4, kv_heads=2, ffn=256, vocab=512, batch_sizes=(1,),
                           context_lens=(16,), repeats=2, min_time_s=0.0)
    text, res = cpu_validation_report(tiny_profile, cfg)
    assert "## CPU validation" in text and "median |error|" in text
    assert set(res) == {"fp32"} and math.isfinite(res["fp32"]["median_ape"])
    assert torch.get_num_threads() == n  # restored
    text, res = cpu_validation_report(tmp_path / "no-such-profile", cfg)
    assert "Skipped" in text and "skipped" in res


def test_shipped_cpu_profile_loads_and_predicts():
    """calibration/profiles/ci-vm-cpu (measured on the CI VM) is a valid profile of catalog CPU
    generic-2core-vm and predicts finite operator times (no torch needed)."""
    from simkit.calibrate.validate import DEFAULT_PROFILE, compute_device, model_spec, predict_step
    from simkit.calibrate.validate import ValidationConfig as VC
    from simkit.cost.profile import Profile
    from simkit.specs.catalog import repo_path

    prof = Profile.load(repo_path(*DEFAULT_PROFILE.split("/")))
    assert prof.device["kind"] == "cpu" and prof.device["catalog"] == "generic-2core-vm"
    assert {"fp32", "bf16"} <= set(prof.device["dtypes"])
    assert all(prof.is_measured(c) for c in ("gemm", "elementwise", "attn_prefill", "attn_decode"))
    assert prof.ssd and prof.device["ssd"]["direct_io"] in (True, False)
    dev = compute_device(prof)
    for q, ctx in (([128, 128], [0, 0]), ([1] * 4, [512] * 4)):
        t, times = predict_step(model_spec(VC()), q, ctx, dev, prof, "bf16")
        assert 0 < t < 10 and all(math.isfinite(x.time_s) for x in times)


def _elementwise_before_script():
    return load_benchmark("elementwise_before")


@pytest.mark.torch
def test_elementwise_before_ab_writes_two_profiles_with_the_same_configurations(tiny_profile, tmp_path, keep_threads):
    """benchmarks/elementwise_before.py re-times the profile's elementwise benchmarks after their
    predecessor GEMM and after a read stream: the same configurations, every other sample kept."""
    from simkit.calibrate.bench import SIZES
    from simkit.calibrate.validate import load_profile

    g, s = tmp_path / "after-gemm", tmp_path / "after-stream"
    assert _elementwise_before_script().main([str(tiny_profile), "--out-gemm", str(g), "--out-stream", str(s)]) == 0
    base = load_profile(tiny_profile).samples
    cols = ["op", "dtype", "flops", "bytes_moved", "tokens"]
    elem = []
    for out in (g, s):
        p = load_profile(out)
        assert "elementwise" in p.models  # refitted
        e = p.samples[p.samples.op_class == "elementwise"]
        assert len(e) == SIZES["tiny"].elem_configs
        elem.append(e[cols].reset_index(drop=True))
        rest = p.samples[p.samples.op_class != "elementwise"]
        assert len(rest) == int((base.op_class != "elementwise").sum())
    assert elem[0].equals(elem[1])


def test_elementwise_before_refuses_a_missing_profile(tmp_path, capsys):
    rc = _elementwise_before_script().main([str(tmp_path / "none"), "--out-gemm", str(tmp_path / "g"), "--out-stream", str(tmp_path / "s")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "calibration profile not found" in err and len(err.strip().splitlines()) == 1


def _gemm_before_script():
    return load_benchmark("gemm_before")


@pytest.mark.torch
def test_gemm_before_ab_writes_two_profiles_with_the_same_configurations(tiny_profile, tmp_path, keep_threads):
    """benchmarks/gemm_before.py re-times the profile's few-row GEMMs in a loop and after their
    layer predecessor: the same configurations, every other sample kept, and only the second
    profile says its GEMMs were timed the new way (device.gemm_timing)."""
    from simkit.calibrate.bench import GEMM_TIMING
    from simkit.calibrate.validate import load_profile
    from simkit.cost.profile import FEW_ROWS

    loop, layer = tmp_path / "loop", tmp_path / "layer"
    assert _gemm_before_script().main([str(tiny_profile), "--out-loop", str(loop), "--out-layer", str(layer)]) == 0
    base = load_profile(tiny_profile).samples
    few_base = (base.op_class == "gemm") & (base.m <= FEW_ROWS)
    assert few_base.sum() > 0
    cols = ["op", "dtype", "m", "k", "n", "flops", "bytes_moved"]
    few = []
    for out in (loop, layer):
        p = load_profile(out)
        assert "gemm" in p.models  # refitted
        s = p.samples
        sel = (s.op_class == "gemm") & (s.m <= FEW_ROWS)
        few.append(s[sel][cols].reset_index(drop=True))
        assert len(s[~sel]) == int((~few_base).sum())
    assert few[0].equals(few[1]) and len(few[0]) == int(few_base.sum())
    assert "gemm_timing" not in load_profile(loop).device
    assert load_profile(layer).device["gemm_timing"] == GEMM_TIMING


def test_gemm_before_refuses_a_missing_profile(tmp_path, capsys):
    rc = _gemm_before_script().main([str(tmp_path / "none"), "--out-loop", str(tmp_path / "l"), "--out-layer", str(tmp_path / "p")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "calibration profile not found" in err and len(err.strip().splitlines()) == 1
