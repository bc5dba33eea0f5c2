import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simkit import units
from simkit.errors import UnitError


@pytest.mark.parametrize(
    "text,expected",
    [
        ("80 GiB", 80 * 2**30),
        ("40GB", 40e9),
        ("512 B", 512.0),
        ("50 MiB", 50 * 2**20),
        ("1.5 TB", 1.5e12),
        ("2 TiB", 2 * 2**40),
    ],
)
def test_bytes(text, expected):
    assert units.parse_bytes(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("3.35 TB/s", 3.35e12),
        ("64 GB/s", 64e9),
        ("25 GiB/s", 25 * 2**30),
        ("400 Gb/s", 50e9),
        ("400 Gbps", 50e9),
        ("100 MB/s", 100e6),
    ],
)
def test_bandwidth(text, expected):
    assert units.parse_bandwidth(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text,expected",
    [("989 TFLOPS", 989e12), ("19.5 TFLOP/s", 19.5e12), ("624 TOPS", 624e12), ("1.2 PFLOPS", 1.2e15)],
)
def test_flops(text, expected):
    assert units.parse_flops(text) == pytest.approx(expected)


@pytest.mark.parametrize("text,expected", [("250 ns", 250e-9), ("5 us", 5e-6), ("1.2 ms", 1.2e-3), ("2 s", 2.0)])
def test_time(text, expected):
    assert units.parse_time(text) == pytest.approx(expected)


def test_power_and_price():
    assert units.parse_power("700 W") == 700
    assert units.parse_power("0.3 kW") == pytest.approx(300)
    assert units.parse_price("$2.50/h") == 2.5
    assert units.parse_price(3) == 3.0


@pytest.mark.parametrize("bad", ["3.35", 3.35, "-5 GB/s", "fast", "10 GB", "nan GB/s"])
def test_bad_bandwidth_is_rejected(bad):
    with pytest.raises(UnitError):
        units.parse_bandwidth(bad)


@pytest.mark.parametrize("bad", ["80 GiBs", "-1 GB", "eighty GB", True])
def test_bad_bytes_is_rejected(bad):
    with pytest.raises(UnitError):
        units.parse_bytes(bad)


def test_unitless_bytes_rejected_when_not_allowed():
    with pytest.raises(UnitError, match="no unit"):
        units.parse_bytes("80", allow_bare=False)


@given(st.floats(min_value=1e-3, max_value=1e6, allow_nan=False))
def test_bandwidth_roundtrip(x):
    text = f"{x!r} GB/s"
    assert math.isclose(units.parse_bandwidth(text), x * 1e9, rel_tol=1e-12)


def test_formatting():
    assert units.fmt_bytes(80 * 2**30) == "80 GiB"
    assert units.fmt_time(0.0015) == "1.5 ms"
    assert units.fmt_bandwidth(3.35e12) == "3.35 TB/s"
