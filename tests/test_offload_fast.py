"""Offloaded steps in closed form (engine/offload_fast.py) against the event path (the oracle):
per-request times, link counters and the whole summary equal bit for bit on random plans."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from simkit.engine.offload_fast import wake_at
from simkit.errors import SimkitError
from simkit.scenario import scenario_from_dict
from simkit.simulate import simulate
from tests.conftest import assert_same_outputs, make_scenario


def _pair(data: dict) -> tuple:
    """(event path, closed form) results of the same scenario."""
    ref = simulate(scenario_from_dict(data), engine="reference")
    got = simulate(scenario_from_dict(data))
    return ref, got




def _sc(offload: dict, hardware: str, n: int, inp: int, out: int, batching: dict, replicas: int = 1, rate: float | None = None):
    workload: dict = (
        {"batch": {"num_prompts": n, "input_tokens": inp, "output_tokens": out}}
        if rate is None
        else {"synthetic": {"num_requests": n, "arrival": {"process": "poisson", "rate": rate},
                            "lengths": {"input": {"dist": "fixed", "value": inp}, "output": {"dist": "fixed", "value": out}}}}
    )
    data = make_scenario(hardware=hardware, model="phi-2", workload=workload)
    data["plan"].update({"batching": batching, "offload": offload, "parallel": {"replicas": replicas}})
    return data


def test_shipped_offload_scenario_is_closed_form_and_identical():
    from simkit.scenario import load_scenario

    sc = load_scenario("workloads/scenarios/opt175b-t4-offload.yaml")
    ref = simulate(sc, engine="reference")
    got = simulate(sc)
    assert got.summary["engine_path"] == "fast; offloaded steps in closed form"
    assert ref.summary["engine_path"].endswith("offloaded steps event by event (requested)")
    assert_same_outputs(ref, got)


@pytest.mark.parametrize(
    ("offload", "reason"),
    [
        ({"weights": {"gpu": 0.5, "cpu": 0.5}, "activations": {"gpu": 0.5, "cpu": 0.5}}, "activations off the GPU"),
        ({"weights": {"gpu": 0.5, "cpu": 0.5}, "cpu_attention": True, "kv_cache": {"gpu": 0.5, "cpu": 0.5}, "pinned": False},
         "pageable copies staged by the host thread that runs CPU attention"),
    ],
)
def test_fallbacks_say_why(offload: dict, reason: str):
    data = _sc(offload, "gcp-t4-vm", 4, 64, 4, {"policy": "static"})
    ref, got = _pair(data)
    assert got.summary["engine_path"].endswith(f"offloaded steps event by event ({reason})")
    assert_same_outputs(ref, got)


def test_shipped_kv_spill_scenario_is_fast_closed_form_and_identical():
    from simkit.scenario import load_scenario

    sc = load_scenario("workloads/scenarios/cxl-long-context.yaml", {"workload.synthetic.num_requests": 6})
    ref = simulate(sc, engine="reference")
    got = simulate(sc)
    assert got.summary["engine_path"] == "fast; offloaded steps in closed form"
    assert_same_outputs(ref, got)


def test_several_gpu_batches_with_prefetch_in_closed_form_and_match():
    # FlexGen's zig-zag block schedule reading KV from DRAM: in closed form since issue 16's tenth round
    off = {"weights": {"gpu": 0.0, "cpu": 1.0}, "kv_cache": {"gpu": 0.0, "cpu": 1.0}, "gpu_batch_size": 2, "num_gpu_batches": 2}
    ref, got = _pair(_sc(off, "gcp-t4-vm", 4, 64, 4, {"policy": "static"}))
    assert got.summary["engine_path"] == "fast; offloaded steps in closed form"
    assert_same_outputs(ref, got)
    # serving with a GPU batch smaller than the batch: the larger steps run the block schedule in
    # closed form too, except where KV spills past a threshold (those steps run event by event)
    for kv, spill, path in (({"gpu": 0.5, "cpu": 0.5}, None, ""), ({"gpu": 1.0}, None, ""),
                            ({"gpu": 1.0}, {"after_tokens": 40, "tier": "cpu"},
                             ", event by event for steps of more sequences than gpu_batch_size (2)")):  # fmt: skip
        off = {"weights": {"gpu": 0.5, "cpu": 0.5}, "kv_cache": kv, "gpu_batch_size": 2}
        if spill is not None:
            off["kv_spill"] = spill
        ref, got = _pair(_sc(off, "gcp-t4-vm", 6, 64, 4, {"policy": "continuous", "max_num_seqs": 4}, rate=50.0))
        assert got.summary["engine_path"] == "fast; offloaded steps in closed form" + path
        assert_same_outputs(ref, got)


def test_wake_at_lands_exactly():
    import simpy

    # the last pair has no delay d with now + d == end: it is scheduled at the absolute time
    for now, end in [(0.1, 0.3), (1e6 + 0.1, 1e6 + 0.30000000001), (3.0, 3.0), (1e-300, 2.5e-300)]:
        env = simpy.Environment(initial_time=now)
        seen: list[float] = []

        def proc(env=env, end=end, seen=seen):  # type: ignore[no-untyped-def]
            yield wake_at(env, end)
            seen.append(env.now)

        env.process(proc())
        env.run()
        assert seen == [end]


_frac = st.sampled_from([0.0, 0.25, 0.5, 1.0])


@st.composite
def _plans(draw: st.DrawFn) -> dict:
    hardware = draw(st.sampled_from(["gcp-t4-vm", "h100-pcie-cxl-server"]))
    tiers = ["cpu", "disk"] if hardware == "gcp-t4-vm" else ["cpu", "cxl", "disk"]

    def share(gpu_min: float) -> dict:
        g = draw(st.sampled_from([x for x in (0.0, 0.5, 1.0) if x >= gpu_min]))
        rest = 1.0 - g
        a = draw(st.sampled_from(tiers))
        b = draw(st.sampled_from(tiers))
        split = draw(st.sampled_from([0.0, 0.5, 1.0]))
        out = {"gpu": g}
        out[a] = out.get(a, 0.0) + rest * split
        out[b] = out.get(b, 0.0) + rest * (1.0 - split)
        return out

    spill = draw(st.booleans())
    off: dict = {
        "weights": share(0.0),
        "kv_cache": {"gpu": 1.0} if spill else share(0.0),
        "overlap": draw(st.booleans()),
        "decode_overlap": draw(st.booleans()),
        "pinned": draw(st.booleans()),
        "cpu_attention": draw(st.booleans()),
        "compress_weights": draw(st.booleans()),
        "compress_kv": draw(st.booleans()),
        "disk_relay": draw(st.sampled_from(["native", "fp16"])),
    }
    if spill:
        off["kv_spill"] = {"after_tokens": draw(st.sampled_from([8, 64, 200])), "tier": draw(st.sampled_from(tiers))}
    if draw(st.booleans()):
        off["resident_layers"] = draw(st.integers(0, 8))
    if draw(st.booleans()):
        off["gpu_batch_size"] = draw(st.integers(1, 4))
        off["num_gpu_batches"] = draw(st.integers(1, 2))
    static = draw(st.booleans())
    n = draw(st.integers(1, 6))
    inp = draw(st.sampled_from([16, 100, 300]))
    out = draw(st.integers(1, 6))
    if static:
        return _sc(off, hardware, n, inp, out, {"policy": "static"})
    batching = {"policy": draw(st.sampled_from(["continuous", "chunked_prefill"])), "max_num_seqs": draw(st.integers(1, 4))}
    return _sc(off, hardware, n, inp, out, batching, rate=draw(st.sampled_from([0.5, 5.0, 50.0])))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(_plans())
def test_closed_form_equals_event_path(data: dict):
    try:
        ref, got = _pair(data)
    except SimkitError:
        return  # a plan that does not fit, or is refused: both paths refuse it alike
    assert_same_outputs(ref, got)


@pytest.mark.parametrize(("cpu_attention", "closed"), [(False, True), (True, False)])
def test_several_replicas(cpu_attention: bool, closed: bool):
    # each replica has its own links; CPU attention shares the host CPU, so it runs event by event
    off = {"weights": {"gpu": 0.5, "cpu": 0.5}, "kv_cache": {"gpu": 0.5, "cpu": 0.5}, "cpu_attention": cpu_attention}
    data = _sc(off, "dgx-h100", 12, 200, 5, {"policy": "continuous", "max_num_seqs": 4}, rate=20.0)
    data["model"] = "llama-2-13b"
    data["plan"]["parallel"] = {"replicas": 3}
    data["plan"]["routing"] = "round_robin"  # identical replicas: steps that end at the same instants
    ref, got = _pair(data)
    want = "fast; offloaded steps in closed form" if closed else "fast; offloaded steps event by event (replicas share the host CPU)"
    assert got.summary["engine_path"] == want
    assert_same_outputs(ref, got)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.0, 1e-3, 0.25, 1.0, 3.0]), st.sampled_from([1e3, 5e8, 1e9, 2.5e9, 7e9])),
        min_size=1, max_size=8,
    ),
    st.sampled_from([0.0, 5e-6]),
)
@example([(0.001, 1e3), (0.25, 1e3), (0.25, 1e3), (0.25, 2.5e9), (0.25, 1e3)], 0.0)  # a completion meets a join
def test_lane_replays_link_fair_sharing_bit_for_bit(joins: list[tuple[float, float]], latency: float):
    """Flows joining one link direction at given offsets: the lane's completion times and the
    link's busy time, busy periods and bytes equal the SimPy Link's exactly, overlaps included."""
    import simpy

    from simkit.engine.offload_fast import _Lane
    from simkit.engine.resources import Link

    starts = np.cumsum([gap for gap, _ in joins]).tolist()
    env = simpy.Environment()
    link = Link(env, "h2d", 10e9, latency)
    link.busy_log = []
    done: list[float] = [math.nan] * len(joins)

    def flow(k: int, at: float, nbytes: float):  # type: ignore[no-untyped-def]
        yield env.timeout(at)
        yield link.transfer(nbytes)
        done[k] = env.now

    for k, (at, (_, nbytes)) in enumerate(zip(starts, joins, strict=True)):
        env.process(flow(k, at, nbytes))
    env.run()

    twin = Link(simpy.Environment(), "h2d", 10e9, latency)
    twin.busy_log = []
    lane = _Lane(twin)
    flows = [lane.add((at + latency if latency else at), nbytes) for at, (_, nbytes) in zip(starts, joins, strict=True)]
    lane.drain()
    joined = {at + latency if latency else at for at in starts}
    if not joined & ({f.done for f in flows} | set(done)):
        assert [f.done for f in flows] == done
        assert (twin.busy_time, twin.bytes_moved, twin.busy_log) == (link.busy_time, link.bytes_moved, link.busy_log)
        return
    # a flow completes at the very instant another joins: the lane completes it first, the
    # event path in the order its events were scheduled (here the join first); the times then
    # differ by the rounding of the completing flow's remainder (module docstring: the bound)
    assert [f.done for f in flows] == pytest.approx(done, rel=1e-12, abs=0.0)
    assert twin.busy_time == pytest.approx(link.busy_time, rel=1e-12) and twin.bytes_moved == link.bytes_moved
    assert np.allclose(twin.busy_log, link.busy_log, rtol=1e-12, atol=0.0)
