"""Pipeline stages in closed form (engine/pipeline_fast.py) against the event path (the oracle):
per-request times, iteration rows, link busy periods and the whole summary equal bit for bit on
random pipelined plans, including the runs where a micro-batch overtakes another (repeated
event by event). Continuous and chunked batching with recompute preemption run the fast
engine's running totals (``PipelineFastEngine``), as static batching does since the eighth
round (tests/test_fast_cover.py); the reference engine's plans its arrays (``PipelineEngine``)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.scenario import scenario_from_dict
from simkit.simulate import simulate
from tests.conftest import assert_same_outputs, make_scenario

_PATH = "fast; pipeline stages"
_REPEATED = "reference (pipeline parallelism); pipeline stages event by event (replica 0 at t="


def _pair(data: dict) -> tuple:
    """(event path, closed form) results of the same scenario."""
    ref = simulate(scenario_from_dict(data), engine="reference")
    got = simulate(scenario_from_dict(data))
    return ref, got


def _sc(
    hardware: str | dict, pp: int, tp: int, split: list[int] | None, batching: dict, arrival: dict, n: int,
    inp: tuple[int, int], out: tuple[int, int], replicas: int = 1, num_blocks: int | None = None,
) -> dict:
    workload = {"synthetic": {
        "num_requests": n, "arrival": arrival,
        "lengths": {"input": {"dist": "uniform", "low": inp[0], "high": inp[1]},
                    "output": {"dist": "uniform", "low": out[0], "high": out[1]}},
    }}
    data = make_scenario(hardware=hardware, workload=workload)
    par: dict = {"tp": tp, "pp": pp, "replicas": replicas}
    if split is not None:
        par["layer_split"] = split
    data["plan"].update({"batching": batching, "parallel": par})
    if replicas > 1:
        data["plan"]["routing"] = "least_outstanding"
    if num_blocks is not None:
        data["plan"]["kv_cache"] = {"num_blocks": num_blocks}
    return data


def test_pp4_is_closed_form_and_identical():
    data = _sc("dgx-h100", 4, 2, None, {"policy": "continuous", "max_num_seqs": 16, "max_num_batched_tokens": 1024},
               {"process": "poisson", "rate": 40.0}, 60, (50, 600), (5, 60))
    ref, got = _pair(data)
    assert got.summary["engine_path"] == f"{_PATH} in closed form"
    assert ref.summary["engine_path"] == "reference (requested); pipeline stages event by event (requested)"
    assert_same_outputs(ref, got)


def test_overtaking_micro_batch_reruns_event_by_event():
    """A 1-layer first stage and a slow PCIe 3 x4 hop: two prompts' prefill leaves stage 0, a
    third prompt's (its half) follows it there and sends its activations while the first ones
    are still on the link, so the run repeats event by event, and says so."""
    hw = {"preset": "rtx4090-workstation", "num_gpus": 2, "links": {"host_to_gpu": "pcie-gen3-x4", "nvme": "pcie-gen4-x4"}}
    data = _sc(hw, 2, 1, [1, 31], {"policy": "continuous", "max_num_seqs": 8, "max_num_batched_tokens": 4096},
               {"process": "all_at_once"}, 3, (2000, 2000), (10, 10))
    ref, got = _pair(data)
    path = got.summary["engine_path"]
    assert path.startswith(_REPEATED), path
    assert path.endswith("the run was repeated event by event)")
    assert_same_outputs(ref, got)


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
def test_preempting_pipelines_identical(policy: str):
    """Few KV blocks shared by the replica's virtual engines: requests are preempted (recompute)
    while other micro-batches are in flight."""
    batching = {"policy": policy, "max_num_seqs": 32} | ({"chunk_size": 256} if policy == "chunked_prefill" else {})
    data = _sc("dgx-h100", 4, 1, [5, 9, 9, 9], batching, {"process": "poisson", "rate": 100.0}, 60, (200, 800), (50, 200),
               num_blocks=150)
    ref, got = _pair(data)
    assert got.summary["engine_path"] == f"{_PATH} in closed form"
    assert int(got.table.preemptions.sum()) > 0
    assert_same_outputs(ref, got)


@pytest.mark.parametrize("kv_link", ["nvlink", "network"])
def test_disaggregated_pipelines_identical(kv_link: str):
    """Prefill and decode replicas, each PP 2 x TP 2 (uneven), the KV over NVLink or the network."""
    data = _sc("dgx-h100", 2, 2, [12, 20], {"policy": "disaggregated", "prefill_replicas": 1, "kv_transfer_link": kv_link},
               {"process": "poisson", "rate": 30.0}, 40, (100, 1500), (5, 50), replicas=2)
    ref, got = _pair(data)
    assert got.summary["engine_path"].endswith("; pipeline stages in closed form")
    assert_same_outputs(ref, got)


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"prefix_cache": {"enabled": True}}, "prefix-cache fetches overlap the stages"),
        ({"kv_cache": {"preemption": "swap"}}, "swap preemption waits for KV transfers"),
    ],
)
def test_fallbacks_say_why(over: dict, reason: str):
    """The reference engine's pipelined replicas (here for layer-by-layer execution) run the
    stages event by event with a prefix cache or swaps (the fast engine's run them in closed
    form: tests/test_fast_cover.py)."""
    data = _sc("dgx-h100", 2, 1, None, {"policy": "continuous", "max_num_seqs": 8}, {"process": "all_at_once"}, 6,
               (32, 64), (2, 6))
    data["plan"].update(over)
    data["plan"]["execution"] = {"mode": "layer_by_layer"}
    ref, got = _pair(data)
    assert got.summary["engine_path"] == f"reference (layer-by-layer execution); pipeline stages event by event ({reason})"
    assert_same_outputs(ref, got)


def test_trace_output_falls_back():
    data = _sc("dgx-h100", 2, 1, None, {"policy": "continuous", "max_num_seqs": 8}, {"process": "all_at_once"}, 4,
               (32, 64), (2, 6))
    res = simulate(scenario_from_dict(data), trace=True)
    assert res.summary["engine_path"].endswith("pipeline stages event by event (Chrome trace output)")


@st.composite
def _plans(draw: st.DrawFn) -> dict:
    hw_kind = draw(st.sampled_from(["dgx-h100", "two-nodes", "pcie", "slow-pcie"]))
    most = 16 if hw_kind == "two-nodes" else 8
    pp = draw(st.integers(2, 8))
    tp = draw(st.sampled_from([t for t in (1, 2, 4) if t * pp <= most]))
    replicas = draw(st.integers(1, max(1, min(2, most // (tp * pp)))))
    hardware: str | dict = {
        "dgx-h100": "dgx-h100",
        "two-nodes": {"preset": "dgx-h100", "num_nodes": 2},
        "pcie": {"preset": "rtx4090-workstation", "num_gpus": tp * pp * replicas},
        "slow-pcie": {"preset": "rtx4090-workstation", "num_gpus": tp * pp * replicas,
                      "links": {"host_to_gpu": "pcie-gen3-x4", "nvme": "pcie-gen4-x4"}},
    }[hw_kind]
    split = None
    if draw(st.booleans()):
        cuts = sorted(draw(st.lists(st.integers(1, 31), min_size=pp - 1, max_size=pp - 1, unique=True)))
        bounds = [0, *cuts, 32]
        split = [b - a for a, b in zip(bounds, bounds[1:])]
    policy = draw(st.sampled_from(["continuous", "chunked_prefill", "static"]))
    seqs = draw(st.integers(2, 24))
    if policy == "continuous":
        batching = {"policy": policy, "max_num_seqs": seqs, "max_num_batched_tokens": draw(st.sampled_from([512, 2048, 8192]))}
    elif policy == "chunked_prefill":
        batching = {"policy": policy, "max_num_seqs": seqs, "chunk_size": draw(st.sampled_from([64, 256, 1024]))}
    else:
        batching = {"policy": policy, "batch_size": draw(st.integers(1, 8))}
    process = draw(st.sampled_from(["poisson", "gamma", "all_at_once"]))
    rate = draw(st.sampled_from([2.0, 20.0, 200.0]))
    arrival: dict = {"process": process}
    if process != "all_at_once":
        arrival["rate"] = rate
    if process == "gamma":
        arrival["cv"] = 4.0
    lo = draw(st.integers(1, 2000))
    inp = (lo, lo + draw(st.integers(0, 2000)))
    olo = draw(st.integers(1, 40))
    out = (olo, olo + draw(st.integers(0, 40)))
    blocks = draw(st.sampled_from([None, None, 400]))
    return _sc(hardware, pp, tp, split, batching, arrival, draw(st.integers(3, 24)), inp, out, replicas, blocks)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_plans())
def test_random_pipelined_plans_identical(data: dict):
    ref, got = _pair(data)
    path = got.summary["engine_path"]
    # a conflict names the replica it happened on: any of the plan's replicas
    replicas = data["plan"]["parallel"].get("replicas", 1)
    repeated = [_REPEATED.replace("replica 0 ", f"replica {r} ") for r in range(replicas)]
    assert path == f"{_PATH} in closed form" or path.startswith(tuple(repeated)), path
    assert_same_outputs(ref, got)
