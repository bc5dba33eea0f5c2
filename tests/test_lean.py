"""The fused serving loop (engine/lean.py) against the stepping fast path and the reference
engine (the oracles), bit for bit: every per-request column, every iteration row, every summary
number; and its fallback (a run it stops is stepped, and says so)."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.engine.lean import fused_loop_reason
from simkit.engine.state import TBTHistogram
from simkit.policies.batching import with_policy
from simkit.policies.routing import ROUTING_POLICIES
from simkit.scenario import scenario_from_dict
from simkit.simulate import simulate
from tests.conftest import assert_same_outputs, make_scenario, native_trace_workload, uniform_workload

FUSED = "fast (fused loop)"
STOPPED_PREEMPTION = "fast (the fused loop stopped at a decode step short of KV blocks (preemption): stepped)"



def fast_path_of(preemptions: int) -> str:
    """The ``engine_path`` of a plan on the fast path (any number of replicas): the fused loop,
    which stops where the run would preempt (then the run steps)."""
    return STOPPED_PREEMPTION if preemptions else FUSED


EXAMPLES = int(os.environ.get("SIMKIT_HYPOTHESIS_EXAMPLES", "25"))


def _data(workload, seed, seqs, tokens, kv_cache, calibration="none", tp=1, policy="continuous", chunk=512, replicas=1,
          routing="round_robin") -> dict:  # fmt: skip
    data = make_scenario(workload=workload, seed=seed, calibration=calibration)
    batching = {"policy": policy, "max_num_seqs": seqs, "max_num_batched_tokens": tokens, "chunk_size": chunk}
    data["plan"].update({"batching": with_policy(batching, policy, {}), "kv_cache": kv_cache,
                         "parallel": {"replicas": replicas, "tp": tp}, "routing": routing})  # fmt: skip
    return data





def run_three(sc, reference: bool = True) -> tuple[dict, dict]:
    """Run ``sc`` fused (auto), stepping and (optionally) on the reference engine; all equal."""
    fused = simulate(sc)
    stepping = simulate(sc, engine="stepping")
    assert stepping.summary["engine_path"] == "fast"
    assert_same_outputs(fused, stepping)
    if reference:
        ref = simulate(sc, engine="reference")
        assert_same_outputs(fused, ref)
    return fused.summary, stepping.summary


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 80),
    rate=st.floats(0.5, 2000.0),
    inp=st.tuples(st.integers(1, 300), st.integers(0, 2500)),
    out=st.tuples(st.integers(1, 40), st.integers(0, 300)),
    seed=st.integers(0, 10_000),
    seqs=st.integers(1, 96),
    tokens=st.integers(256, 4096),
    blocks=st.integers(40, 2000),
    block_size=st.sampled_from([1, 8, 16, 32]),
    watermark=st.sampled_from([0.0, 0.01, 0.05, 0.3]),
    calibration=st.sampled_from(["none", "auto"]),
    tp=st.sampled_from([1, 2]),
    policy=st.sampled_from(["continuous", "chunked_prefill"]),
    chunk=st.integers(0, 1024),
)
def test_fused_loop_equals_stepping_and_reference(n, rate, inp, out, seed, seqs, tokens, blocks, block_size, watermark,
                                                  calibration, tp, policy, chunk):  # fmt: skip
    """Random single-replica runs of both policies, from idle to bursts (up to 2,000 req/s),
    with KV pools from nearly full (preemption: the fused loop stops and the run steps) to
    ample, prompts beyond the token budget or the pool (rejected at the door), a watermark
    that makes the head request never fit, batch and token limits, chunk budgets from the
    batch limit (decodes alone fill a step) up, one-token chunks over a cache."""
    kv = {"num_blocks": blocks, "block_size": block_size, "watermark": watermark}
    # a chunk budget below max_num_seqs is refused (the decodes of a full batch must fit)
    data = _data(uniform_workload(n, rate, (inp[0], inp[0] + inp[1]), (out[0], out[0] + out[1])), seed, seqs, tokens, kv,
                 calibration, tp, policy, seqs + chunk)  # fmt: skip
    fused, stepping = run_three(scenario_from_dict(data))
    assert fused["engine_path"] == fast_path_of(stepping["preemptions"])


@pytest.mark.parametrize("replicas", [1, 3])
@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
def test_both_outcomes_and_rejections_are_exercised(policy, replicas):
    """A pool far too small for the load stops the fused loop (the stepping path preempts); a
    large one runs it to the end; a high watermark rejects a request that never fits (on one
    replica, and on three behind least_outstanding routing)."""
    work = uniform_workload(150 * replicas, 60.0 * replicas, (50, 900), (20, 300))
    more = {"replicas": replicas, "routing": "least_outstanding"}
    small, _ = run_three(scenario_from_dict(_data(work, 3, 48, 4096, {"num_blocks": 120}, policy=policy, chunk=256, **more)))
    assert small["engine_path"] == STOPPED_PREEMPTION and small["preemptions"] > 10
    large, _ = run_three(scenario_from_dict(_data(work, 3, 48, 4096, {"num_blocks": 4000}, policy=policy, chunk=256, **more)))
    assert large["engine_path"] == FUSED and large["preemptions"] == 0
    # 70 blocks of 16 tokens minus a 30% watermark (21): a prompt needing 50-69 blocks passes the
    # door (it is within the pool) but can never be admitted
    lone = _data(uniform_workload(30 * replicas, 5.0 * replicas, (600, 1250), (1, 10)), 1, 8, 4096,
                 {"num_blocks": 70, "block_size": 16, "watermark": 0.3}, policy=policy, **more)  # fmt: skip
    s, _ = run_three(scenario_from_dict(lone))
    assert s["engine_path"] == FUSED
    assert s["rejection_reasons"]["never_fits"] > 0 and s["rejection_reasons"]["exceeds_kv_capacity"] > 0


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_arrivals_at_step_ends_and_at_one_instant(tmp_path, seed, policy):
    """Ties of arrivals with step ends keep SimPy's order (the wake scheduled first comes
    first): arrivals added exactly at the end of steps (prefill steps and decode runs), with and
    without another arrival during the step, several at one instant, some rejected at the door.
    Each round adds arrivals at an end taken from the previous run; the final run must still
    have several of them exactly at the end of a prefill step and of a decode run."""
    rng = np.random.default_rng(seed)
    times = np.sort(np.concatenate([[0.0, 0.0], rng.uniform(0.0, 2.0, 50)]))
    inp = rng.integers(1, 900, size=len(times))
    inp[rng.random(len(times)) < 0.05] = 5000  # beyond the context: rejected at the door
    out = rng.integers(1, 60, size=len(times))
    data = _data({}, seed, 24, 4096, {"num_blocks": 2000, "block_size": 16}, policy=policy, chunk=256)
    added: set[float] = set()
    last = 0.0
    for k in range(12):
        data["workload"] = native_trace_workload(tmp_path / "ties.csv", times, inp, out)
        rows = simulate(scenario_from_dict(data)).iterations
        prefill = k % 2 == 0
        later = [row for row in rows if row[1] > last and (row[4] > 0) == prefill]
        if len(later) < 3:
            break
        _, start, end = later[2][:3]
        # a prefill step is never cut by an arrival: one within it leaves its end in place
        new = [end] * (1 + k % 3) + ([(start + end) / 2] if prefill and k % 4 == 2 else [])
        times = np.concatenate([times, new])
        order = np.argsort(times, kind="stable")
        more = len(new)
        inp = np.concatenate([inp, rng.integers(1, 900, size=more)])[order]
        out = np.concatenate([out, rng.integers(1, 60, size=more)])[order]
        times = times[order]
        added.add(end)
        last = end
    data["workload"] = native_trace_workload(tmp_path / "ties.csv", times, inp, out)
    sc = scenario_from_dict(data)
    fused, _ = run_three(sc)
    assert fused["engine_path"] == FUSED
    assert fused["requests_rejected"] > 0
    rows = simulate(sc).iterations
    tied_prefill = sum(1 for row in rows if row[2] in added and row[4] > 0)
    tied_decode = sum(1 for row in rows if row[2] in added and row[4] == 0)
    assert tied_prefill >= 2 and tied_decode >= 2, (tied_prefill, tied_decode)


@pytest.mark.parametrize("replicas", [1, 3])
@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
def test_the_histogram_buffer_flushes_at_the_same_points(monkeypatch, policy, replicas):
    """With a 64-gap buffer, gaps are binned in many flushes, some decode runs push more step
    times than the buffer holds (binned directly): bins, sum and maximum identical (one buffer
    for all replicas, filled in the order of their steps' ends)."""
    monkeypatch.setattr(TBTHistogram, "BUF", 64)
    data = _data(uniform_workload(400, 30.0 * replicas, (20, 300), (50, 400)), 11, 256, 8192, {"num_blocks": 6000},
                 policy=policy, replicas=replicas, routing="least_outstanding")  # fmt: skip
    fused, _ = run_three(scenario_from_dict(data))
    assert fused["engine_path"] == FUSED


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
def test_attention_without_a_closed_form(monkeypatch, policy):
    """An efficiency model that prices attention only through its fitted form (no roofline
    coefficients): decode runs are priced on arrays, as on the stepping path."""
    from simkit.cost.efficiency import DatasheetEfficiency

    plain_time, plain_coeffs = DatasheetEfficiency.roofline_time, DatasheetEfficiency.roofline_coeffs

    def roofline_time(self, op_class, flops, bytes_, peak_flops, peak_bw):
        return None if op_class.startswith("attn") else plain_time(self, op_class, flops, bytes_, peak_flops, peak_bw)

    def roofline_coeffs(self, op_class, peak_flops, peak_bw):
        return None if op_class.startswith("attn") else plain_coeffs(self, op_class, peak_flops, peak_bw)

    monkeypatch.setattr(DatasheetEfficiency, "roofline_time", roofline_time)
    monkeypatch.setattr(DatasheetEfficiency, "roofline_coeffs", roofline_coeffs)
    data = _data(uniform_workload(120, 25.0, (20, 900), (1, 200)), 5, 32, 4096, {"num_blocks": 3000}, policy=policy,
                 chunk=128)  # fmt: skip
    fused, _ = run_three(scenario_from_dict(data))
    assert fused["engine_path"] == FUSED


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
def test_cost_tables_growing_during_the_run(monkeypatch, policy):
    """Tables not reserved up front (they grow as steps need longer ones): a step beyond the
    tables the loop prices inline is priced by ``mixed_step_time`` (which grows them), and the
    loop reads the grown tables after it, as the stepping path reads them at every step."""
    from simkit.cost.iteration import IterationModel

    monkeypatch.setattr(IterationModel, "reserve", lambda self, n: None)
    data = _data(uniform_workload(150, 40.0, (20, 1500), (1, 120)), 9, 48, 4096, {"num_blocks": 4000}, policy=policy,
                 chunk=700)  # fmt: skip
    fused, _ = run_three(scenario_from_dict(data), reference=False)
    assert fused["engine_path"] == FUSED


def test_outside_the_domain_another_path_runs():
    data = make_scenario(workload=uniform_workload(30, 20.0, (32, 600), (2, 80)))
    data["plan"].update({"batching": {"policy": "static", "max_num_seqs": 8}, "parallel": {"replicas": 2}})
    sc = scenario_from_dict(data)
    assert simulate(sc).summary["engine_path"] == "fast"  # the stepping fast engine
    assert fused_loop_reason("static", "round_robin") == "batching policy static"
    # every routing policy there is runs in the fused loop; one it does not know would step
    for routing in ROUTING_POLICIES:
        assert fused_loop_reason("chunked_prefill", routing) is None
    assert fused_loop_reason("continuous", "power_of_two") == "routing power_of_two"


def test_a_chrome_trace_runs_the_stepping_path():
    sc = scenario_from_dict(make_scenario(workload=uniform_workload(20, 20.0, (32, 600), (2, 80))))
    assert simulate(sc, trace=True).summary["engine_path"] == "reference (Chrome trace output)"


def test_engine_stepping_is_a_choice_and_others_are_refused():
    from simkit.errors import ScenarioError

    sc = scenario_from_dict(make_scenario())
    assert simulate(sc, engine="stepping").summary["engine_path"] == "fast"
    with pytest.raises(ScenarioError, match="'auto', 'stepping' or 'reference'"):
        simulate(sc, engine="fused")


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
def test_without_an_iteration_log(policy):
    """Studies run without the per-iteration table: the same requests and summary, no rows."""
    sc = scenario_from_dict(_data(uniform_workload(200, 40.0, (20, 900), (1, 200)), 2, 32, 4096, {"num_blocks": 3000},
                                  policy=policy))  # fmt: skip
    fused = simulate(sc, record_iterations=False)
    stepping = simulate(sc, record_iterations=False, engine="stepping")
    assert fused.summary["engine_path"] == FUSED
    assert fused.iterations == [] == stepping.iterations
    assert_same_outputs(fused, stepping)


# ---- several replicas behind a router ---------------------------------------------------------

ROUTINGS = sorted(ROUTING_POLICIES)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 120),
    rate=st.floats(0.5, 4000.0),
    inp=st.tuples(st.integers(1, 300), st.integers(0, 2500)),
    out=st.tuples(st.integers(1, 40), st.integers(0, 300)),
    seed=st.integers(0, 10_000),
    replicas=st.integers(2, 8),
    routing=st.sampled_from(ROUTINGS),
    seqs=st.integers(1, 64),
    tokens=st.integers(256, 4096),
    blocks=st.integers(40, 1500),
    block_size=st.sampled_from([1, 8, 16, 32]),
    watermark=st.sampled_from([0.0, 0.01, 0.05, 0.3]),
    calibration=st.sampled_from(["none", "auto"]),
    tp=st.sampled_from([1, 2]),
    policy=st.sampled_from(["continuous", "chunked_prefill"]),
    chunk=st.integers(0, 1024),
)
def test_several_replicas_equal_stepping_and_reference(n, rate, inp, out, seed, replicas, routing, seqs, tokens, blocks,
                                                       block_size, watermark, calibration, tp, policy, chunk):  # fmt: skip
    """Random runs on 2-8 replicas under every routing policy and both batching policies, from
    idle to bursts (up to 4,000 req/s over the replicas), with KV pools from nearly full (a
    replica would preempt: the fused loop stops and the run steps) to ample, rejections at the
    door and requests that never fit (tp 2 on up to 4 replicas: the node has 8 GPUs)."""
    kv = {"num_blocks": blocks, "block_size": block_size, "watermark": watermark}
    data = _data(uniform_workload(n, rate, (inp[0], inp[0] + inp[1]), (out[0], out[0] + out[1])), seed, seqs, tokens, kv,
                 calibration, tp if replicas <= 4 else 1, policy, seqs + chunk, replicas, routing)  # fmt: skip
    fused, stepping = run_three(scenario_from_dict(data))
    assert fused["engine_path"] == fast_path_of(stepping["preemptions"])


@settings(max_examples=EXAMPLES // 2 + 1, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 60),
    rate=st.floats(1.0, 400.0),
    seed=st.integers(0, 10_000),
    groups=st.lists(st.tuples(st.sampled_from(["h100-sxm", "a100-80gb-sxm", "l4"]), st.integers(1, 3), st.sampled_from([1, 2])),
                    min_size=1, max_size=3, unique_by=lambda g: g[0]),
    routing=st.sampled_from(ROUTINGS),
    policy=st.sampled_from(["continuous", "chunked_prefill"]),
    seqs=st.integers(1, 32),
    calibration=st.sampled_from(["none", "auto"]),
)
def test_fleets_equal_stepping_and_reference(n, rate, seed, groups, routing, policy, seqs, calibration):
    """plan.fleet: groups of different GPUs (each replica priced by its own cost tables, with its
    own KV pool) behind one router; a 128K-context model with prompts up to 45K tokens, some of
    which only the larger pools hold (an L4's holds about 40K tokens: the router chooses among
    the replicas that hold them; with continuous batching, those beyond the token budget are
    rejected at the door)."""
    data = _data(uniform_workload(n, rate, (10, 45_000), (1, 120)), seed, seqs, 2048, {"block_size": 16}, calibration,
                 policy=policy, chunk=seqs + 2048, routing=routing)  # fmt: skip
    data["model"] = "llama-3.1-8b"
    data["plan"]["fleet"] = [{"gpu": g, "replicas": r, "tp": t} for g, r, t in groups]
    fused, stepping = run_three(scenario_from_dict(data))
    assert fused["engine_path"] == fast_path_of(stepping["preemptions"])
    assert sum(g["requests_completed"] for g in fused["fleet_groups"]) == fused["requests_completed"]


@pytest.mark.parametrize("routing", ["round_robin", "least_outstanding"])
def test_a_fleet_routes_long_prompts_to_the_pools_that_hold_them(routing):
    """Two L4s (about 40K tokens of KV each) and two H100s: requests longer than the small pools
    go only to the H100s, the others to all four; exact against the stepping path."""
    data = _data(uniform_workload(120, 20.0, (10, 60_000), (1, 40)), 4, 32, 2048, {"block_size": 16},
                 policy="chunked_prefill", chunk=2048, routing=routing)  # fmt: skip
    data["model"] = "llama-3.1-8b"
    data["plan"]["fleet"] = [{"gpu": "l4", "replicas": 2}, {"gpu": "h100-sxm", "replicas": 2}]
    sc = scenario_from_dict(data)
    fused = simulate(sc)
    stepping = simulate(sc, engine="stepping")
    assert_same_outputs(fused, stepping)
    assert fused.summary["engine_path"] == FUSED
    t = fused.table
    long_ = t.input + t.output > fused.summary["fleet_groups"][0]["kv_blocks_per_replica"] * 16  # beyond an L4's pool
    assert long_.sum() > 10 and set(t.replica[long_].tolist()) == {2, 3}
    assert set(t.replica[~long_].tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
@pytest.mark.parametrize("routing", ["round_robin", "least_outstanding"])
def test_ties_of_arrivals_with_several_replicas_step_ends(tmp_path, routing, policy):
    """Three identical replicas fed identical requests three at a time step in lockstep, so their
    steps end at the same instants: the heap's order among equal times (the event scheduled first
    comes first) decides which replica's end runs first, and whether an arrival at that instant
    sees the replicas' finishes (the counts least_outstanding reads). Arrivals are added exactly
    at such shared ends (three at a time, and finally one more, which breaks the symmetry); the
    final run must have several arrivals at instants where two or more replicas' steps end."""
    rng = np.random.default_rng(5)
    reps = 3
    base = np.sort(np.concatenate([[0.0], rng.uniform(0.0, 1.5, 15)]))
    times = np.repeat(base, reps)
    inp = np.repeat(rng.integers(1, 900, size=len(base)), reps)
    out = np.repeat(rng.integers(1, 60, size=len(base)), reps)
    data = _data({}, 5, 24, 4096, {"num_blocks": 2000, "block_size": 16}, policy=policy, chunk=256, replicas=reps,
                 routing=routing)  # fmt: skip

    def shared_ends(rows: list) -> list[float]:
        by_end: dict[float, set[int]] = {}
        for row in rows:
            by_end.setdefault(row[2], set()).add(row[0])
        return sorted(e for e, who in by_end.items() if len(who) > 1)

    added: list[float] = []
    last = 0.0
    for k in range(8):
        data["workload"] = native_trace_workload(tmp_path / "ties.csv", times, inp, out)
        later = [e for e in shared_ends(simulate(scenario_from_dict(data)).iterations) if e > last]
        if len(later) < 3:
            break
        end = later[2]
        more = reps + (k == 7)
        times = np.concatenate([times, [end] * more])
        order = np.argsort(times, kind="stable")
        inp = np.concatenate([inp, [int(rng.integers(1, 900))] * more])[order]
        out = np.concatenate([out, [int(rng.integers(1, 60))] * more])[order]
        times = times[order]
        added.append(end)
        last = end
    data["workload"] = native_trace_workload(tmp_path / "ties.csv", times, inp, out)
    sc = scenario_from_dict(data)
    fused, _ = run_three(sc)
    assert fused["engine_path"] == FUSED
    ends = set(shared_ends(simulate(sc).iterations))
    assert sum(1 for e in added if e in ends) >= 4, (added, sorted(ends))
