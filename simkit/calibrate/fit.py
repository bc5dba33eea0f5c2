"""Fitted efficiency models: measured samples -> a model of operator time that generalises across shapes.

One model per operator class (``gemm``, ``elementwise``, ``attn_prefill``, ``attn_decode``), two
stages, both fitted in log space (relative error is what matters from 1 us to 10 ms):

1. **Roofline base** (4 readable parameters): ``t = c0 + ((F / (P*ec))^q + (B / (W*em))^q)^(1/q)``
   with ``F``/``B`` the operator's FLOPs/bytes, ``P``/``W`` the device's peak FLOP/s and bytes/s,
   ``c0`` a fixed launch/latency cost, ``ec``/``em`` the achieved fraction of peak compute/memory
   and ``q`` how sharply the two regimes meet. Fitted by robust (soft-L1) least squares on
   ``log t``. It extrapolates sensibly far outside the measured shapes.
2. **Shape residual** (gradient-boosted regression trees, scikit-learn's
   ``HistGradientBoostingRegressor``) on ``log(t_measured / t_base)`` from shape features: for
   GEMMs log m, n, k, arithmetic intensity, weight size, n/k, and wave quantisation
   (``ceil(m/tm) * ceil(n/tn)`` tiles over the SM count for tm in 64/128/256, tn in 128/256, as
   tile counts and as the fill fraction of the last wave); for elementwise operators the kernel
   kind (norm, activation, RoPE, add, embedding, ...), numel and bytes per element; for attention
   tokens, context, batch, heads, KV heads and head_dim. Trees capture the cuBLAS kernel-choice
   cliffs a smooth formula cannot; the base keeps them honest outside the data.

Why this model (measured, see docs/fidelity.md): on the Vidur H100/A100/A40 measurements a model
left out of the fit is predicted with a lower error by base+trees than by the base alone, by
trees alone, or by k-nearest-neighbours in (log m, log n, log k) (which wins only where the
left-out model shares exact shapes with another one). Fitting is deterministic (fixed seed).

This module only fits. The features, the base, the trees and the fitted class models are
evaluated by :mod:`simkit.cost.profile` (numpy only: no scikit-learn needed to load or use a
profile; predictions memoised per distinct operator shape), and written by
:mod:`simkit.calibrate.store`: the base parameters into ``profile.yaml``, the trees into
``models.json`` beside it (plain JSON arrays: feature, threshold, left, right, value per node).

``fit_profile`` is the single entry point from raw samples (``simkit.calibrate.bench`` rows, or
the Vidur import) to a :class:`simkit.cost.profile.Profile`: it fits every class present
(operator classes, launch overhead, copies/links, memory streams, SSD, collectives) and leaves
absent ones as documented defaults.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from simkit.cost.profile import (
    ELEMENTWISE_KIND,
    FEW_ROWS,
    SHAPE_KEYS,
    ClassModel,
    Forest,
    Profile,
    Roof,
    RooflineBase,
    elementwise_kind,
    features,
    roof_from_device,
    sig,
)
from simkit.errors import CalibrationError

OP_CLASSES = ("gemm", "elementwise", "attn_prefill", "attn_decode")

GBM_PARAMS: dict[str, Any] = {
    "max_iter": 100,
    "learning_rate": 0.15,
    "max_leaf_nodes": 31,
    "max_depth": 8,
    "min_samples_leaf": 20,
    "l2_regularization": 5.0,
    "max_features": 0.5,
    "early_stopping": True,
    "validation_fraction": 0.1,
    "n_iter_no_change": 10,
    "random_state": 0,
}
"""Residual trees' hyper-parameters (chosen by leave-one-model-out error on the Vidur data)."""

MIN_SAMPLES_FOR_TREES = 30
BASE_PER_DTYPE_CLASSES = ("attn_prefill", "attn_decode")
"""Classes fitted with a roofline base per dtype (ClassModel.base_by_dtype) when the samples hold
more than one dtype: a CPU's attention kernels differ by dtype (bf16 decode attention on the CI VM
runs 1.4-6.7x slower than fp32, median 4.3x, so one efficiency for both left leave-one-head-shape-out
errors of 20-27% median; docs/fidelity.md)."""
MIN_SAMPLES_PER_DTYPE_BASE = 12
"""Fewest samples of every dtype for per-dtype bases (a base has 4 parameters)."""


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def ape_stats(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    """Median and 90th-percentile absolute percentage error (fractions) and the count."""
    pred = np.asarray(pred, dtype=np.float64)
    meas = np.asarray(meas, dtype=np.float64)
    if len(meas) == 0:
        return {"median_ape": float("nan"), "p90_ape": float("nan"), "n": 0}
    e = np.abs(pred / meas - 1.0)
    return {"median_ape": float(np.median(e)), "p90_ape": float(np.quantile(e, 0.9)), "n": int(len(e))}


def fit_base(flops: np.ndarray, bytes_: np.ndarray, time_s: np.ndarray, peak: np.ndarray, bw: float) -> RooflineBase:
    from scipy.optimize import least_squares

    F = np.asarray(flops, dtype=np.float64)
    B = np.asarray(bytes_, dtype=np.float64)
    T = np.asarray(time_s, dtype=np.float64)
    lt = np.log(T)
    t_min = float(np.min(T))

    def model(p: np.ndarray, digits: int | None = None) -> RooflineBase:
        vals = [float(p[0]) ** 2, float(np.exp(p[1])), float(np.exp(p[2])), float(np.exp(p[3]))]
        if digits:
            vals = [sig(v, digits) for v in vals]
        return RooflineBase(*vals)

    def resid(p: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(model(p).time(F, B, peak, bw), 1e-300)) - lt

    x0 = np.array([math.sqrt(max(0.5 * t_min, 1e-9)), math.log(0.6), math.log(0.7), math.log(3.0)])
    r = least_squares(resid, x0, loss="soft_l1", f_scale=0.05, bounds=([0, -12, -12, -1.5], [1.0, 3, 3, 3.5]))
    return model(r.x, digits=6)


# ---------------------------------------------------------------------------------------------
# Stage 2: residual trees (evaluated by simkit.cost.profile.Forest)
# ---------------------------------------------------------------------------------------------
def _forest_from_sklearn(model: Any) -> Forest:
    """Flatten a fitted HistGradientBoostingRegressor (squared error, no categorical features)."""
    feats, thr, left, right, val, roots = [], [], [], [], [], []
    off = 0
    depth = 0
    for (pred,) in model._predictors:
        nodes = pred.nodes
        k = len(nodes)
        roots.append(off)
        leaf = nodes["is_leaf"].astype(bool)
        feats.append(np.where(leaf, -1, nodes["feature_idx"]).astype(np.int64))
        thr.append(np.where(leaf, 0.0, nodes["num_threshold"]).astype(np.float64))
        left.append(np.where(leaf, 0, nodes["left"]).astype(np.int64) + off)
        right.append(np.where(leaf, 0, nodes["right"]).astype(np.int64) + off)
        val.append(np.where(leaf, nodes["value"], 0.0).astype(np.float64))
        depth = max(depth, int(nodes["depth"].max()))
        off += k
    base = float(np.asarray(model._baseline_prediction).reshape(-1)[0])
    return Forest(
        np.concatenate(feats), np.concatenate(thr), np.concatenate(left), np.concatenate(right),
        np.concatenate(val), np.asarray(roots, dtype=np.int64), base, depth,
    )  # fmt: skip


def fit_forest(X: np.ndarray, y: np.ndarray, params: Mapping[str, Any] | None = None) -> Forest:
    from sklearn.ensemble import HistGradientBoostingRegressor

    p = dict(GBM_PARAMS)
    n = len(y)
    p["min_samples_leaf"] = int(max(3, min(p["min_samples_leaf"], n // 40)))
    if n < 400:
        p["max_leaf_nodes"] = 15
        p["early_stopping"] = False
    p.update(params or {})
    # one thread: the fits are small (< 1 s), and OpenMP threads spin-waiting on a shared machine
    # cost far more than they gain; results do not depend on it
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        model = HistGradientBoostingRegressor(**p).fit(X, y)
    return _forest_from_sklearn(model)


def prepare(samples: Any, op_class: str) -> Any:
    """The usable rows of one operator class (positive time, something to move or compute)."""
    df = samples[samples.op_class == op_class].copy()
    if "bytes_moved" in df:
        bm = df["bytes_moved"].astype(float)
        if "bytes" in df:
            bm = bm.fillna(df["bytes"].astype(float))
        df["bytes_moved"] = bm
    else:
        df["bytes_moved"] = df["bytes"].astype(float)
    df["flops"] = df["flops"].astype(float).fillna(0.0)
    df["time_s"] = df["time_s"].astype(float)
    ok = np.isfinite(df.time_s) & (df.time_s > 0) & ((df.flops > 0) | (df.bytes_moved > 0))
    if "dtype" not in df:
        df["dtype"] = ""
    df["dtype"] = df["dtype"].fillna("").astype(str)
    return df[ok.values]


def _shape_of(df: Any, op_class: str) -> dict[str, np.ndarray]:
    shape = {k: df[k].astype(float).values for k in SHAPE_KEYS[op_class] if k in df}
    if "op" in df:
        ops = df["op"].astype(str).values
        if "kernel" in df:  # samples of a non-default kernel (simkit.cost.ops.elementwise_kernels)
            kern = df["kernel"].fillna("").astype(str).values
            ops = np.array([f"{o}@{k}" if k else o for o, k in zip(ops, kern)], dtype=object)
        shape["op"] = ops
    return shape


def fit_class(
    df: Any,
    op_class: str,
    roof: Roof,
    *,
    trees: bool | None = None,
    params: Mapping[str, Any] | None = None,
    score: bool = True,
    fallback: bool = True,
    row_regimes: bool = False,
    bytes_only_base: bool = False,
) -> ClassModel:
    """Fit one class on its prepared rows (see :func:`prepare`). ``score``: compute the in-sample
    error; ``fallback``: for elementwise rows with token counts, also fit the trees used for shapes
    without one (leave-one-out evaluation skips both). ``row_regimes`` (GEMM on a CPU): one set of
    residual trees for GEMMs with at most FEW_ROWS rows and one for longer ones, each fitted on
    its own rows, when both have enough samples (one shared roofline base). ``bytes_only_base``:
    the base is ``launch + bytes / (bandwidth x memory efficiency)`` (ClassModel.base_bytes_only;
    GPU elementwise, see :func:`bytes_only_base`)."""
    if len(df) == 0:
        raise CalibrationError(f"no usable samples of class {op_class!r}")
    F = df.flops.values.astype(float)
    B = df.bytes_moved.values.astype(float)
    T = df.time_s.values.astype(float)
    peak = roof.peaks(df.dtype.values)
    if bytes_only_base:
        b = fit_base(np.zeros_like(F), B, T, peak, roof.mem_bandwidth)
        base = RooflineBase(b.launch_s, 1.0, b.memory_efficiency, 1.0)  # the compute term is unused
    else:
        base = fit_base(F, B, T, peak, roof.mem_bandwidth)
    kinds: tuple[str, ...] = ()
    shape = _shape_of(df, op_class)
    if op_class == "elementwise":
        kinds = tuple(sorted({elementwise_kind(o) for o in shape.get("op", [])}))
    cm = ClassModel(op_class, roof, base, None, kinds, base_bytes_only=bytes_only_base)
    dts = [str(d) for d in df.dtype.values]
    if op_class in BASE_PER_DTYPE_CLASSES:
        counts = {d: dts.count(d) for d in sorted(set(dts))}
        if len(counts) > 1 and min(counts.values()) >= MIN_SAMPLES_PER_DTYPE_BASE:
            for d in counts:
                sel = df.dtype.values == d
                cm.base_by_dtype[d] = fit_base(F[sel], B[sel], T[sel], peak[sel], roof.mem_bandwidth)
    use_trees = (len(df) >= MIN_SAMPLES_FOR_TREES) if trees is None else trees
    if use_trees:
        y = np.log(T / cm.base_time(F, B, peak, dts))
        tok = shape.get("tokens")
        with_tok = op_class == "elementwise" and tok is not None and bool(np.all(np.isfinite(tok) & (tok > 0)))
        if with_tok:
            cm.forest_tokens = fit_forest(features(op_class, F, B, shape, peak, roof, kinds, True), y, params)
        X = features(op_class, F, B, shape, peak, roof, kinds)
        many = shape["m"] > FEW_ROWS if (row_regimes and op_class == "gemm" and "m" in shape) else None
        if many is not None and min(int(many.sum()), int((~many).sum())) >= MIN_SAMPLES_FOR_TREES:
            cm.forest = fit_forest(X[~many], y[~many], params)
            cm.forest_many_rows = fit_forest(X[many], y[many], params)
        elif not with_tok or fallback:
            cm.forest = fit_forest(X, y, params)
    # launch overhead: the base's fixed cost, but never more than what 99% of the operators
    # leave over their ideal time (so ideal/efficiency + overhead reproduces tiny operators too)
    slack = T - roof.ideal(F, B, peak)
    cm.launch_overhead = sig(max(0.0, min(base.launch_s, float(np.quantile(slack, 0.01)))))
    if score:
        pred = cm.predict_time(F, B, shape, list(df.dtype.values), memo=False)
        cm.fit_error = ape_stats(pred, T)
    return cm


def bytes_only_base(op_class: str, device: Mapping[str, Any]) -> bool:
    """Whether ``op_class`` on ``device`` is fitted with a base on bytes moved alone: elementwise
    operators of a GPU (``device["kind"]`` other than ``cpu``). They are memory-bound, and their
    FLOPs per element are notional (5 for a norm, 8 for an activation, 3 for RoPE), so a base that
    counts them predicts a kernel kind the fit has not seen by its FLOP count: on the Vidur data,
    leaving FLOPs out improves phi-2's held-out elementwise error on all three GPUs and moves no
    other fold by more than 0.1 point (docs/fidelity.md). A CPU's activation and norm kernels are
    not known to be memory-bound (exp and tanh on vector units), so CPU profiles keep both terms."""
    return op_class == "elementwise" and str(device.get("kind", "gpu")) != "cpu"


def leave_one_out_predictions(
    samples: Any,
    group_col: str = "source",
    *,
    op_class: str = "gemm",
    device: Mapping[str, Any] | None = None,
    ops: Iterable[str] | None = None,
    groups: Iterable[str] | None = None,
) -> Any:
    """The held-out predictions behind :func:`leave_one_out`: for each group, fit ``op_class`` on
    every other group and predict the group's rows (only ``ops`` rows when given). Returns the
    prepared rows (see :func:`prepare`) of every scored group, with ``group`` and ``pred``
    (predicted seconds) columns, groups in order."""
    import pandas as pd

    df = prepare(samples, op_class)
    roof = roof_from_device(device or {}, samples=samples)
    parts = []
    want = list(groups) if groups is not None else sorted(df[group_col].astype(str).unique())
    for g in want:
        te_mask = (df[group_col].astype(str) == g).to_numpy(copy=True)
        if ops is not None:
            te_mask &= df.op.isin(list(ops)).to_numpy()
        tr = df[(df[group_col].astype(str) != g).values]
        te = df[te_mask]
        if len(te) == 0 or len(tr) == 0:
            continue
        cm = fit_class(tr, op_class, roof, score=False, fallback=False, bytes_only_base=bytes_only_base(op_class, device or {}))
        pred = cm.predict_time(te.flops.values, te.bytes_moved.values, _shape_of(te, op_class), list(te.dtype.values), memo=False)
        parts.append(te.assign(group=g, pred=pred))
    return pd.concat(parts) if parts else df.iloc[:0].assign(group="", pred=0.0)


def leave_one_out(
    samples: Any,
    group_col: str = "source",
    *,
    op_class: str = "gemm",
    device: Mapping[str, Any] | None = None,
    ops: Iterable[str] | None = None,
    groups: Iterable[str] | None = None,
    datasheet: bool = False,
) -> Any:
    """Leave-one-group-out error of ``op_class``: fit on every other group, predict the left-out
    one. Returns a DataFrame (group, median_ape, p90_ape, n[, datasheet_median_ape, datasheet_p90_ape]).

    ``ops`` restricts the scored rows (the fit always uses every row of the class); ``datasheet``
    adds the error of :class:`~simkit.cost.efficiency.DatasheetEfficiency` on the same rows."""
    pred = leave_one_out_predictions(samples, group_col, op_class=op_class, device=device, ops=ops, groups=groups)
    return leave_one_out_summary(pred, op_class, roof_from_device(device or {}, samples=samples), datasheet=datasheet)


def leave_one_out_summary(pred: Any, op_class: str, roof: Roof, *, datasheet: bool = False) -> Any:
    """The per-group errors of :func:`leave_one_out_predictions` rows (the table of :func:`leave_one_out`)."""
    import pandas as pd

    rows = []
    for g, te in pred.groupby("group", sort=False):
        row: dict[str, Any] = {"group": g, **ape_stats(te.pred.values, te.time_s.values)}
        if datasheet:
            row.update(datasheet_error(te, op_class, roof))
        rows.append(row)
    return pd.DataFrame(rows)


def datasheet_error(df: Any, op_class: str, roof: Roof) -> dict[str, float]:
    """Error of the documented datasheet defaults on prepared rows."""
    from simkit.cost.efficiency import DatasheetEfficiency

    ds = DatasheetEfficiency()
    peak = roof.peaks(df.dtype.values)
    F, B = df.flops.values, df.bytes_moved.values
    ideal = roof.ideal(F, B, peak)
    eff = np.clip(ds.efficiency(op_class, F, B, {}, peak, roof.mem_bandwidth, ""), 1e-4, 1.0)
    pred = ideal / eff + ds.launch_overhead(op_class)
    s = ape_stats(pred, df.time_s.values)
    return {"datasheet_median_ape": s["median_ape"], "datasheet_p90_ape": s["p90_ape"]}


# ---------------------------------------------------------------------------------------------
# Links, memory streams, SSD, launch overhead
# ---------------------------------------------------------------------------------------------
def fit_latency_bandwidth(nbytes: np.ndarray, time_s: np.ndarray) -> tuple[float, float, dict[str, float]]:
    """Fit ``t = latency + bytes / bandwidth`` minimising relative error; (bandwidth, latency, error)."""
    S = np.asarray(nbytes, dtype=np.float64)
    T = np.asarray(time_s, dtype=np.float64)
    A = np.column_stack([np.ones_like(S), S]) / T[:, None]
    x, *_ = np.linalg.lstsq(A, np.ones_like(T), rcond=None)
    lat, inv_bw = float(x[0]), float(x[1])
    if inv_bw <= 0:  # flat: latency only, bandwidth from the largest transfer
        i = int(np.argmax(S))
        inv_bw = T[i] / max(S[i], 1.0)
        lat = 0.0
    if lat < 0:  # refit bandwidth alone
        inv_bw = float(np.sum(S / T) / np.sum((S / T) ** 2))
        lat = 0.0
    bw = 1.0 / inv_bw
    return bw, lat, ape_stats(lat + S / bw, T)


def _link_kind(row: Any) -> str:
    op = str(row.get("op", ""))
    direction = str(row.get("direction", "") or "")
    if op == "memcpy" or direction == "host":
        return "host_memcpy"
    if op == "d2d" or direction == "d2d":
        return "d2d"
    d = direction if direction in ("h2d", "d2h") else op
    pinned = row.get("pinned")
    try:
        pin = bool(int(float(pinned)))
    except (TypeError, ValueError):
        pin = False
    return f"{d}_{'pinned' if pin else 'pageable'}"


def fit_links(samples: Any) -> dict[str, Any]:
    """``copy`` rows (and ``link`` rows) -> {kind: {bandwidth, latency, fit_error}}."""
    df = samples[samples.op_class.isin(["copy", "link"])]
    out: dict[str, Any] = {}
    if len(df) == 0:
        return out
    kinds = [(_link_kind(r) if r["op_class"] == "copy" else str(r["op"])) for _, r in df.iterrows()]
    df = df.assign(_kind=kinds)
    for kind, g in df.groupby("_kind"):
        S = g["bytes"].astype(float).values
        T = g["time_s"].astype(float).values
        ok = (S > 0) & (T > 0)
        if ok.sum() < 2:
            continue
        bw, lat, err = fit_latency_bandwidth(S[ok], T[ok])
        out[str(kind)] = {"bandwidth": bw, "latency": lat, "fit_error": err}
    return out


def fit_memory(samples: Any) -> dict[str, Any]:
    """``mem_bw`` stream rows -> {op: {bandwidth (largest buffer), latency, fit_error}}."""
    df = samples[samples.op_class == "mem_bw"]
    out: dict[str, Any] = {}
    for op, g in df.groupby("op"):
        S = g["bytes_moved"].astype(float).values
        T = g["time_s"].astype(float).values
        ok = (S > 0) & (T > 0)
        if ok.sum() < 2:
            continue
        bw, lat, err = fit_latency_bandwidth(S[ok], T[ok])
        big = np.argmax(S[ok])
        out[str(op)] = {
            "bandwidth": bw,
            "latency": lat,
            "largest_buffer_bandwidth": float(S[ok][big] / T[ok][big]),
            "fit_error": err,
        }
    return out


def fit_ssd(samples: Any) -> dict[str, Any]:
    """``ssd_read``/``ssd_write``/``ssd_seq_read`` rows (-> ``read``/``write``/``seq_read``) (bytes moved per repetition, time per repetition, block
    size, queue depth) -> bandwidth and per-request latency per (block size, queue depth)."""
    df = samples[samples.op_class.isin(["ssd_read", "ssd_write", "ssd_seq_read"])]
    out: dict[str, Any] = {}
    for cls, g in df.groupby("op_class"):
        key = str(cls).split("_", 1)[1]
        table = []
        for (bs, qd), h in g.groupby(["block_size", "queue_depth"]):
            vol = h["bytes_moved"].astype(float).fillna(h["bytes"].astype(float))
            t = h["time_s"].astype(float)
            bw = float(np.median(vol / t))
            reqs = vol / float(bs)
            lat = float(np.median(t * float(qd) / np.maximum(reqs, 1.0)))  # Little's law
            table.append({"block_size": int(bs), "queue_depth": int(qd), "bandwidth": bw, "latency": lat})
        if table:
            out[key] = {
                "bandwidth": max(r["bandwidth"] for r in table),
                "latency": min(r["latency"] for r in table if r["queue_depth"] == min(x["queue_depth"] for x in table)),
                "by_block_and_depth": table,
            }
    return out


def fit_launch(samples: Any) -> dict[str, float]:
    """``launch`` rows (canonical op names) -> median seconds per operator class."""
    from simkit.cost.ops import OP_CLASS

    df = samples[samples.op_class == "launch"]
    out: dict[str, list[float]] = {}
    for _, r in df.iterrows():
        cls = OP_CLASS.get(str(r["op"]), "elementwise" if str(r["op"]) in ELEMENTWISE_KIND else None)
        if cls is not None and float(r["time_s"]) > 0:
            out.setdefault(cls, []).append(float(r["time_s"]))
    return {k: float(np.median(v)) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------
UNMEASURED_NOTE = "no {cls} timings in the source data: datasheet default efficiency, not a measurement"


def fit_profile(
    samples: Any,
    device: Mapping[str, Any],
    *,
    name: str,
    source: str,
    license: str,
    notes: Mapping[str, str] | None = None,
    cross_validation: Mapping[str, Any] | None = None,
) -> Any:
    """Fit every class present in ``samples`` (a DataFrame in the samples.csv format) and return a
    :class:`simkit.cost.profile.Profile`. Classes without samples keep the datasheet defaults
    (``measured: false``). ``notes`` adds a note per class; ``cross_validation`` per class is stored
    as is (see simkit.calibrate.vidur)."""
    from simkit.cost.efficiency import DatasheetEfficiency

    if samples is None or len(samples) == 0:
        raise CalibrationError("no samples to fit")
    for col in ("op_class", "time_s"):
        if col not in samples:
            raise CalibrationError(f"samples lack the column {col!r}")
    dev = dict(device)
    roof = roof_from_device(dev, samples=samples)
    roof = Roof({k: sig(v) for k, v in roof.peak_flops.items()}, sig(roof.mem_bandwidth), roof.sm_count)
    dev.setdefault("kind", "gpu")
    dev["peak_flops"] = {k: float(v) for k, v in roof.peak_flops.items()}
    dev["mem_bandwidth"] = float(roof.mem_bandwidth)
    dev.setdefault("sm_count", int(roof.sm_count))
    if "dtypes" not in dev:
        dts = sorted({str(d) for d in samples[samples.op_class.isin(OP_CLASSES)].get("dtype", []) if isinstance(d, str) and d})
        if dts:
            dev["dtypes"] = dts
    models: dict[str, ClassModel] = {}
    for cls in OP_CLASSES:
        df = prepare(samples, cls)
        if len(df) >= 3:
            models[cls] = fit_class(df, cls, roof, row_regimes=dev.get("kind") == "cpu", bytes_only_base=bytes_only_base(cls, dev))
    launch = fit_launch(samples)
    ds = DatasheetEfficiency()
    for cls, cm in models.items():
        if cls in launch:
            cm.launch_overhead = sig(launch[cls])
    overheads = {cls: (models[cls].launch_overhead if cls in models else ds.launch_overhead(cls)) for cls in OP_CLASSES}
    note_map = dict(notes or {})
    for cls in OP_CLASSES:
        if cls not in note_map:
            note_map[cls] = (
                f"fitted on {models[cls].fit_error['n']} samples" if cls in models else UNMEASURED_NOTE.format(cls=cls)
            )
    return Profile(
        name=name,
        device=dev,
        source=source,
        license=license,
        samples=samples.reset_index(drop=True),
        models=models,
        overheads=overheads,
        notes=note_map,
        links=fit_links(samples),
        memory=fit_memory(samples),
        ssd=fit_ssd(samples),
        collectives=fit_collectives_from_samples(samples),
        threads=dev.get("threads"),
        cross_validation=dict(cross_validation or {}),
    )


def fit_collectives_from_samples(samples: Any) -> dict[str, Any]:
    """``collective`` rows (op = all_reduce/send_recv/..., bytes, num_gpus, topology) -> the
    profile's ``collectives`` section (see :func:`simkit.cost.collectives.fit_collective`)."""
    from simkit.cost.collectives import fit_collective

    df = samples[samples.op_class == "collective"]
    out: dict[str, Any] = {}
    if len(df) == 0:
        return out
    topo = df["topology"].fillna("unknown").astype(str) if "topology" in df else np.full(len(df), "unknown")
    df = df.assign(_topo=topo)
    for (t, op, p), g in df.groupby(["_topo", "op", "num_gpus"]):
        fitted = fit_collective(str(op), g["bytes"].astype(float).values, g["time_s"].astype(float).values, int(p))
        entry = fitted.to_dict()
        if "devices_per_node" in g and g["devices_per_node"].notna().any():
            entry["devices_per_node"] = int(g["devices_per_node"].dropna().iloc[0])
        out.setdefault(str(t), {}).setdefault(str(op), {})[int(p)] = entry
    return out
