"""Human units at the edges, SI floats inside.

``parse_bytes("80 GiB")``, ``parse_bandwidth("3.35 TB/s")``, ``parse_flops("989 TFLOPS")``,
``parse_time("250 ns")``, ``parse_power("700 W")`` return floats in bytes, bytes/s, FLOP/s,
seconds and watts. Decimal prefixes (k, M, G, T, P) are powers of 1000, binary ones (Ki, Mi,
Gi, Ti) powers of 1024. Bandwidths may be given in bits ("400 Gb/s", "400 Gbps"), which are
divided by 8. A bare number is accepted only where ``allow_bare`` says so (plain counts), never
for a bandwidth: "3.35" is ambiguous and rejected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from simkit.errors import UnitError

_DEC = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_BIN = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}
_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_RE = re.compile(rf"^\s*{_NUM}\s*([A-Za-z/%$]*(?:/[A-Za-z]+)?)\s*$")


def comma_items(text: str) -> list[str]:
    """The items of a comma-separated list typed on a command line (``--batch-sizes 1,4,16``),
    each stripped of spaces. ValueError when any item is empty (``1,,2``, ``1,``, ``,`` or
    nothing): a typo is refused, not read as a shorter list."""
    items = [x.strip() for x in text.split(",")]
    if any(not x for x in items):
        raise ValueError(f"an empty item in {text!r}")
    return items


def _split(text: str, kind: str) -> tuple[float, str]:
    if not isinstance(text, str):
        raise UnitError(f"cannot read {text!r} as a {kind} (expected a number followed by a unit)")
    m = _RE.match(text)
    if not m:
        raise UnitError(f"cannot read {text!r} as a {kind} (expected a number followed by a unit)")
    return float(m.group(1)), m.group(2)


def _prefix(unit: str, base_units: tuple[str, ...], kind: str, text: str) -> tuple[float, str]:
    for base in sorted(base_units, key=len, reverse=True):
        if unit.endswith(base):
            pre = unit[: len(unit) - len(base)]
            if pre in _BIN:
                return _BIN[pre], base
            if pre in _DEC:
                return _DEC[pre], base
    raise UnitError(f"unknown unit {unit!r} in {text!r} for a {kind} (expected e.g. {_EXAMPLES[kind]})")


_EXAMPLES = {
    "size": "'80 GiB', '40 MB', '512 B'",
    "bandwidth": "'3.35 TB/s', '64 GB/s', '400 Gb/s', '25 GiB/s'",
    "flop rate": "'989 TFLOPS', '19.5 TFLOP/s', '624 TOPS'",
    "time": "'250 ns', '5 us', '1.2 ms', '2 s'",
    "power": "'700 W', '0.3 kW'",
}


def _check(value: float, kind: str, text: str, *, allow_zero: bool = True) -> float:
    if not math.isfinite(value):
        raise UnitError(f"{kind} {text!r} is not finite")
    if value < 0 or (value == 0 and not allow_zero):
        raise UnitError(f"{kind} {text!r} must be {'>= 0' if allow_zero else '> 0'}")
    return value


def parse_bytes(text: str | int | float, *, allow_bare: bool = True) -> float:
    """Parse a size ("80 GiB", "40MB", "512 B"); bare numbers are bytes when allowed."""
    if isinstance(text, bool):
        raise UnitError(f"expected a size, got {text!r}")
    if isinstance(text, int | float):
        if not allow_bare:
            raise UnitError(f"size {text!r} has no unit (expected e.g. {_EXAMPLES['size']})")
        return _check(float(text), "size", str(text))
    value, unit = _split(text, "size")
    if unit == "":
        if not allow_bare:
            raise UnitError(f"size {text!r} has no unit (expected e.g. {_EXAMPLES['size']})")
        return _check(value, "size", text)
    scale, _ = _prefix(unit, ("B", "bytes", "byte"), "size", text)
    return _check(value * scale, "size", text)


def parse_bandwidth(text: str | int | float) -> float:
    """Parse a bandwidth into bytes/s. Units: B/s, GB/s, GiB/s, Gb/s, Gbps, GT/s is not a bandwidth."""
    if isinstance(text, bool | int | float):
        raise UnitError(f"bandwidth {text!r} has no unit (expected e.g. {_EXAMPLES['bandwidth']})")
    value, unit = _split(text, "bandwidth")
    if unit == "":
        raise UnitError(f"bandwidth {text!r} has no unit (expected e.g. {_EXAMPLES['bandwidth']})")
    if unit.endswith("bps"):
        scale, _ = _prefix(unit[:-3] + "b", ("b",), "bandwidth", text)
        return _check(value * scale / 8.0, "bandwidth", text)
    if not unit.endswith("/s"):
        raise UnitError(f"bandwidth {text!r} needs a per-second unit (expected e.g. {_EXAMPLES['bandwidth']})")
    base = unit[:-2]
    if base.endswith("B"):
        scale, _ = _prefix(base, ("B",), "bandwidth", text)
        return _check(value * scale, "bandwidth", text)
    if base.endswith("b"):
        scale, _ = _prefix(base, ("b",), "bandwidth", text)
        return _check(value * scale / 8.0, "bandwidth", text)
    raise UnitError(f"unknown unit {unit!r} in {text!r} (expected e.g. {_EXAMPLES['bandwidth']})")


def parse_flops(text: str | int | float) -> float:
    """Parse a compute rate into FLOP/s (or OP/s for integer dtypes): "989 TFLOPS", "624 TOPS"."""
    if isinstance(text, bool | int | float):
        raise UnitError(f"flop rate {text!r} has no unit (expected e.g. {_EXAMPLES['flop rate']})")
    value, unit = _split(text, "flop rate")
    unit = unit.replace("FLOP/s", "FLOPS").replace("OP/s", "OPS")
    if unit == "":
        raise UnitError(f"flop rate {text!r} has no unit (expected e.g. {_EXAMPLES['flop rate']})")
    scale, _ = _prefix(unit, ("FLOPS", "OPS"), "flop rate", text)
    return _check(value * scale, "flop rate", text)


_TIME = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


def parse_time(text: str | int | float, *, allow_bare: bool = False) -> float:
    """Parse a duration into seconds ("250 ns", "5 us", "1.2 ms")."""
    if isinstance(text, bool):
        raise UnitError(f"expected a time, got {text!r}")
    if isinstance(text, int | float):
        if not allow_bare:
            raise UnitError(f"time {text!r} has no unit (expected e.g. {_EXAMPLES['time']})")
        return _check(float(text), "time", str(text))
    if not isinstance(text, str):
        raise UnitError(f"cannot read {text!r} as a time (expected e.g. {_EXAMPLES['time']})")
    m = re.match(rf"^\s*{_NUM}\s*(ns|us|µs|ms|s|min|h)?\s*$", text)
    if not m:
        raise UnitError(f"cannot read {text!r} as a time (expected e.g. {_EXAMPLES['time']})")
    unit = m.group(2)
    if unit is None:
        if not allow_bare:
            raise UnitError(f"time {text!r} has no unit (expected e.g. {_EXAMPLES['time']})")
        unit = "s"
    return _check(float(m.group(1)) * _TIME[unit], "time", text)


def parse_power(text: str | int | float) -> float:
    """Parse a power into watts ("700 W", "0.3 kW")."""
    if isinstance(text, bool | int | float):
        raise UnitError(f"power {text!r} has no unit (expected e.g. {_EXAMPLES['power']})")
    value, unit = _split(text, "power")
    scale, _ = _prefix(unit, ("W",), "power", text)
    return _check(value * scale, "power", text)


def parse_price(text: str | int | float) -> float:
    """Parse a price per hour into $/h: "$2.50/h", "2.5 USD/h" or a bare number of dollars per hour."""
    if isinstance(text, bool):
        raise UnitError(f"expected a price per hour, got {text!r}")
    if isinstance(text, int | float):
        return _check(float(text), "price", str(text))
    if not isinstance(text, str):
        raise UnitError(f"cannot read {text!r} as a price per hour (expected e.g. '$2.50/h')")
    m = re.match(rf"^\s*\$?\s*{_NUM}\s*(?:USD|\$)?\s*(?:/\s*(?:h|hr|hour))?\s*$", text)
    if not m:
        raise UnitError(f"cannot read {text!r} as a price per hour (expected e.g. '$2.50/h')")
    return _check(float(m.group(1)), "price", text)


PARSERS: dict[str, Callable[..., float]] = {
    "bytes": parse_bytes,
    "bandwidth": parse_bandwidth,
    "flops": parse_flops,
    "time": parse_time,
    "power": parse_power,
    "price": parse_price,
}


def _fmt(value: float, scale: list[tuple[float, str]], suffix: str, digits: int) -> str:
    for factor, prefix in scale:
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g} {prefix}{suffix}"
    return f"{value:.{digits}g} {suffix}"


_DEC_SCALE = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
_BIN_SCALE = [(2.0**40, "Ti"), (2.0**30, "Gi"), (2.0**20, "Mi"), (2.0**10, "Ki")]


def fmt_bytes(value: float, digits: int = 4) -> str:
    return _fmt(value, _BIN_SCALE, "B", digits)


def fmt_bandwidth(value: float, digits: int = 4) -> str:
    return _fmt(value, _DEC_SCALE, "B/s", digits)


def fmt_flops(value: float, digits: int = 4) -> str:
    return _fmt(value, _DEC_SCALE, "FLOP/s", digits)


def fmt_time(value: float, digits: int = 4) -> str:
    if value == 0:
        return "0 s"
    for factor, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g} {unit}"
    return f"{value / 1e-9:.{digits}g} ns"
