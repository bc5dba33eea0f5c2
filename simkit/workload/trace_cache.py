"""The on-disk cache of parsed trace files: a shipped reader's :class:`TraceColumns` of a file,
keyed by a SHA-256 of everything they depend on (the file's bytes, the format, the bad-line
mode, the source of :mod:`simkit.workload.traces`, numpy's and Python's versions), so an entry
is never stale. The file is read and hashed on every run; only its parsing is skipped on a hit
(the 16k Azure case: ~20 ms of regular-expression checks and integer conversion, and for a
file past the plain readers' size limit, pandas' import and parse).

Only parses that found no bad lines are stored (a file with some is parsed every time, and
reports them as before), and only for the readers defined in :mod:`simkit.workload.traces` (a
user-registered reader's code is not in the key). Where: ``traces/`` under :func:`simkit.cachedir.cache_root`;
``SIMKIT_CACHE_DIR=`` (empty) turns it off. An entry is one JSON header line (key, array
layout, the non-array fields) followed by the arrays' raw bytes; a damaged or foreign entry is
parsed again and rewritten.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from simkit.cachedir import cache_root, touch, write_atomic

FORMAT = 1
"""Bumped whenever what an entry holds changes."""

ARRAYS = ("t_s", "input_tokens", "output_tokens", "failed", "model", "prefix_hashes", "prefix_offsets")
"""The array fields of :class:`~simkit.workload.traces.TraceColumns` (each may be None except
the first three); its other fields are ``model_names``, ``prefix_block_tokens`` and ``meta``."""


@functools.cache
def _code_digest() -> str | None:
    """SHA-256 of the readers' source (``simkit/workload/traces.py``), so that a changed reader
    misses the cache; None when the source cannot be read (then nothing is cached)."""
    try:
        return hashlib.sha256(Path(__file__).with_name("traces.py").read_bytes()).hexdigest()
    except OSError:
        return None


def entry(path: Path, parser: str) -> tuple[Path, str] | None:
    """(entry path, key) of the parse of the file at ``path`` by ``parser`` (the reader and the
    options its parse depends on, as text), or None when caching is off or the file cannot be
    read (the reader then names the problem)."""
    import sys

    root = cache_root()
    code = _code_digest()
    if root is None or code is None:
        return None
    h = hashlib.sha256(f"{FORMAT};{code};{parser};{np.__version__};{sys.version}\0".encode())
    size = 0
    try:
        with open(path, "rb") as f:  # in blocks: a trace of gigabytes is never held whole
            while block := f.read(1 << 20):
                h.update(block)
                size += len(block)
    except OSError:
        return None
    h.update(f"\0{size}".encode())
    key = h.hexdigest()
    return root / "traces" / f"{key}.bin", key


def load(path: Path, key: str) -> dict[str, Any] | None:
    """The fields of the parsed trace stored at ``path`` under ``key`` (fresh, writable arrays),
    or None when it is missing, damaged or another key's."""
    try:
        blob = path.read_bytes()
        head_end = blob.index(b"\n")
        head = json.loads(blob[:head_end])
        if head.get("key") != key:
            return None
        body = memoryview(blob)[head_end + 1 :]
        fields: dict[str, Any] = dict.fromkeys(ARRAYS)
        end = 0
        for name, (dtype, shape, start, stop) in head["arrays"].items():
            if name not in ARRAYS or start != end or stop > len(body):
                return None
            fields[name] = np.frombuffer(body[start:stop], dtype=np.dtype(dtype)).reshape(shape).copy()
            end = stop
        if any(fields[name] is None for name in ARRAYS[:3]) or end != len(body):
            return None
        fields.update(model_names=head["model_names"], prefix_block_tokens=head["prefix_block_tokens"], meta=head["meta"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    touch(path)
    return fields


def store(path: Path, key: str, fields: dict[str, Any]) -> None:
    """Write ``fields`` (a parsed trace's) at ``path`` under ``key``, unless some field would not
    come back exactly (an array that is not plain numbers, or what JSON does not carry)."""
    layout: dict[str, list[Any]] = {}
    parts: list[bytes] = []
    at = 0
    for name in ARRAYS:
        a = fields[name]
        if a is None:
            continue
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
            return
        b = np.ascontiguousarray(a).tobytes()
        layout[name] = [a.dtype.str, list(a.shape), at, at + len(b)]
        parts.append(b)
        at += len(b)
    rest = {k: fields[k] for k in ("model_names", "prefix_block_tokens", "meta")}
    head = {"key": key, "arrays": layout, **rest}
    try:
        text = json.dumps(head, allow_nan=False)
        exact = json.loads(text) == head and type(rest["prefix_block_tokens"]) is int and isinstance(rest["model_names"], list)
    except (TypeError, ValueError):
        exact = False
    if exact:
        write_atomic(path, text.encode() + b"\n" + b"".join(parts))
