"""The fast path on the plans that fell back to the reference engine until issue 16's eighth
round, against the reference engine (the oracle): prefix caching and swap preemption on
pipelined replicas (``PipelineFastEngine``, stages in closed form, waiting for the fetches and
swaps as the reference's steps do) and on offloaded replicas (``OffloadFastEngine``, the steps
event by event); disaggregated serving of sliding-window models (decode runs cut by hand-offs,
requests joining behind the blocks a cut run allocated, capped at the window's); static
batching and disaggregated serving on pipelined and offloaded replicas. Random Mooncake-style
traces whose requests share prefix-block hashes (caches from a few entries to ample, HBM alone
or with DRAM and SSD below it), random synthetic workloads under memory pressure that forces
swaps (swap space from none to ample), pipeline degrees 2-4 with even or uneven layer splits,
random offload plans of a T4 and an H100 with CXL, windows of 64-1,024 tokens, hand-off links
slowed down to a queue, pool sizes, routers, continuous, chunked and static batching. Every
per-request column, iteration row, link busy period and summary figure must be the same bits
(``conftest.assert_same_outputs``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.engine.fast import FastEngine
from simkit.engine.offload_fast import HANDOFFS_ON_LINKS, PREFIX_ON_LINKS, SWAPS_ON_LINKS
from simkit.errors import SimkitError
from simkit.policies.batching import with_policy
from simkit.scenario import scenario_from_dict
from simkit.simulate import simulate
from tests.conftest import assert_same_outputs, make_scenario, uniform_workload
from tests.test_prefix_fast import HASH_TOKENS, _mooncake_trace, _sw_model

_EXAMPLES = int(os.environ.get("SIMKIT_HYPOTHESIS_EXAMPLES", "25"))
_REPEATED = "reference (pipeline parallelism); pipeline stages event by event (replica "


def _split(pp: int, cut: int) -> list[int] | None:
    """Llama-2-7B's 32 layers over ``pp`` stages: even (``cut`` 0) or the first stage ``cut``
    layers and the rest even."""
    if cut == 0:
        return None
    rest = 32 - cut
    return [cut] + [rest // (pp - 1) + (1 if k < rest % (pp - 1) else 0) for k in range(pp - 1)]


def _same_pipelined(data: dict) -> dict:
    """Run ``data`` on the reference engine and on the fast path: the fast path ran the stages in
    closed form (or repeated the run event by event where a micro-batch overtook another, and
    said so) and every output is the same bits. Returns the fast path's summary."""
    ref = simulate(scenario_from_dict(data), engine="reference")
    got = simulate(scenario_from_dict(data))
    path = got.summary["engine_path"]
    assert path == "fast; pipeline stages in closed form" or path.startswith(_REPEATED), path
    assert_same_outputs(ref, got)
    return got.summary


def _pipelined_prefix(path: Path, pp: int, cut: int, replicas: int, routing: str, batching: dict, kv_tokens: int,
                      block_size: int, tiers: list[str], lower_entries: int, preemption: str, seed: int) -> dict:  # fmt: skip
    data = make_scenario(workload={"trace": {"path": str(path), "format": "mooncake"}}, seed=seed)
    entry = HASH_TOKENS * 32 * 2 * 4096 * 2  # one hash entry of llama-2-7b in fp16, all stages
    par: dict = {"replicas": replicas, "pp": pp}
    split = _split(pp, cut)
    if split is not None:
        par["layer_split"] = split
    data["plan"].update({
        "batching": with_policy(batching, batching["policy"], {}),
        "kv_cache": {"num_blocks": kv_tokens // block_size, "block_size": block_size, "preemption": preemption},
        "prefix_cache": {"enabled": True, "tiers": tiers,
                         "capacity": {t: f"{lower_entries * entry} B" for t in tiers if t != "hbm"}},
        "parallel": par,
        "routing": routing,
    })  # fmt: skip
    return data


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10**6),
    n=st.integers(5, 40),
    roots=st.integers(1, 4),
    rate=st.sampled_from([0.002, 0.02, 0.2]),
    burst=st.sampled_from([0.0, 0.3]),
    pp=st.integers(2, 4),
    cut=st.sampled_from([0, 0, 1, 5]),
    replicas=st.integers(1, 2),
    routing=st.sampled_from(["prefix_aware", "round_robin", "least_outstanding"]),
    policy=st.sampled_from(["continuous", "chunked_prefill"]),
    seqs=st.sampled_from([2, 8, 64]),
    chunk=st.sampled_from([256, 1024]),
    kv_tokens=st.sampled_from([4000, 8000, 60000]),
    block_size=st.sampled_from([16, 32]),
    tiers=st.sampled_from([["hbm"], ["hbm", "dram"], ["hbm", "dram", "ssd"]]),
    lower_entries=st.sampled_from([1, 4, 50]),
    preemption=st.sampled_from(["recompute", "swap"]),
)
def test_prefix_cache_on_pipelined_replicas_equals_reference(
    tmp_path, seed, n, roots, rate, burst, pp, cut, replicas, routing, policy, seqs, chunk, kv_tokens, block_size,
    tiers, lower_entries, preemption,
):  # fmt: skip
    path = tmp_path / f"trace-{seed}-{n}.jsonl"
    _mooncake_trace(path, seed, n, roots, rate, burst)
    batching = {"policy": policy, "max_num_seqs": seqs, "max_num_batched_tokens": 4096}
    if policy == "chunked_prefill":
        batching["chunk_size"] = chunk
    _same_pipelined(_pipelined_prefix(path, pp, cut, replicas, routing, batching, kv_tokens, block_size, tiers,
                                      lower_entries, preemption, seed))  # fmt: skip


def test_tiny_pipelined_cache_fetches_demotes_and_preempts_exactly(tmp_path):
    """A pool of a few hash entries over PP 2 and a few entries in DRAM and on the SSD below it:
    admissions evict, demote and drop, hits come back up over the links while the stages run,
    requests are preempted and swapped."""
    path = tmp_path / "t.jsonl"
    _mooncake_trace(path, 7, 60, 2, 0.05, 0.3)
    batching = {"policy": "continuous", "max_num_seqs": 64, "max_num_batched_tokens": 4096}
    s = _same_pipelined(_pipelined_prefix(path, 2, 0, 2, "prefix_aware", batching, 4200, 16, ["hbm", "dram", "ssd"], 4,
                                          "swap", 0))  # fmt: skip
    assert s["engine_path"] == "fast; pipeline stages in closed form"
    assert s["prefix_cache_hit_rate_by_tier"]["ssd"] > 0
    assert s["prefix_cache_hit_rate_by_tier"]["dram"] > 0
    assert s["preemptions"] > 0


def _pipelined_swaps(pp: int, cut: int, replicas: int, routing: str, policy: str, seqs: int, n: int, rate: float,
                     inp: tuple[int, int], out: tuple[int, int], blocks: int, swap_gib: float | None) -> dict:  # fmt: skip
    data = make_scenario(workload=uniform_workload(n, rate, inp, out))
    par: dict = {"replicas": replicas, "pp": pp}
    split = _split(pp, cut)
    if split is not None:
        par["layer_split"] = split
    batching = {"policy": policy, "max_num_seqs": seqs} | ({"chunk_size": 256} if policy == "chunked_prefill" else {})
    kv: dict = {"num_blocks": blocks, "preemption": "swap"}
    if swap_gib is not None:
        kv["swap_space"] = f"{swap_gib} GiB"
    data["plan"].update({"batching": batching, "parallel": par, "kv_cache": kv, "routing": routing})
    return data


@settings(max_examples=_EXAMPLES, deadline=None)
@given(
    pp=st.integers(2, 4),
    cut=st.sampled_from([0, 1, 7]),
    replicas=st.integers(1, 2),
    routing=st.sampled_from(["round_robin", "least_outstanding"]),
    policy=st.sampled_from(["continuous", "chunked_prefill"]),
    seqs=st.sampled_from([4, 16, 48]),
    n=st.integers(4, 50),
    rate=st.sampled_from([5.0, 50.0, 500.0]),
    inp_lo=st.integers(1, 600),
    out_lo=st.integers(1, 150),
    blocks=st.sampled_from([60, 120, 400]),
    swap_gib=st.sampled_from([None, 0.0, 0.01, 0.05]),
)
def test_swaps_on_pipelined_replicas_equal_reference(pp, cut, replicas, routing, policy, seqs, n, rate, inp_lo, out_lo,
                                                     blocks, swap_gib):  # fmt: skip
    # a request's KV at most its input + output tokens: at most 1200 + 300 = 94 blocks of 16
    data = _pipelined_swaps(pp, cut, replicas, routing, policy, seqs, n, rate, (inp_lo, inp_lo + 600),
                            (out_lo, out_lo + 150), blocks, swap_gib)  # fmt: skip
    _same_pipelined(data)


def test_pipelined_swaps_and_refusals_exactly():
    """Few blocks over PP 4: requests are swapped out and back in while other micro-batches are
    in flight; with a tiny swap space some swaps are refused (recomputed)."""
    for swap_gib, refused in ((None, False), (0.2, True)):
        s = _same_pipelined(_pipelined_swaps(4, 5, 1, "round_robin", "continuous", 32, 60, 100.0, (200, 800), (50, 200),
                                             150, swap_gib))  # fmt: skip
        assert s["engine_path"] == "fast; pipeline stages in closed form"
        assert s["preemptions"] > 0
        assert s["swaps"] > 0
        # a refused swap is a recompute: fewer swaps than preemptions
        assert (s["swaps"] < s["preemptions"]) == refused


_OFFLOADED = "fast; offloaded steps event by event ("
_frac = st.sampled_from([0.0, 0.5, 1.0])


@st.composite
def _offload(draw: st.DrawFn, seqs: int) -> dict:
    """A random plan.offload of llama-2-7b on a T4 or on an H100 with CXL: weights and KV split
    between the GPU and a lower tier, with or without prefetch, pinned or pageable copies, CPU
    attention, compression; one GPU batch per step."""
    hardware = draw(st.sampled_from(["gcp-t4-vm", "h100-pcie-cxl-server"]))
    tiers = ["cpu", "disk"] if hardware == "gcp-t4-vm" else ["cpu", "cxl", "disk"]

    def share() -> dict:
        g = draw(_frac)
        out = {"gpu": g}
        t = draw(st.sampled_from(tiers))
        out[t] = out.get(t, 0.0) + 1.0 - g
        return out

    off: dict = {
        "hardware": hardware,
        "weights": share(),
        "kv_cache": share(), "overlap": draw(st.booleans()), "decode_overlap": draw(st.booleans()),
        "pinned": draw(st.booleans()), "cpu_attention": draw(st.booleans()), "compress_weights": draw(st.booleans()),
        "compress_kv": draw(st.booleans()),
    }
    if hardware == "gcp-t4-vm" and off["weights"]["gpu"] > 0.5:
        off["weights"] = {"gpu": 0.5, "cpu": 0.5}  # a T4 holds about half of llama-2-7b's weights
    if draw(st.booleans()):
        off["gpu_batch_size"] = seqs + draw(st.integers(0, 2))
    return off


def _same_offloaded(data: dict, *reasons: str) -> dict:
    """Run ``data`` on the reference engine and on the fast path: the fast engine ran the steps
    event by event for one of ``reasons`` (or, for a plan that does not fit, both refused it
    alike) and every output is the same bits. Returns the fast path's summary (empty when
    refused)."""
    try:
        ref = simulate(scenario_from_dict(data), engine="reference")
    except SimkitError:
        with pytest.raises(SimkitError):
            simulate(scenario_from_dict(data))
        return {}
    got = simulate(scenario_from_dict(data))
    path = got.summary["engine_path"]
    assert path in [f"{_OFFLOADED}{r})" for r in reasons] or "offload" not in path, path  # all on the GPU: not offloaded
    assert_same_outputs(ref, got)
    return got.summary


def _offloaded_scenario(off: dict, workload: dict, batching: dict, replicas: int, kv_cache: dict,
                        prefix: dict | None, seed: int = 0) -> dict:  # fmt: skip
    off = dict(off)
    hardware = off.pop("hardware")
    data = make_scenario(hardware=hardware if replicas == 1 else {"preset": hardware, "num_gpus": replicas},
                         workload=workload, seed=seed)  # fmt: skip
    data["plan"].update({"batching": with_policy(batching, batching["policy"], {}), "offload": off,
                         "parallel": {"replicas": replicas}, "kv_cache": kv_cache})  # fmt: skip
    if replicas > 1:
        data["plan"]["routing"] = "least_outstanding"
    if prefix is not None:
        data["plan"]["prefix_cache"] = prefix
    return data


@settings(max_examples=_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(
    data=st.data(),
    seed=st.integers(0, 10**6),
    n=st.integers(3, 24),
    roots=st.integers(1, 3),
    rate=st.sampled_from([0.002, 0.02, 0.2]),
    burst=st.sampled_from([0.0, 0.3]),
    replicas=st.integers(1, 2),
    policy=st.sampled_from(["continuous", "chunked_prefill"]),
    seqs=st.integers(1, 8),
    kv_tokens=st.sampled_from([4000, 8000, 60000]),
    tiers=st.sampled_from([["hbm"], ["hbm", "dram"], ["hbm", "dram", "ssd"]]),
    lower_entries=st.sampled_from([1, 4, 50]),
    preemption=st.sampled_from(["recompute", "swap"]),
)
def test_prefix_cache_on_offloaded_replicas_equals_reference(
    tmp_path, data, seed, n, roots, rate, burst, replicas, policy, seqs, kv_tokens, tiers, lower_entries, preemption,
):  # fmt: skip
    path = tmp_path / f"trace-{seed}-{n}.jsonl"
    _mooncake_trace(path, seed, n, roots, rate, burst)
    batching = {"policy": policy, "max_num_seqs": seqs, "max_num_batched_tokens": 4096}
    if policy == "chunked_prefill":
        batching["chunk_size"] = 512
    entry = HASH_TOKENS * 32 * 2 * 4096 * 2
    prefix = {"enabled": True, "tiers": tiers, "capacity": {t: f"{lower_entries * entry} B" for t in tiers if t != "hbm"}}
    sc = _offloaded_scenario(data.draw(_offload(seqs)), {"trace": {"path": str(path), "format": "mooncake"}}, batching,
                             replicas, {"num_blocks": kv_tokens // 16, "preemption": preemption}, prefix, seed)  # fmt: skip
    _same_offloaded(sc, PREFIX_ON_LINKS)


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    replicas=st.integers(1, 2),
    policy=st.sampled_from(["continuous", "chunked_prefill"]),
    seqs=st.integers(1, 8),
    n=st.integers(3, 30),
    rate=st.sampled_from([0.5, 5.0, 50.0]),
    inp_lo=st.integers(8, 400),
    out_lo=st.integers(1, 60),
    blocks=st.sampled_from([40, 80, 400]),
    swap_gib=st.sampled_from([None, 0.0, 0.05, 0.5]),
)
def test_swaps_on_offloaded_replicas_equal_reference(data, replicas, policy, seqs, n, rate, inp_lo, out_lo, blocks,
                                                     swap_gib):  # fmt: skip
    batching = {"policy": policy, "max_num_seqs": seqs} | ({"chunk_size": 128} if policy == "chunked_prefill" else {})
    kv: dict = {"num_blocks": blocks, "preemption": "swap"}
    if swap_gib is not None:
        kv["swap_space"] = f"{swap_gib} GiB"
    workload = uniform_workload(n, rate, (inp_lo, inp_lo + 400), (out_lo, out_lo + 60))
    _same_offloaded(_offloaded_scenario(data.draw(_offload(seqs)), workload, batching, replicas, kv, None),
                    SWAPS_ON_LINKS)  # fmt: skip


@pytest.mark.parametrize("tiers", [["hbm", "dram"], ["hbm", "dram", "ssd"]])
def test_offloaded_prefix_fetches_and_swaps_exactly(tmp_path, tiers):
    """Half the weights streamed from DRAM, a small pool and a few entries below it: hits come
    back up over the links the step streams its weights on, requests are preempted (swapped,
    or recomputed where they share prefix blocks)."""
    path = tmp_path / "t.jsonl"
    _mooncake_trace(path, 7, 40, 2, 0.05, 0.3)
    off = {"hardware": "gcp-t4-vm", "weights": {"gpu": 0.5, "cpu": 0.5}, "kv_cache": {"gpu": 1.0}}
    entry = HASH_TOKENS * 32 * 2 * 4096 * 2
    prefix = {"enabled": True, "tiers": tiers, "capacity": {t: f"{4 * entry} B" for t in tiers if t != "hbm"}}
    s = _same_offloaded(_offloaded_scenario(off, {"trace": {"path": str(path), "format": "mooncake"}},
                                            {"policy": "continuous", "max_num_seqs": 8}, 1,
                                            {"num_blocks": 260, "preemption": "swap"}, prefix), PREFIX_ON_LINKS)  # fmt: skip
    assert s["engine_path"] == f"{_OFFLOADED}{PREFIX_ON_LINKS})"
    assert s["prefix_cache_hit_rate_by_tier"]["dram"] > 0
    assert s["preemptions"] > s["swaps"] > 0  # swapped, and recomputed where a request shared prefix blocks


def test_several_gpu_batches_with_swaps_on_the_fast_engine():
    """A step of more sequences than gpu_batch_size splits them into GPU batches (the reference's
    per-batch contexts: the fast engine hands the executor the real ones, in the reference's
    order): with swaps, the steps event by event on the fast engine."""
    off = {"hardware": "gcp-t4-vm", "weights": {"gpu": 0.5, "cpu": 0.5}, "gpu_batch_size": 2}
    data = _offloaded_scenario(off, uniform_workload(8, 20.0, (32, 128), (2, 8)), {"policy": "continuous", "max_num_seqs": 4},
                               1, {"preemption": "swap"}, None)  # fmt: skip
    ref = simulate(scenario_from_dict(data), engine="reference")
    got = simulate(scenario_from_dict(data))
    assert got.summary["engine_path"] == f"fast; offloaded steps event by event ({SWAPS_ON_LINKS})"
    assert_same_outputs(ref, got)


def _disagg_window(model: str, n: int, rate: float, inp: tuple[int, int], out: tuple[int, int], seed: int,
                   pools: tuple[int, int], routing: str, link: str, scale: float, seqs: int, kv_cache: dict,
                   policy_tokens: int = 4096) -> dict:  # fmt: skip
    """Disaggregated serving of ``model`` (a sliding-window one) on a DGX H100 whose hand-off
    ``link`` runs at ``scale`` x its speed (small: hand-offs queue and cut decode runs short)."""
    key = "network" if link == "network" else "gpu_to_gpu"
    data = make_scenario(hardware={"preset": "dgx-h100", "bandwidth_scale": {key: scale}}, model=model,
                         workload=uniform_workload(n, rate, inp, out), seed=seed)  # fmt: skip
    data["plan"].update({
        "batching": {"policy": "disaggregated", "prefill_replicas": pools[0], "kv_transfer_link": link,
                     "max_num_seqs": seqs, "max_num_batched_tokens": max(policy_tokens, seqs)},
        "parallel": {"replicas": sum(pools)},
        "routing": routing,
        "kv_cache": kv_cache,
    })  # fmt: skip
    return data


def _same_fast(data: dict) -> dict:
    """The reference engine and the fast path (``engine_path`` ``fast``) give the same bits."""
    ref = simulate(scenario_from_dict(data), engine="reference")
    got = simulate(scenario_from_dict(data))
    assert got.summary["engine_path"] == "fast"
    assert_same_outputs(ref, got)
    return got.summary


@settings(max_examples=_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(
    window=st.sampled_from([64, 200, 1024]),
    n=st.integers(1, 60),
    rate=st.floats(1.0, 300.0),
    inp=st.tuples(st.integers(1, 600), st.integers(0, 2000)),
    out=st.tuples(st.integers(1, 60), st.integers(0, 400)),
    seed=st.integers(0, 10_000),
    pools=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    routing=st.sampled_from(["round_robin", "least_outstanding"]),
    link=st.sampled_from(["network", "nvlink"]),
    scale=st.sampled_from([1.0, 0.01, 0.001]),
    seqs=st.integers(1, 64),
    blocks=st.integers(60, 800),
    block_size=st.sampled_from([8, 16, 32]),
    preemption=st.sampled_from(["recompute", "swap"]),
)
def test_disaggregated_sliding_window_equals_reference(tmp_path, window, n, rate, inp, out, seed, pools, routing, link,
                                                       scale, seqs, blocks, block_size, preemption):  # fmt: skip
    kv = {"num_blocks": blocks, "block_size": block_size, "preemption": preemption}
    _same_fast(_disagg_window(_sw_model(tmp_path, window), n, rate, (inp[0], inp[0] + inp[1]), (out[0], out[0] + out[1]),
                              seed, pools, routing, link, scale, seqs, kv))  # fmt: skip


def test_sliding_window_hand_offs_cut_runs_and_join_behind_capped_blocks(tmp_path, monkeypatch):
    """A slow link: hand-offs arrive while decode runs are in flight, runs are cut short with
    their blocks allocated for the whole run, and requests join behind those blocks
    (``FastEngine._late``) while their blocks are capped at the window's; exact, with a pool
    small enough that the decode pool preempts."""
    seen = {"late_capped": 0}
    late_alloc = FastEngine._late_alloc

    def counting_late_alloc(self, upto):  # type: ignore[no-untyped-def]
        seen["late_capped"] += self._cap_blocks is not None and bool(self._late)
        late_alloc(self, upto)

    monkeypatch.setattr(FastEngine, "_late_alloc", counting_late_alloc)
    preempted = 0
    for window, link, scale, blocks, rate in ((200, "network", 0.02, 2000, 60.0), (64, "nvlink", 0.002, 300, 60.0),
                                              (1024, "nvlink", 0.05, 150, 200.0)):  # fmt: skip
        kv = {"num_blocks": blocks, "block_size": 16}
        s = _same_fast(_disagg_window(_sw_model(tmp_path, window), 300, rate, (100, 1500), (50, 400), 7, (1, 3),
                                      "least_outstanding", link, scale, 64, kv))  # fmt: skip
        preempted += s["preemptions"]
    assert seen["late_capped"] > 0, seen
    assert preempted > 0


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pp=st.integers(2, 3),
    cut=st.sampled_from([0, 1, 7]),
    pools=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    routing=st.sampled_from(["round_robin", "least_outstanding", "prefix_aware"]),
    link=st.sampled_from(["network", "nvlink"]),
    scale=st.sampled_from([1.0, 0.01, 0.001]),
    seqs=st.integers(1, 48),
    n=st.integers(1, 40),
    rate=st.floats(1.0, 300.0),
    inp=st.tuples(st.integers(1, 300), st.integers(0, 1500)),
    out=st.tuples(st.integers(1, 40), st.integers(0, 200)),
    blocks=st.sampled_from([None, 150, 600]),
    preemption=st.sampled_from(["recompute", "swap"]),
    prefix=st.booleans(),
)
def test_disaggregated_pipelined_replicas_equal_reference(pp, cut, pools, routing, link, scale, seqs, n, rate, inp, out,
                                                          blocks, preemption, prefix):  # fmt: skip
    """Prefill and decode pools of pipelined replicas (two DGX H100 nodes when they need more than
    one's eight GPUs), the hand-off on a link slowed down to a queue."""
    key = "network" if link == "network" else "gpu_to_gpu"
    nodes = 1 if sum(pools) * pp <= 8 else 2
    data = make_scenario(hardware={"preset": "dgx-h100", "num_nodes": nodes, "bandwidth_scale": {key: scale}},
                         workload=uniform_workload(n, rate, (inp[0], inp[0] + inp[1]), (out[0], out[0] + out[1])))  # fmt: skip
    par: dict = {"replicas": sum(pools), "pp": pp}
    split = _split(pp, cut)
    if split is not None:
        par["layer_split"] = split
    kv: dict = {"preemption": preemption} | ({"num_blocks": blocks} if blocks is not None else {})
    data["plan"].update({
        "batching": {"policy": "disaggregated", "prefill_replicas": pools[0], "kv_transfer_link": link,
                     "max_num_seqs": seqs, "max_num_batched_tokens": 4096},
        "parallel": par, "routing": routing, "kv_cache": kv, "prefix_cache": {"enabled": prefix},
    })  # fmt: skip
    _same_pipelined(data)


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    replicas=st.integers(1, 2),
    batch=st.integers(1, 8),
    n=st.integers(1, 30),
    rate=st.sampled_from([0.5, 5.0, 50.0]),
    inp_lo=st.integers(8, 400),
    out_lo=st.integers(1, 60),
    blocks=st.sampled_from([None, 80, 400]),
)
def test_static_offloaded_replicas_equal_reference(data, replicas, batch, n, rate, inp_lo, out_lo, blocks):
    """Static batches of at most one GPU batch on offloaded replicas (steps in closed form, or
    event by event where the replicas share the host CPU): the fast engine's."""
    off = data.draw(_offload(batch))
    kv: dict = {} if blocks is None else {"num_blocks": blocks}
    sc = _offloaded_scenario(off, uniform_workload(n, rate, (inp_lo, inp_lo + 400), (out_lo, out_lo + 60)),
                             {"policy": "static", "batch_size": batch}, replicas, kv, None)  # fmt: skip
    try:
        ref = simulate(scenario_from_dict(sc), engine="reference")
    except SimkitError:
        with pytest.raises(SimkitError):
            simulate(scenario_from_dict(sc))
        return
    got = simulate(scenario_from_dict(sc))
    path = got.summary["engine_path"]
    assert path.startswith(("fast; offloaded steps in closed form", "fast; offloaded steps event by event (")) \
        or "offload" not in path, path  # fmt: skip
    assert_same_outputs(ref, got)


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    pools=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    routing=st.sampled_from(["round_robin", "least_outstanding"]),
    link=st.sampled_from(["network", "nvlink"]),
    seqs=st.integers(1, 8),
    n=st.integers(1, 24),
    rate=st.sampled_from([0.5, 5.0, 50.0]),
    inp_lo=st.integers(8, 400),
    out_lo=st.integers(1, 60),
    preemption=st.sampled_from(["recompute", "swap"]),
)
def test_disaggregated_offloaded_replicas_equal_reference(data, pools, routing, link, seqs, n, rate, inp_lo, out_lo,
                                                          preemption):  # fmt: skip
    """Prefill and decode pools of offloaded replicas: the steps event by event (the hand-offs may
    share their links), on the fast engine."""
    off = data.draw(_offload(seqs))
    off["hardware"] = "h100-pcie-cxl-server"  # several GPUs, NVLink or the network between them
    batching = {"policy": "disaggregated", "prefill_replicas": pools[0], "kv_transfer_link": link, "max_num_seqs": seqs,
                "max_num_batched_tokens": 4096}  # fmt: skip
    sc = _offloaded_scenario(off, uniform_workload(n, rate, (inp_lo, inp_lo + 400), (out_lo, out_lo + 60)), batching,
                             sum(pools), {"preemption": preemption}, None)  # fmt: skip
    sc["plan"]["routing"] = routing
    _same_offloaded(sc, HANDOFFS_ON_LINKS, SWAPS_ON_LINKS)
