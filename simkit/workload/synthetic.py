"""Synthetic workloads: an arrival process plus input/output length distributions.

``make_synthetic`` takes plain dicts (the scenario layer validates the schema and passes them on)
and checks the values itself, raising :class:`~simkit.errors.ScenarioError` with the key path.

Arrival processes (``arrival``):

* ``{process: poisson, rate}``: exponential gaps with mean ``1/rate``.
* ``{process: gamma, rate, cv}``: gamma gaps with mean ``1/rate`` and coefficient of variation
  ``cv`` (shape ``1/cv**2``); ``cv > 1`` is burstier than Poisson, ``cv = 1`` is Poisson.
* ``{process: fixed_rate, rate}``: request ``i`` arrives at ``i / rate``.
* ``{process: all_at_once}``: every request arrives at 0.

The first request always arrives at 0; the measured rate is ``(n - 1) / arrival_s[-1]``.

Length distributions (``lengths.input`` / ``lengths.output``), each with an optional ``max``:

* ``{dist: fixed, value}``
* ``{dist: uniform, low, high}``: integers, both ends included.
* ``{dist: lognormal, median, sigma}`` or ``{dist: lognormal, mean, sigma}``: ``sigma`` is the
  standard deviation of ``ln X``; ``median = exp(mu)`` and ``mean = exp(mu + sigma**2 / 2)``
  (the mean of X itself, before rounding and clamping). Values are rounded to integers.
* ``{dist: zipf, a, max}``: ``P(k) ~ k**-a`` on ``k = 1..max`` (any ``a > 0``).

Or ``lengths: {trace: {path, format}}``: (input, output) pairs resampled jointly, with
replacement, from a trace (optional ``model_filter``, ``max_input``, ``max_output``).

Every length is clamped to ``>= 1`` and to ``max`` when given; ``meta`` counts the clamped values.
Randomness is numpy's PCG64, with one independent stream per part (arrivals, input, output)
spawned from ``seed``: changing the length distributions does not move the arrivals.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

import numpy as np

from simkit.errors import ScenarioError
from simkit.workload.base import MAX_TOKENS, Requests

__all__ = ["ARRIVAL_PROCESSES", "LENGTH_DISTS", "make_synthetic", "sample_lengths"]

ARRIVAL_PROCESSES = ("poisson", "gamma", "fixed_rate", "all_at_once")
LENGTH_DISTS = ("fixed", "uniform", "lognormal", "zipf")

MAX_ZIPF_SUPPORT = 1 << 24
"""Largest ``max`` for a zipf length (the sampler tabulates the distribution)."""

_ARRIVAL_KEYS = {
    "poisson": {"process", "rate"},
    "gamma": {"process", "rate", "cv"},
    "fixed_rate": {"process", "rate"},
    "all_at_once": {"process"},
}
_DIST_KEYS = {
    "fixed": {"dist", "value", "max"},
    "uniform": {"dist", "low", "high", "max"},
    "lognormal": {"dist", "mean", "median", "sigma", "max"},
    "zipf": {"dist", "a", "max"},
}
_TRACE_KEYS = {"path", "format", "model_filter", "max_input", "max_output"}


# --------------------------------------------------------------------------------------------
# parameter checks


def _given(d: Mapping[str, Any]) -> dict[str, Any]:
    """The keys that carry a value (a validated model may pass unset fields as None)."""
    return {k: v for k, v in d.items() if v is not None}


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ScenarioError(f"expected a mapping, got {value!r}", key=key)
    return _given(value)


def _check_keys(d: Mapping[str, Any], allowed: set[str], key: str, what: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise ScenarioError(
            f"unknown key {extra[0]!r} for {what}; expected {', '.join(sorted(allowed))}",
            key=f"{key}.{extra[0]}",
        )


def _number(
    d: Mapping[str, Any], name: str, key: str, *, positive: bool = False, minimum: float | None = None
) -> float:
    if name not in d:
        raise ScenarioError("missing value", key=f"{key}.{name}")
    raw = d[name]
    v = float(raw) if isinstance(raw, Real) and not isinstance(raw, bool | np.bool_) else None
    if v is None or not math.isfinite(v):
        raise ScenarioError(f"expected a finite number, got {raw!r}", key=f"{key}.{name}")
    if positive and not v > 0:
        raise ScenarioError(f"expected a number > 0, got {raw!r}", key=f"{key}.{name}")
    if minimum is not None and v < minimum:
        raise ScenarioError(f"expected a number >= {minimum:g}, got {raw!r}", key=f"{key}.{name}")
    return v


def _as_int(value: Any) -> Any:
    """numpy and other integral numbers as ``int``; bools and everything else unchanged."""
    if isinstance(value, Integral) and not isinstance(value, bool | np.bool_):
        return int(value)
    return value


def _integer(d: Mapping[str, Any], name: str, key: str, *, minimum: int) -> int:
    if name not in d:
        raise ScenarioError("missing value", key=f"{key}.{name}")
    v = _as_int(d[name])
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ScenarioError(f"expected an integer, got {v!r}", key=f"{key}.{name}")
    if v < minimum:
        raise ScenarioError(f"expected an integer >= {minimum}, got {v!r}", key=f"{key}.{name}")
    return v


# --------------------------------------------------------------------------------------------
# arrivals


def _arrivals(n: int, spec: Any, rng: np.random.Generator, key: str) -> np.ndarray:
    d = _mapping(spec, key)
    process = d.get("process")
    if process not in _ARRIVAL_KEYS:
        raise ScenarioError(
            f"unknown arrival process {process!r}; expected one of {', '.join(ARRIVAL_PROCESSES)}",
            key=f"{key}.process",
        )
    _check_keys(d, _ARRIVAL_KEYS[process], key, f"arrival process {process!r}")
    if process == "all_at_once":
        return np.zeros(n, dtype=np.float64)
    rate = _number(d, "rate", key, positive=True)
    gaps_n = max(n - 1, 0)
    if process == "fixed_rate":
        return np.arange(n, dtype=np.float64) / rate
    if process == "poisson":
        gaps = rng.exponential(1.0 / rate, size=gaps_n)
    else:
        cv = _number(d, "cv", key, minimum=1e-3)  # below, 1/cv^2 overflows or the gaps are all equal
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, 1.0 / (rate * shape), size=gaps_n)
    out = np.empty(n, dtype=np.float64)
    if n:
        out[0] = 0.0
        np.cumsum(gaps, out=out[1:])
    return out


# --------------------------------------------------------------------------------------------
# lengths


def sample_lengths(
    n: int, spec: Any, rng: np.random.Generator, key: str = "length"
) -> tuple[np.ndarray, int]:
    """``n`` int64 lengths from a length distribution dict; returns (lengths, number clamped)."""
    d = _mapping(spec, key)
    dist = d.get("dist")
    if dist not in _DIST_KEYS:
        raise ScenarioError(
            f"unknown length distribution {dist!r}; expected one of {', '.join(LENGTH_DISTS)}",
            key=f"{key}.dist",
        )
    _check_keys(d, _DIST_KEYS[dist], key, f"length distribution {dist!r}")
    cap = _integer(d, "max", key, minimum=1) if "max" in d else None

    if dist == "fixed":
        value = _integer(d, "value", key, minimum=1)
        if cap is not None and value > cap:
            raise ScenarioError(f"value {value} is above max {cap}", key=f"{key}.value")
        return np.full(n, value, dtype=np.int64), 0
    if dist == "uniform":
        low = _integer(d, "low", key, minimum=1)
        high = _integer(d, "high", key, minimum=1)
        if high < low:
            raise ScenarioError(f"expected high >= low ({low}), got {high}", key=f"{key}.high")
        raw = rng.integers(low, high, size=n, endpoint=True).astype(np.float64)
    elif dist == "lognormal":
        sigma = _number(d, "sigma", key, minimum=0.0)
        if ("mean" in d) == ("median" in d):
            raise ScenarioError("give exactly one of mean or median", key=f"{key}.median")
        if "median" in d:
            mu = math.log(_number(d, "median", key, positive=True))
        else:
            mu = math.log(_number(d, "mean", key, positive=True)) - sigma * sigma / 2.0
        raw = np.rint(rng.lognormal(mu, sigma, size=n))
    else:  # zipf
        a = _number(d, "a", key, positive=True)
        if cap is None:
            raise ScenarioError("zipf needs max (the largest length)", key=f"{key}.max")
        if cap > MAX_ZIPF_SUPPORT:
            raise ScenarioError(f"expected max <= {MAX_ZIPF_SUPPORT} for zipf, got {cap}", key=f"{key}.max")
        k = np.arange(1, cap + 1, dtype=np.float64)
        cdf = np.cumsum(k**-a)
        cdf /= cdf[-1]
        raw = (np.searchsorted(cdf, rng.random(n), side="right") + 1).astype(np.float64)
    return _clamp(raw, cap)


def _clamp(raw: np.ndarray, cap: int | None) -> tuple[np.ndarray, int]:
    hi = float(cap) if cap is not None else float(MAX_TOKENS)
    clamped = int(np.count_nonzero((raw < 1) | (raw > hi)))
    return np.clip(raw, 1.0, hi).astype(np.int64), clamped


def _lengths_from_trace(
    n: int, spec: Any, rng: np.random.Generator, key: str
) -> tuple[np.ndarray, np.ndarray, int, int, dict[str, Any]]:
    from simkit.workload.traces import read_trace

    d = _mapping(spec, key)
    _check_keys(d, _TRACE_KEYS, key, "a trace length source")
    path = d.get("path")
    if isinstance(path, os.PathLike):  # a pathlib.Path from Python, e.g. repo_path(...)
        path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise ScenarioError(f"expected a trace file path, got {path!r}", key=f"{key}.path")
    fmt = d.get("format", "auto")
    if not isinstance(fmt, str):
        raise ScenarioError(f"expected a format name, got {fmt!r}", key=f"{key}.format")
    max_in = _integer(d, "max_input", key, minimum=1) if "max_input" in d else None
    max_out = _integer(d, "max_output", key, minimum=1) if "max_output" in d else None
    trace = read_trace(path, fmt, model_filter=d.get("model_filter"))
    pick = rng.integers(0, len(trace), size=n)
    inp, ci = _clamp(trace.input_tokens[pick].astype(np.float64), max_in)
    out, co = _clamp(trace.output_tokens[pick].astype(np.float64), max_out)
    source = {"path": path, "format": trace.meta.get("format", fmt), "trace_requests": len(trace)}
    return inp, out, ci, co, source


def make_synthetic(
    num_requests: int,
    arrival: Mapping[str, Any],
    lengths: Mapping[str, Any],
    seed: int = 0,
    *,
    key: str = "workload.synthetic",
) -> Requests:
    """A synthetic request set (see the module docstring for the parameters).

    ``key`` is the key path used in error messages.
    """
    num_requests = _as_int(num_requests)
    seed = _as_int(seed)
    if isinstance(num_requests, bool) or not isinstance(num_requests, int) or num_requests < 1:
        raise ScenarioError(f"expected an integer >= 1, got {num_requests!r}", key=f"{key}.num_requests")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ScenarioError(f"expected an integer >= 0, got {seed!r}", key=f"{key}.seed")
    n = num_requests
    s_arr, s_in, s_out = np.random.SeedSequence(seed).spawn(3)
    rng_arr = np.random.Generator(np.random.PCG64(s_arr))
    rng_in = np.random.Generator(np.random.PCG64(s_in))
    rng_out = np.random.Generator(np.random.PCG64(s_out))

    arrival_s = _arrivals(n, arrival, rng_arr, f"{key}.arrival")

    lk = f"{key}.lengths"
    ld = _mapping(lengths, lk)
    meta: dict[str, Any] = {
        "source": "synthetic",
        "format": "synthetic",
        "seed": seed,
        "arrival": dict(_given(arrival)),
    }
    if "trace" in ld:
        _check_keys(ld, {"trace"}, lk, "lengths from a trace")
        inp, out, ci, co, source = _lengths_from_trace(n, ld["trace"], rng_in, f"{lk}.trace")
        meta["lengths"] = {"trace": source}
    else:
        _check_keys(ld, {"input", "output"}, lk, "lengths")
        for side in ("input", "output"):
            if side not in ld:
                raise ScenarioError("missing length distribution (or give lengths.trace)", key=f"{lk}.{side}")
        inp, ci = sample_lengths(n, ld["input"], rng_in, f"{lk}.input")
        out, co = sample_lengths(n, ld["output"], rng_out, f"{lk}.output")
        meta["lengths"] = {"input": dict(_given(ld["input"])), "output": dict(_given(ld["output"]))}
    meta["input_clamped"] = ci
    meta["output_clamped"] = co
    meta["requests"] = n
    return Requests(arrival_s, inp, out, meta=meta)
