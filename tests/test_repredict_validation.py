"""Re-scoring a validation's measured steps with another profile (benchmarks/repredict_validation.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simkit.calibrate.validate import (
    ValidationConfig,
    compute_device,
    load_profile,
    model_spec,
    predict_step,
    repredict,
    step_batch,
)
from tests.conftest import load_benchmark, shipped_cpu_profile_with

ROOT = Path(__file__).resolve().parents[1]
CPU = ROOT / "calibration" / "profiles" / "ci-vm-cpu"


def test_step_batch_is_what_a_validated_step_runs() -> None:
    assert step_batch("prefill", 3, 96) == ([96, 96, 96], [0, 0, 0])
    assert step_batch("decode", 2, 700) == ([1, 1], [700, 700])


def _result(measured_scale: float) -> dict:
    prof = load_profile(CPU)
    model = {"layers": 2, "hidden": 256, "heads": 4, "kv_heads": 2, "ffn": 512, "vocab": 1000}
    spec = model_spec(ValidationConfig(**model))
    rows = []
    for phase, b, c in (("prefill", 1, 64), ("decode", 3, 200), ("decode", 8, 50)):
        pred, _ = predict_step(spec, *step_batch(phase, b, c), compute_device(prof), prof, "fp32")
        rows.append({"phase": phase, "batch": b, "context": c, "measured_s": pred * measured_scale})
    return {"model": model, "dtype": "fp32", "rows": rows}


def test_repredict_scores_the_measured_steps_against_the_profile() -> None:
    prof = load_profile(CPU)
    assert repredict(_result(1.0), prof)["median_ape"] == pytest.approx(0.0, abs=1e-12)
    r = repredict(_result(1.25), prof)  # every step measured 25% slower than predicted
    assert r["errors"] == pytest.approx([1 / 1.25 - 1] * 3)
    assert r["p90_ape"] == pytest.approx(0.2)


def test_script_refits_without_an_operator_and_refuses_other_json(tmp_path: Path) -> None:
    res = tmp_path / "r.json"
    res.write_text(json.dumps(_result(1.0)))
    script = ROOT / "benchmarks" / "repredict_validation.py"
    out = subprocess.run([sys.executable, str(script), str(res), str(CPU), "--drop-op", "row_length"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert "no samples of operator 'row_length': not refitted" in lines[0]
    assert "median 0.0%, p90 0.0%" in lines[1] and "d3/200 +0" in lines[1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    out = subprocess.run([sys.executable, str(script), str(bad), str(CPU)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "not a `simkit validate --json` result" in out.stderr



def test_script_refits_with_one_attention_base(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--shared-attn-base scores a refit of the profile's own samples with one attention roofline
    base for every dtype (as before 2026-11-30), next to the profile itself."""

    from simkit.calibrate import fit

    res = tmp_path / "r.json"
    res.write_text(json.dumps(_result(1.0)))
    mod = load_benchmark("repredict_validation")
    assert mod.main([str(res), str(CPU), "--shared-attn-base"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "median 0.0%, p90 0.0%" in lines[0]
    assert fit.BASE_PER_DTYPE_CLASSES == ("attn_prefill", "attn_decode")  # restored
    prof = load_profile(CPU)
    keep = fit.BASE_PER_DTYPE_CLASSES
    fit.BASE_PER_DTYPE_CLASSES = ()
    try:
        shared = fit.fit_profile(prof.samples, prof.device, name="s", source="t", license="t")
    finally:
        fit.BASE_PER_DTYPE_CLASSES = keep
    assert all(not cm.base_by_dtype for cm in shared.models.values())
    r = repredict(_result(1.0), shared)
    assert lines[1].startswith(f"{CPU} refitted, one attention base for all dtypes: median {100 * r['median_ape']:.1f}%, "
                               f"p90 {100 * r['p90_ape']:.1f}%")  # fmt: skip


def test_script_scores_a_profile_without_its_step_composition(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--without-composition: the same fit without device.step_composition scores the steps as
    the operators alone predict them (here exactly, the steps being those predictions)."""
    dst = shipped_cpu_profile_with(tmp_path / "prof", "step_composition", {"threads": 1, "factor": {"fp32": 1.25}})
    res = tmp_path / "r.json"
    res.write_text(json.dumps(_result(1.0)))
    mod = load_benchmark("repredict_validation")
    assert mod.main([str(res), str(dst), "--without-composition"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "without its step composition: median 0.0%, p90 0.0%" in lines[1]
    assert "median 0.0%" not in lines[0]  # with it, every step is predicted slower
    assert mod.main([str(res), str(CPU), "--without-composition"]) == 0  # none: one line
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
