"""Shared pieces of every spec: frozen pydantic models, unit-parsing field types, error wrapping."""

from __future__ import annotations

from typing import Annotated, Any

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
    """Base of every spec: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def format_validation_error(err: ValidationError, where: str | None) -> SpecError:
    """Turn pydantic's error list into one readable SpecError naming the key path."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or None
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if first["type"] not in ("missing", "extra_forbidden") and "input" in first and not isinstance(
        first["input"], dict | list
    ):
        msg = f"{msg} (got {first['input']!r})"
    more = len(err.errors()) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return SpecError(msg, where=where, key=key)
