"""The scenario: plain data (YAML) -> a validated, immutable object. The one place the schema lives.

A scenario is a nested mapping with top-level keys ``hardware``, ``model``, ``workload``,
``plan``, ``calibration``, ``slo``, ``seed`` (``docs/scenario.md`` documents every key).
:func:`apply_overrides` sets dotted keys (``plan.batching.max_num_seqs=64``) on the plain data
before validation, so studies and sweeps are thin layers over the same call.
"""

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from simkit.cachedir import in_one_run
from simkit.errors import ScenarioError, SimkitError
from simkit.policies.batching import BATCHING_POLICIES, ContinuousBatching
from simkit.policies.routing import ROUTING_POLICIES
from simkit.specs.base import Bytes, Seconds, Section, format_validation_error
from simkit.specs.validated import cached, constructed_default
from simkit.specs.yamlio import check_data, load_yaml, parse_yaml_value
from simkit.workload.base import MAX_TOKENS
from simkit.workload.traces import TRACE_FORMATS

_S = Section


RoutingName = Literal[tuple(ROUTING_POLICIES)]  # type: ignore[valid-type]
"""A registered routing policy's name (the schema follows policies/routing.py's registry)."""

TraceFormat = Literal[("auto", *TRACE_FORMATS)]  # type: ignore[valid-type]
"""``auto`` or a registered trace reader's name (the schema follows workload/traces.py's registry)."""

DtypeName = Literal["fp32", "fp16", "bf16", "fp8", "int8", "int4"]


class FixedBatch(_S):
    """A fixed batch of ``num_prompts`` prompts, all arriving at t=0."""

    num_prompts: int = Field(ge=1, le=10**7)
    """Number of prompts."""
    input_tokens: int = Field(ge=1, le=MAX_TOKENS)
    """Prompt length of each."""
    output_tokens: int = Field(ge=1, le=MAX_TOKENS)
    """Tokens each generates."""


class LengthDist(_S):
    """A token-length distribution (see docs/traces.md for the parameterisations)."""

    dist: Literal["fixed", "uniform", "lognormal", "zipf"]
    """fixed (value), uniform (low..high inclusive), lognormal (median or mean, sigma of ln X), zipf (a, max)."""
    value: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    """fixed: the length."""
    low: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    """uniform: smallest length."""
    high: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    """uniform: largest length."""
    mean: float | None = None
    """lognormal: mean length (alternative to median)."""
    median: float | None = None
    """lognormal: median length e^mu."""
    sigma: float | None = None
    """lognormal: standard deviation of ln(length)."""
    a: float | None = None
    """zipf: exponent (> 0)."""
    max: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    """Clamp lengths to at most this (required for zipf)."""
    min: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    """Clamp lengths to at least this (default 1)."""


class TraceRef(_S):
    path: str
    """Trace file; a relative path resolves against the scenario file's folder, else the working folder, else a shipped trace of that file name (workloads/traces)."""
    format: TraceFormat = "auto"
    """Reader to use; auto sniffs the first lines."""


class Lengths(_S):
    input: LengthDist | None = None
    """Prompt lengths."""
    output: LengthDist | None = None
    """Output lengths."""
    trace: TraceRef | None = None
    """Resample (input, output) pairs jointly from this trace instead."""

    @model_validator(mode="after")
    def _one(self) -> "Lengths":
        if self.trace is None and (self.input is None or self.output is None):
            raise ValueError("give lengths.input and lengths.output, or lengths.trace")
        return self


class Arrival(_S):
    process: Literal["poisson", "gamma", "fixed_rate", "all_at_once"]
    """Arrival process: poisson, gamma (bursty, with cv), fixed_rate, or all_at_once (t=0)."""
    rate: float | None = Field(default=None, ge=1e-6, le=1e7)
    """Requests per second, 1e-6 to 1e7 (not needed for all_at_once)."""
    cv: float | None = Field(default=None, ge=1e-3, le=100)
    """Coefficient of variation of inter-arrival gaps (gamma only; 1 = Poisson)."""

    @model_validator(mode="after")
    def _rate(self) -> "Arrival":
        if self.process != "all_at_once" and self.rate is None:
            raise ValueError(f"arrival.rate is required for process {self.process!r}")
        if self.process == "gamma" and self.cv is None:
            raise ValueError("arrival.cv is required for process 'gamma'")
        return self


class Synthetic(_S):
    num_requests: int = Field(ge=1, le=10**7)
    """Requests to generate."""
    arrival: Arrival
    """When they arrive."""
    lengths: Lengths
    """How long their prompts and outputs are."""


class TraceWorkload(TraceRef):
    window: tuple[float, float] | None = None
    """(start_s, end_s) on the trace's own clock, relative to its first request."""

    @field_validator("window", mode="before")
    @classmethod
    def _window_list(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v  # YAML has lists, not tuples

    @field_validator("window")
    @classmethod
    def _window_order(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 <= v[0] < v[1]:
            raise ValueError(f"expected [start_s, end_s] with 0 <= start_s < end_s, got {list(v)}")
        return v
    rate_scale: float = Field(default=1.0, ge=1e-4, le=1e4)
    """Arrival-rate multiplier, 1e-4 to 1e4: 2.0 replays twice as fast."""
    sample: int | None = Field(default=None, ge=1)
    """Keep a seeded random sample of this many requests (time order kept)."""
    model_filter: str | None = None
    """BurstGPT: keep rows of this Model (e.g. ChatGPT, GPT-4)."""
    on_bad_line: Literal["fail", "skip"] = "fail"
    """A malformed line fails the run naming its line number, or is skipped and counted."""
    keep_failed: bool = False
    """BurstGPT: keep failed requests (0 response tokens) as 1-token requests."""


class Workload(_S):
    batch: FixedBatch | None = None
    """A fixed batch at t=0."""
    synthetic: Synthetic | None = None
    """Generated arrivals and lengths."""
    trace: TraceWorkload | None = None
    """A replayed trace."""
    limit: int | None = Field(default=None, ge=1)
    """Keep the first N requests."""

    @model_validator(mode="after")
    def _exactly_one(self) -> "Workload":
        given = [k for k in ("batch", "synthetic", "trace") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of workload.batch, workload.synthetic, workload.trace (got {given or 'none'})")
        return self


class Precision(_S):
    weights: DtypeName = "bf16"
    """Storage dtype of weights (int4 is group-quantised and dequantised for compute)."""
    activations: Literal["fp32", "fp16", "bf16", "fp8", "int8"] = "bf16"
    """Dtype of activations; matmuls run in it (fp8/int8 only with fp8/int8 weights)."""
    kv_cache: DtypeName = "bf16"
    """Storage dtype of the KV cache."""
    group_size: int = Field(default=128, ge=8)
    """Group size of int4 quantisation (one fp16 scale and zero point per group)."""


BatchingOptions = Annotated[
    Union[tuple(cls.Options for cls in BATCHING_POLICIES.values())],  # noqa: UP007 (built from the registry)
    Field(discriminator="policy"),
]
"""``plan.batching``: the options of one registered batching policy, chosen by ``policy``."""

class KVCache(_S):
    block_size: int = Field(default=16, ge=1)
    """Tokens per KV block (paged attention)."""
    num_blocks: int | None = Field(default=None, ge=1)
    """Override the computed block count (real engines report their own)."""
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    """Fraction of each GPU's memory the engine may use (vLLM's gpu_memory_utilization). A static run (offloaded or not) that does not set it may use the GPU's memory less the CUDA context (docs/offloading.md)."""
    watermark: float = Field(default=0.01, ge=0, lt=1)
    """Fraction of blocks kept free when admitting new requests."""
    preemption: Literal["recompute", "swap"] = "recompute"
    """What happens to the newest running request when blocks run out: recompute its KV later, or swap it to CPU memory over PCIe. With `swap`, a request holding shared prefix-cache blocks, or one whose blocks do not fit in the free swap space, is recomputed instead, and the run warns with the counts."""
    swap_space: Bytes | None = None
    """CPU memory for swapped blocks (default: 4 GiB per GPU, as vLLM)."""
    activation_reserve: Bytes | None = None
    """Memory held for activations and workspace (default: computed from max_num_batched_tokens)."""


class PrefixCache(_S):
    enabled: bool = False
    """Reuse KV of shared prompt prefixes (keyed by Mooncake hash_ids or native prefix_id)."""
    tiers: list[Literal["hbm", "dram", "cxl", "ssd"]] = ["hbm", "dram", "cxl", "ssd"]
    """Tiers the cache may use, fastest first; tiers the node lacks are skipped."""
    capacity: dict[str, Bytes] = {}
    """Bytes of each lower tier given to the cache (default: half the DRAM/CXL, 10% of the SSD)."""


class OffloadShare(_S):
    gpu: float = Field(default=1.0, ge=0, le=1)
    """Fraction in the compute device's memory (HBM; DRAM when computing on the CPU)."""
    cpu: float = Field(default=0.0, ge=0, le=1)
    """Fraction in host DRAM."""
    cxl: float = Field(default=0.0, ge=0, le=1)
    """Fraction in CXL memory."""
    disk: float = Field(default=0.0, ge=0, le=1)
    """Fraction on NVMe SSD."""

    @model_validator(mode="after")
    def _sum(self) -> "OffloadShare":
        s = self.gpu + self.cpu + self.cxl + self.disk
        if abs(s - 1.0) > 1e-6:
            raise ValueError(f"fractions gpu+cpu+cxl+disk must sum to 1 (got {s:g})")
        return self


class KVSpill(_S):
    after_tokens: int = Field(ge=1)
    """Tokens of each sequence whose KV stays in the compute device's memory; later ones spill."""
    tier: Literal["cpu", "cxl", "disk"] = "cpu"
    """Where the spilled KV lives (read back, or attended on the CPU, at every decode step)."""


class Offload(_S):
    weights: OffloadShare = constructed_default(OffloadShare)
    """Where each streamed layer's weights live (fractions summing to 1)."""
    kv_cache: OffloadShare = constructed_default(OffloadShare)
    """Where each layer's KV lives, split by KV heads (head-wise offload)."""
    activations: OffloadShare = constructed_default(OffloadShare)
    """Where hidden states live between layers."""
    gpu_batch_size: int | None = Field(default=None, ge=1)
    """Sequences computed together per layer (FlexGen's GPU batch)."""
    num_gpu_batches: int = Field(default=1, ge=1)
    """GPU batches per block sharing one load of each layer's weights (zig-zag schedule)."""
    overlap: bool = True
    """Prefetch the next layer's weights/KV while the current layer computes."""
    decode_overlap: bool = True
    """In decode steps, copy the next layer's weights/KV to the GPU while the current layer computes (false: the copy follows the compute, as FlexGen's runtime does: docs/offloading.md)."""
    pinned: bool = True
    """Pinned host buffers (pageable copies run at the measured pageable/pinned ratio, or 60% uncalibrated, and are staged by the host thread: docs/offloading.md)."""
    cpu_attention: bool = False
    """Compute decode attention of off-GPU KV heads on the CPU, where that KV lives."""
    compress_weights: bool = False
    """Store weights as group-wise int4 (dequantised on the GPU per layer)."""
    compress_kv: bool = False
    """Store the KV cache as group-wise int4."""
    host_kv_dtype: Literal["kv_cache", "fp32"] = "kv_cache"
    """Element type of the KV cache held in host DRAM: ``kv_cache``, plan.precision.kv_cache; ``fp32``, 4 bytes (ZeRO-Inference's Hugging Face fork allocates its host cache in fp32: host capacity x2, CPU attention reads it without an upcast: docs/offloading.md). fp32 needs ``cpu_attention`` and the off-GPU KV in DRAM only."""
    host_temporaries: Literal["workspace", "fresh"] = "workspace"
    """Where the host attention code writes its fp32 and per-query-head copies of the cached KV (cpu_attention): workspace, buffers allocated once and reused (FlexGen's attention_compute_workspace); fresh, new tensors every layer and step (the Hugging Face forks ZeRO-Inference ships: ``.float()``, ``repeat_kv``), which the host faults in and zero-fills at its measured first-touch rate (the host CPU's calibration profile's device.host_first_touch, else the node preset's measured.host_first_touch_bandwidth, else refused; the run's calibration line names which: docs/offloading.md). Needs cpu_attention and a plan computing on the GPU."""
    dequant: Literal["fused", "unfused"] = "fused"
    """How int4 values are (de)compressed on the GPU: fused, one elementwise pass; unfused, FlexGen's PyTorch path (separate unpack, scale and offset kernels: docs/offloading.md)."""
    disk_relay: Literal["native", "fp16"] = "native"
    """How a disk share reaches the GPU: native, staged through pinned DRAM in its own element type (DeepSpeed's swap buffers); fp16, through FlexGen's fp16 relay buffers, which widen group-wise int4 data read from disk and narrow it back on the host into a pageable tensor before the PCIe copy (docs/offloading.md). Affects only int4 (compress_weights / compress_kv) shares read from disk."""
    lm_head_copy: bool = False
    """Hold the LM head as its own copy where the model ties it to the token embedding (FlexGen's OutputEmbed loads decoder.embed_tokens.weight as a second tensor: docs/offloading.md); placed with the embedding. No effect on a model with an untied head."""
    kv_dequant: Literal["filled", "allocated"] = "filled"
    """Which positions of a compressed KV cache's GPU share a decode step dequantises: filled, the cached ones; allocated, every position allocated for the sequence (prompt + generated - 1), as FlexGen's attention decompresses its whole GPU-resident cache before slicing it (docs/offloading.md); needs a fixed batch workload. No effect without compress_kv."""
    resident_layers: int | None = Field(default=None, ge=0)
    """Layer-wise streaming: keep this many layers resident in HBM, stream the rest."""
    kv_spill: KVSpill | None = None
    """Spill each sequence's KV beyond a length to a lower tier (long contexts)."""
    io_block_size: Bytes = 4 * 2**20
    """Size of each SSD read/write the streaming issues (selects the calibrated SSD bandwidth)."""
    io_queue_depth: int = Field(default=8, ge=1)
    """SSD requests in flight while streaming (selects the calibrated SSD bandwidth)."""

    @property
    def is_trivial(self) -> bool:
        return self.weights.gpu == 1 and self.kv_cache.gpu == 1 and self.activations.gpu == 1 and not (
            self.compress_weights
            or self.compress_kv
            or self.cpu_attention
            or self.resident_layers is not None
            or self.kv_spill is not None
        )

    @model_validator(mode="after")
    def _spill(self) -> "Offload":
        if self.kv_spill is not None and self.kv_cache.gpu != 1.0:
            raise ValueError("kv_spill splits KV by position; combine it with kv_cache: {gpu: 1} (head-wise split) only")
        return self

    @model_validator(mode="after")
    def _head_copy(self) -> "Offload":
        if self.lm_head_copy and self.is_trivial:
            raise ValueError("lm_head_copy accounts an offloading runtime's memory (FlexGen's); it needs a non-trivial plan.offload")
        return self

    @model_validator(mode="after")
    def _host_kv(self) -> "Offload":
        if self.host_kv_dtype == "fp32" and not (
            self.cpu_attention and self.kv_cache.cpu > 0 and self.kv_cache.cxl == 0 and self.kv_cache.disk == 0
            and not self.compress_kv and self.kv_spill is None
        ):
            raise ValueError(
                "host_kv_dtype: fp32 describes a host-DRAM KV cache attended on the CPU: it needs cpu_attention: true, "
                "a kv_cache share in cpu and none in cxl or disk, no compress_kv and no kv_spill"
            )
        return self


class ExpertRouting(_S):
    distribution: Literal["uniform", "zipf"] = "uniform"
    """How tokens pick experts: uniformly, or with Zipf-distributed expert popularity."""
    skew: float = Field(default=1.0, ge=0)
    """Zipf exponent of expert popularity (zipf only; 0 = uniform)."""


class Parallel(_S):
    tp: int = Field(default=1, ge=1)
    """Tensor-parallel degree (GPUs per stage)."""
    pp: int = Field(default=1, ge=1)
    """Pipeline stages per replica."""
    replicas: int = Field(default=1, ge=1)
    """Data-parallel replicas behind the router."""
    ep: int = Field(default=1, ge=1)
    """Expert-parallel degree of MoE layers: experts split into ``ep`` groups across a stage's
    ``tp`` GPUs (ep must divide tp); each group's experts are sharded over tp/ep GPUs."""
    layer_split: list[int] | None = None
    """Explicit layers per pipeline stage (default: as even as possible)."""
    cross_node_tp: bool = False
    """Allow a TP group to span nodes (its all-reduces then cross the network)."""
    collective_algorithm: Literal["ring", "tree"] = "ring"
    """Algorithm the all-reduce and all-gather costs assume."""
    expert_routing: ExpertRouting = constructed_default(ExpertRouting)
    """How tokens are routed to experts (MoE models)."""


class Execution(_S):
    mode: Literal["auto", "one_step", "layer_by_layer"] = "auto"
    """How an iteration is executed: as one compute step, or layer by layer with transfers
    (auto: layer by layer only where the plan moves data during the pass)."""
    iteration_overhead: Seconds | None = None
    """Fixed host-side time per iteration (scheduler, sampling bookkeeping), e.g. "2 ms"; replaces
    the calibration profile's ``host_overhead``. None: the profile's (none without one)."""
    device: Literal["gpu", "cpu"] = "gpu"
    """Where the model computes; cpu on a node without GPUs."""
    cuda_module_loading: Literal["lazy", "eager"] = "lazy"
    """How the run's CUDA runtime loads its kernels, which sizes the CUDA context a static run's GPU memory rule subtracts: lazy (PyTorch >= 1.13 on CUDA >= 11.7), 287 MB; eager (older stacks, e.g. FlexGen's documented CUDA 11.6 / PyTorch cu116 setup), 667 MB (docs/offloading.md)."""


class FleetGroup(_S):
    gpu: str = Field(min_length=1)
    """Catalog GPU this group's replicas run on (the base node with its GPU, host link and
    NVLink replaced, as the search's ``gpu`` shorthand does)."""
    replicas: int = Field(default=1, ge=1)
    """Replicas of this group behind the shared router."""
    tp: int = Field(default=1, ge=1)
    """Tensor-parallel degree of each of this group's replicas."""


class Plan(_S):
    batching: BatchingOptions = constructed_default(ContinuousBatching.Options)
    """Batching and scheduling policy (policy, default continuous, and that policy's options)."""
    precision: Precision = constructed_default(Precision)
    """Dtypes."""
    kv_cache: KVCache = constructed_default(KVCache)
    """Paged KV cache."""
    prefix_cache: PrefixCache = constructed_default(PrefixCache)
    """Tiered prefix cache."""
    offload: Offload = constructed_default(Offload)
    """Placement of weights, KV and activations across tiers."""
    parallel: Parallel = constructed_default(Parallel)
    """Tensor, pipeline, data and expert parallelism."""
    routing: RoutingName = "round_robin"
    """Registered routing policy across replicas: round_robin, least_outstanding, prefix_aware."""
    execution: Execution = constructed_default(Execution)
    """How iterations execute, and on which device."""
    fleet: list[FleetGroup] | None = None
    """A heterogeneous fleet: groups of replicas on different GPU types behind one router, e.g.
    ``[{gpu: h100-sxm, replicas: 2}, {gpu: l4, replicas: 3}]``; replaces plan.parallel's tp,
    pp and replicas (leave them at 1). None: plan.parallel.replicas identical replicas."""

    @field_validator("batching", mode="before")
    @classmethod
    def _default_policy(cls, v: Any) -> Any:
        # a mapping without a policy is the default policy's options
        if isinstance(v, dict) and "policy" not in v:
            return {"policy": ContinuousBatching.name, **v}
        return v

    @model_validator(mode="after")
    def _fleet(self) -> "Plan":
        if self.fleet is None:
            return self
        if not self.fleet:
            raise ValueError("plan.fleet: expected at least one group {gpu, replicas, tp}")
        par = self.parallel
        for k in ("replicas", "tp", "pp"):
            if getattr(par, k) != 1:
                raise ValueError(f"plan.fleet and plan.parallel.{k} = {getattr(par, k)} are mutually exclusive: "
                                 "give each fleet group its own replicas and tp")
        return self


class SLO(_S):
    ttft_p90_s: float | None = Field(default=None, gt=0)
    """Bound on the 90th-percentile TTFT (seconds)."""
    ttft_p99_s: float | None = Field(default=None, gt=0)
    """Bound on the 99th-percentile TTFT (seconds)."""
    tpot_p90_s: float | None = Field(default=None, gt=0)
    """Bound on the 90th-percentile TPOT (seconds)."""
    tpot_p99_s: float | None = Field(default=None, gt=0)
    """Bound on the 99th-percentile TPOT (seconds)."""
    ttft_s: float | None = Field(default=None, gt=0)
    """Per-request TTFT bound used for goodput (default: the tightest TTFT percentile bound)."""
    tpot_s: float | None = Field(default=None, gt=0)
    """Per-request TPOT bound used for goodput (default: the tightest TPOT percentile bound)."""


class Scenario(_S):
    name: str = Field(default="scenario", min_length=1, max_length=128)
    """Names the run (default output folder reports/<name>)."""
    description: str = ""
    """Free text."""
    hardware: str | dict[str, Any]
    """A node preset name, or a mapping {preset: NAME, <node field>: override, ...} or a full node."""
    model: str
    """A catalog model name, a model YAML path, or a Hugging Face config.json path."""
    workload: Workload
    """What arrives: exactly one of batch, synthetic or trace."""
    plan: Plan = constructed_default(Plan)
    """How the deployment serves it."""
    calibration: str = "auto"
    """auto (the profile matching the device, else datasheet defaults with a warning), none, or a path."""
    slo: SLO = constructed_default(SLO)
    """Service-level objectives for goodput and slo_met."""
    seed: int = Field(default=0, ge=0)
    """Seed of every random choice (same inputs and seed, identical outputs); an integer >= 0."""
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)
    _source: str | None = PrivateAttr(default=None)

    @property
    def source(self) -> str | None:
        """The file the scenario came from (relative paths resolve against it)."""
        return self._source

    def raw_data(self) -> dict[str, Any]:
        """A copy of the plain data this scenario was validated from (human units intact), for
        deriving variants with :func:`apply_overrides`."""
        return json.loads(json.dumps(self._raw))

    @field_validator("hardware")
    @classmethod
    def _hw(cls, v: Any) -> Any:
        if isinstance(v, dict) and not v:
            raise ValueError("hardware mapping is empty")
        return v

    def resolve_path(self, p: str) -> Path:
        """A file the scenario names: an absolute path as is; a relative one against the scenario
        file's folder, else the working folder; else, for a bare file name of a shipped trace
        (``workloads/traces/``, e.g. ``azure_conv_2023.csv``), that trace. A path found nowhere
        comes back as the first place looked, for the reader's error."""
        path = Path(p)
        if path.is_absolute():
            return path
        here = path if self.source is None else Path(self.source).parent / path
        try:
            for candidate in (here, path):
                if candidate.exists():
                    return candidate
            if len(path.parts) == 1:
                from simkit.specs.catalog import repo_path

                shipped = repo_path("workloads", "traces", path.name)
                if shipped.is_file():
                    return shipped
        except OSError:  # not a usable path (e.g. too long): the reader names it
            pass
        return here


# ---------------------------------------------------------------------------------------------


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted keys set: ``["plan.parallel.tp=2", ...]`` or a dict."""
    out = json.loads(json.dumps(check_data(data, error=ScenarioError)))
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    items = [(k, check_data(v, error=ScenarioError, key=k)) for k, v in items]
    for key, value in items:
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None:
                nxt = {}
                node[part] = nxt
            elif not isinstance(nxt, dict):
                if part == "hardware" and isinstance(nxt, str):
                    nxt = {"preset": nxt}
                    node[part] = nxt
                else:
                    raise ScenarioError(
                        f"cannot set {key!r}: {'.'.join(parts[: i + 1])} is a {type(nxt).__name__}, not a mapping",
                        key=key,
                    )
            node = nxt
        node[parts[-1]] = value
    return out


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ScenarioError(f"override {text!r} must look like dotted.key=value")
    k, v = text.split("=", 1)
    k = k.strip()
    if not k:
        raise ScenarioError(f"override {text!r} has an empty key")
    return k, parse_yaml_value(v, key=k, error=ScenarioError)


def scenario_from_dict(data: Any, where: str | None = None) -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError("a scenario is a mapping of top-level keys (hardware, model, workload, plan, ...)", where=where)
    check_data(data, where, error=ScenarioError)

    def validate() -> Scenario:
        try:
            return Scenario.model_validate(data)
        except ValidationError as e:
            err = format_validation_error(e, where, Scenario)
            raise ScenarioError(err.message, where=where, key=err.key) from None

    # the validated scenario of this data is kept on disk (specs/validated.py) where that spares
    # building the scenario's validator: in `simkit run`, and in a process that has not built it
    # (one run from a script; a miss builds it, so a process writes one entry at most); a process
    # that has (a study, a search) validates: cheaper than an entry per run, each write scanning
    # the folder
    try:
        key = json.dumps(data, allow_nan=False) if in_one_run() or not Scenario.__pydantic_complete__ else None
    except (TypeError, ValueError):  # not JSON data (a YAML date, a non-string key): validated each time
        key = None
    if key is None:
        sc = validate()
    else:
        sc = cached("scenarios", key, (Scenario,), validate, lambda v: type(v) is Scenario)
    sc._source = where
    sc._raw = json.loads(json.dumps(data))
    return sc


def shipped(folder: str) -> list[str]:
    """Names of the examples that ship with simkit in ``workloads/<folder>`` (scenarios,
    searches, studies): ``simkit run NAME``, ``simkit search NAME`` and ``simkit study NAME`` find them."""
    from simkit.specs.catalog import repo_path

    return sorted(p.stem for p in repo_path("workloads", folder).glob("*.yaml"))


def shipped_scenarios() -> list[str]:
    """Names of the example scenarios that ship with simkit (``simkit run NAME`` finds them)."""
    return shipped("scenarios")


def find_shipped(path: str | Path, folder: str, what: str, error: type[SimkitError]) -> Path:
    """``path`` itself if it exists, else the shipped example of that name in
    ``workloads/<folder>`` (``quickstart``, ``quickstart.yaml`` or ``workloads/scenarios/quickstart.yaml``),
    so an installed simkit runs its examples from any folder; else ``error`` naming the
    shipped ones."""
    from simkit.specs.catalog import repo_path

    p = Path(path)
    try:
        if p.exists():
            return p
    except OSError:
        return p
    parts = p.parts
    if len(parts) == 1:
        for cand in (repo_path("workloads", folder, p.name), repo_path("workloads", folder, p.name + ".yaml")):
            if cand.is_file():
                return cand
    elif not p.is_absolute():
        cand = repo_path(*parts)
        if cand.is_file():
            return cand
    import difflib

    names = shipped(folder)
    close = difflib.get_close_matches(p.stem, names, n=1) if len(parts) == 1 else []
    hint = f"; did you mean {close[0]}?" if close else ""
    raise error(f"{what} not found (shipped {folder}: {', '.join(names)}){hint}", where=str(p))


def find_base_scenario(base: str, folder: Path, error: type[SimkitError], where: str) -> Path:
    """A search's or study's ``base:`` scenario: a path relative to the file's ``folder`` (or
    absolute); else, for a bare name, the shipped scenario of that name (``base: quickstart``,
    as ``simkit run quickstart``), so a search or study file copied out of simkit's examples
    works from any folder; else ``error`` naming the path tried and the shipped scenarios."""
    from simkit.specs.catalog import repo_path

    p = Path(base)
    if not p.is_absolute():
        p = folder / p
    if p.exists():
        return p
    name = Path(base)
    if len(name.parts) == 1:
        for cand in (repo_path("workloads", "scenarios", name.name), repo_path("workloads", "scenarios", name.name + ".yaml")):
            if cand.is_file():
                return cand
    raise error(f"base scenario not found: {p} (a path is relative to this file; a bare name is a shipped scenario: "
                f"{', '.join(shipped('scenarios'))})", where=where, key="base")


def find_scenario(path: str | Path) -> Path:
    """A scenario file: ``path`` itself, else a shipped scenario of that name (:func:`find_shipped`)."""
    return find_shipped(path, "scenarios", "file", ScenarioError)


def load_scenario_data(path: str | Path) -> dict[str, Any]:
    data = load_yaml(path, error=ScenarioError)
    if not isinstance(data, dict):
        raise ScenarioError("a scenario is a mapping of top-level keys", where=str(path))
    return data


def load_scenario(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Scenario:
    path = find_scenario(path)
    data = load_scenario_data(path)
    if overrides:
        try:
            data = apply_overrides(data, overrides)
        except ScenarioError as e:
            if e.where is None:  # an override that the file's own content blocks: name the file
                raise ScenarioError(e.message, where=str(path), key=e.key) from None
            raise
    return scenario_from_dict(data, where=str(path))


def json_schema() -> dict[str, Any]:
    schema = Scenario.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "simkit scenario"
    return schema
