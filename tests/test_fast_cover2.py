"""The fast path on the offloaded plans that ran on the reference engine until issue 16's ninth
round, against the reference engine (the oracle): offloaded steps of several GPU batches
(FlexGen-style block schedules, with and without prefetch, and serving steps of more sequences
than ``gpu_batch_size``), offloaded steps that need their events for another reason (activations
off the GPU, a host CPU shared by replicas, pageable copies with CPU attention), KV spill, and
sliding-window models on offloaded and on pipelined replicas. Random offload plans of a T4, an A6000
workstation and an H100 with CXL (weights, KV and activations split between the GPU and DRAM,
disk or CXL), GPU batch sizes and counts, prefetch, pinned or pageable copies, CPU attention,
compression, static, continuous and chunked batching, one or two replicas, random lengths and
arrival rates. Every per-request column, iteration row, link busy period and summary figure must
be the same bits (``conftest.assert_same_outputs``), and the run must say it ran on the fast
path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.errors import SimkitError
from simkit.scenario import scenario_from_dict
from simkit.simulate import simulate
from tests.conftest import assert_same_outputs, make_scenario, uniform_workload
from tests.test_prefix_fast import _sw_model

_EXAMPLES = int(os.environ.get("SIMKIT_HYPOTHESIS_EXAMPLES", "25"))
_REPEATED = "reference (pipeline parallelism); pipeline stages event by event (replica "
_HARDWARE = {
    "gcp-t4-vm": ["cpu", "disk"],
    "lambda-a6000-workstation": ["cpu", "disk"],
    "h100-pcie-cxl-server": ["cpu", "cxl", "disk"],
}
_frac = st.sampled_from([0.0, 0.5, 1.0])


@st.composite
def _flexgen(draw: st.DrawFn) -> dict:
    """A random FlexGen-style plan.offload of phi-2: weights, KV and (sometimes) activations
    split between the GPU and a lower tier, ``num_gpu_batches`` GPU batches of
    ``gpu_batch_size`` each, with or without prefetch, CPU attention, compression."""
    hardware = draw(st.sampled_from(sorted(_HARDWARE)))
    tiers = _HARDWARE[hardware]

    def share() -> dict:
        g = draw(_frac)
        out = {"gpu": g}
        t = draw(st.sampled_from(tiers))
        out[t] = out.get(t, 0.0) + 1.0 - g
        return out

    off: dict = {
        "hardware": hardware,
        "weights": share(),
        "kv_cache": share(),
        "overlap": draw(st.booleans()),
        "decode_overlap": draw(st.booleans()),
        "pinned": draw(st.booleans()),
        "cpu_attention": draw(st.booleans()),
        "compress_weights": draw(st.booleans()),
        "compress_kv": draw(st.booleans()),
        "gpu_batch_size": draw(st.integers(1, 4)),
        "num_gpu_batches": draw(st.integers(1, 4)),
    }
    if draw(st.integers(0, 3)) == 0:
        off["activations"] = {"gpu": 0.5, draw(st.sampled_from(tiers)): 0.5}
    return off


def _scenario(off: dict, workload: dict, batching: dict, replicas: int, model: str = "phi-2", seed: int = 0) -> dict:
    off = dict(off)
    hardware = off.pop("hardware")
    data = make_scenario(hardware=hardware if replicas == 1 else {"preset": hardware, "num_gpus": replicas},
                         model=model, workload=workload, seed=seed)  # fmt: skip
    # a pool of 6,400 tokens per replica: room for the batches drawn, and KV that fits a lower tier
    data["plan"].update({"batching": batching, "offload": off, "parallel": {"replicas": replicas},
                         "kv_cache": {"num_blocks": 400}})  # fmt: skip
    if replicas > 1:
        data["plan"]["routing"] = "least_outstanding"
    return data


def _same_fast(data: dict) -> dict:
    """Run ``data`` on the reference engine and on the default path: the default is the fast
    engine and every output is the same bits (a plan that does not fit: both refuse it alike).
    Returns the fast path's summary (empty when refused)."""
    try:
        ref = simulate(scenario_from_dict(data), engine="reference")
    except SimkitError:
        with pytest.raises(SimkitError):
            simulate(scenario_from_dict(data))
        return {}
    got = simulate(scenario_from_dict(data))
    assert got.summary["engine_path"].startswith("fast"), got.summary["engine_path"]
    assert_same_outputs(ref, got)
    return got.summary


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    off=_flexgen(),
    batches=st.integers(1, 3),
    inp=st.integers(8, 300),
    out=st.integers(1, 24),
    replicas=st.integers(1, 2),
    rate=st.sampled_from([0.5, 50.0]),
)
def test_flexgen_block_schedules_equal_reference(off, batches, inp, out, replicas, rate):
    """Static batches of ``gpu_batch_size`` x ``num_gpu_batches`` prompts (FlexGen's block, the
    default batch of an offloaded static plan), several blocks in a row."""
    n = batches * off["gpu_batch_size"] * off["num_gpu_batches"] * replicas
    workload = uniform_workload(n, rate, (inp, inp + 64), (out, out + 8))
    _same_fast(_scenario(off, workload, {"policy": "static"}, replicas))


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    off=_flexgen(),
    policy=st.sampled_from(["continuous", "chunked_prefill", "static"]),
    seqs=st.integers(1, 12),
    n=st.integers(2, 24),
    rate=st.sampled_from([0.5, 5.0, 50.0]),
    inp=st.tuples(st.integers(8, 300), st.integers(0, 300)),
    out=st.tuples(st.integers(1, 30), st.integers(0, 30)),
    replicas=st.integers(1, 2),
    blocks=st.sampled_from([None, None, 40]),
)
def test_serving_steps_of_several_gpu_batches_equal_reference(off, policy, seqs, n, rate, inp, out, replicas, blocks):
    """Serving with steps of up to ``max_num_seqs`` sequences over GPU batches of any size:
    steps of one GPU batch on stand-in contexts, larger ones on the real contexts in the
    reference's order; memory pressure preempts (recompute)."""
    batching: dict = {"policy": policy, "max_num_seqs": seqs}
    if policy == "chunked_prefill":
        batching["chunk_size"] = 128
    elif policy == "static":
        batching = {"policy": "static", "batch_size": seqs}
    data = _scenario(off, uniform_workload(n, rate, (inp[0], inp[0] + inp[1]), (out[0], out[0] + out[1])), batching,
                     replicas)  # fmt: skip
    if blocks is not None:
        data["plan"]["kv_cache"] = {"num_blocks": blocks}
    _same_fast(data)


@settings(max_examples=_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(
    off=_flexgen(),
    window=st.sampled_from([64, 200, 1024]),
    policy=st.sampled_from(["continuous", "chunked_prefill", "static"]),
    seqs=st.integers(1, 8),
    n=st.integers(2, 16),
    rate=st.sampled_from([0.5, 50.0]),
    inp=st.integers(8, 1500),
    out=st.integers(1, 300),
)
def test_sliding_window_on_offloaded_replicas_equals_reference(tmp_path, off, window, policy, seqs, n, rate, inp, out):
    """A sliding-window model (Llama-3-8B's shape with a window) on an offloaded replica: each
    sequence attends at most the window (the real contexts), its blocks capped at the window's."""
    batching: dict = {"policy": policy, "max_num_seqs": seqs}
    if policy == "chunked_prefill":
        batching["chunk_size"] = 256
    elif policy == "static":
        batching = {"policy": "static", "batch_size": seqs}
    off = off | {"hardware": "h100-pcie-cxl-server"}  # a GPU that holds part of an 8B model
    data = _scenario(off, uniform_workload(n, rate, (inp, inp + 400), (out, out + 100)), batching, 1,
                     model=_sw_model(tmp_path, window))  # fmt: skip
    _same_fast(data)


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    off=_flexgen(),
    after=st.sampled_from([8, 64, 200, 1000]),
    policy=st.sampled_from(["continuous", "chunked_prefill", "static"]),
    seqs=st.integers(1, 8),
    n=st.integers(2, 20),
    rate=st.sampled_from([0.5, 5.0, 50.0]),
    inp=st.integers(8, 1500),
    out=st.integers(1, 60),
    replicas=st.integers(1, 2),
    blocks=st.sampled_from([None, None, 60]),
)
def test_kv_spill_equals_reference(off, after, policy, seqs, n, rate, inp, out, replicas, blocks):
    """Each sequence's KV past ``after`` tokens spills to a lower tier (reserved whole at
    admission, read back or attended on the CPU every step, written there): the fast engine's
    blocks capped at the threshold's, the reference's admission, the real contexts."""
    batching: dict = {"policy": policy, "max_num_seqs": seqs}
    if policy == "chunked_prefill":
        batching["chunk_size"] = 256
    elif policy == "static":
        batching = {"policy": "static", "batch_size": seqs}
    tier = [t for t in _HARDWARE[off["hardware"]] if t in off["weights"] or t in off["kv_cache"]] or ["cpu"]
    off = {k: v for k, v in off.items() if k != "activations"} | {
        "kv_cache": {"gpu": 1.0}, "kv_spill": {"after_tokens": after, "tier": tier[0]}}  # fmt: skip
    data = _scenario(off, uniform_workload(n, rate, (inp, inp + 600), (out, out + 60)), batching, replicas)
    if blocks is not None:
        data["plan"]["kv_cache"] = {"num_blocks": blocks}
    _same_fast(data)


@settings(max_examples=_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(
    window=st.sampled_from([64, 200, 1024]),
    pp=st.integers(2, 4),
    policy=st.sampled_from(["continuous", "chunked_prefill", "static", "disaggregated"]),
    seqs=st.integers(1, 16),
    n=st.integers(2, 30),
    rate=st.sampled_from([1.0, 20.0, 200.0]),
    inp=st.integers(8, 1500),
    out=st.integers(1, 300),
    blocks=st.sampled_from([None, 200]),
)
def test_sliding_window_on_pipelined_replicas_equals_reference(tmp_path, window, pp, policy, seqs, n, rate, inp, out,
                                                               blocks):  # fmt: skip
    """A sliding-window model on PP 2-4 replicas (stages in closed form, each priced on the real
    contexts), under memory pressure, with disaggregated pools of such replicas too."""
    batching: dict = {"policy": policy, "max_num_seqs": seqs, "max_num_batched_tokens": 4096}
    if policy == "chunked_prefill":
        batching["chunk_size"] = 256
    elif policy == "static":
        batching = {"policy": "static", "batch_size": seqs}
    elif policy == "disaggregated":
        batching["prefill_replicas"] = 1
    replicas = 2 if policy == "disaggregated" else 1
    workload = uniform_workload(n, rate, (inp, inp + 600), (out, out + 100))
    data = make_scenario(hardware="dgx-h100", model=_sw_model(tmp_path, window), workload=workload)
    data["plan"].update({"batching": batching, "parallel": {"pp": pp, "replicas": replicas}})
    if blocks is not None:
        data["plan"]["kv_cache"] = {"num_blocks": blocks}
    ref = simulate(scenario_from_dict(data), engine="reference")
    got = simulate(scenario_from_dict(data))
    path = got.summary["engine_path"]
    assert path == "fast; pipeline stages in closed form" or path.startswith(_REPEATED), path
    assert_same_outputs(ref, got)


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"num_gpu_batches": 4, "gpu_batch_size": 2, "kv_cache": {"gpu": 1.0}, "kv_spill": {"after_tokens": 40, "tier": "cpu"}},
         "several GPU batches per layer reading spilled KV: FlexGen's zig-zag block schedule"),
        ({"activations": {"gpu": 0.0, "cpu": 1.0}}, "activations off the GPU"),
        ({"num_gpu_batches": 2, "gpu_batch_size": 4, "activations": {"gpu": 0.0, "cpu": 1.0}, "pinned": False},
         "activations off the GPU"),
        ({"pinned": False, "cpu_attention": True}, "pageable copies staged by the host thread that runs CPU attention"),
    ],
)
def test_event_path_reasons_run_on_the_fast_engine(extra: dict, why: str):
    """The reasons a step needs its events, each on the fast engine, and saying so."""
    off = {"hardware": "gcp-t4-vm", "weights": {"gpu": 0.0, "cpu": 1.0}, "kv_cache": {"gpu": 0.0, "cpu": 1.0}} | extra
    s = _same_fast(_scenario(off, uniform_workload(16, 20.0, (32, 200), (4, 16)), {"policy": "static"}, 1))
    assert s["engine_path"] == f"fast; offloaded steps event by event ({why})"


@pytest.mark.parametrize(
    "extra",
    [
        {"kv_cache": {"gpu": 1.0}},
        {"kv_cache": {"gpu": 0.5, "cpu": 0.5}, "cpu_attention": True},
        {"kv_cache": {"gpu": 0.0, "cpu": 1.0}, "cpu_attention": True, "decode_overlap": False},
        {"kv_cache": {"gpu": 1.0}, "pinned": False, "weights": {"gpu": 0.0, "cpu": 0.5, "disk": 0.5}},
    ],
)
def test_block_schedule_in_closed_form(extra: dict):
    """FlexGen's zig-zag block schedule in closed form (here no KV read from another tier;
    tests/test_block_schedule_fast.py reads it): weights streamed layer by layer under the GPU
    batches' compute, each step waiting for the stores of the step before last (KV written to
    DRAM share the device-to-host link), gated decode copies, pageable copies, disk reads."""
    off = {"hardware": "gcp-t4-vm", "weights": {"gpu": 0.0, "cpu": 1.0}, "gpu_batch_size": 3, "num_gpu_batches": 3} | extra
    s = _same_fast(_scenario(off, uniform_workload(18, 20.0, (32, 400), (4, 24)), {"policy": "static"}, 1))
    assert s["engine_path"] == "fast; offloaded steps in closed form"
    s = _same_fast(_scenario(off, uniform_workload(30, 5.0, (32, 400), (4, 24)), {"policy": "continuous", "max_num_seqs": 9}, 1))
    assert s["engine_path"] == "fast; offloaded steps in closed form"


def test_replicas_sharing_the_host_cpu_run_on_the_fast_engine():
    off = {"hardware": "h100-pcie-cxl-server", "weights": {"gpu": 0.5, "cpu": 0.5}, "kv_cache": {"gpu": 0.0, "cpu": 1.0},
           "cpu_attention": True, "gpu_batch_size": 2}  # fmt: skip
    s = _same_fast(_scenario(off, uniform_workload(20, 20.0, (32, 200), (4, 16)),
                             {"policy": "continuous", "max_num_seqs": 6}, 2))  # fmt: skip
    assert s["engine_path"] == "fast; offloaded steps event by event (replicas share the host CPU)"


def test_shipped_flexgen_scenario_with_several_gpu_batches(tmp_path: Path):
    """The shipped OPT-175B T4 plan with FlexGen's block of 4 GPU batches of 8 (a few prompts):
    KV in DRAM attended on the CPU, weights from DRAM and disk: the block schedule in closed form."""
    from simkit.scenario import load_scenario

    over = {"workload.batch.num_prompts": 32, "workload.batch.output_tokens": 4,
            "plan.offload.gpu_batch_size": 8, "plan.offload.num_gpu_batches": 4}  # fmt: skip
    sc = load_scenario("workloads/scenarios/opt175b-t4-offload.yaml", over)
    ref = simulate(sc, engine="reference")
    got = simulate(sc)
    assert got.summary["engine_path"] == "fast; offloaded steps in closed form"
    assert_same_outputs(ref, got)
