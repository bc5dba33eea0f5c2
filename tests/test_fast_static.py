"""Static (FlexGen-style) batching on the fast path against the reference engine (the oracle),
bit for bit: random batches, pools, routers and KV pools (some too small for a request's whole
KV: refused), a prefix cache, sliding-window models, arrivals during a batch (they wait for
it: a decode run is not cut at an arrival), a fixed batch at time 0; pipelined or offloaded
static plans still run on the reference engine and say so."""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.engine.fast import FastEngine
from simkit.scenario import scenario_from_dict
from simkit.simulate import simulate
from tests.conftest import assert_same_outputs, make_scenario, uniform_workload
from tests.test_prefix_fast import _sw_model


def _same(sc):  # type: ignore[no-untyped-def]
    """Both engines on ``sc``, the same bits everywhere; the default runs the fast engine."""
    ref = simulate(sc, engine="reference")
    fast = simulate(sc)
    assert_same_outputs(ref, fast)
    assert fast.summary["engine_path"] == "fast"
    return ref.summary


@pytest.fixture(scope="module")
def sw_models(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("sw")
    return {w: _sw_model(d, w) for w in (64, 1024)}


@settings(max_examples=int(os.environ.get("SIMKIT_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(
    n=st.integers(1, 80),
    rate=st.floats(0.5, 400.0),
    inp=st.tuples(st.integers(1, 300), st.integers(0, 1500)),
    out=st.tuples(st.integers(1, 40), st.integers(0, 400)),
    seed=st.integers(0, 10_000),
    replicas=st.integers(1, 3),
    routing=st.sampled_from(["round_robin", "least_outstanding", "prefix_aware"]),
    seqs=st.integers(1, 64),
    batch=st.one_of(st.none(), st.integers(1, 48)),
    blocks=st.integers(40, 600),
    block_size=st.sampled_from([8, 16, 32]),
    watermark=st.sampled_from([0.0, 0.01]),
    prefix=st.booleans(),
    window=st.sampled_from([None, 64, 1024]),
    calibration=st.sampled_from(["none", "auto"]),
    tp=st.sampled_from([1, 2]),
)
def test_static_fast_path_equals_reference(sw_models, n, rate, inp, out, seed, replicas, routing, seqs, batch, blocks,
                                           block_size, watermark, prefix, window, calibration, tp):  # fmt: skip
    data = make_scenario(workload=uniform_workload(n, rate, (inp[0], inp[0] + inp[1]), (out[0], out[0] + out[1])),
                         seed=seed, calibration=calibration)  # fmt: skip
    if window is not None:
        data["model"] = sw_models[window]
    data["plan"].update({
        "batching": {"policy": "static", "max_num_seqs": seqs} | ({} if batch is None else {"batch_size": batch}),
        "kv_cache": {"num_blocks": blocks, "block_size": block_size, "watermark": watermark},
        "parallel": {"replicas": replicas, "tp": tp}, "routing": routing, "prefix_cache": {"enabled": prefix},
    })  # fmt: skip
    _same(scenario_from_dict(data))


def test_arrivals_wait_for_the_batch_and_runs_are_not_cut_at_them(monkeypatch):
    """Arrivals during a batch's decode neither join it nor cut its decode run (as the
    reference: static batching does not admit on arrival): each run ends where a request of the
    batch finishes, in one step of the loop, and the next batch starts when the last one ends."""
    runs: list[int] = []
    begin = FastEngine._decode_begin

    def counting(self, nb):  # type: ignore[no-untyped-def]
        dur = begin(self, nb)
        runs.append(self._run[1])
        return dur

    monkeypatch.setattr(FastEngine, "_decode_begin", counting)
    data = make_scenario(workload=uniform_workload(300, 40.0, (50, 900), (20, 400)), seed=4)
    data["plan"].update({"batching": {"policy": "static", "max_num_seqs": 32, "batch_size": 16},
                         "kv_cache": {"num_blocks": 4000}})  # fmt: skip
    ref = _same(scenario_from_dict(data))
    assert ref["requests_completed"] == 300
    # about one run per request of each batch (fewer where several finish together); a run cut
    # at each of the 300 arrivals would take far more
    assert 0 < len(runs) <= 300 and max(runs) > 100, (len(runs), max(runs))


def test_fixed_batch_and_a_pool_that_refuses_some():
    data = make_scenario(workload={"batch": {"num_prompts": 64, "input_tokens": 700, "output_tokens": 300}})
    data["plan"].update({"batching": {"policy": "static", "max_num_seqs": 64}, "kv_cache": {"num_blocks": 400}})
    ref = _same(scenario_from_dict(data))
    assert ref["requests_completed"] == 64
    # a pool that holds a request's whole KV only for some of them: the rest are refused
    data = make_scenario(workload=uniform_workload(60, 20.0, (100, 3000), (10, 600)))
    data["plan"].update({"batching": {"policy": "static", "max_num_seqs": 8}, "kv_cache": {"num_blocks": 150}})
    ref = _same(scenario_from_dict(data))
    assert ref["requests_rejected"] > 0 and ref["requests_completed"] > 0


def test_pipelined_static_plans_run_the_fast_engine():
    """(Random pipelined static plans: tests/test_pipeline_fast.py.)"""
    data = make_scenario(workload=uniform_workload(40, 30.0, (32, 600), (2, 80)))
    data["plan"].update({"batching": {"policy": "static", "max_num_seqs": 8}, "parallel": {"pp": 2}})
    sc = scenario_from_dict(data)
    ref = simulate(sc, engine="reference")
    fast = simulate(sc)
    assert_same_outputs(ref, fast)
    assert fast.summary["engine_path"] == "fast; pipeline stages in closed form"
