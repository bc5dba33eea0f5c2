"""Per-token-count operator tables of an :class:`~simkit.cost.iteration.IterationModel`, and
their on-disk cache.

Building the tables evaluates every token-dependent operator (with a calibration profile: the
fitted trees) at every token count up to the largest a batch can have, which costs most of a
cold start. The result depends only on the model, the compute device (its peaks and bandwidth,
what-if scales included), the efficiency model (a profile's fitted models, or the datasheet
defaults), the precision, the tensor/expert-parallel layout, the table size and the software
(simkit and numpy versions, and the source of the code that computes them). The cache key is
a SHA-256 over all of those, taken from the objects themselves and the source text (not file
names or dates), so a cached table is never stale: changing any input, or any line of
``simkit/cost``, gives another key. Entries are written atomically and verified (key and size) on load.

Where: ``tables/`` under the cache folder (:mod:`simkit.cachedir`: ``$SIMKIT_CACHE_DIR``, else
``$XDG_CACHE_HOME/simkit``, else ``~/.cache/simkit``; ``SIMKIT_CACHE_DIR=`` (empty) turns it
off). An efficiency model whose content cannot be fingerprinted (not a dataclass of plain
values and arrays) is never cached.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simkit.cachedir import cache_root, touch, write_atomic

if TYPE_CHECKING:
    from simkit.cost.iteration import IterationModel

Tables = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(per-layer, non-layer, head) seconds per token count."""

FORMAT = 1
"""Bumped whenever what the tables contain or how they are computed changes."""

_SKIP_FIELDS = frozenset({"samples", "path", "notes", "cross_validation", "fit_error"})
"""Profile fields that do not change a prediction (raw samples, where it was read from, prose)."""


class _Unfingerprintable(Exception):
    pass


def cache_dir() -> Path | None:
    """The table cache folder, or None when caching is off (:func:`simkit.cachedir.cache_root`)."""
    root = cache_root()
    return root / "tables" if root is not None else None


def _feed(h: Any, x: Any) -> None:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        h.update(f"<{type(x).__module__}.{type(x).__qualname__}>".encode())
        for f in dataclasses.fields(x):
            if f.name.startswith("_") or f.name in _SKIP_FIELDS:
                continue
            h.update(f.name.encode())
            _feed(h, getattr(x, f.name))
    elif isinstance(x, np.ndarray):
        h.update(f"nd{x.dtype.str}{x.shape}".encode())
        h.update(np.ascontiguousarray(x).tobytes())
    elif isinstance(x, Mapping):
        h.update(b"{")
        for k in sorted(x, key=str):
            h.update(repr(k).encode())
            _feed(h, x[k])
        h.update(b"}")
    elif isinstance(x, list | tuple):
        h.update(b"[")
        for v in x:
            _feed(h, v)
        h.update(b"]")
    elif x is None or isinstance(x, str | bool | int | float | np.integer | np.floating):
        h.update(f"{type(x).__name__}:{x!r};".encode())
    elif hasattr(x, "model_dump_json"):
        h.update(f"<{type(x).__qualname__}>".encode() + x.model_dump_json().encode())
    else:
        raise _Unfingerprintable(type(x).__name__)


@functools.cache
def code_digest() -> str | None:
    """SHA-256 of the source of the code that computes the tables (every module of
    ``simkit.cost`` and the model spec), so that a changed formula misses the cache even when
    nobody bumped :data:`FORMAT` or the version (a source checkout being edited); None when the
    source cannot be read (then nothing is cached)."""
    cost_dir = Path(__file__).resolve().parent
    h = hashlib.sha256()
    try:
        for p in [*sorted(cost_dir.glob("*.py")), cost_dir.parent / "specs" / "model.py"]:
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    except OSError:
        return None
    return h.hexdigest()


def table_key(cost: IterationModel, size: int) -> str | None:
    """The cache key of ``cost``'s operator tables of ``size`` entries; None if not cacheable."""
    from simkit import __version__

    code = code_digest()
    if code is None:
        return None
    h = hashlib.sha256()
    try:
        for part in (
            FORMAT, code, __version__, np.__version__, size, cost.model, cost.device, cost.efficiency, cost.precision,
            cost.tp, cost.ep, cost.ep_share,
        ):
            _feed(h, part)
    except _Unfingerprintable:
        return None
    return h.hexdigest()


def op_tables(
    cost: IterationModel, size: int, compute: Callable[[IterationModel, int], Tables]
) -> Tables:
    """``compute(cost, size)`` (the iteration model's operator tables:
    :func:`simkit.cost.iteration.compute_op_tables`), through the on-disk cache when it is on."""
    folder = cache_dir()
    key = table_key(cost, size) if folder is not None else None
    if folder is None or key is None:
        return compute(cost, size)
    path = folder / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key and z["per_layer"].shape == (size,):
                hit = z["per_layer"].copy(), z["nonlayer"].copy(), z["head"].copy()
                touch(path)
                return hit
    except (OSError, KeyError, ValueError):
        pass  # missing, partial or foreign: rebuild
    tables = compute(cost, size)
    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), per_layer=tables[0], nonlayer=tables[1], head=tables[2])
    write_atomic(path, buf.getvalue())  # a read-only or full cache folder only costs the rebuild next time
    return tables
