"""Shared pieces of every spec: frozen pydantic models, unit-parsing field types, error wrapping."""

from __future__ import annotations

import ast
import re
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from simkit import units
from simkit.errors import SpecError, UnitError


def _unit(parser: Any, **kw: Any) -> BeforeValidator:
    def convert(v: Any) -> Any:
        if v is None:
            return v
        try:
            return parser(v, **kw)
        except UnitError as e:  # re-raised as a plain ValueError so pydantic records the key path
            raise ValueError(e.message) from None

    return BeforeValidator(convert)


Bytes = Annotated[float, _unit(units.parse_bytes, allow_bare=False)]
"""A size in bytes, written with a unit in YAML ("80 GiB")."""
Bandwidth = Annotated[float, _unit(units.parse_bandwidth)]
"""A bandwidth in bytes/s, written with a unit in YAML ("3.35 TB/s")."""
FlopRate = Annotated[float, _unit(units.parse_flops)]
"""A compute rate in FLOP/s, written with a unit in YAML ("989 TFLOPS")."""
Seconds = Annotated[float, _unit(units.parse_time)]
"""A duration in seconds, written with a unit in YAML ("5 us")."""
Watts = Annotated[float, _unit(units.parse_power)]
"""A power in watts, written with a unit in YAML ("700 W")."""
DollarsPerHour = Annotated[float, _unit(units.parse_price)]
"""A price in $/hour ("$2.50/h" or a bare number)."""


class Frozen(BaseModel):
    """Base of every spec: immutable, unknown keys rejected, no type coercion (``true`` is not 1,
    "8" is not 8; an integer is still a valid float), no NaN or infinity. The validator is built
    on first use (``defer_build``): a run takes its catalog items from the cache of validated
    ones (``specs/validated.py``) and builds none."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, strict=True, allow_inf_nan=False, defer_build=True)


class Section(BaseModel):
    """Base of a scenario section (scenario.py, and the options a policy declares): immutable,
    unknown keys rejected, no type coercion, no NaN or infinity; attribute docstrings become the
    field descriptions (the JSON Schema and docs/scenario.md's key table show them).

    The descriptions are those pydantic's ``use_attribute_docstrings`` gives, read by
    :func:`attribute_docstrings` from one parse of each module's source instead of one source
    search and parse per class (a quarter of ``simkit run``'s import time of simkit's own
    modules); the validator is built on first use (``defer_build``), so that it sees them."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False, defer_build=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        docs = attribute_docstrings(cls)
        for name, f in cls.__pydantic_fields__.items():
            if f.description is None and name in docs:
                f.description = docs[name]


ClassDocs = list[tuple[str, int, int, dict[str, str]]]
"""(name, first line, last line, attribute docstrings) of every class statement of a module."""

_CLASS_DOCS: dict[tuple[str, int], ClassDocs] = {}
"""(source file, length of its text) -> its :data:`ClassDocs`; the file is parsed once and only
these records are kept (a module's syntax tree is tens of thousands of objects that every later
garbage collection would walk)."""

DOCS_CACHE_FORMAT = 1
"""Bumped whenever what the on-disk cache of :func:`_class_docs` holds changes."""


def _parse_class_docs(text: str, filename: str) -> ClassDocs:
    from inspect import cleandoc

    try:
        tree = ast.parse(text, filename)
    except (SyntaxError, ValueError):
        tree = ast.Module(body=[], type_ignores=[])
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        docs: dict[str, str] = {}
        for prev, stmt in zip(node.body, node.body[1:]):
            if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name) and isinstance(stmt, ast.Expr)
                    and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)):
                docs[prev.target.id] = cleandoc(stmt.value.value)
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        found.append((node.name, first, node.end_lineno or node.lineno, docs))
    return found


def _class_docs(filename: str, lines: list[str]) -> ClassDocs:
    """The :data:`ClassDocs` of the module whose source is ``lines``: parsed once per process, and
    kept on disk between processes (``docs/`` under :func:`simkit.cachedir.cache_root`, keyed by a
    SHA-256 of the source text and the Python version, so never stale): parsing the scenario's
    modules cost ~10-20 ms of every `simkit run`'s imports."""
    text = "".join(lines)
    key = (filename, len(text))
    found = _CLASS_DOCS.get(key)
    if found is None:
        found = _CLASS_DOCS[key] = _disk_cached_class_docs(text, filename)
    return found


def _disk_cached_class_docs(text: str, filename: str) -> ClassDocs:
    import hashlib
    import json
    import sys

    from simkit.cachedir import cache_root, touch, write_atomic

    root = cache_root()
    if root is None:
        return _parse_class_docs(text, filename)
    digest = hashlib.sha256(f"{DOCS_CACHE_FORMAT};{sys.version};{filename}\0{text}".encode("utf-8", "surrogatepass"))
    entry = root / "docs" / f"{digest.hexdigest()}.json"
    try:
        data = json.loads(entry.read_bytes())
        found = [(name, first, last, docs) for name, first, last, docs in data]
        if all(isinstance(n, str) and type(a) is int and type(b) is int and isinstance(d, dict)
               and all(isinstance(k, str) and isinstance(v, str) for k, v in d.items()) for n, a, b, d in found):
            touch(entry)
            return found
    except (OSError, ValueError, TypeError):
        pass  # missing or damaged: parse
    found = _parse_class_docs(text, filename)
    write_atomic(entry, json.dumps(found).encode())
    return found


def attribute_docstrings(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in ``cls``'s class statement (a string
    expression right after an annotated assignment, cleaned as :func:`inspect.cleandoc` does),
    as pydantic's ``use_attribute_docstrings`` reads them. Called while the class is being
    created: the class statement is the innermost one of that name around the line its module's
    frame is executing. Empty when the source is not available (as pydantic's)."""
    import linecache
    import sys

    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") != cls.__module__:
        frame = frame.f_back
    if frame is None:
        return {}
    filename = frame.f_code.co_filename
    line = frame.f_lineno
    here = [(first, docs) for name, first, last, docs in _class_docs(filename, linecache.getlines(filename, frame.f_globals))
            if name == cls.__name__ and first <= line <= last]
    return dict(max(here, key=lambda h: h[0])[1]) if here else {}  # the innermost


def _unwrap(t: Any) -> Any:
    """Annotated / Optional / union annotations down to a model (preferred) or container type."""
    for _ in range(8):
        origin = get_origin(t)
        if origin is Annotated:
            t = get_args(t)[0]
        elif origin in (Union, UnionType):
            inner = [a for a in get_args(t) if a is not type(None)]
            models = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
            t = (models or inner or [None])[0]
        else:
            break
    return t


def _descend(t: Any, part: Any) -> Any:
    """The annotation one step down ``t`` along a pydantic error location part (None: unknown)."""
    t = _unwrap(t)
    if isinstance(t, type) and issubclass(t, BaseModel):
        f = t.model_fields.get(str(part))
        return f.annotation if f is not None else None
    origin = get_origin(t)
    args = get_args(t)
    if origin in (list, tuple) and isinstance(part, int) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _tagged_member(t: Any, part: Any) -> type[BaseModel] | None:
    """The member of a discriminated union of models whose tag is ``part`` (pydantic puts the
    tag in an error's location), else None."""
    t = _unwrap_annotated(t)
    if get_origin(t) not in (Union, UnionType) or not isinstance(part, str):
        return None
    for m in get_args(t):
        if _tag_of(m) == part:
            return m
    return None


def _walk(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any, dict[str, type[BaseModel]]]:
    """(``loc`` without discriminated-union tags, the annotation it leads to (None: unknown),
    and the members of the last tagged union passed, by tag)."""
    t: Any = model
    out: list[Any] = []
    members: dict[str, type[BaseModel]] = {}
    for part in loc:
        member = _tagged_member(t, part) if t is not None else None
        if member is not None:
            members = {tag: m for m in get_args(_unwrap_annotated(t)) if (tag := _tag_of(m)) is not None}
            t = member
            continue
        out.append(part)
        t = _descend(t, part) if t is not None else None
    return tuple(out), t, members


def _unwrap_annotated(t: Any) -> Any:
    while get_origin(t) is Annotated:
        t = get_args(t)[0]
    return t


def _tag_of(m: Any) -> str | None:
    """A model's discriminated-union tag: the value of its one-value Literal field."""
    if isinstance(m, type) and issubclass(m, BaseModel):
        for f in m.model_fields.values():
            if get_origin(f.annotation) is Literal and len(get_args(f.annotation)) == 1:
                return str(get_args(f.annotation)[0])
    return None


def known_keys(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The keys the mapping at ``loc`` inside ``model`` accepts (empty when it is free-form)."""
    t = _unwrap(_walk(model, loc)[1])
    if isinstance(t, type) and issubclass(t, BaseModel):
        return list(t.model_fields)
    return []


def _did_you_mean(value: str, choices: list[str]) -> str:
    import difflib  # (only an error needs it)

    close = difflib.get_close_matches(value, choices, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def format_validation_error(err: ValidationError, where: str | None, model: type[BaseModel] | None = None) -> SpecError:
    """Turn pydantic's error list into one readable SpecError naming the key path.

    An unknown key is reported first, with the closest known keys of its mapping ("did you
    mean") when ``model`` is given; several missing (or unknown) keys of one mapping are listed
    together."""
    errors = err.errors()
    errors = sorted(errors, key=lambda e: e["type"] != "extra_forbidden")  # stable: a typo first
    first = errors[0]
    raw_loc = tuple(first["loc"])
    loc = _walk(model, raw_loc)[0] if model is not None else raw_loc
    key = ".".join(str(p) for p in loc) or None
    msg = first["msg"]
    grouped = 1
    if first["type"] == "union_tag_invalid":
        # an unknown name of a registry-built union (plan.batching.policy)
        ctx = first.get("ctx", {})
        field = str(ctx.get("discriminator", "")).strip("'")
        tags = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
        tag = str(ctx.get("tag", ""))
        key = ".".join(str(p) for p in (*loc, field))
        what = f"{loc[-1]} {field}" if loc else field
        msg = f"unknown {what} {tag!r}{_did_you_mean(tag, tags)} (expected one of {', '.join(tags)})"
        more = len(errors) - 1
        if more:
            msg += f" (and {more} more problem{'s' if more > 1 else ''})"
        return SpecError(msg, where=where, key=key)
    if first["type"] == "literal_error" and isinstance(first.get("input"), str):
        msg += _did_you_mean(first["input"], re.findall(r"'([^']*)'", str(first.get("ctx", {}).get("expected", ""))))
    if first["type"] in ("missing", "extra_forbidden"):
        same = [e for e in errors if e["type"] == first["type"] and tuple(e["loc"])[:-1] == raw_loc[:-1]]
        names = [str(e["loc"][-1]) for e in same]
        grouped = len(same)
        if first["type"] == "missing":
            msg = "required key is missing" if grouped == 1 else f"required keys are missing: {', '.join(names)}"
        else:
            msg = "unknown key" if grouped == 1 else f"unknown keys: {', '.join(names)}"
            known = known_keys(model, raw_loc[:-1])
            import difflib

            hints = [f"{n} -> {', '.join(c)}" if grouped > 1 else ", ".join(c)
                     for n in names if (c := difflib.get_close_matches(n, known, n=3, cutoff=0.6))]
            if hints:
                msg += f"; did you mean {'; '.join(hints)}?"
            elif known:
                msg += f" (expected one of {', '.join(known)})"
            members = _walk(model, raw_loc[:-1])[2]
            tag = next((p for p in raw_loc[:-1] if isinstance(p, str) and p in members), None)
            others = [t for t, m in members.items() if t != tag and all(n in m.model_fields for n in names)]
            if tag is not None and others:
                msg += f"; {'it is an option' if grouped == 1 else 'they are options'} of {', '.join(others)}, not of {tag}"
        if grouped > 1:
            key = ".".join(str(p) for p in loc[:-1]) or None
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if first["type"] not in ("missing", "extra_forbidden") and "input" in first and not isinstance(
        first["input"], dict | list
    ):
        shown = repr(first["input"])
        msg = f"{msg} (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
    more = len(errors) - grouped
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return SpecError(msg, where=where, key=key)
