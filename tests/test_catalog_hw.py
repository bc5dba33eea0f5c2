"""The shipped hardware catalog (hw_specs/): every file loads, every number has a source, units land
in sane SI ranges, nodes reference real items, and bad files fail with errors that name the file
and the key."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from simkit.errors import SpecError
from simkit.specs.catalog import Catalog, default_catalog
from simkit.specs.hardware import (
    CPUSpec,
    GPUSpec,
    LinkSpec,
    MemorySpec,
    NodeSpec,
    SSDSpec,
)

HW_DIR = Path(__file__).resolve().parents[1] / "hw_specs"
HW_KIND_DIRS = {
    "gpu": "gpus",
    "cpu": "cpus",
    "memory": "memory",
    "ssd": "ssd",
    "link": "links",
    "node": "nodes",
}
GiB = 2.0**30
TiB = 2.0**40

REQUIRED = {
    "gpu": [
        "h100-sxm",
        "h100-pcie",
        "h200",
        "a100-40gb-sxm",
        "a100-80gb-sxm",
        "a100-80gb-pcie",
        "a40",
        "l4",
        "t4",
        "rtx-4090",
        "rtx-3090",
        "rtx-a6000",
    ],
    "cpu": ["xeon-platinum-8480", "epyc-7742", "epyc-9654", "core-i9-13900k", "generic-2core-vm"],
    "memory": [
        "ddr4-3200-8ch",
        "ddr5-4800-8ch",
        "ddr5-4800-12ch",
        "ddr5-5600-2ch",
        "ddr4-3200-2ch",
        "cxl-ddr5-expander-x8",
        "cxl-ddr5-expander-x16",
    ],
    "ssd": [
        "nvme-gen3-samsung-970-pro",
        "nvme-gen4-samsung-990-pro",
        "nvme-gen5-crucial-t705",
        "gcp-local-ssd-nvme",
        "nvme-gen4-samsung-pm9a3",
        "nvme-gen5-kioxia-cm7",
    ],
    "link": [
        "pcie-gen3-x16",
        "pcie-gen4-x16",
        "pcie-gen5-x16",
        "pcie-gen3-x4",
        "pcie-gen4-x4",
        "pcie-gen5-x4",
        "nvlink3",
        "nvlink4",
        "nvlink-bridge-ampere",
        "cxl-gen5-x8",
        "cxl-gen5-x16",
        "ib-hdr-200",
        "ib-ndr-400",
        "roce-100g",
        "eth-25g",
    ],
    "node": [
        "dgx-h100",
        "dgx-a100",
        "h100-pcie-cxl-server",
        "gcp-t4-vm",
        "rtx4090-workstation",
        "cpu-server",
        "ci-vm",
    ],
}

# Dense (no sparsity) FP16 tensor peaks from the datasheets / whitepapers, TFLOPS, with FP32
# accumulate for GeForce parts. A sparse figure (2x) here would overstate compute by 2x.
DENSE_FP16_TFLOPS = {
    "h100-sxm": 989.4,
    "h100-pcie": 756.5,
    "h200": 989.4,
    "a100-40gb-sxm": 312,
    "a100-80gb-sxm": 312,
    "a100-80gb-pcie": 312,
    "a40": 149.7,
    "l4": 121,
    "t4": 65,
    "rtx-4090": 165.2,
    "rtx-3090": 71,
    "rtx-a6000": 154.8,
}
PCIE_GEN = {"h100-sxm": 5, "h100-pcie": 5, "h200": 5, "t4": 3}
PCIE_GT_S = {3: 8.0, 4: 16.0, 5: 32.0}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SIMKIT_CATALOG_PATH", raising=False)
        mp.delenv("SIMKIT_HOME", raising=False)
        return default_catalog()


def hw_files() -> list[Path]:
    return sorted(HW_DIR.rglob("*.yaml"))


def items(cat: Catalog, kind: str) -> list[Any]:
    return [cat.items[kind][n] for n in cat.names(kind)]


# --- loading ---------------------------------------------------------------------------------------


def test_hw_specs_has_files() -> None:
    assert len(hw_files()) >= sum(len(v) for v in REQUIRED.values())


@pytest.mark.parametrize("path", hw_files(), ids=lambda p: str(p.relative_to(HW_DIR)))
def test_every_file_loads_into_default_catalog(catalog: Catalog, path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    kind, name = data["kind"], data["name"]
    assert name in catalog.items[kind], f"{path} not in default_catalog()"
    assert catalog.file_of(kind, name).resolve() == path.resolve()
    assert path.stem == name, "file name must be the item name + .yaml"
    assert path.parent.name == HW_KIND_DIRS[kind], f"{kind} items live in hw_specs/{HW_KIND_DIRS[kind]}/"


@pytest.mark.parametrize("kind,name", [(k, n) for k, names in REQUIRED.items() for n in names])
def test_required_item_exists(catalog: Catalog, kind: str, name: str) -> None:
    assert name in catalog.items[kind]


# --- sources ---------------------------------------------------------------------------------------


def _walk(value: Any, path: str) -> Iterator[str]:
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int | float):
        yield path
    elif isinstance(value, BaseModel):
        yield from numeric_fields(value, path + ".")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}.{i}")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}")


def numeric_fields(model: BaseModel, prefix: str = "") -> Iterator[str]:
    """Dotted names of every int/float field that is not None, nested models and lists included."""
    for name in type(model).model_fields:
        if name in ("kind", "name", "description", "sources"):
            continue
        yield from _walk(getattr(model, name), prefix + name)


def has_source(sources: dict[str, str], path: str) -> bool:
    parts = path.split(".")
    return any(".".join(parts[:i]) in sources for i in range(1, len(parts) + 1))


def test_numeric_field_walker() -> None:
    assert has_source({"peak_flops": "x"}, "peak_flops.bf16")
    assert has_source({"peak_flops.bf16": "x"}, "peak_flops.bf16")
    assert not has_source({"peak_flops.fp32": "x"}, "peak_flops.bf16")
    assert not has_source({"memory": "x"}, "memory_bandwidth")


@pytest.mark.parametrize("path", hw_files(), ids=lambda p: str(p.relative_to(HW_DIR)))
def test_every_numeric_field_has_a_source(catalog: Catalog, path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    item = catalog.items[data["kind"]][data["name"]]
    fields = list(numeric_fields(item))
    assert fields, "an item with no numbers?"
    missing = [f for f in fields if not has_source(item.sources, f)]
    assert not missing, f"{path.name}: no sources entry for {missing}"
    empty = [k for k, v in item.sources.items() if not v or not v.strip()]
    assert not empty, f"{path.name}: empty source strings for {empty}"


@pytest.mark.parametrize("name", REQUIRED["node"])
def test_node_sources_cover_required_keys(catalog: Catalog, name: str) -> None:
    node = catalog.items["node"][name]
    for key in ("num_gpus", "dram", "ssd", "host_price_per_hour"):
        assert key in node.sources, f"node {name}: sources needs {key!r}"


# --- units and sanity ------------------------------------------------------------------------------


def test_h100_sxm_si_values(catalog: Catalog) -> None:
    g: GPUSpec = catalog.get("gpu", "h100-sxm")
    assert g.memory == 80 * 2**30
    assert g.memory_bandwidth == pytest.approx(3.35e12)
    assert g.peak_flops.bf16 == pytest.approx(989.4e12, rel=0.01)
    assert g.peak_flops.fp8 == pytest.approx(1978.9e12, rel=0.01)
    assert g.l2_cache == 50 * 2**20
    assert g.nvlink_bandwidth == pytest.approx(450e9)
    assert g.tdp == 700.0
    assert g.kernel_launch_overhead == pytest.approx(4e-6)
    assert g.price_per_hour == pytest.approx(2.99)


@pytest.mark.parametrize("name", REQUIRED["gpu"])
def test_gpu_ranges_and_dense_peaks(catalog: Catalog, name: str) -> None:
    g: GPUSpec = catalog.get("gpu", name)
    p = g.peak_flops
    assert 8 * GiB <= g.memory <= 256 * GiB
    assert 100e9 <= g.memory_bandwidth <= 10e12
    assert 1 * 2**20 <= g.l2_cache <= 128 * 2**20
    assert 10 <= g.sm_count <= 200
    assert 1e12 <= p.fp32 <= 100e12
    for dtype in ("tf32", "fp16", "bf16", "fp8", "int8"):
        v = getattr(p, dtype)
        assert v is None or p.fp32 <= v <= 5e15, f"{name} {dtype}"
    if p.tf32 and p.fp16:
        assert p.tf32 <= p.fp16
    if p.fp8 and p.fp16:
        assert p.fp16 < p.fp8
    assert p.fp16 == pytest.approx(DENSE_FP16_TFLOPS[name] * 1e12, rel=0.01), "dense, not sparse"
    if p.bf16:
        assert p.bf16 == pytest.approx(p.fp16)
    assert g.pcie.lanes == 16 and g.pcie.gen == PCIE_GEN.get(name, 4)
    assert g.nvlink_bandwidth is None or 50e9 <= g.nvlink_bandwidth <= 1e12
    assert 50 <= g.tdp <= 1000
    assert g.idle_power is not None and 0 < g.idle_power < 0.3 * g.tdp
    assert 0.1 <= g.price_per_hour <= 20
    assert 1e-6 <= g.kernel_launch_overhead <= 20e-6


def test_gpu_dtype_support(catalog: Catalog) -> None:
    t4 = catalog.get("gpu", "t4").peak_flops
    assert t4.bf16 is None and t4.tf32 is None and t4.fp8 is None
    for name in ("a100-40gb-sxm", "a100-80gb-sxm", "a100-80gb-pcie", "a40", "rtx-3090", "rtx-a6000"):
        assert catalog.get("gpu", name).peak_flops.fp8 is None, name
    for name in ("l4", "t4", "rtx-4090"):
        assert catalog.get("gpu", name).nvlink_bandwidth is None, name
    for name in ("a40", "rtx-a6000", "rtx-3090"):
        assert catalog.get("gpu", name).nvlink_bandwidth == pytest.approx(56.25e9), name


@pytest.mark.parametrize("name", REQUIRED["cpu"] + ["gcp-n1-skylake-16c"])
def test_cpu_ranges(catalog: Catalog, name: str) -> None:
    c: CPUSpec = catalog.get("cpu", name)
    assert c.cores <= c.threads <= 2 * c.cores
    assert 1.0 <= c.base_clock_ghz <= 6.0
    per_core_clock = c.cores * c.base_clock_ghz * 1e9
    assert 8 * per_core_clock <= c.peak_flops.fp32 <= 64 * per_core_clock * 1.0001
    for dtype in ("fp16", "bf16", "int8"):
        v = getattr(c.peak_flops, dtype)
        assert v is None or v >= c.peak_flops.fp32
    mem = catalog.get("memory", c.memory_type)
    assert mem.technology in ("ddr4", "ddr5")
    assert 1 <= c.memory_channels <= 12
    assert 5 <= c.tdp <= 500
    assert 0 < c.price_per_hour <= 20


def test_cpu_derivations(catalog: Catalog) -> None:
    spr = catalog.get("cpu", "xeon-platinum-8480")
    assert spr.peak_flops.fp32 == pytest.approx(56 * 2.0e9 * 64)
    assert spr.peak_flops.bf16 == pytest.approx(56 * 2.0e9 * 1024)
    rome = catalog.get("cpu", "epyc-7742")
    assert rome.peak_flops.fp32 == pytest.approx(64 * 2.25e9 * 32) and rome.peak_flops.bf16 is None
    genoa = catalog.get("cpu", "epyc-9654")
    assert genoa.peak_flops.fp32 == pytest.approx(96 * 2.4e9 * 32)
    assert genoa.peak_flops.bf16 == pytest.approx(2 * genoa.peak_flops.fp32)


@pytest.mark.parametrize(
    "name", sorted(set(REQUIRED["memory"]) | {"ddr5-4400-8ch", "ddr4-2666-6ch", "vm-dram-2vcpu"})
)
def test_memory_ranges(catalog: Catalog, name: str) -> None:
    m: MemorySpec = catalog.get("memory", name)
    assert 1 * GiB <= m.capacity <= 4 * TiB
    assert 5e9 <= m.bandwidth <= 1e12
    assert m.write_bw <= m.bandwidth * 1.0001
    assert 50e-9 <= m.latency <= 1e-6
    match = re.fullmatch(r"ddr(\d)-(\d+)-(\d+)ch", name)
    if match:  # a DIMM set: sustained bandwidth is 60-90% of channels x MT/s x 8 B
        theoretical = int(match.group(2)) * 1e6 * 8 * int(match.group(3))
        assert 0.6 * theoretical <= m.bandwidth <= 0.9 * theoretical
        assert m.technology == f"ddr{match.group(1)}"
    if m.technology == "cxl":
        assert 100e-9 <= m.added_latency <= 300e-9
        assert m.latency > m.added_latency
        assert 64 * GiB <= m.capacity <= 1 * TiB
    else:
        assert m.added_latency == 0.0


def test_cxl_expander_figures(catalog: Catalog) -> None:
    x8 = catalog.get("memory", "cxl-ddr5-expander-x8")
    x16 = catalog.get("memory", "cxl-ddr5-expander-x16")
    assert 20e9 <= x8.bandwidth <= 36e9 and 128 * GiB <= x8.capacity <= 256 * GiB
    assert 45e9 <= x16.bandwidth <= 60e9
    assert x8.bandwidth <= catalog.get("link", "cxl-gen5-x8").achieved_bandwidth
    assert x16.bandwidth <= catalog.get("link", "cxl-gen5-x16").achieved_bandwidth


@pytest.mark.parametrize("name", sorted(set(REQUIRED["ssd"]) | {"ci-vm-virtual-disk"}))
def test_ssd_ranges(catalog: Catalog, name: str) -> None:
    s: SSDSpec = catalog.get("ssd", name)
    assert 100e9 <= s.capacity <= 64e12
    assert 100e6 <= s.read_bandwidth <= 16e9
    assert 100e6 <= s.write_bandwidth <= 16e9
    assert 5e-6 <= s.read_latency <= 5e-3
    assert 5e-6 <= s.write_latency <= 5e-3
    match = re.match(r"nvme-gen(\d)-", name)
    if match:
        assert s.pcie_gen == int(match.group(1))
        link = catalog.get("link", f"pcie-gen{s.pcie_gen}-x4")
        assert s.read_bandwidth <= link.bandwidth


def test_gcp_local_ssd(catalog: Catalog) -> None:
    s = catalog.get("ssd", "gcp-local-ssd-nvme")
    assert s.capacity == 375 * GiB
    assert s.read_bandwidth == pytest.approx(660e6) and s.write_bandwidth == pytest.approx(350e6)


@pytest.mark.parametrize("name", REQUIRED["link"])
def test_link_ranges(catalog: Catalog, name: str) -> None:
    link: LinkSpec = catalog.get("link", name)
    assert 0.5 * link.bandwidth <= link.achieved_bandwidth <= link.bandwidth
    assert 0 <= link.latency <= 100e-6
    match = re.fullmatch(r"(?:pcie|cxl)-gen(\d)-x(\d+)", name)
    if match:
        gen, lanes = int(match.group(1)), int(match.group(2))
        theoretical = PCIE_GT_S[gen] * 1e9 * lanes * 128 / 130 / 8
        assert link.bandwidth == pytest.approx(theoretical, rel=0.01)
        assert link.type == ("cxl" if name.startswith("cxl") else "pcie")


def test_link_headline_numbers(catalog: Catalog) -> None:
    get = catalog.get
    assert get("link", "pcie-gen3-x16").bandwidth == pytest.approx(15.75e9)
    assert get("link", "pcie-gen4-x16").bandwidth == pytest.approx(31.5e9)
    assert get("link", "pcie-gen5-x16").bandwidth == pytest.approx(63e9)
    assert get("link", "nvlink3").bandwidth == pytest.approx(300e9)
    assert get("link", "nvlink4").bandwidth == pytest.approx(450e9)
    assert get("link", "nvlink-bridge-ampere").bandwidth == pytest.approx(56.25e9)
    assert get("link", "ib-hdr-200").bandwidth == pytest.approx(25e9)
    assert get("link", "ib-ndr-400").bandwidth == pytest.approx(50e9)
    assert get("link", "roce-100g").bandwidth == pytest.approx(12.5e9)
    assert get("link", "eth-25g").bandwidth == pytest.approx(3.125e9)
    for name in ("pcie-gen3-x16", "pcie-gen4-x16", "pcie-gen5-x16"):
        link = get("link", name)
        assert 0.75 <= link.achieved_bandwidth / link.bandwidth <= 0.9, name


# --- nodes -----------------------------------------------------------------------------------------

LINK_TYPES = {
    "host_to_gpu": {"pcie"},
    "gpu_to_gpu": {"nvlink", "pcie"},
    "cxl": {"cxl"},
    "nvme": {"pcie", "nvme"},
    "network": {"network"},
}


@pytest.mark.parametrize("name", REQUIRED["node"])
def test_node_references_resolve(catalog: Catalog, name: str) -> None:
    node: NodeSpec = catalog.get("node", name)
    where = str(catalog.file_of("node", name))
    if node.gpu is not None:
        catalog.get("gpu", node.gpu, where=where, key="gpu")
        assert node.num_gpus >= 1
    else:
        assert node.num_gpus == 0
    cpu = catalog.get("cpu", node.cpu, where=where, key="cpu")
    catalog.get("memory", cpu.memory_type, where=where, key="cpu.memory_type")
    dram = catalog.get("memory", node.dram.type, where=where, key="dram.type")
    assert dram.technology in ("ddr4", "ddr5")
    for dev in node.cxl:
        mem = catalog.get("memory", dev.type, where=where, key="cxl")
        assert mem.technology == "cxl"
    for dev in node.ssd:
        catalog.get("ssd", dev.type, where=where, key="ssd")
        assert dev.count >= 1
    for field, allowed in LINK_TYPES.items():
        link_name = getattr(node.links, field)
        if link_name is not None:
            link = catalog.get("link", link_name, where=where, key=f"links.{field}")
            assert link.type in allowed, f"{name}: links.{field} is a {link.type} link"
    if node.cxl:
        assert node.links.cxl is not None
    if node.num_nics:
        assert node.links.network is not None
    assert node.host_price_per_hour is not None and node.host_price_per_hour >= 0


def test_node_compositions(catalog: Catalog) -> None:
    dgx_h = catalog.get("node", "dgx-h100")
    assert (dgx_h.gpu, dgx_h.num_gpus, dgx_h.cpu, dgx_h.num_sockets) == (
        "h100-sxm",
        8,
        "xeon-platinum-8480",
        2,
    )
    assert dgx_h.dram.capacity == 2 * TiB and dgx_h.num_nics == 8
    assert (dgx_h.links.gpu_to_gpu, dgx_h.links.host_to_gpu, dgx_h.links.network) == (
        "nvlink4",
        "pcie-gen5-x16",
        "ib-ndr-400",
    )
    assert sum(d.count for d in dgx_h.ssd) == 8
    dgx_a = catalog.get("node", "dgx-a100")
    assert (dgx_a.gpu, dgx_a.num_gpus, dgx_a.cpu, dgx_a.num_sockets) == ("a100-80gb-sxm", 8, "epyc-7742", 2)
    assert dgx_a.links.gpu_to_gpu == "nvlink3" and dgx_a.links.network == "ib-hdr-200"
    cxl = catalog.get("node", "h100-pcie-cxl-server")
    assert [(d.type, d.count) for d in cxl.cxl] == [("cxl-ddr5-expander-x16", 1)]
    assert (cxl.links.host_to_gpu, cxl.links.cxl, cxl.links.nvme) == (
        "pcie-gen5-x16",
        "cxl-gen5-x16",
        "pcie-gen5-x4",
    )
    t4 = catalog.get("node", "gcp-t4-vm")
    assert t4.gpu == "t4" and t4.links.host_to_gpu == "pcie-gen3-x16"
    assert t4.dram.capacity == 208 * GiB
    ssd_total = sum(d.count * (d.capacity or catalog.get("ssd", d.type).capacity) for d in t4.ssd)
    assert ssd_total == 1500 * GiB
    for name in ("cpu-server", "ci-vm"):
        node = catalog.get("node", name)
        assert node.gpu is None and node.num_gpus == 0
    assert catalog.get("node", "ci-vm").cpu == "generic-2core-vm"
    assert catalog.get("node", "ci-vm").dram.capacity == 24 * GiB


# --- errors ----------------------------------------------------------------------------------------


def _write(folder: Path, name: str, data: dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _h100() -> dict[str, Any]:
    return yaml.safe_load((HW_DIR / "gpus" / "h100-sxm.yaml").read_text())


def test_malformed_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("kind: gpu\nname: [broken\nmemory: 80 GiB\n")
    with pytest.raises(SpecError) as info:
        Catalog.load([tmp_path])
    assert info.value.where == str(path)
    assert str(path) in str(info.value)
    assert "malformed YAML" in str(info.value)


def test_the_good_file_loads_from_a_temp_folder(tmp_path: Path) -> None:
    _write(tmp_path, "h100-sxm", _h100())
    cat = Catalog.load([tmp_path])
    assert cat.get("gpu", "h100-sxm").memory == 80 * 2**30


@pytest.mark.parametrize("bad", ["-3.35 TB/s", 3.35, "3.35", "3.35 TB", "3.35 GT/s"])
def test_bad_bandwidth_names_the_key(tmp_path: Path, bad: Any) -> None:
    data = _h100()
    data["memory_bandwidth"] = bad
    path = _write(tmp_path, "h100-sxm", data)
    with pytest.raises(SpecError) as info:
        Catalog.load([tmp_path])
    assert info.value.key == "memory_bandwidth"
    assert "memory_bandwidth" in str(info.value)
    assert str(path) in str(info.value)


def test_unitless_nested_flops_names_the_dotted_key(tmp_path: Path) -> None:
    data = _h100()
    data["peak_flops"]["bf16"] = 989.4
    _write(tmp_path, "h100-sxm", data)
    with pytest.raises(SpecError) as info:
        Catalog.load([tmp_path])
    assert info.value.key == "peak_flops.bf16"


def test_negative_link_bandwidth_and_achieved_above_theoretical(tmp_path: Path) -> None:
    data = yaml.safe_load((HW_DIR / "links" / "pcie-gen4-x16.yaml").read_text())
    data["bandwidth"] = "-31.5 GB/s"
    _write(tmp_path, "pcie-gen4-x16", data)
    with pytest.raises(SpecError) as info:
        Catalog.load([tmp_path])
    assert info.value.key == "bandwidth"
    data["bandwidth"] = "20 GB/s"
    _write(tmp_path, "pcie-gen4-x16", data)
    with pytest.raises(SpecError, match="achieved_bandwidth exceeds"):
        Catalog.load([tmp_path])


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    data = _h100()
    data["hbm_stacks"] = 5
    _write(tmp_path, "h100-sxm", data)
    with pytest.raises(SpecError, match="unknown key") as info:
        Catalog.load([tmp_path])
    assert info.value.key == "hbm_stacks"


def test_duplicate_names_in_sibling_subfolders_clash(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _write(tmp_path / "a", "h100-sxm", _h100())
    _write(tmp_path / "b", "h100-copy", _h100())
    with pytest.raises(SpecError, match="duplicate gpu name"):
        Catalog.load([tmp_path])


def test_earlier_folder_overrides_shipped_item(tmp_path: Path) -> None:
    data = _h100()
    data["memory"] = "96 GiB"
    _write(tmp_path, "h100-sxm", data)
    cat = Catalog.load([tmp_path, HW_DIR])
    assert cat.get("gpu", "h100-sxm").memory == 96 * 2**30
    assert cat.get("gpu", "a100-80gb-sxm").memory == 80 * 2**30
