"""The thirteenth round's shortcuts in the fused loop (engine/lean.py), each against what it
replaces, including where it must not apply:

- a decode run's memory term as a running sum of whole numbers (:func:`_integral`) against the
  expression it replaces, at and beyond 2**53 (where the loop does not use it);
- the sequences short of their first block boundary as a count (``pend``: only those a block past
  the allocation clock wait, the others are counted by residue at once) against FastEngine's
  sorted list of them (a sequence counted by residue from the clock that reaches its boundary);
- whole runs where both apply or neither does (block size 1, prompts a whole number of blocks,
  an int4 KV cache: no integer form), against the stepping path and the reference engine, gaps
  included."""

import os
import struct
from bisect import insort

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.cost.efficiency import DatasheetEfficiency
from simkit.cost.iteration import IterationModel
from simkit.cost.ops import Precision
from simkit.engine.lean import _EXACT, _dec_memo, _growth, _integral, _kv_max
from simkit.scenario import scenario_from_dict
from tests.conftest import native_trace_workload, uniform_workload
from tests.test_lean import FUSED, _data, fast_path_of, run_three

EXAMPLES = int(os.environ.get("SIMKIT_HYPOTHESIS_EXAMPLES", "25"))


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _consts(c1: float, c3: float, kvh: float, d: float, kb: float) -> tuple:
    """A decode_constants tuple with these memory-term factors (the others do not matter here)."""
    return (1.0, c1, c3, None, kvh, d, kb, 1.0, 1.0, 0.0, 0.0)


@settings(max_examples=400, deadline=None)
@given(
    c1=st.one_of(st.integers(0, 2**40), st.integers(2**52 - 2**20, 2**53 - 1)),
    c3=st.integers(0, 2**40),
    kvh=st.integers(0, 128),
    d=st.integers(0, 256),
    kb=st.integers(0, 4),
    base=st.integers(0, 2**44),
    nb=st.integers(1, 4096),
    steps=st.integers(1, 40),
    cb=st.floats(1e-15, 1e-6),
)
def test_integral_form_is_the_expression(c1, c3, kvh, d, kb, base, nb, steps, cb):
    """Where the loop takes the integer form (``_integral`` gives it and the run's last attended
    tokens are at most ``_kv_max``), every step's memory term is the bits of the expression it
    replaces; past that bound the loop keeps the expression (nothing to compare)."""
    c = _consts(float(c1), float(c3), float(kvh), float(d), float(kb))
    lin = _integral(c)
    if c1 + c3 >= 2**53:
        assert lin is None  # (c1 + c3 itself would round)
        return
    assert lin is not None  # whole, non-negative, finite factors
    c13, k = lin
    fb = float(nb)
    b0 = float(base + nb)
    kv_max = _kv_max(c13, k)
    # the bound is the largest whole kv whose sum is below 2**53 (in integers)
    assert kv_max == float("inf") if k == 0 else (int(c13) + int(kv_max) * int(k) < 2**53
                                                  <= int(c13) + (int(kv_max) + 1) * int(k))  # fmt: skip
    if not b0 + fb * (steps - 1) <= kv_max:
        return  # (the loop's guard: the expression, as before)
    u = c13 + b0 * k
    du = fb * k
    kv = b0
    for _ in range(steps):
        want = (float(c1) + 2.0 * kv * float(kvh) * float(d) * float(kb) + float(c3)) * cb
        assert _bits(u * cb) == _bits(want)
        u += du
        kv += fb


def test_the_guard_at_2_53_is_needed():
    """A sum at or above 2**53 rounds: the integer form and the expression then differ (a witness),
    and the loop's guard refuses it."""
    c1, c3, kvh, d, kb, kv = 8993722182097631.0, 34566.0, 32.0, 128.0, 2.0, 850115993.0
    c13, k = _integral(_consts(c1, c3, kvh, d, kb))
    assert c1 + 2.0 * kv * kvh * d * kb + c3 != c13 + kv * k
    assert not c13 + kv * k < _EXACT
    assert kv > _kv_max(c13, k)


@pytest.mark.parametrize("bad", [0.5, 0.53125, -1.0, float("inf"), float("nan"), 2.0**53, 1e300])
@pytest.mark.parametrize("where", [1, 2, 4, 5, 6])
def test_integral_refuses_what_it_cannot_bound(bad, where):
    """A fractional (an int4 KV cache's 0.53125 bytes), negative, infinite, NaN or too large factor:
    no integer form (the loop prices by the expression)."""
    c = list(_consts(2048.0, 1024.0, 8.0, 128.0, 2.0))
    c[where] = bad
    assert _integral(tuple(c)) is None


def _old_growth(upto: int, xa: int, n_active: int, cnt: list[int], pending: list[tuple[int, int]], bs: int) -> int:
    """FastEngine._growth_to (no KV cap, nothing late): the formula the fused loop had before it
    counted the pending sequences (those with ``n0 > xa``) as a sorted list."""
    if upto <= xa:
        return 0
    L = upto - xa
    g = n_active * (L // bs)
    r = L % bs
    if r:
        lo = xa % bs
        hi = lo + r
        g += sum(cnt[lo:hi]) if hi <= bs else sum(cnt[lo:]) + sum(cnt[: hi - bs])
    for n0, _ in pending:
        if n0 >= upto:
            break
        g += -(-(upto - n0) // bs)
    return g


@settings(max_examples=300, deadline=None)
@given(bs=st.sampled_from([1, 2, 3, 8, 16, 32]), ops=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6)),
                                                               max_size=120))  # fmt: skip
def test_pending_count_equals_the_sorted_list(bs, ops):
    """Joins (first boundary ``n0`` from 1 to ``bs`` clocks past the decode clock, the allocation
    clock at the decode clock or one past it), finishes, advances of the allocation clock and growth
    queries on both representations: the same blocks for every query and every advance."""
    xa = 0
    # before: residue counts of the sequences with n0 <= xa, and the others sorted
    cnt0, act0, pending = [0] * bs, 0, []
    # now: residue counts of those with n0 < xa + bs, and how many wait at xa + bs
    cnt1, act1, pend = [0] * bs, 0, 0
    members: dict[int, int] = {}
    nxt = 0
    for op, x in ops:
        if op == 0:  # a join at decode clock D = xa or xa - 1
            n0 = xa - (x % 2) + 1 + (x // 2) % bs
            i = nxt
            nxt += 1
            members[i] = n0
            if n0 <= xa:
                cnt0[n0 % bs] += 1
                act0 += 1
            else:
                insort(pending, (n0, i))
            if n0 < xa + bs:
                cnt1[n0 % bs] += 1
                act1 += 1
            else:
                assert n0 == xa + bs
                pend += 1
        elif op == 1 and members:  # a finish
            i = sorted(members)[x % len(members)]
            n0 = members.pop(i)
            if n0 <= xa:
                cnt0[n0 % bs] -= 1
                act0 -= 1
            else:
                pending.remove((n0, i))
            if n0 < xa + bs:
                cnt1[n0 % bs] -= 1
                act1 -= 1
            else:
                pend -= 1
        elif op == 2:  # the allocation clock advances (FastEngine._alloc_to)
            upto = xa + 1 + x % (3 * bs)
            assert _growth(upto, xa, act1, cnt1, pend, bs) == _old_growth(upto, xa, act0, cnt0, pending, bs)
            k = 0
            while k < len(pending) and pending[k][0] <= upto:
                cnt0[pending[k][0] % bs] += 1
                k += 1
            act0 += k
            del pending[:k]
            if pend:
                cnt1[xa % bs] += pend
                act1 += pend
                pend = 0
            xa = upto
        else:  # a growth query
            upto = xa - 2 + x % (4 * bs + 3)
            assert _growth(upto, xa, act1, cnt1, pend, bs) == _old_growth(upto, xa, act0, cnt0, pending, bs)
    assert pend <= len(members) and act1 + pend == len(members) == act0 + len(pending)


@pytest.mark.parametrize("kv_cache, integral", [("fp16", True), ("fp8", True), ("int4", False)])
def test_which_precisions_take_the_integer_form(kv_cache, integral):
    """Llama-2-7B on an H100: fp16 and fp8 KV caches take the integer form (whole bytes per element),
    an int4 cache (0.53125 bytes) does not; so the runs below exercise both."""
    from simkit.cost.device import ComputeDevice
    from simkit.specs.catalog import default_catalog, load_model

    model = load_model("llama-2-7b")
    dev = ComputeDevice.from_gpu(default_catalog().get("gpu", "h100-sxm"))
    it = IterationModel(model, dev, DatasheetEfficiency(), Precision("fp16", "fp16", kv_cache))
    memo = _dec_memo(it, 8)
    assert memo[2]  # memory-bound
    assert (memo[3] is not None) == integral


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(5, 80),
    rate=st.floats(2.0, 800.0),
    blocks_per_prompt=st.tuples(st.integers(1, 8), st.integers(0, 30)),
    out=st.tuples(st.integers(1, 20), st.integers(0, 150)),
    seed=st.integers(0, 10_000),
    seqs=st.integers(2, 48),
    block_size=st.sampled_from([1, 2, 4, 16, 32]),
    odd=st.floats(0.0, 1.0),
    policy=st.sampled_from(["continuous", "chunked_prefill"]),
    replicas=st.integers(1, 2),
    kv_cache=st.sampled_from(["fp16", "int4"]),
    chunk=st.integers(16, 700),
)
def test_prompts_of_whole_blocks(tmp_path, n, rate, blocks_per_prompt, out, seed, seqs, block_size, odd, policy,
                                 replicas, kv_cache, chunk):  # fmt: skip
    """Prompts of a whole number of blocks (a share ``1 - odd`` of them; the rest one token more),
    so that many sequences join with their first boundary a block past the allocation clock (with
    blocks of one token, every one does), an fp16 (integer form) or int4 (the expression) KV cache,
    both policies, one or two replicas: the same outputs and gaps as the stepping path and the
    reference engine."""
    rng = np.random.default_rng(seed)
    m = n * replicas
    times = np.cumsum(rng.exponential(1.0 / (rate * replicas), m))
    lo, span = blocks_per_prompt
    inp = rng.integers(lo, lo + span + 1, m) * block_size + (rng.random(m) < odd)
    outs = rng.integers(out[0], out[0] + out[1] + 1, m)
    wl = native_trace_workload(tmp_path / f"t{seed}_{m}.csv", times, inp, outs)
    kv = {"num_blocks": 60_000 // block_size, "block_size": block_size, "watermark": 0.0}
    data = _data(wl, seed, seqs, 8192, kv, "none", 1, policy, max(chunk, seqs), replicas, "least_outstanding")
    data["plan"]["precision"]["kv_cache"] = kv_cache
    sc = scenario_from_dict(data)
    fused, stepping = run_three(sc)
    # (run_three's assert_same_outputs compares every inter-token gap too: tests/conftest.py)
    assert fused["engine_path"] == fast_path_of(stepping["preemptions"])


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
@pytest.mark.parametrize("kv_cache", ["fp16", "int4"])
def test_long_decode_runs_on_both_forms(policy, kv_cache):
    """Few arrivals and long outputs (decode runs of hundreds of steps, the memory term summed
    across blocks), on both forms of the memory term: the same outputs and gaps."""
    data = _data(uniform_workload(40, 3.0, (20, 900), (50, 600)), 3, 32, 4096,
                 {"num_blocks": 3000, "block_size": 16, "watermark": 0.0}, "none", 1, policy, 256)  # fmt: skip
    data["plan"]["precision"]["kv_cache"] = kv_cache
    sc = scenario_from_dict(data)
    fused, _ = run_three(sc)  # (its assert_same_outputs compares every inter-token gap too)
    assert fused["engine_path"] == FUSED
