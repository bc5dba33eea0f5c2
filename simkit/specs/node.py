"""A node resolved from a preset (plus overrides) into its parts, with SI numbers ready for the engine."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from simkit.errors import SpecError
from simkit.specs.base import format_validation_error
from simkit.specs.catalog import Catalog, default_catalog
from simkit.specs.hardware import CPUSpec, GPUSpec, LinkSpec, MemorySpec, NodeSpec, SSDSpec
from simkit.specs.validated import plain


@dataclass(frozen=True)
class Tier:
    """A memory tier of a node as the engine sees it: a capacity pool with read/write bandwidth."""

    name: str
    """hbm (per GPU), dram, cxl, ssd."""
    capacity: float
    read_bw: float
    write_bw: float
    latency: float


@dataclass(frozen=True)
class Node:
    spec: NodeSpec
    gpu: GPUSpec | None
    num_gpus: int
    cpu: CPUSpec
    sockets: int
    dram: MemorySpec
    dram_capacity: float
    cxl: tuple[tuple[MemorySpec, float], ...]
    ssd: tuple[tuple[SSDSpec, float], ...]
    links: dict[str, LinkSpec] = field(default_factory=dict)
    num_nics: int = 0
    num_nodes: int = 1
    """Identical nodes in the deployment (a cluster), joined by ``links['network']``."""
    scale: dict[str, float] = field(default_factory=dict)
    """The what-if multipliers already applied to the parts above (``hardware.bandwidth_scale``
    keys, plus ``flops_gpu``/``flops_cpu`` from ``hardware.flops_scale``), so that figures a
    calibration profile measured on the unscaled machine can be scaled the same way."""

    def scale_of(self, key: str) -> float:
        """The what-if multiplier of ``key`` (1.0 when not scaled)."""
        return float(self.scale.get(key, 1.0))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def total_gpus(self) -> int:
        return self.num_gpus * self.num_nodes

    @property
    def price_per_hour(self) -> float:
        host = self.spec.host_price_per_hour
        if host is None:
            host = self.cpu.price_per_hour * self.sockets
        gpus = self.gpu.price_per_hour * self.num_gpus if self.gpu else 0.0
        return float(host + gpus)

    def price_warning(self) -> str | None:
        """A warning when the node's price leaves out its host: a GPU priced alone
        (``price_includes_host: false``) on a node whose ``host_price_per_hour`` is 0, i.e. one
        that counts on a GPU price bundling the host (a `gpu` override of such a preset). None
        otherwise."""
        if self.gpu is None or self.gpu.price_includes_host or self.spec.host_price_per_hour != 0:
            return None
        return (f"gpu {self.gpu.name}'s price (${self.gpu.price_per_hour:.2f}/h) is the GPU alone, but node {self.name} "
                "adds nothing for its host (host_price_per_hour: 0, as for a GPU price that bundles the host): $/token and "
                "$/h leave out the host; set hardware.host_price_per_hour (e.g. the VM's price without the GPU)")

    def tiers(self) -> dict[str, Tier]:
        """The memory tiers this node has, fastest first (HBM is per GPU)."""
        out: dict[str, Tier] = {}
        if self.gpu is not None:
            g = self.gpu
            out["hbm"] = Tier("hbm", g.memory, g.memory_bandwidth, g.memory_bandwidth, 0.0)
        d = self.dram
        out["dram"] = Tier(
            "dram", self.dram_capacity, d.bandwidth * self.sockets, d.write_bw * self.sockets, d.latency
        )
        if self.cxl:
            cap = sum(c for _, c in self.cxl)
            bw = sum(m.bandwidth for m, _ in self.cxl)
            wbw = sum(m.write_bw for m, _ in self.cxl)
            lat = max(m.latency + m.added_latency for m, _ in self.cxl)
            out["cxl"] = Tier("cxl", cap, bw, wbw, lat)
        if self.ssd:
            cap = sum(c for _, c in self.ssd)
            rbw = sum(s.read_bandwidth for s, _ in self.ssd)
            wbw = sum(s.write_bandwidth for s, _ in self.ssd)
            lat = max(s.read_latency for s, _ in self.ssd)
            out["ssd"] = Tier("ssd", cap, rbw, wbw, lat)
        return out

    def link(self, kind: str) -> LinkSpec | None:
        return self.links.get(kind)


def resolve_node(hardware: str | dict[str, Any], catalog: Catalog | None = None, where: str | None = None) -> Node:
    """Turn the scenario's ``hardware`` value into a :class:`Node`.

    ``hardware`` is a node preset name, or a mapping ``{preset: NAME, field: value, ...}`` whose
    fields override the preset's (e.g. ``num_gpus: 4`` or ``dram: {type: ddr5-4800-8ch, capacity: 1 TiB}``),
    or a full inline node (``name``, ``cpu``, ``dram``, ...).
    """
    cat = catalog or default_catalog()
    scale: dict[str, float] = {}
    fscale: dict[str, float] = {}
    num_nodes = 1
    network: str | None = None
    if isinstance(hardware, str) and hardware in cat.items["cluster"]:
        cl = cat.get("cluster", hardware)
        hardware = {"preset": cl.node}
        num_nodes, network = cl.num_nodes, cl.network
    if isinstance(hardware, str):
        spec: NodeSpec = cat.get("node", hardware, where=where, key="hardware")
    else:
        data = dict(hardware)
        if "num_nodes" in data:
            num_nodes = data.pop("num_nodes")
            if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes < 1:
                raise SpecError(f"expected an integer >= 1, got {num_nodes!r}", where=where, key="hardware.num_nodes")
        network = data.pop("network", network)
        scale = data.pop("bandwidth_scale", None) or {}
        if not isinstance(scale, dict):
            raise SpecError(f"expected a mapping of bandwidth names to factors, got {scale!r}", where=where, key="hardware.bandwidth_scale")
        fscale = data.pop("flops_scale", None) or {}
        preset = data.pop("preset", None)
        if preset is not None:
            cat.get("node", preset, where=where, key="hardware.preset")
            from simkit.specs.yamlio import load_yaml

            base = dict(load_yaml(cat.file_of("node", preset)))
            merged = dict(base)
            for k, v in data.items():
                if isinstance(v, dict) and isinstance(merged.get(k), dict):
                    merged[k] = {**merged[k], **v}
                else:
                    merged[k] = v
            merged.setdefault("name", f"{preset}-custom")
            data = merged
            if merged != base or scale or fscale or "network" in hardware or hardware.get("num_nodes", 1) != 1:  # a change, not a restatement
                data["name"] = f"{preset}+custom"
        data.setdefault("kind", "node")
        data.setdefault("name", "inline-node")
        try:
            spec = NodeSpec.model_validate(data)
        except ValidationError as e:
            err = format_validation_error(e, where, NodeSpec)
            raise SpecError(err.message, where=where, key=f"hardware.{err.key}" if err.key else "hardware") from None
    key = "hardware"
    gpu = cat.get("gpu", spec.gpu, where=where, key=f"{key}.gpu") if spec.gpu else None
    cpu = cat.get("cpu", spec.cpu, where=where, key=f"{key}.cpu")
    dram = cat.get("memory", spec.dram.type, where=where, key=f"{key}.dram.type")
    dram_cap = spec.dram.capacity if spec.dram.capacity is not None else dram.capacity * spec.num_sockets
    cxl = []
    for i, c in enumerate(spec.cxl):
        m = cat.get("memory", c.type, where=where, key=f"{key}.cxl.{i}.type")
        for _ in range(c.count):
            cxl.append((m, c.capacity if c.capacity is not None else m.capacity))
    ssd = []
    for i, c in enumerate(spec.ssd):
        s = cat.get("ssd", c.type, where=where, key=f"{key}.ssd.{i}.type")
        for _ in range(c.count):
            ssd.append((s, c.capacity if c.capacity is not None else s.capacity))
    links = {}
    for kind, name in plain(spec.links).items():
        if name:
            links[kind] = cat.get("link", name, where=where, key=f"{key}.links.{kind}")
    if network is not None:
        links["network"] = cat.get("link", network, where=where, key=f"{key}.network")
    if num_nodes > 1 and "network" not in links:
        raise SpecError(
            f"a cluster of {num_nodes} nodes needs a network link (hardware.network or the node's links.network)",
            where=where,
            key=f"{key}.network",
        )
    if scale:
        gpu, dram, cxl, ssd, links = _apply_scale(scale, gpu, dram, cxl, ssd, links, where)
    applied = {k: float(v) for k, v in scale.items()}
    if fscale:
        gpu, cpu = _apply_flops_scale(fscale, gpu, cpu, where)
        applied.update({f"flops_{k}": float(v) for k, v in fscale.items()})
    return Node(
        spec, gpu, spec.num_gpus, cpu, spec.num_sockets, dram, dram_cap, tuple(cxl), tuple(ssd), links, spec.num_nics, num_nodes,
        applied,
    )


FLOPS_SCALABLE = ("gpu", "cpu")
SCALE_RANGE = (1e-3, 1e3)
"""What-if bandwidth and FLOP/s factors outside this range describe no real hardware (and 1e-300 ends in NaN times)."""


def _scale_factor(f: Any, key: str, where: str | None) -> float:
    """A what-if factor: a number within SCALE_RANGE (1e-300 ends in NaN times; no real
    hardware is a million times faster)."""
    lo, hi = SCALE_RANGE
    if isinstance(f, bool) or not isinstance(f, int | float) or not lo <= f <= hi:
        raise SpecError(f"expected a number from {lo:g} to {hi:g}, got {f!r}", where=where, key=key)
    return float(f)


def _apply_flops_scale(scale, gpu, cpu, where):  # type: ignore[no-untyped-def]
    """What-if compute multipliers (``hardware.flops_scale: {gpu: 2.0, cpu: 0.5}``): every
    dtype's peak FLOP/s of that device times the factor."""
    if not isinstance(scale, dict):
        raise SpecError(f"expected a mapping of {' | '.join(FLOPS_SCALABLE)} to a factor, got {scale!r}", where=where, key="hardware.flops_scale")
    for k, f in scale.items():
        if k not in FLOPS_SCALABLE:
            raise SpecError(f"unknown key (expected one of {', '.join(FLOPS_SCALABLE)})", where=where, key=f"hardware.flops_scale.{k}")
        _scale_factor(f, f"hardware.flops_scale.{k}", where)

    def scaled(peak, f):  # type: ignore[no-untyped-def]
        vals = {d: (v * f if v is not None else None) for d, v in plain(peak).items()}
        return peak.model_copy(update=vals)

    if "gpu" in scale and gpu is not None:
        gpu = gpu.model_copy(update={"peak_flops": scaled(gpu.peak_flops, float(scale["gpu"]))})
    if "cpu" in scale:
        cpu = cpu.model_copy(update={"peak_flops": scaled(cpu.peak_flops, float(scale["cpu"]))})
    return gpu, cpu


SCALABLE = ("host_to_gpu", "gpu_to_gpu", "cxl", "nvme", "network", "hbm", "dram", "cxl_memory", "ssd")


def _apply_scale(scale, gpu, dram, cxl, ssd, links, where):  # type: ignore[no-untyped-def]
    """What-if bandwidth multipliers (``hardware.bandwidth_scale: {host_to_gpu: 2.0, ...}``)."""
    for k, f in scale.items():
        if k not in SCALABLE:
            raise SpecError(f"unknown key (expected one of {', '.join(SCALABLE)})", where=where, key=f"hardware.bandwidth_scale.{k}")
        _scale_factor(f, f"hardware.bandwidth_scale.{k}", where)
    links = dict(links)
    for k in ("host_to_gpu", "gpu_to_gpu", "cxl", "nvme", "network"):
        if k in scale and k in links:
            ln = links[k]
            links[k] = ln.model_copy(update={"bandwidth": ln.bandwidth * scale[k], "achieved_bandwidth": ln.achieved_bandwidth * scale[k]})
    if "hbm" in scale and gpu is not None:
        gpu = gpu.model_copy(update={"memory_bandwidth": gpu.memory_bandwidth * scale["hbm"]})
    if "dram" in scale:
        dram = dram.model_copy(update={"bandwidth": dram.bandwidth * scale["dram"], "write_bandwidth": dram.write_bw * scale["dram"]})
    if "cxl_memory" in scale:
        f = scale["cxl_memory"]
        cxl = [(m.model_copy(update={"bandwidth": m.bandwidth * f, "write_bandwidth": m.write_bw * f}), c) for m, c in cxl]
    if "ssd" in scale:
        f = scale["ssd"]
        ssd = [(d.model_copy(update={"read_bandwidth": d.read_bandwidth * f, "write_bandwidth": d.write_bandwidth * f}), c) for d, c in ssd]
    return gpu, dram, cxl, ssd, links


def gpu_swap(name: str, catalog: Catalog | None = None, key: str = "gpu") -> dict[str, Any]:
    """Node fields that put catalog GPU ``name`` in a node: the GPU, its PCIe host link and, if
    it has NVLink, the catalog NVLink whose bandwidth is closest to the GPU's (else GPUs talk
    over PCIe). Keys are node fields, dotted (``gpu``, ``links.host_to_gpu``, ...)."""

    cat = catalog or default_catalog()
    gpu = cat.get("gpu", name, key=key)
    out: dict[str, Any] = {"gpu": name}
    pcie = f"pcie-gen{gpu.pcie.gen}-x{gpu.pcie.lanes}"
    if pcie in cat.items["link"]:
        out["links.host_to_gpu"] = pcie
    if gpu.nvlink_bandwidth:
        nvl = [v for v in cat.items["link"].values() if v.type == "nvlink"]
        best = min(nvl, key=lambda ln: abs(math.log(ln.bandwidth / gpu.nvlink_bandwidth)))
        out["links.gpu_to_gpu"] = best.name
    else:
        out["links.gpu_to_gpu"] = None
    return out
