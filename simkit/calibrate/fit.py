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

Persistence: the base parameters are written into ``profile.yaml``; the trees into
``models.json`` beside it (plain JSON arrays: feature, threshold, left, right, value per node),
evaluated here with numpy (no scikit-learn needed to load or use a profile). Predictions are
memoised per distinct operator shape, so a simulator calling with the same shapes again pays a
dictionary lookup (a few microseconds per call); a new shape costs one vectorised pass over the
trees.

``fit_profile`` is the single entry point from raw samples (``simkit.calibrate.bench`` rows, or
the Vidur import) to a :class:`simkit.specs.calibration.Profile`: it fits every class present
(operator classes, launch overhead, copies/links, memory streams, SSD, collectives) and leaves
absent ones as documented defaults.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simkit.errors import CalibrationError
from simkit.specs.hardware import DTYPE_FALLBACK

OP_CLASSES = ("gemm", "elementwise", "attn_prefill", "attn_decode")

# Elementwise kernel kinds: operators that run the same kernel share a kind.
ELEMENTWISE_KIND = {
    "input_norm": "norm",
    "post_attn_norm": "norm",
    "final_norm": "norm",
    "rmsnorm": "norm",
    "layernorm": "layernorm",
    "mlp_act": "act",
    "residual_add": "add",
    "rope": "rope",
    "embedding": "embedding",
    "sampling": "sampling",
}

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


def sig(x: float, digits: int = 6) -> float:
    """``x`` rounded to ``digits`` significant digits (what profile.yaml stores exactly)."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits - 1}e}")


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


# ---------------------------------------------------------------------------------------------
# Device constants the features are computed with
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Roof:
    """The roofline a profile's samples were normalised with (peaks per dtype, bandwidth, SMs)."""

    peak_flops: Mapping[str, float]
    mem_bandwidth: float
    sm_count: int = 1

    def peak(self, dtype: str) -> float:
        d = str(dtype or "")
        if d in self.peak_flops:
            return float(self.peak_flops[d])
        for alt in DTYPE_FALLBACK.get(d, ()):
            if alt in self.peak_flops:
                return float(self.peak_flops[alt])
        return float(max(self.peak_flops.values()))

    def peaks(self, dtypes: Sequence[str] | np.ndarray) -> np.ndarray:
        cache: dict[str, float] = {}
        out = np.empty(len(dtypes))
        for i, d in enumerate(dtypes):
            if d not in cache:
                cache[d] = self.peak(d)
            out[i] = cache[d]
        return out

    def ideal(self, flops: np.ndarray, bytes_: np.ndarray, peak: np.ndarray | float) -> np.ndarray:
        return np.maximum(np.asarray(flops) / peak, np.asarray(bytes_) / self.mem_bandwidth)

    def to_dict(self) -> dict[str, Any]:
        return {
            "peak_flops": {k: float(v) for k, v in self.peak_flops.items()},
            "mem_bandwidth": float(self.mem_bandwidth),
            "sm_count": int(self.sm_count),
        }


def roof_from_device(device: Mapping[str, Any], samples: Any = None) -> Roof:
    """Peaks for a device-facts dict: explicit ``peak_flops``/``mem_bandwidth`` (the CPU suite
    records measured upper bounds), else the catalog item ``device.catalog`` names, else the best
    rates seen in ``samples``."""
    peaks = dict(device.get("peak_flops") or {})
    bw = device.get("mem_bandwidth")
    sm = device.get("sm_count")
    cat_name = device.get("catalog")
    kind = device.get("kind", "gpu")
    if (not peaks or not bw or not sm) and cat_name:
        try:
            from simkit.specs.catalog import default_catalog

            cat = default_catalog()
            if kind == "gpu":
                g = cat.get("gpu", str(cat_name))
                if not peaks:
                    peaks = {
                        d: float(v)
                        for d in ("fp32", "tf32", "fp16", "bf16", "fp8", "int8")
                        if (v := getattr(g.peak_flops, d)) is not None
                    }
                bw = bw or g.memory_bandwidth
                sm = sm or g.sm_count
            else:
                c = cat.get("cpu", str(cat_name))
                mem = cat.get("memory", c.memory_type)
                if not peaks:
                    peaks = {
                        d: float(v)
                        for d in ("fp32", "tf32", "fp16", "bf16", "fp8", "int8")
                        if (v := getattr(c.peak_flops, d)) is not None
                    }
                bw = bw or mem.bandwidth
                sm = sm or c.cores
        except Exception as e:  # a catalog problem must not hide behind a fitting error
            if not (peaks and bw) and samples is None:
                raise CalibrationError(f"cannot find the roofline of device {cat_name!r}: {e}") from None
    if (not peaks or not bw) and samples is not None:
        comp = samples[samples.op_class.isin(OP_CLASSES) & (samples.time_s > 0)]
        if not peaks:
            for dt, g in comp[comp.flops > 0].groupby("dtype"):
                peaks[str(dt)] = float((g.flops / g.time_s).max())
        if not bw:
            mv = comp[comp.bytes_moved > 0]
            bw = float((mv.bytes_moved / mv.time_s).max()) if len(mv) else 1e11
    if not peaks or not bw:
        raise CalibrationError("the device facts give no roofline (peak_flops and mem_bandwidth, or a catalog name)")
    sm = sm or device.get("threads") or 1
    return Roof({str(k): float(v) for k, v in peaks.items()}, float(bw), int(sm))


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------
GEMM_TILES = ((64, 128), (64, 256), (128, 128), (128, 256), (256, 128), (256, 256))


def _col(shape: Mapping[str, Any], key: str, n: int, default: float = 1.0) -> np.ndarray:
    v = shape.get(key)
    if v is None:
        return np.full(n, default)
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.shape[0] != n:
        a = np.broadcast_to(a, (n,)).astype(np.float64)
    return np.where(np.isfinite(a) & (a > 0), a, default)


def _lg(x: np.ndarray) -> np.ndarray:
    return np.log2(np.maximum(x, 1e-30))


def feature_names(op_class: str, kinds: Sequence[str] = (), with_tokens: bool = False) -> list[str]:
    if op_class == "gemm":
        names = ["log_m", "log_n", "log_k", "log_mnk", "log_mn_nk_mk", "log_shape_intensity", "log_peak", "log_nk",
                 "log_n_over_k"]  # fmt: skip
        for tm, tn in GEMM_TILES:
            names += [f"wave_fill_{tm}x{tn}", f"log_tiles_{tm}x{tn}"]
        return names
    if op_class == "elementwise":
        names = [f"kind_{k}" for k in kinds] + ["log_numel", "log_peak"]
        if with_tokens:
            names += ["log_tokens", "log_row_length", "row_wave_fill", "log_row_waves"]
        return names
    return [
        "log_tokens", "log_ctx", "log_batch", "log_heads", "log_kv_heads", "log_head_dim",
        "log_ctx_per_token", "log_score_elements", "log_kv_elements", "log_peak",
    ]  # fmt: skip


def features(
    op_class: str,
    flops: np.ndarray,
    bytes_: np.ndarray,
    shape: Mapping[str, Any],
    peak: np.ndarray,
    roof: Roof,
    kinds: Sequence[str] = (),
    with_tokens: bool = False,
) -> np.ndarray:
    """The (N, F) residual feature matrix of ``op_class`` operators (see :func:`feature_names`).

    Features depend on the operator's *shape* (and the dtype's peak) only, never on its FLOPs or
    bytes: those enter through the roofline base alone, so for a fixed shape the predicted time
    grows with FLOPs and with bytes (int4 weights of the same GEMM take less time, more FLOPs
    more). ``flops`` only gives the row count. Elementwise kernels run one thread block per token
    row (norms, activation): with ``with_tokens`` the features add the row count
    (``shape["tokens"]``), the row length and how the rows fill the SMs."""
    n = np.asarray(flops).reshape(-1).shape[0]
    lpeak = _lg(np.broadcast_to(np.asarray(peak, dtype=np.float64), (n,)))
    sm = float(max(roof.sm_count, 1))
    if op_class == "gemm":
        m = _col(shape, "m", n)
        nn = _col(shape, "n", n)
        k = _col(shape, "k", n)
        io = nn * k + m * k + m * nn
        cols = [_lg(m), _lg(nn), _lg(k), _lg(m * nn * k), _lg(io), _lg(m * nn * k / io), lpeak, _lg(nn * k), _lg(nn / k)]
        for tm, tn in GEMM_TILES:
            tiles = np.ceil(m / tm) * np.ceil(nn / tn)
            w = tiles / sm
            cols += [w / np.ceil(w), _lg(tiles)]
        return np.column_stack(cols)
    if op_class == "elementwise":
        numel = _col(shape, "numel", n)
        ops = shape.get("op")
        cols = []
        if kinds:
            kind_of = np.array(
                [ELEMENTWISE_KIND.get(str(o), str(o)) for o in (ops if ops is not None else [""] * n)], dtype=object
            )
            for kd in kinds:
                cols.append((kind_of == kd).astype(np.float64))
        cols += [_lg(numel), lpeak]
        if with_tokens:
            tok = _col(shape, "tokens", n)
            w = tok / sm
            cols += [_lg(tok), _lg(numel / tok), w / np.ceil(w), _lg(np.ceil(w))]
        return np.column_stack(cols)
    tokens = _col(shape, "tokens", n)
    ctx = _col(shape, "ctx", n)
    heads = _col(shape, "heads", n)
    kvh = _col(shape, "kv_heads", n)
    d = _col(shape, "head_dim", n)
    cols = [
        _lg(tokens), _lg(ctx), _lg(_col(shape, "batch", n)), _lg(heads), _lg(kvh), _lg(d),
        _lg(ctx / tokens), _lg(tokens * ctx * heads * d), _lg(ctx * kvh * d), lpeak,
    ]  # fmt: skip
    return np.column_stack(cols)


# ---------------------------------------------------------------------------------------------
# Stage 1: roofline base
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RooflineBase:
    launch_s: float
    compute_efficiency: float
    memory_efficiency: float
    sharpness: float

    def time(self, flops: np.ndarray, bytes_: np.ndarray, peak: np.ndarray | float, bw: float) -> np.ndarray:
        tc = np.asarray(flops, dtype=np.float64) / (peak * self.compute_efficiency)
        tm = np.asarray(bytes_, dtype=np.float64) / (bw * self.memory_efficiency)
        q = self.sharpness
        # (tc^q + tm^q)^(1/q) computed stably
        hi = np.maximum(np.maximum(tc, tm), 1e-300)
        body = hi * ((tc / hi) ** q + (tm / hi) ** q) ** (1.0 / q)
        return self.launch_s + body

    def to_dict(self) -> dict[str, float]:
        return {
            "launch_s": float(self.launch_s),
            "compute_efficiency": float(self.compute_efficiency),
            "memory_efficiency": float(self.memory_efficiency),
            "sharpness": float(self.sharpness),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RooflineBase:
        return cls(
            float(d["launch_s"]), float(d["compute_efficiency"]), float(d["memory_efficiency"]), float(d["sharpness"])
        )


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
# Stage 2: residual trees, stored as plain arrays
# ---------------------------------------------------------------------------------------------
@dataclass
class Forest:
    """A sum of regression trees as flat arrays (all trees' nodes concatenated).

    Node i: if ``feature[i] < 0`` it is a leaf with ``value[i]``; else go to ``left[i]`` when
    ``x[feature[i]] <= threshold[i]``, to ``right[i]`` otherwise. ``roots[t]`` is tree t's root.
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    baseline: float
    depth: int
    _feat: np.ndarray = field(init=False, repr=False)
    _thr: np.ndarray = field(init=False, repr=False)
    _left: np.ndarray = field(init=False, repr=False)
    _right: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        leaf = self.feature < 0
        idx = np.arange(len(self.feature))
        # leaves loop onto themselves so every row can step `depth` times
        self._feat = np.where(leaf, 0, self.feature).astype(np.intp)
        self._thr = np.where(leaf, np.inf, self.threshold)
        self._left = np.where(leaf, idx, self.left).astype(np.intp)
        self._right = np.where(leaf, idx, self.right).astype(np.intp)

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.nan_to_num(np.asarray(X, dtype=np.float64), nan=0.0, posinf=1e30, neginf=-1e30)
        n = X.shape[0]
        if n == 0:
            return np.zeros(0)
        node = np.broadcast_to(self.roots, (n, len(self.roots))).copy()
        rows = np.arange(n)[:, None]
        for _ in range(self.depth):
            go_left = X[rows, self._feat[node]] <= self._thr[node]
            node = np.where(go_left, self._left[node], self._right[node])
        return self.baseline + self.value[node].sum(axis=1)

    @property
    def n_trees(self) -> int:
        return int(len(self.roots))

    def to_json(self) -> dict[str, Any]:
        trees = []
        bounds = list(self.roots) + [len(self.feature)]
        for t in range(len(self.roots)):
            a, b = int(bounds[t]), int(bounds[t + 1])
            trees.append(
                {
                    "feature": self.feature[a:b].astype(int).tolist(),
                    "threshold": [float(x) if np.isfinite(x) else 0.0 for x in self.threshold[a:b]],
                    "left": (self.left[a:b] - a).astype(int).tolist(),
                    "right": (self.right[a:b] - a).astype(int).tolist(),
                    "value": [float(x) for x in self.value[a:b]],
                }
            )
        return {"baseline": float(self.baseline), "depth": int(self.depth), "trees": trees}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Forest:
        feats, thr, left, right, val, roots = [], [], [], [], [], []
        off = 0
        for t in d["trees"]:
            k = len(t["feature"])
            if not (len(t["threshold"]) == len(t["left"]) == len(t["right"]) == len(t["value"]) == k):
                raise ValueError("tree arrays of unequal length")
            roots.append(off)
            feats.append(np.asarray(t["feature"], dtype=np.int64))
            thr.append(np.asarray(t["threshold"], dtype=np.float64))
            left.append(np.asarray(t["left"], dtype=np.int64) + off)
            right.append(np.asarray(t["right"], dtype=np.int64) + off)
            val.append(np.asarray(t["value"], dtype=np.float64))
            off += k
        cat = np.concatenate
        return cls(
            cat(feats) if feats else np.zeros(0, np.int64),
            cat(thr) if thr else np.zeros(0),
            cat(left) if left else np.zeros(0, np.int64),
            cat(right) if right else np.zeros(0, np.int64),
            cat(val) if val else np.zeros(0),
            np.asarray(roots, dtype=np.int64),
            float(d["baseline"]),
            int(d["depth"]),
        )


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


# ---------------------------------------------------------------------------------------------
# One op class
# ---------------------------------------------------------------------------------------------
SHAPE_KEYS = {
    "gemm": ("m", "n", "k"),
    "elementwise": ("numel", "tokens"),
    "attn_prefill": ("tokens", "ctx", "batch", "heads", "kv_heads", "head_dim"),
    "attn_decode": ("tokens", "ctx", "batch", "heads", "kv_heads", "head_dim"),
}


@dataclass
class ClassModel:
    """The fitted time model of one operator class (base x residual trees)."""

    op_class: str
    roof: Roof
    base: RooflineBase
    forest: Forest | None = None
    kinds: tuple[str, ...] = ()
    launch_overhead: float = 0.0
    forest_tokens: Forest | None = None
    """Elementwise only: trees that also see the token (row) count, used when the operator's
    shape carries ``tokens``; ``forest`` serves shapes without it."""
    fit_error: dict[str, float] = field(default_factory=dict)
    _memo: dict[tuple[Any, ...], float] = field(default_factory=dict, init=False, repr=False)
    _eff_memo: dict[tuple[Any, ...], float] = field(default_factory=dict, init=False, repr=False)

    MEMO_MAX = 200_000

    def _raw_time(self, flops: np.ndarray, bytes_: np.ndarray, shape: Mapping[str, Any], peak: np.ndarray) -> np.ndarray:
        t = self.base.time(flops, bytes_, peak, self.roof.mem_bandwidth)
        if self.forest is None and self.forest_tokens is None:
            return t
        if self.op_class == "elementwise":
            n = len(flops)
            tok = shape.get("tokens")
            has_tok = (
                np.isfinite(np.asarray(tok, dtype=np.float64)) & (np.asarray(tok, dtype=np.float64) > 0)
                if tok is not None and self.forest_tokens is not None
                else np.zeros(n, dtype=bool)
            )
            r = np.zeros(n)
            for use_tok, forest in ((False, self.forest), (True, self.forest_tokens)):
                idx = np.flatnonzero(has_tok == use_tok)
                if len(idx) == 0 or forest is None:
                    continue
                sub = {k: (np.asarray(v)[idx] if np.ndim(v) else v) for k, v in shape.items()}
                r[idx] = self._elementwise_residual(forest, flops[idx], bytes_[idx], sub, peak[idx], use_tok)
        else:
            r = self.forest.predict(features(self.op_class, flops, bytes_, shape, peak, self.roof))
        return t * np.exp(r)

    def _elementwise_residual(self, forest: Forest, flops: np.ndarray, bytes_: np.ndarray, shape: Mapping[str, Any],
                              peak: np.ndarray, with_tokens: bool) -> np.ndarray:  # fmt: skip
        n = len(flops)
        ops = shape.get("op")
        names = [str(o) for o in np.broadcast_to(np.asarray(ops, dtype=object).reshape(-1), (n,))] if ops is not None else [""] * n
        X = features("elementwise", flops, bytes_, shape, peak, self.roof, self.kinds, with_tokens)
        r = forest.predict(X)
        known = np.array([ELEMENTWISE_KIND.get(o, o) in self.kinds for o in names], dtype=bool)
        if self.kinds and not known.all():
            # an operator whose kernel was never measured: the mean over the measured kinds
            nk = len(self.kinds)
            idx = np.flatnonzero(~known)
            Xu = np.repeat(X[idx], nk, axis=0)
            Xu[:, :nk] = np.tile(np.eye(nk), (len(idx), 1))
            r[idx] = forest.predict(Xu).reshape(len(idx), nk).mean(axis=1)
        return r

    def _keys(self, F: np.ndarray, B: np.ndarray, shape: Mapping[str, Any], dts: list[str]) -> list[tuple[Any, ...]]:
        n = F.shape[0]
        cols: list[list[Any]] = [dts, F.tolist(), B.tolist()]
        for k in SHAPE_KEYS[self.op_class]:
            v = shape.get(k)
            cols.append([None] * n if v is None else np.broadcast_to(np.asarray(v, dtype=np.float64).reshape(-1), (n,)).tolist())
        if self.op_class == "elementwise":
            ops = shape.get("op")
            # a scalar op name (one operator) is broadcast like the numeric shape keys
            cols.append([""] * n if ops is None else [str(o) for o in np.broadcast_to(np.asarray(ops, dtype=object).reshape(-1), (n,))])
        return list(zip(*cols))

    def _subset(self, shape: Mapping[str, Any], idx: np.ndarray, n: int) -> dict[str, Any]:
        sub: dict[str, Any] = {}
        for k in SHAPE_KEYS[self.op_class]:
            if k in shape and shape[k] is not None:
                sub[k] = np.broadcast_to(np.asarray(shape[k], dtype=np.float64).reshape(-1), (n,))[idx]
        if "op" in shape and shape["op"] is not None:
            sub["op"] = np.asarray(shape["op"], dtype=object).reshape(-1)[idx]
        return sub

    def predict_time(
        self, flops: np.ndarray, bytes_: np.ndarray, shape: Mapping[str, Any], dtype: str | Sequence[str],
        memo: bool = True,
    ) -> np.ndarray:  # fmt: skip
        """Predicted seconds per operator, launch overhead included (memoised per shape)."""
        F = np.atleast_1d(np.asarray(flops, dtype=np.float64))
        B = np.atleast_1d(np.asarray(bytes_, dtype=np.float64))
        n = F.shape[0]
        dts = [str(dtype)] * n if isinstance(dtype, str) else [str(d) for d in dtype]
        if not memo:
            return self._raw_time(F, B, self._subset(shape, np.arange(n), n), self.roof.peaks(dts))
        keys = self._keys(F, B, shape, dts)
        table = self._memo
        vals = [table.get(k) for k in keys]
        miss = [i for i, v in enumerate(vals) if v is None]
        if miss:
            mi = np.asarray(miss)
            t = self._raw_time(F[mi], B[mi], self._subset(shape, mi, n), self.roof.peaks([dts[i] for i in miss]))
            if len(table) > self.MEMO_MAX:
                table.clear()
            for j, i in enumerate(miss):
                vals[i] = table[keys[i]] = float(t[j])
        return np.array(vals, dtype=np.float64)

    def efficiency(self, flops: np.ndarray, bytes_: np.ndarray, shape: Mapping[str, Any], dtype: str) -> np.ndarray:
        """ideal / (predicted - launch overhead), the ideal at the profile's own roofline
        (memoised per shape: a repeated call costs a dictionary lookup per operator)."""
        F = np.atleast_1d(np.asarray(flops, dtype=np.float64))
        B = np.atleast_1d(np.asarray(bytes_, dtype=np.float64))
        n = F.shape[0]
        dts = [str(dtype)] * n
        keys = self._keys(F, B, shape, dts)
        table = self._eff_memo
        vals = [table.get(k) for k in keys]
        miss = [i for i, v in enumerate(vals) if v is None]
        if miss:
            mi = np.asarray(miss)
            t = self._raw_time(F[mi], B[mi], self._subset(shape, mi, n), self.roof.peaks([dts[i] for i in miss]))
            ideal = self.roof.ideal(F[mi], B[mi], self.roof.peak(dtype))
            busy = np.maximum(t - self.launch_overhead, 1e-15)
            with np.errstate(invalid="ignore", divide="ignore"):
                eff = np.clip(np.where(ideal > 0, ideal / busy, 1.0), 1e-6, 1.0)
            if len(table) > self.MEMO_MAX:
                table.clear()
            for j, i in enumerate(miss):
                vals[i] = table[keys[i]] = float(eff[j])
        return np.array(vals, dtype=np.float64)

    # ---- persistence -------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": "roofline base x gradient-boosted residual trees"
            if (self.forest is not None or self.forest_tokens is not None)
            else "roofline base",
            "base": self.base.to_dict(),
        }
        if self.forest is not None:
            d["residual"] = {
                "file": "models.json",
                "key": self.op_class,
                "trees": self.forest.n_trees,
                "max_depth": self.forest.depth,
                "target": "log(measured time / base time)",
                "features": feature_names(self.op_class, self.kinds),
            }
            if self.kinds:
                d["residual"]["kernel_kinds"] = list(self.kinds)
            if self.forest_tokens is not None:
                d["residual_with_tokens"] = {
                    "file": "models.json",
                    "key": f"{self.op_class}_tokens",
                    "trees": self.forest_tokens.n_trees,
                    "max_depth": self.forest_tokens.depth,
                    "used_when": "the operator's shape gives tokens (rows); else the residual above",
                    "features": feature_names(self.op_class, self.kinds, with_tokens=True),
                }
                if self.kinds:
                    d["residual_with_tokens"]["kernel_kinds"] = list(self.kinds)
        return d


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
        shape["op"] = df["op"].astype(str).values
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
) -> ClassModel:
    """Fit one class on its prepared rows (see :func:`prepare`). ``score``: compute the in-sample
    error; ``fallback``: for elementwise rows with token counts, also fit the trees used for shapes
    without one (leave-one-out evaluation skips both)."""
    if len(df) == 0:
        raise CalibrationError(f"no usable samples of class {op_class!r}")
    F = df.flops.values.astype(float)
    B = df.bytes_moved.values.astype(float)
    T = df.time_s.values.astype(float)
    peak = roof.peaks(df.dtype.values)
    base = fit_base(F, B, T, peak, roof.mem_bandwidth)
    kinds: tuple[str, ...] = ()
    shape = _shape_of(df, op_class)
    if op_class == "elementwise":
        kinds = tuple(sorted({ELEMENTWISE_KIND.get(o, o) for o in shape.get("op", [])}))
    cm = ClassModel(op_class, roof, base, None, kinds)
    use_trees = (len(df) >= MIN_SAMPLES_FOR_TREES) if trees is None else trees
    if use_trees:
        y = np.log(T / base.time(F, B, peak, roof.mem_bandwidth))
        tok = shape.get("tokens")
        with_tok = op_class == "elementwise" and tok is not None and bool(np.all(np.isfinite(tok) & (tok > 0)))
        if with_tok:
            cm.forest_tokens = fit_forest(features(op_class, F, B, shape, peak, roof, kinds, True), y, params)
        if not with_tok or fallback:
            cm.forest = fit_forest(features(op_class, F, B, shape, peak, roof, kinds), y, params)
    # launch overhead: the base's fixed cost, but never more than what 99% of the operators
    # leave over their ideal time (so ideal/efficiency + overhead reproduces tiny operators too)
    slack = T - roof.ideal(F, B, peak)
    cm.launch_overhead = sig(max(0.0, min(base.launch_s, float(np.quantile(slack, 0.01)))))
    if score:
        pred = cm.predict_time(F, B, shape, list(df.dtype.values), memo=False)
        cm.fit_error = ape_stats(pred, T)
    return cm


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
    import pandas as pd

    df = prepare(samples, op_class)
    roof = roof_from_device(device or {}, samples=samples)
    rows = []
    want = list(groups) if groups is not None else sorted(df[group_col].astype(str).unique())
    for g in want:
        te_mask = (df[group_col].astype(str) == g).to_numpy(copy=True)
        if ops is not None:
            te_mask &= df.op.isin(list(ops)).to_numpy()
        tr = df[(df[group_col].astype(str) != g).values]
        te = df[te_mask]
        if len(te) == 0 or len(tr) == 0:
            continue
        cm = fit_class(tr, op_class, roof, score=False, fallback=False)
        pred = cm.predict_time(te.flops.values, te.bytes_moved.values, _shape_of(te, op_class), list(te.dtype.values), memo=False)
        row: dict[str, Any] = {"group": g, **ape_stats(pred, te.time_s.values)}
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
    """``ssd_read``/``ssd_write`` rows (bytes moved per repetition, time per repetition, block
    size, queue depth) -> bandwidth and per-request latency per (block size, queue depth)."""
    df = samples[samples.op_class.isin(["ssd_read", "ssd_write"])]
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
    :class:`simkit.specs.calibration.Profile`. Classes without samples keep the datasheet defaults
    (``measured: false``). ``notes`` adds a note per class; ``cross_validation`` per class is stored
    as is (see simkit.calibrate.vidur)."""
    from simkit.cost.efficiency import DatasheetEfficiency
    from simkit.specs.calibration import Profile

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
            models[cls] = fit_class(df, cls, roof)
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
