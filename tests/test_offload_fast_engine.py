"""The fast engine on offloaded plans (engine/fast_offload.py) against the reference engine with
the offloaded steps event by event (the oracle): per-request times, iteration rows, link busy
periods and the whole summary equal bit for bit, with preemption, several replicas, chunked
prefill, and the plans that fall back to the reference engine saying why."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.errors import SimkitError
from simkit.scenario import scenario_from_dict
from simkit.simulate import simulate
from tests.conftest import assert_same_outputs, make_scenario

_FAST = "fast; offloaded steps in closed form"


def _pair(data: dict) -> tuple:
    """(reference engine with the steps event by event, default path) of the same scenario."""
    return simulate(scenario_from_dict(data), engine="reference"), simulate(scenario_from_dict(data))


def _sc(offload: dict, batching: dict, n: int, rate: float, inp: tuple[int, int], out: tuple[int, int],
        replicas: int = 1, num_blocks: int | None = None, model: str = "phi-2", hardware: str = "gcp-t4-vm") -> dict:
    workload = {"synthetic": {
        "num_requests": n, "arrival": {"process": "poisson", "rate": rate},
        "lengths": {"input": {"dist": "uniform", "low": inp[0], "high": inp[1]},
                    "output": {"dist": "uniform", "low": out[0], "high": out[1]}},
    }}
    data = make_scenario(hardware=hardware if replicas == 1 else {"preset": hardware, "num_gpus": replicas}, model=model,
                         workload=workload)
    data["plan"].update({"batching": batching, "offload": offload, "parallel": {"replicas": replicas}})
    if replicas > 1:
        data["plan"]["routing"] = "least_outstanding"
    if num_blocks is not None:
        data["plan"]["kv_cache"] = {"num_blocks": num_blocks}
    return data


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
def test_preempting_offloaded_serving_identical(policy: str):
    """Few KV blocks: requests are preempted (recompute) and prefilled again."""
    batching = {"policy": policy, "max_num_seqs": 8} | ({"chunk_size": 128} if policy == "chunked_prefill" else {})
    off = {"weights": {"gpu": 0.3, "cpu": 0.7}, "kv_cache": {"gpu": 1.0}}
    ref, got = _pair(_sc(off, batching, 30, 5.0, (100, 400), (20, 120), num_blocks=60))
    assert got.summary["engine_path"] == _FAST
    assert int(got.table.preemptions.sum()) > 0
    assert_same_outputs(ref, got)


def test_several_replicas_kv_and_weights_streamed_identical():
    off = {"weights": {"gpu": 0.0, "cpu": 0.5, "disk": 0.5}, "kv_cache": {"gpu": 0.5, "cpu": 0.5}, "gpu_batch_size": 8}
    ref, got = _pair(_sc(off, {"policy": "continuous", "max_num_seqs": 8}, 24, 4.0, (50, 300), (5, 40), replicas=2))
    assert got.summary["engine_path"].startswith(_FAST)
    assert_same_outputs(ref, got)


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({"gpu_batch_size": 2, "kv_cache": {"gpu": 0.5, "cpu": 0.5}}, "fast; offloaded steps in closed form"),
        ({"gpu_batch_size": 2}, "fast; offloaded steps in closed form"),
        ({"activations": {"gpu": 0.5, "cpu": 0.5}}, "fast; offloaded steps event by event (activations off the GPU)"),
    ],
)
def test_event_path_plans_on_the_fast_engine_say_why(extra: dict, path: str):
    off = {"weights": {"gpu": 0.5, "cpu": 0.5}} | extra
    ref, got = _pair(_sc(off, {"policy": "continuous", "max_num_seqs": 4}, 8, 20.0, (32, 128), (2, 8)))
    assert got.summary["engine_path"].startswith(path)
    assert_same_outputs(ref, got)


_frac = st.sampled_from([0.0, 0.5, 1.0])


@st.composite
def _plans(draw: st.DrawFn) -> dict:
    hardware = draw(st.sampled_from(["gcp-t4-vm", "h100-pcie-cxl-server"]))
    tiers = ["cpu", "disk"] if hardware == "gcp-t4-vm" else ["cpu", "cxl", "disk"]

    def share() -> dict:
        g = draw(_frac)
        out = {"gpu": g}
        t = draw(st.sampled_from(tiers))
        out[t] = out.get(t, 0.0) + 1.0 - g
        return out

    off: dict = {
        "weights": share(), "kv_cache": share(), "overlap": draw(st.booleans()), "decode_overlap": draw(st.booleans()),
        "pinned": draw(st.booleans()), "cpu_attention": draw(st.booleans()), "compress_weights": draw(st.booleans()),
        "compress_kv": draw(st.booleans()),
    }
    seqs = draw(st.integers(1, 8))
    if draw(st.booleans()):
        off["gpu_batch_size"] = seqs + draw(st.integers(0, 2))
    policy = draw(st.sampled_from(["continuous", "chunked_prefill"]))
    batching: dict = {"policy": policy, "max_num_seqs": seqs}
    if policy == "chunked_prefill":
        batching["chunk_size"] = draw(st.sampled_from([32, 128, 512]))
    lo = draw(st.integers(8, 300))
    olo = draw(st.integers(1, 30))
    return _sc(off, batching, draw(st.integers(2, 16)), draw(st.sampled_from([0.5, 5.0, 50.0])),
               (lo, lo + draw(st.integers(0, 300))), (olo, olo + draw(st.integers(0, 30))),
               replicas=draw(st.integers(1, 2)), num_blocks=draw(st.sampled_from([None, None, 40])))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(_plans())
def test_random_offloaded_serving_identical(data: dict):
    try:
        ref, got = _pair(data)
    except SimkitError:
        return  # a plan that does not fit, or is refused: both paths refuse it alike
    path = got.summary["engine_path"]
    if "offloaded steps in closed form" in path:
        assert path.startswith(_FAST), path
    elif "offloaded steps" in path:
        assert path.startswith("fast; offloaded steps event by event ("), path
    else:  # everything on the GPU: not an offloaded plan
        assert "offload" not in path, path
    assert_same_outputs(ref, got)
