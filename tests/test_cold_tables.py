"""Cold start of the cost tables (docs/performance.md, issue 16): dense tables grown by their new
rows only, token counts beyond them evaluated alone (a static batch's whole-batch prefill) to the
same floats, the sparse log on disk, and the cache's keys, damaged entries and concurrent writers."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simkit.cost import iteration, tables
from simkit.cost.iteration import IterationModel, compute_op_tables, op_tables_at

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "workloads" / "scenarios"


def _costs(name: str) -> list[IterationModel]:
    """Every cost model a shipped scenario's deployment builds (replica, pipeline stages, CPU)."""
    from simkit.deployment import build_deployment
    from simkit.scenario import load_scenario

    dep = build_deployment(load_scenario(SCENARIOS / f"{name}.yaml"))
    return [g.cost for g in dep.groups] + list(dep.stage_costs or []) + ([dep.cpu_cost] if dep.cpu_cost else [])


def _fresh(cost: IterationModel) -> IterationModel:
    """An equal cost model with empty tables."""
    return replace(cost)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def h100_cost() -> IterationModel:
    return _costs("quickstart")[0]


@pytest.fixture(scope="module")
def h100_dense(h100_cost) -> IterationModel:  # type: ignore[no-untyped-def]
    ref = _fresh(h100_cost)
    ref.reserve(20_000)
    return ref


# ---- the same floats, however the token counts are grouped --------------------------------------
@pytest.mark.parametrize(
    "name", ["quickstart", "mixtral-ep", "llama70b-tp4pp2", "opt175b-t4-offload", "cpu-server", "cxl-long-context"]
)
def test_rows_evaluated_alone_equal_the_dense_table_bit_for_bit(name, monkeypatch):
    """Every shipped model/GPU/profile kind (fitted H100 trees, MoE with expert parallelism, TP with
    pipeline stages, OPT's unmeasured kernels on a T4, a CPU, datasheet defaults): the operator
    tables' rows at random token counts, evaluated alone, in small groups (one efficiency call per
    operator class) and in one block, are the dense table's rows bit for bit."""
    monkeypatch.setenv("SIMKIT_CACHE_DIR", "")
    size = 3000
    rng = np.random.default_rng(16)
    for cost in _costs(name):
        dense = compute_op_tables(cost, size)
        picks = rng.choice(np.arange(1, size), 40, replace=False)
        groups = [picks[:1], picks[1:3], picks[3:8], picks[8:25], picks]
        for g in groups:
            got = op_tables_at(cost, g.astype(np.float64))
            for col in range(3):
                assert _same(got[col], dense[col][g]), (name, col, g)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 20_000), min_size=1, max_size=12))
def test_far_lookups_equal_a_dense_table(h100_cost, h100_dense, tokens):
    """An iteration model whose dense tables stop early answers every lookup beyond them (alone
    or as an array mixing dense and far counts) with the float a table reserved that far holds."""
    ref = h100_dense
    old = iteration.DENSE_TOKENS
    iteration.DENSE_TOKENS = 64
    try:
        cost = _fresh(h100_cost)
        cost.reserve(32)
        for t in tokens:
            assert _same(cost.body_time(t), ref.body_time(t))
            assert _same(cost.head_time(t), ref.head_time(t))
            assert cost.layer_time(t) == ref.layer_time(t) and cost.comm_time(t) == ref.comm_time(t)
        arr = np.array(tokens + [0, 5, 31])
        assert _same(cost.body_time(arr), ref.body_time(arr)) and _same(cost.head_time(arr), ref.head_time(arr))
        assert len(cost.scalar_tables[0]) <= 64  # the dense part did not grow to them
    finally:
        iteration.DENSE_TOKENS = old


def test_iteration_times_beyond_the_dense_tables_are_exact(monkeypatch):
    """Whole iterations (a batched prefill of many long prompts, a decode of a batch larger than
    the dense tables, pipelined stages with collectives) priced through the far rows equal those of
    fully dense tables."""
    monkeypatch.setenv("SIMKIT_CACHE_DIR", "")
    for name in ("quickstart", "llama70b-tp4pp2"):
        for base in _costs(name):
            ref = _fresh(base)
            ref.reserve(12_000)
            monkeypatch.setattr(iteration, "DENSE_TOKENS", 128)
            cost = _fresh(base)
            q = np.array([1500, 2300, 900, 3100, 2000])
            ctx = np.zeros(5, dtype=np.int64)
            assert cost.step_time(q, ctx) == ref.step_time(q, ctx)
            assert cost.split_layers(q, ctx) == ref.split_layers(q, ctx)
            assert cost.mixed_step_time(q.tolist(), ctx.tolist(), 3, 3000, 1500, 8) == ref.mixed_step_time(
                q.tolist(), ctx.tolist(), 3, 3000, 1500, 8
            )
            assert _same(cost.decode_steps(300, 90_000.0, 7, 400.0), ref.decode_steps(300, 90_000.0, 7, 400.0))
            assert cost.fixed_step_time(500) == ref.fixed_step_time(500)
            monkeypatch.setattr(iteration, "DENSE_TOKENS", 8192)


def test_dense_growth_evaluates_only_the_new_rows(h100_cost, monkeypatch):
    """Growing the dense tables evaluates the rows not tabulated yet, once each, and gives the
    table one evaluation of the whole range gives."""
    monkeypatch.setenv("SIMKIT_CACHE_DIR", "")
    rows: list[int] = []
    real = iteration.op_tables_at

    def counting(cost, T):  # type: ignore[no-untyped-def]
        rows.append(len(T))
        return real(cost, T)

    monkeypatch.setattr(iteration, "op_tables_at", counting)
    cost = _fresh(h100_cost)
    for t in (10, 100, 1000, 5000):
        cost.body_time(t)
    size = len(cost.scalar_tables[0])
    assert sum(rows) == size and len(rows) > 1
    ref = _fresh(h100_cost)
    ref.reserve(size - 1)
    assert cost.scalar_tables == ref.scalar_tables


def test_static_whole_batch_prefills_beyond_the_dense_tables_run_exactly(monkeypatch):
    """A static plan whose whole-batch prefills run past the dense tables: the same results bit for
    bit as with tables dense all the way."""
    from conftest import assert_same_outputs, make_scenario, uniform_workload

    from simkit.scenario import scenario_from_dict
    from simkit.simulate import simulate

    sc = scenario_from_dict(make_scenario(
        workload=uniform_workload(48, 50.0, (1500, 2600), (4, 40)), calibration="auto",
        plan={"batching": {"policy": "static", "max_num_seqs": 16}},
    ))  # fmt: skip
    monkeypatch.setattr(iteration, "DENSE_TOKENS", 10**9)
    dense = simulate(sc)
    monkeypatch.setattr(iteration, "DENSE_TOKENS", 8192)
    monkeypatch.setenv("SIMKIT_CACHE_DIR", "")
    asked: list[int] = []
    real = tables.SparseRows.rows

    def rows(self, tokens, compute_at):  # type: ignore[no-untyped-def]
        asked.extend(tokens)
        return real(self, tokens, compute_at)

    monkeypatch.setattr(tables.SparseRows, "rows", rows)
    sparse = simulate(sc)
    assert asked and min(asked) > 8192  # the prefills went past the dense tables
    assert_same_outputs(dense, sparse)


# ---- the on-disk cache ------------------------------------------------------------------------
def test_sparse_log_is_read_back_and_survives_damage(h100_cost, tmp_path, monkeypatch):
    """A second run with the same key reads the far rows from the log (no evaluation); a torn or
    damaged record is skipped and rebuilt, the log rewritten without it; never a wrong row."""
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(iteration, "DENSE_TOKENS", 64)
    tokens = [9000, 12_345, 40_000, 77_777]
    first = _fresh(h100_cost)
    want = [first.body_time(t) for t in tokens]
    log = tmp_path / "tables" / f"{tables.table_key(h100_cost, None)}.rows"
    assert log.stat().st_size == len(tokens) * tables._RECORD.itemsize

    def boom(cost, T):  # type: ignore[no-untyped-def]
        raise AssertionError("evaluated although logged")

    monkeypatch.setattr(iteration, "op_tables_at", boom)
    again = _fresh(h100_cost)
    assert [again.body_time(t) for t in tokens] == want
    monkeypatch.undo()
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(iteration, "DENSE_TOKENS", 64)
    # flip a byte of the second record's value and tear a record off the end
    data = bytearray(log.read_bytes())
    data[tables._RECORD.itemsize + 12] ^= 0xFF
    log.write_bytes(bytes(data) + b"\x01\x02\x03")
    third = _fresh(h100_cost)
    assert [third.body_time(t) for t in tokens] == want
    rec = np.frombuffer(log.read_bytes(), dtype=tables._RECORD)
    assert sorted(rec["tokens"].tolist()) == sorted(tokens)  # rewritten clean, the bad row re-appended
    # a log of another key's records (a renamed file) is never used
    other = tmp_path / "tables" / f"{tables.table_key(replace(h100_cost, tp=2), None)}.rows"
    other.write_bytes(log.read_bytes())
    assert tables.SparseRows(replace(h100_cost, tp=2))._rows == {}


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_dense_entry_is_rebuilt(h100_cost, tmp_path, monkeypatch, damage):
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    fresh = compute_op_tables(h100_cost, 500)
    tables.op_tables(h100_cost, 500, compute_op_tables)
    path = tmp_path / "tables" / f"{tables.table_key(h100_cost, 500)}.bin"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = bytearray(b"{\"key\": 1}\n" + bytes(200))
    path.write_bytes(bytes(data))
    got = tables.op_tables(h100_cost, 500, compute_op_tables)
    assert all(_same(x, y) for x, y in zip(got, fresh))
    again = tables.op_tables(h100_cost, 500, compute_op_tables)  # the rebuilt entry reads back
    assert all(_same(x, y) for x, y in zip(again, fresh))


_WRITER = """
import sys
import numpy as np
from dataclasses import replace
sys.path.insert(0, {tests!r})
from test_cold_tables import _costs
from simkit.cost import iteration, tables
iteration.DENSE_TOKENS = 64
cost = _costs("quickstart")[0]
tables.op_tables(cost, 3000, iteration.compute_op_tables)
for start in range(0, 60, 6):
    c = replace(cost)
    c.body_time(np.arange(9000 + start * {seed}, 9000 + start * {seed} + 6))
print("ok")
"""


def test_concurrent_writers_leave_a_valid_cache(tmp_path):
    """Two processes (a plan search's workers) building the same dense table and appending to the
    same sparse log at once: both finish, and what is on disk afterwards reads back whole and right."""
    env = dict(os.environ, SIMKIT_CACHE_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER.format(tests=str(ROOT / "tests"), seed=seed)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]  # fmt: skip
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip() == "ok", err
    cost = _costs("quickstart")[0]
    os.environ["SIMKIT_CACHE_DIR"], old = str(tmp_path), os.environ.get("SIMKIT_CACHE_DIR")
    try:
        log = tables.SparseRows(cost)
        rec = np.frombuffer((tmp_path / "tables" / f"{tables.table_key(cost, None)}.rows").read_bytes(), dtype=tables._RECORD)
        assert (rec["check"] == log._check(rec)).all()
        want = {9000 + s * k + i for k in (1, 2) for s in range(0, 60, 6) for i in range(6)}
        assert set(log._rows) == want
        ks = sorted(want)
        got = op_tables_at(cost, np.array(ks, dtype=np.float64))
        for col in range(3):
            assert _same([log._rows[k][col] for k in ks], got[col])
        dense = tables.op_tables(cost, 3000, compute_op_tables)
        assert all(_same(x, y) for x, y in zip(dense, compute_op_tables(cost, 3000)))
    finally:
        if old is None:
            os.environ.pop("SIMKIT_CACHE_DIR")
        else:
            os.environ["SIMKIT_CACHE_DIR"] = old


def test_table_key_covers_every_module_the_cost_code_reads():
    """The key's code digest covers simkit/cost and every simkit module it imports that can change
    a number; the only others imported are listed here with why they cannot."""
    cannot_change_a_number = {
        "simkit": "the version (in the key on its own)",
        "simkit.errors": "exception classes",
        "simkit.cachedir": "where caches live",
        "simkit.specs.catalog": "finds catalog files; what it loads reaches the tables as the model/device (in the key)",
        "simkit.specs.yamlio": "reads profile files; what it parses reaches the tables as the profile (in the key)",
    }
    digested = {"simkit." + d.removesuffix(".py").replace("/", ".") for d in tables.DIGESTED}
    for path in sorted((ROOT / "simkit" / "cost").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("simkit"):
                mod = node.module
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names if a.name.startswith("simkit")]
                if not mods:
                    continue
                mod = mods[0]
            else:
                continue
            if mod.startswith("simkit.cost"):
                continue
            assert mod in digested or mod in cannot_change_a_number, f"{path.name} imports {mod}: not in tables.DIGESTED"


def test_sparse_and_dense_keys_differ_and_follow_the_inputs(h100_cost):
    key = tables.table_key(h100_cost, None)
    assert key is not None and key not in {tables.table_key(h100_cost, n) for n in (1, 8192)}
    assert tables.table_key(_fresh(h100_cost), None) == key
    assert tables.table_key(replace(h100_cost, tp=2), None) != key
    assert tables.table_key(replace(h100_cost, ep_share=0.5), None) != key


def test_table_key_covers_the_processor_kind(h100_cost, monkeypatch):
    """A cache folder shared by machines whose numpy loops round differently keeps their tables apart."""
    key = tables.table_key(h100_cost, 300)
    assert tables.machine().startswith(__import__("platform").machine() + ":")
    monkeypatch.setattr(tables, "machine", lambda: "aarch64:ASIMD")
    assert tables.table_key(h100_cost, 300) not in (key, None)
