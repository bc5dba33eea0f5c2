"""Trace readers: Azure LLM inference (2023/2024), BurstGPT, Mooncake and simkit's native format.

Every reader turns a file into a :class:`~simkit.workload.base.Requests` (numpy columns, CSR
prefix hashes). The pipeline, in this order (see ``docs/traces.md``)::

    parse -> drop failed / bad lines -> model filter -> window -> rate_scale -> sample -> limit

CSV files are read in chunks with pandas straight into numpy columns; JSONL is read line by line
into ``array`` buffers. Bad lines are reported as :class:`~simkit.errors.TraceError` naming the
file and the 1-based line number (the header is line 1), or skipped and counted.

A new format is one :class:`TraceReader` subclass decorated with :func:`register_format`.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from simkit.errors import TraceError
from simkit.workload.base import MAX_TOKENS, Requests

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "TRACE_FORMATS",
    "ReadOptions",
    "TraceColumns",
    "TraceReader",
    "detect_format",
    "native_prefix_hashes",
    "read_trace",
    "register_format",
]

CHUNK_ROWS = 262_144
"""Rows per pandas chunk (and per Parquet batch)."""

MAX_BAD_LINES_LISTED = 10
"""How many bad line numbers ``meta["bad_lines"]["lines"]`` keeps."""

NATIVE_BLOCK_TOKENS = 512
"""Tokens per synthetic prefix block in the native format (same block size as Mooncake)."""

_PREFIX_ID_BITS = 39
_BLOCK_INDEX_BITS = 24


# --------------------------------------------------------------------------------------------
# options and the intermediate column set


@dataclass(frozen=True)
class ReadOptions:
    """Options of :func:`read_trace`, validated."""

    limit: int | None = None
    sample: int | float | None = None
    seed: int = 0
    window: tuple[float, float | None] | None = None
    rate_scale: float = 1.0
    model_filter: str | None = None
    on_bad_line: str = "fail"
    keep_failed: bool = False


@dataclass
class TraceColumns:
    """What a reader's ``parse`` returns: one entry per good row, in file order.

    ``t_s`` is in seconds on the trace's own clock (any origin; the pipeline rebases it).
    ``failed`` marks failed requests (BurstGPT zero-response rows) whose ``output_tokens`` the
    reader has already set to 1. ``model`` is an int array of codes into ``model_names``, or None
    if the format has no model column.
    """

    t_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    failed: np.ndarray | None = None
    model: np.ndarray | None = None
    model_names: list[str] = field(default_factory=list)
    prefix_hashes: np.ndarray | None = None
    prefix_offsets: np.ndarray | None = None
    prefix_block_tokens: int = 512
    meta: dict[str, Any] = field(default_factory=dict)


class _BadLines:
    """Collects bad lines: raises on the first one (``fail``) or counts them (``skip``)."""

    def __init__(self, path: Path, mode: str, unit: str = "line") -> None:
        self.path = path
        self.mode = mode
        self.unit = unit
        self.count = 0
        self.lines: list[int] = []

    def bad(self, line: int, message: str) -> None:
        if self.mode == "fail":
            raise TraceError(
                message + " (pass on_bad_line='skip' to drop such lines)",
                where=str(self.path),
                key=f"{self.unit} {line}",
            )
        self.count += 1
        self._keep([int(line)])

    def bad_many(self, lines: np.ndarray) -> None:
        self.count += len(lines)
        self._keep([int(x) for x in lines[:MAX_BAD_LINES_LISTED]])

    def _keep(self, new: list[int]) -> None:
        # The lowest line numbers: the slow CSV path may report a later line before an earlier one.
        if len(self.lines) < MAX_BAD_LINES_LISTED or new[0] < self.lines[-1]:
            self.lines = sorted(self.lines + new)[:MAX_BAD_LINES_LISTED]

    def reset(self) -> None:
        self.count = 0
        self.lines = []

    def as_meta(self) -> dict[str, Any]:
        return {"count": self.count, "lines": list(self.lines)}


def _show(value: Any) -> str:
    """A raw cell value as it should appear in an error message."""
    import pandas as pd

    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "an empty value"
    if isinstance(value, str) and not value.strip():
        return "an empty value"
    if isinstance(value, float) and value.is_integer():
        return repr(str(int(value)))
    return repr(str(value))


class _Checks:
    """Per-chunk validity masks; the first failing check of the first bad row makes the message."""

    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self._checks: list[tuple[np.ndarray, str, pd.Series | None]] = []

    def flag(self, mask: np.ndarray, expected: str, raw: pd.Series | None) -> None:
        if mask.any():
            self._checks.append((mask, expected, raw))
            self.bad |= mask

    def report(self, lines: np.ndarray, sink: _BadLines) -> np.ndarray:
        """Send bad rows to ``sink``; returns the mask of good rows."""
        if not self.bad.any():
            return ~self.bad
        if sink.mode == "fail":
            i = int(np.argmax(self.bad))
            for mask, expected, raw in self._checks:
                if mask[i]:
                    got = "" if raw is None else f", got {_show(raw.iloc[i])}"
                    sink.bad(int(lines[i]), f"{expected}{got}")
        sink.bad_many(lines[self.bad])
        return ~self.bad


# --------------------------------------------------------------------------------------------
# column helpers (vectorised over one chunk)


def _numeric(s: pd.Series) -> np.ndarray:
    """A column as float64, NaN where it is missing or not a number."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return s.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _int_column(df: pd.DataFrame, col: str, checks: _Checks, *, minimum: int, what: str) -> np.ndarray:
    """An integer column (int64); rows that are missing, fractional or below ``minimum`` are flagged."""
    s = df[col]
    v = _numeric(s)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(v) | (v != np.floor(v)) | (v < minimum)
        big = ~bad & (v > MAX_TOKENS)
    checks.flag(bad, f"expected {what} in column {col!r}", s)
    checks.flag(big, f"expected at most {MAX_TOKENS:,} tokens in column {col!r}", s)
    bad |= big
    out = np.where(bad, minimum, v)
    return out.astype(np.int64)


def _float_column(
    df: pd.DataFrame, col: str, checks: _Checks, *, what: str, minimum: float | None = None
) -> np.ndarray:
    s = df[col]
    v = _numeric(s)
    bad = ~np.isfinite(v)
    if minimum is not None:
        with np.errstate(invalid="ignore"):
            bad |= v < minimum
    checks.flag(bad, f"expected {what} in column {col!r}", s)
    return np.where(bad, 0.0, v)


def _datetime_ns(df: pd.DataFrame, col: str, checks: _Checks) -> np.ndarray:
    """ISO-8601-ish timestamps (any fractional digits, optional UTC offset) as int64 ns since epoch."""
    import pandas as pd

    s = df[col]
    if not (pd.api.types.is_string_dtype(s.dtype) or s.dtype == object):
        s = s.astype("string")
    dt = pd.to_datetime(s, format="ISO8601", utc=True, errors="coerce").dt.tz_convert(None)
    # pandas keeps a coarser unit when a date lies outside nanoseconds' range (years 1677-2262)
    with np.errstate(invalid="ignore"):
        oob = ((dt < pd.Timestamp.min) | (dt > pd.Timestamp.max)).to_numpy()
    bad = dt.isna().to_numpy()
    checks.flag(
        bad,
        f"expected a timestamp like '2023-11-16 18:15:46.6805900' in column {col!r}",
        df[col],
    )
    checks.flag(oob, f"expected a timestamp between years 1678 and 2261 in column {col!r}", df[col])
    if oob.any():
        dt = dt.mask(oob)
        bad = bad | oob
    ns = dt.dt.as_unit("ns").to_numpy(dtype="datetime64[ns]")
    ns = ns.astype(np.int64)
    ns[bad] = 0
    return ns


# --------------------------------------------------------------------------------------------
# chunked CSV source


def _resolve_columns(
    path: Path, header: list[str], required: list[str], optional: list[str] = ()
) -> dict[str, str | None]:
    """Map canonical column names to the file's (case-insensitive, whitespace-trimmed)."""
    by_lower = {h.strip().lower(): h for h in header}
    out: dict[str, str | None] = {}
    for name in required:
        actual = by_lower.get(name.lower())
        if actual is None:
            raise TraceError(
                f"missing required column {name!r} (header has: {', '.join(h.strip() for h in header)})",
                where=str(path),
                key=name,
            )
        out[name] = actual
    for name in optional:
        out[name] = by_lower.get(name.lower())
    return out


def _read_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        for first in f:
            if first.strip():
                return next(csv.reader([first]))
            break
    raise TraceError("empty file: expected a CSV header on line 1", where=str(path), key="line 1")


class _NeedSlowPath(Exception):
    """pandas met a line it cannot map to a line number; read the file with ``csv`` instead."""


def _csv_chunks_pandas(
    path: Path,
    header: list[str],
    sink: _BadLines | None = None,
    wide: tuple[np.ndarray, np.ndarray] | None = None,
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """(chunk, 1-based line numbers) pairs from pandas' C parser; blank lines are dropped.

    ``wide``: (line numbers, field counts) of lines with too many fields, found by
    :func:`_wide_lines`. pandas skips them and they go to ``sink`` in line order (in ``fail`` mode
    the rows before one are handed out first, so the error names the first bad line). Without
    ``wide``, such a line raises :class:`_NeedSlowPath`.
    """
    import pandas as pd

    skip = wide[0] if wide is not None else np.empty(0, np.int64)
    width = len(header)
    if wide is not None and sink is not None and sink.mode == "skip":
        for line, fields in zip(*wide):
            sink.bad(int(line), f"expected {width} comma-separated fields, got {int(fields)}")
    # Data line k (0-based, skipped lines not counted) is on line k + 2 + #{j: rank[j] <= k}.
    rank = skip - 2 - np.arange(len(skip), dtype=np.int64)
    start = 0
    pending = 0  # index into skip of the next wide line not yet reported (fail mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            reader = pd.read_csv(
                path,
                header=0,
                index_col=False,
                chunksize=CHUNK_ROWS,
                skip_blank_lines=False,
                encoding="utf-8-sig",
                skiprows=(skip - 1).tolist() if len(skip) else None,
            )
            with reader:
                for chunk in reader:
                    n = len(chunk)
                    k = np.arange(start, start + n, dtype=np.int64)
                    lines = k + 2 + np.searchsorted(rank, k, side="right")
                    start += n
                    blank = chunk.isna().all(axis=1).to_numpy()
                    if blank.any():
                        chunk = chunk.loc[~blank]
                        lines = lines[~blank]
                    if wide is not None and sink is not None and sink.mode == "fail":
                        while len(lines) and pending < len(skip) and skip[pending] < lines[-1]:
                            before = lines < skip[pending]
                            if before.any():
                                yield chunk.loc[before], lines[before]
                            sink.bad(
                                int(skip[pending]),
                                f"expected {width} comma-separated fields, got {int(wide[1][pending])}",
                            )
                            pending += 1
                    yield chunk, lines
            if sink is not None and sink.mode == "fail" and pending < len(skip):
                sink.bad(
                    int(skip[pending]),
                    f"expected {width} comma-separated fields, got {int(wide[1][pending])}",
                )
        except (pd.errors.ParserError, pd.errors.ParserWarning, UnicodeDecodeError) as e:
            raise _NeedSlowPath from e


def _wide_lines(path: Path, width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(1-based line numbers, field counts) of the lines with more than ``width`` fields.

    Counts commas per line with numpy over raw bytes, a block at a time. Returns None if the file
    has quote characters (a quoted comma is not a separator): the caller then uses ``csv``.
    """
    found_lines: list[np.ndarray] = []
    found_fields: list[np.ndarray] = []
    lines_before = 0  # complete lines in earlier blocks
    carry = 0  # commas of the unfinished line at the end of the earlier blocks
    for block in _blocks(path):
        b = np.frombuffer(block, dtype=np.uint8)
        if (b == ord('"')).any():
            return None
        nl = _line_ends(b)
        per_line = np.bincount(np.searchsorted(nl, np.flatnonzero(b == ord(","))), minlength=len(nl) + 1)
        per_line[0] += carry
        wide = np.flatnonzero(per_line[:-1] >= width)
        found_lines.append(wide + lines_before + 1)
        found_fields.append(per_line[wide] + 1)
        carry = int(per_line[-1])
        lines_before += len(nl)
    if carry >= width:
        found_lines.append(np.array([lines_before + 1]))
        found_fields.append(np.array([carry + 1]))
    if not found_lines:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return (
        np.concatenate(found_lines).astype(np.int64),
        np.concatenate(found_fields).astype(np.int64),
    )


def _csv_chunks_slow(
    path: Path, header: list[str], sink: _BadLines, wrong_width: list[int]
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """Like the pandas path, with the ``csv`` module; ``wrong_width[0]`` counts lines it drops."""
    width = len(header)
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        rows: list[list[str]] = []
        lines: list[int] = []
        for row in reader:
            line = reader.line_num
            if not row or (not row[0].strip() and not "".join(row).strip()):
                continue  # blank, like the pandas path
            if len(row) != width:
                wrong_width[0] += 1
                if sink.mode == "fail" and rows:
                    # earlier lines are checked first, so the error names the first bad line
                    yield _strings_frame(rows, header), np.asarray(lines, dtype=np.int64)
                    rows, lines = [], []
                sink.bad(line, f"expected {width} comma-separated fields, got {len(row)}")
                continue
            rows.append(row)
            lines.append(line)
            if len(rows) >= CHUNK_ROWS:
                yield _strings_frame(rows, header), np.asarray(lines, dtype=np.int64)
                rows, lines = [], []
        if rows:
            yield _strings_frame(rows, header), np.asarray(lines, dtype=np.int64)


def _strings_frame(rows: list[list[str]], header: list[str]) -> pd.DataFrame:
    """Rows of strings as a frame of object columns (empty strings stay; converters coerce them)."""
    import pandas as pd

    columns = [np.array(col, dtype=object) for col in zip(*rows)]
    return pd.DataFrame(dict(zip(range(len(header)), columns))).set_axis(header, axis=1)


def _collect_csv(
    path: Path,
    header: list[str],
    sink: _BadLines,
    convert: Callable[[pd.DataFrame, np.ndarray, _BadLines], dict[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray], int]:
    """Run ``convert`` over every chunk and concatenate its columns; returns (columns, data rows)."""

    def run(chunks: Iterator[tuple[pd.DataFrame, np.ndarray]]) -> tuple[dict[str, np.ndarray], int]:
        parts: dict[str, list[np.ndarray]] = {}
        rows = 0
        for chunk, lines in chunks:
            rows += len(chunk)
            for k, v in convert(chunk, lines, sink).items():
                parts.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in parts.items()}, rows

    try:
        return run(_csv_chunks_pandas(path, header))
    except _NeedSlowPath:
        pass
    # A line with too many fields (pandas cannot say which row is on which line after it):
    # find those lines with numpy and let pandas skip them, or else use the csv module.
    wide = _wide_lines(path, len(header))
    if wide is not None:
        sink.reset()
        try:
            cols, rows = run(_csv_chunks_pandas(path, header, sink, wide))
            return cols, rows + len(wide[0])
        except _NeedSlowPath:
            pass
    sink.reset()
    wrong_width = [0]
    cols, rows = run(_csv_chunks_slow(path, header, sink, wrong_width))
    return cols, rows + wrong_width[0]


# --------------------------------------------------------------------------------------------
# reader base class and registry


TRACE_FORMATS: dict[str, type[TraceReader]] = {}
"""Format name -> reader class. ``format="auto"`` asks each one's ``sniff`` in this order."""


def register_format(cls: type[TraceReader]) -> type[TraceReader]:
    """Class decorator: add a reader to :data:`TRACE_FORMATS`."""
    TRACE_FORMATS[cls.name] = cls
    return cls


class TraceReader:
    """One trace format. Subclasses set ``name``, implement ``sniff`` and ``parse``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @classmethod
    def sniff(cls, head_text: str) -> bool:
        """Whether the first bytes of a file (decoded, BOM stripped) look like this format."""
        return False

    def parse(self, path: Path, opts: ReadOptions) -> TraceColumns:
        """Read every row, reporting bad lines; no filtering beyond that."""
        raise NotImplementedError

    def read(self, path: str | Path, opts: ReadOptions) -> Requests:
        """Parse, then apply the option pipeline."""
        path = Path(path)
        return _apply_options(_parse_cached(self, path, opts), opts, path, self.name)


def _parse_cached(reader: TraceReader, path: Path, opts: ReadOptions) -> TraceColumns:
    """``reader.parse(path, opts)`` through the on-disk cache of parsed traces
    (:mod:`simkit.workload.trace_cache`) for this module's readers, when it is on; a parse that
    found bad lines is not stored (they are reported on every read, as before)."""
    from simkit.workload import trace_cache

    where = None
    if type(reader).__module__ == __name__:
        where = trace_cache.entry(path, f"{type(reader).__qualname__};{reader.name};{opts.on_bad_line}")
    if where is not None:
        fields = trace_cache.load(*where)
        if fields is not None:
            return TraceColumns(**fields)
    cols = reader.parse(path, opts)
    if where is not None and cols.meta.get("bad_lines", {}).get("count", 0) == 0:
        trace_cache.store(*where, vars(cols))
    return cols


def _header_names(head_text: str) -> set[str]:
    first = head_text.lstrip("\ufeff").split("\n", 1)[0].strip()
    try:
        return {h.strip().lower() for h in next(csv.reader([first]))}
    except (csv.Error, StopIteration):
        return set()


PLAIN_MAX_BYTES = 4 << 20
"""Largest CSV file the plain readers (no pandas) are tried on. They save pandas' import
(0.2-0.35 s) but parse 3-5x slower than pandas' C parser (a 1M-row Azure file: 1.3 s against
0.4 s), so past ~8-16 MB the pandas path is faster, its import included."""


def _plain_first(path: Path) -> bool:
    """Whether to try a plain reader on ``path``: pandas is not imported yet (once it is, its C
    parser is the faster one) and the file is at most :data:`PLAIN_MAX_BYTES`. Either way the
    columns are the same."""
    import sys

    try:
        return "pandas" not in sys.modules and path.stat().st_size <= PLAIN_MAX_BYTES
    except OSError:
        return False


_AZURE_FIELDS = (rb"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d{1,9})?", rb"[1-9]\d{0,17}", rb"\d{1,18}")
"""A plain Azure line's timestamp (no time zone), ContextTokens >= 1 and GeneratedTokens >= 0."""
_AZURE_BODY = re.compile(b"(?:%s,%s,%s\r?\n)*" % _AZURE_FIELDS)


def _azure_plain(path: Path, header: list[str]) -> tuple[dict[str, np.ndarray], int] | None:
    """The common case of an Azure trace read without pandas: exactly the three columns in the
    documented order, every line ``YYYY-MM-DD HH:MM:SS[.fraction],<int >= 1>,<int >= 0>`` (no
    time zone, no blank or odd lines). Gives the same columns as the pandas path; None for
    anything else (that path then reads the file and reports bad lines)."""
    if [h.strip() for h in header] != AzureReader.COLUMNS:
        return None
    body = _body_bytes(path)
    if body is None or _AZURE_BODY.fullmatch(body) is None:
        return None  # some line is not of the plain form
    if not body:
        return {}, 0
    # every line is three comma-free fields (checked above): split at commas and line ends
    fields = body.replace(b"\r\n", b"\n").replace(b",", b"\n").split(b"\n")
    del fields[-1]  # after the last line end
    ts, inp, out = fields[0::3], fields[1::3], fields[2::3]
    rows = len(ts)
    years = np.array(ts, dtype="S4").astype(np.int64)
    inp_a, out_a = np.array(inp, dtype=np.int64), np.array(out, dtype=np.int64)
    if (years < 1678).any() or (years > 2261).any() or (inp_a > MAX_TOKENS).any() or (out_a > MAX_TOKENS).any():
        return None  # outside datetime64[ns] (it would wrap silently) or absurd counts: the pandas path names the line
    ns = np.array(ts).astype("datetime64[ns]").astype(np.int64)
    return {"ns": ns, "inp": inp_a, "out": out_a}, rows


@register_format
class AzureReader(TraceReader):
    """Azure LLM inference trace 2023/2024: ``TIMESTAMP,ContextTokens,GeneratedTokens``."""

    name = "azure"
    description = "Azure LLM inference trace 2023/2024 (TIMESTAMP,ContextTokens,GeneratedTokens)"
    COLUMNS: ClassVar[list[str]] = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]

    @classmethod
    def sniff(cls, head_text: str) -> bool:
        return bool({"contexttokens", "generatedtokens"} & _header_names(head_text))

    def parse(self, path: Path, opts: ReadOptions) -> TraceColumns:
        header = _read_header(path)
        c = _resolve_columns(path, header, self.COLUMNS)
        sink = _BadLines(path, opts.on_bad_line)

        def convert(df: pd.DataFrame, lines: np.ndarray, sink: _BadLines) -> dict[str, np.ndarray]:
            checks = _Checks(len(df))
            ns = _datetime_ns(df, c["TIMESTAMP"], checks)
            inp = _int_column(df, c["ContextTokens"], checks, minimum=1, what="a positive integer")
            out = _int_column(df, c["GeneratedTokens"], checks, minimum=0, what="an integer >= 0")
            good = checks.report(lines, sink)
            return {"ns": ns[good], "inp": inp[good], "out": out[good]}

        fast = _azure_plain(path, header) if _plain_first(path) else None
        if fast is not None:
            cols, rows = fast
        else:
            cols, rows = _collect_csv(path, header, sink, convert)
        ns = cols.get("ns", np.empty(0, np.int64))
        t_s = (ns - ns.min()) / 1e9 if len(ns) else np.empty(0)
        out = cols.get("out", np.empty(0, np.int64))
        zero = out == 0
        out[zero] = 1
        return TraceColumns(
            t_s=t_s,
            input_tokens=cols.get("inp", np.empty(0, np.int64)),
            output_tokens=out,
            meta={"rows": rows, "bad_lines": sink.as_meta(), "zero_output_clamped": int(zero.sum())},
        )


_BURST_MODEL = rb"[A-Za-z][A-Za-z0-9._-]{0,63}"
"""A model name the plain BurstGPT path reads as pandas would: no spaces to strip, no quotes,
not a number (it starts with a letter)."""
_BURST_TEXT = rb"[\x20\x21\x23-\x2b\x2d-\x7e]*"
"""Total tokens and Log Type (not read): printable ASCII without a comma or a quote."""
_BURST_BODY = re.compile(rb"(?:\d{1,15},%s,[1-9]\d{0,17},\d{1,18},%s,%s\r?\n)*" % (_BURST_MODEL, _BURST_TEXT, _BURST_TEXT))
_BURST_NOT_NAMES = frozenset({"na", "nan", "null", "none", "true", "false", "inf", "infinity"})
"""Names (any case) that pandas reads as missing, booleans or floats: left to the pandas path."""


def _burstgpt_plain(path: Path, header: list[str]) -> tuple[dict[str, np.ndarray], int, list[str]] | None:
    """The common case of a BurstGPT trace read without pandas: exactly the six columns in the
    documented order, every line ``<integer seconds>,<model>,<int >= 1>,<int >= 0>,<total>,<log
    type>`` with a plain model name (:data:`_BURST_MODEL`; total and log type are
    :data:`_BURST_TEXT`), no blank lines. Gives the same columns, row count and model names (in
    order of first appearance) as the pandas path; None for anything else."""
    if [h.strip() for h in header] != ["Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type"]:
        return None
    body = _body_bytes(path)
    if body is None or _BURST_BODY.fullmatch(body) is None:
        return None
    if not body:
        return {}, 0, []
    # every line is six comma-free fields (checked above): split at commas and line ends
    fields = body.replace(b"\r\n", b"\n").replace(b",", b"\n").split(b"\n")
    del fields[-1]  # after the last line end
    ts, model, inp, out = fields[0::6], fields[1::6], fields[2::6], fields[3::6]
    inp_a, out_a = np.array(inp, dtype=np.int64), np.array(out, dtype=np.int64)
    if (inp_a > MAX_TOKENS).any() or (out_a > MAX_TOKENS).any():
        return None  # the pandas path names the line
    names = list(dict.fromkeys(model))
    if any(n.decode().lower() in _BURST_NOT_NAMES for n in names):
        return None
    code = {n: i for i, n in enumerate(names)}
    cols = {
        "t": np.array(ts, dtype=np.int64).astype(np.float64),
        "inp": inp_a,
        "out": out_a,
        "model": np.array([code[m] for m in model], dtype=np.int32),
    }
    return cols, len(ts), [n.decode() for n in names]


def _body_bytes(path: Path) -> bytes | None:
    """A CSV file's bytes after its header line (UTF-8 BOM dropped; a last line without a line
    end gets one); None if the file has no line end at all."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    nl = data.find(b"\n")
    if nl < 0:
        return None
    body = data[nl + 1 :]
    if body and not body.endswith(b"\n"):
        body += b"\n"
    return body


@register_format
class BurstGPTReader(TraceReader):
    """BurstGPT: ``Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type``."""

    name = "burstgpt"
    description = "BurstGPT (Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type)"
    REQUIRED: ClassVar[list[str]] = ["Timestamp", "Model", "Request tokens", "Response tokens"]
    OPTIONAL: ClassVar[list[str]] = ["Total tokens", "Log Type", "Session ID", "Elapsed time"]

    @classmethod
    def sniff(cls, head_text: str) -> bool:
        return bool({"request tokens", "response tokens"} & _header_names(head_text))

    def parse(self, path: Path, opts: ReadOptions) -> TraceColumns:
        header = _read_header(path)
        c = _resolve_columns(path, header, self.REQUIRED, self.OPTIONAL)
        sink = _BadLines(path, opts.on_bad_line)
        names: dict[str, int] = {}  # model name -> code, over all chunks

        def convert(df: pd.DataFrame, lines: np.ndarray, sink: _BadLines) -> dict[str, np.ndarray]:
            checks = _Checks(len(df))
            t = _float_column(df, c["Timestamp"], checks, what="a timestamp in seconds")
            model_s = df[c["Model"]].astype(str).str.strip()
            no_model = df[c["Model"]].isna().to_numpy() | (model_s == "").to_numpy()
            checks.flag(no_model, f"expected a model name in column {c['Model']!r}", None)
            inp = _int_column(df, c["Request tokens"], checks, minimum=1, what="a positive integer")
            out = _int_column(df, c["Response tokens"], checks, minimum=0, what="an integer >= 0")
            good = checks.report(lines, sink)
            import pandas as pd

            codes, uniques = pd.factorize(model_s[good])
            to_global = np.array([names.setdefault(u, len(names)) for u in uniques], dtype=np.int32)
            model = to_global[codes] if len(codes) else np.empty(0, np.int32)
            return {"t": t[good], "inp": inp[good], "out": out[good], "model": model}

        fast = _burstgpt_plain(path, header) if _plain_first(path) else None
        if fast is not None:
            cols, rows, first_seen = fast
            names.update((n, i) for i, n in enumerate(first_seen))
        else:
            cols, rows = _collect_csv(path, header, sink, convert)
        out = cols.get("out", np.empty(0, np.int64))
        failed = out == 0
        out[failed] = 1
        model = cols.get("model", np.empty(0, np.int32))
        model_names = sorted(names, key=names.__getitem__)
        counts = np.bincount(model, minlength=len(model_names))
        return TraceColumns(
            t_s=cols.get("t", np.empty(0)),
            input_tokens=cols.get("inp", np.empty(0, np.int64)),
            output_tokens=out,
            failed=failed,
            model=model,
            model_names=model_names,
            meta={
                "rows": rows,
                "bad_lines": sink.as_meta(),
                "models": {m: int(k) for m, k in zip(model_names, counts)},
            },
        )


def _to_numpy(buf: array, dtype: type) -> np.ndarray:
    """Copy an ``array.array`` buffer into a numpy array (no per-element Python work)."""
    return np.frombuffer(buf, dtype=dtype).copy() if len(buf) else np.empty(0, dtype=dtype)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_int(obj: dict, key: str, minimum: int) -> int | None:
    v = obj.get(key)
    if isinstance(v, bool):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or not minimum <= v <= MAX_TOKENS:
        return None
    return v


def _got(obj: dict, key: str) -> str:
    return f"got {_short(obj[key])}" if key in obj else "it is missing"


@register_format
class MooncakeReader(TraceReader):
    """Mooncake JSONL: ``timestamp`` (ms), ``input_length``, ``output_length``, ``hash_ids``."""

    name = "mooncake"
    description = "Mooncake JSONL (timestamp ms, input_length, output_length, hash_ids; 512-token blocks)"
    BLOCK_TOKENS: ClassVar[int] = 512

    @classmethod
    def sniff(cls, head_text: str) -> bool:
        for line in head_text.lstrip("\ufeff").splitlines():
            if line.strip():
                s = line.strip()
                return s.startswith("{") and '"input_length"' in s
        return False

    def parse(self, path: Path, opts: ReadOptions) -> TraceColumns:
        sink = _BadLines(path, opts.on_bad_line)
        ts = array("d")
        inp = array("q")
        out = array("q")
        hashes = array("q")
        offsets = array("q", [0])
        rows = 0
        any_hashes = False
        zero = 0
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                rows += 1
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    sink.bad(lineno, f"expected one JSON object per line ({e.msg} at column {e.colno})")
                    continue
                if not isinstance(obj, dict):
                    sink.bad(lineno, "expected one JSON object per line")
                    continue
                t = obj.get("timestamp")
                if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
                    sink.bad(
                        lineno, f"expected 'timestamp' as a number of milliseconds, {_got(obj, 'timestamp')}"
                    )
                    continue
                i = _json_int(obj, "input_length", 1)
                if i is None:
                    sink.bad(
                        lineno,
                        f"expected 'input_length' as a positive integer, {_got(obj, 'input_length')}",
                    )
                    continue
                o = _json_int(obj, "output_length", 0)
                if o is None:
                    sink.bad(
                        lineno,
                        f"expected 'output_length' as an integer >= 0, {_got(obj, 'output_length')}",
                    )
                    continue
                h = obj.get("hash_ids")
                try:
                    block_hashes = array("q", h if h is not None else ())
                except (TypeError, OverflowError):
                    sink.bad(lineno, f"expected 'hash_ids' as a list of integers, got {_short(h)}")
                    continue
                if not isinstance(h, list | None):
                    sink.bad(lineno, f"expected 'hash_ids' as a list of integers, got {_short(h)}")
                    continue
                if "hash_ids" in obj:
                    any_hashes = True
                if o == 0:
                    zero += 1
                    o = 1
                ts.append(t / 1000.0)
                inp.append(i)
                out.append(o)
                hashes.extend(block_hashes)
                offsets.append(len(hashes))
        cols = TraceColumns(
            t_s=_to_numpy(ts, np.float64),
            input_tokens=_to_numpy(inp, np.int64),
            output_tokens=_to_numpy(out, np.int64),
            prefix_block_tokens=self.BLOCK_TOKENS,
            meta={"rows": rows, "bad_lines": sink.as_meta(), "zero_output_clamped": zero},
        )
        if any_hashes:
            cols.prefix_hashes = _to_numpy(hashes, np.int64)
            cols.prefix_offsets = _to_numpy(offsets, np.int64)
        return cols


def native_prefix_hashes(
    prefix_id: np.ndarray, prefix_tokens: np.ndarray, block_tokens: int = NATIVE_BLOCK_TOKENS
) -> tuple[np.ndarray, np.ndarray]:
    """CSR prefix hashes for the native format's ``prefix_id`` / ``prefix_tokens`` columns.

    Request ``i`` gets ``ceil(prefix_tokens[i] / block_tokens)`` hashes
    ``(prefix_id[i] << 24) + b`` for block index ``b = 0, 1, ...``: consecutive integers, the same
    for every request with that prefix id. A negative ``prefix_id`` (or 0 prefix tokens) means no
    shared prefix. ``prefix_id`` must be below 2**39.
    """
    pid = np.asarray(prefix_id, dtype=np.int64)
    ptok = np.asarray(prefix_tokens, dtype=np.int64)
    nblocks = np.where(pid >= 0, -(-ptok // block_tokens), 0)
    offsets = np.zeros(len(pid) + 1, dtype=np.int64)
    np.cumsum(nblocks, out=offsets[1:])
    total = int(offsets[-1])
    block = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], nblocks)
    hashes = (np.repeat(pid, nblocks) << _BLOCK_INDEX_BITS) + block
    return hashes, offsets


_NATIVE_SECONDS = rb"(?:\d{1,15}|(?=[\d.]{3,16}[,\r\n])\d+\.\d+)"
"""arrival_s of a plain native line: a plain decimal of at most 15 digits (pandas' parser and
Python's give the same float for those: the digits and the power of ten are exact doubles)."""
_NATIVE_BODY = re.compile(rb"(?:%s,[1-9]\d{0,17},[1-9]\d{0,17}\r?\n)*" % _NATIVE_SECONDS)
_NATIVE_PREFIX_BODY = re.compile(rb"(?:%s,[1-9]\d{0,17},[1-9]\d{0,17},\d{0,12},\d{0,18}\r?\n)*" % _NATIVE_SECONDS)


def _native_plain(path: Path, header: list[str]) -> tuple[dict[str, np.ndarray], int] | None:
    """The common case of a native CSV trace read without pandas: exactly the columns
    ``arrival_s,input_tokens,output_tokens[,prefix_id,prefix_tokens]`` in that order, every line
    plain (:data:`_NATIVE_SECONDS`, counts >= 1, a prefix id of digits or nothing, prefix tokens
    of digits), no blank lines, and every line valid (token counts within bounds, a prefix id
    below 2**39 with its prefix tokens given and <= input_tokens). Gives the same columns and row
    count as the pandas path; None for anything else (that path reads it and reports the lines)."""
    names = [h.strip() for h in header]
    if names == NativeReader.REQUIRED:
        body_re, prefix = _NATIVE_BODY, False
    elif names == NativeReader.REQUIRED + NativeReader.OPTIONAL:
        body_re, prefix = _NATIVE_PREFIX_BODY, True
    else:
        return None
    body = _body_bytes(path)
    if body is None or body_re.fullmatch(body) is None:
        return None
    if not body:
        return {}, 0
    fields = body.replace(b"\r\n", b"\n").replace(b",", b"\n").split(b"\n")
    del fields[-1]  # after the last line end
    width = 5 if prefix else 3
    t = np.array(fields[0::width], dtype=np.float64)
    inp, out = np.array(fields[1::width], dtype=np.int64), np.array(fields[2::width], dtype=np.int64)
    if (inp > MAX_TOKENS).any() or (out > MAX_TOKENS).any():
        return None
    cols = {"t": t, "inp": inp, "out": out}
    if prefix:
        pid_raw, ptok_raw = fields[3::width], fields[4::width]
        has = np.array([len(x) > 0 for x in pid_raw], dtype=bool)
        pid = np.array([x or b"0" for x in pid_raw], dtype=np.int64)
        ptok = np.array([x or b"0" for x in ptok_raw], dtype=np.int64)
        given = np.array([len(x) > 0 for x in ptok_raw], dtype=bool)
        if (has & ((pid >= 2**_PREFIX_ID_BITS) | ~given | (ptok > inp))).any():
            return None
        cols["pid"] = np.where(has, pid, -1).astype(np.int64)
        cols["ptok"] = np.where(has, ptok, 0).astype(np.int64)
    return cols, len(t)


@register_format
class NativeReader(TraceReader):
    """simkit's own format: CSV or Parquet with ``arrival_s,input_tokens,output_tokens``
    and optionally ``prefix_id,prefix_tokens``."""

    name = "native"
    description = "simkit native CSV/Parquet (arrival_s,input_tokens,output_tokens[,prefix_id,prefix_tokens])"
    REQUIRED: ClassVar[list[str]] = ["arrival_s", "input_tokens", "output_tokens"]
    OPTIONAL: ClassVar[list[str]] = ["prefix_id", "prefix_tokens"]

    @classmethod
    def sniff(cls, head_text: str) -> bool:
        if head_text.startswith("PAR1"):
            return True
        return bool({"arrival_s", "input_tokens", "output_tokens"} & _header_names(head_text))

    def parse(self, path: Path, opts: ReadOptions) -> TraceColumns:
        parquet = _is_parquet(path)
        sink = _BadLines(path, opts.on_bad_line, unit="row" if parquet else "line")
        if parquet:
            import pyarrow.parquet as pq

            try:
                pf = pq.ParquetFile(path)
            except Exception as e:  # pyarrow raises several types for a corrupt file
                raise TraceError(f"not a readable Parquet file ({e})", where=str(path)) from e
            header = list(pf.schema_arrow.names)
        else:
            header = _read_header(path)
        c = _resolve_columns(path, header, self.REQUIRED, self.OPTIONAL)
        if (c["prefix_id"] is None) != (c["prefix_tokens"] is None):
            missing = "prefix_tokens" if c["prefix_tokens"] is None else "prefix_id"
            raise TraceError(
                f"missing column {missing!r}: prefix_id and prefix_tokens go together",
                where=str(path),
                key=missing,
            )
        has_prefix = c["prefix_id"] is not None

        def convert(df: pd.DataFrame, lines: np.ndarray, sink: _BadLines) -> dict[str, np.ndarray]:
            checks = _Checks(len(df))
            t = _float_column(df, c["arrival_s"], checks, what="seconds >= 0", minimum=0.0)
            inp = _int_column(df, c["input_tokens"], checks, minimum=1, what="a positive integer")
            out = _int_column(df, c["output_tokens"], checks, minimum=1, what="a positive integer")
            cols = {"t": t, "inp": inp, "out": out}
            if has_prefix:
                pid_s = df[c["prefix_id"]]
                pid = _numeric(pid_s)
                ptok = _numeric(df[c["prefix_tokens"]])
                # empty means "no prefix"; anything else must be a valid id
                no_prefix = pid_s.isna().to_numpy()
                import pandas as pd

                if not pd.api.types.is_numeric_dtype(pid_s.dtype):
                    no_prefix = no_prefix | (pid_s.astype(str).str.strip() == "").to_numpy()
                with np.errstate(invalid="ignore"):
                    bad_id = ~no_prefix & (
                        ~np.isfinite(pid) | (pid != np.floor(pid)) | (pid < 0) | (pid >= 2.0**_PREFIX_ID_BITS)
                    )
                checks.flag(
                    bad_id,
                    f"expected an integer in [0, 2**39) or nothing in column {c['prefix_id']!r}",
                    pid_s,
                )
                with np.errstate(invalid="ignore"):
                    bad_tok = ~no_prefix & (~np.isfinite(ptok) | (ptok != np.floor(ptok)) | (ptok < 0))
                checks.flag(
                    bad_tok,
                    f"expected an integer >= 0 in column {c['prefix_tokens']!r} (a prefix_id is given)",
                    df[c["prefix_tokens"]],
                )
                with np.errstate(invalid="ignore"):
                    too_long = ~no_prefix & ~bad_tok & (ptok > inp)
                checks.flag(too_long, "expected prefix_tokens <= input_tokens", df[c["prefix_tokens"]])
                ok = ~no_prefix & ~bad_id & ~bad_tok
                cols["pid"] = np.where(ok, pid, -1).astype(np.int64)
                cols["ptok"] = np.where(ok, ptok, 0).astype(np.int64)
            good = checks.report(lines, sink)
            return {k: v[good] for k, v in cols.items()}

        fast = _native_plain(path, header) if not parquet and _plain_first(path) else None
        if fast is not None:
            cols, rows = fast
        elif parquet:
            cols, rows = self._collect_parquet(pf, c, sink, convert)
        else:
            cols, rows = _collect_csv(path, header, sink, convert)
        out = TraceColumns(
            t_s=cols.get("t", np.empty(0)),
            input_tokens=cols.get("inp", np.empty(0, np.int64)),
            output_tokens=cols.get("out", np.empty(0, np.int64)),
            prefix_block_tokens=NATIVE_BLOCK_TOKENS,
            meta={"rows": rows, "bad_lines": sink.as_meta()},
        )
        if has_prefix:
            out.prefix_hashes, out.prefix_offsets = native_prefix_hashes(
                cols.get("pid", np.empty(0, np.int64)), cols.get("ptok", np.empty(0, np.int64))
            )
        return out

    @staticmethod
    def _collect_parquet(pf, c, sink, convert) -> tuple[dict[str, np.ndarray], int]:
        names = [v for v in c.values() if v is not None]
        parts: dict[str, list[np.ndarray]] = {}
        rows = 0
        for batch in pf.iter_batches(batch_size=CHUNK_ROWS, columns=names):
            df = batch.to_pandas()
            lines = np.arange(rows + 1, rows + 1 + len(df), dtype=np.int64)
            rows += len(df)
            for k, v in convert(df, lines, sink).items():
                parts.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in parts.items()}, rows


def _is_parquet(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


# --------------------------------------------------------------------------------------------
# the option pipeline


def _apply_options(cols: TraceColumns, opts: ReadOptions, path: Path, fmt: str) -> Requests:
    n = len(cols.t_s)
    meta: dict[str, Any] = {"source": str(path), "format": fmt}
    meta.update(cols.meta)
    if n == 0:
        bad = meta.get("bad_lines", {}).get("count", 0)
        why = f" ({bad} bad lines skipped)" if bad else ""
        raise TraceError(f"no requests in the trace{why}", where=str(path))

    t = cols.t_s
    order = np.arange(n, dtype=np.int64)
    diffs = np.diff(t)
    meta["unsorted_rows"] = int((diffs < 0).sum())
    meta["duplicate_timestamps"] = int((diffs == 0).sum())
    if meta["unsorted_rows"]:
        order = np.argsort(t, kind="stable")
    rel = t - t[order[0]]  # seconds since the trace's first row (in time order)
    meta["trace_span_s"] = float(rel[order[-1]])

    idx = order
    if cols.failed is not None:
        nfailed = int(cols.failed.sum())
        if opts.keep_failed:
            meta["failed_kept"] = nfailed
        else:
            meta["failed_dropped"] = nfailed
            idx = idx[~cols.failed[idx]]
            if not len(idx):
                raise TraceError(
                    f"all {nfailed} requests failed (0 output tokens); pass keep_failed=True to keep them",
                    where=str(path),
                )

    if opts.model_filter is not None:
        if cols.model is None:
            raise TraceError(
                f"model_filter={opts.model_filter!r} needs a model column; the {fmt} format has none",
                where=str(path),
                key="model_filter",
            )
        wanted = opts.model_filter.strip()
        code = cols.model_names.index(wanted) if wanted in cols.model_names else -1
        match = cols.model[idx] == code
        if not match.any():
            models = sorted(cols.model_names)
            raise TraceError(
                f"model_filter={opts.model_filter!r} matched no rows; models in the trace: {', '.join(models)}",
                where=str(path),
                key="model_filter",
            )
        meta["model_filter"] = opts.model_filter
        meta["model_dropped"] = int((~match).sum())
        idx = idx[match]

    if opts.window is not None:
        start, end = opts.window
        r = rel[idx]
        keep = r >= start
        if end is not None:
            keep &= r < end
        if not keep.any():
            raise TraceError(
                f"window {list(opts.window)} holds no requests (the trace spans 0 to {meta['trace_span_s']:.3f} s)",
                where=str(path),
                key="window",
            )
        meta["window"] = [start, end]
        meta["window_dropped"] = int((~keep).sum())
        idx = idx[keep]

    meta["rate_scale"] = opts.rate_scale

    if opts.sample is not None:
        k = opts.sample if isinstance(opts.sample, int) else max(1, round(opts.sample * len(idx)))
        if k < len(idx):
            rng = np.random.Generator(np.random.PCG64(opts.seed))
            pick = np.sort(rng.choice(len(idx), size=k, replace=False))
            idx = idx[pick]
        meta["sample"] = opts.sample
        meta["seed"] = opts.seed

    if opts.limit is not None:
        idx = idx[: opts.limit]
        meta["limit"] = opts.limit

    start_rel = float(rel[idx[0]])
    arrival = (rel[idx] - start_rel) / opts.rate_scale
    meta["start_offset_s"] = start_rel
    meta["requests"] = len(idx)
    ph = po = None
    if cols.prefix_hashes is not None:
        full = Requests(
            t,
            cols.input_tokens,
            cols.output_tokens,
            cols.prefix_hashes,
            cols.prefix_offsets,
            cols.prefix_block_tokens,
        )
        sub = full.take(idx)
        ph, po = sub.prefix_hashes, sub.prefix_offsets
    return Requests(
        arrival_s=np.ascontiguousarray(arrival, dtype=np.float64),
        input_tokens=cols.input_tokens[idx].astype(np.int64, copy=False),
        output_tokens=cols.output_tokens[idx].astype(np.int64, copy=False),
        prefix_hashes=ph,
        prefix_offsets=po,
        prefix_block_tokens=cols.prefix_block_tokens,
        meta=meta,
    )


# --------------------------------------------------------------------------------------------
# public entry points


_HEAD_BYTES = 65_536


def detect_format(path: str | Path) -> str:
    """The name of the first registered format whose ``sniff`` accepts the file's first bytes."""
    path = Path(path)
    _check_file(path)
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    for name, cls in TRACE_FORMATS.items():
        if cls.sniff(text):
            return name
    first = text.split("\n", 1)[0][:120]
    raise TraceError(
        f"could not tell the trace format from the first line {first!r}; "
        f"pass format= one of {', '.join(TRACE_FORMATS)}",
        where=str(path),
        key="line 1",
    )


def _line_ends(b: np.ndarray) -> np.ndarray:
    """Offsets of the bytes that end a line: ``\\n``, and a ``\\r`` not followed by ``\\n`` (a bare
    CR ends a line for pandas, the csv module and Python's text files alike, so every line
    number simkit reports counts it too). ``b`` must not end in a ``\\r`` whose next byte is unread."""
    cr = np.flatnonzero(b == ord("\r"))
    if len(cr):
        nxt = cr + 1
        bare = cr[(nxt >= len(b)) | (b[np.minimum(nxt, len(b) - 1)] != ord("\n"))]
        if len(bare):
            return np.union1d(np.flatnonzero(b == ord("\n")), bare)
    return np.flatnonzero(b == ord("\n"))


def _blocks(path: Path, size: int = 1 << 24) -> Iterator[bytes]:
    """The file's bytes in blocks that never end between a ``\\r`` and its ``\\n``."""
    with open(path, "rb") as f:
        while block := f.read(size):
            if block.endswith(b"\r"):
                block += f.read(1)
            yield block


def _check_utf8(path: Path, block_size: int = 1 << 24) -> None:
    """Refuse a file that is not UTF-8 text, naming the line and column of the first bad byte
    (columns count bytes from the line's start, across block boundaries)."""
    import codecs

    dec = codecs.getincrementaldecoder("utf-8")()
    lines_before = 0  # line ends in the blocks before this one
    col_before = 0  # bytes of the current line that lie in the blocks before this one
    for block in _blocks(path, block_size):
        try:
            dec.decode(block)
        except UnicodeDecodeError as e:
            # e.start indexes into the decoder's buffer: earlier undecoded bytes (the start of a
            # multi-byte character cut by the block boundary, no line end among them) plus this block
            start = e.start - (len(e.object) - len(block))
            ends = _line_ends(np.frombuffer(block[: max(start, 0)], dtype=np.uint8))
            col = start - (int(ends[-1]) + 1) + 1 if len(ends) else col_before + start + 1
            raise TraceError(
                f"not UTF-8 text (byte {e.object[e.start]:#04x} at column {col}); save the trace as UTF-8",
                where=str(path),
                key=f"line {lines_before + len(ends) + 1}",
            ) from None
        ends = _line_ends(np.frombuffer(block, dtype=np.uint8))
        lines_before += len(ends)
        col_before = len(block) - (int(ends[-1]) + 1) if len(ends) else col_before + len(block)
    try:
        dec.decode(b"", final=True)
    except UnicodeDecodeError:
        raise TraceError(
            "not UTF-8 text (the file ends inside a multi-byte character)", where=str(path), key=f"line {lines_before + 1}"
        ) from None


def _check_file(path: Path) -> None:
    try:
        if not path.exists():
            raise TraceError("trace file not found", where=str(path))
        if not path.is_file():
            raise TraceError("trace path is not a file", where=str(path))
    except OSError as e:
        raise TraceError(f"cannot read the trace file ({e.strerror or e})", where=str(path)) from None


def _as_int(value: Any) -> Any:
    """numpy and other integral numbers as ``int``; bools and everything else unchanged."""
    if isinstance(value, Integral) and not isinstance(value, bool | np.bool_):
        return int(value)
    return value


def _options(
    path: Path,
    *,
    limit: Any,
    sample: Any,
    seed: Any,
    window: Any,
    rate_scale: Any,
    model_filter: Any,
    on_bad_line: Any,
    keep_failed: Any,
) -> ReadOptions:
    def err(key: str, msg: str) -> TraceError:
        return TraceError(msg, where=str(path), key=key)

    if on_bad_line not in ("fail", "skip"):
        raise err("on_bad_line", f"expected 'fail' or 'skip', got {on_bad_line!r}")
    limit = _as_int(limit)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise err("limit", f"expected a positive integer, got {limit!r}")
    if sample is not None:
        sample = _as_int(sample)
        if isinstance(sample, Real) and not isinstance(sample, int | bool):
            sample = float(sample)
        if isinstance(sample, bool) or not isinstance(sample, int | float):
            raise err("sample", f"expected a count (int >= 1) or a fraction in (0, 1], got {sample!r}")
        if isinstance(sample, int) and sample < 1:
            raise err("sample", f"expected a count >= 1, got {sample!r}")
        if isinstance(sample, float) and not 0.0 < sample <= 1.0:
            raise err("sample", f"expected a fraction in (0, 1], got {sample!r}")
    seed = _as_int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise err("seed", f"expected an integer >= 0, got {seed!r}")
    win = None
    if window is not None:
        try:
            start, end = window
            start = float(start)
            end = None if end is None else float(end)
        except (TypeError, ValueError):
            raise err("window", f"expected (start_s, end_s), got {window!r}") from None
        if not math.isfinite(start) or (end is not None and not end > start):
            raise err("window", f"expected finite start_s < end_s, got {window!r}")
        win = (start, end)
    try:
        rs = float(rate_scale)
    except (TypeError, ValueError):
        rs = float("nan")
    if not (math.isfinite(rs) and rs > 0):
        raise err("rate_scale", f"expected a positive number, got {rate_scale!r}")
    if model_filter is not None and not isinstance(model_filter, str):
        raise err("model_filter", f"expected a model name, got {model_filter!r}")
    return ReadOptions(
        limit=limit,
        sample=sample,
        seed=seed,
        window=win,
        rate_scale=rs,
        model_filter=model_filter,
        on_bad_line=on_bad_line,
        keep_failed=bool(keep_failed),
    )


def read_trace(
    path: str | Path,
    format: str = "auto",
    *,
    limit: int | None = None,
    sample: int | float | None = None,
    seed: int = 0,
    window: tuple[float, float | None] | None = None,
    rate_scale: float = 1.0,
    model_filter: str | None = None,
    on_bad_line: str = "fail",
    keep_failed: bool = False,
) -> Requests:
    """Read a trace file into a :class:`Requests`.

    ``format``: ``"auto"`` (sniff the first line) or a key of :data:`TRACE_FORMATS`.
    Options are applied in this order: drop failed (BurstGPT zero-response rows, unless
    ``keep_failed``) -> ``model_filter`` (exact Model name) -> ``window`` ((start_s, end_s) in
    seconds since the trace's first row, half-open; end may be None) -> ``rate_scale`` (arrivals
    divided by it: 2.0 replays twice as fast) -> ``sample`` (an int count or a float fraction,
    seeded with ``seed``, without replacement, time order kept) -> ``limit`` (first N).
    The result's first request arrives at 0.0; ``meta`` records the source, format, counts of
    rows read / bad / dropped / clamped and ``start_offset_s`` (where the result starts in the
    trace, in unscaled seconds).
    """
    p = Path(path)
    _check_file(p)
    opts = _options(
        p,
        limit=limit,
        sample=sample,
        seed=seed,
        window=window,
        rate_scale=rate_scale,
        model_filter=model_filter,
        on_bad_line=on_bad_line,
        keep_failed=keep_failed,
    )
    if not _is_parquet(p):
        _check_utf8(p)
    fmt = format.lower() if isinstance(format, str) else format
    if fmt == "auto":
        fmt = detect_format(p)
    elif fmt not in TRACE_FORMATS:
        raise TraceError(
            f"unknown trace format {format!r}; expected auto or one of {', '.join(TRACE_FORMATS)}",
            where=str(p),
            key="format",
        )
    return TRACE_FORMATS[fmt]().read(p, opts)
