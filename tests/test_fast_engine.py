"""The fast exact engine path against the reference engine (the oracle), bit for bit, and the
start-up work around it: the cost-table cache and what ``simkit run`` imports."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.cost.iteration import compute_op_tables
from simkit.policies.batching import with_policy
from simkit.scenario import scenario_from_dict
from simkit.simulate import simulate
from tests.conftest import assert_same_outputs, make_scenario, native_trace_workload, uniform_workload
from tests.test_lean import fast_path_of

ROOT = Path(__file__).resolve().parents[1]



def _scenario(n, rate, inp, out, seed, replicas, routing, batching, kv_cache, calibration="none", tp=1, **extra):
    data = make_scenario(
        workload=uniform_workload(n, rate, inp, out),
        seed=seed,
        calibration=calibration,
    )
    data["plan"].update(
        {"batching": with_policy(batching, batching["policy"], {}), "kv_cache": kv_cache, "parallel": {"replicas": replicas, "tp": tp}, "routing": routing}
    )
    data["plan"].update(extra)
    return scenario_from_dict(data)


def assert_same_run(sc) -> tuple[dict, dict]:
    """Run ``sc`` on both engines; every per-request column, every iteration row and every
    summary number must be identical (bit for bit)."""
    ref = simulate(sc, engine="reference")
    fast = simulate(sc)
    assert_same_outputs(ref, fast)
    assert ref.summary["engine_path"] == "reference (requested)"
    return ref.summary, fast.summary


@settings(max_examples=int(os.environ.get("SIMKIT_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(
    n=st.integers(1, 60),
    rate=st.floats(0.5, 400.0),
    inp=st.tuples(st.integers(1, 300), st.integers(0, 1500)),
    out=st.tuples(st.integers(1, 40), st.integers(0, 300)),
    seed=st.integers(0, 10_000),
    replicas=st.integers(1, 3),
    routing=st.sampled_from(["round_robin", "least_outstanding", "prefix_aware"]),
    policy=st.sampled_from(["continuous", "chunked_prefill"]),
    seqs=st.integers(1, 64),
    tokens=st.integers(256, 4096),
    chunk=st.integers(0, 1024),
    blocks=st.integers(40, 600),
    block_size=st.sampled_from([8, 16, 32]),
    watermark=st.sampled_from([0.0, 0.01, 0.05]),
    calibration=st.sampled_from(["none", "auto"]),
    tp=st.sampled_from([1, 2]),
)
def test_fast_path_equals_reference(n, rate, inp, out, seed, replicas, routing, policy, seqs, tokens, chunk, blocks,
                                    block_size, watermark, calibration, tp):  # fmt: skip
    inp = (inp[0], inp[0] + inp[1])
    out = (out[0], out[0] + out[1])
    # a chunk budget below max_num_seqs is refused (the decodes of a full batch must fit)
    batching = {"policy": policy, "max_num_seqs": seqs, "max_num_batched_tokens": tokens, "chunk_size": seqs + chunk}
    kv = {"num_blocks": blocks, "block_size": block_size, "watermark": watermark}
    sc = _scenario(n, rate, inp, out, seed, replicas, routing, batching, kv, calibration, tp)
    _, fast = assert_same_run(sc)
    assert fast["engine_path"] == fast_path_of(fast["preemptions"])


@settings(max_examples=int(os.environ.get("SIMKIT_HYPOTHESIS_EXAMPLES", "25")) // 2 + 1, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(
    n=st.integers(1, 50),
    rate=st.floats(1.0, 200.0),
    seed=st.integers(0, 10_000),
    groups=st.lists(st.tuples(st.sampled_from(["h100-sxm", "a100-80gb-sxm", "l4"]), st.integers(1, 2), st.sampled_from([1, 2])),
                    min_size=1, max_size=3, unique_by=lambda g: g[0]),
    routing=st.sampled_from(["round_robin", "least_outstanding", "prefix_aware"]),
    policy=st.sampled_from(["continuous", "chunked_prefill"]),
    seqs=st.integers(1, 32),
    calibration=st.sampled_from(["none", "auto"]),
)
def test_fast_path_equals_reference_on_mixed_fleets(n, rate, seed, groups, routing, policy, seqs, calibration):
    """plan.fleet: replicas of different GPUs (own cost model and KV blocks) behind one router."""
    batching = {"policy": policy, "max_num_seqs": seqs, "max_num_batched_tokens": 2048, "chunk_size": seqs + 256}
    fleet = [{"gpu": g, "replicas": r, "tp": t} for g, r, t in groups]
    sc = _scenario(n, rate, (10, 900), (1, 120), seed, 1, routing, batching, {"block_size": 16}, calibration, fleet=fleet)
    _, fast = assert_same_run(sc)
    assert fast["engine_path"] == fast_path_of(fast["preemptions"])
    assert sum(g["requests_completed"] for g in fast["fleet_groups"]) == fast["requests_completed"]


def test_fast_path_under_heavy_preemption():
    # a KV pool far too small for the load: many recompute preemptions on both policies
    for policy in ("continuous", "chunked_prefill"):
        batching = {"policy": policy, "max_num_seqs": 48, "chunk_size": 256}
        sc = _scenario(200, 200.0, (50, 900), (20, 400), 3, 2, "least_outstanding", batching, {"num_blocks": 120})
        ref, fast = assert_same_run(sc)
        assert ref["preemptions"] > 50
        assert fast["engine_path"] == fast_path_of(fast["preemptions"])


def test_shortcuts_are_exercised_and_exact(monkeypatch):
    """Steps that advance the clock without a SimPy event, and admissions refused from memory,
    both happen in these runs, and the runs equal the reference's bit for bit."""
    from simkit.engine import fast as fast_mod

    seen = {"direct": 0, "event": 0, "fast_admit": 0, "remembered": 0}
    advance, fast_admit, remembered = fast_mod.FastEngine._advance, fast_mod.FastEngine.admit, fast_mod.FastEngine._refused_from_memory

    def counting_advance(self, dur):
        out = advance(self, dur)
        seen["direct" if out else "event"] += 1
        return out

    def counting_fast_admit(self, i, reserve_tokens=None):
        seen["fast_admit"] += 1
        return fast_admit(self, i, reserve_tokens)

    def counting_remembered(self, i, reserve_tokens):
        out = remembered(self, i, reserve_tokens)
        seen["remembered"] += out
        return out

    monkeypatch.setattr(fast_mod.FastEngine, "_advance", counting_advance)
    monkeypatch.setattr(fast_mod.FastEngine, "admit", counting_fast_admit)
    monkeypatch.setattr(fast_mod.FastEngine, "_refused_from_memory", counting_remembered)
    for policy, replicas in (("continuous", 1), ("chunked_prefill", 2)):
        batching = {"policy": policy, "max_num_seqs": 48, "chunk_size": 256}
        sc = _scenario(150, 20.0, (50, 900), (20, 200), 5, replicas, "least_outstanding", batching, {"num_blocks": 150})
        assert_same_run(sc)
    assert seen["direct"] > 0 and seen["event"] > 0, seen
    assert seen["fast_admit"] > seen["remembered"] > 0, seen  # some refusals came from memory


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("replicas", [1, 2])
def test_arrivals_at_step_ends_and_at_one_instant(tmp_path, policy, seed, replicas):
    """A world of fast engines runs on ``FastWorld`` (SimPy's order on a plain heap, the
    arrivals as plain calls). Ties keep SimPy's order, bit for bit: arrivals at exactly the end
    of a prefill step, with (its wait scheduled after the step's: handled after the engine
    resumes) and without (before) another arrival during the step; several at one instant; some
    the front door rejects. A prefill step is never cut by an arrival, so one added at its end or
    within it leaves the run up to the step's end as it was: the ends are taken from the run
    itself, one step at a time."""
    rng = np.random.default_rng(seed)
    batching = {"policy": policy, "max_num_seqs": 24, "chunk_size": 256}
    kv = {"num_blocks": 220, "block_size": 16}
    times = np.sort(np.concatenate([[0.0, 0.0], rng.uniform(0.0, 3.0, 60)]))
    inp = rng.integers(1, 900, size=len(times))
    inp[rng.random(len(times)) < 0.05] = 5000  # beyond the context: rejected at the door
    out = rng.integers(1, 120, size=len(times))
    data = make_scenario(seed=seed)
    data["plan"].update({"batching": with_policy(batching, policy, {}), "kv_cache": kv,
                         "parallel": {"replicas": replicas}, "routing": "round_robin"})  # fmt: skip
    tied: list[float] = []
    last = 0.0
    for k in range(8):
        data["workload"] = native_trace_workload(tmp_path / "ties.csv", times, inp, out)
        rows = simulate(scenario_from_dict(data)).iterations
        ends = {row[2] for row in rows}
        assert all(t in ends for t in tied)  # every tie made so far is still one
        later = [row for row in rows if row[4] > 0 and row[1] > last]
        if len(later) < 3:
            break
        _, start, end = later[2][:3]
        new = [end] * (1 + k % 3) + ([(start + end) / 2] if k % 2 else [])
        times = np.concatenate([times, new])
        order = np.argsort(times, kind="stable")
        more = len(new)
        inp = np.concatenate([inp, rng.integers(1, 900, size=more)])[order]
        out = np.concatenate([out, rng.integers(1, 120, size=more)])[order]
        times = times[order]
        tied.append(end)
        last = end
    assert len(tied) >= 4
    data["workload"] = native_trace_workload(tmp_path / "ties.csv", times, inp, out)
    ref, fast = assert_same_run(scenario_from_dict(data))
    assert fast["engine_path"] == fast_path_of(fast["preemptions"])
    assert ref["requests_rejected"] > 0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"execution": {"mode": "layer_by_layer"}}, "layer-by-layer execution"),
    ],
)
def test_uncovered_plans_fall_back_and_say_so(change, reason):
    data = make_scenario(
        workload={"synthetic": {"num_requests": 40, "arrival": {"process": "poisson", "rate": 30},
                                "lengths": {"input": {"dist": "uniform", "low": 32, "high": 600},
                                            "output": {"dist": "uniform", "low": 2, "high": 80}}}},
    )  # fmt: skip
    data["plan"].update(change)
    ref, fast = assert_same_run(scenario_from_dict(data))
    assert fast["engine_path"] == f"reference ({reason})"


def test_unknown_engine_is_refused():
    from simkit.errors import ScenarioError

    with pytest.raises(ScenarioError, match="engine"):
        simulate(scenario_from_dict(make_scenario()), engine="turbo")


# ---- cost tables: cache ----------------------------------------------------------------------
def _cost(calibration="none"):
    from simkit.cost.device import ComputeDevice
    from simkit.cost.iteration import IterationModel
    from simkit.cost.ops import Precision
    from simkit.cost.profile import resolve_calibration
    from simkit.specs.catalog import load_model
    from simkit.specs.node import resolve_node

    node = resolve_node("dgx-h100")
    dev = ComputeDevice.from_gpu(node.gpu)
    if calibration == "none":
        from simkit.cost.efficiency import DatasheetEfficiency

        eff = DatasheetEfficiency()
    else:
        eff, _, _ = resolve_calibration(calibration, "gpu", dev.name)
        dev = dev.calibrated(eff.device)
    return IterationModel(load_model("llama-2-7b"), dev, eff, Precision("fp16", "fp16", "fp16"))


def test_table_cache_hit_is_identical_and_keys_cover_every_input(tmp_path, monkeypatch):
    from simkit.cost import tables
    from simkit.cost.ops import Precision
    from simkit.specs.catalog import load_model

    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    base = _cost("auto")
    fresh = compute_op_tables(base, 300)
    first = tables.op_tables(base, 300, compute_op_tables)  # miss: computed and stored
    assert len(list((tmp_path / "tables").glob("*.bin"))) == 1
    again = tables.op_tables(_cost("auto"), 300, compute_op_tables)  # hit, from a new but equal cost model
    for x, y, z in zip(fresh, first, again):
        assert np.array_equal(x, y) and np.array_equal(x, z)
    key = tables.table_key(base, 300)
    assert tables.table_key(_cost("auto"), 300) == key
    # every input the tables depend on changes the key
    other_profile = _cost("auto")
    cm = other_profile.efficiency.models["gemm"]
    other_profile.efficiency.models["gemm"] = replace(cm, base=replace(cm.base, launch_s=cm.base.launch_s * 1.01))
    variants = [
        replace(base, model=load_model("llama-3-8b")),
        replace(base, device=replace(base.device, mem_bandwidth=base.device.mem_bandwidth * 1.5)),
        replace(base, precision=Precision("bf16", "bf16", "bf16")),
        replace(base, precision=Precision("int4", "fp16", "fp16", 64)),
        replace(base, tp=2),
        replace(base, ep=2),
        replace(base, ep_share=0.7),
        _cost("none"),
        other_profile,
    ]
    keys = {tables.table_key(v, 300) for v in variants}
    assert key not in keys and len(keys) == len(variants)
    assert tables.table_key(base, 301) != key
    monkeypatch.setattr("simkit.__version__", "0.0.0-other")
    assert tables.table_key(base, 300) != key


def test_table_cache_key_covers_the_code_that_computes_the_tables(tmp_path, monkeypatch):
    """An edited cost formula (any source line of simkit/cost) misses the cache, version or not;
    unreadable source turns the cache off rather than risk a stale table."""
    from simkit.cost import tables

    base = _cost("none")
    key = tables.table_key(base, 300)
    assert tables.code_digest() is not None and key is not None
    src = tmp_path / "simkit"
    (src / "cost").mkdir(parents=True)
    (src / "specs").mkdir()
    cost_dir = Path(tables.__file__).resolve().parent
    for p in cost_dir.glob("*.py"):
        (src / "cost" / p.name).write_bytes(p.read_bytes())
    for d in tables.DIGESTED:
        (src / d).write_bytes((cost_dir.parent / d).read_bytes())
    monkeypatch.setattr(tables, "__file__", str(src / "cost" / "tables.py"))
    tables.code_digest.cache_clear()
    try:
        assert tables.table_key(base, 300) == key  # the same source: the same key
        ops = src / "cost" / "ops.py"
        ops.write_text(ops.read_text() + "\n# an edit\n")
        tables.code_digest.cache_clear()
        assert tables.table_key(base, 300) not in (key, None)
        ops.unlink()
        (src / "cost" / "ops.py").mkdir()  # unreadable as a file
        tables.code_digest.cache_clear()
        assert tables.code_digest() is None and tables.table_key(base, 300) is None
    finally:
        monkeypatch.undo()
        tables.code_digest.cache_clear()


def test_table_cache_can_be_turned_off_and_survives_a_bad_entry(tmp_path, monkeypatch):
    from simkit.cost import tables

    monkeypatch.setenv("SIMKIT_CACHE_DIR", "")
    assert tables.cache_dir() is None
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    cost = _cost("none")
    key = tables.table_key(cost, 100)
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / f"{key}.bin").write_bytes(b"not an entry")
    got = tables.op_tables(cost, 100, compute_op_tables)
    for x, y in zip(got, compute_op_tables(cost, 100)):
        assert np.array_equal(x, y)
    monkeypatch.delenv("SIMKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tables.cache_dir() == tmp_path / "xdg" / "simkit" / "tables"


# ---- start-up: imports ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scenario", "overrides"),
    [
        ("azure-conv-continuous.yaml", ["workload.limit=50"]),  # Azure CSV trace
        ("quickstart.yaml", []),  # synthetic
        ("burstgpt-sample.yaml", []),  # BurstGPT CSV trace
        ("mooncake-prefix-cache.yaml", ["workload.limit=50"]),  # Mooncake JSONL trace
        ("quickstart.yaml", ["workload={trace: {path: ../traces/shared_prefix_1rps.csv}, limit: 50}"]),  # native CSV
    ],
)
def test_simkit_run_imports_no_heavy_library(tmp_path, scenario, overrides):
    """`simkit run` on shipped scenarios and traces (outputs written) loads none of pandas,
    torch, matplotlib, scikit-learn."""
    sets = [a for o in overrides for a in ("--set", o)]
    code = (
        "import sys\n"
        "from simkit.cli import main\n"
        f"rc = main(['run', 'workloads/scenarios/{scenario}', *{sets!r}, '--out', {str(tmp_path)!r}])\n"
        "heavy = [m for m in ('pandas', 'torch', 'matplotlib', 'sklearn') if m in sys.modules]\n"
        "print('HEAVY', heavy, rc)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert "HEAVY [] 0" in out.stdout, out.stdout + out.stderr
    assert "engine path: " in out.stdout  # the run's output says which engine ran
    assert (tmp_path / "requests.parquet").exists()


def test_simkit_run_process_skips_teardown_but_keeps_outputs_and_exit_codes(tmp_path):
    """The `simkit run` process ends without the interpreter's teardown (``os._exit``) once its
    outputs are written: every file is complete, stdout is all there, the exit code is kept
    (0; 2 for bad input, which exits normally)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "simkit.cli", "run", "workloads/scenarios/quickstart.yaml", "--out", str(tmp_path)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().splitlines()[-1].startswith("  wrote "), out.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "requests.parquet").num_rows == summary["requests_total"]
    bad = subprocess.run([*cmd[:4], str(tmp_path / "missing.yaml")], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "missing.yaml" in bad.stderr


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=300))
def test_stand_in_contexts_keep_sum_and_maximum(ctx):
    from simkit.engine.fast import stand_in_contexts

    got = stand_in_contexts(len(ctx), sum(ctx), max(ctx))
    assert len(got) == len(ctx) and int(got.sum()) == sum(ctx) and int(got.max()) == max(ctx) and got.min() >= 1


def test_forest_predict_equals_a_plain_tree_walk():
    """The vectorised tree evaluation (used to build cost tables) against walking each tree."""
    from simkit.cost.profile import Profile

    prof = Profile.load(ROOT / "calibration" / "profiles" / "h100-sxm-vidur", with_samples=False)
    forest = prof.models["gemm"].forest
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, int(forest.feature.max()) + 1)) * 4.0
    X[::7, 0] = np.nan
    got = forest.predict(X)
    Xc = np.nan_to_num(X, nan=0.0, posinf=1e30, neginf=-1e30)
    for r in range(len(X)):
        leaves = []
        for root in forest.roots:
            k = int(root)
            while forest.feature[k] >= 0:
                k = int(forest.left[k] if Xc[r, forest.feature[k]] <= forest.threshold[k] else forest.right[k])
            leaves.append(forest.value[k])
        assert got[r] == forest.baseline + np.asarray(leaves).sum()


def test_forest_predict_in_blocks_is_bit_identical():
    """Many rows are walked a block at a time (cache-friendly): every row's prediction equals
    predicting that row alone, across block boundaries."""
    from simkit.cost.profile import Profile

    prof = Profile.load(ROOT / "calibration" / "profiles" / "h100-sxm-vidur", with_samples=False)
    for cls in ("gemm", "elementwise"):
        forest = prof.models[cls].forest
        n = 2 * forest.BLOCK_ROWS + 37
        X = np.random.default_rng(2).normal(size=(n, int(forest.feature.max()) + 1)) * 4.0
        X[::11, 0] = np.inf
        got = forest.predict(X)
        assert got.shape == (n,)
        for r in (0, forest.BLOCK_ROWS - 1, forest.BLOCK_ROWS, 2 * forest.BLOCK_ROWS, n - 1):
            assert got[r] == forest.predict(X[r:r + 1])[0]
        assert np.array_equal(got[: forest.BLOCK_ROWS + 5], forest.predict(X[: forest.BLOCK_ROWS + 5]))


def test_parquet_writer_matches_pandas(tmp_path):
    """Outputs written from buffers (no pandas) read back as pandas' own writer's do."""
    import pandas as pd
    import pyarrow.parquet as pq

    from simkit.outputs import _write_parquet

    cols = {
        "i64": np.arange(5, dtype=np.int64),
        "i32": np.array([3, -1, 0, 7, 2], dtype=np.int32),
        "f": np.array([0.5, np.nan, 1e-9, -2.0, np.nan]),
        "b": np.array([True, False, True, True, False]),
        "s": np.array(["", "never_fits", "abc", "é", "x"], dtype=object),
    }
    _write_parquet(cols, tmp_path / "ours.parquet")
    pd.DataFrame(cols).to_parquet(tmp_path / "pandas.parquet", index=False)
    ours, theirs = pq.read_table(tmp_path / "ours.parquet"), pq.read_table(tmp_path / "pandas.parquet")
    assert ours.schema.remove_metadata() == theirs.schema.remove_metadata()
    assert ours.equals(theirs.replace_schema_metadata(None))
    assert pd.read_parquet(tmp_path / "ours.parquet").equals(pd.read_parquet(tmp_path / "pandas.parquet"))


def _azure_pandas(path):
    from simkit.workload import traces as T

    header = T._read_header(path)
    c = T._resolve_columns(path, header, T.AzureReader.COLUMNS)

    def convert(df, lines, sink):
        checks = T._Checks(len(df))
        ns = T._datetime_ns(df, c["TIMESTAMP"], checks)
        inp = T._int_column(df, c["ContextTokens"], checks, minimum=1, what="a positive integer")
        out = T._int_column(df, c["GeneratedTokens"], checks, minimum=0, what="an integer >= 0")
        good = checks.report(lines, sink)
        return {"ns": ns[good], "inp": inp[good], "out": out[good]}

    return T._collect_csv(path, header, T._BadLines(path, "fail"), convert)


@pytest.mark.parametrize("name", ["azure_conv_2023.csv", "azure_code_2023_sample.csv"])
def test_plain_azure_trace_read_without_pandas_equals_pandas(name):
    from simkit.workload import traces as T

    path = ROOT / "workloads" / "traces" / name
    fast = T._azure_plain(path, T._read_header(path))
    assert fast is not None
    slow = _azure_pandas(path)
    assert fast[1] == slow[1]
    for k, v in slow[0].items():
        assert fast[0][k].dtype == v.dtype and np.array_equal(fast[0][k], v), k


@pytest.mark.parametrize(
    "line",
    ["2023-11-16 18:15:50+00:00,396,109", "2023-11-16 18:15:50.1,0,3", "2023-11-16 18:15:50,x,3", "", "2023-11-16,4,5"],
)
def test_odd_azure_lines_take_the_pandas_path(tmp_path, line):
    from simkit.errors import TraceError
    from simkit.workload import traces as T

    path = tmp_path / "t.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n" + line + "\n")
    assert T._azure_plain(path, T._read_header(path)) is None
    try:
        expected = _azure_pandas(path)
    except TraceError as e:
        with pytest.raises(TraceError, match="line 3"):
            T.read_trace(path, "azure")
        assert "line 3" in str(e)
    else:
        got = T.read_trace(path, "azure")  # in time order
        order = np.argsort(expected[0]["ns"], kind="stable")
        assert np.array_equal(got.input_tokens, expected[0]["inp"][order])
        assert np.array_equal(got.output_tokens, expected[0]["out"][order])


# ---- scalar cost forms: bit-identical to the array forms -------------------------------------
_COSTS: dict[str, object] = {}


def _cost_cached(calibration: str):
    if calibration not in _COSTS:
        c = _cost(calibration)
        c.reserve(4096)
        _COSTS[calibration] = c
    return _COSTS[calibration]


@settings(max_examples=200, deadline=None)
@given(
    calibration=st.sampled_from(["none", "auto"]),
    pre=st.lists(st.tuples(st.integers(1, 600), st.integers(0, 5000)), max_size=4),
    dec=st.lists(st.integers(1, 6000), max_size=200),
    rows_cut=st.integers(0, 4),
)
def test_mixed_step_time_equals_step_time(calibration, pre, dec, rows_cut):
    """The fast path's scalar iteration time is step_time's, bit for bit (or None, never a
    different number), for any mix of prefill chunks and decodes."""
    cost = _cost_cached(calibration)
    pq = [q for q, _ in pre]
    ctx = [c for _, c in pre]
    if not pq and not dec:
        assert cost.mixed_step_time(pq, ctx, 0, 0, 0, 0) is None
        return
    rows = max(len(pq) - rows_cut, 0) + len(dec)
    got = cost.mixed_step_time(pq, ctx, len(dec), sum(dec), max(dec, default=0), rows)
    want = cost.step_time(np.array(pq + [1] * len(dec)), np.array(ctx + dec), logits_rows=rows)
    if any(q == 1 and c > 0 for q, c in pre):
        assert got is None  # priced as a decode by step_time: left to the array form
    else:
        assert got == want


@settings(max_examples=200, deadline=None)
@given(
    calibration=st.sampled_from(["none", "auto"]),
    batch=st.integers(1, 300),
    mean=st.integers(1, 4000),
    extra=st.integers(0, 3000),
    k=st.integers(1, 64),
    cut=st.floats(0.0, 1.5),
)
def test_decode_step_times_equal_decode_steps(calibration, batch, mean, extra, k, cut):
    """The scalar times and running ends equal decode_steps and np.cumsum bit for bit, and a
    run cut at ``until`` stops at the first step whose end reaches it (searchsorted's cut)."""
    cost = _cost_cached(calibration)
    kv0 = float(batch * mean + extra)
    longest = float(mean + extra)
    want = cost.decode_steps(batch, kv0, k, longest)
    ends = np.cumsum(want)
    got = cost.decode_step_times(batch, kv0, k, longest)
    assert got is not None and got == (want.tolist(), ends.tolist())
    until = float(ends[-1]) * cut
    n = min(int(np.searchsorted(ends, until, side="left")) + 1, k)
    assert cost.decode_step_times(batch, kv0, k, longest, until) == (want[:n].tolist(), ends[:n].tolist())


def test_scalar_cost_forms_decline_without_a_closed_form():
    """An efficiency model without a closed form for attention (a measured class) gets None."""
    from simkit.cost.efficiency import DatasheetEfficiency

    class Fitted(DatasheetEfficiency):
        def roofline_time(self, op_class, flops, bytes_, peak_flops, peak_bw):
            return None if op_class.startswith("attn") else super().roofline_time(op_class, flops, bytes_, peak_flops, peak_bw)

        def roofline_coeffs(self, op_class, peak_flops, peak_bw):
            return None if op_class.startswith("attn") else super().roofline_coeffs(op_class, peak_flops, peak_bw)

    cost = replace(_cost("none"), efficiency=Fitted())
    cost.reserve(64)
    assert cost.decode_step_times(4, 400.0, 3, 120.0) is None
    assert cost.mixed_step_time([10], [0], 4, 400, 120, 5) is None
    assert cost.mixed_step_time([10], [0], 0, 0, 0, 1) is None
    assert cost.prefill_constants() is None and cost.decode_constants(4) is None
    # with a closed form: the constants the fused loop inlines mixed_step_time with
    plain = _cost("none")
    f4, heads, kvh, d, ab, kb, cf, cb, ov = plain.prefill_constants()
    assert f4 == 4.0 * heads * d and (cf, cb, ov) == plain.efficiency.roofline_coeffs("attn_prefill", *plain._peaks)


# ---- parsed-YAML cache (the catalog) ------------------------------------------------------------
def test_yaml_file_cache_hits_misses_and_refuses_what_json_cannot_carry(tmp_path, monkeypatch):
    from simkit.errors import SpecError
    from simkit.specs.catalog import Catalog, _folders
    from simkit.specs.yamlio import load_yaml, load_yaml_files

    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path / "cache"))
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("kind: x\nvalues: [1, 2.5, 1.0e-3, true, null]\nnested: {k: v}\n")
    b.write_text("when: 2024-01-02\n")  # a date: JSON cannot carry it
    entries = tmp_path / "cache" / "yaml"
    assert load_yaml_files([a]) == [load_yaml(a)]
    assert len(list(entries.glob("*.json"))) == 1
    assert load_yaml_files([a]) == [load_yaml(a)]  # a hit: the same documents
    a.write_text("kind: x\nvalues: [1, 2.5, 1.0e-3, true, 7]\nnested: {k: v}\n")  # edited: a miss
    assert load_yaml_files([a]) == [load_yaml(a)] and load_yaml(a)["values"][-1] == 7
    assert len(list(entries.glob("*.json"))) == 2
    assert load_yaml_files([a, b]) == [load_yaml(a), load_yaml(b)]
    assert len(list(entries.glob("*.json"))) == 2  # not cached: would not come back the same
    for e in entries.glob("*.json"):
        e.write_text("{damaged")
    assert load_yaml_files([a]) == [load_yaml(a)]  # rebuilt
    b.write_text("key: [unclosed\n")
    with pytest.raises(SpecError, match="malformed YAML") as exc:
        load_yaml_files([a, b])
    assert str(b) in str(exc.value)
    monkeypatch.setenv("SIMKIT_CACHE_DIR", "")  # off: parsed every time, nothing written
    assert load_yaml_files([a]) == [load_yaml(a)]
    # the shipped catalog loads the same items through the cache, cold and warm
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path / "cache2"))
    cold, warm = Catalog.load(_folders()), Catalog.load(_folders())
    assert cold.items == warm.items and cold.files == warm.files
    assert len(list((tmp_path / "cache2" / "yaml").glob("*.json"))) == 1


def test_cache_folders_are_pruned_least_recently_used_first(tmp_path):
    import os

    from simkit.cachedir import prune, touch, write_atomic

    folder = tmp_path / "tables"
    folder.mkdir()
    for k, name in enumerate(["a", "b", "c", "d"]):
        p = folder / f"{name}.npz"
        p.write_bytes(b"x" * 100)
        os.utime(p, ns=(k * 10**9, k * 10**9))  # a oldest ... d newest
    touch(folder / "a.npz")  # a hit: a is now the most recently used
    (folder / "e.tmp").write_bytes(b"x" * 1000)  # another writer's partial entry: never counted or deleted
    prune(folder, 250)
    assert sorted(p.name for p in folder.iterdir()) == ["a.npz", "d.npz", "e.tmp"]
    write_atomic(folder / "f.npz", b"y" * 200, max_bytes=250)  # the new entry is kept, the oldest go
    assert sorted(p.name for p in folder.iterdir()) == ["e.tmp", "f.npz"]
    prune(folder, 10**6)  # under the cap: nothing deleted
    assert (folder / "f.npz").read_bytes() == b"y" * 200


def test_cache_root_without_a_home_folder_turns_caching_off(monkeypatch):
    from pathlib import Path as _Path

    from simkit.cachedir import cache_root

    def no_home() -> _Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("SIMKIT_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(_Path, "home", staticmethod(no_home))
    assert cache_root() is None
    monkeypatch.setenv("XDG_CACHE_HOME", "/tmp/xdg")
    assert cache_root() == _Path("/tmp/xdg/simkit")
