"""One memory accounting for the placement optimiser's LP and the simulator's capacity check
(policies/offload.placed_bytes, static_kv_tokens), the search's refusal of a batch that cannot run
at once, and FlexGen's whole-cache KV decompression (plan.offload.kv_dequant)."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.engine.kvcache import watermark_blocks
from simkit.errors import ScenarioError
from simkit.policies import offload_opt
from simkit.policies.offload import placed_bytes, static_kv_blocks, static_kv_tokens
from simkit.scenario import scenario_from_dict
from simkit.search.offload import confirm_by_simulation, optimize
from simkit.simulate import simulate
from tests.conftest import make_scenario, uniform_workload

PLACES = ("gpu", "cpu", "cxl", "disk")


def _sc(offload, model="opt-6.7b", n=4, inp=64, out=4, hardware="gcp-t4-vm"):
    data = make_scenario(hardware=hardware, model=model,
                         workload={"batch": {"num_prompts": n, "input_tokens": inp, "output_tokens": out}})
    data["plan"].update({"batching": {"policy": "static"}, "offload": offload})
    return data


def _split(a: float, b: float) -> dict[str, float]:
    """Fractions over the four places from two numbers in [0, 1]."""
    g = a
    c = (1.0 - a) * b
    return {"gpu": g, "cpu": c, "cxl": 0.0, "disk": 1.0 - g - c}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.integers(0, 4), st.booleans())
def test_placed_bytes_is_affine_in_the_fractions(a, b, c, d, resident, on_cpu):
    # the LP reads the accounting as a constant plus one coefficient per fraction: that is exact
    # only if the accounting is affine in the fractions (resident layers fixed)
    kw = dict(layer_weight_bytes=3e8, num_layers=4, resident_layers=resident, emb_head_bytes=5e7, act_bytes_gpu=2e7,
              hidden_bytes=3e6, num_gpu_batches=4, compute_on_cpu=on_cpu)

    def total(w, h):
        out = dict.fromkeys(PLACES, 0.0)
        for t, _, nbytes in placed_bytes(w, w, h, **kw):
            out[t] += nbytes
        return out

    w, h = _split(a, b), _split(c, d)
    zero = dict.fromkeys(PLACES, 0.0)
    const = total(zero, zero)
    lin = dict(const)
    for t in PLACES:
        for frac, is_w in ((w, True), (h, False)):
            unit = {**zero, t: 1.0}
            got = total(unit, zero) if is_w else total(zero, unit)
            for t2 in PLACES:
                lin[t2] += frac[t] * (got[t2] - const[t2])
    direct = total(w, h)
    for t in PLACES:
        assert direct[t] == pytest.approx(lin[t], rel=1e-12, abs=1e-3)


def test_resident_layers_stream_no_weights_and_stage_none():
    # every layer resident (an all-GPU plan from the optimiser) with the KV cache in DRAM: no
    # layer's weights stream, so no weight staging buffers are held on the GPU
    owners = {o for _, o, b in placed_bytes({"gpu": 0.0, "cpu": 1.0}, {"gpu": 1.0}, {"gpu": 1.0}, layer_weight_bytes=1e8,
                                            num_layers=8, resident_layers=8, emb_head_bytes=1e7, act_bytes_gpu=1e6,
                                            hidden_bytes=1e5, num_gpu_batches=2, compute_on_cpu=False) if b > 0}
    assert owners == {"weights (resident)", "embedding and LM head", "activations", "hidden states"}
    # one streamed layer stages two copies of its off-GPU share, and its disk share in DRAM too
    got = {(t, o): b for t, o, b in placed_bytes({"gpu": 0.5, "cpu": 0.25, "disk": 0.25}, {"gpu": 1.0}, {"gpu": 1.0},
                                                 layer_weight_bytes=1e8, num_layers=8, resident_layers=7, emb_head_bytes=0.0,
                                                 act_bytes_gpu=0.0, hidden_bytes=0.0, num_gpu_batches=1,
                                                 compute_on_cpu=False)}
    assert got["gpu", "weight prefetch buffers"] == pytest.approx(1e8)
    assert got["cpu", "pinned staging buffers"] == pytest.approx(5e7)


def test_static_kv_tokens_rounds_up_to_whole_blocks():
    assert static_kv_tokens(256, 32, 16) == 288
    assert static_kv_tokens(128, 127, 16) == 256
    assert static_kv_tokens(1, 1, 16) == 16


@given(st.integers(1, 4096), st.integers(1, 2048), st.integers(1, 512), st.sampled_from([0.0, 0.01, 0.05, 0.3]))
def test_static_kv_blocks_is_the_fewest_that_admit_the_batch(batch, prompt, gen, watermark):
    need = batch * static_kv_tokens(prompt, gen, 16) // 16
    n = static_kv_blocks(batch, prompt, gen, 16, watermark)
    assert n - watermark_blocks(n, watermark) >= need
    assert n == need or n - 1 - watermark_blocks(n - 1, watermark) < need


def test_a_static_batch_below_the_watermark_runs_in_two_waves():
    # the engine keeps the watermark free at admission: with exactly the batch's blocks it runs in waves
    def run(blocks):
        data = _sc({"weights": {"gpu": 0.5, "cpu": 0.5}}, n=128, inp=64, out=4)
        data["plan"]["kv_cache"] = {"num_blocks": blocks}
        return simulate(scenario_from_dict(data)).summary["makespan_s"]

    need = 128 * static_kv_tokens(64, 4, 16) // 16
    assert run(static_kv_blocks(128, 64, 4, 16, 0.01)) < run(need)


def test_plans_packed_by_the_lp_fit_the_simulator_at_once():
    # batches whose KV cache does not fit on the GPU: the LP fills the GPU to its capacity row, and
    # the simulator (the same accounting) must then hold every confirmed plan's whole batch at once
    sc = scenario_from_dict(_sc({"weights": {"gpu": 0.0, "cpu": 1.0}}, n=64, inp=256, out=32))
    cands = optimize(sc, prompt_len=256, gen_len=32, gpu_batch_sizes=(16, 32), num_gpu_batches=(1, 2), top=8, confirm=8)
    assert cands
    for c in cands:
        assert "error" not in c.sim, (c.gpu_batch_size, c.num_gpu_batches, c.fractions, c.sim)
    # at least one plan packed the GPU's share of the KV by its capacity row
    assert any(0.0 < c.fractions["c"]["gpu"] < 1.0 for c in cands)


def test_confirmation_refuses_a_batch_that_would_run_in_waves():
    # all on the GPU, 64 prompts of 256: the KV of a few sequences fits, not the batch's
    c = offload_opt.Candidate(64, 1, False, False,
                              {"w": {"gpu": 1.0, "cpu": 0.0, "cxl": 0.0, "disk": 0.0},
                               "c": {"gpu": 1.0, "cpu": 0.0, "cxl": 0.0, "disk": 0.0},
                               "h": {"gpu": 1.0, "cpu": 0.0, "cxl": 0.0, "disk": 0.0}},
                              1.0, 1.0, "compute", 32)
    sc = scenario_from_dict(_sc({"weights": {"gpu": 0.0, "cpu": 1.0}}, n=64, inp=256, out=4))
    got = confirm_by_simulation(sc, c, 256, 4)
    assert "output_tokens_per_s" not in got
    assert "several waves" in got["error"] and "needs 1098 to run at once" in got["error"]


# ---- FlexGen's whole-cache decompression ---------------------------------------------------------
def _deq(offload, inp=64, out=8):
    s = simulate(scenario_from_dict(_sc(offload, inp=inp, out=out))).summary
    return s["offload_compute_s"]["dequant"], s["makespan_s"]


def test_allocated_kv_dequantisation_costs_more_only_for_the_gpu_share():
    base = {"weights": {"gpu": 1.0}, "compress_kv": True, "dequant": "unfused"}
    filled, t_filled = _deq(base)
    alloc, t_alloc = _deq({**base, "kv_dequant": "allocated"})
    assert alloc > filled and t_alloc > t_filled
    # off the GPU the cache arrives as its filled part: nothing changes
    off = {"weights": {"gpu": 1.0}, "kv_cache": {"gpu": 0.0, "cpu": 1.0}, "compress_kv": True, "dequant": "unfused"}
    assert _deq(off) == _deq({**off, "kv_dequant": "allocated"})
    # without a compressed cache the setting has nothing to act on
    plain = {"weights": {"gpu": 0.5, "cpu": 0.5}}
    assert _deq(plain) == _deq({**plain, "kv_dequant": "allocated"})


def test_allocated_kv_dequantisation_needs_a_fixed_batch():
    data = _sc({"weights": {"gpu": 1.0}, "compress_kv": True, "kv_dequant": "allocated"})
    data["workload"] = uniform_workload(4, 1.0, (60, 64), (4, 4))
    with pytest.raises(ScenarioError, match="kv_dequant"):
        simulate(scenario_from_dict(data))


def test_optimiser_prices_allocated_dequantisation_as_the_simulator():
    # the LP's decode compute row gains the extra dequantisation of the GPU share, as the simulator
    def best(kv_dequant):
        sc = scenario_from_dict(_sc({"weights": {"gpu": 0.0, "cpu": 1.0}, "dequant": "unfused", "kv_dequant": kv_dequant},
                                    n=4, inp=256, out=32))
        return optimize(sc, prompt_len=256, gen_len=32, gpu_batch_sizes=(4,), num_gpu_batches=(1,), compress_kv=(True,),
                        top=1, confirm=1)[0]

    a, b = best("filled"), best("allocated")
    assert b.kv_dequant == "allocated" and b.offload_dict()["kv_dequant"] == "allocated"
    assert b.lp_time_s >= a.lp_time_s
    # here the whole-cache dequantisation costs more than copying the filled part from DRAM: the LP
    # moves the compressed cache off the GPU (FlexGen copies an off-GPU share's filled part only)
    assert a.fractions["c"]["gpu"] == 1.0 and b.fractions["c"]["gpu"] == 0.0
    assert b.sim.get("output_tokens_per_s")


# ---- FlexGen's own footprint: its LM-head copy and its CUDA context ------------------------------
def _memory(offload, **execution):
    data = _sc(offload, n=4, inp=256, out=32)
    if execution:
        data["plan"]["execution"] = execution
    return simulate(scenario_from_dict(data)).summary


def test_lm_head_copy_holds_a_second_token_embedding():
    from simkit.specs.catalog import load_model

    m = load_model("opt-6.7b")
    assert m.params_lm_head == 0  # OPT ties its head to the token embedding
    plan = {"weights": {"gpu": 0.5, "cpu": 0.5}}
    a = _memory(plan)["memory"]
    b = _memory({**plan, "lm_head_copy": True})["memory"]
    extra = m.vocab_size * m.hidden_size * 2.0
    for tier in ("hbm", "dram"):
        got = b[tier]["by_owner"]["embedding and LM head"] - a[tier]["by_owner"]["embedding and LM head"]
        assert got == pytest.approx(extra * 0.5)


def test_lm_head_copy_needs_an_offloading_runtime():
    with pytest.raises(ScenarioError, match="lm_head_copy"):
        scenario_from_dict(_sc({"lm_head_copy": True}))


def test_eager_cuda_modules_leave_less_of_a_static_run():
    from simkit.policies.offload import CUDA_CONTEXT_BYTES, CUDA_CONTEXT_EAGER_BYTES
    from simkit.specs.catalog import load_model

    plan = {"weights": {"gpu": 0.5, "cpu": 0.5}}
    lazy = _memory(plan)["kv_blocks_total"]
    eager = _memory(plan, cuda_module_loading="eager")["kv_blocks_total"]
    block = 16 * load_model("opt-6.7b").kv_bytes_per_token(2.0, 1)
    assert lazy - eager == pytest.approx((CUDA_CONTEXT_EAGER_BYTES - CUDA_CONTEXT_BYTES) / block, abs=1.0)
