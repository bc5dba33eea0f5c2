"""Contracts of simkit's extension points, checked over EVERY registry entry (in the spirit of
scikit-learn's ``check_estimator``): a batching policy, a routing policy, a trace format and an
efficiency model each meet one contract, so registering a new one without meeting it fails here.
The ``check_*`` functions are the contracts; the tests run them over the registries, and show that
a broken entry fails them. Also here: the facts that have one home (KV bytes per token, tier ->
link paths) agree wherever they are used.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args, get_origin

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from simkit.cost.efficiency import DatasheetEfficiency, EfficiencyModel, FitQuality
from simkit.cost.profile import Profile
from simkit.errors import ScenarioError, TraceError
from simkit.policies.batching import BATCHING_POLICIES, BatchingOptions, with_policy
from simkit.policies.routing import ROUTING_POLICIES
from simkit.scenario import Plan, TraceRef, scenario_from_dict
from simkit.simulate import simulate
from simkit.workload.traces import TRACE_FORMATS, detect_format, read_trace
from tests.conftest import make_scenario, uniform_workload

ROOT = Path(__file__).resolve().parents[1]
ROLES = {"both", "prefill", "decode"}


def _simulate_twice(plan: dict[str, Any], n: int = 30) -> dict[str, Any]:
    """Run a small scenario twice; the two summaries must be identical (determinism)."""
    data = make_scenario(model="llama-2-7b", workload=uniform_workload(n, 40.0, (64, 256), (8, 32)))
    data["plan"].update(plan)
    a = simulate(scenario_from_dict(data)).summary
    b = simulate(scenario_from_dict(data)).summary
    a.pop("sim_wall_s", None)
    b.pop("sim_wall_s", None)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True), "same scenario and seed, different summaries"
    return a


def _requests_in_equal_out(s: dict[str, Any], n: int) -> None:
    assert s["requests_total"] == n
    assert s["requests_completed"] == n and s["requests_rejected"] == 0 and s["requests_unfinished"] == 0


def _no_var_keyword(fn: Any, what: str) -> None:
    if fn is object.__init__:  # no constructor of its own: no parameters
        return
    params = inspect.signature(fn).parameters.values()
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params), f"{what} takes **kwargs: use explicit parameters"


# ---- batching policies ----------------------------------------------------------------------
def check_batching_policy(name: str, cls: Any) -> None:
    """The contract of a BATCHING_POLICIES entry (raises AssertionError naming what is missing)."""
    assert getattr(cls, "name", None) == name, "the class's name must be its registry key"
    opts = getattr(cls, "Options", None)
    assert isinstance(opts, type) and issubclass(opts, BatchingOptions), "Options must subclass BatchingOptions"
    tag = opts.model_fields["policy"].annotation
    assert get_origin(tag) is Literal and get_args(tag) == (name,), "Options.policy must be Literal[<name>]"
    assert opts.model_config.get("extra") == "forbid" and opts.model_config.get("frozen"), "Options must forbid unknown keys and be frozen"
    for key, f in opts.model_fields.items():
        assert f.description, f"option {key!r} has no docstring (docs/scenario.md shows it)"
    defaults = opts()
    assert defaults.policy == name and defaults.iteration_tokens() >= 1
    with pytest.raises(ValidationError):
        opts.model_validate({"policy": name, "no_such_option": 1})
    roles = getattr(cls, "roles", ())
    assert roles and set(roles) <= ROLES, f"roles must be a non-empty subset of {sorted(ROLES)}"
    for role in roles:
        step = cls.build(defaults, role)
        assert callable(getattr(step, "next_step", None)) and isinstance(step.admits_on_arrival, bool)
        _no_var_keyword(type(step).__init__, f"{type(step).__name__}.__init__")
    for role in ROLES - set(roles):
        with pytest.raises(ValueError, match=role):
            cls.build(defaults, role)


@pytest.mark.parametrize("name", list(BATCHING_POLICIES))
def test_batching_policy_contract(name):
    check_batching_policy(name, BATCHING_POLICIES[name])


@pytest.mark.parametrize("name", list(BATCHING_POLICIES))
def test_batching_policy_loads_refuses_unknown_options_and_simulates(name):
    cls = BATCHING_POLICIES[name]
    sc = scenario_from_dict(make_scenario(plan={"batching": {"policy": name}}))
    assert isinstance(sc.plan.batching, cls.Options)
    with pytest.raises(ScenarioError, match="did you mean max_num_seqs") as e:
        scenario_from_dict(make_scenario(plan={"batching": {"policy": name, "max_num_seq": 4}}))
    assert e.value.key == "plan.batching.max_num_seq"
    # a small run through it: deterministic, every request in comes out
    s = _simulate_twice({"batching": {"policy": name}, "parallel": {"replicas": len(cls.roles)}})
    _requests_in_equal_out(s, 30)


def test_schema_batching_union_is_the_registry():
    field = Plan.model_fields["batching"]
    assert field.discriminator == "policy"
    assert get_args(field.annotation) == tuple(cls.Options for cls in BATCHING_POLICIES.values())


@pytest.mark.parametrize(("batching", "key", "text"), [
    ({"policy": "continous"}, "plan.batching.policy", "did you mean continuous"),
    ({"policy": "static", "max_num_batched_tokens": 4096}, "plan.batching.max_num_batched_tokens",
     "option of continuous, chunked_prefill, disaggregated, not of static"),
    ({"policy": "continuous", "chunk_size": 1024}, "plan.batching.chunk_size", "option of chunked_prefill, not of continuous"),
    ({"policy": "disaggregated", "kv_transfer_link": "pcie"}, "plan.batching.kv_transfer_link", "'network' or 'nvlink'"),
    # the prefill side of disaggregation is not a policy of its own (alone, no request ever finished)
    ({"policy": "prefill_only"}, "plan.batching.policy", "expected one of static, continuous, chunked_prefill, disaggregated"),
])
def test_bad_batching_fails_at_load_with_key_path(batching, key, text):
    with pytest.raises(ScenarioError, match=re.escape(text)) as e:
        scenario_from_dict(make_scenario(plan={"batching": batching}), where="s.yaml")
    assert e.value.key == key and e.value.where == "s.yaml"


_INT_OPTIONS = sorted({k for cls in BATCHING_POLICIES.values() for k, f in cls.Options.model_fields.items()
                       if k != "policy" and f.annotation in (int, int | None)})


@settings(max_examples=60, deadline=None)
@given(policy=st.sampled_from([*BATCHING_POLICIES, "prefill_only", "bogus"]),
       options=st.dictionaries(st.sampled_from([*_INT_OPTIONS, "max_num_seq", "chunksize"]), st.integers(1, 10**5), max_size=4))
def test_batching_options_load_exactly_when_the_policy_has_them(policy, options):
    data = make_scenario(plan={"batching": {"policy": policy, **options}})
    cls = BATCHING_POLICIES.get(policy)
    if cls is not None and set(options) <= set(cls.Options.model_fields):
        b = scenario_from_dict(data).plan.batching
        assert isinstance(b, cls.Options) and all(getattr(b, k) == v for k, v in options.items())
    else:
        with pytest.raises(ScenarioError) as e:
            scenario_from_dict(data)
        assert e.value.key is not None and e.value.key.startswith("plan.batching")


def test_batching_without_a_policy_is_continuous_and_dotted_overrides_keep_working():
    sc = scenario_from_dict(make_scenario(plan={"batching": {"max_num_seqs": 8}}))
    assert sc.plan.batching.policy == "continuous" and sc.plan.batching.max_num_seqs == 8
    from simkit.scenario import load_scenario

    sc = load_scenario(ROOT / "workloads/scenarios/azure-code-chunked.yaml", ["plan.batching.max_num_seqs=16"])
    assert sc.plan.batching.policy == "chunked_prefill" and sc.plan.batching.max_num_seqs == 16


def test_with_policy_keeps_shared_options_and_drops_the_old_policys():
    out = with_policy({"policy": "chunked_prefill", "max_num_seqs": 64, "chunk_size": 512}, "static", {"batch_size": 8})
    assert out == {"policy": "static", "max_num_seqs": 64, "batch_size": 8}


class _KwargsPolicy:
    name: ClassVar[str] = "kwargs"
    roles: ClassVar[tuple[str, ...]] = ("both",)
    admits_on_arrival: ClassVar[bool] = True

    class Options(BatchingOptions):
        policy: Literal["kwargs"] = "kwargs"
        """The name."""

    def __init__(self, max_num_seqs: int, **_: object) -> None:
        self.max_num_seqs = max_num_seqs

    @classmethod
    def build(cls, options: Any, role: str) -> Any:
        return cls(options.max_num_seqs)

    def next_step(self, r: Any) -> Any:
        raise NotImplementedError


class _NoOptionsPolicy:
    name: ClassVar[str] = "bare"
    roles: ClassVar[tuple[str, ...]] = ("both",)


@pytest.mark.parametrize(("name", "cls", "why"), [
    ("kwargs", _KwargsPolicy, "kwargs"),
    ("bare", _NoOptionsPolicy, "Options"),
    ("other", _KwargsPolicy, "registry key"),
])
def test_a_policy_that_breaks_the_contract_fails_it(name, cls, why):
    with pytest.raises(AssertionError, match=why):
        check_batching_policy(name, cls)


# ---- routing policies -----------------------------------------------------------------------
class _FakeReplica:
    """What a router sees of a replica (engine/replica.py)."""

    def __init__(self, outstanding: int, hit: int) -> None:
        self.outstanding = outstanding
        self.hit = hit

    def prefix_match_len(self, i: int) -> int:
        return self.hit


def check_routing_policy(name: str, cls: Any) -> None:
    assert getattr(cls, "name", None) == name, "the class's name must be its registry key"
    _no_var_keyword(cls.__init__, f"{cls.__name__}.__init__")
    reps = [_FakeReplica(o, h) for o, h in ((3, 0), (1, 2), (1, 2), (0, 1))]
    picks = [cls().choose(i, reps) for i in range(8)]
    router = cls()
    seq = [router.choose(i, reps) for i in range(8)]
    again = cls()
    assert seq == [again.choose(i, reps) for i in range(8)], "a fresh router must choose the same way"
    for k in (*picks, *seq):
        assert isinstance(k, int) and 0 <= k < len(reps)


@pytest.mark.parametrize("name", list(ROUTING_POLICIES))
def test_routing_policy_contract(name):
    check_routing_policy(name, ROUTING_POLICIES[name])


@pytest.mark.parametrize("name", list(ROUTING_POLICIES))
def test_routing_policy_simulates_deterministically(name):
    s = _simulate_twice({"routing": name, "parallel": {"replicas": 3}})
    _requests_in_equal_out(s, 30)


def test_schema_routing_names_are_the_registry():
    assert get_args(Plan.model_fields["routing"].annotation) == tuple(ROUTING_POLICIES)
    with pytest.raises(ScenarioError, match="did you mean least_outstanding") as e:
        scenario_from_dict(make_scenario(plan={"routing": "least_outstandng"}))
    assert e.value.key == "plan.routing"


# ---- trace formats --------------------------------------------------------------------------
# A tiny file of each registered format: (suffix, header lines, three good rows, a bad row).
# A new format needs its sample here (test_every_trace_format_has_a_sample).
SAMPLES: dict[str, tuple[str, list[str], list[str], str]] = {
    "azure": (".csv", ["TIMESTAMP,ContextTokens,GeneratedTokens"],
              ["2023-11-16 18:15:46.6805900,374,44", "2023-11-16 18:15:47.0000000,96,16", "2023-11-16 18:15:49.5000000,800,120"],
              "2023-11-16 18:15:48.0000000,abc,16"),
    "burstgpt": (".csv", ["Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"],
                 ["2,GPT-4,249,82,331,Conversation log", "5,ChatGPT,100,20,120,API log", "9,GPT-4,300,50,350,API log"],
                 "7,GPT-4,x,10,10,API log"),
    "mooncake": (".jsonl", [],
                 ['{"timestamp": 0, "input_length": 600, "output_length": 6, "hash_ids": [0, 1]}',
                  '{"timestamp": 40, "input_length": 300, "output_length": 4, "hash_ids": [0]}',
                  '{"timestamp": 277, "input_length": 900, "output_length": 9, "hash_ids": [2, 3]}'],
                 '{"timestamp": 100, "input_length": "many", "output_length": 4, "hash_ids": [0]}'),
    "native": (".csv", ["arrival_s,input_tokens,output_tokens"],
               ["0.0,128,16", "0.5,256,32", "1.25,64,8"],
               "0.75,-5,8"),
}


def test_every_trace_format_has_a_sample():
    assert set(SAMPLES) == set(TRACE_FORMATS)


def test_schema_trace_formats_are_the_registry():
    assert get_args(TraceRef.model_fields["format"].annotation) == ("auto", *TRACE_FORMATS)


def check_trace_format(name: str, tmp: Path) -> None:
    cls = TRACE_FORMATS[name]
    assert cls.name == name, "the reader's name must be its registry key"
    suffix, header, rows, bad = SAMPLES[name]
    good = tmp / f"good{suffix}"
    good.write_text("\n".join([*header, *rows]) + "\n")
    assert detect_format(good) == name, "sniff must recognise the format's own files"
    for fmt in (name, "auto"):
        r = read_trace(good, format=fmt)
        assert len(r) == 3 and r.meta.get("format") in (name, None)
        assert r.arrival_s.dtype == np.float64 and np.all(np.isfinite(r.arrival_s)) and np.all(np.diff(r.arrival_s) >= 0)
        assert r.arrival_s[0] == 0.0  # relative to the first request
        for col in (r.input_tokens, r.output_tokens):
            assert np.issubdtype(col.dtype, np.integer) and np.all(col >= 1)
    # a bad line fails naming its 1-based line number (a header is line 1), or is skipped
    bad_at = len(header) + 2
    broken = tmp / f"bad{suffix}"
    broken.write_text("\n".join([*header, rows[0], bad, *rows[1:]]) + "\n")
    with pytest.raises(TraceError, match=f"line {bad_at}") as e:
        read_trace(broken, format=name)
    assert e.value.where is not None and e.value.where.endswith(broken.name)
    assert len(read_trace(broken, format=name, on_bad_line="skip")) == 3


@pytest.mark.parametrize("name", list(TRACE_FORMATS))
def test_trace_format_contract(name, tmp_path):
    check_trace_format(name, tmp_path)


# ---- efficiency models ----------------------------------------------------------------------
def _protocol_members() -> list[str]:
    return [n for n, v in vars(EfficiencyModel).items()
            if not n.startswith("_") and (inspect.isfunction(v) or isinstance(v, property))]


def check_efficiency_model(model: Any) -> None:
    cls = type(model)
    assert isinstance(model, EfficiencyModel)
    for name in _protocol_members():  # implemented, not the protocol's stub
        assert vars(EfficiencyModel)[name] is not inspect.getattr_static(cls, name, None), f"{cls.__name__} lacks {name}"
    assert isinstance(model.name, str) and model.name
    assert model.path is None or isinstance(model.path, Path)
    q = model.fit_quality()
    if q is not None:
        assert all(isinstance(v, FitQuality) for v in q.values())
        assert set(q) == {c for c in q if model.is_measured(c)}


def _efficiency_instances() -> list[Any]:
    return [DatasheetEfficiency(), Profile.load(ROOT / "calibration/profiles/h100-sxm-vidur/profile.yaml", with_samples=False)]


def test_every_efficiency_model_class_is_checked():
    assert set(EfficiencyModel.__subclasses__()) == {type(m) for m in _efficiency_instances()}


@pytest.mark.parametrize("model", _efficiency_instances(), ids=lambda m: type(m).__name__)
def test_efficiency_model_contract(model):
    check_efficiency_model(model)


def test_datasheet_is_not_fitted_and_a_profile_reports_its_fit():
    assert DatasheetEfficiency().fit_quality() is None and DatasheetEfficiency().path is None
    prof = _efficiency_instances()[1]
    assert prof.path is not None and prof.path.name == "profile.yaml"
    assert set(prof.fit_quality() or {}) == {c for c in ("gemm", "attn_prefill", "attn_decode", "elementwise") if prof.is_measured(c)}


def test_an_efficiency_model_missing_a_member_fails_the_contract():
    class Partial(DatasheetEfficiency):
        pass

    Partial.fit_quality = EfficiencyModel.fit_quality  # type: ignore[method-assign]
    with pytest.raises(AssertionError, match="fit_quality"):
        check_efficiency_model(Partial())


def test_no_feature_probing_of_efficiency_models():
    """Optional features of an efficiency model are declared protocol members, not probed."""
    probe = re.compile(r"(getattr|hasattr)\(\s*(eff|cpu_eff|ceff|profile|model_eff|self\.eff)\b")
    files = [*(ROOT / "simkit/cost").glob("*.py"), *(ROOT / "simkit/engine").glob("*.py"),
             *[ROOT / "simkit" / f for f in ("simulate.py", "deployment.py", "summary.py") if (ROOT / "simkit" / f).exists()]]
    hits = [f"{f.relative_to(ROOT)}:{n}" for f in files for n, line in enumerate(f.read_text().splitlines(), 1) if probe.search(line)]
    assert not hits, hits


# ---- one home per fact ----------------------------------------------------------------------
def test_kv_bytes_per_token_replicates_kv_heads_beyond_tp():
    from simkit.specs.catalog import load_model

    m = load_model("llama-3-70b")  # 80 layers, 8 KV heads of 128
    assert m.kv_bytes_per_token(2.0, tp=1) == 2 * 80 * 8 * 128 * 2
    assert m.kv_bytes_per_token(2.0, tp=4) == 2 * 80 * 2 * 128 * 2
    assert m.kv_bytes_per_token(2.0, tp=16) == 2 * 80 * 1 * 128 * 2  # each GPU holds a whole (replicated) head
    assert m.kv_bytes_per_token(1.0, tp=8, layers=40) == 2 * 40 * 1 * 128


def test_memory_plan_offload_layout_and_optimiser_use_the_one_kv_number():
    from simkit.cost.device import ComputeDevice
    from simkit.cost.ops import Precision
    from simkit.policies.offload import build_offload_layout
    from simkit.simulate import plan_memory
    from simkit.specs.catalog import load_model
    from simkit.specs.node import resolve_node

    model = load_model("llama-3-8b").model_copy(update={"num_kv_heads": 2})  # tp=8 > 2 KV heads: replicated
    prec = Precision("fp16", "fp16", "fp16", 128)
    sc = scenario_from_dict(make_scenario(model="llama-3-8b"))
    dev = ComputeDevice.from_gpu(resolve_node("dgx-h100").gpu)
    mem = plan_memory(sc, model, dev, prec, 8, (16, 16), check=False)
    assert mem.kv_bytes_per_token_per_gpu == model.kv_bytes_per_token(prec.kv_bytes, tp=8, layers=16) == 2 * 16 * 1 * 128 * 2
    lay = build_offload_layout(sc.plan.offload, model, prec, 8, False)
    assert lay.kv_bytes_per_token_layer == model.kv_bytes_per_token(prec.kv_bytes, tp=8, layers=1) * 8 == 2 * 8 * 128 * 2


def test_tier_paths_cross_only_links_the_simulator_builds():
    from simkit.cost.links import link_rates
    from simkit.specs.node import resolve_node
    from simkit.specs.tiers import (
        CPU_READ_PATH,
        CPU_WRITE_PATH,
        LINK_DIRECTIONS,
        OFF_GPU,
        PLACES,
        READ_PATH,
        STAGED_TIERS,
        TIER_OF,
        WRITE_PATH,
    )

    assert set(PLACES) == set(TIER_OF) and set(OFF_GPU) == set(PLACES) - {"gpu"} and set(STAGED_TIERS) <= set(OFF_GPU)
    for paths in (READ_PATH, WRITE_PATH, CPU_READ_PATH, CPU_WRITE_PATH):
        assert set(paths) == set(OFF_GPU)
        assert all(hop in LINK_DIRECTIONS for path in paths.values() for hop in path)
    node = resolve_node("h100-pcie-cxl-server")
    rates = link_rates(node, 1)
    tiers = node.tiers()
    for place in OFF_GPU:
        if TIER_OF[place] in tiers:
            for hop in (*READ_PATH[place], *WRITE_PATH[place]):
                assert hop in rates, (place, hop)


def test_prefix_cache_moves_cross_the_tier_paths():
    from simkit.scenario import load_scenario
    from simkit.specs.tiers import tier_path

    assert tier_path("dram", "hbm") == ("h2d",) and tier_path("ssd", "hbm") == ("nvme_read", "h2d")
    assert tier_path("hbm", "dram") == ("d2h",) and tier_path("hbm", "ssd") == ("d2h", "nvme_write")
    assert tier_path("dram", "cxl") == ("cxl_write",) and tier_path("dram", "ssd") == ("nvme_write",)
    # CXL -> SSD goes through host DRAM: read from CXL, then written to the SSD (it used to cross
    # only the NVMe write, as if the bytes came from nowhere)
    assert tier_path("cxl", "ssd") == ("cxl_read", "nvme_write")
    sc = load_scenario(ROOT / "workloads/scenarios/mooncake-prefix-cache.yaml", [
        "hardware=h100-pcie-cxl-server", "plan.prefix_cache.tiers=[hbm, cxl, ssd]", "plan.prefix_cache.capacity={cxl: 1 GiB}",
        "plan.parallel.replicas=1", "workload.limit=60", "calibration=none"])
    b = simulate(sc).summary["link_bytes"]
    # nothing is fetched back (no h2d), so CXL is read only by demotions to the SSD, which write the same bytes
    assert b["h2d"] == 0 and b["nvme_write"] > 0 and b["cxl_read"] == b["nvme_write"]
