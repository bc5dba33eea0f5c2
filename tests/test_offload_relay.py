"""FlexGen's fp16 relay for disk reads (plan.offload.disk_relay: fp16): an int4 share read from disk
is widened into the copy thread's fp16 buffer, narrowed back on the host into a pageable tensor and
copied to the GPU from there; the simulator and the placement optimiser price it with one function
(cost/offload.fp16_relay_h2d_factor)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simkit.cost.dtypes import bytes_per_element
from simkit.cost.offload import RELAY_NARROW_BYTES, fp16_relay_h2d_factor
from simkit.errors import ScenarioError
from simkit.scenario import scenario_from_dict
from simkit.search.offload import optimize
from simkit.simulate import simulate
from tests.conftest import make_scenario

T4_H2D = 12.89 * 2**30
"""gcp-t4-vm's measured host-to-GPU rate (hw_specs/nodes/gcp-t4-vm.yaml)."""
T4_HOST = 0.0123e12 * 10.0 / 2.0
"""gcp-t4-vm's host copy rate: FlexGen's measured CPU attention, 10 bytes per 2 FLOPs."""


def _sc(offload, n=4, inp=64, out=4):
    data = make_scenario(hardware="gcp-t4-vm", model="opt-6.7b",
                         workload={"batch": {"num_prompts": n, "input_tokens": inp, "output_tokens": out}})
    data["plan"].update({"batching": {"policy": "static"}, "offload": offload})
    return scenario_from_dict(data)


def _run(offload):
    return simulate(_sc(offload)).summary


@given(st.sampled_from((32, 64, 128)), st.floats(0.2, 1.0), st.floats(0.2, 1.0), st.floats(1e9, 1e11), st.floats(1e9, 1e12))
def test_relay_factor_is_the_data_share_pageable_plus_narrowing(group, ratio, pinned, h2d, host):
    b = bytes_per_element("int4", group)
    f = fp16_relay_h2d_factor(b, ratio, pinned, h2d, host)
    data = 0.5 / b
    assert f == pytest.approx(data * (1.0 / ratio + RELAY_NARROW_BYTES * h2d / host) + (1.0 - data) / pinned)
    # never faster than the plan's own copies of the same bytes, slower the slower the host
    assert f >= min(1.0 / ratio, 1.0 / pinned) - 1e-12
    assert fp16_relay_h2d_factor(b, ratio, pinned, h2d, host / 2.0) > f


def test_relay_prices_a_compressed_disk_share_on_the_host_to_gpu_link():
    base = {"weights": {"gpu": 0.5, "cpu": 0.5}, "kv_cache": {"gpu": 0.0, "disk": 1.0}, "compress_kv": True}
    native, relay = _run(base), _run({**base, "disk_relay": "fp16"})
    assert relay["makespan_s"] > native["makespan_s"]
    # the disk KV's host-to-GPU bytes count (factor - 1) more; nothing else moves
    disk_kv = native["offload_bytes"]["kv_read"]
    f = fp16_relay_h2d_factor(bytes_per_element("int4", 128), 0.6, 1.0, T4_H2D, T4_HOST)
    extra = relay["resources"]["h2d"]["bytes"] - native["resources"]["h2d"]["bytes"]
    assert extra == pytest.approx(disk_kv * (f - 1.0), rel=1e-9)
    assert relay["offload_bytes"] == native["offload_bytes"]
    for k in ("busy_s", "bytes"):
        assert relay["resources"]["nvme_read"][k] == native["resources"]["nvme_read"][k]


@pytest.mark.parametrize("offload", [
    # 16-bit data on disk: the relay is its own type, pinned
    {"weights": {"gpu": 0.5, "disk": 0.5}, "kv_cache": {"gpu": 0.0, "disk": 1.0}},
    # a compressed share in DRAM does not pass through the copy threads
    {"weights": {"gpu": 0.5, "cpu": 0.5}, "kv_cache": {"gpu": 0.0, "cpu": 1.0}, "compress_kv": True, "compress_weights": True},
])
def test_relay_leaves_other_shares_alone(offload):
    native, relay = _run(offload), _run({**offload, "disk_relay": "fp16"})
    assert relay["makespan_s"] == native["makespan_s"]
    assert relay["resources"] == native["resources"]


def test_relay_of_compressed_weights_on_disk():
    base = {"weights": {"gpu": 0.5, "disk": 0.5}, "compress_weights": True}
    native, relay = _run(base), _run({**base, "disk_relay": "fp16"})
    f = fp16_relay_h2d_factor(bytes_per_element("int4", 128), 0.6, 1.0, T4_H2D, T4_HOST)
    disk_w = native["resources"]["nvme_read"]["bytes"]
    extra = relay["resources"]["h2d"]["bytes"] - native["resources"]["h2d"]["bytes"]
    assert extra == pytest.approx(disk_w * (f - 1.0), rel=1e-9)


def test_relay_is_a_known_value():
    with pytest.raises(ScenarioError, match="disk_relay"):
        _sc({"weights": {"gpu": 0.5, "cpu": 0.5}, "disk_relay": "fp32"})


def test_optimiser_prices_the_relay_as_the_simulator():
    def best(relay):
        sc = _sc({"weights": {"gpu": 0.0, "cpu": 1.0}, "disk_relay": relay}, n=8, inp=256, out=16)
        return optimize(sc, prompt_len=256, gen_len=16, gpu_batch_sizes=(8,), num_gpu_batches=(1,), compress_kv=(True,),
                        top=1, confirm=1)[0]

    a, b = best("native"), best("fp16")
    assert b.disk_relay == "fp16" and b.offload_dict()["disk_relay"] == "fp16"
    assert a.disk_relay == "native"
    assert b.lp_time_s >= a.lp_time_s
    # the relayed plan keeps no more of its compressed cache on disk than the native one
    assert b.fractions["c"]["disk"] <= a.fractions["c"]["disk"]
    assert b.sim.get("output_tokens_per_s")
