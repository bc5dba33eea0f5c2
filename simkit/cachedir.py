"""Where simkit caches derived data (cost tables, the parsed catalog, parsed traces, calibration
profiles' fitted trees, the scenario modules' attribute docstrings, the validated catalog items
and scenarios): one folder, one rule.

``$SIMKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/simkit``, else ``~/.cache/simkit``;
``SIMKIT_CACHE_DIR=`` (empty) turns every cache off. Each cache keys its entries by a SHA-256
of everything the entry depends on, so an entry is never stale. Each cache's folder is kept
under a size cap by deleting its least recently used entries (a hit refreshes an entry's
modification time) when a new entry is written; deleting the folder only costs the rebuild.
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

MAX_FOLDER_BYTES = 1 << 30
"""Most bytes one cache folder (``tables/``, ``yaml/``, ``traces/``, ``forests/``, ``docs/``, ``catalog/``,
``scenarios/``) keeps: 1 GiB."""


_ONE_RUN = [False]


@contextlib.contextmanager
def one_run() -> Iterator[None]:
    """Within it, the caches of what a single run reads and writes are used: the scenario file's
    parse, the validated scenario, a calibration profile's parse, the emitted scenario.yaml.
    ``simkit run`` (a fresh process: importing PyYAML and building validators cost more than the
    run's own set-up) enters it; a longer process (a study, a search, a report over thousands of
    run folders) does not: it builds each validator once anyway, and would write one entry per
    run, each write scanning its folder (:func:`prune`)."""
    before = _ONE_RUN[0]
    _ONE_RUN[0] = True
    try:
        yield
    finally:
        _ONE_RUN[0] = before


def in_one_run() -> bool:
    """Whether :func:`one_run` is in effect."""
    return _ONE_RUN[0]


def cache_root() -> Path | None:
    """The cache folder, or None when caching is off (or there is no home folder to hold it)."""
    env = os.environ.get("SIMKIT_CACHE_DIR")
    if env is not None:
        return Path(env) if env.strip() else None
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "simkit"
    try:
        return Path.home() / ".cache" / "simkit"
    except RuntimeError:  # no HOME and no password-database entry (some containers)
        return None


def write_atomic(path: Path, data: bytes, max_bytes: int = MAX_FOLDER_BYTES) -> None:
    """Write ``data`` to ``path`` through a temporary file in its folder (readers never see a
    partial entry), then keep the folder within ``max_bytes`` (:func:`prune`). An unwritable
    folder is ignored: the cache is only an optimisation."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        return
    prune(path.parent, max_bytes, keep=path)


def touch(path: Path) -> None:
    """Mark a cache entry as just used (its modification time), for :func:`prune`."""
    with contextlib.suppress(OSError):
        os.utime(path)


def prune(folder: Path, max_bytes: int, keep: Path | None = None) -> None:
    """Delete the least recently used entries of ``folder`` (oldest modification time first,
    never ``keep``) until its entries hold at most ``max_bytes``."""
    entries: list[tuple[int, int, str]] = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.is_file(follow_symlinks=False) and not e.name.endswith(".tmp"):
                    st = e.stat(follow_symlinks=False)
                    entries.append((st.st_mtime_ns, st.st_size, e.path))
    except OSError:
        return
    total = sum(size for _, size, _ in entries)
    if total <= max_bytes:
        return
    for _, size, p in sorted(entries):
        if keep is not None and p == str(keep):
            continue
        try:
            os.unlink(p)
        except OSError:
            continue
        total -= size
        if total <= max_bytes:
            return


def pack_arrays(head: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes | None:
    """A cache entry of plain-number arrays: the CRC-32 of the rest (8 hex digits and a newline),
    one JSON line (``head``, with the arrays' dtypes, shapes and byte ranges under ``"arrays"``),
    then the arrays' raw bytes, in order. Read
    back by :func:`unpack_arrays` with numpy alone (an ``.npz`` is a zip archive: ``np.load``
    imports :mod:`zipfile` and parses a Python-literal header per array). None when an array is
    not plain numbers (nothing is written then)."""
    import numpy as np

    layout: dict[str, list[Any]] = {}
    parts: list[bytes] = []
    at = 0
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
            return None
        b = np.ascontiguousarray(a).tobytes()
        layout[name] = [a.dtype.str, list(a.shape), at, at + len(b)]
        parts.append(b)
        at += len(b)
    rest = json.dumps({**head, "arrays": layout}).encode() + b"\n" + b"".join(parts)
    return b"%08x\n" % zlib.crc32(rest) + rest


def unpack_arrays(blob: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """(header, arrays) of an entry :func:`pack_arrays` wrote (fresh, writable arrays); None when
    it is damaged or not such an entry."""
    import numpy as np

    try:
        if len(blob) < 9 or blob[8:9] != b"\n" or int(blob[:8], 16) != zlib.crc32(memoryview(blob)[9:]):
            return None  # damaged (a flipped byte, a partial write) or not such an entry
        head_end = blob.index(b"\n", 9)
        head = json.loads(blob[9:head_end])
        body = memoryview(blob)[head_end + 1 :]
        arrays: dict[str, np.ndarray] = {}
        end = 0
        for name, (dtype, shape, start, stop) in head["arrays"].items():
            dt = np.dtype(dtype)
            if start != end or stop > len(body) or dt.kind not in "biuf":
                return None
            arrays[name] = np.frombuffer(body[start:stop], dtype=dt).reshape(shape).copy()
            end = stop
        if end != len(body):
            return None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return head, arrays
