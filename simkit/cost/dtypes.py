"""Bytes per element for weights, activations and KV cache, including group-quantised int4."""

from __future__ import annotations

from simkit.errors import ScenarioError

DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4")
_BASE = {"fp32": 4.0, "tf32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}


def bytes_per_element(dtype: str, group_size: int = 128) -> float:
    """Storage bytes per element. int4 is group-quantised: each group of ``group_size`` values
    carries an fp16 scale and an fp16 zero point (FlexGen / GPTQ style), i.e. 4 extra bytes."""
    if dtype not in _BASE:
        raise ScenarioError(f"unknown dtype {dtype!r} (expected one of {', '.join(DTYPES)})")
    if dtype == "int4":
        return 0.5 + 4.0 / group_size
    if dtype in ("int8", "fp8"):
        return 1.0
    return _BASE[dtype]


def compute_dtype(weight_dtype: str, activation_dtype: str) -> str:
    """The dtype matmuls run in: int4 weights are dequantised to the activation dtype."""
    if weight_dtype in ("fp8", "int8") and activation_dtype in ("fp8", "int8"):
        return weight_dtype
    return activation_dtype
