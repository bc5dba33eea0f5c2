"""Damaged calibration profiles give a clean error naming the file and the key; a faster profile
never predicts a slower step.

Each regression test below is a case ``benchmarks/fuzz.py --kinds profile`` found (docs/fuzzing.md,
"Calibration profiles"): before the fix the number was used (a NaN or negative efficiency, launch
time or bandwidth gave a traceback deep in the cost tables or silently negative times), or the
file gave a traceback instead of an error.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.cost.profile import Profile, load_cached
from simkit.errors import CalibrationError, SimkitError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "calibration" / "profiles"


def _copy(tmp_path: Path, name: str = "ci-vm-cpu") -> Path:
    dst = tmp_path / name
    shutil.copytree(SHIPPED / name, dst)
    return dst


def _edit(folder: Path, path: str, value: object) -> None:
    f = folder / "profile.yaml"
    data = yaml.safe_load(f.read_text())
    node = data
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(parts[-1]) if isinstance(node, list) else parts[-1]] = value
    f.write_text(yaml.safe_dump(data, sort_keys=False))


def _refused(folder: Path, key: str, file: str = "profile.yaml") -> CalibrationError:
    with pytest.raises(CalibrationError) as ei:
        Profile.load(folder, with_samples=False)
    e = ei.value
    assert e.where == str(folder / file), e
    assert e.key == key, e
    return e


BAD_NUMBERS = [float("nan"), float("inf"), -1.0, "x", True]


@pytest.mark.parametrize("value", BAD_NUMBERS)
@pytest.mark.parametrize(
    "path",
    [
        "launch_overhead.gemm",
        "efficiency.gemm.model.base.launch_s",
        "efficiency.gemm.model.base.compute_efficiency",
        "efficiency.attn_decode.model.base.memory_efficiency",
        "efficiency.elementwise.model.base.sharpness",
        "threads",
        "links.host_memcpy.bandwidth",
        "links.host_memcpy.latency",
        "memory.stream_copy.bandwidth",
        "ssd.read.by_block_and_depth.0.latency",
        "efficiency.gemm.fit_error.median_ape",
    ],
)
def test_a_bad_number_the_predictions_read_is_refused(tmp_path, path, value):
    """Before: NaN/inf/negative launch times and efficiencies ran (negative or NaN step times, or a
    ValueError from numpy deep in the cost tables); a string was a ValueError traceback."""
    p = _copy(tmp_path)
    _edit(p, path, value)
    e = _refused(p, path)
    assert "expected" in e.message and repr(value) in e.message


@pytest.mark.parametrize("path", ["efficiency.gemm.model.base.compute_efficiency", "efficiency.gemm.model.base.sharpness"])
def test_a_zero_efficiency_or_sharpness_is_refused(tmp_path, path):
    """Before: a sharpness of 0 was a ZeroDivisionError, an efficiency of 0 a numpy ValueError."""
    p = _copy(tmp_path)
    _edit(p, path, 0.0)
    assert "> 0" in _refused(p, path).message


def test_a_zero_launch_time_is_a_profile(tmp_path):
    p = _copy(tmp_path)
    _edit(p, "launch_overhead.gemm", 0.0)
    _edit(p, "efficiency.gemm.model.base.launch_s", 0)
    assert Profile.load(p, with_samples=False).launch_overhead("gemm") == 0.0


def test_base_by_dtype_is_checked_too(tmp_path):
    p = _copy(tmp_path)
    base = yaml.safe_load((p / "profile.yaml").read_text())["efficiency"]["attn_decode"]["model"]["base"]
    _edit(p, "efficiency.attn_decode.model.base_by_dtype", {"bf16": {**base, "memory_efficiency": -0.5}})
    _refused(p, "efficiency.attn_decode.model.base_by_dtype.bf16.memory_efficiency")


@pytest.mark.parametrize("section", ["links", "memory", "ssd", "collectives"])
def test_a_section_that_is_not_a_mapping_is_refused(tmp_path, section):
    """Before: ``links: [1, 2]`` was a TypeError from dict(), ``links: x`` a ValueError."""
    p = _copy(tmp_path)
    _edit(p, section, [1, 2])
    _refused(p, section)


def test_cross_validation_numbers_are_checked(tmp_path):
    """provenance.json reads the per-model errors as floats: ``x`` was a ValueError at the end of a run."""
    p = _copy(tmp_path, "h100-sxm-vidur")
    per = yaml.safe_load((p / "profile.yaml").read_text())["efficiency"]["gemm"]["cross_validation"]["per_model"]
    model = sorted(per)[0]
    _edit(p, f"efficiency.gemm.cross_validation.per_model.{model}.median_ape", "x")
    _refused(p, f"efficiency.gemm.cross_validation.per_model.{model}.median_ape")
    _edit(p, "efficiency.gemm.cross_validation.per_model", [1])
    _refused(p, "efficiency.gemm.cross_validation.per_model")


@pytest.mark.parametrize("value", [-1, 5, "x", [1]])
def test_a_residual_that_is_not_a_mapping_is_refused(tmp_path, value):
    """Before: ``residual: -1`` was an AttributeError ('int' object has no attribute 'get'); a
    falsy one (0, '') silently dropped the trees."""
    p = _copy(tmp_path)
    _edit(p, "efficiency.elementwise.model.residual", value)
    _refused(p, "efficiency.elementwise.model.residual")


def test_residual_features_must_be_a_list_of_names(tmp_path):
    p = _copy(tmp_path)
    _edit(p, "efficiency.gemm.model.residual.features", 7)
    _refused(p, "efficiency.gemm.model.residual.features")


def _edit_trees(folder: Path, key: str, edit) -> None:  # type: ignore[no-untyped-def]
    f = folder / "models.json"
    data = json.loads(f.read_text())
    edit(data[key])
    f.write_text(json.dumps(data))


def _first_split(tree: dict) -> int:
    return next(i for i, f in enumerate(tree["feature"]) if f >= 0)


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda d: d["trees"][3]["left"].__setitem__(_first_split(d["trees"][3]), 10**6), "left child index outside"),
        (lambda d: d["trees"][3]["right"].__setitem__(_first_split(d["trees"][3]), -4), "right child index outside"),
        (lambda d: d["trees"][0]["value"].__setitem__(-1, float("nan")), "not a finite number"),
        (lambda d: d.__setitem__("baseline", float("inf")), "baseline"),
        (lambda d: d.__setitem__("depth", 10**9), "depth"),
        (lambda d: d.__setitem__("depth", -1), "depth"),
        (lambda d: d.__setitem__("depth", 1), "deeper than the forest's depth"),
        (lambda d: d["trees"][2]["left"].__setitem__(_first_split(d["trees"][2]), 0), "cycle"),
        (lambda d: d.__setitem__("trees", 5), "trees"),
    ],
)
def test_corrupted_trees_are_refused(tmp_path, edit, says):
    """Before: a child index past the tree read another tree's node (a silently wrong residual) or
    raised IndexError at prediction; a depth of 10^9 never finished; a depth below the trees'
    stopped rows at splits (silently wrong); NaN values gave NaN step times."""
    p = _copy(tmp_path)
    _edit_trees(p, "gemm", edit)
    with pytest.raises(CalibrationError) as ei:
        Profile.load(p, with_samples=False)
    assert ei.value.where == str(p / "models.json") and ei.value.key == "gemm"
    assert says in ei.value.message


def test_a_split_on_a_feature_the_class_lacks_is_refused(tmp_path):
    """Before: feature 40 of a 9-feature GEMM row read the next row's features (silently wrong)."""
    p = _copy(tmp_path)
    _edit_trees(p, "gemm", lambda d: d["trees"][1]["feature"].__setitem__(_first_split(d["trees"][1]), 40))
    e = _refused(p, "gemm", "models.json")
    assert "feature 40" in e.message


def test_every_shipped_profile_still_loads():
    for d in sorted(SHIPPED.iterdir()):
        prof = Profile.load(d, with_samples=False)
        assert prof.models, d


def test_a_symlink_loop_is_a_clean_error(tmp_path):
    """Before: load_cached's Path.resolve raised RuntimeError('Symlink loop') from `simkit run`."""
    p = tmp_path / "p"
    p.mkdir()
    (p / "profile.yaml").symlink_to(p / "profile.yaml")
    with pytest.raises(CalibrationError) as ei:
        load_cached(p)
    assert ei.value.where == str(p / "profile.yaml")


def test_a_non_utf8_profile_on_the_search_path_is_skipped_with_a_warning(tmp_path, monkeypatch):
    """Before: list_profiles read UnicodeDecodeError.strerror (an AttributeError) for every
    `calibration: auto` run and `simkit calibrate list`."""
    from simkit.specs.calibration import list_profiles

    p = _copy(tmp_path / "folder")
    raw = (p / "profile.yaml").read_bytes()
    (p / "profile.yaml").write_bytes(raw[:40] + b"\xe9\xff" + raw[40:])
    monkeypatch.setenv("SIMKIT_PROFILE_PATH", str(tmp_path / "folder"))
    found, skipped = list_profiles()
    assert all(f.file != p / "profile.yaml" for f in found)
    assert any(str(p / "profile.yaml") in w and "not UTF-8" in w for w in skipped), skipped


# ---------------------------------------------------------------------------------------------
# Property: a profile faster everywhere never predicts a slower step
# ---------------------------------------------------------------------------------------------
CLASSES = ("gemm", "attn_prefill", "attn_decode", "elementwise")


def _faster(src: Path, dst: Path, f: float) -> Path:
    """A copy of ``src`` whose every operator is ``f`` times faster or more: compute and memory
    efficiencies x f and launch times / f (the residual trees see neither)."""
    shutil.copytree(src, dst)
    data = yaml.safe_load((dst / "profile.yaml").read_text())
    for c in CLASSES:
        model = data["efficiency"][c].get("model") or {}
        for base in [model.get("base"), *(model.get("base_by_dtype") or {}).values()]:
            if base:
                base["compute_efficiency"] *= f
                base["memory_efficiency"] *= f
                base["launch_s"] /= f
    data["launch_overhead"] = {k: v / f for k, v in data["launch_overhead"].items()}
    (dst / "profile.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return dst


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    f=st.floats(1.0, 8.0),
    m=st.integers(1, 4096),
    n=st.sampled_from([256, 1280, 3584, 4096, 11008]),
    k=st.sampled_from([256, 1280, 4096]),
    ctx=st.integers(1, 8192),
    batch=st.integers(1, 64),
    dtype=st.sampled_from(["fp32", "bf16"]),
)
def test_a_faster_profile_never_predicts_a_slower_operator(tmp_path_factory, f, m, n, k, ctx, batch, dtype):
    tmp = tmp_path_factory.mktemp("faster")
    slow = Profile.load(SHIPPED / "ci-vm-cpu", with_samples=False)
    fast = Profile.load(_faster(SHIPPED / "ci-vm-cpu", tmp / "fast", f), with_samples=False)
    gemm = {"m": np.array([m], float), "n": np.array([n], float), "k": np.array([k], float)}
    flops, nbytes = 2.0 * m * n * k, 2.0 * (m * k + n * k + m * n)
    heads, head_dim = 8, 128
    attn = {"tokens": np.array([batch], float), "ctx": np.array([ctx], float), "batch": np.array([batch], float),
            "heads": np.array([heads], float), "kv_heads": np.array([2.0]), "head_dim": np.array([head_dim], float)}  # fmt: skip
    a_flops, a_bytes = 4.0 * batch * ctx * heads * head_dim, 2.0 * 2 * batch * ctx * 2 * head_dim
    elem = {"numel": np.array([m * n], float), "op": np.array(["input_norm"])}
    for cls, shape, fl, by in (("gemm", gemm, flops, nbytes), ("attn_decode", attn, a_flops, a_bytes),
                               ("elementwise", elem, 5.0 * m * n, 4.0 * m * n)):  # fmt: skip
        t_slow = slow.predict_time(cls, [fl], [by], shape, dtype)[0]
        t_fast = fast.predict_time(cls, [fl], [by], shape, dtype)[0]
        assert math.isfinite(t_fast) and 0 < t_fast <= t_slow * (1 + 1e-12), (cls, f, t_fast, t_slow)


@pytest.mark.parametrize("f", [1.0, 1.3, 4.0])
def test_a_faster_profile_never_predicts_a_slower_run(tmp_path, f):
    """End to end on the CPU of the CI VM: every request's first token and finish come no later."""
    from simkit.scenario import load_scenario
    from simkit.simulate import simulate

    fast = _faster(SHIPPED / "ci-vm-cpu", tmp_path / "fast", f)
    text = ("name: s\nhardware: ci-vm\nmodel: llama-2-7b\nplan: {batching: {policy: continuous, max_num_seqs: 4}, "
            "execution: {device: cpu}}\nworkload: {synthetic: {num_requests: 6, arrival: {process: poisson, rate: 0.5}, "
            "lengths: {input: {dist: uniform, low: 16, high: 300}, output: {dist: uniform, low: 1, high: 12}}}}\n")  # fmt: skip
    (tmp_path / "s.yaml").write_text(text)
    runs = {}
    for name, cal in (("slow", SHIPPED / "ci-vm-cpu"), ("fast", fast)):
        try:
            runs[name] = simulate(load_scenario(tmp_path / "s.yaml", [f"calibration={cal}"]), record_iterations=False)
        except SimkitError as e:  # pragma: no cover - the scenario is valid
            pytest.fail(str(e))
    a, b = runs["slow"].table, runs["fast"].table
    assert np.all(np.isfinite(b.finish))
    assert np.all(b.first_token - b.arrival <= (a.first_token - a.arrival) * (1 + 1e-12) + 1e-15)
    assert np.all(b.finish <= a.finish * (1 + 1e-12) + 1e-15)
    if f == 1.0:
        assert np.array_equal(a.finish, b.finish)
    else:
        assert np.all(b.finish - b.arrival < a.finish - a.arrival)


@pytest.mark.parametrize(
    "path, value",
    [("ssd.read.by_block_and_depth.0", -1), ("ssd.read.by_block_and_depth", "x"), ("ssd.read.by_block_and_depth.1.block_size", 0),
     ("ssd.write.by_block_and_depth.0.queue_depth", 1.5), ("ssd.read", 3), ("links.host_memcpy", [1])],
)
def test_a_malformed_measured_link_entry_is_refused(tmp_path, path, value):
    """Before: ``by_block_and_depth: [-1, ...]`` was a TypeError in cost.links.measured_links
    ('int' object is not subscriptable) when the run built its links."""
    p = _copy(tmp_path)
    _edit(p, path, value)
    _refused(p, path)


def test_a_symlink_loop_named_by_a_scenario_is_a_clean_error(tmp_path, capsys):
    """Before: deployment.resolve_calibration's Path.resolve raised RuntimeError('Symlink loop')."""
    from simkit.cli import main

    p = tmp_path / "p"
    p.mkdir()
    (p / "profile.yaml").symlink_to(p / "profile.yaml")
    (tmp_path / "s.yaml").write_text("name: s\nhardware: ci-vm\nmodel: llama-2-7b\nworkload: {batch: {num_prompts: 2, "
                                     "input_tokens: 64, output_tokens: 4}}\nplan: {batching: {policy: static}, execution: "
                                     "{device: cpu}}\n")  # fmt: skip
    code = main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--set", f"calibration={p / 'profile.yaml'}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(p / "profile.yaml") in err[0], err


@pytest.mark.parametrize(
    "path, value",
    [("device.speed_sentinel.slow_stretches.samples", "x"), ("device.speed_sentinel.slow_stretches.kept_much_slower", float("nan")),
     ("device.speed_sentinel.slow_stretches.warn_slowdown", -0.1), ("device.speed_sentinel.slow_stretches", [1]),
     ("device.speed_sentinel", 5), ("device.contention.still_contended", "x"), ("device.contention.samples_checked", -3),
     ("device.contention", "busy"), ("device.openmp_env", [1])],
)
def test_malformed_run_records_are_refused(tmp_path, path, value):
    """`simkit validate` warns from these records (bench.speed_note, contention_note): a string
    count was a ValueError traceback, a NaN count silently no warning."""
    p = _copy(tmp_path)
    _edit(p, "device.speed_sentinel", {"slow_stretches": {"samples": 790, "kept_much_slower": 3, "warn_slowdown": 0.1}})
    _edit(p, "device.contention", {"samples_checked": 790, "still_contended": 2})
    Profile.load(p, with_samples=False)
    _edit(p, path, value)
    _refused(p, path)


# ---------------------------------------------------------------------------------------------
# calibrate / validate command lines: what would only fail after minutes of measuring
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opt", ["--out", "--ssd-dir"])
def test_calibrate_refuses_an_empty_folder_option(opt, capsys, tmp_path, monkeypatch):
    """Before: `--out ''` silently wrote to the per-user default, `--ssd-dir ''` measured the
    working folder's disk."""
    from simkit.calibrate.cli_calibrate import main

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert main(["--device", "cpu", opt, ""]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and opt in err[0] and "empty" in err[0], err


@pytest.mark.parametrize("where", ["", "@/", "@/f.txt/v.json"])
def test_validate_checks_its_json_path_before_measuring(where, capsys, tmp_path):
    """Before: a folder, or a path below a file, failed with a traceback after the whole
    validation (minutes of measuring); an empty one wrote nothing, silently."""
    from simkit.calibrate.validate import main

    (tmp_path / "f.txt").write_text("x")
    path = where.replace("@", str(tmp_path))
    assert main(["--profile", str(SHIPPED / "ci-vm-cpu"), "--json", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--json" in err[0], err


@pytest.mark.parametrize("path, value", [("device.dtypes", -1e30), ("device.dtypes", "bf16"), ("device.dtypes", [1, 2]),
                                         ("device.memory_bytes", "x"), ("device.memory_bytes", -5)])
def test_malformed_device_dtypes_or_memory_are_refused(tmp_path, path, value):
    """Before: ``dtypes: -1e30`` was a TypeError when a run checked its compute dtype was measured
    (deployment.unmeasured_dtype_warning); ``dtypes: bf16`` read as the dtypes b, f, 1, 6;
    ``memory_bytes: x`` a ValueError in simkit validate."""
    p = _copy(tmp_path)
    _edit(p, path, value)
    _refused(p, path)


def test_a_tiny_profile_named_explicitly_warns(tmp_path):
    """`calibration: auto` never picks a `simkit calibrate --tiny` profile; one named by its path
    was used without a word (robust12's --tiny run predicted steps ~160x off). Now the run warns."""
    from simkit.cost.profile import resolve_calibration

    folder = _copy(tmp_path)
    _, _, warn = resolve_calibration(str(folder / "profile.yaml"), "cpu", "ci-vm")
    assert warn is None or "--tiny" not in warn
    _edit(folder, "device.suite", "tiny")
    _, _, warn = resolve_calibration(str(folder / "profile.yaml"), "cpu", "ci-vm")
    assert warn is not None and "simkit calibrate --tiny" in warn and "not for predictions" in warn
