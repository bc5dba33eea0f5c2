"""benchmarks/vidur_side_by_side.py: the parts that run without Vidur installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_benchmark

vs = load_benchmark("vidur_side_by_side")


def test_arguments_default_to_every_case_once() -> None:
    a = vs.parse_args([])
    assert a.cases == ["azure16k-continuous", "azure16k-chunked"]
    assert a.repeat == 1
    assert not a.cold
    a = vs.parse_args(["--repeat", "3", "--cold", "azure16k-chunked"])
    assert (a.cases, a.repeat, a.cold) == (["azure16k-chunked"], 3, True)


@pytest.mark.parametrize("argv", [["no-such-case"], ["--repeat", "0"], ["--repeat", "x"]])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        vs.parse_args(argv)
    assert e.value.code == 2
    assert "vidur_side_by_side.py: error:" in capsys.readouterr().err


def test_vidur_python_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMKIT_VIDUR_PYTHON", "/opt/vidur/bin/python")
    assert vs.parse_args([]).vidur_python == "/opt/vidur/bin/python"
    assert vs.parse_args(["--vidur-python", "/x/python"]).vidur_python == "/x/python"


def test_missing_vidur_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SIMKIT_VIDUR_PYTHON", raising=False)
    assert vs.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SIMKIT_VIDUR_PYTHON" in err and "--vidur-python" in err
    assert vs.main(["--vidur-python", str(tmp_path / "nope" / "python")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no executable there" in err and str(tmp_path / "nope") in err


def test_vidur_python_must_be_executable(tmp_path: Path) -> None:
    f = tmp_path / "python"
    f.write_text("")
    with pytest.raises(vs.BenchError, match="no executable"):
        vs.check_vidur_python(str(f))
    f.chmod(0o755)
    assert vs.check_vidur_python(str(f)) == f


def test_trace_csv_writes_the_requests_exactly() -> None:
    arr = np.array([0.0, 0.1 + 0.2, 1234.000000001])
    text = vs.trace_csv(arr, np.array([10, 4000, 1]), np.array([5, 96, 1]))
    lines = text.splitlines()
    assert lines[0] == "Time,Date,PromptTokenCount,CompletionTokenCount"
    rows = [line.split(",") for line in lines[1:]]
    assert [float(r[0]) for r in rows] == arr.tolist()  # bit for bit
    assert {r[1] for r in rows} == {vs.TRACE_DATE}
    assert [(int(r[2]), int(r[3])) for r in rows] == [(10, 5), (4000, 96), (1, 1)]


def test_trace_csv_refuses_what_vidur_would_truncate() -> None:
    with pytest.raises(ValueError, match="4000 \\+ 97 tokens"):
        vs.trace_csv(np.array([0.0]), np.array([4000]), np.array([97]))
    with pytest.raises(ValueError, match="same length"):
        vs.trace_csv(np.array([0.0, 1.0]), np.array([1]), np.array([1]))


def test_hf_dataset_is_the_hub_cache_layout(tmp_path: Path) -> None:
    snap = vs.hf_dataset(tmp_path, "org/name", {"a.csv.xz": b"x", "config.json": b"{}"})
    repo = tmp_path / "datasets--org--name"
    rev = (repo / "refs" / "main").read_text()
    assert snap == repo / "snapshots" / rev
    assert (snap / "a.csv.xz").read_bytes() == b"x" and (snap / "config.json").read_bytes() == b"{}"
    # the revision names the contents: the same files, the same snapshot; others, another
    assert vs.hf_dataset(tmp_path, "org/name", {"config.json": b"{}", "a.csv.xz": b"x"}) == snap
    assert vs.hf_dataset(tmp_path, "org/name", {"a.csv.xz": b"y", "config.json": b"{}"}) != snap


class _Cost:
    """An IterationModel's attention_time over ``layers`` layers: 2 ms per query token and
    1 ms per cached token, per layer."""

    layers = 4

    def attention_time(self, q: np.ndarray, ctx: np.ndarray) -> float:
        return float(self.layers * (2e-3 * q.sum() + 1e-3 * ctx.sum()))


def test_attention_csv_is_per_layer_milliseconds() -> None:
    grid = [(512, 1024, 1, True), (0, 256, 8, False)]
    lines = vs.attention_csv(_Cost(), grid, heads=32, kv_heads=8, hidden=4096).splitlines()
    head = lines[0].split(",")
    rows = [dict(zip(head, line.split(","), strict=True)) for line in lines[1:]]
    assert float(rows[0]["time_stats.attn_prefill.median"]) == pytest.approx(2 * 512 + 1024)
    assert rows[0]["time_stats.attn_decode.median"] == ""
    assert float(rows[1]["time_stats.attn_decode.median"]) == pytest.approx(2 * 8 + 256 * 8)
    assert rows[1]["time_stats.attn_prefill.median"] == ""
    assert (rows[0]["n_embd"], rows[0]["n_q_head"], rows[0]["n_kv_head"], rows[0]["block_size"]) == ("4096", "32", "8", "16")
    assert (rows[1]["prefill_chunk_size"], rows[1]["kv_cache_size"], rows[1]["batch_size"]) == ("0", "256", "8")


def test_vidur_command_matches_the_case() -> None:
    py = Path("/v/bin/python")
    cmd = vs.vidur_command(py, vs.CASES["azure16k-continuous"], Path("/t.csv"), 7537, Path("/c"), Path("/o"))
    assert cmd[:3] == [str(py), "-m", "vidur.main"]
    assert all(isinstance(x, str) for x in cmd)
    def value(flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    assert value("--cache_config_num_blocks") == "7537"
    assert value("--replica_scheduler_config_type") == "vllm"
    assert value("--vllm_scheduler_config_batch_size_cap") == "128"
    assert value("--vllm_scheduler_config_max_tokens_in_batch") == "4096"
    assert value("--replica_config_tensor_parallel_size") == "1"
    assert value("--trace_request_generator_config_trace_file") == "/t.csv"
    assert value("--trace_request_generator_config_time_scale_factor") == "1"
    assert value("--metrics_config_output_dir") == "/o"
    for off in ("--no-metrics_config_store_plots", "--no-metrics_config_enable_chrome_trace",
                "--no-metrics_config_write_json_trace"):
        assert off in cmd
    native = vs.vidur_command(py, vs.CASES["azure16k-continuous"], Path("/t.csv"), 1, Path("/c"), Path("/o"),
                              vs.VARIANTS["vidur-native"])
    assert set(vs.VARIANTS["vidur-native"]) <= set(native) and not set(vs.VARIANTS["vidur-native"]) & set(cmd)
    chunked = vs.vidur_command(py, vs.CASES["azure16k-chunked"], Path("/t.csv"), 1, Path("/c"), Path("/o"))
    assert chunked[chunked.index("--replica_scheduler_config_type") + 1] == "sarathi"
    assert chunked[chunked.index("--sarathi_scheduler_config_chunk_size") + 1] == "512"
    assert value("--cluster_config_num_replicas") == "1"
    three = vs.vidur_command(py, vs.CASES["azure16k-3replicas"], Path("/t.csv"), 1, Path("/c"), Path("/o"))
    assert three[three.index("--cluster_config_num_replicas") + 1] == "3"
    assert three[three.index("--global_scheduler_config_type") + 1] == "round_robin"
    assert vs.CASES["azure16k-3replicas"].variants == ("vidur",)
    assert set(vs.CASES["azure16k-continuous"].variants) == set(vs.VARIANTS)


def test_vidur_env_is_offline_and_without_simkit() -> None:
    env = vs.vidur_env({"PYTHONPATH": "/work/simkit", "HOME": "/root"})
    assert env["HF_HUB_OFFLINE"] == "1" and env["WANDB_MODE"] == "disabled"
    assert env["PYTHONPATH"] == "" and env["HOME"] == "/root"


def test_ended_at_reads_the_last_line() -> None:
    log = "INFO x\nINFO 12-01 simulator.py:83] Simulation ended at: 1985.25s\nINFO Writing output\n"
    assert vs.ended_at(log) == 1985.25
    with pytest.raises(vs.BenchError, match="Simulation ended at"):
        vs.ended_at("INFO nothing\n")


def test_vidur_summary_from_request_metrics(tmp_path: Path) -> None:
    f = tmp_path / "request_metrics.csv"
    f.write_text("Request Id,request_e2e_time,prefill_e2e_time,request_num_decode_tokens\n"
                 "1,2.0,0.5,7\n0,1.0,0.25,3\n2,4.0,1.0,9\n")
    s = vs.vidur_summary(f, [10.0, 11.0, 12.0], [3, 7, 9])
    assert s["ttft_p50_s"] == 0.5 and s["e2e_p50_s"] == 2.0
    assert s["makespan_s"] == pytest.approx(16.0 - 10.0)  # last finish 12 + 4, first arrival 10
    assert s["requests_per_s"] == pytest.approx(3 / 6.0)
    assert s["output_tokens_per_s"] == pytest.approx(19 / 6.0)
    assert s["requests_completed"] == 3.0


def test_phases_from_the_log_time_stamps() -> None:
    log = ("INFO 12-01 23:59:50 config.py:1] config\n"
           "INFO 12-01 23:59:58 simulator.py:57] Starting simulation with cluster: C and 10 requests\n"
           "INFO 12-02 00:00:40 simulator.py:79] Simulation ended at: 99.5s\n"
           "INFO 12-02 00:00:40 simulator.py:84] Writing output\n"
           "INFO 12-02 00:00:43 simulator.py:87] Metrics written\n")
    assert vs.phases(log, 60.0) == (60.0 - 42.0 - 3.0, 42.0, 3.0)  # across midnight
    with pytest.raises(vs.BenchError, match="Metrics written"):
        vs.phases(log.replace("Metrics written", "done"), 60.0)


def test_decompose_is_off_by_default() -> None:
    assert not vs.parse_args([]).decompose
    assert vs.parse_args(["--decompose", "azure16k-chunked"]).decompose


def test_decomposition_parts_sum_to_the_gap() -> None:
    simkit = {"ttft_p50_s": 0.041, "e2e_p50_s": 4.97}
    no_host = {"ttft_p50_s": 0.031, "e2e_p50_s": 2.78}
    priced = {"ttft_p50_s": 0.030, "e2e_p50_s": 3.10}
    vidur = {"ttft_p50_s": 0.032, "e2e_p50_s": 3.32}
    parts = vs.decomposition(simkit, no_host, priced, vidur)
    e = parts["e2e_p50_s"]
    assert e["gap"] == pytest.approx(4.97 - 3.32)
    assert (e["host"], e["scheduler"], e["pricing"]) == pytest.approx((4.97 - 2.78, 2.78 - 3.10, 3.10 - 3.32))
    for k in ("ttft_p50_s", "e2e_p50_s"):
        assert sum(parts[k][f] for f in vs.FACTORS) == pytest.approx(parts[k]["gap"], abs=1e-15)
    assert parts["ttft_p50_s"]["pricing"] == pytest.approx(0.030 - 0.032)


def test_component_totals_split_decode_and_prefill_batches(tmp_path: Path) -> None:
    prices = load_benchmark("vidur_simkit_prices")
    assert vs.COMPONENTS == prices.COLS
    head = ["batch", "tokens", "prefills", "kv_sum", *(f"vidur_{c}" for c in vs.COMPONENTS), "vidur_ms",
            *(f"simkit_{c}" for c in vs.COMPONENTS), "simkit_ms"]

    def row(batch: int, prefills: int, v: float, s: float) -> str:
        cells = [batch, batch, prefills, 0, v, *[0] * (len(vs.COMPONENTS) - 1), v, s, *[0] * (len(vs.COMPONENTS) - 1), s]
        return ",".join(str(x) for x in cells)

    f = tmp_path / "batches.csv"
    f.write_text("\n".join([",".join(head), row(4, 0, 1.0, 2.0), row(8, 0, 3.0, 5.0), row(1, 1, 10.0, 20.0)]) + "\n")
    t = vs.component_totals(f)
    assert t["decode"]["batches"] == 2 and t["prefill"]["batches"] == 1 and t["all"]["batches"] == 3
    assert t["decode"]["vidur_linear"] == 4.0 and t["decode"]["simkit_ms"] == 7.0
    assert t["prefill"]["vidur_ms"] == 10.0 and t["all"]["simkit_linear"] == 27.0


def test_priced_command_wraps_vidurs_arguments() -> None:
    py = Path("/v/bin/python")
    case = vs.CASES["azure16k-chunked"]
    inner = vs.vidur_command(py, case, Path("/t.csv"), 7537, Path("/c"), Path("/o"))
    cmd = vs.priced_command(py, case, "0 s", Path("/b.csv"), inner)
    assert cmd[:6] == [str(py), str(vs.PRICES_SCRIPT), "azure16k-chunked", "0 s", "/b.csv", "--"]
    assert cmd[6:] == inner[3:]
    with pytest.raises(ValueError, match="vidur.main"):
        vs.priced_command(py, case, "0 s", Path("/b.csv"), [str(py), "x.py"])


def test_simkit_prices_group_every_operator() -> None:
    from simkit.cost.ops import OP_NAMES

    prices = load_benchmark("vidur_simkit_prices")
    assert set(prices.GROUPS) == set(OP_NAMES)
    assert {prices._group(n) for n in OP_NAMES} <= set(prices.COLS) - {"other", "host", "comm"}
    assert prices._group("no_such_op") == "other"


def test_simkit_prices_usage_without_separator() -> None:
    prices = load_benchmark("vidur_simkit_prices")
    with pytest.raises(SystemExit, match="BATCHES_CSV"):
        prices.main(["azure16k-continuous", "0 s", "/tmp/b.csv", "--seed", "0"])


def test_simkit_without_host_turns_the_host_term_off() -> None:
    from simkit.scenario import scenario_from_dict
    from simkit.simulate import simulate

    data = vs._serving_speed()._case_data("quickstart")
    with_host = simulate(scenario_from_dict(data), record_iterations=False).summary
    without, per = vs.simkit_without_host(vs.Case("quickstart", ()))
    assert set(without) == set(vs.SUMMARY_KEYS)
    assert len(per["e2e"]) == len(per["ttft"]) == len(per["output"]) == without["requests_completed"]
    assert all(e >= t > 0 for e, t in zip(per["e2e"], per["ttft"], strict=True))
    assert without["requests_completed"] == with_host["requests_completed"]
    # the shipped H100 profile's 4 ms per iteration, gone: every request finishes sooner
    assert without["e2e_p50_s"] < with_host["e2e_p50_s"] and without["ttft_p50_s"] < with_host["ttft_p50_s"]
    # and the benchmark's own case is left as it was
    assert "execution" not in vs._serving_speed()._case_data("quickstart")["plan"]


def test_per_request_ratios_by_output_band(tmp_path: Path) -> None:
    f = tmp_path / "request_metrics.csv"
    f.write_text("Request Id,request_e2e_time,prefill_e2e_time\n2,8.0,0.5\n0,1.0,0.1\n1,4.0,0.2\n")
    vidur = vs.vidur_per_request(f, 3)
    assert vidur == {"e2e": [1.0, 4.0, 8.0], "ttft": [0.1, 0.2, 0.5]}
    simkit = {"e2e": [2.0, 4.0, 4.0], "ttft": [0.1, 0.4, 0.5], "output": [10.0, 60.0, 700.0]}
    rows = vs.per_request_ratios(simkit, vidur)
    assert [r[:2] for r in rows] == [("output 1-49", 1), ("output 50-199", 1), ("output 500+", 1)]
    assert [r[2] for r in rows] == [2.0, 1.0, 0.5] and [r[3] for r in rows] == pytest.approx([1.0, 2.0, 1.0])
    with pytest.raises(vs.BenchError, match="admitted 2 requests, Vidur reported 3"):
        vs.per_request_ratios({"e2e": [1.0, 1.0], "ttft": [1.0, 1.0], "output": [1.0, 1.0]}, vidur)
