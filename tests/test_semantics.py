"""Simulation semantics that must match real engines and move the right way (issue 10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.policies.batching import with_policy
from simkit.scenario import scenario_from_dict
from simkit.simulate import simulate
from tests.conftest import make_scenario


def _whatif(cal: str, hw: object, tp: int = 2, host_overhead: str | None = None) -> dict:
    data = make_scenario(
        model="llama-2-7b", hardware=hw, calibration=cal,
        workload={"batch": {"num_prompts": 8, "input_tokens": 512, "output_tokens": 24}},
    )  # fmt: skip
    data["plan"]["parallel"] = {"tp": tp}
    if host_overhead is not None:
        data["plan"].setdefault("execution", {})["iteration_overhead"] = host_overhead
    return simulate(scenario_from_dict(data)).summary


_BASE: dict[str, dict] = {}


def _base(cal: str) -> dict:
    if cal not in _BASE:
        _BASE[cal] = _whatif(cal, "dgx-h100")
    return _BASE[cal]


# what each what-if bounds in this workload (8 prompts of 512 tokens, TP=2 over NVLink):
# decode is HBM-bound, prefill compute-bound, every layer all-reduces over NVLink; the
# single node has no network traffic and no CXL or SSD in the path
_MATTERS = {
    ("bandwidth_scale", "hbm"): ("tpot_mean_s",),
    ("bandwidth_scale", "gpu_to_gpu"): ("ttft_mean_s", "tpot_mean_s"),
    ("flops_scale", "gpu"): ("ttft_mean_s",),
}
_IDLE = {("bandwidth_scale", "network"), ("bandwidth_scale", "nvme"), ("bandwidth_scale", "cxl_memory"), ("flops_scale", "cpu")}


@settings(max_examples=24, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    what=st.sampled_from(sorted(_MATTERS) + sorted(_IDLE)),
    factor=st.sampled_from([0.1, 0.5, 0.8, 1.25, 2.0, 8.0]),
    cal=st.sampled_from(["auto", "none"]),
)
def test_whatif_scales_move_results_with_and_without_calibration(what, factor, cal):
    """Any bandwidth or FLOP/s what-if that matters to the workload moves the result in the
    right direction (faster hardware -> lower latency), calibrated (the H100 profile) or not;
    one that does not matter changes nothing."""
    section, key = what
    base = _base(cal)
    s = _whatif(cal, {"preset": "dgx-h100", section: {key: factor}})
    if cal == "auto":
        assert "h100-sxm-vidur" in s["calibration"]
    if what in _IDLE:
        for m in ("ttft_mean_s", "tpot_mean_s", "makespan_s"):
            assert s[m] == base[m], (what, m)
        return
    for m in _MATTERS[what]:
        if factor > 1:
            assert s[m] < base[m] * (1 - 1e-6), (what, factor, m, s[m], base[m])
        else:
            assert s[m] > base[m] * (1 + 1e-6), (what, factor, m, s[m], base[m])


def test_calibrated_whatif_keeps_the_fitted_efficiency():
    """Under a profile a memory-bound what-if scales the memory-bound part: halving HBM
    bandwidth roughly doubles a decode step of a small batch (not exactly: launch overheads
    and the compute-bound LM head do not scale). The profile's host time per iteration does
    not depend on the GPU at all, so it is set to 0 here to see the GPU's part alone."""
    base = _whatif("auto", "dgx-h100", tp=1, host_overhead="0 s")
    slow = _whatif("auto", {"preset": "dgx-h100", "bandwidth_scale": {"hbm": 0.5}}, tp=1, host_overhead="0 s")
    assert 1.6 < slow["tpot_mean_s"] / base["tpot_mean_s"] < 2.0


def test_fitted_collectives_scale_with_the_link():
    from simkit.cost.collectives import CollectiveFit, collective_time

    fit = CollectiveFit("all_reduce", 8, "ring", ((256e3, 50e9, 20e-6), (float("inf"), 300e9, 30e-6)))
    big, small = np.array([64e6]), np.array([1e3])
    t1 = collective_time("all_reduce", big, 8, 1.0, 0.0, fit=fit)
    t2 = collective_time("all_reduce", big, 8, 1.0, 0.0, fit=fit.scaled(2.0))
    assert t2[0] < t1[0] and t2[0] > t1[0] / 2  # the bandwidth term halves, latency stays
    assert collective_time("all_reduce", small, 8, 1.0, 0.0, fit=fit.scaled(2.0))[0] < collective_time("all_reduce", small, 8, 1.0, 0.0, fit=fit)[0]
    assert fit.scaled(1.0) is fit


def test_flops_scale_is_validated():
    from simkit.errors import SimkitError

    for bad, key in (({"tpu": 2.0}, "hardware.flops_scale.tpu"), ({"gpu": 0}, "hardware.flops_scale.gpu"), ({"gpu": True}, "hardware.flops_scale.gpu")):
        with pytest.raises(SimkitError) as e:
            _whatif("none", {"preset": "dgx-h100", "flops_scale": bad})
        assert e.value.key == key


def test_measured_links_scale_with_whatifs():
    """The CPU profile measured this VM's SSD: a faster drive is still faster under it; a faster
    NVMe link does not matter (the virtual drive is slower than its link)."""

    def run(hw: object) -> float:
        d = make_scenario(hardware=hw, calibration="auto", workload={"batch": {"num_prompts": 1, "input_tokens": 64, "output_tokens": 2}})
        d["plan"] = {"batching": {"policy": "static"}, "execution": {"device": "cpu"},
                     "offload": {"weights": {"gpu": 0, "cpu": 0.5, "disk": 0.5}},
                     "precision": {"weights": "bf16", "activations": "bf16", "kv_cache": "bf16"}}  # fmt: skip
        s = simulate(scenario_from_dict(d)).summary
        assert "nvme_read" in s["measured_links"]
        return s["makespan_s"]

    base = run("ci-vm")
    assert run({"preset": "ci-vm", "bandwidth_scale": {"ssd": 2.0}}) < base
    assert run({"preset": "ci-vm", "bandwidth_scale": {"ssd": 0.5}}) > base
    assert run({"preset": "ci-vm", "bandwidth_scale": {"nvme": 2.0}}) == base
    assert run({"preset": "ci-vm", "flops_scale": {"cpu": 2.0}}) < base


# ---- rejections, SLO and overload ----------------------------------------------------------
def test_rejected_requests_miss_the_slo_and_are_counted_by_reason():
    """Requests longer than the model's context are rejected; they count as not meeting the SLO
    (attainment over every submitted request, and percentile bounds with them as infinite)."""
    from simkit.specs.catalog import load_model

    ctx = load_model("llama-2-7b").max_context
    data = make_scenario()
    data["workload"] = {"synthetic": {"num_requests": 40, "arrival": {"process": "poisson", "rate": 4},
                                      "lengths": {"input": {"dist": "fixed", "value": 256},
                                                  "output": {"dist": "fixed", "value": 16}}}}  # fmt: skip
    data["slo"] = {"ttft_p90_s": 10.0, "tpot_p99_s": 10.0}
    ok = simulate(scenario_from_dict(data)).summary
    assert ok["slo_attainment"] == 1.0 and ok["slo_met"] and ok["rejection_reasons"] == {}
    data["workload"]["synthetic"]["lengths"]["input"] = {"dist": "uniform", "low": 100, "high": ctx + 1000}
    res = simulate(scenario_from_dict(data))
    s = res.summary
    n_rej = s["requests_rejected"]
    assert 0 < n_rej < 40
    assert s["rejection_reasons"] == {"exceeds_max_context": n_rej}
    assert s["slo_attainment"] == pytest.approx(s["requests_completed"] / 40)
    assert s["slo_met"] is False  # more than 1% missing: the p99 TPOT bound cannot hold
    df = res.requests_frame()
    assert (df["reject_reason"] == "exceeds_max_context").sum() == n_rej
    assert set(df.loc[~df["rejected"], "reject_reason"]) == {""}
    assert any("rejected" in w and "exceeds_max_context" in w for w in res.warnings)


def test_percentile_with_missing_requests():
    from simkit.metrics import _pct_missing

    x = np.arange(1.0, 101.0)
    assert _pct_missing(x, 0, 90) == pytest.approx(np.percentile(x, 90))
    assert _pct_missing(x, 5, 90) == pytest.approx(np.percentile(np.concatenate([x, np.full(5, 1e9)]), 90))
    assert _pct_missing(x, 5, 99) == float("inf")
    assert _pct_missing(np.array([]), 3, 50) == float("inf")


@pytest.mark.parametrize("rate,overloaded", [(4, False), (40, True)])
def test_overload_warning(rate, overloaded):
    """Quickstart serves ~13 req/s on one H100: 4 req/s is stable, 40 req/s builds a backlog."""
    from simkit.scenario import load_scenario

    sc = load_scenario("workloads/scenarios/quickstart.yaml", [f"workload.synthetic.arrival.rate={rate}", "workload.synthetic.num_requests=400"])
    res = simulate(sc, record_iterations=False)
    s = res.summary
    assert s["overloaded"] is overloaded
    assert any("overloaded" in w for w in res.warnings) is overloaded
    if overloaded:
        # the wait grows by about offered / served - 1 per second of arrivals
        assert max(s["queue_growth"], s["e2e_growth"]) > 0.5
    else:
        assert abs(s["queue_growth"]) < 0.01 and abs(s["e2e_growth"]) < 0.05


def test_batch_at_time_zero_is_not_overloaded():
    s = simulate(scenario_from_dict(make_scenario(workload={"batch": {"num_prompts": 64, "input_tokens": 128, "output_tokens": 8}}))).summary
    assert s["queue_growth"] == 0.0 and s["e2e_growth"] == 0.0 and not s["overloaded"]


# ---- bottleneck ------------------------------------------------------------------------------
def _tp_run(par: dict) -> dict:
    d = make_scenario(model="llama-3-70b", hardware={"preset": "dgx-h100", "num_nodes": 2},
                      workload={"batch": {"num_prompts": 16, "input_tokens": 512, "output_tokens": 64}})  # fmt: skip
    d["plan"]["parallel"] = par
    return simulate(scenario_from_dict(d)).summary


def test_bottleneck_is_collectives_when_tp_crosses_nodes():
    s = _tp_run({"tp": 16, "cross_node_tp": True})
    assert s["collective_share"] > 0.5
    assert s["bottleneck"] == "collectives"
    assert s["resources"]["collectives"]["link"] == "network"
    # and compute inside one node, where NVLink all-reduces are a minor share
    s = _tp_run({"tp": 8})
    assert s["collective_share"] < 0.5 and s["bottleneck"] == "compute"
    assert s["resources"]["collectives"]["link"] == "nvlink"


def test_bottleneck_is_the_busiest_resource():
    from simkit.summary import bottleneck_of

    res = {"compute": {"busy_s": 10.0}, "collectives": {"busy_s": 6.0}, "h2d": {"busy_s": 5.0}}
    assert bottleneck_of(res, [4.0, 3.0], [6.0, 6.0]) == "collectives"
    assert bottleneck_of(res, [7.0], [3.0]) == "compute"
    res["h2d"]["busy_s"] = 8.0
    assert bottleneck_of(res, [7.0], [3.0]) == "h2d"
    assert bottleneck_of({}, [], []) is None


# ---- KV utilisation --------------------------------------------------------------------------
@pytest.mark.parametrize("par", [{"tp": 2, "pp": 2}, {"tp": 1, "pp": 4}, {"tp": 1}])
def test_kv_utilization_mean_within_bounds_and_independent_of_the_log(par):
    """Pipeline engines share a replica's blocks: each block counts once (it used to be counted
    once per virtual engine, 133% seen); the mean does not depend on recording iterations."""
    data = make_scenario(model="llama-2-13b", hardware="dgx-a100", workload={"synthetic": {
        "num_requests": 40, "arrival": {"process": "poisson", "rate": 20},
        "lengths": {"input": {"dist": "fixed", "value": 1500}, "output": {"dist": "fixed", "value": 200}}}})  # fmt: skip
    data["plan"]["parallel"] = par
    data["plan"]["kv_cache"] = {"num_blocks": 400}
    sc = scenario_from_dict(data)
    a = simulate(sc).summary
    b = simulate(sc, record_iterations=False).summary
    assert 0 < a["kv_utilization_mean"] <= a["kv_utilization_peak"] <= 1.0
    assert a["kv_utilization_mean"] == b["kv_utilization_mean"]
    assert a["kv_utilization_peak"] > 0.5  # the pool was really contended


def test_kv_block_seconds_integrates_the_level():
    from simkit.engine.kvcache import KVBlockManager

    now = [0.0]
    kv = KVBlockManager(100, 16, clock=lambda: now[0])
    kv.alloc(10)
    now[0] = 2.0
    kv.alloc(30)
    now[0] = 3.0
    kv.release(40)
    assert kv.block_seconds(5.0) == pytest.approx(10 * 2 + 40 * 1)
    assert kv.peak == 40


# ---- preemption and chunked prefill ---------------------------------------------------------
def _tight(policy: str, preemption: str, **bat: int) -> object:
    data = make_scenario(model="llama-2-7b", workload={"synthetic": {
        "num_requests": 40, "arrival": {"process": "poisson", "rate": 50},
        "lengths": {"input": {"dist": "uniform", "low": 200, "high": 600}, "output": {"dist": "uniform", "low": 100, "high": 300}}}})  # fmt: skip
    data["plan"]["batching"] = with_policy(bat, policy, {})
    data["plan"]["kv_cache"] = {"num_blocks": 160, "preemption": preemption}
    return simulate(scenario_from_dict(data))


@pytest.mark.parametrize("policy", ["continuous", "chunked_prefill"])
def test_recompute_restores_exactly_the_kv_decoding_had(policy):
    """After a recompute preemption the prefill covers the prompt and every generated token
    (it samples the next one), so a request ends with KV = prompt + output - 1 like one that was
    never preempted (it was one token short, and the prefill credited a token it re-derived)."""
    res = _tight(policy, "recompute", chunk_size=512, max_num_seqs=64)
    t = res.table
    assert res.summary["preemptions"] > 0
    done = np.isfinite(t.finish)
    assert done.all()
    assert (t.gen == t.output).all()
    np.testing.assert_array_equal(t.kv_len[done], t.input[done] + t.output[done] - 1)
    # the recomputed tokens: prompt + generated-so-far per preemption, on top of every prompt once
    pre = res.iterations_frame()["prefill_tokens"].sum()
    assert pre > t.input.sum()


def test_chunked_prefill_never_exceeds_its_token_budget():
    res = _tight("chunked_prefill", "recompute", chunk_size=96, max_num_seqs=64)
    it = res.iterations_frame()
    assert (it["prefill_tokens"] + it["decode_seqs"] <= 96).all()
    assert res.summary["requests_completed"] == 40


def test_chunked_prefill_refuses_a_budget_below_max_num_seqs():
    from simkit.errors import ScenarioError

    with pytest.raises(ScenarioError) as e:
        _tight("chunked_prefill", "recompute", chunk_size=32, max_num_seqs=64)
    assert e.value.key == "plan.batching.chunk_size"


def test_swaps_run_before_the_forward_pass_not_under_it():
    """vLLM issues swap-out/in on the model's stream before the forward pass: no compute
    interval of a replica overlaps one of its swap transfers."""
    data = make_scenario(model="llama-2-7b", workload={"synthetic": {
        "num_requests": 40, "arrival": {"process": "poisson", "rate": 50},
        "lengths": {"input": {"dist": "uniform", "low": 200, "high": 600}, "output": {"dist": "uniform", "low": 100, "high": 300}}}})  # fmt: skip
    data["plan"]["batching"] = {"policy": "continuous", "max_num_seqs": 64}
    data["plan"]["kv_cache"] = {"num_blocks": 160, "preemption": "swap"}
    res = simulate(scenario_from_dict(data), trace=True)
    assert res.summary["swaps"] > 0
    ev = res.trace_events
    compute = sorted((e["ts"], e["ts"] + e["dur"]) for e in ev if e["tid"] == "compute")
    swaps = [(e["ts"], e["ts"] + e["dur"]) for e in ev if str(e["name"]).startswith("swap")]
    assert swaps
    starts = np.array([c[0] for c in compute])
    ends = np.array([c[1] for c in compute])
    for s0, s1 in swaps:
        overlap = np.minimum(ends, s1) - np.maximum(starts, s0)
        assert (overlap <= 1e-6).all(), (s0, s1)
    assert (res.table.gen == res.table.output).all()


# ---- decode attention over a context distribution -------------------------------------------
def _cost(model: str = "llama-3.1-8b", gpu: str = "h100-sxm"):  # type: ignore[no-untyped-def]
    from simkit.cost.device import ComputeDevice
    from simkit.cost.efficiency import DatasheetEfficiency
    from simkit.cost.iteration import IterationModel
    from simkit.cost.ops import Precision
    from simkit.specs.catalog import default_catalog, load_model

    dev = ComputeDevice.from_gpu(default_catalog().get("gpu", gpu))
    return IterationModel(load_model(model), dev, DatasheetEfficiency(), Precision("fp16", "fp16", "fp16"))


def test_one_long_sequence_is_a_straggler():
    """64 decodes, one at 128k tokens and 63 at 1k, cost more than 64 of equal length with the
    same total context: each sequence's blocks read its own context, the longest last."""
    it = _cost()
    ones = np.ones(64, dtype=np.int64)
    skew = np.array([131072] + [1024] * 63)
    flat = np.full(64, int(skew.sum() // 64))
    flat[: int(skew.sum() - flat.sum())] += 1
    assert flat.sum() == skew.sum()
    t_skew, t_flat = it.attention_time(ones, skew), it.attention_time(ones, flat)
    assert t_skew > 2 * t_flat
    # the fast-forward path agrees with single steps, and one step of the long sequence alone
    # is never dearer than the batch it straggles in
    fast = it.decode_steps(64, float(skew.sum()), 4, float(skew.max()))
    slow = [it.step_time(ones, skew + k) for k in range(4)]
    np.testing.assert_allclose(fast, slow, rtol=1e-9)
    assert it.attention_time(np.ones(1, dtype=np.int64), skew[:1]) <= t_skew


def test_equal_and_small_batches_keep_the_sum_model():
    it = _cost()
    # a small batch splits every context over many blocks: the sum governs
    few = np.array([131072, 1024, 1024])
    assert it.straggler_tokens(3, few.max() + 1) == 0.0
    # equal contexts: the straggler bound never exceeds the sum for a batch that fills the GPU
    for b in (64, 128, 256):
        assert it.straggler_tokens(b, 4097.0) <= b * 4097.0
    cpu = _cost()
    from dataclasses import replace

    cpu.device = replace(cpu.device, sm_count=0)
    assert cpu.straggler_tokens(64, 1e6) == 0.0


def test_contexts_beyond_the_calibrated_range_warn():
    """The CPU profile measured decode attention up to ~8k tokens per sequence."""
    d = make_scenario(model="llama-3.1-8b", hardware="ci-vm", calibration="auto",
                      workload={"batch": {"num_prompts": 1, "input_tokens": 600, "output_tokens": 2}})  # fmt: skip
    d["plan"] = {"batching": {"policy": "static"}, "execution": {"device": "cpu"},
                 "precision": {"weights": "bf16", "activations": "bf16", "kv_cache": "bf16"}}  # fmt: skip
    res = simulate(scenario_from_dict(d))
    assert not any("beyond" in w for w in res.warnings)
    d["workload"]["batch"]["input_tokens"] = 9000
    res = simulate(scenario_from_dict(d))
    assert res.summary["max_context_tokens"] == 9001
    assert any("attn_decode" in w and "beyond the 8193 tokens" in w for w in res.warnings)


# ---- disaggregated hand-offs ------------------------------------------------------------------
def test_kv_hand_off_joins_decode_at_the_next_iteration():
    """A request whose KV reaches a decode replica that is fast-forwarding a long decode run
    joins at the next iteration: its second token comes at most one step in progress plus one
    step after the hand-off (it used to wait for the next trace arrival or the first finish of
    the batch, then ran a 0-token prefill that stalled the other decodes)."""
    data = make_scenario(model="llama-3-8b", workload={"synthetic": {
        "num_requests": 80, "arrival": {"process": "poisson", "rate": 40},
        "lengths": {"input": {"dist": "uniform", "low": 200, "high": 2000}, "output": {"dist": "lognormal", "median": 8, "sigma": 1.5, "max": 600}}}})  # fmt: skip
    data["plan"]["batching"] = {"policy": "disaggregated", "prefill_replicas": 1, "kv_transfer_link": "nvlink"}
    data["plan"]["parallel"] = {"replicas": 2}
    res = simulate(scenario_from_dict(data))
    t = res.table
    assert (t.gen == t.output).all() and np.isfinite(t.handoff[t.output > 1]).all()
    it = res.iterations_frame()
    dec = it[it["replica"] == 1]
    assert (dec["prefill_tokens"] == 0).all()  # hand-offs are decodes, not 0-token prefills
    step = float(((dec["end_s"] - dec["start_s"]) / dec["steps"]).max())
    two = (t.output == 2) & np.isfinite(t.handoff)
    assert two.sum() >= 3
    delay = t.finish[two] - t.handoff[two]
    assert (delay <= 2 * step + 1e-9).all(), (delay.max(), step)
    # no decode stalls: every inter-token gap is within a step of the decode replica or a
    # hand-off wait (the prefill replica produces only first tokens)
    assert res.summary["tbt_max_s"] <= 2 * step + float(np.nanmax(t.handoff - t.first_token)) + 1e-9


# ---- achieved FLOP/s never above the device's peak -------------------------------------------
def _ci_vm_device():  # type: ignore[no-untyped-def]
    from simkit.cost.device import ComputeDevice
    from simkit.cost.profile import load_cached
    from simkit.specs.catalog import default_catalog

    prof = load_cached("calibration/profiles/ci-vm-cpu")
    cat = default_catalog()
    node = cat.get("node", "ci-vm")
    dev = ComputeDevice.from_cpu(cat.get("cpu", node.cpu), cat.get("memory", node.dram.type), node.num_sockets, 1e12)
    return dev, prof


def test_calibrated_device_takes_the_profiles_peak_for_every_dtype():
    """A catalog peak for a dtype the profile did not measure must not replace the one the
    profile's efficiencies refer to (fp16 on a CPU measured in bf16 runs at the bf16 peak, not
    at a higher catalog fp16 figure)."""
    from dataclasses import replace

    from simkit.calibrate.fit import roof_from_device

    dev, prof = _ci_vm_device()
    fast = replace(dev, peak=dev.peak.model_copy(update={"fp16": 5e12, "int8": 9e12}))
    cal = fast.calibrated(prof.device)
    roof = roof_from_device(prof.device)
    for d in ("fp32", "tf32", "fp16", "bf16", "fp8", "int8"):
        assert cal.peak_flops(d) == pytest.approx(roof.peak(d)), d


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=st.sampled_from(["llama-2-7b", "phi-2", "mixtral-8x7b", "opt-6.7b"]),
    dtype=st.sampled_from(["fp32", "bf16", "fp16", "fp8"]),
    n=st.integers(1, 16),
    decode=st.booleans(),
    q=st.integers(1, 512),
    ctx=st.integers(0, 8000),
)
def test_simulated_flops_never_exceed_the_profiles_peak(model, dtype, n, decode, q, ctx):
    """On ci-vm with its CPU profile, an iteration's FLOPs / its simulated time <= the peak the
    profile measured for the dtype (the roofline every fitted efficiency is relative to)."""
    from simkit.calibrate.fit import roof_from_device
    from simkit.cost.iteration import IterationModel
    from simkit.cost.ops import Precision, forward_ops
    from simkit.specs.catalog import load_model

    dev, prof = _ci_vm_device()
    dev = dev.calibrated(prof.device)
    m = load_model(model)
    p = Precision(dtype, dtype, dtype)
    it = IterationModel(m, dev, prof, p)
    qa = np.ones(n, dtype=np.int64) if decode else np.full(n, q, dtype=np.int64)
    ca = np.full(n, ctx, dtype=np.int64)
    flops = sum(o.flops * o.count for o in forward_ops(m, qa, ca, precision=p))
    assert flops / it.step_time(qa, ca) <= roof_from_device(prof.device).peak(p.compute) * (1 + 1e-9)


# ---- sliding windows ---------------------------------------------------------------------------
def test_hf_sliding_window_is_read():
    from simkit.errors import SpecError
    from simkit.specs.hf import model_from_hf_config
    from tests.test_models import MISTRAL_7B_CONFIG

    assert model_from_hf_config(MISTRAL_7B_CONFIG, where="c.json").sliding_window == 4096
    assert model_from_hf_config({**MISTRAL_7B_CONFIG, "sliding_window": None}, where="c.json").sliding_window is None
    qwen = {**MISTRAL_7B_CONFIG, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "sliding_window": 4096}
    assert model_from_hf_config({**qwen, "use_sliding_window": False}, where="c.json").sliding_window is None
    assert model_from_hf_config({**qwen, "use_sliding_window": True, "max_window_layers": 32}, where="c.json").sliding_window is None
    assert model_from_hf_config({**qwen, "use_sliding_window": True, "max_window_layers": 0}, where="c.json").sliding_window == 4096
    with pytest.raises(SpecError) as e:
        model_from_hf_config({**qwen, "use_sliding_window": True, "max_window_layers": 28}, where="c.json")
    assert e.value.key == "max_window_layers"


def _sw_model(tmp_path, window: int | None) -> str:  # type: ignore[no-untyped-def]
    import yaml

    m = yaml.safe_load(Path("workloads/models/llama-3-8b.yaml").read_text())
    m.update({"name": f"sw-{window}", "max_context": 32768})
    if window is not None:
        m["sliding_window"] = window
    p = tmp_path / f"sw-{window}.yaml"
    p.write_text(yaml.safe_dump(m))
    return str(p)


def test_sliding_window_bounds_kv_and_attention(tmp_path):
    """KV blocks per sequence stop at the window (plus the block being filled) and decode
    attention stops growing with the context, as in vLLM."""
    from simkit.cost.ops import Precision
    from simkit.specs.catalog import load_model

    full, sw = _sw_model(tmp_path, None), _sw_model(tmp_path, 1024)
    res = {}
    for name, path in (("full", full), ("sw", sw)):
        data = make_scenario(model=path, workload={"batch": {"num_prompts": 16, "input_tokens": 6000, "output_tokens": 200}})
        res[name] = simulate(scenario_from_dict(data))
    bs = 16
    assert res["sw"].summary["kv_utilization_peak"] < res["full"].summary["kv_utilization_peak"] / 4
    assert res["sw"].summary["tpot_mean_s"] < res["full"].summary["tpot_mean_s"]
    assert (res["sw"].table.gen == 200).all()
    # the peak block count is that of 16 windows, not 16 contexts
    peak_blocks = res["sw"].summary["kv_utilization_peak"] * res["sw"].summary["kv_blocks_total"]
    assert peak_blocks <= 16 * (-(-(1024 + bs) // bs))
    # decode attention is flat beyond the window; the fast-forward path agrees with single steps
    from simkit.cost.device import ComputeDevice
    from simkit.cost.efficiency import DatasheetEfficiency
    from simkit.cost.iteration import IterationModel
    from simkit.specs.catalog import default_catalog

    it = IterationModel(load_model(sw), ComputeDevice.from_gpu(default_catalog().get("gpu", "h100-sxm")), DatasheetEfficiency(),
                        Precision("fp16", "fp16", "fp16"))  # fmt: skip
    ones = np.ones(3, dtype=np.int64)
    assert it.attention_time(ones, np.array([5000, 9000, 20000])) == it.attention_time(ones, np.array([2000, 3000, 4000]))
    ctx = np.array([100, 1010, 3000])
    fast = it.decode_steps(3, float(ctx.sum()), 30, float(ctx.max()), ctx)
    slow = [it.step_time(ones, ctx + k) for k in range(30)]
    np.testing.assert_allclose(fast, slow, rtol=1e-9)
    # prefill: a long prompt attends at most the window per query
    long_p = it.prefill_attention(np.array([8000]), np.array([0.0]))
    assert long_p < _cost("llama-3-8b").prefill_attention(np.array([8000]), np.array([0.0]))


def test_operator_breakdown_knows_the_sliding_window(tmp_path):
    """`simkit estimate ops` and the report's operator table price attention with the window too:
    their attention operators agree with the engine's iteration model."""
    from simkit.cost.ops import Precision, forward_ops
    from simkit.specs.catalog import load_model

    sw, full = load_model(_sw_model(tmp_path, 1024)), load_model(_sw_model(tmp_path, None))
    prec = Precision("fp16", "fp16", "fp16")

    def attn(model, q, ctx):  # type: ignore[no-untyped-def]
        return {o.name: o for o in forward_ops(model, np.array(q), np.array(ctx), tp=1, precision=prec) if o.name.startswith("attn")}

    # a prompt of 8000 tokens: position p attends min(p, 1024) keys
    w = 1024
    assert attn(sw, [8000], [0])["attn_prefill"].flops == pytest.approx(attn(full, [8000], [0])["attn_prefill"].flops * (w * (w + 1) / 2 + (8000 - w) * w) / (8000 * 8001 / 2))
    # decode over 20k tokens of context costs what a 1024-token context costs
    assert attn(sw, [1, 1], [20000, 3000])["attn_decode"].flops == attn(sw, [1, 1], [1023, 1023])["attn_decode"].flops
    assert attn(full, [1, 1], [20000, 3000])["attn_decode"].flops > attn(full, [1, 1], [1023, 1023])["attn_decode"].flops


def test_continuous_refuses_a_token_budget_below_max_num_seqs():
    from simkit.errors import ScenarioError

    for policy in ("continuous", "disaggregated"):
        data = make_scenario()
        data["plan"]["batching"] = {"policy": policy, "max_num_seqs": 64, "max_num_batched_tokens": 32}
        data["plan"]["parallel"] = {"replicas": 2}
        with pytest.raises(ScenarioError) as e:
            simulate(scenario_from_dict(data))
        assert e.value.key == "plan.batching.max_num_batched_tokens"


# ---- KV heads replicated when tp exceeds them ----------------------------------------------------
def test_replicated_kv_heads_cost_projection_work_and_weights(tmp_path):
    """With tp > num_kv_heads every GPU holds and computes one whole KV head (as vLLM replicates
    them): the K/V projection's output features and weights per GPU are d_head each, not
    kv_dim / tp; up to tp = num_kv_heads nothing changes."""
    import yaml

    from simkit.cost.ops import Precision, token_ops
    from simkit.deployment import weights_per_gpu
    from simkit.specs.catalog import load_model

    m = yaml.safe_load(Path("workloads/models/llama-3-8b.yaml").read_text())
    m.update({"name": "gqa4", "num_kv_heads": 4})
    path = tmp_path / "gqa4.yaml"
    path.write_text(yaml.safe_dump(m))
    model = load_model(str(path))
    prec = Precision("fp16", "fp16", "fp16")

    def qkv(tp: int):  # type: ignore[no-untyped-def]
        return next(o for o in token_ops(model, 16.0, 16.0, tp, prec) if o.name == "qkv_proj")

    d, h = model.d_head, model.hidden_size
    assert qkv(4).shape["n"] == (model.q_dim + 2 * model.kv_dim) / 4  # split exactly
    assert qkv(8).shape["n"] == model.q_dim / 8 + 2 * d  # one whole K and V head per GPU
    assert qkv(8).flops > qkv(4).flops / 2
    split = weights_per_gpu(model, prec, 4, 1, (model.num_layers,))
    rep = weights_per_gpu(model, prec, 8, 1, (model.num_layers,))
    extra = model.num_layers * 2 * h * (8 * d - model.kv_dim) * prec.w_bytes / 8
    assert rep == pytest.approx(split * 4 / 8 + extra)


def test_overload_warning_names_which_delay_grows():
    # the first 200 Azure conversation requests: nothing waits for admission, but the arrival rate
    # doubles between the halves of the window (2.3 -> 5.3 req/s) and the batch grows with it; the
    # warning must not claim a backlog that grows without bound
    from simkit.summary import run_warnings

    s = {"requests_rejected": 0, "overloaded": True, "queue_growth": 0.0003, "e2e_growth": 0.24}
    (w,) = run_warnings(s)
    assert "while the wait for admission does not" in w and "arrival rate rises" in w and "without bound" not in w
    s |= {"queue_growth": 0.8, "e2e_growth": 0.7}
    (w,) = run_warnings(s)
    assert "the wait for admission grows by 0.80 s" in w and "without bound" in w
    assert "the time in the system by 0.70 s per second of arrivals" in w
    # the wait grows while the time in the system shrinks (a study's run with a prefix cache
    # printed "the time in the system by -0.21 s"): no "grows by" a negative number
    s |= {"queue_growth": 0.24, "e2e_growth": -0.21}
    (w,) = run_warnings(s)
    assert "the wait for admission grows by 0.24 s" in w and "without bound" in w
    assert ("grows by 0.24 s per second of arrivals and the time in the system does not (-0.21 s: the later requests "
            "are served faster once admitted)") in w
