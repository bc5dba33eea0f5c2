"""FlexGen's zig-zag block schedule (several GPU batches per step with prefetch) in closed form
where it reads KV from another tier, writes KV or activations through a staging buffer (disk),
or keeps activations off the GPU (issue 16's tenth round: the plans ``simkit offload-plan``
ranks first), against the reference engine (the oracle): every per-request column, iteration
row, link busy period and summary figure the same bits (``conftest.assert_same_outputs``), and
``engine_path`` names what ran."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.scenario import scenario_from_dict
from simkit.simulate import simulate
from tests.conftest import assert_same_outputs, uniform_workload
from tests.test_fast_cover2 import _HARDWARE, _same_fast, _scenario

_EXAMPLES = int(os.environ.get("SIMKIT_HYPOTHESIS_EXAMPLES", "25"))
_CLOSED = "fast; offloaded steps in closed form"
_ONE_BATCH = ", event by event for steps of one GPU batch (activations off the GPU)"


@st.composite
def _block(draw: st.DrawFn) -> dict:
    """A block-schedule plan.offload of phi-2: KV (and sometimes activations) mostly off the GPU."""
    hardware = draw(st.sampled_from(sorted(_HARDWARE)))
    tiers = _HARDWARE[hardware]

    def share(gpu: list[float]) -> dict:
        g = draw(st.sampled_from(gpu))
        t = draw(st.sampled_from(tiers))
        return {"gpu": g, t: 1.0 - g} if g < 1.0 else {"gpu": 1.0}

    off: dict = {
        "hardware": hardware,
        "weights": share([0.0, 0.5, 1.0]),
        "kv_cache": share([0.0, 0.0, 0.5]),
        "overlap": True,
        "decode_overlap": draw(st.booleans()),
        "pinned": draw(st.booleans()),
        "cpu_attention": draw(st.booleans()),
        "gpu_batch_size": draw(st.integers(1, 4)),
        "num_gpu_batches": draw(st.integers(2, 4)),
    }
    if draw(st.booleans()):
        off["activations"] = share([0.0, 0.5])
    return off


def _expected(off: dict) -> str:
    """The engine path of one replica running ``off``."""
    act = any(f > 0 for t, f in (off.get("activations") or {}).items() if t != "gpu")
    gated = not off["pinned"] or not off["decode_overlap"]
    if act and gated:
        return "fast; offloaded steps event by event (activations off the GPU)"
    if off["cpu_attention"] and not off["pinned"]:
        return "fast; offloaded steps event by event (pageable copies staged by the host thread that runs CPU attention)"
    return _CLOSED + (_ONE_BATCH if act else "")


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    off=_block(),
    policy=st.sampled_from(["static", "static", "continuous", "chunked_prefill"]),
    blocks=st.integers(1, 2),
    inp=st.integers(8, 300),
    out=st.integers(1, 24),
    rate=st.sampled_from([0.5, 50.0]),
)
def test_block_schedule_reading_kv_and_activations_equals_reference(off, policy, blocks, inp, out, rate):
    """Static blocks of ``gpu_batch_size`` x ``num_gpu_batches`` prompts and serving steps that
    split into several GPU batches (and some that do not: those keep their events where the
    activations are off the GPU)."""
    batch = off["gpu_batch_size"] * off["num_gpu_batches"]
    batching: dict = {"policy": policy}
    if policy != "static":
        batching["max_num_seqs"] = batch
    if policy == "chunked_prefill":
        batching["chunk_size"] = 128
    workload = uniform_workload(blocks * batch, rate, (inp, inp + 64), (out, out + 8))
    s = _same_fast(_scenario(off, workload, batching, 1))
    if s:
        assert s["engine_path"] == _expected(off)


def test_offload_plans_best_plan_shape_equals_reference():
    """The shape ``simkit offload-plan`` ranks first for OPT-175B on a T4 (weights over GPU, DRAM
    and disk; KV and activations on disk, staged through DRAM both ways; CPU attention; 4 GPU
    batches), on phi-2 so that the reference run stays short: in closed form, the same bits."""
    off = {"hardware": "gcp-t4-vm", "weights": {"gpu": 0.01, "cpu": 0.63, "disk": 0.36},
           "kv_cache": {"gpu": 0.0, "disk": 1.0}, "activations": {"gpu": 0.0, "disk": 1.0},
           "cpu_attention": True, "gpu_batch_size": 8, "num_gpu_batches": 4}  # fmt: skip
    s = _same_fast(_scenario(off, uniform_workload(32, 50.0, (256, 300), (8, 12)), {"policy": "static"}, 1))
    assert s["engine_path"] == _CLOSED + _ONE_BATCH


def test_a6000_search_winner_equals_reference():
    """docs/examples.md's `simkit search a6000-70b-plan.yaml` winner's shape (KV and activations
    in DRAM, attended on the GPU, 4 GPU batches), with fewer prompts and tokens."""
    from simkit.scenario import load_scenario_data

    data = load_scenario_data("workloads/scenarios/quickstart.yaml")
    data.update({"hardware": "lambda-a6000-workstation", "model": "phi-2",
                 "workload": {"batch": {"num_prompts": 16, "input_tokens": 256, "output_tokens": 6}}})  # fmt: skip
    data["plan"] = {"batching": {"policy": "static", "batch_size": 16},
                    "offload": {"weights": {"gpu": 0.33, "cpu": 0.67}, "kv_cache": {"gpu": 0.0, "cpu": 1.0},
                                "activations": {"gpu": 0.0, "cpu": 1.0}, "gpu_batch_size": 4, "num_gpu_batches": 4}}  # fmt: skip
    ref = simulate(scenario_from_dict(data), engine="reference")
    got = simulate(scenario_from_dict(data))
    assert got.summary["engine_path"] == _CLOSED + _ONE_BATCH
    assert_same_outputs(ref, got)
