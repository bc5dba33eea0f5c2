"""A plan whose matmul dtype the GPU has no tensor path for (fp8 on Ampere, bf16 on Turing) is
timed at the fallback dtype's peak: the run says so instead of passing it silently."""

from __future__ import annotations

import warnings

import pytest

from simkit.cost.ops import Precision
from simkit.deployment import matmul_path_warning
from simkit.scenario import scenario_from_dict
from simkit.simulate import simulate
from simkit.specs.catalog import default_catalog


@pytest.mark.parametrize(
    ("gpu", "prec", "fallback"),
    [
        ("a100-80gb-sxm", ("fp8", "fp8", "fp8"), "fp16"),
        ("a40", ("fp8", "fp8", "bf16"), "fp16"),
        ("t4", ("bf16", "bf16", "bf16"), "fp16"),
        ("h100-sxm", ("fp8", "fp8", "fp8"), None),
        ("a100-80gb-sxm", ("fp8", "bf16", "fp8"), None),  # fp8 storage, bf16 matmuls: a path A100 has
        ("a100-80gb-sxm", ("int4", "fp16", "fp16"), None),  # int4 is dequantised to fp16
        ("t4", ("fp16", "fp16", "fp16"), None),
    ],
)
def test_matmul_path_warning(gpu: str, prec: tuple[str, str, str], fallback: str | None) -> None:
    w = matmul_path_warning(default_catalog().get("gpu", gpu), Precision(*prec))
    if fallback is None:
        assert w is None
    else:
        assert w is not None and f"gpu {gpu} has no {prec[1]} matmul path" in w and f"at its {fallback} peak" in w


def _run(gpu: str, dtype: str) -> list[str]:
    sc = scenario_from_dict({
        "name": "path", "hardware": {"preset": "dgx-h100", "gpu": gpu}, "model": "llama-3-8b",
        "workload": {"batch": {"num_prompts": 4, "input_tokens": 64, "output_tokens": 4}},
        "plan": {"precision": {"weights": dtype, "activations": dtype, "kv_cache": dtype}},
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate(sc).warnings


def test_a_run_of_fp8_on_ampere_warns() -> None:
    assert any("a100-80gb-sxm has no fp8 matmul path" in w for w in _run("a100-80gb-sxm", "fp8"))
    assert not any("matmul path" in w for w in _run("h100-sxm", "fp8"))


def test_every_fleet_group_warns_of_its_own_missing_matmul_path() -> None:
    # the warning used to cover the fleet's first group only
    sc = scenario_from_dict({
        "name": "fleet-path", "hardware": "dgx-h100", "model": "llama-3-8b",
        "workload": {"batch": {"num_prompts": 4, "input_tokens": 64, "output_tokens": 4}},
        "plan": {"precision": {"weights": "fp8", "activations": "fp8", "kv_cache": "fp8"},
                 "fleet": [{"gpu": "h100-sxm", "replicas": 1}, {"gpu": "a100-80gb-sxm", "replicas": 1}]},
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = simulate(sc).warnings
    assert sum("a100-80gb-sxm has no fp8 matmul path" in w for w in ws) == 1
    assert not any("h100-sxm has no" in w for w in ws)


def test_a_gpu_priced_alone_on_a_node_that_adds_no_host_price_warns() -> None:
    # the L4's price is its share of a GCP VM, the H100's a GPU cloud's price with the host in it:
    # on dgx-h100 (host_price_per_hour: 0) the L4 would look cheaper than it is
    assert any("gpu l4's price ($0.56/h) is the GPU alone" in w for w in _run("l4", "fp16"))
    assert not any("is the GPU alone" in w for w in _run("h100-sxm", "fp16"))
    from simkit.specs.node import resolve_node

    assert resolve_node("gcp-t4-vm").price_warning() is None  # a T4 VM priced with its host
    assert resolve_node({"preset": "dgx-h100", "gpu": "l4", "host_price_per_hour": 0.15}).price_warning() is None
