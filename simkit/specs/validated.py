"""Validated specs without building their validators: what a `simkit run` needs of pydantic.

Building a pydantic model's validator (its core schema, then the Rust validator) costs far more
than validating one document with it, and a run validates few documents: the scenario and the
catalog's items. This module gives those objects without building a validator:

- :func:`constructed_default` makes a section's default instance (``plan: Plan = ...``) without
  validating it at class creation; every field then holds its declared default, as validation of
  an empty mapping gives (``tests/test_validated.py`` checks it for every section);
- :func:`cached` keeps validated objects on disk (``specs/`` under
  :func:`simkit.cachedir.cache_root`) as plain JSON of their fields, keyed by a SHA-256 of the
  caller's input (the files' bytes, or the scenario's data), the source files of every model
  class the objects may hold (:func:`schema_key`) and the Python, pydantic and simkit versions,
  so an entry is never stale; an entry is rebuilt into the same objects (class, fields, set
  fields, private attributes) by :func:`decode` without any validation. JSON, not pickle: an
  entry names classes only from the allowed set, so a damaged or foreign entry cannot run code;
  a damaged one is rebuilt;
- :func:`plain` is ``model_dump()`` by a walk of the fields (``model_dump`` builds the class's
  serializer).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable
from functools import lru_cache
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel

FORMAT = 1
"""Bumped whenever what an entry holds changes."""

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
_set = object.__setattr__


class _NotPlain(Exception):
    """A value :func:`encode` does not carry exactly (the objects are then not cached)."""


def constructed_default(cls: type[M]) -> M:
    """``cls()`` without building ``cls``'s validator: every field at its declared default and
    no field set, as validating ``{}`` gives (the defaults are valid by declaration; a test
    checks that the two are equal for every section)."""
    fields = cls.__pydantic_fields__
    if cls.__pydantic_post_init__ or any(f.default_factory is not None or f.is_required() for f in fields.values()):
        return cls.model_construct()  # (not a section's default: model_construct inspects factories' signatures)
    m = cls.__new__(cls)
    _set(m, "__dict__", {name: f.get_default() for name, f in fields.items()})  # as model_construct does
    _set(m, "__pydantic_fields_set__", set())
    _set(m, "__pydantic_extra__", None)
    _set(m, "__pydantic_private__", None)
    return m


def _member_classes(t: Any, out: dict[str, type[BaseModel]], literals: list[str], modules: set[str]) -> None:
    origin = get_origin(t)
    if origin is Annotated:
        base, *meta = get_args(t)
        _member_classes(base, out, literals, modules)
        for m in meta:
            f = getattr(m, "func", None)
            if f is not None and getattr(f, "__module__", None):
                modules.add(f.__module__)
        return
    if origin is Literal:
        literals.append(repr(get_args(t)))
        return
    if origin is not None or isinstance(t, UnionType):
        for a in get_args(t):
            _member_classes(a, out, literals, modules)
        return
    if isinstance(t, type) and issubclass(t, BaseModel) and t is not BaseModel:
        name = f"{t.__module__}:{t.__qualname__}"
        if name in out:
            return
        out[name] = t
        for base in t.__mro__:
            if isinstance(base, type) and issubclass(base, BaseModel) and base is not BaseModel:
                modules.add(base.__module__)
        for f in t.__pydantic_fields__.values():
            _member_classes(f.annotation, out, literals, modules)
            for m in f.metadata:
                fn = getattr(m, "func", None)
                if fn is not None and getattr(fn, "__module__", None):
                    modules.add(fn.__module__)


@lru_cache(maxsize=8)
def reachable(roots: tuple[type[BaseModel], ...]) -> tuple[dict[str, type[BaseModel]], list[str], set[str]]:
    """Every model class a value of ``roots`` may hold (by ``module:qualname``), the Literal
    choices of their fields (registries' names) and the modules that define them or their
    field validators."""
    out: dict[str, type[BaseModel]] = {}
    literals: list[str] = []
    modules: set[str] = {"simkit.units", "simkit.specs.base"}
    for r in roots:
        _member_classes(r, out, literals, modules)
    return out, literals, modules


@lru_cache(maxsize=8)
def schema_key(roots: tuple[type[BaseModel], ...]) -> str:
    """A SHA-256 of what validation of ``roots`` depends on: the source of every module defining
    a reachable model class, its bases or a field validator, the fields' Literal choices, and the
    Python, pydantic and simkit versions."""
    import linecache

    import pydantic_core

    import simkit

    classes, literals, modules = reachable(roots)
    h = hashlib.sha256(f"{FORMAT};{sys.version};{pydantic_core.__version__};{simkit.__version__}".encode())
    for name in sorted(classes):
        h.update(f"{name}\0".encode())
    for lit in literals:
        h.update(f"{lit}\0".encode())
    for mod in sorted(modules):
        module = sys.modules.get(mod)
        filename = getattr(module, "__file__", None)
        text = "".join(linecache.getlines(filename)) if filename else ""
        h.update(f"{mod}\0{len(text)}\0{text}".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def encode(v: Any) -> Any:
    """``v`` (a model, or plain values holding models) as JSON-able data that :func:`decode`
    turns back into an equal object; :class:`_NotPlain` for anything it does not carry exactly."""
    t = type(v)
    if v is None or t is str or t is bool or t is int:
        return v
    if t is float:
        if not math.isfinite(v):
            raise _NotPlain(v)
        return v
    if t is list:
        return [encode(x) for x in v]
    if t is tuple:
        return {"t": [encode(x) for x in v]}
    if t is dict:
        if not all(type(k) is str for k in v):
            raise _NotPlain(v)
        return {"d": {k: encode(x) for k, x in v.items()}}
    if isinstance(v, BaseModel):
        private = v.__pydantic_private__
        if v.__pydantic_extra__ or (private and private != _private_defaults(t)):
            raise _NotPlain(v)  # no extra keys in a spec; private attributes as validation leaves them
        d = v.__dict__
        return {
            "m": f"{t.__module__}:{t.__qualname__}",
            "s": sorted(v.__pydantic_fields_set__),
            "f": {name: encode(d[name]) for name in t.__pydantic_fields__},
        }
    raise _NotPlain(v)


def _private_defaults(cls: type[BaseModel]) -> dict[str, Any]:
    return {k: a.default_factory() if a.default_factory is not None else a.default  # type: ignore[call-arg]
            for k, a in cls.__private_attributes__.items()}


def decode(data: Any, classes: dict[str, type[BaseModel]]) -> Any:
    """The object :func:`encode` made ``data`` of; a model class not in ``classes`` or malformed
    data raises ValueError."""
    if type(data) is list:
        return [decode(x, classes) for x in data]
    if type(data) is not dict:
        return data
    if "m" in data:
        cls = classes.get(data["m"])
        if cls is None:
            raise ValueError(f"class {data['m']!r} is not a spec class")
        fields = {k: decode(x, classes) for k, x in data["f"].items()}
        if list(fields) != list(cls.__pydantic_fields__) or not set(data["s"]) <= fields.keys():
            raise ValueError(f"fields of {data['m']!r} differ")
        m = cls.__new__(cls)
        _set(m, "__dict__", fields)  # as BaseModel.model_construct does
        _set(m, "__pydantic_fields_set__", set(data["s"]))
        _set(m, "__pydantic_extra__", None)
        _set(m, "__pydantic_private__", None)
        if cls.__pydantic_post_init__:
            m.model_post_init(None)
        return m
    if "t" in data:
        return tuple(decode(x, classes) for x in data["t"])
    return {k: decode(x, classes) for k, x in data["d"].items()}


def cached(folder: str, key: str, roots: tuple[type[BaseModel], ...], build: Callable[[], T], fits: Callable[[Any], bool]) -> T:
    """``build()`` (validated objects: a model or plain values holding models of ``roots``),
    through the on-disk cache ``folder`` under :func:`simkit.cachedir.cache_root`: an entry is
    keyed by ``key`` (a digest of the input ``build`` validates) and :func:`schema_key` of
    ``roots``; a decoded entry must pass ``fits`` (the shape ``build`` returns). A missing or
    damaged entry is rebuilt; errors are ``build()``'s, unchanged (and not cached); what
    :func:`encode` does not carry exactly is not cached."""
    from simkit.cachedir import cache_root, touch, write_atomic

    root = cache_root()
    if root is None:
        return build()
    digest = hashlib.sha256(f"{schema_key(roots)};{key}".encode()).hexdigest()
    entry = root / folder / f"{digest}.json"
    try:
        data = entry.read_bytes()
    except OSError:
        pass
    else:
        try:
            value = decode(json.loads(data), reachable(roots)[0])
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            pass  # damaged: rebuilt below
        else:
            if fits(value):
                touch(entry)
                return value  # type: ignore[no-any-return]
    value = build()
    try:
        blob = json.dumps(encode(value), allow_nan=False, separators=(",", ":"))
    except (_NotPlain, ValueError, RecursionError):
        return value
    write_atomic(entry, blob.encode())
    return value


def plain(v: Any, *, exclude_none: bool = False) -> Any:
    """``v.model_dump(exclude_none=exclude_none)`` of a model (and of plain values holding
    models) without building the class's serializer: nested models become dicts of their
    fields, lists and tuples keep their type (a test checks the equality for every shipped
    scenario's sections)."""
    if isinstance(v, BaseModel):
        d = v.__dict__
        out = {}
        for name in type(v).__pydantic_fields__:
            x = d[name]
            if not (exclude_none and x is None):
                out[name] = plain(x, exclude_none=exclude_none)
        return out
    t = type(v)
    if t is list:
        return [plain(x, exclude_none=exclude_none) for x in v]
    if t is tuple:
        return tuple(plain(x, exclude_none=exclude_none) for x in v)
    if t is dict:
        return {k: plain(x, exclude_none=exclude_none) for k, x in v.items()}
    return v


__all__ = ["cached", "constructed_default", "decode", "encode", "plain", "reachable", "schema_key"]
