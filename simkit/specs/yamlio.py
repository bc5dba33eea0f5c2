"""YAML reading with errors that name the file and the line, and bounds on what a document may hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from simkit.errors import SpecError


class _NoDuplicateKeys(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (C-accelerated when available), refusing a key given twice in one mapping:
    plain YAML keeps the last one silently (a study's second ``axes:`` would drop the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                k = (key_node.tag, key_node.value)
                if k in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(k)
        return super().construct_mapping(node, deep=deep)


_LOADER = _NoDuplicateKeys

MAX_NODES = 200_000
"""Most values (mappings, lists and scalars, counted with aliases expanded) one document may hold:
far above any scenario or catalog item, far below what a YAML alias bomb expands to."""
INT_BOUND = 2**63
"""Integers must lie strictly inside +-2^63 (numpy's int64), or they fail deep inside a run."""


def check_data(data: Any, where: str | None = None, *, error: type[Exception] = SpecError, key: str | None = None) -> Any:
    """Walk ``data`` (parsed YAML/JSON) and refuse documents that are too big once aliases are
    expanded (YAML alias bombs, self-referencing aliases) or hold integers outside int64.

    The walk stops at :data:`MAX_NODES` values, so its cost is bounded whatever the input.
    Returns ``data`` unchanged."""
    count = 0
    stack: list[tuple[Any, str]] = [(data, key or "")]
    while stack:
        v, path = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise error(
                f"document too large: more than {MAX_NODES:,} values once YAML aliases are expanded "
                "(an alias bomb or a self-referencing alias?)",
                where=where,
                key=key,
            )
        if isinstance(v, dict):
            stack.extend((x, f"{path}.{k}" if path else str(k)) for k, x in v.items())
        elif isinstance(v, list | tuple):
            stack.extend((x, f"{path}.{i}" if path else str(i)) for i, x in enumerate(v))
        elif isinstance(v, int) and not isinstance(v, bool) and not -INT_BOUND < v < INT_BOUND:
            raise error(f"integer {v} is out of range (|value| must be < 2^63)", where=where, key=path or None)
    return data


def load_yaml(path: str | Path, *, error: type[Exception] = SpecError) -> Any:
    """Read one YAML document; malformed YAML, a missing or non-UTF-8 file, an alias bomb or an
    out-of-range integer raises ``error`` naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"file not found: {p}", where=str(p)) from None
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise error(f"line {line}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})", where=str(p)) from None
    except OSError as e:
        raise error(f"cannot read file ({e.strerror or e.__class__.__name__})", where=str(p)) from None
    try:
        data = yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader (C-accelerated when available)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"malformed YAML: {loc}{problem}", where=str(p)) from None
    except RecursionError:
        raise error("malformed YAML: nested too deeply", where=str(p)) from None
    return check_data(data, str(p), error=error)


CACHE_FORMAT = 1
"""Bumped whenever what :func:`load_yaml_files` caches changes."""


def load_yaml_files(paths: list[Path], *, error: type[Exception] = SpecError) -> list[Any]:
    """:func:`load_yaml_files_keyed` without the key."""
    return load_yaml_files_keyed(paths, error=error)[0]


def load_yaml_files_keyed(paths: list[Path], *, error: type[Exception] = SpecError) -> tuple[list[Any], str | None]:
    """:func:`load_yaml` of every file in ``paths``, in order, through an on-disk cache of the
    parsed documents (``yaml/`` under :func:`simkit.cachedir.cache_root`): the files are read
    every time, and parsed only when their bytes (or their paths, or the YAML library) differ
    from a cached set, whose SHA-256 keys the entry. Documents that JSON does not carry exactly
    (non-string keys, dates, NaN) are not cached. Errors are those of :func:`load_yaml`.

    Also returns the SHA-256 of the files' paths and bytes (and the YAML library) that keys the
    entry, for caches of what is derived from the documents; None when caching is off or a file
    cannot be read."""
    import hashlib
    import json
    import sys

    from simkit.cachedir import cache_root, touch, write_atomic

    root = cache_root()
    texts: list[bytes] = []
    h = hashlib.sha256(f"{CACHE_FORMAT};{yaml.__version__};{_LOADER.__name__};{sys.version}".encode())
    if root is not None:
        try:
            for p in paths:
                b = Path(p).read_bytes()
                texts.append(b)
                h.update(f"{p}\0{len(b)}\0".encode() + b)
        except OSError:
            root = None  # load_yaml names the file that cannot be read
    entry = root / "yaml" / f"{h.hexdigest()}.json" if root is not None else None
    if entry is not None:
        try:
            docs = json.loads(entry.read_bytes())
            if isinstance(docs, list) and len(docs) == len(paths):
                touch(entry)
                return docs, h.hexdigest()
        except (OSError, ValueError):
            pass  # missing or damaged: parse
    docs = [load_yaml(p, error=error) for p in paths]
    if entry is None:
        return docs, None
    try:
        blob = json.dumps(docs, allow_nan=False)
        exact = json.loads(blob) == docs
    except (TypeError, ValueError):
        exact = False
    if exact:
        write_atomic(entry, blob.encode())
    return docs, h.hexdigest()


def parse_yaml_value(text: str, *, where: str | None = None, key: str | None = None, error: type[Exception] = SpecError) -> Any:
    """One YAML value written on a command line (``--set key=VALUE``); text that is not valid
    YAML stays a string. The same bounds as :func:`load_yaml` apply."""
    try:
        v = yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader
    except (yaml.YAMLError, RecursionError):
        return text
    return check_data(v, where, error=error, key=key)
