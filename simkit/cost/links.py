"""The link facts of a node: the one home, for the simulator and the placement optimiser, of
every link direction's bandwidth and latency (catalog figures, a node preset's ``measured:``
rates, a calibration profile's measurements, what-if scales), of the link a group of GPUs
communicates over, and of a collective's time over it."""

from __future__ import annotations

import numpy as np

from simkit.cost.efficiency import EfficiencyModel
from simkit.specs.node import Node


def group_link(node: Node, cross_node: bool) -> tuple[float, float, str]:
    """(bandwidth per GPU, latency, kind) of the link a group of GPUs communicates over."""
    if cross_node:
        net = node.link("network")
        assert net is not None
        return net.achieved_bandwidth, net.latency, "network"
    link = node.link("gpu_to_gpu")
    if link is not None:
        return link.achieved_bandwidth, link.latency, "nvlink"
    pcie = node.link("host_to_gpu")
    assert pcie is not None
    return pcie.achieved_bandwidth, pcie.latency, "pcie"


def topology(node: Node) -> str:
    """How a node's GPUs are wired, as calibration profiles key collectives: ``nvswitch`` (every
    GPU to every GPU over NVLink through switches: the link's ``fabric: switch``, 4 GPUs or more),
    ``pairwise_nvlink`` (``fabric: pairwise`` bridges between pairs, or fewer GPUs), or ``pcie``."""
    gg = node.link("gpu_to_gpu")
    if gg is None or gg.type != "nvlink":
        return "pcie"
    return "nvswitch" if node.num_gpus >= 4 and gg.fabric == "switch" else "pairwise_nvlink"


def comm_fn(kind: str, node: Node, n: int, cross_node: bool, algorithm: str = "ring", eff: EfficiencyModel | None = None):  # type: ignore[no-untyped-def]
    """Seconds of one collective of ``kind`` over ``n`` GPUs, as a function of bytes per GPU:
    the calibration profile's fitted model for this topology and GPU count where it has one,
    else the alpha-beta model over the link's achieved bandwidth and latency."""
    from simkit.cost import collectives

    bw, lat, link_kind = group_link(node, cross_node)
    fit = None
    if not cross_node and eff is not None:
        fit = eff.collective_fit(kind, topology(node), n)
        if fit is not None:
            # measured on the unscaled link: a what-if bandwidth scales its bands
            fit = fit.scaled(node.scale_of("gpu_to_gpu" if node.link("gpu_to_gpu") is not None else "host_to_gpu"))

    def f(nbytes: np.ndarray) -> np.ndarray:
        return collectives.collective_time(kind, np.asarray(nbytes, dtype=np.float64), n, bw, lat, algorithm, fit)

    return f


def measured_links(eff: EfficiencyModel, io_block: float, io_depth: int) -> dict[str, tuple[float, float]]:
    """Link bandwidths and latencies a calibration profile measured on this machine, keyed like
    the engine's links: SSD reads/writes at the streaming block size and queue depth (the
    closest measured configuration; reads from the sequential-read benchmark where the profile
    has it, since streamed weights are read sequentially), and pinned host<->device copies."""
    out: dict[str, tuple[float, float]] = {}
    ssd = eff.measured_ssd()
    for d, key in (("seq_read" if ssd.get("seq_read") else "read", "nvme_read"), ("write", "nvme_write")):
        entry = ssd.get(d)
        if not entry:
            continue
        table = entry.get("by_block_and_depth") or []
        # the device's own latency (4 KiB at queue depth 1); a row's latency includes the
        # queueing delay that its bandwidth already accounts for, so it must not be added again
        base_lat = float(entry.get("latency", 0.0))
        if table:
            # the measured block size closest to the streaming one; the best bandwidth reached
            # with at most io_depth requests in flight (more in flight never slows a sequential
            # stream, so dips between queue depths are measurement noise)
            blk = min({r["block_size"] for r in table}, key=lambda b: abs(np.log2(b / io_block)))
            rows = [r for r in table if r["block_size"] == blk]
            rows_ok = [r for r in rows if r["queue_depth"] <= io_depth] or rows
            out[key] = (float(max(r["bandwidth"] for r in rows_ok)), base_lat)
        elif entry.get("bandwidth"):
            out[key] = (float(entry["bandwidth"]), base_lat)
    links = eff.measured_links()
    for name, key in (("h2d_pinned", "h2d"), ("d2h_pinned", "d2h")):
        e = links.get(name)
        if e and e.get("bandwidth"):
            out[key] = (float(e["bandwidth"]), float(e.get("latency", 0.0)))
    for name, key in (("h2d_pageable", "h2d_pageable"), ("d2h_pageable", "d2h_pageable")):
        e = links.get(name)
        if e and e.get("bandwidth"):
            out[key] = (float(e["bandwidth"]), float(e.get("latency", 0.0)))
    return out


def _measured_link_scale(node: Node, key: str) -> float:
    """The what-if multiplier (``hardware.bandwidth_scale``) for a link rate measured on the
    unscaled machine (by a calibration profile, or in a node preset's ``measured:``): PCIe copies scale with ``host_to_gpu``; SSD streams by
    how much the scaled catalog path (the drives' bandwidth, capped by their NVMe links)
    speeds up over the unscaled one."""
    if key in ("h2d", "d2h", "d2h_kv", "h2d_pageable", "d2h_pageable"):
        return node.scale_of("host_to_gpu")
    if key in ("nvme_read", "nvme_write", "nvme_write_kv") and node.ssd:
        t = node.tiers()["ssd"]
        drive = t.read_bw if key == "nvme_read" else t.write_bw
        nv = node.link("nvme")
        cap = nv.achieved_bandwidth * len(node.ssd) if nv else float("inf")
        s_ssd, s_nv = node.scale_of("ssd"), node.scale_of("nvme")
        return min(drive, cap) / min(drive / s_ssd, cap / s_nv)
    return 1.0


def link_rates(node: Node, gpus: int, measured: dict[str, tuple[float, float]] | None = None) -> dict[str, tuple[float, float]]:
    """(bandwidth, latency) of every link direction of a replica of ``gpus`` GPUs, the one home
    of these numbers for the simulator and the placement optimiser: the catalog's achieved
    figures, replaced by what the node preset says was measured on that machine
    (``measured:``), replaced in turn by a calibration profile's measurements (``measured``).
    ``d2h_kv`` / ``nvme_write_kv``: the rate of KV-cache stores where the machine was measured
    to store KV slower than plain copies (strided writes into the host cache)."""
    out: dict[str, tuple[float, float]] = {}
    meas = node.spec.measured
    h2g = node.link("host_to_gpu")
    if h2g is not None and node.gpu is not None:
        out["h2d"] = (h2g.achieved_bandwidth * gpus, h2g.latency)
        out["d2h"] = (h2g.achieved_bandwidth * gpus, h2g.latency)
        if meas is not None:
            for key, v in (("h2d", meas.h2d_bandwidth), ("d2h", meas.d2h_bandwidth), ("d2h_kv", meas.d2h_kv_bandwidth)):
                if v is not None:
                    out[key] = (v * gpus * _measured_link_scale(node, key), h2g.latency)
    tiers = node.tiers()
    for tier, link, devices in (("ssd", "nvme", len(node.ssd)), ("cxl", "cxl", len(node.cxl))):
        if tier in tiers:  # the tier's own read/write rates, capped by its links
            t = tiers[tier]
            lk = node.link(link)
            cap = lk.achieved_bandwidth * devices if lk else float("inf")
            out[f"{link}_read"] = (min(t.read_bw, cap), t.latency)
            out[f"{link}_write"] = (min(t.write_bw, cap), t.latency)
            if tier == "ssd" and meas is not None:
                for key, v in (("nvme_read", meas.ssd_read_bandwidth), ("nvme_write", meas.ssd_write_bandwidth),
                               ("nvme_write_kv", meas.ssd_kv_write_bandwidth)):
                    if v is not None:
                        out[key] = (v * _measured_link_scale(node, key), t.latency)
    net = node.link("network")
    if net is not None:
        out["network"] = (net.achieved_bandwidth * max(node.num_nics, 1), net.latency)
    gg = node.link("gpu_to_gpu")
    if gg is not None:
        out["nvlink"] = (gg.achieved_bandwidth, gg.latency)
    for key, (bw, lat) in (measured or {}).items():
        if key in out:
            out[key] = (bw * (gpus if key in ("h2d", "d2h") else 1) * _measured_link_scale(node, key), lat)
            if key in ("d2h", "nvme_write"):
                out.pop(f"{key}_kv", None)  # the profile measured this machine's stores itself
    return out


KV_STORE_RATES = {"d2h": "d2h_kv", "nvme_write": "nvme_write_kv"}
"""Link directions whose KV-cache stores run at their own measured rate (see link_rates)."""


def kv_store_slowdown(rates: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Link direction -> (plain copy bandwidth / KV-store bandwidth), from link_rates."""
    out = {}
    for hop, kv_key in KV_STORE_RATES.items():
        if hop in rates and kv_key in rates:
            out[hop] = max(rates[hop][0] / rates[kv_key][0], 1.0)
    return out

