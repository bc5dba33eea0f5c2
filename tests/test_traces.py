"""Trace readers: shipped samples, auto-detection, malformed lines, options and their order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simkit.errors import TraceError
from simkit.workload.base import Requests
from simkit.workload.traces import (
    TRACE_FORMATS,
    TraceColumns,
    TraceReader,
    detect_format,
    native_prefix_hashes,
    read_trace,
)

TRACES = Path(__file__).resolve().parents[1] / "workloads" / "traces"
AZURE_CODE = TRACES / "azure_code_2023_sample.csv"
AZURE_CONV = TRACES / "azure_conv_2023_sample.csv"
AZURE_CONV_FULL = TRACES / "azure_conv_2023.csv"
MOONCAKE = TRACES / "mooncake_sample.jsonl"
MOONCAKE_FULL = TRACES / "mooncake_synthetic_trace.jsonl"
BURSTGPT = TRACES / "burstgpt_sample.csv"

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
BURST_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _check_requests(r: Requests) -> None:
    assert r.arrival_s.dtype == np.float64
    assert r.input_tokens.dtype == np.int64
    assert r.output_tokens.dtype == np.int64
    assert r.arrival_s[0] == 0.0
    assert np.all(np.diff(r.arrival_s) >= 0)
    assert r.input_tokens.min() >= 1
    assert r.output_tokens.min() >= 1


# --------------------------------------------------------------------------------------------
# shipped samples


@pytest.mark.parametrize(
    ("path", "fmt", "count"),
    [
        (AZURE_CODE, "azure", 2000),
        (AZURE_CONV, "azure", 2000),
        (AZURE_CONV_FULL, "azure", 19366),
        (MOONCAKE, "mooncake", 1000),
        (MOONCAKE_FULL, "mooncake", 3993),
        (BURSTGPT, "burstgpt", 46),
    ],
)
def test_shipped_samples(path: Path, fmt: str, count: int) -> None:
    r = read_trace(path)
    assert len(r) == count
    assert r.meta["format"] == fmt
    assert r.meta["source"] == str(path)
    assert r.meta["bad_lines"]["count"] == 0
    _check_requests(r)
    assert detect_format(path) == fmt


def test_azure_values_and_seconds() -> None:
    r = read_trace(AZURE_CONV, "azure", limit=4)
    # 2023-11-16 18:15:46.6805900 -> 18:15:50.9951690 -> 18:15:51.2224670 -> 18:15:51.3910170
    np.testing.assert_allclose(r.arrival_s, [0.0, 4.314579, 4.541877, 4.710427], atol=1e-9)
    assert r.input_tokens.tolist() == [374, 396, 879, 91]
    assert r.output_tokens.tolist() == [44, 109, 55, 16]
    assert r.meta["zero_output_clamped"] == 0


def test_azure_full_conv_span() -> None:
    r = read_trace(AZURE_CONV_FULL)
    assert 3400 < r.arrival_s[-1] < 3600  # about one hour
    assert not r.has_prefixes


def test_azure_2024_timezone_timestamps(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "az24.csv",
        AZURE_HEADER
        + "2024-05-10 00:00:00.009930+00:00,100,10\n"
        + "2024-05-10 00:00:01.509930+00:00,200,20\n"
        + "2024-05-10 02:00:02.009930+02:00,300,0\n",  # = 00:00:02.00993 UTC
    )
    r = read_trace(p)
    assert r.meta["format"] == "azure"
    np.testing.assert_allclose(r.arrival_s, [0.0, 1.5, 2.0], atol=1e-9)
    assert r.output_tokens.tolist() == [10, 20, 1]  # zero output clamped to 1
    assert r.meta["zero_output_clamped"] == 1


def test_azure_seven_fractional_digits(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "az.csv",
        AZURE_HEADER + "2023-11-16 18:15:46.0000000,1,1\n2023-11-16 18:15:46.0000300,1,1\n",
    )
    r = read_trace(p)
    assert r.arrival_s[1] == pytest.approx(30e-6, abs=1e-9)


def test_unsorted_rows_are_sorted(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "az.csv",
        AZURE_HEADER + "2023-01-01 00:00:05,5,5\n2023-01-01 00:00:01,1,1\n2023-01-01 00:00:03,3,3\n",
    )
    r = read_trace(p)
    assert r.arrival_s.tolist() == [0.0, 2.0, 4.0]
    assert r.input_tokens.tolist() == [1, 3, 5]
    assert r.meta["unsorted_rows"] == 1


def test_mooncake_hashes_match_json() -> None:
    r = read_trace(MOONCAKE)
    assert r.has_prefixes and r.prefix_block_tokens == 512
    lines = MOONCAKE.read_text().splitlines()
    objs = [json.loads(x) for x in lines]
    assert len(r.prefix_offsets) == len(objs) + 1
    for i in (0, 1, 2, 500, 999):
        assert r.hashes_of(i).tolist() == objs[i]["hash_ids"]
    assert r.prefix_hashes.tolist() == [h for o in objs for h in o["hash_ids"]]
    assert r.input_tokens.tolist() == [o["input_length"] for o in objs]
    np.testing.assert_allclose(r.arrival_s, [o["timestamp"] / 1000 for o in objs])
    assert r.meta["duplicate_timestamps"] >= 1  # the trace has requests in the same millisecond


def test_burstgpt_failed_rows_and_model_filter() -> None:
    r = read_trace(BURSTGPT)
    assert len(r) == 46 and r.meta["failed_dropped"] == 4
    assert r.meta["models"] == {"GPT-4": 18, "ChatGPT": 32}
    kept = read_trace(BURSTGPT, keep_failed=True)
    assert len(kept) == 50 and kept.meta["failed_kept"] == 4
    assert kept.output_tokens.min() == 1  # failed rows generate one token
    df = pd.read_csv(BURSTGPT)
    gpt4 = read_trace(BURSTGPT, model_filter="GPT-4")
    ok = df[(df["Model"] == "GPT-4") & (df["Response tokens"] > 0)]
    assert len(gpt4) == len(ok) == 17
    assert gpt4.input_tokens.tolist() == ok["Request tokens"].tolist()
    assert gpt4.arrival_s[0] == 0.0
    chat = read_trace(BURSTGPT, model_filter="ChatGPT", keep_failed=True)
    assert len(chat) == (df["Model"] == "ChatGPT").sum()


def test_burstgpt_all_failed(tmp_path: Path) -> None:
    p = _write(tmp_path, "b.csv", BURST_HEADER + "1,ChatGPT,10,0,10,API log\n")
    with pytest.raises(TraceError, match="keep_failed"):
        read_trace(p)
    assert read_trace(p, keep_failed=True).output_tokens.tolist() == [1]


def test_burstgpt_optional_columns(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "b.csv",
        "Timestamp,Session ID,Model,Request tokens,Response tokens,Total tokens,Log Type,Elapsed time\n"
        "0.5,s1,ChatGPT,10,5,15,Conversation log,1.2\n"
        "1.5,s1,ChatGPT,20,6,26,Conversation log,1.4\n",
    )
    r = read_trace(p)
    assert r.meta["format"] == "burstgpt"
    assert r.arrival_s.tolist() == [0.0, 1.0]


def test_model_filter_no_match_names_models() -> None:
    with pytest.raises(TraceError, match="ChatGPT, GPT-4"):
        read_trace(BURSTGPT, model_filter="gpt-4")


def test_model_filter_needs_model_column() -> None:
    with pytest.raises(TraceError, match="model column"):
        read_trace(AZURE_CONV, model_filter="GPT-4")


# --------------------------------------------------------------------------------------------
# native format


def _native_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "arrival_s": [0.0, 0.5, 0.5, 2.0, 3.0],
            "input_tokens": [1000, 2000, 600, 100, 1500],
            "output_tokens": [10, 20, 30, 40, 50],
            "prefix_id": [7, 7, None, 3, 7],
            "prefix_tokens": [1000, 1000, None, 100, 512],
        }
    )


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_native_round_trip_with_prefix_ids(tmp_path: Path, suffix: str) -> None:
    df = _native_frame()
    p = tmp_path / f"native.{suffix}"
    if suffix == "csv":
        df.to_csv(p, index=False)
    else:
        df.to_parquet(p)
    r = read_trace(p)
    assert r.meta["format"] == "native"
    assert r.arrival_s.tolist() == df["arrival_s"].tolist()
    assert r.input_tokens.tolist() == df["input_tokens"].tolist()
    assert r.output_tokens.tolist() == df["output_tokens"].tolist()
    assert r.has_prefixes and r.prefix_block_tokens == 512
    h = [r.hashes_of(i).tolist() for i in range(len(r))]
    assert len(h[0]) == 2 and h[0] == h[1]  # ceil(1000 / 512) blocks, shared by prefix id 7
    assert h[2] == []  # no prefix
    assert len(h[3]) == 1 and h[3][0] not in h[0]
    assert h[4] == h[0][:1]  # a shorter prefix of the same id shares the leading block
    assert h[0] == [(7 << 24) + 0, (7 << 24) + 1]


def test_native_without_prefix_columns(tmp_path: Path) -> None:
    p = _write(tmp_path, "n.csv", "arrival_s,input_tokens,output_tokens\n1.0,5,6\n2.5,7,8\n")
    r = read_trace(p, "native")
    assert not r.has_prefixes
    assert r.arrival_s.tolist() == [0.0, 1.5]  # the result starts at 0
    assert r.meta["start_offset_s"] == 0.0


def test_native_prefix_column_pairs(tmp_path: Path) -> None:
    p = _write(tmp_path, "n.csv", "arrival_s,input_tokens,output_tokens,prefix_id\n0,5,6,1\n")
    with pytest.raises(TraceError) as e:
        read_trace(p)
    assert e.value.key == "prefix_tokens"


def test_native_prefix_longer_than_prompt(tmp_path: Path) -> None:
    p = _write(tmp_path, "n.csv", "arrival_s,input_tokens,output_tokens,prefix_id,prefix_tokens\n0,5,6,1,9\n")
    with pytest.raises(TraceError, match="line 2.*prefix_tokens <= input_tokens"):
        read_trace(p)


def test_native_bad_prefix_id(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "n.csv",
        "arrival_s,input_tokens,output_tokens,prefix_id,prefix_tokens\n0,5,6,,\n1,5,6,abc,2\n2,5,6,-1,2\n",
    )
    with pytest.raises(TraceError, match="line 3.*prefix_id.*got 'abc'"):
        read_trace(p)
    r = read_trace(p, on_bad_line="skip")
    assert len(r) == 1 and r.meta["bad_lines"] == {"count": 2, "lines": [3, 4]}


def test_native_parquet_bad_row(tmp_path: Path) -> None:
    df = pd.DataFrame({"arrival_s": [0.0, 1.0, 2.0], "input_tokens": [5, 0, 5], "output_tokens": [1, 1, 1]})
    p = tmp_path / "n.parquet"
    df.to_parquet(p)
    with pytest.raises(TraceError) as e:
        read_trace(p)
    assert e.value.key == "row 2"
    r = read_trace(p, on_bad_line="skip")
    assert len(r) == 2 and r.meta["bad_lines"] == {"count": 1, "lines": [2]}


def test_native_prefix_hashes_helper() -> None:
    h, o = native_prefix_hashes(np.array([0, -1, 2]), np.array([513, 0, 512]))
    assert o.tolist() == [0, 2, 2, 3]
    assert h.tolist() == [0, 1, 2 << 24]


# --------------------------------------------------------------------------------------------
# detection


def test_detect_each_format(tmp_path: Path) -> None:
    assert detect_format(AZURE_CODE) == "azure"
    assert detect_format(MOONCAKE) == "mooncake"
    assert detect_format(BURSTGPT) == "burstgpt"
    p = tmp_path / "n.parquet"
    _native_frame().to_parquet(p)
    assert detect_format(p) == "native"
    q = _write(tmp_path, "weird.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(TraceError, match="could not tell the trace format"):
        read_trace(q)
    assert read_trace(AZURE_CODE, "AZURE", limit=3).meta["format"] == "azure"


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="unknown trace format 'csv'"):
        read_trace(AZURE_CODE, "csv")
    with pytest.raises(TraceError, match="not found"):
        read_trace(tmp_path / "nope.csv")


def test_registry_takes_a_new_format(tmp_path: Path) -> None:
    class Tiny(TraceReader):
        name = "tiny-test"

        @classmethod
        def sniff(cls, head_text: str) -> bool:
            return head_text.startswith("#tiny")

        def parse(self, path: Path, opts) -> TraceColumns:
            vals = np.array([int(x) for x in path.read_text().split()[1:]], dtype=np.int64)
            return TraceColumns(vals.astype(float), vals, vals)

    TRACE_FORMATS[Tiny.name] = Tiny
    try:
        p = _write(tmp_path, "t.txt", "#tiny 3 1 2\n")
        r = read_trace(p)
        assert r.meta["format"] == "tiny-test"
        assert r.input_tokens.tolist() == [1, 2, 3]
    finally:
        del TRACE_FORMATS[Tiny.name]


# --------------------------------------------------------------------------------------------
# malformed lines


AZ_OK = "2023-11-16 18:15:46.6805900,374,44\n"
AZ_OK2 = "2023-11-16 18:15:47.6805900,375,45\n"


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("2023-11-16 18:15:46.9,abc,44\n", "ContextTokens.*got 'abc'"),
        ("2023-11-16 18:15:46.9,-5,44\n", "positive integer.*ContextTokens.*got '-5'"),
        ("2023-11-16 18:15:46.9,0,44\n", "positive integer.*ContextTokens"),
        ("2023-11-16 18:15:46.9,12,4.5\n", "GeneratedTokens.*got '4.5'"),
        ("2023-11-16 18:15:46.9,12,-1\n", "GeneratedTokens"),
        ("not-a-time,12,4\n", "timestamp.*got 'not-a-time'"),
        ("2023-11-16 18:15:46.9,12\n", "GeneratedTokens.*empty"),
        ("2023-11-16 18:15:46.9,12,4,99\n", "expected 3 comma-separated fields, got 4"),
    ],
)
def test_azure_bad_line_fail_and_skip(tmp_path: Path, bad_line: str, expected: str) -> None:
    p = _write(tmp_path, "bad_azure.csv", AZURE_HEADER + AZ_OK + AZ_OK2 + bad_line + AZ_OK2)
    with pytest.raises(TraceError, match=expected) as e:
        read_trace(p)
    msg = str(e.value)
    assert "bad_azure.csv" in msg and "line 4" in msg
    assert e.value.key == "line 4"
    assert "\n" not in msg
    r = read_trace(p, on_bad_line="skip")
    assert len(r) == 3
    assert r.meta["bad_lines"] == {"count": 1, "lines": [4]}
    assert r.meta["rows"] == 4


def test_first_bad_line_is_reported(tmp_path: Path) -> None:
    # line 3 has a bad value, line 5 too many fields: the earlier one wins, on either path
    p = _write(tmp_path, "a.csv", AZURE_HEADER + AZ_OK + "x,1,1\n" + AZ_OK2 + "2023-11-16 18:15:49,1,1,1\n")
    with pytest.raises(TraceError) as e:
        read_trace(p)
    assert e.value.key == "line 3"
    r = read_trace(p, on_bad_line="skip")
    assert r.meta["bad_lines"] == {"count": 2, "lines": [3, 5]}


def test_too_many_fields_on_first_data_line(tmp_path: Path) -> None:
    p = _write(tmp_path, "a.csv", AZURE_HEADER + "2023-11-16 18:15:46,1,1,1\n" + AZ_OK + AZ_OK2)
    with pytest.raises(TraceError) as e:
        read_trace(p)
    assert e.value.key == "line 2"
    assert len(read_trace(p, on_bad_line="skip")) == 2


def test_quoted_csv_with_a_wide_line(tmp_path: Path) -> None:
    # quotes make the numpy comma count unsafe: the csv module path takes over
    p = _write(
        tmp_path,
        "q.csv",
        BURST_HEADER
        + '1,"ChatGPT",10,5,15,"API log"\n'
        + '2,"GPT-4, turbo",10,x,15,API log\n'
        + "3,ChatGPT,10,5,15,API log,extra\n"
        + "4,ChatGPT,12,6,18,API log\n",
    )
    with pytest.raises(TraceError) as e:
        read_trace(p)
    assert e.value.key == "line 3" and "Response tokens" in str(e.value)
    r = read_trace(p, on_bad_line="skip")
    assert r.meta["bad_lines"] == {"count": 2, "lines": [3, 4]}
    assert r.input_tokens.tolist() == [10, 12] and r.meta["rows"] == 4
    ok = _write(tmp_path, "ok.csv", BURST_HEADER + '1,"GPT-4, turbo",10,5,15,API log\n')
    assert read_trace(ok, model_filter="GPT-4, turbo").input_tokens.tolist() == [10]


def test_blank_lines_keep_line_numbers(tmp_path: Path) -> None:
    p = _write(tmp_path, "a.csv", AZURE_HEADER + AZ_OK + "\n\n" + "bad,1,1\n" + AZ_OK2)
    with pytest.raises(TraceError) as e:
        read_trace(p)
    assert e.value.key == "line 5"
    r = read_trace(p, on_bad_line="skip")
    assert len(r) == 2 and r.meta["bad_lines"]["lines"] == [5] and r.meta["rows"] == 3


def test_skip_counts_many_and_lists_first_few(tmp_path: Path) -> None:
    body = "".join(AZ_OK if i % 3 else "bad,1,1\n" for i in range(60))
    p = _write(tmp_path, "a.csv", AZURE_HEADER + body)
    r = read_trace(p, on_bad_line="skip")
    assert r.meta["bad_lines"]["count"] == 20
    assert r.meta["bad_lines"]["lines"] == [2 + 3 * i for i in range(10)]
    assert len(r) == 40


def test_missing_required_column(tmp_path: Path) -> None:
    p = _write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens,Foo\n2023-11-16 18:15:46,1,1\n")
    with pytest.raises(TraceError) as e:
        read_trace(p)  # auto-detected as Azure from the other columns
    assert e.value.key == "GeneratedTokens"
    assert "a.csv" in str(e.value) and "missing required column 'GeneratedTokens'" in str(e.value)
    b = _write(tmp_path, "b.csv", "Timestamp,Request tokens,Response tokens\n1,2,3\n")
    with pytest.raises(TraceError) as e:
        read_trace(b)
    assert e.value.key == "Model"


def test_empty_trace(tmp_path: Path) -> None:
    p = _write(tmp_path, "a.csv", AZURE_HEADER)
    with pytest.raises(TraceError, match="no requests"):
        read_trace(p)
    q = _write(tmp_path, "b.csv", "")
    with pytest.raises(TraceError, match="empty file"):
        read_trace(q, "azure")
    s = _write(tmp_path, "c.csv", AZURE_HEADER + "bad,1,1\n")
    with pytest.raises(TraceError, match="1 bad lines skipped"):
        read_trace(s, on_bad_line="skip")


def test_burstgpt_bad_lines(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "b.csv",
        BURST_HEADER
        + "1,ChatGPT,10,5,15,API log\n"
        + "x,ChatGPT,10,5,15,API log\n"
        + "3,ChatGPT,-1,5,4,API log\n"
        + "4,GPT-4,10,0,10,API log\n",
    )
    with pytest.raises(TraceError, match="b.csv: line 3: expected a timestamp in seconds"):
        read_trace(p)
    r = read_trace(p, on_bad_line="skip")
    assert r.meta["bad_lines"] == {"count": 2, "lines": [3, 4]}
    assert r.meta["failed_dropped"] == 1 and len(r) == 1


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"timestamp": 5, "input_length": 10, "output_length": 3', "JSON"),
        ("[1, 2]", "JSON object"),
        ('{"timestamp": "x", "input_length": 10, "output_length": 3}', "timestamp"),
        ('{"timestamp": 5, "output_length": 3}', "'input_length'.*missing"),
        ('{"timestamp": 5, "input_length": 0, "output_length": 3}', "'input_length' as a positive"),
        ('{"timestamp": 5, "input_length": "12", "output_length": 3}', "input_length"),
        ('{"timestamp": 5, "input_length": 10, "output_length": -3}', "output_length"),
        ('{"timestamp": 5, "input_length": 10, "output_length": 3, "hash_ids": [1, "a"]}', "hash_ids"),
        ('{"timestamp": 5, "input_length": 10, "output_length": 3, "hash_ids": 7}', "hash_ids"),
    ],
)
def test_mooncake_bad_lines(tmp_path: Path, line: str, expected: str) -> None:
    good = '{"timestamp": 0, "input_length": 600, "output_length": 2, "hash_ids": [1, 2]}\n'
    p = _write(tmp_path, "m.jsonl", good + good + line + "\n" + good)
    with pytest.raises(TraceError, match=expected) as e:
        read_trace(p, "mooncake")
    assert e.value.key == "line 3" and "m.jsonl" in str(e.value)
    r = read_trace(p, "mooncake", on_bad_line="skip")
    assert len(r) == 3 and r.meta["bad_lines"] == {"count": 1, "lines": [3]}
    assert r.prefix_offsets.tolist() == [0, 2, 4, 6]


def test_mooncake_zero_output_clamped_and_no_hashes(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "m.jsonl",
        '{"timestamp": 1000, "input_length": 10, "output_length": 0}\n\n'
        '{"timestamp": 2500, "input_length": 20, "output_length": 4}\n',
    )
    r = read_trace(p)
    assert r.output_tokens.tolist() == [1, 4]
    assert r.meta["zero_output_clamped"] == 1
    assert r.arrival_s.tolist() == [0.0, 1.5]
    assert not r.has_prefixes


# --------------------------------------------------------------------------------------------
# options and their order


def _native_ramp(tmp_path: Path, n: int = 100) -> Path:
    """Request i arrives at 10 + i seconds with input i + 1, output 1."""
    df = pd.DataFrame(
        {"arrival_s": 10.0 + np.arange(n), "input_tokens": np.arange(1, n + 1), "output_tokens": 1}
    )
    p = tmp_path / "ramp.csv"
    df.to_csv(p, index=False)
    return p


def test_window_is_on_trace_time(tmp_path: Path) -> None:
    p = _native_ramp(tmp_path)
    r = read_trace(p, window=(20, 30))  # seconds since the first row (at 10 s on the file's clock)
    assert r.input_tokens.tolist() == list(range(21, 31))
    assert r.arrival_s.tolist() == [float(i) for i in range(10)]
    assert r.meta["start_offset_s"] == 20.0 and r.meta["window_dropped"] == 90
    open_end = read_trace(p, window=(95, None))
    assert open_end.input_tokens.tolist() == [96, 97, 98, 99, 100]
    with pytest.raises(TraceError, match="holds no requests"):
        read_trace(p, window=(500, 600))


def test_rate_scale(tmp_path: Path) -> None:
    p = _native_ramp(tmp_path)
    r = read_trace(p, rate_scale=2.0)
    np.testing.assert_allclose(r.arrival_s, np.arange(100) / 2.0)
    # window is applied before rate_scale: it stays in original seconds
    w = read_trace(p, window=(20, 30), rate_scale=4.0)
    assert w.input_tokens.tolist() == list(range(21, 31))
    np.testing.assert_allclose(w.arrival_s, np.arange(10) / 4.0)


def test_sample_seeded_in_time_order(tmp_path: Path) -> None:
    p = _native_ramp(tmp_path)
    a = read_trace(p, sample=30, seed=1)
    b = read_trace(p, sample=30, seed=1)
    c = read_trace(p, sample=30, seed=2)
    assert len(a) == 30 and len(set(a.input_tokens.tolist())) == 30
    assert a.input_tokens.tolist() == b.input_tokens.tolist()
    assert a.input_tokens.tolist() != c.input_tokens.tolist()
    assert np.all(np.diff(a.input_tokens) > 0)  # time order kept
    assert len(read_trace(p, sample=0.25)) == 25
    assert len(read_trace(p, sample=1000)) == 100


def test_option_order(tmp_path: Path) -> None:
    p = _native_ramp(tmp_path)
    # window -> rate_scale -> sample -> limit
    r = read_trace(p, window=(10, 60), rate_scale=2.0, sample=20, seed=3, limit=5)
    sampled = read_trace(p, window=(10, 60), sample=20, seed=3)
    assert r.input_tokens.tolist() == sampled.input_tokens[:5].tolist()  # limit after sample
    assert r.input_tokens.min() >= 11 and r.input_tokens.max() <= 60  # sample inside the window
    first = r.input_tokens[0]
    np.testing.assert_allclose(r.arrival_s, (r.input_tokens - first) / 2.0)
    # limit alone takes the first N of the window
    assert read_trace(p, window=(10, 60), limit=3).input_tokens.tolist() == [11, 12, 13]


def test_failed_drop_before_model_filter_before_window() -> None:
    all_rows = pd.read_csv(BURSTGPT)
    t0 = all_rows["Timestamp"].min()
    r = read_trace(BURSTGPT, model_filter="ChatGPT", window=(50, 120))
    rel = all_rows["Timestamp"] - t0
    want = all_rows[
        (all_rows["Response tokens"] > 0) & (all_rows["Model"] == "ChatGPT") & (rel >= 50) & (rel < 120)
    ]
    assert r.input_tokens.tolist() == want["Request tokens"].tolist()
    assert r.meta["start_offset_s"] == float(rel[want.index[0]])


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"limit": 0}, "limit"),
        ({"sample": 0}, "sample"),
        ({"sample": 1.5}, "sample"),
        ({"rate_scale": 0}, "rate_scale"),
        ({"rate_scale": -1}, "rate_scale"),
        ({"window": (5, 1)}, "window"),
        ({"window": 5}, "window"),
        ({"on_bad_line": "warn"}, "on_bad_line"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_options(kwargs: dict, key: str) -> None:
    with pytest.raises(TraceError) as e:
        read_trace(AZURE_CODE, **kwargs)
    assert e.value.key == key


def test_large_csv_is_chunked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import simkit.workload.traces as traces

    monkeypatch.setattr(traces, "CHUNK_ROWS", 7)
    p = _native_ramp(tmp_path, 50)
    r = read_trace(p)
    assert r.input_tokens.tolist() == list(range(1, 51))
    text = p.read_text().splitlines()
    text[30] = "1.0,oops,1"
    p.write_text("\n".join(text) + "\n")
    with pytest.raises(TraceError) as e:
        read_trace(p)
    assert e.value.key == "line 31"
    text[40] = "1.0,2,3,4"  # forces the slow path after chunks were consumed
    p.write_text("\n".join(text) + "\n")
    r = read_trace(p, on_bad_line="skip")
    assert r.meta["bad_lines"] == {"count": 2, "lines": [31, 41]}
    assert len(r) == 48
