"""Disaggregated serving on the fast path (prefill pool -> KV hand-off over a shared link ->
decode pool) against the reference engine (the oracle), bit for bit: random deployments (pool
sizes, routers, link speeds down to a slow link many hand-offs contend for, small KV pools that
preempt, swaps, a prefix cache on the prefill side), and the plans that still fall back."""

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.engine.fast import FastEngine
from simkit.scenario import load_scenario, scenario_from_dict
from simkit.simulate import simulate
from tests.conftest import assert_same_outputs, make_scenario, uniform_workload

ROOT = Path(__file__).resolve().parents[1]


def _disagg(n, rate, inp, out, seed, replicas, prefill, routing, link, scale, seqs, tokens, kv_cache, prefix=False,
            calibration="none", tp=1):  # fmt: skip
    """A disaggregated deployment on a DGX H100 whose ``link`` (network or nvlink) runs at
    ``scale`` x its speed (a small factor: a slow link the hand-offs queue on)."""
    key = "network" if link == "network" else "gpu_to_gpu"
    data = make_scenario(
        hardware={"preset": "dgx-h100", "bandwidth_scale": {key: scale}},
        workload=uniform_workload(n, rate, inp, out),
        seed=seed,
        calibration=calibration,
    )
    data["plan"].update({
        "batching": {"policy": "disaggregated", "prefill_replicas": prefill, "kv_transfer_link": link,
                     "max_num_seqs": seqs, "max_num_batched_tokens": tokens},
        "parallel": {"replicas": replicas, "tp": tp},
        "routing": routing,
        "kv_cache": kv_cache,
    })  # fmt: skip
    if prefix:
        data["plan"]["prefix_cache"] = {"enabled": True}
    return scenario_from_dict(data)


def assert_same_run(sc):  # type: ignore[no-untyped-def]
    """Both engines on ``sc``: the same bits everywhere (per-request columns, iteration rows, the
    links' busy periods, every summary figure); the default runs the fast engine."""
    ref = simulate(sc, engine="reference")
    fast = simulate(sc)
    assert_same_outputs(ref, fast)
    assert ref.summary["engine_path"] == "reference (requested)"
    assert fast.summary["engine_path"] == "fast"
    return ref.summary, fast.summary


@settings(max_examples=int(os.environ.get("SIMKIT_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(
    n=st.integers(1, 60),
    rate=st.floats(1.0, 400.0),
    inp=st.tuples(st.integers(1, 300), st.integers(0, 1500)),
    out=st.tuples(st.integers(1, 40), st.integers(0, 300)),
    seed=st.integers(0, 10_000),
    pools=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    routing=st.sampled_from(["round_robin", "least_outstanding", "prefix_aware"]),
    link=st.sampled_from(["network", "nvlink"]),
    scale=st.sampled_from([1.0, 0.01, 0.001]),
    seqs=st.integers(1, 64),
    tokens=st.integers(64, 4096),
    blocks=st.integers(40, 600),
    block_size=st.sampled_from([8, 16, 32]),
    watermark=st.sampled_from([0.0, 0.01]),
    preemption=st.sampled_from(["recompute", "swap"]),
    prefix=st.booleans(),
    calibration=st.sampled_from(["none", "auto"]),
    tp=st.sampled_from([1, 2]),
)
def test_disaggregated_fast_path_equals_reference(n, rate, inp, out, seed, pools, routing, link, scale, seqs, tokens,
                                                  blocks, block_size, watermark, preemption, prefix, calibration, tp):  # fmt: skip
    kv = {"num_blocks": blocks, "block_size": block_size, "watermark": watermark, "preemption": preemption}
    tp = tp if sum(pools) * tp <= 8 else 1  # one node's 8 GPUs
    sc = _disagg(n, rate, (inp[0], inp[0] + inp[1]), (out[0], out[0] + out[1]), seed, sum(pools), pools[0], routing,
                 link, scale, max(seqs, 1), max(tokens, seqs), kv, prefix, calibration, tp)  # fmt: skip
    assert_same_run(sc)


def test_shipped_scenario_and_its_round_robin_variant():
    for over in ({}, {"workload.limit": 200, "plan.routing": "round_robin"}):
        sc = load_scenario(ROOT / "workloads/scenarios/disaggregated.yaml", over)
        _, fast = assert_same_run(sc)
        assert fast["requests_completed"] > 0


def test_slow_contended_link_cuts_decode_runs_and_requests_join_behind_their_blocks(monkeypatch):
    """A slow link: hand-offs queue on it and arrive while decode runs are in flight, so runs are
    cut short (the reference's interrupt) with their blocks allocated for the whole run, and
    requests join behind those blocks (``FastEngine._late``); both paths are taken and exact,
    with a KV pool small enough that the decode pool preempts."""
    seen = {"cut": 0, "late": 0}
    cuttable, late_alloc = FastEngine._cuttable, FastEngine._late_alloc

    def counting_cuttable(self, start, dur):  # type: ignore[no-untyped-def]
        s = self._run[1]
        d = yield from cuttable(self, start, dur)
        seen["cut"] += self._run[1] < s
        return d

    def counting_late_alloc(self, upto):  # type: ignore[no-untyped-def]
        seen["late"] += 1
        late_alloc(self, upto)

    monkeypatch.setattr(FastEngine, "_cuttable", counting_cuttable)
    monkeypatch.setattr(FastEngine, "_late_alloc", counting_late_alloc)
    preempted = 0
    for link, scale, blocks, rate in (("network", 0.02, 2000, 60.0), ("nvlink", 0.002, 300, 60.0),
                                      ("nvlink", 0.05, 150, 200.0)):  # fmt: skip
        kv = {"num_blocks": blocks, "block_size": 16}
        sc = _disagg(300, rate, (100, 1500), (50, 400), 7, 4, 1, "least_outstanding", link, scale, 64, 4096, kv)
        ref, _ = assert_same_run(sc)
        # every request fits a prefill replica: none is refused while its blocks are held by KV
        # waiting for the link (the replica waits for the transfers to free them)
        assert ref["requests_completed"] == 300, ref["rejection_reasons"]
        preempted += ref["preemptions"]
    assert seen["cut"] > 10 and seen["late"] > 0, seen
    assert preempted > 0


def test_uncovered_disaggregated_plans_fall_back_and_say_so():
    """(Sliding-window models and pipelined or offloaded replicas are on the fast path:
    tests/test_fast_cover.py.)"""
    data = make_scenario(workload=uniform_workload(40, 30.0, (32, 600), (2, 80)))
    data["plan"].update({"batching": {"policy": "disaggregated", "prefill_replicas": 1, "kv_transfer_link": "nvlink"},
                         "parallel": {"replicas": 2}, "execution": {"mode": "layer_by_layer"}})  # fmt: skip
    sc = scenario_from_dict(data)
    ref = simulate(sc, engine="reference")
    fast = simulate(sc)
    assert_same_outputs(ref, fast)
    assert fast.summary["engine_path"] == "reference (layer-by-layer execution)"
