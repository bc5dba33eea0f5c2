"""Shared pieces of every spec: frozen pydantic models, unit-parsing field types, error wrapping."""

from __future__ import annotations

import difflib
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

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
    "8" is not 8; an integer is still a valid float), no NaN or infinity."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, strict=True, allow_inf_nan=False)


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


def known_keys(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The keys the mapping at ``loc`` inside ``model`` accepts (empty when it is free-form)."""
    t: Any = model
    for part in loc:
        t = _descend(t, part)
        if t is None:
            return []
    t = _unwrap(t)
    if isinstance(t, type) and issubclass(t, BaseModel):
        return list(t.model_fields)
    return []


def format_validation_error(err: ValidationError, where: str | None, model: type[BaseModel] | None = None) -> SpecError:
    """Turn pydantic's error list into one readable SpecError naming the key path.

    An unknown key is reported first, with the closest known keys of its mapping ("did you
    mean") when ``model`` is given; several missing (or unknown) keys of one mapping are listed
    together."""
    errors = err.errors()
    errors = sorted(errors, key=lambda e: e["type"] != "extra_forbidden")  # stable: a typo first
    first = errors[0]
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc) or None
    msg = first["msg"]
    grouped = 1
    if first["type"] in ("missing", "extra_forbidden"):
        same = [e for e in errors if e["type"] == first["type"] and tuple(e["loc"])[:-1] == loc[:-1]]
        names = [str(e["loc"][-1]) for e in same]
        grouped = len(same)
        if first["type"] == "missing":
            msg = "required key is missing" if grouped == 1 else f"required keys are missing: {', '.join(names)}"
        else:
            msg = "unknown key" if grouped == 1 else f"unknown keys: {', '.join(names)}"
            known = known_keys(model, loc[:-1])
            hints = [f"{n} -> {', '.join(c)}" if grouped > 1 else ", ".join(c)
                     for n in names if (c := difflib.get_close_matches(n, known, n=3, cutoff=0.6))]
            if hints:
                msg += f"; did you mean {'; '.join(hints)}?"
            elif known:
                msg += f" (expected one of {', '.join(known)})"
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
