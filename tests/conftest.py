import warnings
from pathlib import Path

import numpy as np
import pytest

from simkit.scenario import scenario_from_dict


def uniform_workload(n, rate, inp, out):
    """A synthetic workload of ``n`` Poisson arrivals at ``rate``/s with uniform (low, high) lengths."""
    return {
        "synthetic": {
            "num_requests": n,
            "arrival": {"process": "poisson", "rate": rate},
            "lengths": {
                "input": {"dist": "uniform", "low": inp[0], "high": inp[1]},
                "output": {"dist": "uniform", "low": out[0], "high": out[1]},
            },
        }
    }


def make_scenario(**over):
    """A small scenario dict with sensible defaults; keyword args replace top-level keys."""
    data = {
        "name": "test",
        "hardware": "dgx-h100",
        "model": "llama-2-7b",
        "workload": {"batch": {"num_prompts": 8, "input_tokens": 128, "output_tokens": 16}},
        "plan": {"precision": {"weights": "fp16", "activations": "fp16", "kv_cache": "fp16"}},
        "calibration": "none",
        "seed": 0,
    }
    data.update(over)
    return data


@pytest.fixture
def scenario():
    def build(**over):
        return scenario_from_dict(make_scenario(**over))

    return build


@pytest.fixture(autouse=True)
def _no_warning_noise():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


@pytest.fixture(autouse=True, scope="session")
def _private_table_cache(tmp_path_factory):
    """Cost tables cached by the tests go to a temporary folder, never the user's cache."""
    import os

    old = os.environ.get("SIMKIT_CACHE_DIR")
    os.environ["SIMKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("simkit-cache"))
    yield
    if old is None:
        os.environ.pop("SIMKIT_CACHE_DIR", None)
    else:
        os.environ["SIMKIT_CACHE_DIR"] = old


@pytest.fixture(autouse=True, scope="session")
def _no_user_profiles(tmp_path_factory):
    """`calibration: auto` searches SIMKIT_PROFILE_PATH and the per-user folder before the shipped
    profiles: the tests see the shipped ones only, never the profiles of whoever runs them."""
    import os

    old = {k: os.environ.get(k) for k in ("SIMKIT_PROFILE_PATH", "XDG_DATA_HOME")}
    os.environ.pop("SIMKIT_PROFILE_PATH", None)
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


RESULT_COLUMNS = ("first_token", "finish", "scheduled", "last_token", "gen", "kv_len", "target", "blocks", "shared_blocks",
                  "cached", "preemptions", "swaps", "rejected", "reject_reason", "replica", "hit_tier_tokens")  # fmt: skip
"""Every per-request column of a result table the differential tests compare."""


def assert_same_outputs(a, b, skip=("sim_wall_s", "engine_path")) -> None:  # type: ignore[no-untyped-def]
    """Two simulation results are the same bits: every per-request column (same dtype), the
    iteration log, the links' busy periods and every summary figure but ``skip`` (the differential
    tests' oracle check: the reference engine against a fast path)."""
    for col in RESULT_COLUMNS:
        x, y = getattr(a.table, col), getattr(b.table, col)
        assert x.dtype == y.dtype, col
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), col
    assert a.iterations == b.iterations
    assert a.link_busy == b.link_busy
    sa = _plain({k: v for k, v in a.summary.items() if k not in skip})
    sb = _plain({k: v for k, v in b.summary.items() if k not in skip})
    assert repr(sa) == repr(sb), _first_difference(sa, sb)


def _plain(x):  # type: ignore[no-untyped-def]
    """numpy scalars as Python numbers (the same value and bits; summary.json writes both alike)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    return x.item() if isinstance(x, np.generic) else x


def _first_difference(x, y, path: str = "summary") -> str:  # type: ignore[no-untyped-def]
    if isinstance(x, dict) and isinstance(y, dict):
        if list(x) != list(y):
            return f"{path}: keys {list(x)} != {list(y)}"
        for k in x:
            d = _first_difference(x[k], y[k], f"{path}.{k}")
            if d:
                return d
        return ""
    return "" if repr(x) == repr(y) else f"{path}: {x!r} != {y!r}"


def native_trace_workload(path: Path, times: np.ndarray, inp: np.ndarray, out: np.ndarray) -> dict:
    """Write arrival times (exact: ``repr`` of each float) and lengths as a native trace at ``path``;
    returns the scenario's ``workload`` mapping that replays it."""
    rows = "".join(f"{t!r},{i},{o}\n" for t, i, o in zip(times.tolist(), inp.tolist(), out.tolist()))
    path.write_text("arrival_s,input_tokens,output_tokens\n" + rows)
    return {"trace": {"path": str(path), "format": "native"}}


def load_benchmark(name: str):  # type: ignore[no-untyped-def]
    """The script ``benchmarks/<name>.py`` imported as a module (registered in sys.modules under
    ``name``, so that its dataclasses and pickling find it), for tests of the benchmark tools."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


CPU_SCENARIO = """\
name: s
hardware: ci-vm
model: llama-2-7b
workload: {batch: {num_prompts: 2, input_tokens: 64, output_tokens: 4}}
plan: {batching: {policy: static}, execution: {device: cpu}}
"""
"""A two-prompt static run of Llama-2-7B on the CI VM's CPU, without a calibration key (tests of
profiles and new users' runs add theirs)."""


def shipped_cpu_profile_with(dst: Path, device_key: str, value: object) -> Path:
    """A copy of the shipped CPU profile (calibration/profiles/ci-vm-cpu) in ``dst`` with
    ``device.<device_key>`` set to ``value`` (left as shipped when ``value`` is None); its path."""
    import shutil

    import yaml

    shutil.copytree(Path(__file__).resolve().parents[1] / "calibration" / "profiles" / "ci-vm-cpu", dst)
    f = dst / "profile.yaml"
    if value is not None:
        data = yaml.safe_load(f.read_text())
        data["device"][device_key] = value
        f.write_text(yaml.safe_dump(data, sort_keys=False))
    return dst
