"""Per-token-count operator tables of an :class:`~simkit.cost.iteration.IterationModel`, and
their on-disk cache.

Building the tables evaluates every token-dependent operator (with a calibration profile: the
fitted trees) at every token count up to the largest a batch can have (the serving budget),
which costs most of a cold start. Token counts beyond (a static batch's whole-batch prefill)
are evaluated one block at a time as a run asks for them and kept in a sparse log
(:class:`SparseRows`). The result depends only on the model, the compute device (its peaks and bandwidth,
what-if scales included), the efficiency model (a profile's fitted models, or the datasheet
defaults), the precision, the tensor/expert-parallel layout, the table size and the software
(simkit and numpy versions, the source of the code that computes them, and the processor kind
numpy's loops are compiled for: :func:`machine`). The cache key is
a SHA-256 over all of those, taken from the objects themselves and the source text (not file
names or dates), so a cached table is never stale: changing any input, or any line of
``simkit/cost`` (or of the spec modules it reads: :data:`DIGESTED`), gives another key. Dense
entries are written atomically (two processes building the same table both write it whole;
the last rename wins) and verified (key and size; a damaged file is rebuilt) on load. A sparse
log only grows by whole records appended in one write each, every record checksummed with the
key, so a torn or foreign record is skipped (and the log rewritten without it), never used.

Where: ``tables/`` under the cache folder (:mod:`simkit.cachedir`: ``$SIMKIT_CACHE_DIR``, else
``$XDG_CACHE_HOME/simkit``, else ``~/.cache/simkit``; ``SIMKIT_CACHE_DIR=`` (empty) turns it
off). An efficiency model whose content cannot be fingerprinted (not a dataclass of plain
values and arrays) is never cached.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simkit.cachedir import (
    MAX_FOLDER_BYTES,
    cache_root,
    pack_arrays,
    prune,
    touch,
    unpack_arrays,
    write_atomic,
)

if TYPE_CHECKING:
    from simkit.cost.iteration import IterationModel

Tables = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(per-layer, non-layer, head) seconds per token count."""

FORMAT = 3
"""Bumped whenever what the tables contain or how they are computed changes, or how an entry is
stored (3: :func:`simkit.cachedir.pack_arrays` instead of ``.npz``)."""

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
    elif hasattr(x, "__pydantic_fields__"):
        # a spec (pydantic model): its fields as a dataclass's, without building its serializer
        # (that would build the class's schema, and pydantic's plugin look-up, in every run)
        h.update(f"<{type(x).__module__}.{type(x).__qualname__}>".encode())
        for name in type(x).__pydantic_fields__:
            h.update(name.encode())
            _feed(h, x.__dict__[name])
    else:
        raise _Unfingerprintable(type(x).__name__)


DIGESTED = ("specs/model.py", "specs/hardware.py", "specs/node.py", "specs/calibration.py")
"""The modules outside ``simkit/cost`` whose source the tables' key covers: every simkit module
the cost code imports that can change a number (the model's derived sizes, the dtype fallbacks of
peak FLOP/s, the node's links, the profile's parsed form); tests/test_cold_tables.py checks the
cost modules import no other."""


@functools.cache
def code_digest() -> str | None:
    """SHA-256 of the source of the code that computes the tables (every module of
    ``simkit.cost`` and :data:`DIGESTED`), so that a changed formula misses the cache even when
    nobody bumped :data:`FORMAT` or the version (a source checkout being edited); None when the
    source cannot be read (then nothing is cached)."""
    cost_dir = Path(__file__).resolve().parent
    h = hashlib.sha256()
    try:
        for p in [*sorted(cost_dir.glob("*.py")), *(cost_dir.parent / d for d in DIGESTED)]:
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    except OSError:
        return None
    return h.hexdigest()


@functools.cache
def machine() -> str:
    """The processor architecture and the SIMD features numpy dispatches its loops on: numpy's
    vectorised exp, log and power may round differently on another instruction set, so a cache
    folder shared by different machines (a network home) keeps one entry per kind."""
    import platform

    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as feats
        except ImportError:
            feats = {}
    return platform.machine() + ":" + ",".join(sorted(k for k, v in feats.items() if v))


def table_key(cost: IterationModel, size: int | None) -> str | None:
    """The cache key of ``cost``'s operator tables of ``size`` entries (None: its sparse log of
    rows at any token count); None if not cacheable."""
    from simkit import __version__

    code = code_digest()
    if code is None:
        return None
    h = hashlib.sha256()
    try:
        for part in (
            FORMAT, code, __version__, np.__version__, machine(), "sparse" if size is None else size, cost.model, cost.device, cost.efficiency, cost.precision,
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
    path = folder / f"{key}.bin"
    try:
        entry = unpack_arrays(path.read_bytes())
    except OSError:
        entry = None  # missing or unreadable: rebuild
    if entry is not None:  # (a damaged or foreign entry unpacks to None or fails the checks: rebuild)
        head, arrays = entry
        hit = arrays.get("per_layer"), arrays.get("nonlayer"), arrays.get("head")
        if head.get("key") == key and all(a is not None and a.shape == (size,) for a in hit):
            touch(path)
            return hit  # type: ignore[return-value]
    tables = compute(cost, size)
    blob = pack_arrays({"key": key}, {"per_layer": tables[0], "nonlayer": tables[1], "head": tables[2]})
    if blob is not None:
        write_atomic(path, blob)  # a read-only or full cache folder only costs the rebuild next time
    return tables


_RECORD = np.dtype([("tokens", "<i8"), ("rows", "<f8", (3,)), ("check", "<u4"), ("pad", "<u4")])
"""One row of a sparse log: the token count, its (per-layer, non-layer, head) seconds and a
CRC-32 of the key and those 32 bytes."""


class SparseRows:
    """Operator-table rows of one :class:`~simkit.cost.iteration.IterationModel` at scattered
    token counts (those beyond its dense tables that a run asks for), memoised, and appended to
    a log on disk (``<key>.rows`` next to the dense tables, :func:`table_key` with size None) that
    the next run with the same key reads back."""

    def __init__(self, cost: IterationModel) -> None:
        self._cost = cost
        self._rows: dict[int, tuple[float, float, float]] = {}
        folder = cache_dir()
        key = table_key(cost, None) if folder is not None else None
        self._path = folder / f"{key}.rows" if folder is not None and key is not None else None
        self._salt = (key or "").encode()
        if self._path is not None:
            self._read()

    def _check(self, rec: np.ndarray) -> np.ndarray:
        """The CRC-32 of each record's key and first 32 bytes."""
        raw = rec.view(np.uint8).reshape(len(rec), _RECORD.itemsize)[:, :32]
        return np.array([zlib.crc32(r.tobytes(), zlib.crc32(self._salt)) for r in raw], dtype=np.uint32)

    def _read(self) -> None:
        assert self._path is not None
        try:
            data = self._path.read_bytes()
        except OSError:
            return
        whole = len(data) // _RECORD.itemsize
        rec = np.frombuffer(data[: whole * _RECORD.itemsize], dtype=_RECORD)
        ok = rec["check"] == self._check(rec)
        for t, r in zip(rec["tokens"][ok].tolist(), rec["rows"][ok].tolist()):
            self._rows.setdefault(t, tuple(r))
        if not ok.all():
            # a damaged record (another file's bytes, or records shifted by a write a crash tore):
            # keep the good ones. A partial record at the end is left alone: it may be another
            # process's append in flight
            write_atomic(self._path, rec[ok].tobytes())
        else:
            touch(self._path)

    def rows(self, tokens: list[int], compute_at: Callable[[IterationModel, np.ndarray], Tables]) -> Tables:
        """(per-layer, non-layer, head) at the token counts ``tokens``: those not known yet from
        ``compute_at(cost, T)`` (:func:`simkit.cost.iteration.op_tables_at`) in one block."""
        missing = [t for t in tokens if t not in self._rows]
        if missing:
            got = compute_at(self._cost, np.array(missing, dtype=np.float64))
            rec = np.zeros(len(missing), dtype=_RECORD)
            rec["tokens"] = missing
            rec["rows"] = np.column_stack(got)
            for t, r in zip(missing, rec["rows"].tolist()):
                self._rows[t] = tuple(r)
            if self._path is not None:
                rec["check"] = self._check(rec)
                self._append(rec.tobytes())
        return tuple(np.array([self._rows[t][c] for t in tokens], dtype=np.float64) for c in range(3))  # type: ignore[return-value]

    def _append(self, data: bytes) -> None:
        """One write in append mode (whole records, never interleaved with another process's);
        an unwritable folder only costs the evaluation next time."""
        assert self._path is not None
        try:
            new = not self._path.exists()
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError:
            return
        if new:
            prune(self._path.parent, MAX_FOLDER_BYTES, keep=self._path)
