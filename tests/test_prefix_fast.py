"""The fast engine on plans that move data over the links, against the reference engine
(docs/performance.md, prefix caching section): prefix caching on random Mooncake-style traces
whose requests share prefix-block hashes, caches from a few entries (evicting and demoting at
nearly every admission) to ample, HBM alone or with DRAM and SSD tiers below it, one or several
replicas behind every router, continuous and chunked batching, recompute or swap preemption,
arrivals at one instant; and swap preemption on synthetic workloads, with swap space from none
(every swap refused: recomputed) to ample. Every per-request column, iteration row, link busy
period and summary figure must be the same bits (``conftest.assert_same_outputs``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.policies.batching import with_policy
from simkit.scenario import scenario_from_dict
from simkit.simulate import simulate
from tests.conftest import assert_same_outputs, make_scenario, uniform_workload

HASH_TOKENS = 512
"""Tokens per Mooncake hash block."""


def _mooncake_trace(path: Path, seed: int, n: int, roots: int, rate_per_ms: float, burst: float) -> None:
    """``n`` requests: each continues one of ``roots`` shared hash chains for a random number of
    blocks, then has blocks of its own; arrivals in whole milliseconds (so several share an
    instant), a fraction ``burst`` of them at the previous request's instant."""
    rng = np.random.default_rng(seed)
    chains = [[1_000 * (r + 1) + b for b in range(8)] for r in range(roots)]
    t = 0
    lines = []
    fresh = 10**6
    for _ in range(n):
        if rng.random() >= burst:
            t += int(rng.exponential(1.0 / rate_per_ms))
        shared = int(rng.integers(0, 7))
        own = int(rng.integers(0, 3))
        hashes = chains[int(rng.integers(0, roots))][:shared] + list(range(fresh, fresh + own))
        fresh += own
        inp = max(len(hashes) * HASH_TOKENS - int(rng.integers(0, HASH_TOKENS)), 1)
        inp += int(rng.integers(0, 40))
        out = int(rng.integers(1, 120))
        lines.append(json.dumps({"timestamp": t, "input_length": inp, "output_length": out, "hash_ids": hashes}))
    path.write_text("\n".join(lines) + "\n")


def _scenario(path: Path, replicas: int, routing: str, batching: dict, kv_tokens: int, block_size: int,
              tiers: list[str], lower_entries: int, seed: int, preemption: str = "recompute"):  # type: ignore[no-untyped-def]
    data = make_scenario(workload={"trace": {"path": str(path), "format": "mooncake"}}, seed=seed)
    # one hash entry of llama-2-7b in fp16: 512 tokens x 32 layers x 2 x 4096 x 2 bytes
    entry = HASH_TOKENS * 32 * 2 * 4096 * 2
    data["plan"].update({
        "batching": with_policy(batching, batching["policy"], {}),
        "kv_cache": {"num_blocks": kv_tokens // block_size, "block_size": block_size, "preemption": preemption},
        "prefix_cache": {"enabled": True, "tiers": tiers,
                         "capacity": {t: f"{lower_entries * entry} B" for t in tiers if t != "hbm"}},
        "parallel": {"replicas": replicas},
        "routing": routing,
    })  # fmt: skip
    return scenario_from_dict(data)


def _same(sc) -> dict:  # type: ignore[no-untyped-def]
    ref = simulate(sc, engine="reference")
    fast = simulate(sc)
    assert ref.summary["engine_path"] == "reference (requested)"
    assert fast.summary["engine_path"] == "fast"
    assert_same_outputs(ref, fast)
    return fast.summary


@settings(max_examples=int(os.environ.get("SIMKIT_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10**6),
    n=st.integers(5, 60),
    roots=st.integers(1, 4),
    rate=st.sampled_from([0.002, 0.02, 0.2]),
    burst=st.sampled_from([0.0, 0.3]),
    replicas=st.integers(1, 3),
    routing=st.sampled_from(["prefix_aware", "round_robin", "least_outstanding"]),
    policy=st.sampled_from(["continuous", "chunked_prefill"]),
    seqs=st.sampled_from([2, 8, 64]),
    chunk=st.sampled_from([256, 1024]),
    kv_tokens=st.sampled_from([4000, 8000, 20000, 60000]),
    block_size=st.sampled_from([16, 32]),
    tiers=st.sampled_from([["hbm"], ["hbm", "dram"], ["hbm", "dram", "ssd"]]),
    lower_entries=st.sampled_from([1, 4, 50]),
    preemption=st.sampled_from(["recompute", "swap"]),
)
def test_prefix_cache_fast_path_equals_reference(tmp_path, seed, n, roots, rate, burst, replicas, routing, policy, seqs,
                                                 chunk, kv_tokens, block_size, tiers, lower_entries, preemption):  # fmt: skip
    path = tmp_path / f"trace-{seed}-{n}.jsonl"
    _mooncake_trace(path, seed, n, roots, rate, burst)
    batching = {"policy": policy, "max_num_seqs": seqs, "max_num_batched_tokens": 4096}
    if policy == "chunked_prefill":
        batching["chunk_size"] = chunk
    _same(_scenario(path, replicas, routing, batching, kv_tokens, block_size, tiers, lower_entries, seed, preemption))


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
@pytest.mark.parametrize(("tiers", "lower"), [(["hbm", "dram"], "dram"), (["hbm", "dram", "ssd"], "ssd")])
def test_tiny_cache_evicts_demotes_fetches_and_preempts_exactly(tmp_path, policy, tiers, lower):
    # a pool of about eight hash entries and a few entries in each tier below it: nearly every
    # admission evicts, demotes (over D2H, then to the SSD) and drops; hits come back up over the
    # links; requests are preempted
    path = tmp_path / "t.jsonl"
    _mooncake_trace(path, 7, 60, 2, 0.05, 0.3)
    batching = {"policy": policy, "max_num_seqs": 64, "max_num_batched_tokens": 4096}
    s = _same(_scenario(path, 2, "prefix_aware", batching, 4200, 16, tiers, 4, 0))
    assert s["prefix_cache_hit_rate_by_tier"][lower] > 0
    assert s["prefix_cache_hit_rate_by_tier"]["dram"] > 0
    assert s["prefix_cache_hit_rate_by_tier"]["hbm"] > 0
    assert s["preemptions"] > 0


def test_mooncake_benchmark_trace_slice_runs_fast_and_exact(tmp_path):
    # the first 300 requests of the shipped Mooncake trace on two replicas (as the mooncake-prefix
    # benchmark, smaller): prefix-aware routing, chunked prefill, HBM then DRAM
    src = Path(__file__).resolve().parents[1] / "workloads" / "traces" / "mooncake_synthetic_trace.jsonl"
    path = tmp_path / "m.jsonl"
    path.write_text("".join(src.read_text().splitlines(keepends=True)[:300]))
    data = make_scenario(model="llama-3.1-8b", workload={"trace": {"path": str(path), "format": "mooncake"}})
    data["plan"].update({
        "batching": {"policy": "chunked_prefill", "chunk_size": 2048, "max_num_seqs": 128},
        "prefix_cache": {"enabled": True}, "parallel": {"replicas": 2}, "routing": "prefix_aware",
    })  # fmt: skip
    s = _same(scenario_from_dict(data))
    assert s["prefix_cache_hit_rate"] > 0


def _swap_scenario(n, rate, inp, out, seed, replicas, routing, batching, blocks, swap_blocks):  # type: ignore[no-untyped-def]
    data = make_scenario(workload=uniform_workload(n, rate, inp, out), seed=seed)
    # a block of llama-2-7b in fp16: 16 tokens x 32 layers x 2 x 4096 x 2 bytes
    swap = f"{swap_blocks * 16 * 32 * 2 * 4096 * 2} B"
    data["plan"].update({
        "batching": with_policy(batching, batching["policy"], {}),
        "kv_cache": {"num_blocks": blocks, "block_size": 16, "preemption": "swap", "swap_space": swap},
        "parallel": {"replicas": replicas}, "routing": routing,
    })  # fmt: skip
    return scenario_from_dict(data)


@settings(max_examples=int(os.environ.get("SIMKIT_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(
    n=st.integers(1, 80),
    rate=st.floats(0.5, 400.0),
    inp=st.tuples(st.integers(1, 300), st.integers(0, 1200)),
    out=st.tuples(st.integers(1, 40), st.integers(0, 300)),
    seed=st.integers(0, 10_000),
    replicas=st.integers(1, 3),
    routing=st.sampled_from(["round_robin", "least_outstanding", "prefix_aware"]),
    policy=st.sampled_from(["continuous", "chunked_prefill"]),
    seqs=st.integers(1, 64),
    blocks=st.integers(100, 600),
    swap_blocks=st.sampled_from([0, 30, 200, 5000]),
)
def test_swap_preemption_fast_path_equals_reference(n, rate, inp, out, seed, replicas, routing, policy, seqs, blocks,
                                                    swap_blocks):  # fmt: skip
    batching = {"policy": policy, "max_num_seqs": seqs, "max_num_batched_tokens": 4096, "chunk_size": max(seqs, 512)}
    inp = (inp[0], inp[0] + inp[1])
    out = (out[0], out[0] + out[1])
    _same(_swap_scenario(n, rate, inp, out, seed, replicas, routing, batching, blocks, swap_blocks))


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
@pytest.mark.parametrize("replicas", [1, 2])
def test_heavy_swapping_is_exact(policy, replicas):
    # a pool far too small for the load, swap space for some of it: many swaps out and in over
    # PCIe, and some preemptions recomputed for want of swap space
    batching = {"policy": policy, "max_num_seqs": 64, "max_num_batched_tokens": 4096, "chunk_size": 512}
    s = _same(_swap_scenario(150, 60.0, (100, 1200), (20, 300), 3, replicas, "least_outstanding", batching, 220, 40))
    assert s["swaps"] >= 10
    assert s["preemptions"] > s["swaps"]


@pytest.mark.parametrize("change", [{"prefix_cache": {"enabled": True}}, {"kv_cache": {"num_blocks": 300, "preemption": "swap"}}])
def test_pipelined_plans_with_link_traffic_run_the_fast_engine(tmp_path, change):
    # prefix fetches and swaps cross other links than the stages' activations: the fast engine
    # waits for them with the stages in closed form (random plans: tests/test_fast_cover.py)
    path = tmp_path / "p.jsonl"
    _mooncake_trace(path, 3, 30, 2, 0.05, 0.2)
    data = make_scenario(workload={"trace": {"path": str(path), "format": "mooncake"}})
    data["plan"].update({"parallel": {"pp": 2}, "batching": {"policy": "continuous", "max_num_seqs": 32}} | change)
    sc = scenario_from_dict(data)
    ref = simulate(sc, engine="reference")
    auto = simulate(sc)
    assert auto.summary["engine_path"] == "fast; pipeline stages in closed form"
    assert_same_outputs(ref, auto)


def _sw_model(tmp_path: Path, window: int) -> str:
    import yaml

    m = yaml.safe_load((Path(__file__).resolve().parents[1] / "workloads/models/llama-3-8b.yaml").read_text())
    m.update({"name": f"sw-{window}", "max_context": 32768, "sliding_window": window})
    p = tmp_path / f"sw-{window}.yaml"
    p.write_text(yaml.safe_dump(m))
    return str(p)


@settings(max_examples=int(os.environ.get("SIMKIT_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(
    window=st.sampled_from([64, 200, 1024]),
    n=st.integers(1, 60),
    rate=st.floats(1.0, 300.0),
    inp=st.tuples(st.integers(1, 600), st.integers(0, 2000)),
    out=st.tuples(st.integers(1, 60), st.integers(0, 400)),
    seed=st.integers(0, 10_000),
    replicas=st.integers(1, 3),
    routing=st.sampled_from(["round_robin", "least_outstanding"]),
    policy=st.sampled_from(["continuous", "chunked_prefill"]),
    seqs=st.integers(1, 64),
    blocks=st.integers(60, 800),
    block_size=st.sampled_from([8, 16, 32]),
    preemption=st.sampled_from(["recompute", "swap"]),
    prefix=st.booleans(),
)
def test_sliding_window_fast_path_equals_reference(tmp_path, window, n, rate, inp, out, seed, replicas, routing, policy,
                                                   seqs, blocks, block_size, preemption, prefix):  # fmt: skip
    data = make_scenario(model=_sw_model(tmp_path, window), seed=seed,
                         workload=uniform_workload(n, rate, (inp[0], inp[0] + inp[1]), (out[0], out[0] + out[1])))
    data["plan"].update({
        "batching": with_policy({"policy": policy, "max_num_seqs": seqs, "max_num_batched_tokens": 4096,
                                 "chunk_size": max(seqs, 256)}, policy, {}),
        "kv_cache": {"num_blocks": blocks, "block_size": block_size, "preemption": preemption},
        "parallel": {"replicas": replicas}, "routing": routing, "prefix_cache": {"enabled": prefix},
    })  # fmt: skip
    _same(scenario_from_dict(data))


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
def test_sliding_window_long_contexts_exact(tmp_path, policy):
    # prompts below the window that decode far beyond it, with a pool that preempts: blocks grow
    # up to the window's and stop, decode attention stops growing, and both engines agree bit
    # for bit; then prompts longer than the window (admitted with the window's blocks)
    for inp, blocks, preempted in (((20, 240), 500, True), ((200, 3000), 700, False)):
        data = make_scenario(model=_sw_model(tmp_path, 256), workload=uniform_workload(80, 40.0, inp, (50, 900)))
        data["plan"].update({
            "batching": with_policy({"policy": policy, "max_num_seqs": 64, "max_num_batched_tokens": 4096,
                                     "chunk_size": 512}, policy, {}),
            "kv_cache": {"num_blocks": blocks, "block_size": 16},
        })  # fmt: skip
        s = _same(scenario_from_dict(data))
        assert (s["preemptions"] > 20) == preempted
