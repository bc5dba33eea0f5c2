"""Synthetic workloads: arrival processes, length distributions, determinism, parameter errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simkit.errors import ScenarioError
from simkit.workload.synthetic import make_synthetic, sample_lengths

TRACES = Path(__file__).resolve().parents[1] / "workloads" / "traces"
FIXED = {"input": {"dist": "fixed", "value": 100}, "output": {"dist": "fixed", "value": 10}}
N = 20_000


def _rate(arrivals: np.ndarray) -> float:
    return (len(arrivals) - 1) / arrivals[-1]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


# --------------------------------------------------------------------------------------------
# arrivals


@pytest.mark.parametrize(
    "arrival",
    [
        {"process": "poisson", "rate": 5.0},
        {"process": "gamma", "rate": 5.0, "cv": 0.5},
        {"process": "gamma", "rate": 5.0, "cv": 3.0},
        {"process": "fixed_rate", "rate": 5.0},
    ],
)
def test_mean_rate(arrival: dict) -> None:
    r = make_synthetic(N, arrival, FIXED, seed=11)
    assert len(r) == N
    assert r.arrival_s[0] == 0.0
    assert np.all(np.diff(r.arrival_s) >= 0)
    tol = 0.06 if arrival.get("cv", 1.0) > 1 else 0.03
    assert _rate(r.arrival_s) == pytest.approx(5.0, rel=tol)


def test_fixed_rate_is_exact() -> None:
    r = make_synthetic(5, {"process": "fixed_rate", "rate": 4}, FIXED)
    assert r.arrival_s.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_all_at_once() -> None:
    r = make_synthetic(100, {"process": "all_at_once"}, FIXED)
    assert np.all(r.arrival_s == 0.0)


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 4.0])
def test_gamma_cv(cv: float) -> None:
    r = make_synthetic(N, {"process": "gamma", "rate": 10.0, "cv": cv}, FIXED, seed=5)
    gaps = np.diff(r.arrival_s)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.10)


def test_poisson_gaps_have_cv_one() -> None:
    gaps = np.diff(make_synthetic(N, {"process": "poisson", "rate": 2.0}, FIXED, seed=2).arrival_s)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)


# --------------------------------------------------------------------------------------------
# lengths


def test_fixed_length() -> None:
    x, clamped = sample_lengths(10, {"dist": "fixed", "value": 7}, _rng())
    assert x.tolist() == [7] * 10 and clamped == 0 and x.dtype == np.int64


def test_uniform_length_inclusive() -> None:
    x, _ = sample_lengths(N, {"dist": "uniform", "low": 3, "high": 6}, _rng())
    assert set(np.unique(x).tolist()) == {3, 4, 5, 6}
    assert x.mean() == pytest.approx(4.5, rel=0.02)


def test_lognormal_median_and_mean() -> None:
    x, _ = sample_lengths(N, {"dist": "lognormal", "median": 800, "sigma": 0.8}, _rng(1))
    assert np.median(x) == pytest.approx(800, rel=0.04)
    y, _ = sample_lengths(N, {"dist": "lognormal", "mean": 800, "sigma": 0.8}, _rng(2))
    assert y.mean() == pytest.approx(800, rel=0.04)
    assert np.median(y) == pytest.approx(800 * np.exp(-0.32), rel=0.04)


def test_lognormal_clamped_to_max_and_one() -> None:
    x, clamped = sample_lengths(N, {"dist": "lognormal", "median": 2, "sigma": 2.0, "max": 50}, _rng())
    assert x.min() == 1 and x.max() == 50
    assert 0 < clamped <= np.count_nonzero((x == 1) | (x == 50))


def test_zipf_length() -> None:
    x, _ = sample_lengths(N, {"dist": "zipf", "a": 1.5, "max": 1000}, _rng())
    assert x.min() >= 1 and x.max() <= 1000
    k = np.arange(1, 1001)
    p = k**-1.5 / (k**-1.5).sum()
    assert np.mean(x == 1) == pytest.approx(p[0], rel=0.05)
    assert x.mean() == pytest.approx((k * p).sum(), rel=0.10)
    # a <= 1 is fine with a finite support
    y, _ = sample_lengths(1000, {"dist": "zipf", "a": 0.5, "max": 20}, _rng())
    assert y.min() >= 1 and y.max() <= 20


def test_lengths_from_trace_resample_pairs() -> None:
    path = str(TRACES / "azure_conv_2023_sample.csv")
    r = make_synthetic(
        3000, {"process": "poisson", "rate": 10}, {"trace": {"path": path, "format": "azure"}}, seed=4
    )
    from simkit.workload.traces import read_trace

    t = read_trace(path)
    pairs = set(zip(t.input_tokens.tolist(), t.output_tokens.tolist()))
    got = list(zip(r.input_tokens.tolist(), r.output_tokens.tolist()))
    assert all(p in pairs for p in got)  # resampled jointly
    assert len(set(got)) < len(got)  # with replacement
    capped = make_synthetic(
        500, {"process": "poisson", "rate": 10}, {"trace": {"path": path, "max_input": 256, "max_output": 64}}
    )
    assert capped.input_tokens.max() <= 256 and capped.output_tokens.max() <= 64
    assert capped.meta["input_clamped"] > 0


# --------------------------------------------------------------------------------------------
# determinism


def test_seeded_determinism() -> None:
    arrival = {"process": "gamma", "rate": 3.0, "cv": 2.0}
    lengths = {
        "input": {"dist": "lognormal", "median": 500, "sigma": 1.0, "max": 4096},
        "output": {"dist": "zipf", "a": 1.1, "max": 512},
    }
    a = make_synthetic(1000, arrival, lengths, seed=9)
    b = make_synthetic(1000, arrival, lengths, seed=9)
    c = make_synthetic(1000, arrival, lengths, seed=10)
    for col in ("arrival_s", "input_tokens", "output_tokens"):
        assert np.array_equal(getattr(a, col), getattr(b, col))
        assert not np.array_equal(getattr(a, col), getattr(c, col))
    # changing the lengths does not move the arrivals
    d = make_synthetic(1000, arrival, FIXED, seed=9)
    assert np.array_equal(a.arrival_s, d.arrival_s)
    assert a.meta["seed"] == 9 and a.meta["source"] == "synthetic"


# --------------------------------------------------------------------------------------------
# parameter errors


@pytest.mark.parametrize(
    ("num", "arrival", "lengths", "key"),
    [
        (10, {"process": "poisson", "rate": -1}, FIXED, "workload.synthetic.arrival.rate"),
        (10, {"process": "poisson", "rate": 0}, FIXED, "workload.synthetic.arrival.rate"),
        (10, {"process": "poisson"}, FIXED, "workload.synthetic.arrival.rate"),
        (10, {"process": "gamma", "rate": 1, "cv": 0}, FIXED, "workload.synthetic.arrival.cv"),
        (10, {"process": "gamma", "rate": 1, "cv": -2}, FIXED, "workload.synthetic.arrival.cv"),
        (10, {"process": "bursty", "rate": 1}, FIXED, "workload.synthetic.arrival.process"),
        (10, {"process": "poisson", "rate": 1, "cv": 2}, FIXED, "workload.synthetic.arrival.cv"),
        (0, {"process": "poisson", "rate": 1}, FIXED, "workload.synthetic.num_requests"),
        (
            10,
            {"process": "poisson", "rate": 1},
            {"input": {"dist": "pareto", "a": 1}, "output": FIXED["output"]},
            "workload.synthetic.lengths.input.dist",
        ),
        (
            10,
            {"process": "poisson", "rate": 1},
            {"input": {"dist": "uniform", "low": 10, "high": 5}, "output": FIXED["output"]},
            "workload.synthetic.lengths.input.high",
        ),
        (
            10,
            {"process": "poisson", "rate": 1},
            {"input": FIXED["input"], "output": {"dist": "lognormal", "median": 10, "mean": 10, "sigma": 1}},
            "workload.synthetic.lengths.output.median",
        ),
        (
            10,
            {"process": "poisson", "rate": 1},
            {"input": FIXED["input"], "output": {"dist": "lognormal", "median": 10, "sigma": -1}},
            "workload.synthetic.lengths.output.sigma",
        ),
        (
            10,
            {"process": "poisson", "rate": 1},
            {"input": FIXED["input"], "output": {"dist": "zipf", "a": 1.2}},
            "workload.synthetic.lengths.output.max",
        ),
        (
            10,
            {"process": "poisson", "rate": 1},
            {"input": {"dist": "fixed", "value": 0}, "output": FIXED["output"]},
            "workload.synthetic.lengths.input.value",
        ),
        (
            10,
            {"process": "poisson", "rate": 1},
            {"input": FIXED["input"]},
            "workload.synthetic.lengths.output",
        ),
        (
            10,
            {"process": "poisson", "rate": 1},
            {"trace": {"format": "azure"}},
            "workload.synthetic.lengths.trace.path",
        ),
    ],
)
def test_bad_parameters(num: int, arrival: dict, lengths: dict, key: str) -> None:
    with pytest.raises(ScenarioError) as e:
        make_synthetic(num, arrival, lengths)
    assert e.value.key == key
    assert key in str(e.value)


def test_none_values_are_ignored() -> None:
    # a validated model may pass unset optional fields as None
    r = make_synthetic(
        10,
        {"process": "poisson", "rate": 1.0, "cv": None},
        {"input": {"dist": "fixed", "value": 5, "max": None}, "output": {"dist": "fixed", "value": 1}},
    )
    assert r.input_tokens.tolist() == [5] * 10


# --------------------------------------------------------------------------------------------
# properties


_length_dists = st.one_of(
    st.builds(lambda v: {"dist": "fixed", "value": v}, st.integers(1, 10_000)),
    st.builds(
        lambda lo, w: {"dist": "uniform", "low": lo, "high": lo + w},
        st.integers(1, 5000),
        st.integers(0, 5000),
    ),
    st.builds(
        lambda m, s, cap: {"dist": "lognormal", "median": m, "sigma": s, **({"max": cap} if cap else {})},
        st.floats(0.01, 1e5),
        st.floats(0.0, 4.0),
        st.one_of(st.none(), st.integers(1, 100_000)),
    ),
    st.builds(
        lambda m, s: {"dist": "lognormal", "mean": m, "sigma": s}, st.floats(0.01, 1e5), st.floats(0.0, 3.0)
    ),
    st.builds(lambda a, cap: {"dist": "zipf", "a": a, "max": cap}, st.floats(0.1, 4.0), st.integers(1, 5000)),
)
_arrivals = st.one_of(
    st.builds(lambda r: {"process": "poisson", "rate": r}, st.floats(1e-3, 1e4)),
    st.builds(
        lambda r, cv: {"process": "gamma", "rate": r, "cv": cv}, st.floats(1e-3, 1e4), st.floats(0.05, 10)
    ),
    st.builds(lambda r: {"process": "fixed_rate", "rate": r}, st.floats(1e-3, 1e4)),
    st.just({"process": "all_at_once"}),
)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    arrival=_arrivals,
    inp=_length_dists,
    out=_length_dists,
    seed=st.integers(0, 2**32),
)
def test_property_arrivals_sorted_lengths_positive(
    n: int, arrival: dict, inp: dict, out: dict, seed: int
) -> None:
    r = make_synthetic(n, arrival, {"input": inp, "output": out}, seed=seed)
    assert len(r) == n
    assert r.arrival_s[0] == 0.0
    assert np.all(np.diff(r.arrival_s) >= 0)
    assert np.all(np.isfinite(r.arrival_s))
    assert r.input_tokens.dtype == np.int64 and r.output_tokens.dtype == np.int64
    assert r.input_tokens.min() >= 1 and r.output_tokens.min() >= 1
    for side, d in (("input", inp), ("output", out)):
        if "max" in d:
            assert getattr(r, f"{side}_tokens").max() <= d["max"]
