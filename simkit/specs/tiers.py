"""Where bytes live and which links they cross: the one home of the placement vocabulary.

A scenario's ``plan.offload`` names places in FlexGen's words (``gpu``, ``cpu``, ``cxl``,
``disk``); a node's memory tiers are ``hbm``, ``dram``, ``cxl`` and ``ssd`` (``Node.tiers``);
the engine's links are directions keyed as ``cost/links.link_rates`` keys them (``h2d``, ``d2h``,
``nvme_read``, ``nvme_write``, ``cxl_read``, ``cxl_write``). The maps below translate between
them, for the simulator (policies/offload.py, engine/offload.py, the prefix cache's moves in
engine/engine.py) and the placement optimiser (policies/offload_opt.py) alike.
"""

from __future__ import annotations

from typing import Literal

Place = Literal["gpu", "cpu", "cxl", "disk"]
PLACES: tuple[Place, ...] = ("gpu", "cpu", "cxl", "disk")
"""Placement keys of ``plan.offload`` (weights, kv_cache, activations shares), fastest first."""
OFF_GPU: tuple[Place, ...] = ("cpu", "cxl", "disk")
"""The places off the compute device, whose bytes cross links."""

TIER_OF: dict[str, str] = {"gpu": "hbm", "cpu": "dram", "cxl": "cxl", "disk": "ssd"}
"""Placement key -> the node's memory tier (``gpu`` is DRAM when the model computes on the CPU:
see :func:`tier_of`)."""

READ_PATH: dict[str, tuple[str, ...]] = {"cpu": ("h2d",), "cxl": ("cxl_read", "h2d"), "disk": ("nvme_read", "h2d")}
"""Link directions a byte crosses from a place into the GPU's memory."""
WRITE_PATH: dict[str, tuple[str, ...]] = {"cpu": ("d2h",), "cxl": ("d2h", "cxl_write"), "disk": ("d2h", "nvme_write")}
"""Link directions a byte crosses from the GPU's memory to a place."""
CPU_READ_PATH: dict[str, tuple[str, ...]] = {"cpu": (), "cxl": ("cxl_read",), "disk": ("nvme_read",)}
"""Link directions a byte crosses from a place into host DRAM (CPU compute, CPU attention)."""
CPU_WRITE_PATH: dict[str, tuple[str, ...]] = {"cpu": (), "cxl": ("cxl_write",), "disk": ("nvme_write",)}
"""Link directions a byte crosses from host DRAM to a place."""

PLACE_OF_TIER: dict[str, str] = {"dram": "cpu", "cxl": "cxl", "ssd": "disk"}
"""A memory tier below the GPU's -> its placement key."""

STAGED_TIERS: tuple[str, ...] = ("disk",)
"""Places whose bytes reach the GPU through a pinned DRAM buffer, one hop after the other (store
and forward): neither FlexGen (a copy thread reads a file into a pinned relay buffer, then copies
it to the GPU) nor ZeRO-Inference (NVMe reads into pinned swap buffers) reads disk to GPU
directly. CXL memory is host memory the GPU's DMA reads as it streams."""

LINK_DIRECTIONS: tuple[str, ...] = ("h2d", "d2h", "nvme_read", "nvme_write", "cxl_read", "cxl_write")
"""Every link direction a path above uses, in the order the placement optimiser lists them."""


def tier_of(place: str, compute_on_cpu: bool) -> str:
    """The memory tier a placement key names (``gpu`` is the compute device's memory)."""
    if place == "gpu" and compute_on_cpu:
        return "dram"
    return TIER_OF[place]


def read_path(place: str, to_cpu: bool) -> tuple[str, ...]:
    """Link directions from ``place`` into the compute memory (host DRAM when ``to_cpu``)."""
    return CPU_READ_PATH[place] if to_cpu else READ_PATH[place]


def write_path(place: str, from_cpu: bool) -> tuple[str, ...]:
    """Link directions from the compute memory (host DRAM when ``from_cpu``) to ``place``."""
    return CPU_WRITE_PATH[place] if from_cpu else WRITE_PATH[place]


def tier_path(src: str, dst: str) -> tuple[str, ...]:
    """Link directions bytes cross moving from memory tier ``src`` to tier ``dst`` (``hbm``,
    ``dram``, ``cxl``, ``ssd``; the prefix cache's vocabulary): into or out of HBM over the read
    and write paths above, and between lower tiers through host DRAM (read from ``src`` into DRAM,
    written from DRAM to ``dst``)."""
    if src == dst:
        return ()
    if dst == "hbm":
        return READ_PATH[PLACE_OF_TIER[src]]
    if src == "hbm":
        return WRITE_PATH[PLACE_OF_TIER[dst]]
    return CPU_READ_PATH[PLACE_OF_TIER[src]] + CPU_WRITE_PATH[PLACE_OF_TIER[dst]]
