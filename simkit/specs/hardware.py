"""Hardware descriptions: GPUs, CPUs, memories, SSDs, links, and the nodes and clusters built from them.

All quantities are SI floats (bytes, bytes/s, FLOP/s, s, W, $/h) once loaded. Each catalog file
carries a ``sources`` map from field name to where the number comes from (datasheet, paper,
measurement); ``simkit catalog show`` prints it.
"""

from typing import Literal

from pydantic import Field, field_validator, model_validator

from simkit.specs.base import Bandwidth, Bytes, DollarsPerHour, FlopRate, Frozen, Seconds, Watts
from simkit.specs.validated import constructed_default

Dtype = Literal["fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4"]
DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}


DTYPE_FALLBACK: dict[str, tuple[str, ...]] = {
    "int4": ("fp16", "bf16", "fp32"),
    "fp8": ("fp8", "fp16", "bf16", "fp32"),
    "int8": ("int8", "fp16", "bf16", "fp32"),
    "bf16": ("bf16", "fp16", "fp32"),
    "fp16": ("fp16", "bf16", "fp32"),
    "tf32": ("tf32", "fp32"),
    "fp32": ("fp32", "tf32"),
}
"""The peak a matmul in each dtype runs at, in order of preference, when a chip (or a
calibration profile) lacks that dtype's own peak; int4 weights are dequantised to 16-bit."""


class PeakFlops(Frozen):
    """Dense (no sparsity) peak compute per dtype; ``None`` where the chip has no such path."""

    fp32: FlopRate
    tf32: FlopRate | None = None
    fp16: FlopRate | None = None
    bf16: FlopRate | None = None
    fp8: FlopRate | None = None
    int8: FlopRate | None = None

    def for_dtype(self, dtype: str) -> float:
        """Peak FLOP/s used for matmuls in ``dtype``. int4 weights are dequantised to fp16/bf16."""
        order = DTYPE_FALLBACK[dtype]
        for d in order:
            v = getattr(self, d)
            if v:
                return float(v)
        return float(self.fp32)


class PCIe(Frozen):
    gen: int = Field(ge=1, le=6)
    lanes: int = Field(ge=1, le=32)


class GPUSpec(Frozen):
    kind: Literal["gpu"] = "gpu"
    name: str
    description: str = ""
    memory: Bytes = Field(gt=0)
    memory_bandwidth: Bandwidth = Field(gt=0)
    l2_cache: Bytes = Field(ge=0)
    sm_count: int = Field(gt=0)
    peak_flops: PeakFlops
    pcie: PCIe
    nvlink_bandwidth: Bandwidth | None = None
    """Aggregate NVLink bandwidth per direction per GPU (bytes/s); None without NVLink."""
    tdp: Watts = Field(gt=0)
    idle_power: Watts | None = None
    """Idle power; default 20% of TDP (see docs/metrics.md, energy)."""
    price_per_hour: DollarsPerHour = Field(ge=0)
    price_includes_host: bool = True
    """Whether ``price_per_hour`` is a rental price that bundles the GPU's share of a host (as
    the per-GPU prices of GPU clouds do) or the GPU alone (a hyperscaler's GPU price, the VM
    priced separately): a node whose ``host_price_per_hour`` is 0 counts on the former."""
    kernel_launch_overhead: Seconds = 4e-6
    sources: dict[str, str]

    @property
    def idle_watts(self) -> float:
        return self.idle_power if self.idle_power is not None else 0.2 * self.tdp


class CPUSpec(Frozen):
    """One CPU socket."""

    kind: Literal["cpu"] = "cpu"
    name: str
    description: str = ""
    cores: int = Field(gt=0)
    threads: int = Field(gt=0)
    base_clock_ghz: float = Field(gt=0)
    peak_flops: PeakFlops
    memory_channels: int = Field(gt=0)
    memory_type: str
    """Catalog name of the memory (DIMM set) a socket of this CPU drives."""
    tdp: Watts = Field(gt=0)
    price_per_hour: DollarsPerHour = Field(ge=0)
    sources: dict[str, str]


class MemorySpec(Frozen):
    """A memory pool: the DRAM of one socket or one CXL Type-3 expander."""

    kind: Literal["memory"] = "memory"
    name: str
    description: str = ""
    technology: Literal["ddr4", "ddr5", "cxl", "hbm"]
    capacity: Bytes = Field(gt=0)
    bandwidth: Bandwidth = Field(gt=0)
    """Sustained read bandwidth (bytes/s)."""
    write_bandwidth: Bandwidth | None = None
    latency: Seconds = Field(ge=0)
    added_latency: Seconds = 0.0
    """Latency over local DRAM (CXL expanders)."""
    price_per_hour: DollarsPerHour = 0.0
    sources: dict[str, str]

    @property
    def write_bw(self) -> float:
        return self.write_bandwidth if self.write_bandwidth is not None else self.bandwidth


class SSDSpec(Frozen):
    kind: Literal["ssd"] = "ssd"
    name: str
    description: str = ""
    pcie_gen: int = Field(ge=3, le=6)
    capacity: Bytes = Field(gt=0)
    read_bandwidth: Bandwidth = Field(gt=0)
    write_bandwidth: Bandwidth = Field(gt=0)
    read_latency: Seconds = Field(ge=0)
    write_latency: Seconds = Field(ge=0)
    price_per_hour: DollarsPerHour = 0.0
    sources: dict[str, str]


class LinkSpec(Frozen):
    kind: Literal["link"] = "link"
    name: str
    description: str = ""
    type: Literal["pcie", "nvlink", "cxl", "nvme", "network"]
    bandwidth: Bandwidth = Field(gt=0)
    """Theoretical bandwidth per direction (bytes/s)."""
    achieved_bandwidth: Bandwidth = Field(gt=0)
    """Typically achieved bandwidth per direction (bytes/s); what the simulator uses uncalibrated."""
    latency: Seconds = Field(ge=0)
    fabric: Literal["switch", "pairwise"] | None = None
    """NVLink only, and required there: ``switch`` (every GPU reaches every GPU through NVSwitch,
    or all-to-all links) or ``pairwise`` (bridges between pairs of cards). Collectives are timed
    by the topology it gives (calibration profiles key their fits by it)."""
    sources: dict[str, str]

    @model_validator(mode="after")
    def _achieved_le_theoretical(self) -> "LinkSpec":
        if self.achieved_bandwidth > self.bandwidth * 1.0001:
            raise ValueError("achieved_bandwidth exceeds the theoretical bandwidth")
        if self.type == "nvlink" and self.fabric is None:
            raise ValueError("an nvlink link needs fabric: switch (NVSwitch / all-to-all) or pairwise (bridges between pairs)")
        if self.type != "nvlink" and self.fabric is not None:
            raise ValueError(f"fabric applies to nvlink links only (this link is {self.type})")
        return self


class DramConfig(Frozen):
    type: str
    """Catalog name of a ``memory`` spec (per socket)."""
    capacity: Bytes | None = None
    """Total DRAM of the node; default = the memory spec's capacity x sockets."""


class DeviceCount(Frozen):
    type: str
    count: int = Field(default=1, ge=0)
    capacity: Bytes | None = None
    """Capacity of each device; default = the catalog's."""


class NodeLinks(Frozen):
    host_to_gpu: str | None = None
    """PCIe link between host memory and each GPU (per direction)."""
    gpu_to_gpu: str | None = None
    """NVLink (or PCIe) between GPUs of this node."""
    cxl: str | None = None
    nvme: str | None = None
    network: str | None = None


class NodeMeasured(Frozen):
    """What one machine was measured to deliver (replaces the catalog's typical figures for that
    node wherever given; a calibration profile measured on the machine still takes precedence).
    Every field is optional; ``source`` says who measured and how."""

    source: str
    h2d_bandwidth: Bandwidth | None = Field(default=None, gt=0)
    """Host -> GPU copies (per GPU)."""
    d2h_bandwidth: Bandwidth | None = Field(default=None, gt=0)
    """GPU -> host copies (per GPU)."""
    d2h_kv_bandwidth: Bandwidth | None = Field(default=None, gt=0)
    """GPU -> host stores of new KV cache entries (strided copies into the host cache; default d2h_bandwidth)."""
    ssd_read_bandwidth: Bandwidth | None = Field(default=None, gt=0)
    """Reads from the node's SSD tier into DRAM (all devices together)."""
    ssd_write_bandwidth: Bandwidth | None = Field(default=None, gt=0)
    """Writes from DRAM to the SSD tier (all devices together)."""
    ssd_kv_write_bandwidth: Bandwidth | None = Field(default=None, gt=0)
    """Writes of new KV cache entries to the SSD tier (default ssd_write_bandwidth)."""
    gpu_gemm_flops_prefill: FlopRate | None = Field(default=None, gt=0)
    """Achieved FLOP/s of the GPU's linear layers over a prompt (many tokens per sequence)."""
    gpu_gemm_flops_decode: FlopRate | None = Field(default=None, gt=0)
    """Achieved FLOP/s of the GPU's linear layers in a decode step (one token per sequence)."""
    gpu_attention_flops_prefill: FlopRate | None = Field(default=None, gt=0)
    gpu_attention_flops_decode: FlopRate | None = Field(default=None, gt=0)
    cpu_attention_flops: FlopRate | None = Field(default=None, gt=0)
    """Achieved FLOP/s of decode attention computed on the host CPU (offloaded KV)."""
    host_first_touch_bandwidth: Bandwidth | None = Field(default=None, gt=0)
    """Bytes/s at which the host's threads write freshly allocated memory beyond writing reused memory
    (page faults and the kernel's zero-fill of every new page; offloaded attention codes that allocate
    their temporaries per step pay it: plan.offload.host_temporaries)."""


class NodeSpec(Frozen):
    kind: Literal["node"] = "node"
    name: str
    description: str = ""
    gpu: str | None = None
    num_gpus: int = Field(default=0, ge=0)
    cpu: str
    num_sockets: int = Field(default=1, ge=1)
    dram: DramConfig
    cxl: list[DeviceCount] = Field(default_factory=list)
    ssd: list[DeviceCount] = Field(default_factory=list)
    links: NodeLinks = constructed_default(NodeLinks)
    num_nics: int = Field(default=0, ge=0)
    host_price_per_hour: DollarsPerHour | None = None
    """Price of everything but the GPUs; default: the CPU's price x sockets."""
    measured: NodeMeasured | None = None
    """Rates measured on this very machine (see NodeMeasured)."""
    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _gpu_consistency(self) -> "NodeSpec":
        if (self.gpu is None) != (self.num_gpus == 0):
            raise ValueError("give both 'gpu' and 'num_gpus' > 0, or neither (a CPU-only node)")
        if self.gpu is not None and self.links.host_to_gpu is None:
            raise ValueError("a node with GPUs needs links.host_to_gpu")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or " " in v:
            raise ValueError("a catalog name is one word of letters, digits, '-', '.', '_'")
        return v


class ClusterSpec(Frozen):
    """N identical nodes joined by a network (each node's NICs, bandwidth and latency per node)."""

    kind: Literal["cluster"] = "cluster"
    name: str
    node: str
    num_nodes: int = Field(ge=1)
    network: str | None = None
    """Catalog link of the inter-node network (per NIC); default the node's links.network."""
    sources: dict[str, str] = Field(default_factory=dict)


HW_KINDS: dict[str, type[Frozen]] = {
    "gpu": GPUSpec,
    "cpu": CPUSpec,
    "memory": MemorySpec,
    "ssd": SSDSpec,
    "link": LinkSpec,
    "node": NodeSpec,
    "cluster": ClusterSpec,
}
