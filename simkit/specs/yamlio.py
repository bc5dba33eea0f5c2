"""YAML reading with errors that name the file and the line, and bounds on what a document may hold."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from simkit.errors import SpecError


@functools.cache
def loader() -> type:
    """The safe loader (C-accelerated when available), refusing a key given twice in one mapping:
    plain YAML keeps the last one silently (a study's second ``axes:`` would drop the first).
    Built on first use: PyYAML is imported only when a document is parsed or written (a run
    whose files are in the parse cache, :func:`load_text`, imports none of it)."""
    import yaml

    class _NoDuplicateKeys(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    k = (key_node.tag, key_node.value)
                    if k in seen:
                        raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
                    seen.add(k)
            return super().construct_mapping(node, deep=deep)

    return _NoDuplicateKeys


@functools.cache
def yaml_key() -> str:
    """What PyYAML's parsing and emitting depend on, without importing it: the bytes of its
    ``__init__.py`` (which holds its version) and the names of its files (whether libyaml's C
    extension is there); with the Python version."""
    import hashlib
    import importlib.util
    import os
    import sys

    h = hashlib.sha256(f"{sys.version}\0".encode())
    try:
        spec = importlib.util.find_spec("yaml")
        origin = spec.origin if spec is not None else None
        if origin is None:
            raise OSError("PyYAML not found")
        h.update(Path(origin).read_bytes())
        h.update("\0".join(sorted(os.listdir(Path(origin).parent))).encode())
    except (OSError, ValueError, ImportError):
        h.update(b"unknown")
    return h.hexdigest()


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


def load_yaml(path: str | Path, *, error: type[Exception] = SpecError, lasting: bool = False) -> Any:
    """Read one YAML document; malformed YAML, a missing or non-UTF-8 file, an alias bomb or an
    out-of-range integer raises ``error`` naming the file. Within :func:`simkit.cachedir.one_run`
    a document is parsed once per text: it is kept in ``yaml/`` under
    :func:`simkit.cachedir.cache_root`, keyed by a SHA-256 of the text and of PyYAML's files
    (:func:`yaml_key`), when JSON gives it back with every type. ``lasting``: the file is one
    of a few that every run reads (a calibration profile), not one per run, so its parse is
    kept in every process (entries grow with the files' versions, not with the runs)."""
    return _load_yaml(path, error=error, keep=True, lasting=lasting)


def _load_yaml(path: str | Path, *, error: type[Exception], keep: bool, lasting: bool = False) -> Any:
    """:func:`load_yaml`; ``keep``: through the parse cache (not for :func:`load_yaml_files`,
    which keeps a set of files as one entry)."""
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
    entry = _text_entry(text, lasting) if keep else None
    found = _read_entry(entry)
    if found is not _MISS:
        return found
    import yaml

    try:
        data = yaml.load(text, Loader=loader())  # noqa: S506 - a safe loader (C-accelerated when available)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"malformed YAML: {loc}{problem}", where=str(p)) from None
    except RecursionError:
        raise error("malformed YAML: nested too deeply", where=str(p)) from None
    check_data(data, str(p), error=error)
    _write_entry(entry, data)
    return data


_MISS = object()


def _text_entry(text: str, lasting: bool) -> Path | None:
    """The parse-cache entry of one document's text (``yaml/`` under
    :func:`simkit.cachedir.cache_root`), or None when caching is off (outside
    :func:`simkit.cachedir.one_run`, unless the text is ``lasting``: see :func:`load_yaml`)."""
    import hashlib

    from simkit.cachedir import cache_root, in_one_run

    root = cache_root() if lasting or in_one_run() else None
    if root is None:
        return None
    h = hashlib.sha256(f"text;{CACHE_FORMAT};{yaml_key()}\0".encode() + text.encode("utf-8", "surrogatepass"))
    return root / "yaml" / f"{h.hexdigest()}.json"


def _read_entry(entry: Path | None) -> Any:
    import json

    from simkit.cachedir import touch

    if entry is None:
        return _MISS
    try:
        data = json.loads(entry.read_bytes())
    except (OSError, ValueError, RecursionError):
        return _MISS  # missing or damaged: parse
    if type(data) is not dict or len(data) != 1:
        return _MISS
    if "doc" in data:
        doc = data["doc"]
    elif "pairs" in data:
        try:
            doc = _from_pairs(data["pairs"])
        except (TypeError, ValueError, KeyError, RecursionError):
            return _MISS
    else:
        return _MISS
    touch(entry)
    return doc


def _write_entry(entry: Path | None, doc: Any) -> None:
    """Keep ``doc`` (a parsed document, within :func:`check_data`'s bounds) when JSON carries it
    exactly (no dates, no non-string keys)."""
    import json

    from simkit.cachedir import write_atomic

    if entry is None:
        return
    try:
        if _json_exact(doc):
            blob = json.dumps({"doc": doc}, allow_nan=False)
        elif _json_exact(doc, keys=(str, int, float, bool, type(None))):  # (a profile's collectives by GPU count)
            blob = json.dumps({"pairs": _to_pairs(doc)}, allow_nan=False)
        else:
            return
    except (TypeError, ValueError, RecursionError):
        return
    write_atomic(entry, blob.encode())


def _json_exact(v: Any, keys: tuple[type, ...] = (str,)) -> bool:
    """Whether JSON gives ``v`` back with every type (``1 == 1.0 == True`` in Python), its
    mappings' keys being of ``keys`` (as pairs, :func:`_to_pairs`, when they are not all strings)."""
    t = type(v)
    if t is dict:
        return all(type(k) in keys and _json_exact(x, keys) for k, x in v.items())
    if t is list:
        return all(_json_exact(x, keys) for x in v)
    return v is None or t in (str, int, float, bool)


def _to_pairs(v: Any) -> Any:
    """``v`` with every mapping written as ``{"p": [[key, value], ...]}`` (keys of any scalar type)."""
    if type(v) is dict:
        return {"p": [[k, _to_pairs(x)] for k, x in v.items()]}
    if type(v) is list:
        return [_to_pairs(x) for x in v]
    return v


def _from_pairs(v: Any) -> Any:
    if type(v) is dict:
        return {k: _from_pairs(x) for k, x in v["p"]}
    if type(v) is list:
        return [_from_pairs(x) for x in v]
    return v


def load_text(text: str, *, lasting: bool = False) -> Any:
    """One YAML document's text parsed with :func:`loader`, through the parse cache of
    :func:`load_yaml` (within :func:`simkit.cachedir.one_run`, or in every process where the
    text is ``lasting``); malformed YAML raises ValueError (PyYAML's error as its cause)."""
    entry = _text_entry(text, lasting)
    found = _read_entry(entry)
    if found is not _MISS:
        return found
    import yaml

    try:
        data = yaml.load(text, Loader=loader())  # noqa: S506 - a safe loader
    except (yaml.YAMLError, RecursionError) as e:
        raise ValueError(f"malformed YAML: {e}") from e
    try:
        check_data(data)
    except SpecError:
        return data  # too large to keep (an alias bomb): the caller's bounds apply
    _write_entry(entry, data)
    return data


def dump_text(data: Any) -> str:
    """``yaml.safe_dump(data, sort_keys=False, allow_unicode=True)``, kept (within
    :func:`simkit.cachedir.one_run`) in the parse cache's folder keyed by the data (plain values
    only: their ``repr`` is exact) and PyYAML's files."""
    import hashlib
    import json

    from simkit.cachedir import cache_root, in_one_run, touch, write_atomic

    root = cache_root() if in_one_run() else None
    entry = None
    if root is not None and _json_exact(data):
        h = hashlib.sha256(f"dump;{CACHE_FORMAT};{yaml_key()}\0{data!r}".encode("utf-8", "surrogatepass"))
        entry = root / "yaml" / f"{h.hexdigest()}.json"
        try:
            found = json.loads(entry.read_bytes())
            if type(found) is dict and list(found) == ["text"] and type(found["text"]) is str:
                touch(entry)
                return found["text"]
        except (OSError, ValueError, RecursionError):
            pass  # missing or damaged: emit
    import yaml

    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if entry is not None:
        write_atomic(entry, json.dumps({"text": text}).encode())
    return text


CACHE_FORMAT = 2
"""Bumped whenever what :func:`load_yaml_files`, :func:`load_yaml` and :func:`dump_text` cache changes."""


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

    from simkit.cachedir import cache_root, touch, write_atomic

    root = cache_root()
    texts: list[bytes] = []
    h = hashlib.sha256(f"{CACHE_FORMAT};{yaml_key()}".encode())
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
    docs = [_load_yaml(p, error=error, keep=False) for p in paths]
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
    import yaml

    try:
        v = yaml.load(text, Loader=loader())  # noqa: S506 - a safe loader
    except (yaml.YAMLError, RecursionError):
        return text
    return check_data(v, where, error=error, key=key)
