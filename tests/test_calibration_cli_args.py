"""`simkit calibrate` and `simkit validate` refuse out-of-range options with one clear line (exit 2),
before importing torch or measuring anything."""

from __future__ import annotations

import os
from typing import Any

import pytest

from simkit.calibrate import cli_calibrate, validate


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--threads", "0"], "--threads takes 1.."),
        (["--threads", str((os.cpu_count() or 1) + 1)], "--threads takes 1.."),
        (["--dtypes", ","], "--dtypes takes a comma-separated list of fp32, bf16"),
        (["--dtypes", "fp32,fp33"], "got 'fp32,fp33'"),
        (["--dtypes", "fp8"], "for --device cpu"),
        (["--ssd-dir", "/nonexistent-simkit-dir"], "--ssd-dir '/nonexistent-simkit-dir' is not an existing folder"),
        (["--catalog", "no-such-cpu"], "--catalog 'no-such-cpu' is not a cpu of the catalog"),
        (["--catalog", "h100-sxm"], "is not a cpu of the catalog"),
        (["--name", " "], "--name takes a non-empty profile name"),
    ],
)
def test_calibrate_rejects_bad_options(extra: list[str], expected: str, capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    rc = cli_calibrate.main(["--device", "cpu", "--tiny", "--out", str(tmp_path / "p"), *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("simkit calibrate: error: ") and expected in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists()  # nothing measured or written


def test_calibrate_rejects_a_file_as_out(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert cli_calibrate.main(["--device", "cpu", "--tiny", "--out", str(f)]) == 2
    assert "is a file; it takes a folder" in capsys.readouterr().err
    assert f.read_text() == "x"


def test_calibrate_accepts_in_range_options(tmp_path) -> None:
    args = cli_calibrate.build_parser().parse_args(
        ["--device", "cpu", "--threads", "1", "--dtypes", "bf16, fp32", "--ssd-dir", str(tmp_path),
         "--catalog", "generic-2core-vm", "--out", str(tmp_path / "new")]
    )
    assert cli_calibrate.check_args(args) == (str(tmp_path / "new"), ["bf16", "fp32"])


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--heads", "7"], "--heads (7) must be a multiple of --kv-heads (8)"),
        (["--kv-heads", "3"], "must be a multiple of --kv-heads (3)"),
        (["--hidden", "500"], "--hidden (500) must be --heads (8) x an even head size"),
        (["--hidden", "24", "--heads", "8", "--kv-heads", "8"], "even head size"),
        (["--layers", "0"], "--layers must be >= 1 (got 0)"),
        (["--repeats", "0"], "--repeats must be >= 1"),
        (["--threads", "0"], "--threads takes 1.."),
        (["--threads", str((os.cpu_count() or 1) + 1)], "--threads takes 1.."),
        (["--phases", "warmup"], "--phases takes prefill and/or decode"),
        (["--batch-sizes", "100000", "--context-lens", "100000"], "more than 80% of the"),
    ],
)
def test_validate_rejects_bad_options(extra: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = validate.main(["--device", "cpu", "--profile", "/nonexistent-profile", *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("simkit validate: error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "prefix", "expected"),
    [
        (["validate", "--profile", "/nonexistent-profile"], "simkit validate", "calibration profile not found"),
        (["calibrate", "--device", "cpu", "--tiny", "--threads", "0"], "simkit calibrate", "--threads takes 1.."),
        (["calibrate", "list", "/nonexistent-scenario.yaml"], "simkit calibrate list", "file not found"),
        (["calibrate", "import-profiles", "--root", "/nonexistent", "--gpu", "h900", "--out", "/nonexistent-out"],
         "simkit calibrate import-profiles", "unknown GPU 'h900'"),
    ],
)
def test_calibrate_and_validate_errors_carry_their_commands_prefix(argv: list[str], prefix: str, expected: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Through ``simkit``'s own entry point, an error of ``calibrate`` or ``validate`` is one line
    prefixed as argparse prefixes the same command's usage errors (``simkit validate: error:``),
    as every other command's are (``simkit: error:``), never a bare ``error:``."""
    from simkit.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prefix}: error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        main([*argv, "--no-such-option"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"{prefix}: error: unrecognized arguments")


@pytest.mark.parametrize("value", ["0", "-3", "1,x", "", "1,,2", "1,2,", ",4", " , "])
def test_validate_rejects_bad_lists(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty item (``1,,2``: a typo) is refused, not read as a shorter list (a fuzzer case)."""
    with pytest.raises(SystemExit) as e:
        validate.main(["--batch-sizes", value])
    assert e.value.code == 2
    assert "--batch-sizes" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1,,2", "1,", ""])
def test_every_comma_list_refuses_empty_items(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The same rule (simkit.units.comma_items) on every comma-separated option of the commands."""
    from simkit.calibrate import validate_offload
    from simkit.cli import _parse_tokens
    from simkit.errors import SimkitError

    with pytest.raises(SystemExit) as e:
        validate_offload.main(["--batch-sizes", value])
    assert e.value.code == 2 and "--batch-sizes" in capsys.readouterr().err
    with pytest.raises(SimkitError, match="--tokens"):
        _parse_tokens(value)
    v = validate.build_parser().parse_args(["--phases", value.replace("1", "prefill").replace("2", "decode")])
    with pytest.raises(SimkitError, match="--phases"):
        validate.config_from_args(v)


def test_comma_items() -> None:
    from simkit.units import comma_items

    assert comma_items("1, 4 ,16") == ["1", "4", "16"] and comma_items("bf16") == ["bf16"]
    for bad in ("1,,2", "1,", ",", "", "  "):
        with pytest.raises(ValueError, match="an empty item"):
            comma_items(bad)


def test_validate_memory_estimate_grows_with_the_largest_step() -> None:
    p = validate.build_parser()
    small = validate._validation_bytes(p.parse_args(["--batch-sizes", "1", "--context-lens", "64"]))
    big = validate._validation_bytes(p.parse_args(["--batch-sizes", "1,16", "--context-lens", "64,512"]))
    assert 0 < small < big
    # the default model's weights alone: 2 layers of hidden 512 / FFN 1408 and a 4096-token vocabulary, fp32
    weights = 4 * (2 * (512 * 1536 + 512 * 512 + 3 * 512 * 1408) + 2 * 4096 * 512)
    assert small > weights


def test_drift_compares_the_two_halves_of_the_repetitions() -> None:
    assert validate.drift([1.0, 1.0, 1.0]) is None  # too few to split
    assert validate.drift([1.0, 1.0, 1.0, 1.0]) == 0.0
    # the machine slowed down by 20% half-way through
    assert validate.drift([1.0, 1.02, 0.98, 1.2, 1.22, 1.18]) == pytest.approx(0.2)
    # symmetric in sign: faster later is drift too
    assert validate.drift([1.25, 1.25, 1.0, 1.0]) == pytest.approx(0.2)


def test_table_reports_the_drift_when_measured() -> None:
    row = {"config": "decode b=1 ctx=8", "measured_s": 0.01, "predicted_s": 0.011, "error": 0.1}
    base = {"rows": [row], "median_ape": 0.1, "p90_ape": 0.1, "dtype": "fp32", "threads": 1, "clock": "cpu", "profile": "p"}
    assert "drift" not in validate.format_table(base)
    text = validate.format_table({**base, "drift_median": 0.031, "drift_p90": 0.12})
    assert "measurement drift (second vs first half of each configuration's repetitions): median 3.1%, p90 12.0%" in text


def test_quick_suite_samples_every_decode_row_count_several_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """The quick CPU suite's GEMM group picks, on top of one configuration per stratum, extra
    few-row GEMMs, so the fit sees several samples of each decode batch size (the speed of a
    memory-bound CPU GEMM changes with the exact row count). Selection only: nothing is timed."""
    import random

    from simkit.calibrate import bench
    from simkit.calibrate.samples import Measurement

    b = bench.Bench(None, "cpu", bench.SIZES["quick"], None, "test", random.Random(0))  # type: ignore[arg-type]
    b.rates = {"bf16": 1e11}
    b.mem_bw = 20e9
    monkeypatch.setattr(bench.Bench, "take", lambda self, shape, dtype, slot: None)
    monkeypatch.setattr(bench.Bench, "gemm_predecessor", lambda self, op, m, k, n, dtype: None)  # selection only
    monkeypatch.setattr(bench.Bench, "_linear_fn", lambda self, a, w, dtype: None)
    monkeypatch.setattr(bench.Bench, "measure", lambda self, fn, **kw: Measurement([1e-3]))
    n = b.gemm("bf16")
    size = bench.SIZES["quick"]
    grid = sum(r["op"] == "row_length" for r in b.rows)
    assert 0 < grid <= len(bench.row_length_shapes(size.row_length_rows))
    assert n == len(b.rows) == size.gemm_configs + size.decode_gemm_configs + size.wide_gemm_configs + grid
    shapes = [(r["m"], r["k"], r["n"]) for r in b.rows]
    assert len(set(shapes)) == len(shapes)  # no configuration twice
    few = [m for m, _, _ in shapes if m <= 16]
    for m in (1, 2, 3, 4, 6, 8, 12, 16):
        assert few.count(m) >= 6, (m, few.count(m))


def test_cpu_suites_sample_few_row_gemms_over_a_geometric_grid_of_row_lengths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Few-row CPU GEMMs stream their weights at a per-row rate that grows with the row length k:
    the quick and full CPU suites time rows 1-3 (full: every decode row count) at every k of a
    geometric grid (four steps per doubling, 512..8192), so no k in that range is more than one
    grid step from a sample. Selection only: nothing is timed."""
    import random

    from simkit.calibrate import bench
    from simkit.calibrate.samples import Measurement

    grid = bench.ROW_LENGTH_GRID
    assert grid[0] == 512 and grid[-1] == 8192 and all(k % 64 == 0 for k in grid)
    ratios = [b / a for a, b in zip(grid, grid[1:])]
    assert max(ratios) <= 1.25 and min(ratios) > 1.05, ratios
    monkeypatch.setattr(bench.Bench, "take", lambda self, shape, dtype, slot: None)
    monkeypatch.setattr(bench.Bench, "gemm_predecessor", lambda self, op, m, k, n, dtype: None)  # selection only
    monkeypatch.setattr(bench.Bench, "_linear_fn", lambda self, a, w, dtype: None)
    monkeypatch.setattr(bench.Bench, "measure", lambda self, fn, **kw: Measurement([1e-3]))
    for name, rows in (("quick", (1, 2, 3, 8)), ("full", (1, 2, 3, 4, 6, 8, 12, 16))):
        size = bench.SIZES[name]
        assert size.row_length_rows == rows
        for dtype, rate in (("fp32", 1e11), ("bf16", 2e11)):
            b = bench.Bench(None, "cpu", size, None, "test", random.Random(0))  # type: ignore[arg-type]
            b.rates = {dtype: rate}
            b.mem_bw = 20e9
            b.gemm(dtype)
            got = {(int(r["m"]), int(r["k"])) for r in b.rows}
            assert {(m, k) for m in rows for k in grid} <= got, (name, dtype)
            shapes = [(r["m"], r["k"], r["n"]) for r in b.rows]
            assert len(set(shapes)) == len(shapes)  # no configuration twice
    assert bench.SIZES["tiny"].row_length_rows == ()


def test_row_length_grid_times_every_row_length_at_a_narrow_and_a_wide_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """One output width per (rows, k) let the residual trees read a rate that k sets as one that n
    sets (fp32, one row: the same 14 GB/s at k = 1216 for every n): the grid times each (rows, k)
    at one narrow (<= 2048) and one wide (>= 4096) n where both fit the time cap. Selection only."""
    import random

    from simkit.calibrate import bench
    from simkit.calibrate.samples import Measurement

    shapes = bench.row_length_shapes((1, 2))
    assert len(shapes) == 2 * 2 * len(bench.ROW_LENGTH_GRID)
    for m in (1, 2):
        for k in bench.ROW_LENGTH_GRID:
            ns = sorted(n for mm, kk, n in shapes if (mm, kk) == (m, k))
            assert len(ns) == 2 and ns[0] in bench.ROW_LENGTH_NARROW and ns[1] in bench.ROW_LENGTH_WIDE
    monkeypatch.setattr(bench.Bench, "take", lambda self, shape, dtype, slot: None)
    monkeypatch.setattr(bench.Bench, "gemm_predecessor", lambda self, op, m, k, n, dtype: None)  # selection only
    monkeypatch.setattr(bench.Bench, "_linear_fn", lambda self, a, w, dtype: None)
    monkeypatch.setattr(bench.Bench, "measure", lambda self, fn, **kw: Measurement([1e-3]))
    b = bench.Bench(None, "cpu", bench.SIZES["quick"], None, "test", random.Random(0))  # type: ignore[arg-type]
    b.rates = {"fp32": 1e13}  # every grid shape within the cap: memory time only
    b.mem_bw = 1e13
    cfg = b.row_length_configs(1e13, 4, set())
    got = [(m, k, n) for m, op, k, n, _ in cfg]
    assert len(set(got)) == len(got) == len(bench.row_length_shapes(bench.SIZES["quick"].row_length_rows))
    taken = {(1, 1024, 1024)}
    assert (1, 1024, 1024) not in {(m, k, n) for m, _, k, n, _ in b.row_length_configs(1e13, 4, taken)}
    b.time_gemms(cfg[:3], "fp32", 4)
    assert [r["op"] for r in b.rows] == ["row_length"] * 3


def test_quick_suite_samples_many_row_gemms_with_weights_beyond_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """The time cap keeps the grid's many-row GEMMs to weights that fit the last-level cache; the
    quick CPU suite adds prefill-sized GEMMs (>= 64 rows) whose weights exceed one LLC, at short
    and long rows, so the fit does not carry the few-row samples' large-weight slowdown to
    prefill. Selection only: nothing is timed."""
    import random

    from simkit.calibrate import bench
    from simkit.calibrate.samples import Measurement

    monkeypatch.setattr(bench.Bench, "take", lambda self, shape, dtype, slot: None)
    monkeypatch.setattr(bench.Bench, "gemm_predecessor", lambda self, op, m, k, n, dtype: None)  # selection only
    monkeypatch.setattr(bench.Bench, "_linear_fn", lambda self, a, w, dtype: None)
    monkeypatch.setattr(bench.Bench, "measure", lambda self, fn, **kw: Measurement([1e-3]))
    size = bench.SIZES["quick"]
    for dtype, eb, rate in (("fp32", 4, 1e11), ("bf16", 2, 2e11)):
        b = bench.Bench(None, "cpu", size, None, "test", random.Random(0))  # type: ignore[arg-type]
        b.rates = {dtype: rate}
        b.mem_bw = 90e9
        b.cold_bytes = 64e6
        b.gemm(dtype)
        wide = [(r["m"], r["k"], r["n"]) for r in b.rows if r["m"] >= 64 and r["k"] * r["n"] * eb > 32e6]
        assert len(wide) >= size.wide_gemm_configs, (dtype, wide)
        assert {k <= 2048 for _, k, _ in wide} == {True, False}, (dtype, wide)
        assert len({m for m, _, _ in wide}) >= 2, (dtype, wide)


def test_quick_suite_samples_decode_attention_over_batches_and_contexts(monkeypatch: pytest.MonkeyPatch) -> None:
    """On top of one decode-attention configuration per head shape, the quick CPU suite times
    batches 1..16 at short, medium and long contexts (some off the power-of-two grid)."""
    import random

    from simkit.calibrate import bench
    from simkit.calibrate.samples import Measurement

    class FakeTorch:
        @staticmethod
        def inference_mode() -> Any:
            import contextlib

            return contextlib.nullcontext()

    b = bench.Bench(FakeTorch(), "cpu", bench.SIZES["quick"], None, "test", random.Random(0))  # type: ignore[arg-type]
    b.rates = {"bf16": 1e11}
    b.mem_bw = 20e9
    monkeypatch.setattr(bench.Bench, "take", lambda self, shape, dtype, slot: [None] * (shape[0] if len(shape) == 5 else 1))
    monkeypatch.setattr(bench.Bench, "measure", lambda self, fn, **kw: Measurement([1e-3]))
    n = b.attention("bf16", "attn_decode")
    size = bench.SIZES["quick"]
    assert n == len(b.rows) == size.attn_configs + size.decode_attn_configs
    extra = b.rows[size.attn_configs:]
    cells = {(int(r["batch"]), 0 if r["ctx"] <= 128 * 1.4 else 1 if r["ctx"] <= 512 * 1.4 else 2) for r in extra}
    assert {bb for bb, _ in cells} == {1, 2, 4, 8, 16}
    assert {band for _, band in cells} == {0, 1, 2}
    assert any(int(r["ctx"]) & (int(r["ctx"]) - 1) for r in extra)  # not all powers of two
    # grouped-query (GQA) and plain head shapes at every batch: one stratum each per context band
    grouped = {(int(r["batch"]), r["heads"] > r["kv_heads"]) for r in extra}
    assert grouped == {(bb, g) for bb in (1, 2, 4, 8, 16) for g in (False, True)}
    assert size.decode_attn_configs == 5 * 3 * 2


def test_timer_runs_before_untimed_ahead_of_every_call() -> None:
    """``Timer.measure(fn, before=...)`` times each call alone, right after ``before``: the
    calibration times elementwise operators that way on a CPU (after streaming the LLC)."""
    import time as _time

    from simkit.calibrate.bench import Timer

    log: list[str] = []

    def before() -> None:
        log.append("b")
        _time.sleep(0.05)  # untimed: must not show in the samples

    def fn() -> None:
        log.append("f")

    m = Timer("cpu", min_rep_s=1e-3, budget_s=0.05, min_reps=4, max_reps=6, clock="wall").measure(fn, before=before)
    assert m.inner == 1 and 4 <= len(m.times) <= 6
    assert "".join(log) == "bf" * (len(log) // 2)  # every call directly after before()
    assert max(m.times) < 0.05


def test_elementwise_benchmarks_run_their_predecessor_gemm_first(monkeypatch) -> None:
    """On a CPU each elementwise operator is timed right after the GEMM that precedes it in a
    decode layer (one row by that GEMM's cold weights, capped at one last-level cache)."""
    torch = pytest.importorskip("torch")
    import random

    from simkit.calibrate import bench
    from simkit.calibrate.samples import Measurement

    b = bench.Bench(torch, "cpu", bench.SIZES["tiny"], None, "test", random.Random(0))  # type: ignore[arg-type]
    b.cold_bytes = 8e6  # twice the last-level cache
    dims = (896, 14, 2, 64, 4864, 12000)  # hidden, heads, kv heads, head dim, ffn, vocab
    with torch.inference_mode():
        # RoPE follows the QKV projection: 896 -> (14 + 2 x 2) x 64, 2.1 MB of bf16 weights
        assert tuple(b.predecessor("rope", dims, "bf16")().shape) == (1, 1152)
        assert tuple(b.predecessor("mlp_act", dims, "fp32")().shape[:1]) == (1,)
        # the norms follow the MLP down-projection (4864 -> 896, 8.7 MB): capped at one LLC (4 MB)
        norm = b.predecessor("input_norm", dims, "bf16")
        assert tuple(norm().shape) == (1, 4_000_000 // (4864 * 2))
    pool = b.pools[("bf16", "pw")]
    assert pool.numel() * pool.element_size() >= 8e6  # copies cycled over twice the LLC: cold
    assert b.PREDECESSOR["residual_add"](*dims) == (896, 896)  # the O projection
    assert b.PREDECESSOR["sampling"](*dims) == (896, 12000)  # the LM head
    assert set(b.PREDECESSOR) == set(b.ELEM_OPS)

    befores: list[object] = []

    def measure(self: object, fn: object, **kw: object) -> Measurement:
        befores.append(kw.get("before"))
        return Measurement([1e-4])

    monkeypatch.setattr(bench.Bench, "measure", measure)
    n = b.elementwise("bf16")
    assert n == len(befores) > 0 and all(callable(x) for x in befores)


def test_gemm_shapes_name_each_shape_after_a_layer_of_gemm_models() -> None:
    """Every GEMM of the grid comes from a layer (model dims and TP degree) of GEMM_MODELS whose
    projection of that name has that shape; the row-length grid's shapes come from none."""
    from simkit.calibrate import bench

    shapes = bench.gemm_shapes(max_dim=16384, max_weight=2**26)
    assert shapes and len(set(shapes)) == len(shapes)
    for op, k, n in shapes:
        layer = bench.gemm_layer(op, k, n)
        assert layer is not None and (op, k, n) in layer.projections()
    one_b = bench.gemm_layer("o_proj", 256, 2048)  # Llama-3.2-1B at TP 8: 32 heads of 64 / 8
    assert one_b is not None and (one_b.hidden, one_b.tp, one_b.head_dim) == (2048, 8, 64)
    assert bench.gemm_layer("row_length", 1216, 4096) is None


def test_few_row_bf16_gemms_run_their_layer_predecessor_first(monkeypatch) -> None:
    """On a CPU the few-row bf16 GEMMs are timed after what precedes the projection in a decode
    layer (Bench.gemm_predecessor); fp32 GEMMs, GEMMs with more than FEW_ROWS rows and GPU GEMMs
    in a loop of themselves."""
    torch = pytest.importorskip("torch")
    import random

    from simkit.calibrate import bench
    from simkit.calibrate.samples import Measurement
    from simkit.cost.profile import FEW_ROWS

    b = bench.Bench(torch, "cpu", bench.SIZES["tiny"], None, "test", random.Random(0))  # type: ignore[arg-type]
    b.cold_bytes = 8e6  # twice the last-level cache
    calls: list[tuple[str, tuple[int, ...]]] = []
    for name in ("k_attention", "k_add", "k_rmsnorm", "k_silu_mul"):
        real = getattr(bench, name)

        def spy(*a: Any, _real: Any = real, _name: str = name) -> Any:
            out = _real(*a)
            calls.append((_name, tuple(out.shape)))
            return out

        monkeypatch.setattr(bench, name, spy)
    with torch.inference_mode():
        # O projection of Llama-3.2-1B at TP 8 (256 -> 2048): decode attention of 3 sequences, 4 heads of 64
        b.gemm_predecessor("o_proj", 3, 256, 2048, "bf16")()
        assert calls == [("k_attention", (3, 256))]
        calls.clear()
        # MLP down of the same shard (1024 -> 2048) follows the up-projection (2048 -> 2048) and SiLU x mul
        b.gemm_predecessor("mlp_down", 2, 1024, 2048, "bf16")()
        assert calls == [("k_silu_mul", (2, 1024))]
        calls.clear()
        # a row-length grid GEMM: a GEMM writing k-wide rows, the residual add, the RMSNorm
        b.gemm_predecessor("row_length", 8, 512, 4096, "bf16")()
        assert calls == [("k_add", (8, 512)), ("k_rmsnorm", (8, 512))]
    assert b.gemm_predecessor("row_length", 8, 512, 4096, "fp32") is None
    assert b.gemm_predecessor("qkv_proj", FEW_ROWS + 1, 2048, 3072, "bf16") is None
    gpu = bench.Bench(torch, "cuda", bench.SIZES["tiny"], None, "test", random.Random(0))  # type: ignore[arg-type]
    assert gpu.gemm_predecessor("qkv_proj", 1, 2048, 3072, "bf16") is None

    befores: list[tuple[int, object]] = []

    def measure(self: object, fn: object, **kw: object) -> Measurement:
        befores.append(kw.get("before"))  # type: ignore[arg-type]
        return Measurement([1e-4])

    monkeypatch.setattr(bench.Bench, "measure", measure)
    chosen = [(1, "row_length", 512, 1024, 0.0), (64, "row_length", 512, 1024, 0.0)]
    assert b.time_gemms(chosen, "bf16", 2) == 2
    assert callable(befores[0]) and befores[1] is None
    assert [r["m"] for r in b.rows] == [1, 64]


def test_gemm_timing_note_names_profiles_measured_before_the_change() -> None:
    """A CPU profile without device.gemm_timing (every profile measured before the few-row bf16
    GEMMs were timed after their layer predecessor, the shipped ci-vm-cpu among them) gets a note
    naming it and the command that re-measures; fp32 predictions and new profiles get none."""
    from simkit.calibrate.bench import GEMM_TIMING, gemm_timing_note

    old = {"kind": "cpu", "threads": 1}
    note = gemm_timing_note(old, "bf16", "ci-vm-cpu")
    assert note is not None and "'ci-vm-cpu'" in note and "simkit calibrate --device cpu" in note
    assert gemm_timing_note(old, "fp32", "ci-vm-cpu") is None
    assert gemm_timing_note({**old, "gemm_timing": GEMM_TIMING}, "bf16", "new") is None
    assert gemm_timing_note({"kind": "cuda"}, "bf16", "h100") is None


def test_load_monitor_reports_steal_apart(monkeypatch) -> None:
    """The hypervisor's steal (/proc/stat's eighth field) is reported on its own, in cores."""
    from simkit.calibrate import bench

    stat = iter(["cpu  100 0 50 1000 0 0 0 10 0 0\n", "cpu  100 0 50 1000 0 0 0 10 0 0\n",
                 "cpu  200 0 50 1100 0 0 0 60 0 0\n"])  # fmt: skip
    monkeypatch.setattr(bench, "_read", lambda path: next(stat))
    clock = iter([0.0, 2.0])
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))
    mon = bench.LoadMonitor()
    tick = float(os.sysconf("SC_CLK_TCK"))
    assert mon.steal_cores() == pytest.approx(50 / tick / 2.0)


def test_openmp_env_note_names_what_differs(monkeypatch) -> None:
    """With more than one thread, a profile measured under other OpenMP wait/placement settings
    gets a warning naming each; one thread, equal settings or a profile that did not record them
    (measured before they were recorded) get none."""
    from simkit.calibrate import bench

    for k in bench.OPENMP_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    rec = {**{k: "unset" for k in bench.OPENMP_ENV}, "OMP_WAIT_POLICY": "active"}
    dev = {"kind": "cpu", "openmp_env": rec}
    note = bench.openmp_env_note(dev, 2, "r8")
    assert note is not None and "'r8'" in note and "OMP_WAIT_POLICY: profile active, now passive" in note
    assert "KMP_BLOCKTIME" not in note
    assert bench.openmp_env_note(dev, 1, "r8") is None
    assert bench.openmp_env_note({"kind": "cpu", "openmp_env": bench.openmp_env()}, 2, "r8") is None
    assert bench.openmp_env_note({"kind": "cpu"}, 2, "ci-vm-cpu") is None


def test_quick_suite_samples_every_elementwise_operator_at_prefill_token_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The elementwise samples are stratified by operator and by decode (< 64 tokens), short
    prefill (64-511) and long prefill (>= 512) token counts, so every operator with candidates in
    a band is sampled there (a prefill step's norms and RoPE run at 128-3200 tokens). Selection
    only: nothing is timed."""
    import random

    from simkit.calibrate import bench
    from simkit.calibrate.samples import Measurement

    assert [bench.Bench.token_band(t) for t in (1, 63, 64, 511, 512, 8192)] == [0, 0, 1, 1, 2, 2]
    monkeypatch.setattr(bench.Bench, "_elem_fn", lambda self, *a: None)
    monkeypatch.setattr(bench.Bench, "predecessor", lambda self, op, dims, dtype: None)
    monkeypatch.setattr(bench.Bench, "measure", lambda self, fn, **kw: Measurement([1e-4]))
    b = bench.Bench(None, "cpu", bench.SIZES["quick"], None, "test", random.Random(0))  # type: ignore[arg-type]

    class _NoGrad:
        def inference_mode(self) -> Any:
            import contextlib

            return contextlib.nullcontext()

    b.torch = _NoGrad()
    assert b.elementwise("bf16") == bench.SIZES["quick"].elem_configs == len(b.rows)
    bands: dict[str, set[int]] = {}
    for r in b.rows:
        bands.setdefault(r["op"], set()).add(bench.Bench.token_band(int(r["tokens"])))
    assert set(bands) == set(bench.Bench.ELEM_OPS)
    for op, got in bands.items():
        assert got == ({0, 1} if op == "sampling" else {0, 1, 2}), (op, got)  # sampling: at most 256 tokens
