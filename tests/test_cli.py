"""The command line: every example scenario runs; bad input is one clear line and exit code 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simkit.cli import main
from simkit.schema_doc import render

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "workloads" / "scenarios").glob("*.yaml"))


def test_every_example_scenario_has_a_one_line_comment():
    for p in SCENARIOS:
        first = p.read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 20, p.name


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_example_scenarios_run(path, tmp_path, capsys):
    # a cut of each workload keeps CI fast; the scenario itself runs unmodified in `simkit run`
    rc = main(["run", str(path), "--out", str(tmp_path), "--set", "workload.limit=60"])
    assert rc == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "summary.json").read_text())
    for key in ("ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "e2e_p50_s", "e2e_p99_s",
                "output_tokens_per_s", "requests_completed", "requests_rejected", "makespan_s"):
        assert key in s
    assert s["requests_completed"] > 0
    for f in ("requests.parquet", "iterations.parquet", "links.parquet", "scenario.yaml", "provenance.json"):
        assert (tmp_path / f).exists(), f


def _err(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def _write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


BASE = """
hardware: dgx-h100
model: llama-2-7b
workload: {batch: {num_prompts: 2, input_tokens: 64, output_tokens: 4}}
calibration: none
"""


def test_malformed_yaml(tmp_path, capsys):
    err = _err(["run", _write(tmp_path, "hardware: [dgx\nmodel: x")], capsys)
    assert "s.yaml" in err and "malformed YAML" in err and "line" in err


def test_unknown_key(tmp_path, capsys):
    err = _err(["run", _write(tmp_path, BASE + "plan: {batchng: {}}\n")], capsys)
    assert "plan.batchng" in err and "unknown key" in err


def test_unknown_gpu_and_model(tmp_path, capsys):
    err = _err(["run", _write(tmp_path, BASE.replace("dgx-h100", "{preset: dgx-h100, gpu: h1000}"))], capsys)
    assert "h1000" in err and "hardware.gpu" in err
    err = _err(["run", _write(tmp_path, BASE.replace("llama-2-7b", "llama-9"))], capsys)
    assert "unknown model 'llama-9'" in err and "model" in err


def test_negative_or_unitless_bandwidth(tmp_path, capsys):
    link = tmp_path / "cat" / "bad.yaml"
    link.parent.mkdir()
    link.write_text("kind: link\nname: bad\ntype: pcie\nbandwidth: 32\nachieved_bandwidth: '-1 GB/s'\nlatency: 1 us\nsources: {}\n")
    import os

    os.environ["SIMKIT_CATALOG_PATH"] = str(link.parent)
    try:
        err = _err(["catalog", "list"], capsys)
    finally:
        del os.environ["SIMKIT_CATALOG_PATH"]
    assert "bad.yaml" in err and "bandwidth" in err and "no unit" in err


def test_model_that_fits_nowhere(tmp_path, capsys):
    err = _err(["run", _write(tmp_path, BASE.replace("llama-2-7b", "llama-3.1-405b"))], capsys)
    assert "tier hbm" in err and "does not fit" in err


def test_bad_override(tmp_path, capsys):
    err = _err(["run", _write(tmp_path, BASE), "--set", "plan.parallel.tp=3"], capsys)
    assert "plan.parallel.tp" in err


def test_corrupt_trace_line(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:47.0,abc,3\n")
    sc = BASE.replace("workload: {batch: {num_prompts: 2, input_tokens: 64, output_tokens: 4}}", f"workload: {{trace: {{path: {trace}}}}}")
    err = _err(["run", _write(tmp_path, sc)], capsys)
    assert "t.csv" in err and "line 3" in err


def test_estimate_ops_every_gpu_and_model(capsys):
    from simkit.specs.catalog import default_catalog

    cat = default_catalog()
    for gpu in cat.names("gpu"):
        for model in cat.names("model"):
            tp = 1
            assert main(["estimate", "ops", "--gpu", gpu, "--model", model, "--tp", str(tp), "--tokens", "1,512", "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("op,num_tokens,tp,time_s,flops,bytes")


def test_estimate_ops_table_marks_unmeasured(capsys):
    assert main(["estimate", "ops", "--gpu", "h100-sxm", "--model", "llama-2-7b", "--tokens", "1,512"]) == 0
    out = capsys.readouterr().out
    assert "qkv_proj" in out and "attn_prefill" in out


def test_catalog_show_prints_sources(capsys):
    assert main(["catalog", "show", "h100-sxm"]) == 0
    out = capsys.readouterr().out
    assert "source:" in out and "3.35 TB/s" in out


def test_schema_is_json(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "hardware" in schema["properties"]


def test_docs_scenario_lists_every_key():
    text = (ROOT / "docs" / "scenario.md").read_text()
    assert render() in text, "docs/scenario.md is stale: regenerate its table with python -m simkit.schema_doc"


def test_run_prints_each_warning_once_as_one_line(tmp_path):
    # a deployment warning is both a Python warning and a line of the result's warnings: the
    # command prints it once, as "warning: ...", without the Python source line that raised it
    # (a subprocess: pytest's own warning capture would hide the raw display in-process)
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "simkit.cli", "run", "cxl-long-context", "--out", str(tmp_path / "out"), "--set", "workload.limit=20"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "UserWarning" not in proc.stderr and "cli.py" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "no calibration profile for gpu 'h100-pcie'" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: ")


def test_offload_plan_prints_no_negative_fractions(tmp_path, capsys):
    # the LP leaves round-off such as -1e-12 in its fractions: the table showed "1.00/-0.00/0.00/0.00"
    import yaml

    from simkit.cli import _fractions_text

    assert _fractions_text({"gpu": 1.0, "cpu": -1e-12, "cxl": -0.0, "disk": 0.0}) == "1.00/0.00/0.00/0.00"
    sc = {"name": "a6000-70b", "hardware": "lambda-a6000-workstation", "model": "llama-2-70b",
          "workload": {"batch": {"num_prompts": 32, "input_tokens": 512, "output_tokens": 32}},
          "plan": {"batching": {"policy": "static"}, "precision": {"weights": "fp16", "activations": "fp16", "kv_cache": "fp16"},
                   "offload": {"weights": {"gpu": 0.0, "cpu": 1.0}, "kv_cache": {"gpu": 0.0, "cpu": 1.0}}},
          "calibration": "none"}
    path = tmp_path / "sc.yaml"
    path.write_text(yaml.safe_dump(sc))
    assert main(["offload-plan", str(path), "--confirm", "0"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].startswith("# 4-bit weights and KV cache not searched")
    assert out.splitlines()[2].split()[6:9] == ["weights", "g/c/x/d", "kv"] and "act g/c/x/d" in out.splitlines()[2]
    assert out.splitlines()[-1].startswith("# fractions above are rounded to 2 decimals")
    rows = out.splitlines()[3:-1]
    batches = [int(line.split()[1]) * int(line.split()[2]) for line in rows]
    # a fixed batch of 32 prompts cannot fill a plan of more sequences: none is ranked; the best 8 run all 32
    assert batches == [32] * 8 and "fixed batch" not in err
    for line in rows:
        fields = line.split()
        shares = [float(x) for x in (*fields[6].split("/"), *fields[7].split("/"), *fields[8].split("/"))]
        assert len(shares) == 12
        assert all(x >= 0 for x in shares) and "-0.00" not in line
    # further down, plans of fewer sequences are ranked by tok/s at their own batch: the command says so
    assert main(["offload-plan", str(path), "--confirm", "0", "--top", "60"]) == 0
    out, err = capsys.readouterr()
    batches = [int(line.split()[1]) * int(line.split()[2]) for line in out.splitlines()[3:-1]]
    assert max(batches) == 32 and min(batches) < 32
    assert "warning: the workload is a fixed batch of 32 prompts, but the tok/s above are for each plan's own batch" in err


def test_offload_plan_searches_int4_only_where_asked(tmp_path, capsys):
    # fp16 plan.precision: the plans keep 16-bit weights and KV unless the user accepts the trade
    # (--compress-weights / --compress-kv, or plan.offload.compress_weights / compress_kv: true)
    import yaml

    from simkit.scenario import load_scenario
    from simkit.search.offload import compression_choices, optimize

    sc = {"name": "a6000-70b", "hardware": "lambda-a6000-workstation", "model": "llama-2-70b",
          "workload": {"batch": {"num_prompts": 32, "input_tokens": 512, "output_tokens": 32}},
          "plan": {"batching": {"policy": "static"}, "offload": {"weights": {"gpu": 0.0, "cpu": 1.0}}},
          "calibration": "none"}
    path = tmp_path / "sc.yaml"
    path.write_text(yaml.safe_dump(sc))

    def int4_columns(argv):
        assert main(["offload-plan", str(path), "--confirm", "0", "--top", "40", *argv]) == 0
        out = capsys.readouterr().out
        rows = [ln.split() for ln in out.splitlines() if ln and not ln.startswith(("#", "rank"))]
        assert len(rows) == 40
        return out, {(r[4], r[5]) for r in rows}

    out, seen = int4_columns([])
    assert seen == {("False", "False")} and "--compress-weights / --compress-kv to search" in out
    out, seen = int4_columns(["--compress-weights"])
    assert ("True", "False") in seen and all(kv == "False" for _, kv in seen) and "4-bit KV cache not searched" in out
    out, seen = int4_columns(["--compress-weights", "--compress-kv"])
    assert ("True", "False") in seen and any(kv == "True" for _, kv in seen) and "not searched" not in out
    # the scenario's own plan.offload switches allow the same trades (the search's offload: optimized too)
    sc["plan"]["offload"]["compress_weights"] = True
    path.write_text(yaml.safe_dump(sc))
    assert compression_choices(load_scenario(str(path))) == ((False, True), (False,))
    assert any(c.compress_weights for c in optimize(load_scenario(str(path)), top=40, confirm=0))


@pytest.mark.parametrize(("command", "preset", "expected"), [("run", None, "1"), ("search", None, "1"), ("run", "4", "4"),
                                                             ("calibrate", None, None), ("validate", None, None)])
def test_simkit_process_runs_numpy_blas_single_threaded(command, preset, expected):
    """A `simkit` process (numpy not yet imported) asks OpenBLAS for one thread unless the user set
    it; calibrate and validate keep the default."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"} | {"PYTHONPATH": str(ROOT)}
    if preset is not None:
        env["OPENBLAS_NUM_THREADS"] = preset
    code = ("import os, sys; from simkit.cli import _single_threaded_blas; assert 'numpy' not in sys.modules; "
            f"_single_threaded_blas({command!r}); print(os.environ.get('OPENBLAS_NUM_THREADS'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert out == str(expected)
