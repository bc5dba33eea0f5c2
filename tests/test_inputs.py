"""Bad input gives a clean, named error (issue 10): scenario validation, YAML bounds, trace
encodings and line ends, CLI arguments, and two engine crashes that only some options reached."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from simkit.cli import main
from simkit.errors import ScenarioError, SimkitError, SpecError, TraceError
from simkit.scenario import apply_overrides, load_scenario, scenario_from_dict
from simkit.simulate import simulate
from simkit.specs.catalog import parse_item
from simkit.specs.yamlio import MAX_NODES, load_yaml
from simkit.workload.traces import read_trace
from tests.conftest import make_scenario

ROOT = Path(__file__).resolve().parents[1]
AZURE_HEADER = b"TIMESTAMP,ContextTokens,GeneratedTokens\r\n"


def _err(args, capsys):
    assert main(args) == 2
    return capsys.readouterr().err


# ---- scenario validation -------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value",
    [
        ("plan.parallel.tp", True),
        ("workload.limit", True),
        ("plan.kv_cache.gpu_memory_utilization", True),
        ("seed", False),
        ("plan.parallel.tp", "2"),
    ],
)
def test_booleans_and_strings_are_not_numbers(key, value):
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(apply_overrides(make_scenario(), {key: value}))
    assert e.value.key == key


def test_negative_seed_is_refused_at_load_even_without_random_choices():
    """A batch workload draws nothing at random, but seed=-1 is still a wrong input (a synthetic
    workload of the same scenario would refuse it): refused when the scenario is loaded, naming
    the top-level key."""
    with pytest.raises(ScenarioError, match="greater than or equal to 0") as e:
        scenario_from_dict(apply_overrides(make_scenario(), {"seed": -1}))
    assert e.value.key == "seed"


def test_override_blocked_by_the_file_names_the_file(tmp_path, capsys):
    """--set workload.limit=2 on a scenario whose workload is a number: the error names the file
    (fuzzer, seed 5 case 806, faces kinds)."""
    p = tmp_path / "s.yaml"
    p.write_text("name: x\nhardware: dgx-h100\nmodel: llama-2-7b\nworkload: 3.5\n")
    err = _err(["run", str(p), "--set", "workload.limit=2", "--out", str(tmp_path / "o")], capsys)
    assert err.strip() == f"simkit: error: {p}: workload.limit: cannot set 'workload.limit': workload is a float, not a mapping"


def test_integer_accepted_for_a_float_key():
    sc = scenario_from_dict(apply_overrides(make_scenario(), {"plan.kv_cache.gpu_memory_utilization": 1}))
    assert sc.plan.kv_cache.gpu_memory_utilization == 1.0


@pytest.mark.parametrize("value", [2**63, -(2**63), 10**30])
def test_integers_beyond_int64_are_refused(value):
    with pytest.raises(ScenarioError, match="out of range") as e:
        scenario_from_dict(apply_overrides(make_scenario(), {"workload.limit": value}))
    assert e.value.key == "workload.limit"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_floats_are_refused(value):
    with pytest.raises(ScenarioError, match="finite"):
        scenario_from_dict(apply_overrides(make_scenario(), {"plan.kv_cache.gpu_memory_utilization": value}))


@pytest.mark.parametrize("value", [1e-300, 0, -1, 1e30, float("nan"), float("inf"), True, "2"])
def test_bandwidth_scale_is_bounded(value):
    hw = {"preset": "dgx-h100", "bandwidth_scale": {"hbm": value}}
    sc = scenario_from_dict(make_scenario(hardware=hw))
    with pytest.raises(SpecError, match="0.001 to 1000") as e:
        simulate(sc)
    assert e.value.key == "hardware.bandwidth_scale.hbm"


def test_rate_scale_is_bounded(tmp_path):
    wl = {"trace": {"path": str(ROOT / "workloads/traces/burstgpt_sample.csv"), "rate_scale": 1e-300}}
    with pytest.raises(ScenarioError, match="0.0001") as e:
        scenario_from_dict(make_scenario(workload=wl))
    assert e.value.key == "workload.trace.rate_scale"


def test_long_names_are_clean_errors(capsys):
    err = _err(["run", str(ROOT / "workloads/scenarios/quickstart.yaml"), "--set", "model=" + "a" * 300], capsys)
    assert "unknown model" in err and "Traceback" not in err
    err = _err(["run", str(ROOT / "workloads/scenarios/quickstart.yaml"), "--set", "name=" + "a" * 300], capsys)
    assert "name" in err and "128" in err


def test_unknown_key_suggests_the_right_one(tmp_path, capsys):
    data = make_scenario()
    data["workloads"] = data.pop("workload")
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data))
    err = _err(["run", str(p)], capsys)
    assert "workloads: unknown key; did you mean workload?" in err
    err = _err(["run", str(ROOT / "workloads/scenarios/quickstart.yaml"), "--set", "plan.parallel.tpp=2"], capsys)
    assert "plan.parallel.tpp: unknown key; did you mean tp, pp?" in err


def test_missing_keys_are_listed_together():
    data = {"kind": "gpu", "name": "mine", "memory": "10 GiB", "sources": {}}
    with pytest.raises(SpecError) as e:
        parse_item(data, "mine.yaml")
    msg = str(e.value)
    for k in ("memory_bandwidth", "l2_cache", "sm_count", "peak_flops", "pcie", "tdp", "price_per_hour"):
        assert k in msg
    assert "more problem" not in msg


_BOMB = """\
a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
"""


def test_alias_bomb_in_hardware_is_refused_quickly(tmp_path):
    text = "hardware:\n  preset: dgx-h100\n" + "".join("  " + ln + "\n" for ln in _BOMB.splitlines())
    text += "model: llama-2-7b\nworkload: {batch: {num_prompts: 1, input_tokens: 8, output_tokens: 2}}\n"
    p = tmp_path / "bomb.yaml"
    p.write_text(text)
    with pytest.raises(ScenarioError, match=f"{MAX_NODES:,} values"):
        load_scenario(p, ["seed=1"])


def test_self_referencing_alias_and_bomb_in_override(tmp_path):
    p = tmp_path / "rec.yaml"
    p.write_text("x: &a [*a]\n")
    with pytest.raises(SpecError, match="alias"):
        load_yaml(p)
    bomb = "[" + ", ".join(f"&l{i} [" + ", ".join([f"*l{i - 1}" if i else "1"] * 9) + "]" for i in range(7)) + "]"
    with pytest.raises(ScenarioError, match="alias") as e:
        load_scenario(ROOT / "workloads/scenarios/quickstart.yaml", [f"description={bomb}"])
    assert e.value.key == "description"


def test_non_utf8_yaml_names_the_line(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_bytes(b"name: x\nmodel: caf\xe9\n")
    with pytest.raises(SpecError, match="line 2: not UTF-8"):
        load_yaml(p)


# ---- traces --------------------------------------------------------------------------------
def _azure(tmp_path, body: bytes, name="t.csv"):
    p = tmp_path / name
    p.write_bytes(AZURE_HEADER + body)
    return p


@pytest.mark.parametrize("mode", ["fail", "skip"])
def test_non_utf8_trace_names_line_and_column(tmp_path, mode):
    p = _azure(tmp_path, b"2023-11-16 18:15:46.68,374,44\r\n2023-11-16 18:15:47.68,\xff374,44\r\n")
    with pytest.raises(TraceError, match=r"line 3: not UTF-8 text \(byte 0xff at column 24\)"):
        read_trace(p, on_bad_line=mode)
    q = tmp_path / "m.jsonl"
    q.write_bytes(b'{"timestamp": 0, "input_length": 4, "output_length": 1}\n{"timestamp": 1, "input_length": "\xe9"}\n')
    with pytest.raises(TraceError, match="line 2: not UTF-8"):
        read_trace(q, on_bad_line=mode)


@pytest.mark.parametrize("block_size", [3, 5, 7, 16, 1 << 24])
def test_non_utf8_column_counts_across_block_boundaries(tmp_path, block_size):
    """The column of the first bad byte counts from the line's start, whatever block of the file
    it falls in (the check reads 16 MiB blocks; a line can cross one)."""
    from simkit.workload.traces import _check_utf8

    p = tmp_path / "t.csv"
    p.write_bytes(b"ab\r\ncd\xc3\xa9efghij\rklmnop\xffq\n")  # line 3, column 7
    with pytest.raises(TraceError, match=r"line 3: not UTF-8 text \(byte 0xff at column 7\)"):
        _check_utf8(p, block_size)
    q = tmp_path / "u.csv"
    q.write_bytes(b"x\nabcdefgh\xe9\n")  # a lead byte followed by a line end: line 2, column 9
    with pytest.raises(TraceError, match=r"line 2: not UTF-8 text \(byte 0xe9 at column 9\)"):
        _check_utf8(q, block_size)
    r = tmp_path / "v.csv"
    r.write_bytes(b"x\ny\n\xe2\x82")  # the file ends inside a character
    with pytest.raises(TraceError, match="line 3: not UTF-8 text \\(the file ends"):
        _check_utf8(r, block_size)
    ok = tmp_path / "w.csv"
    ok.write_bytes("ab\r\nc\u00e9\u20ac\U0001f600\n".encode())
    _check_utf8(ok, block_size)


def test_out_of_range_first_timestamp_is_a_bad_line(tmp_path):
    p = _azure(tmp_path, b"9999-11-16 18:15:46.68,374,44\r\n2023-11-16 18:15:47.68,375,45\r\n")
    with pytest.raises(TraceError, match="line 2: expected a timestamp between years"):
        read_trace(p)
    r = read_trace(p, on_bad_line="skip")
    assert r.input_tokens.tolist() == [375] and r.meta["bad_lines"] == {"count": 1, "lines": [2]}


@pytest.mark.parametrize("quoted", [False, True])  # pandas' parser, and the csv-module fallback
def test_bare_cr_ends_a_line_and_line_numbers_count_it(tmp_path, quoted):
    first = b'"2023-11-16 18:15:46.68"' if quoted else b"2023-11-16 18:15:46.68"
    p = _azure(tmp_path, first + b",374,44\r2023-11-16 18:15:47.68,375,45\r\n2023-11-16 18:15:48.68,1,46,4\r\n"
               b"2023-11-16 18:15:49.68,377,47\r\n")
    with pytest.raises(TraceError, match="line 4: expected 3 comma-separated fields"):
        read_trace(p)
    r = read_trace(p, on_bad_line="skip")
    assert r.input_tokens.tolist() == [374, 375, 377]
    assert r.meta["bad_lines"] == {"count": 1, "lines": [4]}


def test_shipped_crlf_trace_reads_every_line():
    path = ROOT / "workloads/traces/azure_code_2023_sample.csv"
    raw = path.read_bytes()
    assert b"\r\n" in raw
    assert len(read_trace(path)) == raw.count(b"\n") - 1


def test_skipped_lines_are_warned_and_counted(tmp_path):
    p = _azure(tmp_path, b"2023-11-16 18:15:46.68,374,44\r\n2023-11-16 18:15:47.68,x,45\r\n2023-11-16 18:15:48.68,376,4\r\n")
    sc = scenario_from_dict(make_scenario(workload={"trace": {"path": str(p), "on_bad_line": "skip"}}))
    res = simulate(sc)
    assert res.summary["trace_bad_lines"] == 1
    assert any("1 malformed line(s) skipped" in w and "first: 3" in w for w in res.warnings)
    clean = scenario_from_dict(make_scenario())
    assert simulate(clean).summary["trace_bad_lines"] == 0


# ---- CLI -----------------------------------------------------------------------------------
@pytest.mark.parametrize("tp", ["0", "-1", "x"])
def test_estimate_ops_rejects_bad_tp(tp, capsys):
    with pytest.raises(SystemExit) as e:
        main(["estimate", "ops", "--gpu", "h100-sxm", "--model", "llama-2-7b", "--tp", tp])
    assert e.value.code == 2
    assert "--tp" in capsys.readouterr().err


def test_broken_pipe_is_quiet():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (
        "import sys; from simkit.cli import main\n"
        "sys.stdout = open(sys.stdout.fileno(), 'w', buffering=1, closefd=False)\n"
        "sys.exit(main(['catalog', 'list']))\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert p.stdout is not None
    p.stdout.close()  # the reader goes away before simkit writes (as `| head` does after a line)
    err = p.stderr.read().decode() if p.stderr else ""
    assert p.wait(timeout=60) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err


# ---- engine crashes reached by documented options ------------------------------------------
@pytest.mark.parametrize("flag", ["compress_weights", "compress_kv"])
def test_compression_with_a_gpu_calibration_profile(flag):
    data = apply_overrides(make_scenario(calibration="auto"), {f"plan.offload.{flag}": True, "workload.batch.num_prompts": 2})
    s = simulate(scenario_from_dict(data)).summary
    assert s["requests_completed"] == 2 and np.isfinite(s["tpot_p50_s"])


@pytest.mark.parametrize("chunk", [512, 2**24])
def test_kv_spill_to_cpu_never_schedules_a_negative_delay(chunk):
    sc = load_scenario(
        ROOT / "workloads/scenarios/cxl-long-context.yaml",
        ["hardware=dgx-h100", "plan.offload.kv_spill.tier=cpu", "workload.limit=1", f"plan.batching.chunk_size={chunk}"],
    )
    s = simulate(sc).summary
    assert s["requests_completed"] == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2048), st.integers(0, 8192)), min_size=1, max_size=6), st.integers(0, 6))
def test_split_layers_parts_are_non_negative_and_sum_to_the_step(seqs, rows):
    from simkit.cost.device import ComputeDevice
    from simkit.cost.efficiency import DatasheetEfficiency
    from simkit.cost.iteration import IterationModel
    from simkit.cost.ops import Precision
    from simkit.specs.catalog import default_catalog, load_model

    it = IterationModel(load_model("llama-2-7b"), ComputeDevice.from_gpu(default_catalog().get("gpu", "h100-sxm")),
                        DatasheetEfficiency(), Precision("fp16", "fp16", "fp16"))
    q = np.array([a for a, _ in seqs])
    ctx = np.array([b for _, b in seqs])
    before, per, after = it.split_layers(q, ctx, logits_rows=rows)
    assert before >= 0 and per >= 0 and after >= 0
    assert before + per * it.layers + after == pytest.approx(it.step_time(q, ctx, rows), rel=1e-9)


# ---- GPU memory is what CUDA can allocate --------------------------------------------------
@pytest.mark.parametrize("gpu, mib", [("l4", 23034), ("a40", 46068)])
def test_ecc_gddr6_parts_hold_the_nvidia_smi_total(gpu, mib):
    from simkit.specs.catalog import default_catalog

    assert default_catalog().get("gpu", gpu).memory == mib * 2**20


def test_t4_holds_what_cuda_reports():
    # CUDA's total for a T4 with ECC on (PyTorch's "total capacity", 14.75 GiB with FlexGen-era
    # drivers) is below nvidia-smi's 15360 MiB (hw_specs/gpus T4 sources; docs/offloading.md)
    from simkit.specs.catalog import default_catalog

    assert default_catalog().get("gpu", "t4").memory == 15104 * 2**20


@pytest.mark.parametrize(
    "key, value",
    [("workload", {"trace": {"path": "t" * 300 + ".csv"}}), ("calibration", "c" * 300), ("model", "m" * 300 + ".json")],
)
def test_overlong_paths_are_clean_errors(key, value):
    sc = scenario_from_dict(make_scenario(**{key: value}))
    with pytest.raises(SimkitError):
        simulate(sc)


def test_hf_config_that_is_not_utf8(tmp_path):
    from simkit.specs.catalog import load_model

    p = tmp_path / "config.json"
    p.write_bytes(b'{"model_type": "llama",\n "x": "\xff"}')
    with pytest.raises(SpecError, match="line 2: not UTF-8"):
        load_model(str(p))


def test_error_from_inside_a_simpy_process_keeps_file_and_key():
    sc = load_scenario(ROOT / "workloads/scenarios/disaggregated.yaml",
                       ["hardware.preset=lambda-a6000-workstation", "hardware.num_gpus=4",  # no NVLink
                        "workload.limit=2", "calibration=none"])
    with pytest.raises(ScenarioError) as e:
        simulate(sc)
    assert e.value.key == "plan.batching.kv_transfer_link" and e.value.where and e.value.where.endswith("disaggregated.yaml")
    assert str(e.value).count("disaggregated.yaml") == 1  # not repeated by the copy SimPy raises


@pytest.mark.parametrize("count", [b"99999999999999999999", b"3000000000"])  # beyond int64; beyond 2^31-1
def test_absurd_token_counts_in_a_trace_are_bad_lines(tmp_path, count):
    p = _azure(tmp_path, b"2023-11-16 18:15:46.68," + count + b",44\r\n2023-11-16 18:15:47.68,375,45\r\n")
    with pytest.raises(TraceError, match="line 2"):
        read_trace(p)
    assert read_trace(p, on_bad_line="skip").input_tokens.tolist() == [375]


def test_a_key_given_twice_in_a_scenario_is_an_error(tmp_path):
    """Plain YAML keeps the last of two equal keys silently; simkit's loader refuses them (found by
    benchmarks/fuzz.py in a study file). Keys merged from an anchor (<<) may still be overridden."""
    p = tmp_path / "s.yaml"
    p.write_text("name: a\nmodel: llama-2-7b\nmodel: opt-6.7b\n")
    with pytest.raises(SimkitError, match="line 3, column 1: duplicate key 'model'"):
        load_yaml(p)
    p.write_text("x: &d {a: 1, b: 2}\ny:\n  <<: *d\n  b: 3\n")
    assert load_yaml(p) == {"x": {"a": 1, "b": 2}, "y": {"a": 1, "b": 3}}
