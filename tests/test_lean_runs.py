"""The fused loop's shortcuts across steps (engine/lean.py) against the stepping fast path and the
reference engine, bit for bit (tests/conftest.py ``assert_same_outputs``): chunk chains (steps
that chunk one prompt alone, ended and the next decided inline), cut by arrivals, by
finishes in the decode set, by a pool too small for the next step (preemption), on one replica
or several, with the histogram buffer flushing inside them and tables that grow under them; the
newcomers' inter-token gaps pushed inline; finishes while a queue waits (batch or memory limits
at a finish, admission the step after)."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from simkit.engine.state import TBTHistogram
from simkit.scenario import scenario_from_dict
from tests.conftest import native_trace_workload, uniform_workload
from tests.test_lean import FUSED, ROUTINGS, _data, fast_path_of, run_three

EXAMPLES = int(os.environ.get("SIMKIT_HYPOTHESIS_EXAMPLES", "25"))


def full_chunk_runs(rows: list, budget: int) -> int:
    """Steps of the iteration log that chunk one prompt by the whole budget left by the decode set
    (a prefill of ``budget - decodes`` tokens, one sequence more than the decodes) right after
    another such step of the same replica with as many decodes: steps a chunk chain continues."""
    last: dict[int, tuple] = {}
    k = 0
    for row in rows:
        rep, _, _, _, pre, nb, seqs, _ = row
        full = pre > 1 and pre == budget - nb and seqs == nb + 1 and nb > 0
        prev = last.get(rep)
        if full and prev is not None and prev[0] and prev[1] == nb:
            k += 1
        last[rep] = (full, nb)
    return k


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 60),
    rate=st.floats(0.5, 400.0),
    inp=st.tuples(st.integers(200, 1500), st.integers(0, 4000)),
    out=st.tuples(st.integers(1, 30), st.integers(0, 300)),
    seed=st.integers(0, 10_000),
    seqs=st.integers(1, 48),
    chunk=st.integers(16, 400),
    blocks=st.integers(300, 3000),
    block_size=st.sampled_from([1, 8, 16, 32]),
    watermark=st.sampled_from([0.0, 0.01, 0.05]),
    calibration=st.sampled_from(["none", "auto"]),
    tp=st.sampled_from([1, 2]),
    replicas=st.integers(1, 3),
    routing=st.sampled_from(ROUTINGS),
)
def test_chunk_runs_equal_stepping_and_reference(n, rate, inp, out, seed, seqs, chunk, blocks, block_size, watermark,
                                                 calibration, tp, replicas, routing):  # fmt: skip
    """Chunked prefill of prompts several chunks long (200-5,500 tokens, budgets of 17-448), so
    that most steps chunk one prompt by the whole budget: runs that arrivals interrupt (idle to
    hundreds of requests a second), that finishes in the decode set end (short outputs), that
    meet a pool too small for the next decode step (the fused loop stops: the run steps), on one
    to three replicas behind every router, tp 1 and 2."""
    kv = {"num_blocks": blocks, "block_size": block_size, "watermark": watermark}
    data = _data(uniform_workload(n * replicas, rate * replicas, (inp[0], inp[0] + inp[1]), (out[0], out[0] + out[1])),
                 seed, seqs, 8192, kv, calibration, tp, "chunked_prefill", seqs + chunk, replicas, routing)  # fmt: skip
    sc = scenario_from_dict(data)
    fused, stepping = run_three(sc)
    assert fused["engine_path"] == fast_path_of(stepping["preemptions"])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(20, 150),
    rate=st.floats(20.0, 3000.0),
    inp=st.tuples(st.integers(1, 400), st.integers(0, 1500)),
    out=st.tuples(st.integers(1, 20), st.integers(0, 200)),
    seed=st.integers(0, 10_000),
    seqs=st.integers(1, 24),
    tokens=st.integers(256, 4096),
    blocks=st.integers(100, 1500),
    block_size=st.sampled_from([1, 16]),
    watermark=st.sampled_from([0.0, 0.05, 0.3]),
    policy=st.sampled_from(["continuous", "chunked_prefill"]),
    replicas=st.integers(1, 3),
)
def test_finishes_while_a_queue_waits(n, rate, inp, out, seed, seqs, tokens, blocks, block_size, watermark, policy,
                                      replicas):  # fmt: skip
    """Bursts beyond what the batch limit or the pool admits: decode runs end at finishes with a
    queue waiting, the head admitted at the next step when the finish frees its batch slot or
    its blocks, else the run goes on (a watermark up to 30%, pools from nearly full, so some runs
    stop at preemption and step)."""
    kv = {"num_blocks": blocks, "block_size": block_size, "watermark": watermark}
    data = _data(uniform_workload(n * replicas, rate, (inp[0], inp[0] + inp[1]), (out[0], out[0] + out[1])), seed, seqs,
                 tokens, kv, "none", 1, policy, seqs + 256, replicas, "least_outstanding")  # fmt: skip
    sc = scenario_from_dict(data)
    fused, stepping = run_three(sc)
    assert fused["engine_path"] == fast_path_of(stepping["preemptions"])


@pytest.mark.parametrize("replicas", [1, 3])
def test_long_chunk_runs(replicas):
    """Prompts of 3,000-6,000 tokens chunked by the 200 tokens a step left by a decode set, arrivals rare
    enough for chains of many steps: over a hundred steps continue a chunk chain, all equal to the stepping
    path's and the reference engine's."""
    data = _data(uniform_workload(80 * replicas, 2.0 * replicas, (3000, 6000), (20, 400)), 4, 16, 8192,
                 {"num_blocks": 7000}, policy="chunked_prefill", chunk=200, replicas=replicas,
                 routing="least_outstanding")  # fmt: skip
    sc = scenario_from_dict(data)
    fused, _ = run_three(sc)
    assert fused["engine_path"] == FUSED
    from simkit.simulate import simulate

    assert full_chunk_runs(simulate(sc).iterations, 200) > 100


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
def test_histogram_buffer_flushes_inside_runs(monkeypatch, policy):
    """A 16-gap buffer: flushes fall inside chunk chains and next to the newcomers' gaps pushed
    inline (one group joined), at the stepping path's points."""
    monkeypatch.setattr(TBTHistogram, "BUF", 16)
    data = _data(uniform_workload(120, 6.0, (300, 2500), (2, 150)), 8, 24, 8192, {"num_blocks": 7000}, policy=policy,
                 chunk=150)  # fmt: skip
    fused, _ = run_three(scenario_from_dict(data))
    assert fused["engine_path"] == FUSED


def test_chunk_runs_with_tables_growing(monkeypatch):
    """Tables not reserved up front: a step priced by ``mixed_step_time`` grows them between
    chunk chains, which read the tables current when they start (a chain leaves a step beyond
    them to that pricing)."""
    from simkit.cost.iteration import IterationModel

    monkeypatch.setattr(IterationModel, "reserve", lambda self, n: None)
    data = _data(uniform_workload(80, 4.0, (200, 3000), (1, 120)), 12, 16, 8192, {"num_blocks": 7000},
                 policy="chunked_prefill", chunk=300)  # fmt: skip
    fused, _ = run_three(scenario_from_dict(data), reference=False)
    assert fused["engine_path"] == FUSED


def test_a_chunk_run_meets_a_full_pool(tmp_path):
    """Eight sequences decoding (one block a token each) while a 3,000-token prompt is chunked
    101 tokens a step: for pools that admit the prompt with little to spare, the decode set's
    growth exhausts the pool at some step of the chunk chain; the fused loop stops there (the
    stepping path preempts) and the run is stepped, identical to the stepping path's."""
    times = np.array([0.0] * 8 + [0.2])
    inp = np.array([10] * 8 + [3000])
    out = np.array([300] * 8 + [5])
    stopped = 0
    for blocks in range(3300, 3560, 20):
        data = _data({}, 0, 9, 8192, {"num_blocks": blocks, "block_size": 1, "watermark": 0.0}, policy="chunked_prefill",
                     chunk=109)  # fmt: skip
        data["workload"] = native_trace_workload(tmp_path / "pool.csv", times, inp, out)
        fused, stepping = run_three(scenario_from_dict(data))
        assert fused["engine_path"] == fast_path_of(stepping["preemptions"])
        stopped += fused["engine_path"] != FUSED
    assert stopped >= 5


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    decoders=st.integers(1, 8),
    dec_out=st.lists(st.integers(1, 400), min_size=8, max_size=8),
    chunk=st.integers(2, 40),
    prompts=st.lists(st.tuples(st.integers(0, 12), st.sampled_from([-1, 0, 1, 2]), st.integers(1, 12),
                               st.sampled_from([0.0, 0.0, 0.003, 0.02, 0.1, 0.4])), min_size=1, max_size=12),  # fmt: skip
    seqs_extra=st.integers(0, 6),
    block_size=st.sampled_from([1, 4, 16]),
    blocks=st.sampled_from([400, 5000]),
    replicas=st.integers(1, 2),
)
@example(decoders=5, dec_out=[400] * 4 + [10] * 4, chunk=20, prompts=[(2, 2, 5, 0.4), (0, 1, 3, 0.0), (0, 1, 3, 0.0)],
         seqs_extra=2, block_size=16, blocks=5000, replicas=1)  # fmt: skip
# (above: four decoders left, a prompt that a chain completes by the whole budget, two one-token prompts waiting: both
# are admitted at the next step)
def test_chunk_chains_at_the_budget_edges(tmp_path_factory, decoders, dec_out, chunk, prompts, seqs_extra, block_size,
                                          blocks, replicas):  # fmt: skip
    """Chunk chains (engine/lean.py: steps that chunk one prompt alone ended and the next decided
    inline) where the decode set's size fixes the budget: prompts of exactly a multiple of the
    budget left by the decoders, one token more or less, or two more (one- and two-token
    remainders), outputs of one token (finished at the first token), decoders finishing in the
    middle of a prompt's chunks (the budget widens), prompts arriving together (an admission
    or a second prompt takes what a completing chunk leaves) or apart, a batch limit that stops
    admissions, pools that run short (preemption: the run steps), one or two replicas."""
    seqs = decoders + 1 + seqs_extra
    left = max(chunk, 1 + seqs_extra)  # the budget the decoders leave (a budget is at least the batch limit)
    times, inp, out = [0.0] * decoders, [3] * decoders, [dec_out[k] for k in range(decoders)]
    t = 0.001
    for mult, delta, o, gap in prompts:
        t += gap
        times.append(t)
        inp.append(max(1, mult * left + delta))
        out.append(o)
    path = tmp_path_factory.mktemp("chains") / "trace.csv"
    data = _data({}, 0, seqs, 8192, {"num_blocks": blocks, "block_size": block_size, "watermark": 0.0},
                 policy="chunked_prefill", chunk=decoders + left, replicas=replicas, routing="round_robin")  # fmt: skip
    data["workload"] = native_trace_workload(path, np.array(times), np.array(inp), np.array(out))
    sc = scenario_from_dict(data)
    fused, stepping = run_three(sc)
    assert fused["engine_path"] == fast_path_of(stepping["preemptions"])


@settings(max_examples=max(EXAMPLES * 8, 200), deadline=None)
@given(
    f4=st.floats(1.0, 1e6),
    cf=st.floats(1e-16, 1e-9),
    kvh=st.integers(1, 128),
    d=st.sampled_from([64.0, 80.0, 128.0, 256.0]),
    kb=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    c1=st.floats(0.0, 1e9),
    c3=st.floats(0.0, 1e9),
    margin=st.sampled_from([-1e-6, -1e-12, 0.0, 1e-15, 1e-12, 1e-9, 1.0000001e-9, 2e-9, 1e-6, 1.0]),
    kvs=st.lists(st.integers(0, 2**40), min_size=1, max_size=20),
)
def test_memory_bound_means_b_at_least_a(f4, cf, kvh, d, kb, c1, c3, margin, kvs):
    """engine/lean.py's decode runs skip the compute term where ``_memory_bound`` holds: then, for
    every token count, the memory term in floats is at least the compute term (so ``b if b > a
    else a`` is ``b``), at and just past the margin the test requires."""
    from simkit.engine.lean import _memory_bound

    cb = f4 * cf * (1.0 + margin) / (2.0 * kvh * d * kb)
    c = (f4, c1, c3, None, float(kvh), d, kb, cf, cb, 4e-6, 1e-3)
    if not _memory_bound(c):
        return
    for kv in [*kvs, 0, 1, 2**53 - 1]:
        kv = float(kv)
        a = f4 * kv * cf
        b = (c1 + 2.0 * kv * kvh * d * kb + c3) * cb
        assert b >= a, (kv, a, b)


def test_memory_bound_rejects_what_it_cannot_bound():
    """Negative, infinite or NaN factors, and a compute term above the memory term, keep the full
    form."""
    from simkit.engine.lean import _memory_bound

    ok = (4.0, 1.0, 1.0, 4.1, 8.0, 128.0, 2.0, 1e-15, 1e-12, 4e-6, 1e-3)
    assert _memory_bound(ok)
    for k, bad in [(0, -1.0), (1, -1.0), (2, float("nan")), (3, -1.0), (4, float("inf")), (7, float("nan")),
                   (8, -1e-12), (8, 1e-30)]:  # fmt: skip
        c = list(ok)
        c[k] = bad
        assert not _memory_bound(tuple(c)), (k, bad)
    # near the subnormal range (a factor or product below 1e-150) the proof's relative bounds fail
    for k, tiny in [(7, 1e-160), (8, 1e-200), (0, 5e-324)]:
        c = list(ok)
        c[k] = tiny
        assert not _memory_bound(tuple(c)), (k, tiny)
    c = list(ok)
    c[7], c[8] = 0.0, 1e-12  # no compute term at all: memory-bound, no claim needed on tiny values
    assert _memory_bound(tuple(c))


def _slopes(data: dict) -> float:
    """The compute term's slope over the memory term's (per attended token) of one decode step of
    ``data``'s plan with the datasheet efficiency."""
    from simkit.deployment import build_deployment

    f4, _, _, _, kvh, d, kb, cf, cb = build_deployment(scenario_from_dict(data)).groups[0].cost.decode_constants(1)[:9]
    return f4 * cf / (2.0 * kvh * d * kb * cb)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    n=st.integers(2, 50),
    rate=st.floats(0.5, 400.0),
    inp=st.tuples(st.integers(1, 3000), st.integers(0, 6000)),
    out=st.tuples(st.integers(1, 40), st.integers(0, 400)),
    seed=st.integers(0, 10_000),
    seqs=st.integers(1, 12),
    slope=st.sampled_from([0.0, 0.5, 0.99, 0.999, 1.0, 1.0005, 1.002, 1.01, 1.1, 3.0]),
    policy=st.sampled_from(["continuous", "chunked_prefill"]),
    replicas=st.integers(1, 2),
)
def test_decode_runs_at_the_compute_bound_edge(monkeypatch, n, rate, inp, out, seed, seqs, slope, policy, replicas):
    """Decode runs priced without the compute term and the longest context's floor (where neither
    can bind, engine/lean.py) against the full form: decode attention's compute efficiency set
    so that its compute term grows ``slope`` times as fast as its memory term (memory-bound at
    every context below 1, crossing at ~2 / (slope - 1) tokens a sequence above it, so that some
    runs cross within their steps; 0: no compute term), batches of 1-12 on Llama-2-7B / H100
    (the floor ``longest * sms / kv_heads`` applies from 4 sequences: one long prompt among
    short ones makes it bind), one or two replicas; every output equal to the stepping path's
    and the reference engine's."""
    import simkit.deployment as dep_mod
    from simkit.cost.efficiency import DatasheetEfficiency

    monkeypatch.setenv("SIMKIT_CACHE_DIR", "")
    data = _data(uniform_workload(n * replicas, rate * replicas, (inp[0], inp[0] + inp[1]), (out[0], out[0] + out[1])),
                 seed, seqs, 8192, {"num_blocks": 7000}, "none", 1, policy, seqs + 256, replicas, "round_robin")  # fmt: skip
    monkeypatch.setattr(dep_mod, "DatasheetEfficiency", DatasheetEfficiency)
    base = DatasheetEfficiency()
    ec = base.compute["attn_decode"]
    if slope > 0:
        ec *= _slopes(data) / slope
    else:
        ec = 1e300  # (a compute term of ~0)
    compute = dict(base.compute, attn_decode=ec)
    monkeypatch.setattr(dep_mod, "DatasheetEfficiency", lambda: DatasheetEfficiency(compute=compute))
    fused, stepping = run_three(scenario_from_dict(data))
    assert fused["engine_path"] == fast_path_of(stepping["preemptions"])


@settings(max_examples=max(EXAMPLES * 8, 200), deadline=None)
@given(xs=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**60), 2**60),
                             st.floats(-1e300, 1e300).map(np.float64)), max_size=300))  # fmt: skip
def test_histogram_buffer_packed_as_numpy_converts_it(xs):
    """The inter-token histogram's buffer becomes an array by ``struct`` (engine/state.py
    ``_doubles``): the same bits as ``np.array(xs, dtype=np.float64)`` for Python floats (NaN,
    infinities, -0.0, subnormals), integers and numpy floats."""
    from simkit.engine.state import _doubles

    a = _doubles(xs)
    b = np.array(xs, dtype=np.float64)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def _decode_rows_shorter_than_a_block(rows: list, block_size: int) -> int:
    """Decode runs of the iteration log of 2 to ``block_size - 1`` steps (no prefill tokens): the
    runs whose block growth the fused loop counts inline (engine/lean.py, FastEngine._alloc_to)."""
    return sum(1 for row in rows if row[4] == 0 and 1 < row[3] < block_size)


def _steps_completing_prompts(rows: list) -> int:
    """Steps of the iteration log chunking two prompts or more (sequences beyond the decodes)."""
    return sum(1 for row in rows if row[4] > 0 and row[6] - row[5] >= 2)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(10, 120),
    rate=st.floats(5.0, 600.0),
    inp=st.tuples(st.integers(1, 200), st.integers(0, 900)),
    out=st.tuples(st.integers(1, 20), st.integers(0, 120)),
    seed=st.integers(0, 10_000),
    seqs=st.integers(2, 40),
    chunk=st.integers(16, 1200),
    pool=st.integers(2_000, 60_000),
    block_size=st.sampled_from([2, 8, 16, 32, 64]),
    policy=st.sampled_from(["continuous", "chunked_prefill"]),
    replicas=st.integers(1, 2),
)
def test_short_decode_runs_and_several_prompts_a_step(n, rate, inp, out, seed, seqs, chunk, pool, block_size, policy,
                                                      replicas):  # fmt: skip
    """Decode runs shorter than a block (arrivals and finishes every few steps; blocks of 2-64
    tokens, so a run's residues wrap past the block's end or not, and sequences that joined with
    room left in their last block are still pending, below or beyond the run's end), whose block
    growth the fused loop counts inline; chunked steps of several short prompts (a budget of up
    to 1,200 tokens), the completed ones leaving the prefilling list as its first entries; pools
    from short (preemption: the run steps) to ample, one or two replicas."""
    kv = {"num_blocks": pool // block_size, "block_size": block_size, "watermark": 0.0}  # (a pool of ``pool`` tokens)
    data = _data(uniform_workload(n * replicas, rate * replicas, (inp[0], inp[0] + inp[1]), (out[0], out[0] + out[1])),
                 seed, seqs, 8192, kv, "none", 1, policy, max(chunk, seqs), replicas, "least_outstanding")  # fmt: skip
    sc = scenario_from_dict(data)
    fused, stepping = run_three(sc)
    assert fused["engine_path"] == fast_path_of(stepping["preemptions"])


@pytest.mark.parametrize("block_size", [8, 32, 64])
def test_short_decode_runs_are_exercised(block_size):
    """The scenario shape above, fixed: it has decode runs shorter than a block and chunked steps of
    several prompts (so the inline block growth and the prefix removal run), equal to the stepping
    path's and the reference engine's."""
    from simkit.simulate import simulate

    data = _data(uniform_workload(150, 60.0, (20, 400), (2, 60)), 3, 24, 8192,
                 {"num_blocks": 64_000 // block_size, "block_size": block_size, "watermark": 0.0}, policy="chunked_prefill",
                 chunk=600)  # fmt: skip
    sc = scenario_from_dict(data)
    fused, _ = run_three(sc)
    assert fused["engine_path"] == FUSED
    rows = simulate(sc).iterations
    assert _decode_rows_shorter_than_a_block(rows, block_size) >= 20
    assert _steps_completing_prompts(rows) >= 20


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
@pytest.mark.parametrize("buf", [16, 1 << 16])
def test_gaps_pushed_as_the_stepping_path_pushes_them(monkeypatch, policy, buf):
    """Every inter-token gap and weight, bit for bit and in order (the chain's and the decode
    runs' newcomers pushed inline, the general step's, through ``_tbt_fresh``), with flushes inside
    chains and runs (a 16-gap buffer) or none before the end (``run_three``'s
    ``assert_same_outputs`` compares the gaps, tests/conftest.py ``assert_same_gaps``)."""
    monkeypatch.setattr(TBTHistogram, "BUF", buf)
    data = _data(uniform_workload(120, 6.0, (300, 2500), (2, 150)), 8, 24, 8192, {"num_blocks": 7000}, policy=policy,
                 chunk=150)  # fmt: skip
    sc = scenario_from_dict(data)
    fused, _ = run_three(sc, reference=False)
    assert fused["engine_path"] == FUSED
