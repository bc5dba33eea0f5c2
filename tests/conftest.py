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
    iteration log, the links' busy periods, every summary figure but ``skip`` and every
    inter-token gap the TBT histogram took (:func:`assert_same_gaps`: in order, or as a multiset
    between the fast and the reference engine) (the differential tests' oracle check: the
    reference engine against a fast path, the fused loop against the stepping path)."""
    for col in RESULT_COLUMNS:
        x, y = getattr(a.table, col), getattr(b.table, col)
        assert x.dtype == y.dtype, col
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), col
    assert a.iterations == b.iterations
    assert a.link_busy == b.link_busy
    sa = _plain({k: v for k, v in a.summary.items() if k not in skip})
    sb = _plain({k: v for k, v in b.summary.items() if k not in skip})
    assert repr(sa) == repr(sb), _first_difference(sa, sb)
    for r in (a, b):
        assert hasattr(r, "tbt_gaps"), "a run made without record_tbt_gaps() (tests/conftest.py): its gaps cannot be compared"
    assert_same_gaps(a, b)


def engine_family(res) -> str:  # type: ignore[no-untyped-def]
    """``reference`` for a run of the reference engine, ``fast`` for one of the fast engine (the
    fused loop, stepped, offloaded or pipelined), from ``summary["engine_path"]``."""
    return "reference" if res.summary["engine_path"].startswith("reference") else "fast"


def assert_same_gaps(a, b) -> None:  # type: ignore[no-untyped-def]
    """The two runs' histograms took the same inter-token gaps (recorded by
    :func:`record_tbt_gaps`; the summary's TBT figures are read from 1%-wide bins and would not
    show a gap off by less than a bin).

    - Runs of the same engine family (the fused loop against the stepping path, or any two fast
      or two reference runs): every gap and its weight in the same order, as bytes.
    - The fast engine against the reference engine: the same multiset of gaps, each counted by its
      weight (whole numbers: sequences), as sorted bytes. The order legitimately differs: the fast
      engine pushes a group of equal gaps once, weighted by the group's size, where the reference
      pushes each sequence's gap with weight 1 (``FastEngine._tbt_groups``, the pipelined and
      offloaded steps), and within one step it pushes the sequences whose last token came at the
      last step first, then the newcomers by the time of their last token, where the reference
      takes the decode set's order (e.g. tests/test_fast_disagg.py's slow contended link, nvlink
      x0.05, 150 blocks, 200 req/s: two gaps of one step swapped, first at gap 1,467 of 68,378).
      The histogram's bins, total weight and maximum do not depend on the order (whole-number
      weights add exactly); only its running ``sum`` (not in the summary) is summed in another
      order (docs/performance.md, "Exactness of the inter-token gaps")."""
    (va, wa), (vb, wb) = a.tbt_gaps, b.tbt_gaps
    fa, fb = engine_family(a), engine_family(b)
    if fa == fb:
        if va.tobytes() != vb.tobytes() or wa.tobytes() != wb.tobytes():
            n = min(len(va), len(vb))
            d = np.flatnonzero((va[:n] != vb[:n]) | (wa[:n] != wb[:n]))
            k = int(d[0]) if len(d) else n
            got = [(float(v[k]), float(w[k])) if k < len(v) else None for v, w in ((va, wa), (vb, wb))]
            raise AssertionError(f"inter-token gaps ({fa} runs, {len(va)} and {len(vb)} pushed) first differ at gap {k}: "
                                 f"(gap, weight) {got[0]!r} != {got[1]!r}")  # fmt: skip
        return
    for w in (wa, wb):
        assert np.array_equal(w, np.floor(w)) and (w >= 1).all(), "gap weights are not whole numbers >= 1"
    ea, eb = np.sort(np.repeat(va, wa.astype(np.int64))), np.sort(np.repeat(vb, wb.astype(np.int64)))
    if ea.tobytes() != eb.tobytes():
        n = min(len(ea), len(eb))
        d = np.flatnonzero(ea[:n] != eb[:n])
        k = int(d[0]) if len(d) else n
        raise AssertionError(f"inter-token gaps (fast against reference, as sorted multisets of {len(ea)} and {len(eb)}) "
                             f"first differ at the {k}-th smallest: "
                             f"{float(ea[k]) if k < len(ea) else None!r} != {float(eb[k]) if k < len(eb) else None!r}")  # fmt: skip


def record_tbt_gaps() -> None:
    """Record every inter-token gap a run's histogram takes (all of them pass through
    ``TBTHistogram.add``), in order, with its weight, on the run's :class:`Result` as
    ``tbt_gaps`` (two float64 arrays): patches ``simulate``'s body, the histogram's ``add``, a new
    ``Cluster`` (a pipeline conflict's rerun starts the recording again) and the fused loop (one
    that stops wrote nothing: its gaps are dropped). Idempotent; the state lives on the patched
    functions (pytest imports this file both as ``conftest`` and ``tests.conftest``)."""
    import simkit.engine.cluster as cluster_mod
    import simkit.simulate as simulate_mod
    from simkit.engine.state import TBTHistogram

    if getattr(TBTHistogram.add, "gap_log", None) is not None:
        return
    log: list[tuple[list[np.ndarray], list[np.ndarray]]] = []
    """One (gaps, weights) per ``simulate`` call in progress (innermost last)."""
    add, init, fused, inner = TBTHistogram.add, cluster_mod.Cluster.__init__, cluster_mod.run_fused, simulate_mod._simulate

    def recording_add(self, values, weight=1.0):  # type: ignore[no-untyped-def]
        if log:
            v = np.array(values, dtype=np.float64).ravel()
            log[-1][0].append(v)
            log[-1][1].append(np.broadcast_to(np.asarray(weight, dtype=np.float64), v.shape).copy())
        return add(self, values, weight)

    def recording_init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if log:
            log[-1][0].clear()
            log[-1][1].clear()
        init(self, *args, **kwargs)

    def recording_fused(*args, **kwargs):  # type: ignore[no-untyped-def]
        mark = (len(log[-1][0]), len(log[-1][1])) if log else None
        stopped = fused(*args, **kwargs)
        if stopped is not None and mark is not None:
            del log[-1][0][mark[0]:], log[-1][1][mark[1]:]
        return stopped

    def recording_simulate(*args, **kwargs):  # type: ignore[no-untyped-def]
        log.append(([], []))
        try:
            res = inner(*args, **kwargs)
        finally:
            vals, wts = log.pop()
        res.tbt_gaps = (np.concatenate(vals) if vals else np.zeros(0), np.concatenate(wts) if wts else np.zeros(0))
        return res

    recording_add.gap_log = log  # type: ignore[attr-defined]
    TBTHistogram.add = recording_add  # type: ignore[method-assign]
    cluster_mod.Cluster.__init__ = recording_init  # type: ignore[method-assign]
    cluster_mod.run_fused = recording_fused
    simulate_mod._simulate = recording_simulate


@pytest.fixture(autouse=True, scope="session")
def _recorded_tbt_gaps():
    """Every run of the test session records its inter-token gaps (:func:`record_tbt_gaps`), which
    :func:`assert_same_outputs` compares."""
    record_tbt_gaps()
    yield


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
