"""Start-up of a `simkit run` process (issue 16, part D): the shortcuts taken before and after
the simulation give exactly what the general paths give."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.errors import TraceError
from simkit.workload import traces as T

ROOT = Path(__file__).resolve().parents[1]
BURST_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"


def _parse(path: Path, plain: bool, monkeypatch: pytest.MonkeyPatch, reader: type = T.BurstGPTReader,
           plain_reader: str = "_burstgpt_plain") -> Any:
    """``reader``'s parsed columns as plain data (or the error it raised), through the plain
    reader (module function ``plain_reader``) when it takes the file, else (``plain=False``)
    through the pandas path."""
    with monkeypatch.context() as m:
        m.setattr(T, "_plain_first", lambda path: True)  # pandas is imported in this process
        if not plain:
            m.setattr(T, plain_reader, lambda path, header: None)
        try:
            cols = reader().parse(path, T.ReadOptions(on_bad_line="skip"))
        except TraceError as e:
            return str(e)
    return {k: (v.dtype.str, v.tolist()) if isinstance(v, np.ndarray) else v for k, v in vars(cols).items()}


def _parse_native(path: Path, plain: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    """NativeReader.parse's columns as plain data (or its error), as :func:`_parse`."""
    return _parse(path, plain, monkeypatch, T.NativeReader, "_native_plain")


def test_plain_burstgpt_sample_read_without_pandas_equals_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    path = ROOT / "workloads" / "traces" / "burstgpt_sample.csv"
    assert T._burstgpt_plain(path, T._read_header(path)) is not None
    assert _parse(path, True, monkeypatch) == _parse(path, False, monkeypatch)


_PLAIN_NAMES = st.sampled_from(["ChatGPT", "GPT-4", "llama_3.1-8b", "Claude"])
_ODD_NAMES = st.sampled_from(["NA", "None", "true", "TRUE", "inf", "Infinity", " GPT-4", "GPT-4 ", "gpt 4", "4o", "é", "",
                              '"GPT-4"'])
_PLAIN_ROW = st.tuples(
    st.integers(0, 10**6).map(str), _PLAIN_NAMES, st.integers(1, 10**5).map(str), st.integers(0, 10**5).map(str),
    st.sampled_from(["", "12", "n/a"]), st.sampled_from(["Conversation log", "API log", ""]),
)
_ODD_ROW = st.tuples(
    st.sampled_from(["1.5", "-3", "007", "", "x", "1e3"]),
    _ODD_NAMES,
    st.sampled_from(["0", "007", "2.0", "99999999999", "", "-1"]),
    st.sampled_from(["00", "1.5", "", "x"]),
    st.sampled_from(["", "12", "n/a"]),
    st.sampled_from(["Conversation log", "API log", "", "a,b"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_PLAIN_ROW, min_size=0, max_size=12), odd=st.lists(st.tuples(st.integers(0, 12), _ODD_ROW, st.integers(0, 5)), max_size=2),
       crlf=st.booleans(), last_newline=st.booleans())
def test_plain_burstgpt_reader_equals_pandas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: list[tuple[str, ...]],
                                             odd: list[tuple[int, tuple[str, ...], int]], crlf: bool, last_newline: bool) -> None:
    """Any file the plain reader takes gives the pandas path's columns, row count and model names
    (in order of first appearance); a file with an odd field is left to the pandas path, which
    reads it as before."""
    rows = list(rows)
    for at, row, field in odd:  # one odd field in an otherwise plain row
        base = list(rows[at % len(rows)]) if rows else ["1", "GPT-4", "2", "3", "5", "API log"]
        base[field] = row[field]
        rows.insert(at % (len(rows) + 1), tuple(base))
    end = "\r\n" if crlf else "\n"
    text = BURST_HEADER.replace("\n", end) + end.join(",".join(r) for r in rows) + (end if last_newline and rows else "")
    path = tmp_path / "t.csv"
    path.write_bytes(text.encode())
    if not odd:
        assert T._burstgpt_plain(path, T._read_header(path)) is not None
    assert _parse(path, True, monkeypatch) == _parse(path, False, monkeypatch)


def test_plain_burstgpt_reader_takes_plain_files_only(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    for body, plain in (("1,GPT-4,3,0,3,API log\n2,ChatGPT,5,7,,\n", True), ("1,GPT-4,0,5,5,API log\n", False),
                        ("1.5,GPT-4,2,5,7,API log\n", False), ("1,NA,2,5,7,API log\n", False),
                        ("1,GPT-4,2,5,7,API log\n\n", False), ('1,"GPT-4",2,5,7,API log\n', False)):
        path.write_text(BURST_HEADER + body)
        assert (T._burstgpt_plain(path, T._read_header(path)) is not None) == plain, body


def test_section_field_descriptions_are_pydantics_attribute_docstrings() -> None:
    """Every scenario section's field descriptions are what pydantic's own attribute-docstring
    reader finds (simkit reads them from one parse of each module)."""
    from pydantic._internal._docs_extraction import extract_docstrings_from_cls

    import simkit.scenario  # noqa: F401 - defines the sections
    import simkit.study.spec  # noqa: F401
    from simkit.specs.base import Section

    def subclasses(c: type) -> list[type]:
        return [s for d in c.__subclasses__() for s in (d, *subclasses(d))]

    seen = 0
    for cls in subclasses(Section):
        docs = extract_docstrings_from_cls(cls, use_inspect=True)
        for name, f in cls.model_fields.items():
            if name in docs and name in cls.__annotations__:
                assert f.description == docs[name], f"{cls.__qualname__}.{name}"
                seen += 1
    assert seen > 100


def test_iteration_columns_are_typed_columns_of_the_rows() -> None:
    from simkit.engine.engine import IterationLog
    from simkit.outputs import iteration_columns

    rows = [(0, 0.5, 0.75, 1, 12, 3, 4, 9), (1, 0.75, 1.0, 20, 0, 4, 4, 11)]
    cols = iteration_columns(rows)
    assert list(cols) == list(IterationLog.COLS)
    for k, name in enumerate(IterationLog.COLS):
        kind = np.float64 if name.endswith("_s") else np.int64
        assert cols[name].dtype == kind and cols[name].tolist() == [r[k] for r in rows]
    empty = iteration_columns([])
    assert all(len(v) == 0 and v.dtype == cols[k].dtype for k, v in empty.items())


def test_plain_native_shipped_trace_read_without_pandas_equals_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    path = ROOT / "workloads" / "traces" / "shared_prefix_1rps.csv"
    assert T._native_plain(path, T._read_header(path)) is not None
    assert _parse_native(path, True, monkeypatch) == _parse_native(path, False, monkeypatch)


_SECONDS = st.one_of(st.integers(0, 10**9).map(str),
                     st.tuples(st.integers(0, 10**6), st.text("0123456789", min_size=1, max_size=8)).map(lambda t: f"{t[0]}.{t[1]}"),
                     st.floats(0, 1e5).map(lambda x: f"{x:.6f}"))
_PLAIN_NATIVE = st.tuples(_SECONDS, st.integers(1, 10**5).map(str), st.integers(1, 10**5).map(str),
                          st.one_of(st.just(""), st.integers(0, 2**39 - 1).map(str)), st.integers(0, 10**5).map(str))
_ODD_NATIVE = st.tuples(
    st.sampled_from(["-1", "1e3", "", ".5", "5.", "1234567890123456", "0.12345678901234567", "nan", "1,5"]),
    st.sampled_from(["0", "2.0", "99999999999", "", "x"]),
    st.sampled_from(["0", "007", "1.5", ""]),
    st.sampled_from(["3.0", str(2**39), "-1", "x"]),
    st.sampled_from(["", "99999999", "1.5", "x"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_PLAIN_NATIVE, min_size=0, max_size=12), odd=st.lists(st.tuples(st.integers(0, 12), _ODD_NATIVE, st.integers(0, 4)), max_size=2),
       with_prefix=st.booleans(), crlf=st.booleans())
def test_plain_native_reader_equals_pandas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: list[tuple[str, ...]],
                                           odd: list[tuple[int, tuple[str, ...], int]], with_prefix: bool, crlf: bool) -> None:
    """Native CSV traces: the plain reader's columns (arrival seconds bit for bit) equal the pandas
    path's; a file with an odd or invalid field is left to the pandas path."""
    width = 5 if with_prefix else 3
    fixed = []
    for r in rows:  # prefix tokens within the prompt, so that the plain rows are valid
        r = list(r)
        r[4] = str(min(int(r[4]), int(r[1])))
        fixed.append(tuple(r[:width]))
    for at, row, field in odd:
        base = list(fixed[at % len(fixed)]) if fixed else ["1.5", "10", "3", "7", "5"][:width]
        base[field % width] = row[field % width]
        fixed.insert(at % (len(fixed) + 1), tuple(base))
    header = "arrival_s,input_tokens,output_tokens" + (",prefix_id,prefix_tokens" if with_prefix else "")
    end = "\r\n" if crlf else "\n"
    path = tmp_path / "t.csv"
    path.write_bytes((header + end + "".join(",".join(r) + end for r in fixed)).encode())
    if not odd and all(len(r[0].replace(".", "")) <= 15 for r in fixed):
        assert T._native_plain(path, T._read_header(path)) is not None
    assert _parse_native(path, True, monkeypatch) == _parse_native(path, False, monkeypatch)


def test_plain_readers_are_tried_on_small_files_before_pandas_is_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past PLAIN_MAX_BYTES, or once pandas is imported, pandas' C parser reads faster."""
    import sys

    path = tmp_path / "t.csv"
    path.write_text(BURST_HEADER + "1,GPT-4,3,0,3,API log\n")
    assert "pandas" in sys.modules and not T._plain_first(path)
    monkeypatch.delitem(sys.modules, "pandas")
    assert T._plain_first(path)
    monkeypatch.setattr(T, "PLAIN_MAX_BYTES", path.stat().st_size - 1)
    assert not T._plain_first(path)
    assert not T._plain_first(tmp_path / "missing.csv")


@settings(max_examples=400, deadline=None)
@given(
    values=st.lists(st.one_of(st.floats(0, 1e4, allow_nan=False, allow_infinity=False), st.sampled_from([0.0, 1e-3, 0.5, 7.25])),
                    min_size=1, max_size=60),
    p=st.one_of(st.sampled_from([0, 50, 90, 99, 100, 99.9]), st.floats(0, 100, allow_nan=False)),
)
def test_percentile_of_sorted_values_is_numpys_bit_for_bit(values: list[float], p: float) -> None:
    from simkit.metrics import percentile_sorted

    x = np.array(values)
    got = percentile_sorted(np.sort(x), p)
    assert np.float64(got).tobytes() == np.float64(np.percentile(x, p)).tobytes()


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.one_of(st.floats(0, 1e4, allow_nan=False, allow_infinity=False),
                              st.sampled_from([0.0, 0.5, float("nan"), float("inf"), -float("inf")])), max_size=60),
)
def test_summary_percentiles_from_one_sorted_copy_are_numpys(values: list[float]) -> None:
    """The summary's p50/p90/p99 of a metric's finite values, from one sorted copy: numpy's,
    bit for bit (NaN when no value is finite)."""
    from simkit.metrics import _pcts

    x = np.array(values, dtype=np.float64)
    got = _pcts(x, (50, 90, 99))
    fin = x[np.isfinite(x)]
    for g, p in zip(got, (50, 90, 99), strict=True):
        want = np.float64(np.percentile(fin, p)) if fin.size else np.float64("nan")
        assert np.float64(g).tobytes() == want.tobytes()


@settings(max_examples=400, deadline=None)
@given(values=st.lists(st.one_of(st.floats(0, 1e4, allow_nan=False, allow_infinity=False), st.sampled_from([0.0, 1e-3, 0.5, 7.25])),
                       min_size=1, max_size=60))
def test_median_is_numpys_bit_for_bit(values: list[float]) -> None:
    from simkit.metrics import median

    x = np.array(values)
    assert np.float64(median(x)).tobytes() == np.float64(np.median(x)).tobytes()


def test_percentile_outside_0_100_is_refused_as_numpy_refuses_it() -> None:
    from simkit.metrics import percentile_sorted

    for p in (-0.5, 100.5):
        with pytest.raises(ValueError, match="outside"):
            percentile_sorted(np.array([1.0, 2.0]), p)
        with pytest.raises(ValueError):
            np.percentile(np.array([1.0, 2.0]), p)


def test_a_run_imports_no_numpy_ma(tmp_path: Path) -> None:
    """A run's summary does not go through np.percentile or np.median (in numpy 2 they import
    numpy.ma: np.unique's and the median's NaN checks, ~12 ms of every run), and the cached cost
    tables and fitted trees are read without ``np.load`` (an ``.npz`` is a zip archive: zipfile's
    import and a Python-literal header per array). Measured on a warm
    cost-table cache of its own (what every run after the first sees; the first run of a new
    model or GPU builds its tables, which may import it), so the outcome does not depend on
    which tests ran before."""
    import os
    import subprocess
    import sys

    code = ("import sys\nfrom simkit.scenario import load_scenario\nfrom simkit.simulate import simulate\n"
            "sc = load_scenario(sys.argv[1], ['workload.synthetic.num_requests=300'])\n"
            "s = simulate(sc).summary\nassert s['ttft_p90_s'] > 0 and s['queue_growth'] == s['queue_growth']\n"
            "print('numpy.ma' in sys.modules, 'zipfile' in sys.modules)")
    scenario = str(ROOT / "workloads" / "scenarios" / "quickstart.yaml")
    env = {**os.environ, "SIMKIT_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run([sys.executable, "-c", code, scenario], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    out = subprocess.run([sys.executable, "-c", code, scenario], capture_output=True, text=True, check=True, cwd=ROOT,
                         env=env)  # fmt: skip
    assert out.stdout.strip() == "False False"
    assert list((tmp_path / "cache" / "tables").glob("*.npz")) == [] and list((tmp_path / "cache" / "tables").glob("*.bin"))


def test_packed_arrays_come_back_exactly_and_damage_is_refused() -> None:
    """cachedir.pack_arrays / unpack_arrays (the cost tables' and fitted trees' cache entries):
    every plain-number dtype and shape back bit for bit, as fresh writable arrays; anything but
    plain numbers is not packed; a damaged entry unpacks to None."""
    import zlib

    from simkit.cachedir import pack_arrays, unpack_arrays

    arrays = {
        "f": np.array([0.1, -0.0, np.inf, np.nan, 5e-324]), "i": np.arange(-3, 9, dtype=np.int64).reshape(3, 4),
        "u": np.array([1, 2], dtype=np.uint32), "b": np.array([True, False]), "s": np.array(2.5), "e": np.zeros(0, dtype=">i2"),
        "t": np.arange(6.0).reshape(2, 3).T,  # not contiguous
    }
    blob = pack_arrays({"key": "k"}, arrays)
    assert blob is not None
    got = unpack_arrays(blob)
    assert got is not None
    head, back = got
    assert head["key"] == "k" and list(back) == list(arrays)
    for name, a in arrays.items():
        b = back[name]
        assert b.dtype == a.dtype and b.shape == a.shape and b.tobytes() == np.ascontiguousarray(a).tobytes()
        assert b.flags.writeable and b.flags.owndata
    assert pack_arrays({}, {"o": np.array(["x"], dtype=object)}) is None
    assert pack_arrays({}, {"s": np.array(["x"])}) is None
    assert pack_arrays({}, {"x": 1.0}) is None  # type: ignore[dict-item]
    def framed(rest: bytes) -> bytes:  # with a right CRC: the layout checks must refuse it
        return b"%08x\n" % zlib.crc32(rest) + rest

    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 1
    assert unpack_arrays(framed(blob[9:])) is not None
    for bad in (b"", b"garbage", blob[: len(blob) - 1], blob + b"x", bytes(flipped), framed(b"[1]\n"), framed(b"{\"arrays\": 1}\n"),
                framed(b'{"arrays": {"a": ["<f8", [2], 0, 16]}}\n' + bytes(8)), framed(b'{"arrays": {"a": ["O", [1], 0, 8]}}\n' + bytes(8)),
                framed(b'{"arrays": {"a": ["<f8", [3], 0, 16]}}\n' + bytes(16)),
                framed(b'{"arrays": {"a": ["<f8", [2], 8, 24]}}\n' + bytes(24)), framed(b"no newline")):
        assert unpack_arrays(bad) is None, bad


def _requests_data(r: Any) -> dict[str, Any]:
    """A read trace's fields as plain data, arrays with their dtypes (a cache hit must give these exactly)."""
    return {k: (v.dtype.str, v.shape, v.tolist()) if isinstance(v, np.ndarray) else v for k, v in vars(r).items()}


@pytest.mark.parametrize("name, fmt", [("azure_conv_2023.csv", "azure"), ("burstgpt_sample.csv", "auto"),
                                       ("mooncake_sample.jsonl", "mooncake"), ("shared_prefix_1rps.csv", "auto")])
def test_parsed_trace_cache_gives_what_a_parse_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, fmt: str) -> None:
    path = ROOT / "workloads" / "traces" / name
    monkeypatch.setenv("SIMKIT_CACHE_DIR", "")  # off: parsed
    fresh = _requests_data(T.read_trace(path, fmt, sample=0.5, seed=3))
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    cold = _requests_data(T.read_trace(path, fmt, sample=0.5, seed=3))
    assert len(list((tmp_path / "traces").glob("*.bin"))) == 1
    with monkeypatch.context() as m:  # a hit does not parse
        m.setattr(T.TraceReader, "parse", lambda *a: pytest.fail("parsed on a cache hit"))
        for cls in T.TRACE_FORMATS.values():
            m.setattr(cls, "parse", lambda *a: pytest.fail("parsed on a cache hit"))
        warm = _requests_data(T.read_trace(path, fmt, sample=0.5, seed=3))
    assert fresh == cold == warm


def test_parsed_trace_cache_is_never_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from simkit.workload import trace_cache

    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path / "cache"))
    entries = tmp_path / "cache" / "traces"
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,input_tokens,output_tokens\n0.0,10,5\n0.5,20,6\n")
    first = T.read_trace(trace)
    assert first.input_tokens.tolist() == [10, 20] and len(list(entries.glob("*.bin"))) == 1
    trace.write_text("arrival_s,input_tokens,output_tokens\n0.0,10,5\n0.5,21,6\n")  # edited in place: a miss
    assert T.read_trace(trace).input_tokens.tolist() == [10, 21] and len(list(entries.glob("*.bin"))) == 2
    # another reader, or another version of the readers' source: another key
    assert T.read_trace(trace, on_bad_line="skip").input_tokens.tolist() == [10, 21]
    assert len(list(entries.glob("*.bin"))) == 3
    monkeypatch.setattr(trace_cache, "_code_digest", lambda: "edited")
    assert T.read_trace(trace).input_tokens.tolist() == [10, 21] and len(list(entries.glob("*.bin"))) == 4
    # a damaged or truncated entry is parsed again and rewritten
    for e in entries.glob("*.bin"):
        e.write_bytes(e.read_bytes()[:-3])
    assert T.read_trace(trace).input_tokens.tolist() == [10, 21]
    for e in entries.glob("*.bin"):
        e.write_bytes(b"{damaged")
    assert T.read_trace(trace).input_tokens.tolist() == [10, 21]
    # a file with bad lines is not stored: they are counted on every read
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,input_tokens,output_tokens\n0.0,10,5\n0.5,x,6\n")
    n = len(list(entries.glob("*.bin")))
    for _ in range(2):
        assert T.read_trace(bad, on_bad_line="skip").meta["bad_lines"]["count"] == 1
    assert len(list(entries.glob("*.bin"))) == n
    with pytest.raises(TraceError, match="line 3"):
        T.read_trace(bad)
    monkeypatch.setenv("SIMKIT_CACHE_DIR", "")  # off: nothing written
    assert T.read_trace(trace, sample=1).input_tokens.size == 1
    assert len(list(entries.glob("*.bin"))) == n


def test_class_docstring_cache_is_keyed_by_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attribute docstrings read from a module's source come from the on-disk cache only for
    the same source text: an edited module is parsed again; a damaged entry is rebuilt."""
    import subprocess
    import sys

    mod = tmp_path / "docmod.py"
    cache = tmp_path / "cache"

    def write(doc: str) -> None:
        mod.write_text("from simkit.specs.base import Section\n\n\nclass A(Section):\n    x: int = 1\n"
                       f'    """{doc}"""\n\n    class Inner(Section):\n        y: str = ""\n        """inner y"""\n')

    def descriptions() -> list[str]:
        code = ("import sys; sys.path.insert(0, sys.argv[1]); import docmod\n"
                "print(docmod.A.model_fields['x'].description, '|', docmod.A.Inner.model_fields['y'].description)")
        env = {**__import__("os").environ, "SIMKIT_CACHE_DIR": str(cache)}
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env, check=True)
        return [len(list((cache / "docs").glob("*.json"))), out.stdout.strip()]

    write("first words")
    assert descriptions() == [1, "first words | inner y"]
    assert descriptions() == [1, "first words | inner y"]  # a hit
    write("edited words")
    assert descriptions() == [2, "edited words | inner y"]  # another source: another entry
    for e in (cache / "docs").glob("*.json"):
        e.write_text('[["A", 1, "x", {}]]')  # damaged (a line number that is not one)
    assert descriptions() == [2, "edited words | inner y"]
    # in-process: the cache gives what a parse gives, for every module of the scenario's sections
    from simkit.specs import base

    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(cache))
    for path in (ROOT / "simkit" / "scenario.py", ROOT / "simkit" / "policies" / "batching.py"):
        text = path.read_text()
        assert base._disk_cached_class_docs(text, str(path)) == base._parse_class_docs(text, str(path))
        assert base._disk_cached_class_docs(text, str(path)) == base._parse_class_docs(text, str(path))  # a hit


def _forests_data(prof: Any) -> dict[str, Any]:
    """Every fitted forest of a profile as plain data (arrays with their dtypes)."""
    from simkit.cost.profile import _FOREST_ARRAYS

    out = {}
    for c, m in sorted(prof.models.items()):
        for attr in ("forest", "forest_tokens", "forest_many_rows"):
            fo = getattr(m, attr, None)
            if fo is not None:
                out[f"{c}.{attr}"] = [(getattr(fo, a).dtype.str, getattr(fo, a).tolist()) for a in _FOREST_ARRAYS] + [fo.baseline, fo.depth]
    return out


def test_profile_forest_cache_gives_what_the_json_gives_and_is_never_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import shutil

    from simkit.cost import profile as P
    from simkit.errors import CalibrationError

    src = ROOT / "calibration" / "profiles" / "h100-sxm-vidur"
    prof_dir = tmp_path / "prof"
    prof_dir.mkdir()
    for name in ("profile.yaml", "models.json"):
        shutil.copy(src / name, prof_dir / name)
    entries = tmp_path / "cache" / "forests"
    monkeypatch.setenv("SIMKIT_CACHE_DIR", "")
    fresh = _forests_data(P.Profile.load(prof_dir, with_samples=False))
    assert len(fresh) >= 3
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path / "cache"))
    cold = _forests_data(P.Profile.load(prof_dir, with_samples=False))
    assert len(list(entries.glob("*.bin"))) == 1
    with monkeypatch.context() as m:  # a hit parses no JSON trees
        m.setattr(P.Forest, "from_json", lambda d: pytest.fail("trees parsed on a cache hit"))
        warm = _forests_data(P.Profile.load(prof_dir, with_samples=False))
    assert fresh == cold == warm
    # the models file edited in place: a miss, the edited trees
    raw = json.loads((prof_dir / "models.json").read_text())
    key = next(iter(raw))
    raw[key]["baseline"] += 1.0
    (prof_dir / "models.json").write_text(json.dumps(raw))
    edited = _forests_data(P.Profile.load(prof_dir, with_samples=False))
    assert edited != fresh and len(list(entries.glob("*.bin"))) == 2
    monkeypatch.setattr(P, "FOREST_CACHE_FORMAT", P.FOREST_CACHE_FORMAT + 1)  # another key: rebuilt
    assert _forests_data(P.Profile.load(prof_dir, with_samples=False)) == edited
    assert len(list(entries.glob("*.bin"))) == 3
    for e in entries.glob("*.bin"):
        e.write_bytes(b"damaged")
    assert _forests_data(P.Profile.load(prof_dir, with_samples=False)) == edited  # rebuilt
    # a broken models file raises on every read, cached or not
    (prof_dir / "models.json").write_text('{"gemm": ')
    for _ in range(2):
        with pytest.raises(CalibrationError, match="cannot read the fitted models") as exc:
            P.Profile.load(prof_dir, with_samples=False)
        assert exc.value.where == str(prof_dir / "models.json")


@pytest.mark.parametrize("own_process, collecting", [(True, True), (True, False), (False, True)])
def test_run_command_collector_state(tmp_path: Path, own_process: bool, collecting: bool) -> None:
    """`simkit run` in its own process turns the garbage collector off while it imports the run's
    modules, freezes the import-time heap, keeps the collector off through the run and its
    outputs (the process ends with them) and resumes it as it was (on unless the process turned
    it off) for --report; called in a longer-lived process (``cli.main(argv)``), it leaves the
    collector and the heap alone."""
    import subprocess
    import sys

    code = (
        "import gc, sys\nimport simkit.cli as cli\n"
        f"if not {collecting}:\n    gc.disable()\n"
        "class Spy:\n"  # notes the collector's state when cmd_run imports simkit.simulate
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'simkit.simulate':\n"
        "            print('imports: enabled', gc.isenabled(), flush=True)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Spy())\n"
        "summary = cli.print_summary\n"
        "def after_run(*a, **k):\n"
        "    print('run: enabled', gc.isenabled(), 'frozen', gc.get_freeze_count() > 0, flush=True)\n"
        "    summary(*a, **k)\n"
        "cli.print_summary = after_run\n"
        "def report(dirs, out):\n"  # notes the state when the report would be rendered
        "    print('report: enabled', gc.isenabled(), 'frozen', gc.get_freeze_count() > 0, flush=True)\n"
        "cli._write_report = report\n"
        "args = ['run', sys.argv[1], '--out', sys.argv[2], '--set', 'workload.synthetic.num_requests=20',\n"
        "        '--report', sys.argv[2] + '.html']\n"
        f"if {own_process}:\n    sys.argv = ['simkit', *args]\n    cli.main()\n"
        "else:\n    sys.exit(cli.main(args))\n"
    )
    scenario = str(ROOT / "workloads" / "scenarios" / "quickstart.yaml")
    out = subprocess.run([sys.executable, "-c", code, scenario, str(tmp_path / "out")], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"imports: enabled {collecting and not own_process}"
    assert lines[1] == f"run: enabled {collecting and not own_process} frozen {own_process}"
    assert lines[-1] == f"report: enabled {collecting} frozen {own_process}"
    assert (tmp_path / "out" / "summary.json").is_file()


@pytest.mark.parametrize("size", [3, 7, 64, 1 << 24])
def test_utf8_check_names_the_line_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """A trace's UTF-8 check counts the lines of earlier blocks only when a later block follows
    (a file of one block, every shipped trace, counts none): the line it names is the same with
    blocks of any size, bare CRs and CRLFs counted as pandas counts them."""
    from simkit.errors import TraceError
    from simkit.workload import traces

    real = traces._blocks
    monkeypatch.setattr(traces, "_blocks", lambda path, block_size=0: real(path, size))  # every block of `size` bytes
    head = b"a,b\nc\r\nd\re,\xc3\xa9\n" * 5  # 3 lines per copy (\n, \r\n, bare \r, \n: 4 line ends)
    # (the column is counted within the block that holds the bad byte: right for one block only)
    cases = [(head + b"x,\xff\n", "line 21", "byte 0xff at column 3" if size > len(head) else "byte 0xff"),
             (head + b"ok\n\xc3", "line 22", "ends inside")]
    for data, line, what in cases:
        p = tmp_path / "t.csv"
        p.write_bytes(data)
        with pytest.raises(TraceError, match=what) as exc:
            traces._check_utf8(p)
        assert exc.value.key == line
    p.write_bytes(head)
    traces._check_utf8(p)  # valid: no error


_ROW = st.tuples(st.integers(0, 7), st.floats(allow_nan=True), st.floats(allow_nan=True), st.integers(1, 10**6),
                 st.integers(0, 2**62), st.integers(-5, 300), st.integers(0, 300), st.integers(-(2**63), 2**63 - 1))


def _per_column(rows: list[tuple[Any, ...]]) -> dict[str, np.ndarray]:
    """iteration_columns' general path: a pass per column through numpy's conversion."""
    from operator import itemgetter

    from simkit.engine.engine import IterationLog

    return {name: np.fromiter(map(itemgetter(k), rows), dtype=np.float64 if name.endswith("_s") else np.int64, count=len(rows))
            for k, name in enumerate(IterationLog.COLS)}


def _same_columns(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype and g.dtype.isnative and g.flags.c_contiguous and g.flags.writeable, name
        assert g.tobytes() == w.tobytes(), name  # every bit (NaN payloads and -0.0 included)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_ROW, max_size=40), block=st.integers(1, 9))
def test_packed_iteration_columns_are_the_per_column_conversions(rows: list[tuple[Any, ...]], block: int,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows packed by ``struct`` a block at a time give the columns numpy's per-value
    conversion gives, bit for bit, whatever the block size (blocks of 1-9 rows here)."""
    from simkit import outputs

    with monkeypatch.context() as m:
        m.setattr(outputs, "_PACK_ROWS", block)
        if rows:
            assert outputs._packed_columns(rows) is not None
        _same_columns(outputs.iteration_columns(rows), _per_column(rows))


@pytest.mark.parametrize("odd", [
    (0, 1.0, 2.0, 3.5, 4, 5, 6, 7),  # a float count: numpy truncates it, struct refuses it
    (0, 1.0, 2.0, 3, 4, 5, 6, np.float64(7.0)),
    (np.int64(1), np.float32(0.1), 2, True, np.int32(4), 5, 6, 7),  # numpy scalars, an int time, a bool count
    (0, "1.5", 2.0, 3, 4, 5, 6, 7),  # a string time: numpy parses it
    (0, None, 2.0, 3, 4, 5, 6, 7),  # None: numpy's NaN
    (0, 1.0, 2.0, 3, 4, 5, 6, 7, 8),  # a longer row: the per-column pass reads its first eight values
])
def test_iteration_columns_of_odd_rows_are_the_per_column_conversions(odd: tuple[Any, ...]) -> None:
    """Rows the packer refuses fall back to the per-column conversion (the same values as
    before); rows it takes give the same values as that conversion."""
    from simkit.outputs import iteration_columns

    rows = [(0, 0.5, 0.75, 1, 12, 3, 4, 9), odd, (1, 0.75, 1.0, 20, 0, 4, 4, 11)]
    _same_columns(iteration_columns(rows), _per_column(rows))


@pytest.mark.parametrize("bad", [(0, 1.0, 2.0, 3, 4, 5, 6, 2**63), (0, 1.0, 2.0, 3, 4), (0, 1.0, 2.0, 3, 4, "x", 6, 7)])
def test_iteration_columns_of_rows_numpy_refuses_raise_numpys_error(bad: tuple[Any, ...]) -> None:
    from simkit.outputs import iteration_columns

    rows = [(0, 0.5, 0.75, 1, 12, 3, 4, 9), bad]
    with pytest.raises(Exception) as want:
        _per_column(rows)
    with pytest.raises(type(want.value)) as got:
        iteration_columns(rows)
    assert str(got.value) == str(want.value)


def _tables() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    n = 3000
    f = rng.exponential(size=n)
    f[::7] = np.nan
    return {
        "mixed": {
            "i64": np.arange(n, dtype=np.int64) % 13, "i32": rng.integers(-3, 9, n).astype(np.int32), "f": f,
            "g": rng.normal(size=n), "b": rng.random(n) < 0.3,
            "s": np.asarray(["", "never_fits", "exceeds_max_context", "é"], dtype=object)[rng.integers(0, 4, n)],
        },
        "empty": {"replica": np.zeros(0, dtype=np.int64), "link": np.array([], dtype=object),
                  "start_s": np.zeros(0), "end_s": np.zeros(0)},
        "one": {"x": np.array([1.5]), "y": np.array([2], dtype=np.int64)},
    }


@pytest.mark.parametrize("name", ["mixed", "empty", "one"])
def test_parquet_tables_are_pyarrow_parquet_write_tables_bytes(tmp_path: Path, name: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The run folder's tables are written through pyarrow's Parquet writer class (without
    importing ``pyarrow.parquet``): the same bytes as ``pyarrow.parquet.write_table`` with the
    same dictionary choice, and the same bytes again where that class does not take the
    arguments (another pyarrow: the public function writes)."""
    import pyarrow._parquet
    import pyarrow.parquet as pq

    from simkit import outputs

    cols = _tables()[name]
    outputs._write_parquet(cols, tmp_path / "ours.parquet")
    table = pq.read_table(tmp_path / "ours.parquet")
    dictionary = [k for k, v in cols.items() if v.dtype.kind != "f"]
    pq.write_table(table, tmp_path / "public.parquet", use_dictionary=dictionary)
    assert (tmp_path / "ours.parquet").read_bytes() == (tmp_path / "public.parquet").read_bytes()

    with monkeypatch.context() as m:  # a writer class that does not know one of the options
        m.setitem(outputs._WRITE_TABLE_OPTIONS, "an_option_of_another_version", True)
        with pytest.raises(TypeError):
            pyarrow._parquet.ParquetWriter(str(tmp_path / "x"), table.schema, **outputs._WRITE_TABLE_OPTIONS)
        outputs._write_parquet(cols, tmp_path / "fallback.parquet")
    assert (tmp_path / "fallback.parquet").read_bytes() == (tmp_path / "public.parquet").read_bytes()


def test_a_failed_parquet_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow._parquet

    from simkit import outputs

    class Breaks(pyarrow._parquet.ParquetWriter):  # type: ignore[misc]
        def write_table(self, *a: Any, **k: Any) -> None:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(pyarrow._parquet, "ParquetWriter", Breaks)
    with pytest.raises(OSError, match="No space left"):
        outputs._write_parquet(_tables()["one"], tmp_path / "t.parquet")
    assert list(tmp_path.iterdir()) == []


def test_a_run_process_writes_its_tables_without_pyarrow_parquet_and_with_the_system_allocator(tmp_path: Path) -> None:
    """`simkit run` in its own process writes the Parquet tables through pyarrow's writer class
    (no ``pyarrow.parquet``, ``pyarrow.fs``, ``ssl``) with pyarrow's memory from the C
    allocator (unless the user chose a pool); called in a longer-lived process it leaves the
    allocator alone. The tables are the same bytes either way."""
    import os
    import subprocess
    import sys

    code = (
        "import os, sys\nimport simkit.cli as cli\n"
        "summary = cli.print_summary\n"
        "def after_run(*a, **k):\n"
        "    import pyarrow as pa\n"
        "    print(sorted(m for m in ('pyarrow.parquet', 'pyarrow.fs', 'ssl', 'pandas') if m in sys.modules),"
        " pa.default_memory_pool().backend_name, flush=True)\n"
        "    summary(*a, **k)\n"
        "cli.print_summary = after_run\n"
        "args = ['run', sys.argv[1], '--out', sys.argv[2], '--set', 'workload.synthetic.num_requests=40']\n"
        "if sys.argv[3] == 'own':\n    sys.argv = ['simkit', *args]\n    cli.main()\n"
        "else:\n    sys.exit(cli.main(args))\n"
    )
    scenario = str(ROOT / "workloads" / "scenarios" / "quickstart.yaml")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    seen = {}
    for how, pool in (("own", None), ("own", "jemalloc"), ("call", None)):
        run_env = env if pool is None else {**env, "ARROW_DEFAULT_MEMORY_POOL": pool}
        out = subprocess.run([sys.executable, "-c", code, scenario, str(tmp_path / f"{how}{pool}"), how],
                             capture_output=True, text=True, cwd=ROOT, env=run_env)  # fmt: skip
        assert out.returncode == 0, out.stderr
        seen[how, pool] = out.stdout.splitlines()[0]
        for t in ("requests", "iterations", "links"):
            assert (tmp_path / f"{how}{pool}" / f"{t}.parquet").read_bytes() == (tmp_path / "ownNone" / f"{t}.parquet").read_bytes()
    assert seen["own", None] == "[] system"
    assert seen["own", "jemalloc"] == "[] jemalloc"
    assert seen["call", None].startswith("[] ") and seen["call", None] != "[] system"


def test_spec_modules_annotations_are_objects() -> None:
    """The scenario's and the catalog's model modules declare their fields with annotations that
    are objects, not strings: for a string, pydantic compiles a ``typing.ForwardRef`` (~87 K
    instructions each, ~270 in a run's imports). Their JSON schemas are what they were with
    string annotations (checked when the change was made; tests/test_validated.py checks the
    models' behaviour)."""
    import pydantic

    from simkit import scenario
    from simkit.specs import hardware, model

    for mod in (scenario, hardware, model):
        classes = [c for c in vars(mod).values()
                   if isinstance(c, type) and issubclass(c, pydantic.BaseModel) and c.__module__ == mod.__name__]
        assert classes, mod.__name__
        for c in classes:
            own = c.__dict__.get("__annotations__", {})
            assert not [k for k, v in own.items() if isinstance(v, str)], (mod.__name__, c.__name__)
