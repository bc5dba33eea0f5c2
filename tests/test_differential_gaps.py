"""The differential tests' gap check (tests/conftest.py ``assert_same_gaps``, part of
``assert_same_outputs``) itself: it sees a gap one ulp off that the summary's 1%-wide TBT bins
hide, compares runs of one engine family in order and the fast engine against the reference as
multisets (docs/performance.md, "Exactness of the inter-token gaps")."""

import numpy as np
import pytest

from simkit.engine.state import TBTHistogram
from simkit.scenario import scenario_from_dict
from simkit.simulate import simulate
from tests.conftest import assert_same_gaps, assert_same_outputs, make_scenario, uniform_workload


def _scenario():  # type: ignore[no-untyped-def]
    data = make_scenario(workload=uniform_workload(60, 40.0, (50, 600), (5, 80)), seed=5)
    data["plan"]["batching"] = {"policy": "continuous", "max_num_seqs": 16, "max_num_batched_tokens": 4096}
    return scenario_from_dict(data)


def test_a_gap_one_ulp_off_fails_though_the_summary_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stepping fast path with one gap it pushes (the third, not the largest) one ulp longer:
    every per-request column, the iteration log and the summary (TBT percentiles from bins, the
    maximum) stay the same bits; the gap check fails, naming the first gap that differs."""
    sc = _scenario()
    ref = simulate(sc, engine="reference")
    push1 = TBTHistogram.push1
    calls = [0]

    def nudged(self, value, weight):  # type: ignore[no-untyped-def]
        calls[0] += 1
        push1(self, float(np.nextafter(value, np.inf)) if calls[0] == 3 else value, weight)

    monkeypatch.setattr(TBTHistogram, "push1", nudged)
    off = simulate(sc, engine="stepping")
    assert off.summary["engine_path"] == "fast"
    with pytest.raises(AssertionError, match=r"inter-token gaps \(fast against reference, as sorted multisets of (\d+) and \1\)"):
        assert_same_outputs(ref, off)
    monkeypatch.undo()
    assert_same_outputs(ref, simulate(sc, engine="stepping"))


def test_one_family_in_order_fast_against_reference_as_multisets() -> None:
    """The fused loop against the stepping path: in order (a swap of two gaps fails); the fast
    engine against the reference: the same gaps counted by weight (a group of two equal gaps
    pushed once with weight 2 equals two pushed with weight 1; a changed count fails)."""
    sc = _scenario()
    fused, stepping, ref = simulate(sc), simulate(sc, engine="stepping"), simulate(sc, engine="reference")
    assert fused.summary["engine_path"] == "fast (fused loop)"
    assert_same_gaps(fused, stepping)
    assert_same_gaps(fused, ref)
    v, w = stepping.tbt_gaps
    k = int(np.flatnonzero(v[1:] != v[:-1])[0])
    swapped = v.copy()
    swapped[[k, k + 1]] = swapped[[k + 1, k]]
    stepping.tbt_gaps = (swapped, w)
    with pytest.raises(AssertionError, match=f"fast runs.*first differ at gap {k}"):
        assert_same_gaps(fused, stepping)
    assert_same_gaps(ref, stepping)  # the same multiset
    ref.tbt_gaps = (np.array([0.5, 0.5, 0.25]), np.array([1.0, 1.0, 3.0]))
    stepping.tbt_gaps = (np.array([0.25, 0.5]), np.array([3.0, 2.0]))
    assert_same_gaps(ref, stepping)
    stepping.tbt_gaps = (np.array([0.25, 0.5]), np.array([2.0, 2.0]))
    with pytest.raises(AssertionError, match="as sorted multisets of 5 and 4"):
        assert_same_gaps(ref, stepping)
    stepping.tbt_gaps = (np.array([0.25, 0.5]), np.array([2.5, 1.5]))
    with pytest.raises(AssertionError, match="whole numbers"):
        assert_same_gaps(ref, stepping)
