"""What-if studies: spec expansion, validation, storage, resumability (counted), executors, show."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import simkit.simulate as simmod
from simkit.cli import main
from simkit.errors import StudyError
from simkit.outputs import jsonable
from simkit.study import load
from simkit.study.executor import Task, execute, flatten, run_task
from simkit.study.progress import Progress
from simkit.study.runner import run_study
from simkit.study.show import render, summary_table
from simkit.study.spec import load_study
from simkit.study.store import RunStore, scenario_hash

ROOT = Path(__file__).resolve().parents[1]


def tiny_base(**over):
    data = {
        "name": "tiny",
        "hardware": "dgx-h100",
        "model": "llama-2-7b",
        "workload": {"synthetic": {"num_requests": 12, "arrival": {"process": "poisson", "rate": 4},
                                   "lengths": {"input": {"dist": "fixed", "value": 128}, "output": {"dist": "fixed", "value": 8}}}},
        "plan": {"precision": {"weights": "fp16", "activations": "fp16", "kv_cache": "fp16"}},
        "calibration": "none",
        "seed": 0,
    }
    data.update(over)
    return data


def write_study(tmp_path: Path, study: dict, name: str = "study.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(study, sort_keys=False))
    return p


@pytest.fixture
def count_sims(monkeypatch):
    calls: list[dict] = []
    real = simmod.simulate

    def counting(sc, **kw):
        calls.append(sc.raw_data())
        return real(sc, **kw)

    monkeypatch.setattr(simmod, "simulate", counting)
    return calls


# ---- store -----------------------------------------------------------------------------------
def test_scenario_hash_is_canonical():
    a = {"b": 1, "a": {"y": [1, 2], "x": "s"}}
    b = {"a": {"x": "s", "y": [1, 2]}, "b": 1}
    assert scenario_hash(a) == scenario_hash(b)
    assert len(scenario_hash(a)) == 16 and int(scenario_hash(a), 16) >= 0
    assert scenario_hash(a) != scenario_hash({**a, "b": 2})


def test_run_id_changes_when_inputs_change(tmp_path, monkeypatch):
    """A stored run is reused only while nothing it depends on changed: an edited catalog file
    (a user GPU YAML), a re-written trace, or a new simkit version give a new run id."""
    import simkit
    import simkit.study.store as store

    trace = tmp_path / "t.csv"
    trace.write_text("arrival_time,input_tokens,output_tokens\n0.0,10,5\n")
    data = {"model": "llama-2-7b", "workload": {"trace": {"path": str(trace)}}}
    cat = tmp_path / "cat"
    cat.mkdir()
    gpu = yaml.safe_load((Path(__file__).resolve().parents[1] / "hw_specs" / "gpus" / "h100-sxm.yaml").read_text())
    gpu["name"] = "my-gpu"
    (cat / "my-gpu.yaml").write_text(yaml.safe_dump(gpu))
    monkeypatch.setenv("SIMKIT_CATALOG_PATH", str(cat))
    monkeypatch.setattr(store, "_FINGERPRINTS", {})
    first = scenario_hash(data)
    assert scenario_hash(data) == first  # stable while nothing changes
    gpu["memory"] = "40 GiB"
    (cat / "my-gpu.yaml").write_text(yaml.safe_dump(gpu))
    monkeypatch.setattr(store, "_FINGERPRINTS", {})  # a new process
    edited = scenario_hash(data)
    assert edited != first
    trace.write_text("arrival_time,input_tokens,output_tokens\n0.0,10,5\n1.0,20,5\n")
    assert scenario_hash(data) != edited
    after_trace = scenario_hash(data)
    monkeypatch.setattr(simkit, "__version__", "99.0.0")
    monkeypatch.setattr(store, "_FINGERPRINTS", {})
    assert scenario_hash(data) != after_trace


def test_run_store_roundtrip(tmp_path):
    st = RunStore(tmp_path)
    assert st.done() == set() and st.rows() == []
    st.put_files("r1", {"summary.json": b"{}"})
    assert st.done() == set()  # files alone do not make a run finished
    st.put("r1", {"run_id": "r1", "status": "ok", "x": 1.5})
    st.put("r2", {"run_id": "r2", "status": "error", "error": "no"})
    assert st.done() == {"r1", "r2"}
    assert [r["run_id"] for r in st.rows()] == ["r1", "r2"]
    st.put("r3", {"run_id": "r3", "a": 1}, labels=["a"])
    assert st.labels("r3") == ["a"] and st.row("r3") == {"run_id": "r3", "a": 1} and st.labels("r1") == []
    assert st.rows()[0]["x"] == 1.5
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "l": [1, 2], "e": {}}) == {"a.b": 1, "a.c.d": 2, "l": "[1, 2]"}


# ---- spec ------------------------------------------------------------------------------------
def test_grid_zip_list_variants_repeat_expand(tmp_path):
    p = write_study(tmp_path, {
        "base": tiny_base(),
        "variants": {"a": {}, "b": {"plan.batching.max_num_seqs": 8}},
        "baseline": "b",
        "axes": {
            "grid": {"workload.synthetic.arrival.rate": [2, 4, 8]},
            "zip": {"plan.kv_cache.block_size": [16, 32], "plan.kv_cache.watermark": [0.01, 0.02]},
            "list": [{"plan.batching.policy": "continuous"}, {"plan.batching.policy": "chunked_prefill", "plan.batching.chunk_size": 64}],
        },
        "repeat": 2,
    })
    st = load_study(p)
    tasks = st.tasks()
    assert len(tasks) == 3 * 2 * 2 * 2 * 2
    assert st.baseline == "b" and st.variant_names == ["a", "b"]
    assert st.axis_keys == ["workload.synthetic.arrival.rate", "plan.kv_cache.block_size", "plan.kv_cache.watermark",
                            "plan.batching.policy", "plan.batching.chunk_size"]
    t = tasks[-1]
    assert t.labels == {"workload.synthetic.arrival.rate": 8, "plan.kv_cache.block_size": 32, "plan.kv_cache.watermark": 0.02,
                        "plan.batching.policy": "chunked_prefill", "plan.batching.chunk_size": 64, "variant": "b", "repeat": 1}
    sc = t.scenario
    assert sc["plan"]["kv_cache"] == {"block_size": 32, "watermark": 0.02}
    assert sc["plan"]["batching"] == {"policy": "chunked_prefill", "chunk_size": 64, "max_num_seqs": 8}
    assert sc["seed"] == 1 and tasks[-2].scenario["seed"] == 0
    assert tasks[0].labels["plan.batching.chunk_size"] is None
    assert len({t.run_id for t in tasks}) == len(tasks)
    # zip is lock-step: block size 16 always goes with watermark 0.01
    assert {(t.labels["plan.kv_cache.block_size"], t.labels["plan.kv_cache.watermark"]) for t in tasks} == {(16, 0.01), (32, 0.02)}


def test_ranges_with_units(tmp_path):
    p = write_study(tmp_path, {
        "base": tiny_base(),
        "axes": {"grid": {
            "plan.execution.iteration_overhead": {"range": "1 ms..100 ms", "count": 3, "scale": "log"},
            "workload.synthetic.arrival.rate": {"range": "2..10", "step": 4},
            "plan.kv_cache.gpu_memory_utilization": {"range": "0.5..0.9", "count": 3},
            "plan.batching.max_num_seqs": {"range": "2..40", "count": 4, "scale": "log", "integer": True},
        }},
    })
    st = load_study(p)
    tasks = st.tasks()
    vals = lambda k: list(dict.fromkeys(t.labels[k] for t in tasks))  # noqa: E731
    assert vals("plan.execution.iteration_overhead") == ["1 ms", "10 ms", "100 ms"]
    assert vals("workload.synthetic.arrival.rate") == [2, 6, 10]
    assert all(isinstance(v, int) for v in vals("workload.synthetic.arrival.rate"))
    assert vals("plan.kv_cache.gpu_memory_utilization") == [0.5, 0.7, 0.9]
    assert vals("plan.batching.max_num_seqs") == [2, 5, 15, 40]
    assert all(isinstance(v, int) for v in vals("plan.batching.max_num_seqs"))
    # the value set in the scenario is what the label says, and the scenario parses it in SI
    from simkit.scenario import scenario_from_dict

    assert scenario_from_dict(tasks[-1].scenario).plan.execution.iteration_overhead == pytest.approx(0.1)


def test_bandwidth_and_size_ranges(tmp_path):
    p = write_study(tmp_path, {
        "base": tiny_base(),
        "axes": {"grid": {"hardware.dram.capacity": {"range": "512 GiB..2 TiB", "count": 3, "scale": "log"}}},
    })
    assert [t.labels["hardware.dram.capacity"] for t in load_study(p).tasks()] == ["512 GiB", "1024 GiB", "2048 GiB"]


def test_random_axes_are_seeded(tmp_path):
    study = {"base": tiny_base(), "axes": {"random": {"samples": 6, "seed": 3, "keys": {
        "workload.synthetic.arrival.rate": {"range": "1..20", "scale": "log"},
        "plan.batching.policy": ["continuous", "chunked_prefill"]}}}}
    a = [t.labels for t in load_study(write_study(tmp_path, study, "a.yaml")).tasks()]
    b = [t.labels for t in load_study(write_study(tmp_path, study, "b.yaml")).tasks()]
    assert a == b and len(a) == 6
    rates = [x["workload.synthetic.arrival.rate"] for x in a]
    assert all(1 <= r <= 20 for r in rates) and len(set(rates)) == 6
    study["axes"]["random"]["seed"] = 4
    c = [t.labels for t in load_study(write_study(tmp_path, study, "c.yaml")).tasks()]
    assert c != a


def test_negative_random_seed_is_a_clear_error(tmp_path, capsys):
    """numpy refuses a negative seed with a traceback; the study refuses it at load, naming the key."""
    study = {"base": tiny_base(), "axes": {"random": {"samples": 2, "seed": -1, "keys": {
        "plan.batching.policy": ["continuous", "chunked_prefill"]}}}}
    path = write_study(tmp_path, study)
    with pytest.raises(StudyError, match="greater than or equal to 0") as e:
        load_study(path)
    assert e.value.key == "axes.random.seed"
    assert main(["study", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "axes.random.seed" in err and "Traceback" not in err


def test_base_path_relative_to_study_and_paths_made_absolute(tmp_path):
    (tmp_path / "sc").mkdir()
    (tmp_path / "sc" / "base.yaml").write_text(yaml.safe_dump(tiny_base(
        workload={"trace": {"path": str(ROOT / "workloads/traces/burstgpt_sample.csv")}, "limit": 5})))
    (tmp_path / "st").mkdir()
    p = write_study(tmp_path / "st", {"base": "../sc/base.yaml", "axes": {"grid": {"plan.parallel.tp": [1, 2]}}})
    st = load_study(p)
    tasks = st.tasks()
    assert st.base_source == str(tmp_path / "st" / "../sc/base.yaml")
    assert Path(tasks[0].scenario["workload"]["trace"]["path"]).is_absolute()


def err_of(tmp_path, study, name="bad.yaml") -> StudyError:
    p = write_study(tmp_path, study, name)
    with pytest.raises(StudyError) as e:
        load_study(p).tasks()
    assert str(p) in str(e.value)
    return e.value


@pytest.mark.parametrize(
    ("axes", "key", "words"),
    [
        ({"grid": {"plan.batching.max_num_seq": [1, 2]}}, "axes.grid.plan.batching.max_num_seq", "unknown key"),
        ({"grid": {"plan.parallel.tp": ["two", 4]}}, "axes.grid.plan.parallel.tp", "integer"),
        ({"grid": {"hardware.links.host_to_gpuu": ["pcie-gen5-x16"]}}, "axes.grid.hardware.links.host_to_gpuu", "unknown key"),
        ({"grid": {"hardware.bandwidth_scale.pcie": [2.0]}}, "axes.grid.hardware.bandwidth_scale.pcie", "unknown key"),
        ({"grid": {"model": ["no-such-model"]}}, "axes.grid.model", "no-such-model"),
        ({"zip": {"plan.parallel.tp": [1, 2], "plan.batching.max_num_seqs": [8, 16, 32]}}, "axes.zip.plan.batching.max_num_seqs", "equal lengths"),
        ({"grid": {"plan.parallel.tp": []}}, "axes.grid.plan.parallel.tp", "empty"),
        ({"grid": {"plan.parallel.tp": 2}}, "axes.grid.plan.parallel.tp", "list of values"),
        ({"grid": {"plan.execution.iteration_overhead": {"range": "1 ms..10 GB", "count": 3}}}, "axes.grid.plan.execution.iteration_overhead", "same kind"),
        ({"grid": {"plan.execution.iteration_overhead": {"range": "1 ms..10 ms"}}}, "axes.grid.plan.execution.iteration_overhead", "count"),
        ({"grid": {"plan.kv_cache.block_size": {"range": "0..10", "count": 3, "scale": "log"}}}, "axes.grid.plan.kv_cache.block_size", "log"),
        ({"grid": {"plan.parallel.tp": [1]}, "zip": {"plan.parallel.tp": [2]}}, "axes.zip.plan.parallel.tp", "also set by"),
        ({"grid": {"plan.parallel": [{"tp": 2}], "plan.parallel.pp": [1]}}, "axes.grid.plan.parallel.pp", "overlaps"),
        ({"grid": {"plan.batching.policy": ["fancy"]}}, "axes.grid.plan.batching.policy", "unknown batching policy"),
        ({"grid": {"workload.synthetic.lengths.input.dist": ["normal"]}}, "axes.grid.workload.synthetic.lengths.input.dist", "fixed"),
        ({"list": [{"plan.parallel.tp": 2}, {}]}, "axes.list.1", "empty"),
        ({"grid": {"status": [1]}}, "axes.grid.status", "reserved"),
        ({}, "axes", "varies nothing"),
    ],
)
def test_bad_axes_name_file_and_key(tmp_path, axes, key, words, count_sims):
    e = err_of(tmp_path, {"base": tiny_base(), "axes": axes})
    assert e.key == key, str(e)
    assert words in str(e)
    assert count_sims == []  # nothing ran


def test_bad_study_files(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(StudyError, match="empty"):
        load_study(tmp_path / "empty.yaml")
    e = err_of(tmp_path, {"base": tiny_base(), "axes": {"grid": {"seed": [1]}}, "repeat": 2})
    assert e.key == "axes.grid.seed"
    e = err_of(tmp_path, {"base": tiny_base(), "variants": {"a": {}}, "baseline": "b"})
    assert e.key == "baseline"
    e = err_of(tmp_path, {"base": tiny_base(), "variants": {"a": {"plan.parallel.tp": 2}}, "axes": {"grid": {"plan.parallel.tp": [1]}}})
    assert e.key == "variants.a.plan.parallel.tp"
    e = err_of(tmp_path, {"base": "nope.yaml", "axes": {"grid": {"seed": [1]}}})
    assert e.key == "base" and "not found" in str(e)
    e = err_of(tmp_path, {"base": tiny_base(), "axes": {"grid": {"seed": [1]}}, "axess": 1})
    assert e.key == "axess"
    e = err_of(tmp_path, {"base": tiny_base(), "set": {"plan.parallel.tpp": 1}, "axes": {"grid": {"seed": [1]}}})
    assert e.key == "set.plan.parallel.tpp"
    e = err_of(tmp_path, {"base": tiny_base(workload={}), "axes": {"grid": {"seed": [1]}}})
    assert e.key.startswith("base")


def test_cli_bad_study_is_one_line_exit_2(tmp_path, capsys):
    p = write_study(tmp_path, {"base": tiny_base(), "axes": {"grid": {"plan.batching.max_num_seq": [1, 2]}}})
    assert main(["study", str(p), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(p) in err and "axes.grid.plan.batching.max_num_seq" in err
    assert not (tmp_path / "out").exists()


# ---- running, storing, resuming ----------------------------------------------------------------
def test_minimal_interface_and_resume(tmp_path, capsys, count_sims):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_base()))
    p = write_study(tmp_path, {"base": "base.yaml", "axes": {"grid": {
        "workload.synthetic.arrival.rate": [2, 8], "plan.batching.max_num_seqs": [4, 64]}}})
    out = tmp_path / "out"
    assert main(["study", str(p), "--out", str(out), "--jobs", "1"]) == 0
    assert len(count_sims) == 4
    df = pd.read_parquet(out / "runs.parquet")
    assert len(df) == 4
    for c in ("workload.synthetic.arrival.rate", "plan.batching.max_num_seqs", "run_id", "status", "error",
              "variant", "repeat", "ttft_p90_s", "output_tokens_per_s", "memory.hbm.used_bytes", "per_gpu"):
        assert c in df.columns, c
    assert list(df["workload.synthetic.arrival.rate"]) == [2, 2, 8, 8]
    assert set(df["status"]) == {"ok"} and set(df["error"]) == {""}
    assert df["run_id"].is_unique
    for rid in df["run_id"]:
        sc = yaml.safe_load((out / "runs" / rid / "scenario.yaml").read_text())
        assert scenario_hash(sc) == rid
        summ = json.loads((out / "runs" / rid / "summary.json").read_text())
        row = df[df["run_id"] == rid].iloc[0]
        assert row["ttft_p90_s"] == summ["ttft_p90_s"] and row["output_tokens"] == summ["output_tokens"]
        assert json.loads(row["per_gpu"]) == summ["per_gpu"]
    info = json.loads((out / "study.json").read_text())
    assert info["axes"] == ["workload.synthetic.arrival.rate", "plan.batching.max_num_seqs"]
    assert info["variants"] == [] and info["baseline"] is None and "ttft_p90_s" in info["metrics"]
    # again: nothing recomputed, same table
    before = (out / "runs.parquet").read_bytes()
    assert main(["study", str(p), "--out", str(out)]) == 0
    assert len(count_sims) == 4
    assert pd.read_parquet(out / "runs.parquet").equals(pd.read_parquet(io.BytesIO(before)))
    assert "4 reused" in capsys.readouterr().out
    # the same result from Python in one call
    assert load(out).equals(pd.read_parquet(out / "runs.parquet"))


def test_changed_study_recomputes_only_changed_runs(tmp_path, count_sims):
    study = {"base": tiny_base(), "variants": {"small": {"plan.batching.max_num_seqs": 4}, "big": {}},
             "axes": {"grid": {"workload.synthetic.arrival.rate": [2, 8]}}}
    p = write_study(tmp_path, study)
    out = tmp_path / "out"
    r1 = run_study(p, out, progress=False)
    assert len(count_sims) == 4 and r1.stats.ran == 4
    # a new axis value and a renamed variant: only the one new scenario runs
    study["axes"]["grid"]["workload.synthetic.arrival.rate"] = [2, 8, 16]
    study["variants"] = {"small-batch": {"plan.batching.max_num_seqs": 4}, "big": {}}
    write_study(tmp_path, study)
    r2 = run_study(p, out, progress=False)
    assert len(count_sims) == 6 and r2.stats.ran == 2 and r2.stats.reused == 4
    df = load(out)
    assert len(df) == 6 and set(df["variant"]) == {"small-batch", "big"}  # stored runs carry the new labels
    # a change of the base scenario changes every resolved scenario: all recomputed
    study["base"]["seed"] = 7
    write_study(tmp_path, study)
    r3 = run_study(p, out, progress=False)
    assert r3.stats.ran == 6 and len(count_sims) == 12
    assert len(load(out)) == 6
    # rows of the older scenarios stay in the store, not in the table
    assert len(RunStore(out).done()) == 12


def test_identical_scenarios_run_once(tmp_path, count_sims):
    p = write_study(tmp_path, {"base": tiny_base(), "axes": {"grid": {"plan.batching.max_num_seqs": [256, 256]}}})
    r = run_study(p, tmp_path / "out", progress=False)
    assert len(count_sims) == 1 and r.stats.total == 1
    df = load(tmp_path / "out")
    assert len(df) == 2 and df["run_id"].nunique() == 1


def test_failing_run_is_recorded_and_study_goes_on(tmp_path, count_sims):
    p = write_study(tmp_path, {"base": tiny_base(), "variants": {"7b": {}, "70b": {"model": "llama-2-70b"}},
                               "axes": {"grid": {"plan.parallel.tp": [1, 4]}}})
    r = run_study(p, tmp_path / "out", progress=False)
    df = load(tmp_path / "out")
    bad = df[df["status"] == "error"]
    assert len(bad) == 1 and r.stats.failed == 1 and r.stats.ok == 3
    row = bad.iloc[0]
    assert row["variant"] == "70b" and row["plan.parallel.tp"] == 1
    assert "does not fit" in row["error"] or "not fit" in row["error"] or "need" in row["error"]
    assert pd.isna(row["ttft_p90_s"])
    assert (df[df["status"] == "ok"]["ttft_p90_s"] > 0).all()
    # error runs are finished runs: not recomputed
    run_study(p, tmp_path / "out", progress=False)
    assert len(count_sims) == 4


def test_keep_tables(tmp_path):
    p = write_study(tmp_path, {"base": tiny_base(), "axes": {"grid": {"plan.batching.max_num_seqs": [4, 8]}}, "keep": {"tables": True}})
    run_study(p, tmp_path / "out", progress=False)
    for rid in load(tmp_path / "out")["run_id"]:
        d = tmp_path / "out" / "runs" / rid
        assert len(pd.read_parquet(d / "requests.parquet")) == 12
        assert len(pd.read_parquet(d / "iterations.parquet")) > 0


def test_summary_without_tables_matches_a_plain_run(tmp_path):
    from simkit.scenario import scenario_from_dict

    data = tiny_base()
    row = run_task(Task(scenario_hash(data), data, str(tmp_path), {"x": 1}), out_dir=tmp_path / "r")
    full = simmod.simulate(scenario_from_dict(data))
    summ = json.loads((tmp_path / "r" / "summary.json").read_text())
    full_json = jsonable(full.summary)
    assert {k: v for k, v in summ.items() if k != "sim_wall_s"} == {k: v for k, v in full_json.items() if k != "sim_wall_s"}
    assert row["x"] == 1 and row["status"] == "ok" and row["output_tokens"] == full.summary["output_tokens"]


def _metrics_frame(folder: Path) -> pd.DataFrame:
    df = load(folder)
    return df.drop(columns=["sim_wall_s"], errors="ignore").sort_values("run_id").reset_index(drop=True)


def test_process_pool_gives_the_same_rows(tmp_path):
    p = write_study(tmp_path, {"base": tiny_base(), "variants": {"a": {}, "b": {"plan.batching.max_num_seqs": 4}},
                               "axes": {"grid": {"workload.synthetic.arrival.rate": [2, 8]}}})
    run_study(p, tmp_path / "one", jobs=1, progress=False)
    r = run_study(p, tmp_path / "two", jobs=2, progress=False)
    assert r.stats.ran == 4
    pd.testing.assert_frame_equal(_metrics_frame(tmp_path / "one"), _metrics_frame(tmp_path / "two"))
    assert (load(tmp_path / "one")["run_id"] == load(tmp_path / "two")["run_id"]).all()  # same order


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_gives_identical_results(tmp_path, ray_local):
    p = write_study(tmp_path, {"base": tiny_base(), "variants": {"a": {}, "b": {"plan.batching.max_num_seqs": 4}},
                               "axes": {"grid": {"workload.synthetic.arrival.rate": [2, 8]}}, "keep": {"tables": True}})
    run_study(p, tmp_path / "local", jobs=1, progress=False)
    r = run_study(p, tmp_path / "ray", executor="ray", progress=False)
    assert r.stats.ran == 4 and r.stats.ok == 4
    pd.testing.assert_frame_equal(_metrics_frame(tmp_path / "local"), _metrics_frame(tmp_path / "ray"))
    for rid in load(tmp_path / "ray")["run_id"]:
        for f in ("scenario.yaml", "requests.parquet"):
            assert (tmp_path / "ray" / "runs" / rid / f).read_bytes() == (tmp_path / "local" / "runs" / rid / f).read_bytes()
    # resuming on Ray recomputes nothing; the command line reaches the same instance
    assert run_study(p, tmp_path / "ray", executor="ray", progress=False).stats.ran == 0
    assert main(["study", str(p), "--out", str(tmp_path / "cli"), "--executor", "ray", "--no-progress"]) == 0
    pd.testing.assert_frame_equal(_metrics_frame(tmp_path / "local"), _metrics_frame(tmp_path / "cli"))


def test_ray_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    p = write_study(tmp_path, {"base": tiny_base(), "axes": {"grid": {"plan.batching.max_num_seqs": [4]}}})
    with pytest.raises(StudyError, match=r"simkit\[ray\]"):
        run_study(p, tmp_path / "out", executor="ray", progress=False)


@pytest.mark.parametrize("jobs", [1, 2])
def test_kill_9_then_restart_loses_and_duplicates_nothing(tmp_path, jobs):
    """A real `simkit study` process killed with SIGKILL mid-study, then started again: every run
    finished before the kill is kept (not recomputed), the others run exactly once, and no worker
    process outlives the killed study."""
    psutil = pytest.importorskip("psutil")
    p = write_study(tmp_path, {"base": tiny_base(workload={"synthetic": {
        "num_requests": 200, "arrival": {"process": "poisson", "rate": 20},
        "lengths": {"input": {"dist": "fixed", "value": 256}, "output": {"dist": "fixed", "value": 64}}}}),
        "axes": {"grid": {"workload.synthetic.arrival.rate": [5, 10, 15, 20, 25, 30], "plan.batching.max_num_seqs": [16, 64]}}})
    out = tmp_path / "out"
    log = tmp_path / "sims.log"
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(  # counts the simulations of this process (with --jobs 1 every run is one)
        "import sys\nimport simkit.simulate as s\nreal = s.simulate\n"
        "def counting(sc, **kw):\n"
        f"    r = real(sc, **kw)\n    open({str(log)!r}, 'a').write(sc.raw_data()['name'] + ' done\\n')\n    return r\n"
        "s.simulate = counting\nfrom simkit.cli import main\nif __name__ == '__main__':\n    sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(wrapper), "study", str(p), "--out", str(out), "--jobs", str(jobs), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = RunStore(out)
    deadline = time.time() + 240
    while len(store.done()) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"processes outlived the killed study: {alive}"
    done_at_kill = store.done()
    assert 3 <= len(done_at_kill) < 12, "the study finished before it could be killed; make runs longer"
    snapshot = {r: (out / "runs" / r / "row.json").read_bytes() for r in done_at_kill}
    log.write_text("")
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert f"{12 - len(done_at_kill)} simulated now (0 failed), {len(done_at_kill)} reused" in res.stdout
    if jobs == 1:
        assert len(log.read_text().splitlines()) == 12 - len(done_at_kill)
    df = load(out)
    assert len(df) == 12 and df["run_id"].is_unique and set(df["status"]) == {"ok"}
    for r, b in snapshot.items():
        assert (out / "runs" / r / "row.json").read_bytes() == b


# ---- looking at results --------------------------------------------------------------------------
@pytest.fixture
def finished_study(tmp_path):
    p = write_study(tmp_path, {"name": "demo", "base": tiny_base(), "variants": {"fast": {}, "slow": {"plan.execution.iteration_overhead": "5 ms"}},
                               "baseline": "fast", "axes": {"grid": {"workload.synthetic.arrival.rate": [2, 8]}}, "repeat": 2})
    run_study(p, tmp_path / "out", progress=False)
    return tmp_path / "out"


def test_show_table_deltas_against_baseline(finished_study):
    cols, rows, metrics = summary_table(finished_study, ["ttft_p90_s", "output_tokens_per_s"])
    assert len(rows) == 4 and "ttft_p90_s vs baseline %" in cols and "runs" in cols
    df = load(finished_study)
    for r in rows:
        sel = df[(df["variant"] == r["variant"]) & (df["workload.synthetic.arrival.rate"] == r["workload.synthetic.arrival.rate"])]
        assert len(sel) == 2 and r["runs"] == 2
        assert r["ttft_p90_s"] == pytest.approx(sel["ttft_p90_s"].mean())
        base = df[(df["variant"] == "fast") & (df["workload.synthetic.arrival.rate"] == r["workload.synthetic.arrival.rate"])]["ttft_p90_s"].mean()
        assert r["ttft_p90_s vs baseline %"] == pytest.approx(100 * (r["ttft_p90_s"] - base) / base)
    slow = [r for r in rows if r["variant"] == "slow"]
    assert all(r["ttft_p90_s vs baseline %"] > 0 for r in slow)  # 5 ms per iteration more is slower


def test_show_formats(finished_study, capsys):
    assert main(["study", "show", str(finished_study)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# study demo: 4 points") and "slow" in out and "%)" in out
    assert main(["study", "show", str(finished_study), "--format", "csv", "--metrics", "ttft_p90_s"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "workload.synthetic.arrival.rate,variant,runs,status,ttft_p90_s,ttft_p90_s vs baseline %,error"
    assert len(lines) == 5
    assert main(["study", "show", str(finished_study), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 4 and data[0]["variant"] == "fast" and data[0]["ttft_p90_s vs baseline %"] == 0.0
    assert main(["study", "show", str(finished_study), "--format", "markdown"]) == 0
    md = capsys.readouterr().out.splitlines()
    assert md[0].startswith("| workload.synthetic.arrival.rate | variant |") and md[1].startswith("|---|")
    assert main(["study", "show", str(finished_study), "--metrics", "nope"]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err
    assert main(["study", "show", str(finished_study.parent)]) == 2


def test_show_text_metrics(finished_study, capsys):
    """A text metric (bottleneck, engine_path) shows its value, not "-", and gets no change column."""
    df = load(finished_study)
    cols, rows, _ = summary_table(finished_study, ["bottleneck", "ttft_p90_s"])
    for r in rows:
        sel = df[(df["variant"] == r["variant"]) & (df["workload.synthetic.arrival.rate"] == r["workload.synthetic.arrival.rate"])]
        assert r["bottleneck"] == " / ".join(dict.fromkeys(sel["bottleneck"]))
        assert r["bottleneck vs baseline %"] is None and r["ttft_p90_s vs baseline %"] is not None
    assert main(["study", "show", str(finished_study), "--metrics", "engine_path"]) == 0
    out = capsys.readouterr().out.splitlines()[2:]
    assert len(out) == 4 and all(line.rstrip().endswith(df["engine_path"].iloc[0]) for line in out)


def test_render_json_is_plain(finished_study):
    json.loads(render(finished_study, "json"))


def test_progress_bar_counts_failures_and_eta():
    import io

    buf = io.StringIO()
    bar = Progress(4, reused=2, stream=buf)
    bar.start()
    for ok in (True, False, True, True):
        bar.update(ok)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("[....") and "0/4 runs, 0 failed, 2 reused" in lines[0] and "ETA ?" in lines[0]
    assert "4/4 runs, 1 failed" in lines[-1] and "ETA 0s" in lines[-1]

    class Tty(io.StringIO):
        def isatty(self):
            return True

    t = Tty()
    bar = Progress(3, stream=t)
    bar.start()
    for _ in range(3):
        bar.update(True)
    assert t.getvalue().startswith("\r[") and t.getvalue().endswith("\n") and "3/3" in t.getvalue()


def test_execute_api_skips_done(tmp_path, count_sims):
    data = tiny_base()
    tasks = [Task(scenario_hash(d), d, str(tmp_path), {"n": n})
             for n, d in ((n, {**data, "seed": n}) for n in range(3))]
    store = RunStore(tmp_path / "s")
    s1 = execute(tasks[:2], store, progress=False)
    s2 = execute(tasks, store, progress=False)
    assert (s1.ran, s2.ran, s2.reused) == (2, 1, 2) and len(count_sims) == 3
    assert {r["run_id"] for r in store.rows()} == {t.run_id for t in tasks}
    with pytest.raises(StudyError, match="unknown executor"):
        execute(tasks, store, executor="dask")


# ---- the shipped examples ---------------------------------------------------------------------
CUTS = {
    "rate-tp-prefix.yaml": ["workload.limit=20"],
    "pcie-what-if.yaml": ["workload.batch.output_tokens=2", "workload.batch.num_prompts=4"],
    "dram-for-kv-offload.yaml": ["workload.batch.output_tokens=2", "workload.batch.num_prompts=2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CUTS))
def test_shipped_examples_run(tmp_path, name):
    path = ROOT / "workloads" / "studies" / name
    full = load_study(path)
    n = len(full.tasks())
    r = run_study(path, tmp_path / "out", jobs=1, progress=False, overrides=CUTS[name])
    df = load(tmp_path / "out")
    assert len(df) == n == len(r.rows)
    assert set(df["status"]) == {"ok"}, df["error"].unique()
    render(tmp_path / "out")


def test_every_shipped_example_is_tested():
    assert sorted(p.name for p in (ROOT / "workloads" / "studies").glob("*.yaml")) == sorted(CUTS)


# ---- properties --------------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from simkit.study.spec import Range, axis_values  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(lo=st.floats(0.001, 1000), factor=st.floats(1.5, 1000), count=st.integers(2, 30),
       scale=st.sampled_from(["linear", "log"]), unit=st.sampled_from(["ms", "GiB", "GB/s"]))
def test_unit_range_points_property(lo, factor, count, scale, unit):
    hi = lo * factor
    text = f"{lo:.6g} {unit}..{hi:.6g} {unit}"
    rng, spec = Range.parse({"range": text, "count": count, "scale": scale}, "k")
    try:
        pts = rng.points(spec, "k")
    except StudyError as e:  # 6 significant digits can merge neighbouring points: refused, not silently merged
        assert "repeated values" in e.message
        return
    assert len(pts) == count and pts[0] == f"{float(f'{lo:.6g}'):.6g} {unit}" and pts[-1] == f"{float(f'{hi:.6g}'):.6g} {unit}"
    parse = {"ms": lambda s: float(s.split()[0]), "GiB": lambda s: float(s.split()[0]), "GB/s": lambda s: float(s.split()[0])}[unit]
    vals = [parse(p) for p in pts]
    assert vals == sorted(vals) and len(set(vals)) == count


@settings(max_examples=60, deadline=None)
@given(lo=st.integers(0, 100), span=st.integers(1, 500), step=st.integers(1, 50))
def test_integer_step_range_property(lo, span, step):
    pts = axis_values({"range": f"{lo}..{lo + span}", "step": step}, "k")
    assert pts == list(range(lo, lo + span + 1, step))
    assert all(isinstance(p, int) for p in pts)


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3), n_variants=st.integers(0, 3), repeat=st.integers(1, 3))
def test_run_count_and_ids_property(tmp_path_factory, sizes, n_variants, repeat):
    keys = ["plan.batching.max_num_seqs", "plan.kv_cache.block_size", "plan.batching.max_num_batched_tokens"]
    grid = {keys[i]: [2 ** (4 + j) for j in range(n)] for i, n in enumerate(sizes)}
    variants = {f"v{i}": {"plan.kv_cache.watermark": 0.01 * (i + 1)} for i in range(n_variants)}
    tmp = tmp_path_factory.mktemp("prop")
    st_ = load_study(write_study(tmp, {"base": tiny_base(), "variants": variants, "axes": {"grid": grid}, "repeat": repeat}))
    tasks = st_.tasks()
    n = 1
    for s in sizes:
        n *= s
    assert len(tasks) == n * max(1, n_variants) * repeat
    assert len({t.run_id for t in tasks}) == len(tasks)  # every combination is a distinct scenario
    assert len({json.dumps(t.labels, sort_keys=True) for t in tasks}) == len(tasks)


def test_cli_dry_run_and_set(tmp_path, capsys, count_sims):
    p = write_study(tmp_path, {"base": tiny_base(), "axes": {"grid": {"plan.batching.max_num_seqs": [4, 8, 16]}}})
    out = tmp_path / "out"
    assert main(["study", str(p), "--out", str(out), "--dry-run"]) == 0
    assert "3 runs (3 distinct scenarios), 0 already in" in capsys.readouterr().out and count_sims == []
    assert main(["study", str(p), "--out", str(out), "--jobs", "1", "--no-progress", "--set", "workload.synthetic.num_requests=3"]) == 0
    assert len(count_sims) == 3 and all(c["workload"]["synthetic"]["num_requests"] == 3 for c in count_sims)
    assert set(load(out)["requests_total"]) == {3}
    capsys.readouterr()
    assert main(["study", str(p), "--out", str(out), "--dry-run", "--set", "workload.synthetic.num_requests=3"]) == 0
    assert "3 already in" in capsys.readouterr().out
    assert main(["study", str(p), "--out", str(out), "--set", "plan.parallel.tpp=2"]) == 2
    assert "set.plan.parallel.tpp" in capsys.readouterr().err


def test_stored_scenario_reproduces_the_run(tmp_path, monkeypatch):
    """runs/<run_id>/scenario.yaml is self-contained: `simkit run` on it, from another folder,
    gives the stored summary (relative trace paths were made absolute)."""
    import shutil

    (tmp_path / "sc").mkdir()
    shutil.copy(ROOT / "workloads/traces/burstgpt_sample.csv", tmp_path / "sc" / "trace.csv")
    (tmp_path / "sc" / "base.yaml").write_text(yaml.safe_dump(tiny_base(workload={"trace": {"path": "trace.csv"}, "limit": 20})))
    p = write_study(tmp_path, {"base": "sc/base.yaml", "axes": {"grid": {"plan.batching.max_num_seqs": [2, 16]}}})
    run_study(p, tmp_path / "out", progress=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for rid in load(tmp_path / "out")["run_id"]:
        d = tmp_path / "out" / "runs" / rid
        assert main(["run", str(d / "scenario.yaml"), "--out", str(elsewhere / rid)]) == 0
        a = json.loads((d / "summary.json").read_text())
        b = json.loads((elsewhere / rid / "summary.json").read_text())
        a.pop("sim_wall_s", None)
        b.pop("sim_wall_s", None)
        assert a == b


def test_bandwidth_scale_applies_to_measured_rates():
    """'What if PCIe were twice as fast?' on a node whose link rates were measured (gcp-t4-vm's
    `measured:` block): the measured rates scale too, instead of silently ignoring the what-if."""
    from simkit.cost.links import link_rates
    from simkit.specs.node import resolve_node

    base = link_rates(resolve_node("gcp-t4-vm"), 1)
    assert resolve_node("gcp-t4-vm").spec.measured is not None
    fast = link_rates(resolve_node({"preset": "gcp-t4-vm", "bandwidth_scale": {"host_to_gpu": 2.0}}), 1)
    for k in ("h2d", "d2h", "d2h_kv"):
        assert fast[k][0] == pytest.approx(2 * base[k][0])
    for k in ("nvme_read", "nvme_write", "nvme_write_kv"):
        assert fast[k] == base[k]
    ssd = link_rates(resolve_node({"preset": "gcp-t4-vm", "bandwidth_scale": {"ssd": 3.0}}), 1)
    assert ssd["nvme_read"][0] == pytest.approx(3 * base["nvme_read"][0]) and ssd["h2d"] == base["h2d"]
    # the drive, not its link, is the modelled bottleneck of this node's SSD path: a faster link alone changes nothing
    link = link_rates(resolve_node({"preset": "gcp-t4-vm", "bandwidth_scale": {"nvme": 3.0}}), 1)
    assert link["nvme_read"] == base["nvme_read"]


@pytest.mark.parametrize("axes, key", [
    ({"grid": {"workload.synthetic.arrival.rate": {"range": "1..100", "count": 10**9}}}, "axes.grid.workload.synthetic.arrival.rate"),
    ({"random": {"samples": 10**9, "keys": {"seed": [1, 2]}}}, "axes.random.samples"),
])
def test_huge_axes_are_refused_before_they_are_expanded(tmp_path, capsys, axes, key):
    """Found by benchmarks/fuzz.py: count: 10^9 built a billion points (MemoryError) and samples:
    10^9 drew them one by one (a hang) before the study's run limit was checked."""
    path = write_study(tmp_path, {"base": tiny_base(), "axes": axes})
    t0 = time.perf_counter()
    with pytest.raises(StudyError, match="1000000") as e:
        load_study(path).tasks()
    assert e.value.key == key
    assert main(["study", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert time.perf_counter() - t0 < 10


@pytest.mark.parametrize("name, data", [
    ("study.json", b"[]"),
    ("study.json", b"\x00\xff not UTF-8"),
    ("study.json", b'{"axes": "x"}'),
    ("study.json", b'{"axes": [], "repeat": "2"}'),
    ("runs.parquet", b"\x00\xffgarbage"),
])
def test_show_on_a_corrupted_study_folder_is_one_line(finished_study, capsys, name, data):
    """Found by benchmarks/fuzz.py: study.json holding a list raised AttributeError, one that is not
    UTF-8 UnicodeDecodeError, and a corrupt runs.parquet a pyarrow error, all with a traceback."""
    (finished_study / name).write_bytes(data)
    assert main(["study", "show", str(finished_study)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and str(finished_study / name) in err, err


def test_a_key_given_twice_in_the_yaml_text_is_an_error(tmp_path, capsys):
    """Found by benchmarks/fuzz.py: a second ``axes:`` mapping silently replaced the first (plain
    YAML keeps the last value of a repeated key), so the study swept other keys than written."""
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"base": tiny_base()}) + "axes:\n  grid: {seed: [1, 2]}\naxes:\n  grid: {plan.parallel.tp: [1, 2]}\n")
    with pytest.raises(StudyError, match="line [0-9]+, column 1: duplicate key 'axes'"):
        load_study(path)
    assert main(["study", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 2
    assert "duplicate key 'axes'" in capsys.readouterr().err


@pytest.mark.parametrize("axes", [{"grid": {"seed": [1, 2]}}, {"zip": {"seed": [1, 2]}}, {"random": {"samples": 2, "keys": {"seed": [1, 2]}}},
                                  {"grid": {"plan.batching": [{"max_num_seqs": 8}]}}])
def test_set_value_that_every_run_replaces_is_an_error(tmp_path, axes):
    """Found by benchmarks/fuzz.py: set: (or --set) of a key an axis also sweeps was accepted, and
    silently replaced in every run. A list axis, or a variant, may leave it in effect: allowed."""
    key = "plan.batching.max_num_seqs" if "plan.batching" in axes.get("grid", {}) else "seed"
    path = write_study(tmp_path, {"base": tiny_base(), "set": {key: 3}, "axes": axes})
    with pytest.raises(StudyError, match="would never take effect") as e:
        load_study(path).tasks()
    assert e.value.key == f"set.{key}"
    with pytest.raises(StudyError, match="would never take effect"):
        load_study(write_study(tmp_path, {"base": tiny_base(), "axes": axes}, "b.yaml"), [f"{key}=3"]).tasks()
    ok = write_study(tmp_path, {"base": tiny_base(), "set": {"seed": 3, "plan.parallel.tp": 1},
                                "axes": {"list": [{"seed": 1}, {"plan.batching.max_num_seqs": 8}]},
                                "variants": {"a": {}, "b": {"plan.parallel.tp": 2}}}, "c.yaml")
    tasks = load_study(ok).tasks()
    assert [(t.scenario["seed"], t.scenario["plan"]["parallel"]["tp"]) for t in tasks] == [(1, 1), (1, 2), (3, 1), (3, 2)]


@pytest.mark.parametrize("key, value", [("repeat", True), ("repeat", "2"), ("repeat", 2.0), ("keep", {"tables": "yes"}),
                                        ("axes", {"random": {"samples": True, "keys": {"seed": [1, 2]}}})])
def test_study_keys_are_checked_strictly(tmp_path, key, value):
    """Found by benchmarks/fuzz.py: repeat: true ran every point once (true read as 1); study keys
    are now checked as strictly as scenario keys (no booleans or strings for numbers)."""
    study = {"base": tiny_base(), "axes": {"grid": {"plan.parallel.tp": [1, 2]}}}
    study[key] = value
    with pytest.raises(StudyError):
        load_study(write_study(tmp_path, study))


@pytest.mark.parametrize("labels", [5, "variant", [1, 2], {"a": 1}])
def test_resume_over_a_stored_run_with_broken_labels_is_one_line(finished_study, capsys, labels):
    """Found by benchmarks/fuzz.py (seed 132, case 270, --kinds faces): a stored run whose row.json
    has ``labels`` that is not a list of names raised TypeError with a traceback on resume."""
    row = next((finished_study / "runs").glob("*/row.json"))
    doc = json.loads(row.read_text())
    doc["labels"] = labels
    row.write_text(json.dumps(doc))
    study = finished_study.parent / "study.yaml"
    assert main(["study", str(study), "--out", str(finished_study), "--no-progress", "--jobs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and str(row) in err and "delete its folder" in err, err


def test_show_says_when_runs_mix_measured_and_datasheet_efficiencies(tmp_path, capsys):
    """A variant on a GPU without a profile compared with one whose profile is shipped: the
    differences include the datasheet defaults' error, and `study show`, the study's final table
    and its HTML report say so (a study on one calibration kind says nothing)."""
    p = write_study(tmp_path, {"name": "gpus", "base": tiny_base(calibration="auto"),
                               "variants": {"h100": {}, "h200": {"hardware": {"preset": "dgx-h100", "gpu": "h200"}}},
                               "baseline": "h100"})
    run_study(p, tmp_path / "out", progress=False)
    assert main(["study", "show", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    note = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(note) == 1
    assert "h100-sxm (h100-sxm-vidur) with a calibration profile" in note[0] and "h200 with the datasheet defaults" in note[0]
    assert main(["study", "show", str(tmp_path / "out"), "--format", "markdown"]) == 0
    assert "\nnote: The runs mix measured and datasheet efficiencies" in capsys.readouterr().out
    assert main(["study", "show", str(tmp_path / "out"), "--format", "csv"]) == 0
    assert "note" not in capsys.readouterr().out  # machine formats stay plain tables
    from simkit.report import write_report

    html = Path(write_report([tmp_path / "out"], tmp_path / "r.html")).read_text()
    assert "The runs mix measured and datasheet efficiencies" in html
    p2 = write_study(tmp_path, {"name": "same", "base": tiny_base(),
                                "variants": {"h100": {}, "h200": {"hardware": {"preset": "dgx-h100", "gpu": "h200"}}}}, "same.yaml")
    run_study(p2, tmp_path / "same", progress=False)
    assert main(["study", "show", str(tmp_path / "same")]) == 0
    assert "note:" not in capsys.readouterr().out  # calibration: none everywhere
