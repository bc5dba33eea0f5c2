"""A run's :class:`Result` and its run folder: summary.json (deterministic), the request,
iteration and link tables (Parquet), the resolved scenario and provenance.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simkit.engine.engine import IterationLog
from simkit.engine.state import RequestTable
from simkit.scenario import Scenario


@dataclass
class Result:
    """What one simulation produced. ``summary`` is summary.json; the tables are columnar."""

    scenario: Scenario
    summary: dict[str, Any]
    table: RequestTable
    iterations: list[tuple[Any, ...]]
    memory: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    trace_events: list[dict[str, Any]] | None = None
    sim_wall_s: float = 0.0
    """Wall-clock seconds of ``simulate()`` (in provenance.json, not summary.json: not deterministic)."""
    calibration: dict[str, Any] = field(default_factory=dict)
    """The calibration used: setting, description, profile name/path and its measured fidelity."""
    link_busy: list[tuple[int, str, float, float]] = field(default_factory=list)
    """(replica, link, start_s, end_s) of every busy period of every link direction (links.parquet)."""

    def links_frame(self):  # type: ignore[no-untyped-def]
        import pandas as pd

        return pd.DataFrame(link_columns(self.link_busy))

    def requests_frame(self):  # type: ignore[no-untyped-def]
        from simkit.metrics import requests_frame

        return requests_frame(self.table)

    def iterations_frame(self):  # type: ignore[no-untyped-def]
        import pandas as pd

        return pd.DataFrame(iteration_columns(self.iterations))


_PATH_KEYS = (("workload", "trace", "path"), ("workload", "synthetic", "lengths", "trace", "path"))


def _unit_suffix(ann: Any) -> str | None:
    """" B" or " s" for a size or duration field type (they must be written with a unit)."""
    from typing import Annotated, Union, get_args, get_origin

    from simkit.specs.base import Bytes, Seconds

    origin = get_origin(ann)
    if origin is Annotated:
        meta = get_args(ann)[1:]
        if any(m is Bytes.__metadata__[0] for m in meta):
            return " B"
        if any(m is Seconds.__metadata__[0] for m in meta):
            return " s"
        return None
    if origin is Union or type(ann).__name__ == "UnionType":
        for a in get_args(ann):
            u = _unit_suffix(a)
            if u:
                return u
    return None


def _plain(value: Any, ann: Any) -> Any:
    """A validated scenario object as plain YAML data that validates back to the same object:
    None fields left out, sizes and durations written with their unit (repr keeps every digit)."""
    from typing import Annotated, get_args, get_origin

    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        out = {}
        for name, f in type(value).model_fields.items():
            v = getattr(value, name)
            if v is None:
                continue
            fa = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
            out[name] = _plain(v, fa)
        return out
    if isinstance(value, dict):
        inner = get_args(ann)[1] if get_origin(ann) is dict else None
        if get_origin(ann) is Annotated:
            base = get_args(ann)[0]
            inner = get_args(base)[1] if get_origin(base) is dict else None
        return {k: _plain(v, inner) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, None) for v in value]
    unit = _unit_suffix(ann) if ann is not None else None
    if unit and isinstance(value, int | float) and not isinstance(value, bool):
        return f"{float(value)!r}{unit}"
    return value


def resolved_scenario_data(sc: Scenario, out_dir: str | Path) -> dict[str, Any]:
    """The scenario with every default filled in (overrides already applied), as plain data a
    file in ``out_dir`` can hold: trace and calibration paths are rewritten relative to
    ``out_dir`` (they resolve against the scenario file's folder), a model file path becomes
    absolute (model paths resolve against the working directory)."""
    import os

    data = _plain(sc, type(sc))
    data["hardware"] = sc.raw_data().get("hardware", data["hardware"])
    base = Path(out_dir).resolve()

    def rel(p: str) -> str:
        return os.path.relpath(sc.resolve_path(p).resolve(), base)

    for keys in _PATH_KEYS:
        node: Any = data
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and keys[-1] in node:
            node[keys[-1]] = rel(node[keys[-1]])
    if data.get("calibration") not in ("auto", "none"):
        data["calibration"] = rel(data["calibration"])
    m = data["model"]
    if m.endswith((".json", ".yaml", ".yml")) or Path(m).is_dir():
        data["model"] = str(Path(m).resolve())
    return data


def write_outputs(
    result: Result, out_dir: str | Path, trace_out: str | Path | None = None, command: str | None = None
) -> list[Path]:
    """A run folder: summary.json (deterministic), requests.parquet, iterations.parquet,
    scenario.yaml (the resolved scenario; ``simkit run DIR/scenario.yaml`` reproduces
    summary.json), provenance.json (version, time, command, calibration, wall time), and a
    Chrome trace when asked. ``command`` is the command line that made the run, if any."""
    import datetime
    import json
    import shlex

    from simkit import __version__
    from simkit.specs.yamlio import dump_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    p = out / "summary.json"
    p.write_text(json.dumps(jsonable(result.summary), indent=2, sort_keys=True) + "\n")
    paths.append(p)
    from simkit.metrics import requests_columns

    p = out / "requests.parquet"
    _write_parquet(requests_columns(result.table), p)
    paths.append(p)
    p = out / "iterations.parquet"
    _write_parquet(iteration_columns(result.iterations), p)
    paths.append(p)
    p = out / "links.parquet"
    _write_parquet(link_columns(result.link_busy), p)
    paths.append(p)
    p = out / "scenario.yaml"
    src = result.scenario.source or "(built in Python)"
    header = (f"# resolved scenario written by simkit {__version__} from {src}, every default filled in;\n"
              f"# reproduce: simkit run {shlex.quote(str(p))}\n")
    p.write_text(header + dump_text(resolved_scenario_data(result.scenario, out)))
    paths.append(p)
    prov = {
        "simkit_version": __version__,
        "created_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "reproduce": f"simkit run {shlex.quote(str(p))} --out {shlex.quote(str(out))}",
        "scenario_source": result.scenario.source,
        "calibration": result.calibration,
        "sim_wall_s": result.sim_wall_s,
        "warnings": list(result.warnings),
    }
    p = out / "provenance.json"
    p.write_text(json.dumps(jsonable(prov), indent=2) + "\n")
    paths.append(p)
    if trace_out is not None and result.trace_events is not None:
        tp = Path(trace_out)
        tp.parent.mkdir(parents=True, exist_ok=True)
        tp.write_text(json.dumps({"traceEvents": result.trace_events, "displayTimeUnit": "ms"}))
        paths.append(tp)
    return paths


def iteration_columns(rows: list[tuple[Any, ...]]) -> dict[str, np.ndarray]:
    """The per-iteration table's columns (iterations.parquet), typed like the table pandas
    infers from the rows (int64 counts, float64 times)."""
    packed = _packed_columns(rows)
    if packed is not None:
        return packed
    from operator import itemgetter

    # one pass over the rows per column, in C (map + itemgetter): no per-row Python frame and
    # no transposed copy of the rows (which costs more than it saves on a million rows)
    return {name: np.fromiter(map(itemgetter(k), rows), dtype=np.float64 if name.endswith("_s") else np.int64, count=len(rows))
            for k, name in enumerate(IterationLog.COLS)}


_PACK_ROWS = 8192
"""Rows packed per ``bytes.join`` in :func:`_packed_columns` (512 KiB of records): the join
holds every packed row as a bytes object until it is done, so a million rows are packed in
blocks, not at once."""


def _packed_columns(rows: list[tuple[Any, ...]]) -> dict[str, np.ndarray] | None:
    """:func:`iteration_columns` with each row packed by one C call (``struct``: int64 counts,
    float64 times, native order) and the packed records split into the columns block by block:
    ~25% less work than a pass per column through numpy's per-value conversion, and the same
    values (a Python int or float, or a numpy scalar, becomes the same int64 or float64 either
    way). None where a row does not pack as such values (a float count, an out-of-range
    integer, a row of another length): the per-column conversion then gives its own result, or
    its own error, as before."""
    import struct
    from itertools import starmap

    cols = IterationLog.COLS
    n = len(rows)
    if not n:
        return None
    fmt = struct.Struct("=" + "".join("d" if name.endswith("_s") else "q" for name in cols))
    record = np.dtype([(name, np.float64 if name.endswith("_s") else np.int64) for name in cols])
    out = {name: np.empty(n, dtype=record[name]) for name in cols}
    for lo in range(0, n, _PACK_ROWS):
        try:
            block = b"".join(starmap(fmt.pack, rows[lo:lo + _PACK_ROWS]))
        except (struct.error, TypeError, OverflowError):
            return None
        packed = np.frombuffer(block, dtype=record)
        for name in cols:
            out[name][lo:lo + len(packed)] = packed[name]
    return out


def link_columns(rows: list[tuple[int, str, float, float]]) -> dict[str, np.ndarray]:
    """links.parquet's columns: replica, link, start_s, end_s of every busy period."""
    return {
        "replica": np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
        "link": np.array([r[1] for r in rows], dtype=object),
        "start_s": np.fromiter((r[2] for r in rows), dtype=np.float64, count=len(rows)),
        "end_s": np.fromiter((r[3] for r in rows), dtype=np.float64, count=len(rows)),
    }


def _write_parquet(columns: dict[str, np.ndarray], path: Path) -> None:
    """A table of numpy columns as Parquet, with pyarrow alone: arrays are built from their
    buffers (pyarrow's converters import pandas to look for frames). NaN floats are written as
    nulls, as pandas' writer does. Float columns are written without dictionary encoding: their
    values (times) rarely repeat, so pyarrow's attempt at a dictionary only costs time (the 16k
    case's tables: about half the writing time, and 12-15% smaller files); counts, flags and
    names keep it. Written as ``pyarrow.parquet.write_table`` writes it (:func:`_write_table`)."""
    import pyarrow as pa

    arrays = []
    for v in columns.values():
        v = np.ascontiguousarray(v)
        valid = None
        nulls = 0
        if v.dtype.kind in "OU":
            # strings (large_string, as pandas writes them): offsets into their UTF-8 bytes
            # (str and encode mapped in C: no Python frame per value)
            enc = list(map(str.encode, map(str, v.tolist())))
            offsets = np.zeros(len(enc) + 1, dtype=np.int64)
            np.cumsum(np.fromiter(map(len, enc), dtype=np.int64, count=len(enc)), out=offsets[1:])
            buffers = [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(enc))]
            arrays.append(pa.Array.from_buffers(pa.large_string(), len(v), buffers))
            continue
        if v.dtype == np.bool_:
            typ, data = pa.bool_(), np.packbits(v, bitorder="little")
        else:
            typ, data = pa.from_numpy_dtype(v.dtype), v
            if v.dtype.kind == "f":
                nan = np.isnan(v)
                nulls = int(nan.sum())
                if nulls:
                    valid = pa.py_buffer(np.packbits(~nan, bitorder="little"))
        arrays.append(pa.Array.from_buffers(typ, len(v), [valid, pa.py_buffer(data)], null_count=nulls))
    dictionary = [name for name, v in columns.items() if np.asarray(v).dtype.kind != "f"]
    _write_table(pa.Table.from_arrays(arrays, names=list(columns)), path, dictionary)


_WRITE_TABLE_OPTIONS: dict[str, Any] = {
    "version": "2.6", "compression": "snappy", "write_statistics": True, "writer_engine_version": "V2",
    "data_page_version": "1.0",
}
"""The options ``pyarrow.parquet.write_table`` gives the writer class where they differ from
the class's own defaults (read from pyarrow 26's ``pyarrow/parquet/core.py``, ``write_table``
and ``ParquetWriter``): the file :func:`_write_table` writes is ``write_table``'s, byte for
byte (tests/test_startup.py compares the bytes with the installed pyarrow's)."""


def _write_table(table: Any, path: Path, dictionary: list[str]) -> None:
    """``pyarrow.parquet.write_table(table, path, use_dictionary=dictionary)``, the same bytes,
    through the writer it wraps (``pyarrow._parquet.ParquetWriter``) with the same options, so
    that a run does not import ``pyarrow.parquet``: its ``pyarrow.fs`` (with ``ssl`` and the
    cloud file systems) is ~0.034 G instructions of `simkit run`'s process (1.3% of the 16k
    case), for a local path that needs none of it. Where this pyarrow's writer does not take
    these arguments (a private class: another version), the public function writes the file. As
    ``write_table`` does, a file left by a failed write is removed."""
    try:
        from pyarrow._parquet import ParquetWriter

        writer = ParquetWriter(str(path), table.schema, use_dictionary=dictionary, **_WRITE_TABLE_OPTIONS)
    except (ImportError, TypeError):
        import pyarrow.parquet as pq

        pq.write_table(table, path, use_dictionary=dictionary)
        return
    try:
        writer.write_table(table, row_group_size=None)
        writer.close()
    except BaseException:
        import contextlib

        with contextlib.suppress(Exception):  # the write's own error is the one to report
            writer.close()
        Path(path).unlink(missing_ok=True)
        raise


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, float | np.floating):
        v = float(x)
        return None if not np.isfinite(v) else v
    if isinstance(x, np.integer):
        return int(x)
    return x

