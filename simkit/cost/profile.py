"""Calibration profiles as the cost model reads them: loading, evaluating and selecting them.

A profile (schema: :mod:`simkit.specs.calibration`) holds, per operator class, a fitted time model
(:class:`ClassModel`: a roofline base times residual regression trees over shape features) that
this module evaluates with numpy alone; :class:`Profile` is an
:class:`~simkit.cost.efficiency.EfficiencyModel`. Fitting lives in :mod:`simkit.calibrate.fit`
and writing profiles in :mod:`simkit.calibrate.store`: nothing here measures, fits or writes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from simkit.cost.efficiency import OP_CLASSES, DatasheetEfficiency, EfficiencyModel, FitQuality
from simkit.cost.threads import (
    STEP_CLASSES,
    StepComposition,
    ThreadWakeup,
    parse_step_composition,
    parse_thread_wakeup,
)
from simkit.errors import CalibrationError
from simkit.specs.calibration import (
    PROFILE_FILE,
    PROFILE_VERSION,
    SHIPPED_FOLDER,
    HostOverhead,
    catalog_fingerprint,
    check_device_numbers,
    check_run_records,
    compare_fingerprints,
    parse_fingerprint,
    parse_host_overhead,
    profile_search_path,
    search_profiles,
)
from simkit.specs.hardware import DTYPE_FALLBACK

_T = TypeVar("_T")

# Elementwise kernel kinds: operators that run the same kernel share a kind. The canonical names
# stand for the Llama-style kernels; the kernels simkit.cost.ops.elementwise_kernels selects from a
# model's config (operator name "<canonical>@<kernel>") are kinds of their own.
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


def elementwise_kind(op: str, kinds: Sequence[str] | None = None) -> str:
    """The kernel kind of elementwise operator ``op`` (a canonical name, a benchmark's kernel name,
    or ``<canonical>@<kernel>``). With ``kinds`` (the kinds a profile measured), a kernel the
    profile never measured falls back to its canonical operator's kind, which is what profiles
    fitted before kernels were distinguished predict for it."""
    canon, _, kernel = str(op).partition("@")
    if not kernel:
        return ELEMENTWISE_KIND.get(canon, canon)
    kind = ELEMENTWISE_KIND.get(kernel, kernel)
    if kinds is not None and kind not in kinds:
        return ELEMENTWISE_KIND.get(canon, canon)
    return kind


def per_distinct(values: Iterable[Any], fn: Callable[[Any], _T]) -> list[_T]:
    """``[fn(v) for v in values]`` calling ``fn`` once per distinct value (a cost table's rows
    repeat one operator name or dtype thousands of times)."""
    seen: dict[Any, _T] = {}
    return [seen[v] if v in seen else seen.setdefault(v, fn(v)) for v in values]


def _catalog_peaks(peak_flops: Any) -> dict[str, float]:
    """dtype -> peak FLOP/s of a catalog device, for the dtypes it lists."""
    return {d: float(v) for d in ("fp32", "tf32", "fp16", "bf16", "fp8", "int8") if (v := getattr(peak_flops, d)) is not None}


def sig(x: float, digits: int = 6) -> float:
    """``x`` rounded to ``digits`` significant digits (what profile.yaml stores exactly)."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits - 1}e}")



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
        return np.array(per_distinct(dtypes, self.peak), dtype=np.float64)

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
                peaks = peaks or _catalog_peaks(g.peak_flops)
                bw = bw or g.memory_bandwidth
                sm = sm or g.sm_count
            else:
                c = cat.get("cpu", str(cat_name))
                mem = cat.get("memory", c.memory_type)
                peaks = peaks or _catalog_peaks(c.peak_flops)
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
FEW_ROWS = 16
"""CPU GEMMs with at most this many rows (decode batches) run other kernels than longer ones: the
weights stream from DRAM (fp32 once per row or two on the CI VM's CPU), where GEMMs with more rows
are blocked for the cache and compute-bound. A CPU profile fits one set of residual trees per
regime (``residual`` for m <= FEW_ROWS, ``residual_many_rows`` above), so the few-row samples'
slowdown on large weights is not carried to prefill GEMMs (docs/calibration.md)."""

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
            kind_of = np.array(per_distinct(ops if ops is not None else [""] * n, lambda o: elementwise_kind(str(o), kinds)),
                               dtype=object)
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
    _child: np.ndarray = field(init=False, repr=False)
    _cuts: list[tuple[int, np.ndarray]] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        leaf = self.feature < 0
        idx = np.arange(len(self.feature))
        # leaves loop onto themselves so every row can step `depth` times
        self._feat = np.where(leaf, 0, self.feature).astype(np.intp)
        self._thr = np.where(leaf, np.inf, self.threshold)
        self._left = np.where(leaf, idx, self.left).astype(np.intp)
        self._right = np.where(leaf, idx, self.right).astype(np.intp)
        self._child = np.stack([self._left, self._right], axis=1).ravel()  # node k: 2k left, 2k+1 right
        self._cuts = None  # per feature a split reads, its thresholds sorted: see _split_points

    def _split_points(self) -> list[tuple[int, np.ndarray]]:
        """(feature, its thresholds sorted) for every feature a split reads (made on first use:
        only a call of many rows needs them)."""
        if self._cuts is None:
            split = self.feature >= 0
            self._cuts = [(int(f), np.unique(self.threshold[split & (self.feature == f)])) for f in np.unique(self.feature[split])]
        return self._cuts

    BLOCK_ROWS = 2048
    """Rows walked through the trees at a time: the (rows x trees) node arrays of a block stay in
    the CPU's caches (about 4x faster than one pass over 10^5 rows; each row's result is the
    same either way)."""

    GROUP_ROWS = 256
    """From this many rows on, :meth:`predict` walks one row per run of consecutive rows that
    every split of every tree sends the same way (see there)."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(np.nan_to_num(np.asarray(X, dtype=np.float64), nan=0.0, posinf=1e30, neginf=-1e30))
        n = X.shape[0]
        cuts = self._split_points() if n >= self.GROUP_ROWS else []
        if cuts:
            # A split sends a row right when its feature exceeds the threshold. Two rows that lie
            # between the same two consecutive thresholds of every feature the trees split on
            # (the same count of thresholds below the value, per feature) take the same branch at
            # every node, so they reach the same leaves and get the same sum, bit for bit: of a
            # run of consecutive such rows only the first is walked. A cost table's rows (one
            # per token count, the features smooth functions of it) form far fewer runs than rows.
            codes = np.empty((n, len(cuts)), dtype=np.int32)
            for j, (f, c) in enumerate(cuts):
                codes[:, j] = np.searchsorted(c, X[:, f], side="left")
            new_run = np.ones(n, dtype=bool)
            np.any(codes[1:] != codes[:-1], axis=1, out=new_run[1:])
            starts = np.flatnonzero(new_run)
            if 2 * len(starts) <= n:
                return np.repeat(self._predict_rows(X[starts]), np.diff(np.append(starts, n)))
        return self._predict_rows(X)

    def _predict_rows(self, X: np.ndarray) -> np.ndarray:
        n = X.shape[0]
        if n <= self.BLOCK_ROWS:
            return self._predict_block(X) if n else np.zeros(0)
        out = np.empty(n)
        for a in range(0, n, self.BLOCK_ROWS):
            out[a:a + self.BLOCK_ROWS] = self._predict_block(X[a:a + self.BLOCK_ROWS])
        return out

    def _predict_block(self, X: np.ndarray) -> np.ndarray:
        n = X.shape[0]
        node = np.broadcast_to(self.roots, (n, len(self.roots))).copy()
        flat = X.ravel()
        row0 = (np.arange(n) * X.shape[1])[:, None]
        for _ in range(self.depth):
            # x > threshold: right (x <= threshold: left; leaves have an infinite threshold)
            node = self._child[2 * node + (flat[row0 + self._feat[node]] > self._thr[node])]
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
        depth = d["depth"]
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= MAX_TREE_DEPTH:
            raise ValueError(f"depth: expected a whole number 0..{MAX_TREE_DEPTH}, got {depth!r}")
        baseline = d["baseline"]
        if isinstance(baseline, bool) or not isinstance(baseline, int | float) or not math.isfinite(baseline):
            raise ValueError(f"baseline: expected a finite number, got {baseline!r}")
        if not isinstance(d["trees"], list):
            raise ValueError(f"trees: expected a list of trees, got {type(d['trees']).__name__}")
        for i, t in enumerate(d["trees"]):
            k = len(t["feature"])
            if not k or not (len(t["threshold"]) == len(t["left"]) == len(t["right"]) == len(t["value"]) == k):
                raise ValueError(f"tree {i}: arrays empty or of unequal length")
            f_, th, lf, rt, v = (np.asarray(t[a], dtype=dt) for a, dt in (
                ("feature", np.int64), ("threshold", np.float64), ("left", np.int64), ("right", np.int64), ("value", np.float64)))
            _check_tree(i, f_, th, lf, rt, v, depth)
            roots.append(off)
            feats.append(f_)
            thr.append(th)
            left.append(lf + off)
            right.append(rt + off)
            val.append(v)
            off += k
        cat = np.concatenate
        return cls(
            cat(feats) if feats else np.zeros(0, np.int64),
            cat(thr) if thr else np.zeros(0),
            cat(left) if left else np.zeros(0, np.int64),
            cat(right) if right else np.zeros(0, np.int64),
            cat(val) if val else np.zeros(0),
            np.asarray(roots, dtype=np.int64),
            float(baseline),
            int(depth),
        )



MAX_TREE_DEPTH = 64
"""Deepest residual tree a profile may hold (simkit fits depth 8): each prediction steps ``depth``
times through every tree, so a corrupted depth of 10^9 would never finish."""


def _check_tree(i: int, feature: np.ndarray, threshold: np.ndarray, left: np.ndarray, right: np.ndarray,
                value: np.ndarray, depth: int) -> None:  # fmt: skip
    """One tree of a models.json (indices relative to the tree): every split's children inside the
    tree, finite thresholds and values, and every leaf within ``depth`` steps of the root (a
    corrupted child index would read another tree's node or loop, and a row would stop at a split
    instead of a leaf: a silently wrong time). ValueError naming the tree and the array."""
    k = len(feature)
    split = feature >= 0
    if not (np.all(np.isfinite(value)) and np.all(np.isfinite(threshold[split]))):
        raise ValueError(f"tree {i}: a threshold or value is not a finite number")
    for name, child in (("left", left), ("right", right)):
        if split.any() and not (np.all(child[split] >= 0) and np.all(child[split] < k)):
            raise ValueError(f"tree {i}: {name} child index outside the tree's {k} nodes")
    frontier = np.zeros(1, dtype=np.int64)
    for _ in range(depth):
        frontier = frontier[split[frontier]]
        if not len(frontier):
            return
        frontier = np.concatenate([left[frontier], right[frontier]])
        if len(frontier) > 2 * k:  # (children revisited: a cycle)
            raise ValueError(f"tree {i}: its children form a cycle")
    if split[frontier].any():
        raise ValueError(f"tree {i}: a split deeper than the forest's depth {depth} (or a cycle)")


FOREST_CACHE_FORMAT = 2
"""Bumped whenever what the on-disk cache of :func:`_read_forests` holds changes (2:
:func:`simkit.cachedir.pack_arrays` instead of ``.npz``)."""
_FOREST_ARRAYS = ("feature", "threshold", "left", "right", "value", "roots")


def _read_forests(mf: Path, wanted: Mapping[str, str], profile_name: str) -> dict[str, Forest]:
    """The forests ``wanted`` (models.json key -> where the profile names it) of the models file
    ``mf``, through an on-disk cache of their arrays (``forests/`` under
    :func:`simkit.cachedir.cache_root`, keyed by a SHA-256 of the file's bytes, the keys, this
    module's source and numpy's version, so never stale): parsing the shipped H100 profile's
    0.5 MB of JSON trees cost ~15 ms of every run, even when the cost tables come from their
    cache. A file that fails to parse is never cached (its error is raised on every read)."""
    import hashlib

    from simkit.cachedir import cache_root, pack_arrays, touch, unpack_arrays, write_atomic

    try:
        data = mf.read_bytes()
    except FileNotFoundError:
        raise CalibrationError(f"models file not found: {mf}", where=str(mf)) from None
    except OSError as e:
        raise CalibrationError(f"cannot read the fitted models ({e.__class__.__name__}: {e})", where=str(mf)) from None
    root = cache_root()
    entry: Path | None = None
    keys = sorted(wanted)
    if root is not None:
        try:
            code = Path(__file__).read_bytes()
        except OSError:
            code = None
        if code is not None:
            h = hashlib.sha256(f"{FOREST_CACHE_FORMAT};{np.__version__};{json.dumps(keys)};{len(code)};{len(data)}\0".encode())
            h.update(code)
            h.update(data)
            entry = root / "forests" / f"{h.hexdigest()}.bin"
            try:
                unpacked = unpack_arrays(entry.read_bytes())
            except OSError:
                unpacked = None  # missing: parse
            if unpacked is not None:
                z = unpacked[1]
                try:
                    hit = {k: Forest(*(z[f"{i}.{a}"] for a in _FOREST_ARRAYS), float(z[f"{i}.baseline"]), int(z[f"{i}.depth"]))
                           for i, k in enumerate(keys)}
                except (KeyError, ValueError, TypeError, IndexError):
                    pass  # partial or foreign: parse
                else:
                    touch(entry)
                    return hit
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CalibrationError(f"cannot read the fitted models ({e.__class__.__name__}: {e})", where=str(mf)) from None
    if not isinstance(raw, dict):
        raise CalibrationError("expected a mapping of model keys to trees", where=str(mf))
    forests: dict[str, Forest] = {}
    for key, named_at in wanted.items():
        if key not in raw:
            raise CalibrationError(f"no trees {key!r} (named at {named_at} of {profile_name})", where=str(mf), key=key)
        try:
            forests[key] = Forest.from_json(raw[key])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise CalibrationError(f"malformed trees ({e.__class__.__name__}: {e})", where=str(mf), key=key) from None
    if entry is not None:
        arrays: dict[str, Any] = {}
        for i, k in enumerate(keys):
            fo = forests[k]
            arrays.update({f"{i}.{a}": getattr(fo, a) for a in _FOREST_ARRAYS})
            arrays.update({f"{i}.baseline": np.array(fo.baseline, dtype=np.float64), f"{i}.depth": np.array(fo.depth, dtype=np.int64)})
        blob = pack_arrays({}, arrays)
        if blob is not None:
            write_atomic(entry, blob)
    return forests


# ---------------------------------------------------------------------------------------------
# One op class
# ---------------------------------------------------------------------------------------------
BASE_INPUTS = ("flops_and_bytes", "bytes")
"""``base_inputs`` of a class model: what its roofline base's time depends on (default: both)."""

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
    forest_many_rows: Forest | None = None
    """GEMM only (CPU profiles): trees for operators with more than FEW_ROWS rows (``shape["m"]``);
    ``forest`` then serves m <= FEW_ROWS. None: ``forest`` serves every row count."""
    base_by_dtype: dict[str, RooflineBase] = field(default_factory=dict)
    """Attention classes: a roofline base per dtype where the samples had enough of each (a CPU
    runs other attention kernels per dtype: bf16 decode attention at about 1% of the bf16 GEMM
    peak, fp32 at several times that; docs/calibration.md); other dtypes use ``base``. The
    residual trees are shared and fitted on ``log(time / base of the sample's dtype)``."""
    base_bytes_only: bool = False
    """The base's time is ``launch + bytes / (bandwidth x memory efficiency)``, FLOPs left out
    (``base_inputs: bytes`` in the profile; its compute efficiency and sharpness are then unused
    and stored as 1). GPU elementwise profiles: those kernels are memory-bound, and a FLOP count
    per element (notional for a norm, an activation or RoPE) would make an unmeasured kernel's
    time depend on it (docs/fidelity.md, elementwise)."""
    fit_error: dict[str, float] = field(default_factory=dict)
    _memo: dict[tuple[Any, ...], float] = field(default_factory=dict, init=False, repr=False)
    _eff_memo: dict[tuple[Any, ...], float] = field(default_factory=dict, init=False, repr=False)

    MEMO_MAX = 200_000
    MEMO_ROWS = 256
    """Calls of at least this many operators (a cost table's token counts, all distinct) are
    computed directly: memoising them would only cost a key and a lookup per row."""

    def base_time(self, flops: np.ndarray, bytes_: np.ndarray, peak: np.ndarray, dts: Sequence[str]) -> np.ndarray:
        """The roofline base's time of each operator (the base of its dtype, if fitted)."""
        if self.base_bytes_only:
            flops = np.zeros(np.shape(flops))
        t = self.base.time(flops, bytes_, peak, self.roof.mem_bandwidth)
        if self.base_by_dtype:
            dt = np.asarray(dts, dtype=object)
            for name, b in self.base_by_dtype.items():
                sel = dt == name
                if sel.any():
                    t = np.where(sel, b.time(flops, bytes_, peak, self.roof.mem_bandwidth), t)
        return t

    def _raw_time(self, flops: np.ndarray, bytes_: np.ndarray, shape: Mapping[str, Any], peak: np.ndarray,
                  dts: Sequence[str]) -> np.ndarray:  # fmt: skip
        t = self.base_time(flops, bytes_, peak, dts)
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
            X = features(self.op_class, flops, bytes_, shape, peak, self.roof)
            if self.forest_many_rows is None:
                r = self.forest.predict(X)
            else:
                many = _col(shape, "m", len(flops)) > FEW_ROWS
                r = np.zeros(len(flops))
                for sel, forest in ((~many, self.forest), (many, self.forest_many_rows)):
                    if sel.any():
                        r[sel] = forest.predict(X[sel])
        return t * np.exp(r)

    def _elementwise_residual(self, forest: Forest, flops: np.ndarray, bytes_: np.ndarray, shape: Mapping[str, Any],
                              peak: np.ndarray, with_tokens: bool) -> np.ndarray:  # fmt: skip
        n = len(flops)
        ops = shape.get("op")
        names = np.broadcast_to(np.asarray(ops, dtype=object).reshape(-1), (n,)) if ops is not None else [""] * n
        X = features("elementwise", flops, bytes_, shape, peak, self.roof, self.kinds, with_tokens)
        r = forest.predict(X)
        known = np.array(per_distinct(names, lambda o: elementwise_kind(str(o), self.kinds) in self.kinds), dtype=bool)
        if self.kinds and not known.all():
            # an operator whose kernel was never measured: the mean over the measured kinds
            nk = len(self.kinds)
            idx = np.flatnonzero(~known)
            # kind-major (each kind's rows together, as the table's rows come: runs of rows
            # Forest.predict walks once), each operator's kinds then made contiguous for the mean
            Xu = np.tile(X[idx], (nk, 1))
            Xu[:, :nk] = np.repeat(np.eye(nk), len(idx), axis=0)
            r[idx] = np.ascontiguousarray(forest.predict(Xu).reshape(nk, len(idx)).T).mean(axis=1)
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
        if not memo or n >= self.MEMO_ROWS:
            return self._raw_time(F, B, self._subset(shape, np.arange(n), n), self.roof.peaks(dts), dts)
        def compute(mi: np.ndarray) -> np.ndarray:
            sub = [dts[i] for i in mi]
            return self._raw_time(F[mi], B[mi], self._subset(shape, mi, n), self.roof.peaks(sub), sub)

        return self._memoised(self._memo, self._keys(F, B, shape, dts), compute)

    def _memoised(self, table: dict[Any, float], keys: list[Any], compute: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Values per key from ``table``; the missing ones from ``compute(indices)`` (stored; the
        table is emptied when it outgrows MEMO_MAX)."""
        vals = [table.get(k) for k in keys]
        miss = [i for i, v in enumerate(vals) if v is None]
        if miss:
            out = compute(np.asarray(miss))
            if len(table) > self.MEMO_MAX:
                table.clear()
            for j, i in enumerate(miss):
                vals[i] = table[keys[i]] = float(out[j])
        return np.array(vals, dtype=np.float64)

    def efficiency(self, flops: np.ndarray, bytes_: np.ndarray, shape: Mapping[str, Any], dtype: str) -> np.ndarray:
        """ideal / (predicted - launch overhead), the ideal at the profile's own roofline
        (memoised per shape: a repeated call costs a dictionary lookup per operator)."""
        F = np.atleast_1d(np.asarray(flops, dtype=np.float64))
        B = np.atleast_1d(np.asarray(bytes_, dtype=np.float64))
        n = F.shape[0]
        dts = [str(dtype)] * n
        def compute(mi: np.ndarray) -> np.ndarray:
            sub = [dts[i] for i in mi]
            t = self._raw_time(F[mi], B[mi], self._subset(shape, mi, n), self.roof.peaks(sub), sub)
            ideal = self.roof.ideal(F[mi], B[mi], self.roof.peak(dtype))
            busy = np.maximum(t - self.launch_overhead, 1e-15)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.clip(np.where(ideal > 0, ideal / busy, 1.0), 1e-6, 1.0)

        if n >= self.MEMO_ROWS:
            return compute(np.arange(n))
        return self._memoised(self._eff_memo, self._keys(F, B, shape, dts), compute)

    # ---- persistence -------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": "roofline base x gradient-boosted residual trees"
            if (self.forest is not None or self.forest_tokens is not None or self.forest_many_rows is not None)
            else "roofline base",
            "base": self.base.to_dict(),
        }
        if self.base_bytes_only:
            d["base_inputs"] = "bytes"
        if self.base_by_dtype:
            d["base_by_dtype"] = {k: b.to_dict() for k, b in sorted(self.base_by_dtype.items())}
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
        if self.forest_many_rows is not None:
            if "residual" in d:
                d["residual"]["used_when"] = f"at most {FEW_ROWS} rows (m <= {FEW_ROWS}); residual_many_rows above"
            d["residual_many_rows"] = {
                "file": "models.json",
                "key": f"{self.op_class}_many_rows",
                "trees": self.forest_many_rows.n_trees,
                "max_depth": self.forest_many_rows.depth,
                "target": "log(measured time / base time)",
                "used_when": f"more than {FEW_ROWS} rows (m > {FEW_ROWS})",
                "features": feature_names(self.op_class),
            }
        return d



BASE_RANGES = {"launch_s": ">= 0", "compute_efficiency": "> 0", "memory_efficiency": "> 0", "sharpness": "> 0"}
"""What each number of a roofline base takes: a launch time of 0 is a kernel without fixed cost; an
efficiency or sharpness of 0 divides by zero (a negative one predicts negative times)."""


def _number_ok(v: Any, rule: str) -> bool:
    """``v`` is a finite number (not a boolean) and ``rule`` (``"> 0"`` or ``">= 0"``) holds."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return False
    return v > 0 if rule == "> 0" else v >= 0


def _checked_base(d: Mapping[str, Any], where: str, key: str) -> RooflineBase:
    """``RooflineBase.from_dict`` of a profile's base mapping, every number checked: CalibrationError
    naming the key and what it takes (a NaN or negative efficiency gave a traceback deep in the
    cost tables, or silently negative or infinite step times)."""
    for k, rule in BASE_RANGES.items():
        if k not in d:
            raise CalibrationError("required key is missing", where=where, key=f"{key}.{k}")
        if not _number_ok(d[k], rule):
            raise CalibrationError(f"expected a number {rule}, got {d[k]!r}", where=where, key=f"{key}.{k}")
    return RooflineBase.from_dict(d)


def _check_rates(node: Any, where: str, key: str) -> None:
    """The ``links``, ``memory`` and ``ssd`` sections: mappings whose ``*bandwidth`` numbers are
    > 0 and ``*latency`` numbers >= 0, at any depth (``ssd.read.by_block_and_depth``)."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            sub = f"{key}.{k}"
            if isinstance(v, Mapping | list):
                _check_rates(v, where, sub)
            elif str(k).endswith("bandwidth") and not _number_ok(v, "> 0"):
                raise CalibrationError(f"expected bytes/s > 0, got {v!r}", where=where, key=sub)
            elif str(k).endswith("latency") and not _number_ok(v, ">= 0"):
                raise CalibrationError(f"expected seconds >= 0, got {v!r}", where=where, key=sub)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_rates(v, where, f"{key}.{i}")


def _check_entries(section: Mapping[str, Any], where: str, key: str) -> None:
    """Each entry of ``links``, ``memory`` or ``ssd`` is a mapping; an SSD entry's
    ``by_block_and_depth`` a list of {block_size, queue_depth, bandwidth, latency} (the links of
    an offloaded run pick the closest measured block size from it)."""
    for name, entry in section.items():
        if not isinstance(entry, Mapping):
            raise CalibrationError("expected a mapping {bandwidth, latency, ...}", where=where, key=f"{key}.{name}")
        table = entry.get("by_block_and_depth")
        if key != "ssd" or table is None:
            continue
        if not isinstance(table, list):
            raise CalibrationError("expected a list of {block_size, queue_depth, bandwidth, latency}", where=where,
                                   key=f"{key}.{name}.by_block_and_depth")  # fmt: skip
        for i, row in enumerate(table):
            at = f"{key}.{name}.by_block_and_depth.{i}"
            if not isinstance(row, Mapping):
                raise CalibrationError("expected a mapping {block_size, queue_depth, bandwidth, latency}", where=where, key=at)
            for k in ("block_size", "queue_depth", "bandwidth"):
                v = row.get(k)
                if not _number_ok(v, "> 0") or (k != "bandwidth" and float(v) != int(v)):
                    what = "bytes/s > 0" if k == "bandwidth" else "a whole number >= 1"
                    raise CalibrationError(f"expected {what}, got {v!r}", where=where, key=f"{at}.{k}")


def _check_errors(raw: Any, where: str, key: str) -> None:
    """A fit error mapping (``median_ape``, ``p90_ape`` as fractions >= 0, ``n`` a count) as
    provenance.json reports it."""
    if not isinstance(raw, Mapping):
        raise CalibrationError("expected a mapping {median_ape, p90_ape, n}", where=where, key=key)
    for k, v in raw.items():
        if str(k).endswith("_ape") and v is not None and not _number_ok(v, ">= 0"):  # (None: not known)
            raise CalibrationError(f"expected a fraction >= 0, got {v!r}", where=where, key=f"{key}.{k}")
        if k == "n" and not (_number_ok(v, ">= 0") and float(v) == int(v)):
            raise CalibrationError(f"expected a whole number >= 0, got {v!r}", where=where, key=f"{key}.{k}")


def _check_cross_validation(raw: Any, where: str, key: str) -> None:
    """``efficiency.<class>.cross_validation``: a mapping whose ``per_model`` maps model names to
    fit error mappings (provenance.json reads their ranges)."""
    if not isinstance(raw, Mapping):
        raise CalibrationError("expected a mapping {method, scored, per_model}", where=where, key=key)
    per = raw.get("per_model")
    if per is None:
        return
    if not isinstance(per, Mapping):
        raise CalibrationError("expected a mapping of model name -> {median_ape, p90_ape, n}", where=where, key=f"{key}.per_model")
    for m, errs in per.items():
        _check_errors(errs, where, f"{key}.per_model.{m}")


def _bases_by_dtype(raw: Any, where: str, key: str) -> dict[str, RooflineBase]:
    """``model.base_by_dtype`` of a profile class ({dtype: base mapping}; absent: none)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CalibrationError("expected a mapping of dtype -> {launch_s, compute_efficiency, memory_efficiency, sharpness}",
                               where=where, key=key)  # fmt: skip
    out: dict[str, RooflineBase] = {}
    for dt, d in raw.items():
        if not isinstance(d, dict):
            raise CalibrationError("expected a mapping {launch_s, compute_efficiency, memory_efficiency, sharpness}",
                                   where=where, key=f"{key}.{dt}")  # fmt: skip
        out[str(dt)] = _checked_base(d, where, f"{key}.{dt}")
    return out


@dataclass
class Profile(EfficiencyModel):
    """A loaded (or freshly fitted) calibration profile; an :class:`EfficiencyModel`."""

    name: str
    device: dict[str, Any]
    source: str
    license: str
    samples: Any = None
    """The raw samples (pandas DataFrame)."""
    models: dict[str, Any] = field(default_factory=dict)
    """Fitted :class:`ClassModel` per measured op class."""
    overheads: dict[str, float] = field(default_factory=dict)
    """Launch overhead (s) per op class (``launch_overhead`` in the YAML)."""
    notes: dict[str, str] = field(default_factory=dict)
    links: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    ssd: dict[str, Any] = field(default_factory=dict)
    collectives: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    cross_validation: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    host: HostOverhead | None = None
    """Host time per engine iteration (``host_overhead`` in the YAML); None: not in the profile."""
    _default: DatasheetEfficiency = field(default_factory=DatasheetEfficiency, repr=False)
    _wakeup: tuple[Any, ThreadWakeup] | None = field(default=None, repr=False, compare=False)
    _composition: tuple[Any, StepComposition] | None = field(default=None, repr=False, compare=False)

    # ---- EfficiencyModel ---------------------------------------------------------------------
    def is_measured(self, op_class: str) -> bool:
        return op_class in self.models

    def launch_overhead(self, op_class: str) -> float:
        """Fixed seconds per operator launch of ``op_class``."""
        return float(self.overheads.get(op_class, self._default.launch_overhead(op_class)))

    def efficiency(
        self,
        op_class: str,
        flops: np.ndarray,
        bytes_: np.ndarray,
        shape: Mapping[str, np.ndarray],
        peak_flops: float,
        peak_bw: float,
        dtype: str,
    ) -> np.ndarray:
        """Fraction of the ideal roofline speed achieved. For measured classes the fitted model's
        predicted time (minus the launch overhead) is turned into an efficiency against the
        profile's own roofline (``device.peak_flops``/``device.mem_bandwidth``), so a caller whose
        catalog peaks are those gets the fitted time back exactly; another dtype's peak scales it.

        With a measured step composition (``device.step_composition``, a CPU profile's synthetic
        step against the sum of its operators) the operators of a forward pass run that factor
        slower than alone: their efficiency is divided by it (callers clip at 1, so no operator is
        predicted faster than the profile's roofline). :meth:`predict_time` (an operator alone, what
        the speed probe compares with) is not scaled."""
        cm = self.models.get(op_class)
        if cm is None:
            return self._default.efficiency(op_class, flops, bytes_, shape, peak_flops, peak_bw, dtype)
        e = cm.efficiency(flops, bytes_, shape, dtype)
        comp = self.step_composition()
        f = comp.factor(str(dtype)) if comp is not None and op_class in STEP_CLASSES else None
        return e if f is None else e / f

    def roofline_time(self, op_class: str, flops: Any, bytes_: Any, peak_flops: float, peak_bw: float) -> Any:
        """Closed-form seconds for classes this profile did not measure (the datasheet defaults);
        None for measured classes, whose time needs the fitted model."""
        if op_class in self.models:
            return None
        return self._default.roofline_time(op_class, flops, bytes_, peak_flops, peak_bw)

    def roofline_coeffs(self, op_class: str, peak_flops: float, peak_bw: float) -> tuple[float, float, float] | None:
        """The datasheet defaults' coefficients for classes this profile did not measure, else None."""
        if op_class in self.models:
            return None
        return self._default.roofline_coeffs(op_class, peak_flops, peak_bw)

    def predict_time(self, op_class: str, flops: Any, bytes_: Any, shape: Mapping[str, Any], dtype: str) -> np.ndarray:
        """Seconds per operator at the profile's own roofline (launch overhead included)."""
        cm = self.models.get(op_class)
        F = np.atleast_1d(np.asarray(flops, dtype=np.float64))
        B = np.atleast_1d(np.asarray(bytes_, dtype=np.float64))
        if cm is not None:
            return cm.predict_time(F, B, shape, dtype)
        roof = roof_from_device(self.device)
        pf = roof.peak(dtype)
        ideal = roof.ideal(F, B, pf)
        eff = np.clip(self._default.efficiency(op_class, F, B, shape, pf, roof.mem_bandwidth, dtype), 1e-4, 1.0)
        return ideal / eff + self.launch_overhead(op_class)

    def unmeasured_kernels(self, kernels: Mapping[str, str]) -> list[str]:
        """The kernels of ``kernels`` (canonical operator -> kernel, as
        :func:`simkit.cost.ops.elementwise_kernels` gives them for a model) that this profile's
        fitted elementwise model has no kind for, so it predicts them as their canonical
        operator's Llama-style kernel; empty when the elementwise class is not measured."""
        cm = self.models.get("elementwise")
        if cm is None or not cm.kinds:
            return []
        return sorted({k for op, k in kernels.items() if elementwise_kind(f"{op}@{k}", cm.kinds) != elementwise_kind(f"{op}@{k}")})

    def measured_device(self) -> dict[str, Any] | None:
        return self.device

    def measured_links(self) -> Mapping[str, Any]:
        return self.links

    def measured_ssd(self) -> Mapping[str, Any]:
        return self.ssd

    def host_overhead(self) -> HostOverhead | None:
        return self.host

    def thread_wakeup(self) -> ThreadWakeup | None:
        """``device.thread_wakeup`` (simkit.cost.threads), parsed once; None when the profile has
        none (measured at one thread, or before 2026-11-30 20:00 UTC: nothing is added)."""
        raw = self.device.get("thread_wakeup")
        if raw is None:
            return None
        if self._wakeup is None or self._wakeup[0] is not raw:
            self._wakeup = (raw, parse_thread_wakeup(raw, str(self.path or self.name)))
        return self._wakeup[1]

    def step_composition(self) -> StepComposition | None:
        """``device.step_composition`` (simkit.cost.threads), parsed once; None when the profile
        has none (measured before 2026-12-01, with ``--tiny``, or a GPU profile: operators are
        priced as timed alone, as before)."""
        raw = self.device.get("step_composition")
        if raw is None:
            return None
        if self._composition is None or self._composition[0] is not raw:
            self._composition = (raw, parse_step_composition(raw, str(self.path or self.name)))
        return self._composition[1]

    def fit_quality(self) -> dict[str, FitQuality] | None:
        return {c: FitQuality(dict(cm.fit_error), dict(self.cross_validation.get(c) or {})) for c, cm in self.models.items()}

    @property
    def fingerprint(self) -> dict[str, Any] | None:
        """``device.fingerprint`` (normalised), or None for a profile written without one."""
        fp = self.device.get("fingerprint")
        return dict(fp) if isinstance(fp, Mapping) else None

    def dtypes(self) -> list[str]:
        return list(self.device.get("dtypes") or [])

    def collective_fit(self, kind: str, topology: str, num_gpus: int) -> Any:
        """The fitted :class:`~simkit.cost.collectives.CollectiveFit`, or None if not measured."""
        from simkit.cost.collectives import CollectiveFit

        entry = ((self.collectives.get(topology) or {}).get(kind) or {}).get(int(num_gpus))
        if entry is None:
            return None
        return CollectiveFit.from_dict(kind, int(num_gpus), entry)

    # ---- YAML (writing: simkit.calibrate.store) ------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, *, with_samples: bool = True) -> Profile:
        """Read a profile folder or its profile.yaml. Every problem raises CalibrationError naming
        the file and the key."""
        from simkit.specs.yamlio import load_yaml

        p = Path(path)
        try:
            f = p / PROFILE_FILE if p.is_dir() else p
        except OSError:  # not a usable path (e.g. too long): load_yaml names it
            f = p
        where = str(f)
        data = load_yaml(f, error=CalibrationError, lasting=True)  # (every run reads its profile)
        if not isinstance(data, dict):
            raise CalibrationError("expected a mapping at the top level", where=where)

        def need(d: Mapping[str, Any], key: str, path_: str, typ: type | tuple[type, ...] | None = None) -> Any:
            if not isinstance(d, Mapping) or key not in d:
                raise CalibrationError("required key is missing", where=where, key=f"{path_}{key}")
            v = d[key]
            if typ is not None and not isinstance(v, typ):
                raise CalibrationError(f"expected {getattr(typ, '__name__', typ)}, got {type(v).__name__}", where=where, key=f"{path_}{key}")
            return v

        ver = need(data, "simkit_profile", "")
        if ver != PROFILE_VERSION:
            raise CalibrationError(f"unsupported profile version {ver!r} (this simkit reads {PROFILE_VERSION})", where=where, key="simkit_profile")
        name = str(need(data, "name", ""))
        device = need(data, "device", "", dict)
        kind = need(device, "kind", "device.")
        if kind not in ("gpu", "cpu"):
            raise CalibrationError(f"expected gpu or cpu, got {kind!r}", where=where, key="device.kind")
        check_device_numbers(device, where)
        check_run_records(device, where)
        if "fingerprint" in device:
            device = {**device, "fingerprint": parse_fingerprint(device["fingerprint"], kind, where)}
        if "thread_wakeup" in device:
            parse_thread_wakeup(device["thread_wakeup"], where)
        if "step_composition" in device:
            parse_step_composition(device["step_composition"], where)
        host = parse_host_overhead(data["host_overhead"], where) if "host_overhead" in data else None
        source = str(need(data, "source", ""))
        lic = str(need(data, "license", ""))
        eff = need(data, "efficiency", "", dict)
        overhead = data.get("launch_overhead") or {}
        if not isinstance(overhead, dict):
            raise CalibrationError("expected a mapping of op class to seconds", where=where, key="launch_overhead")
        for k, v in overhead.items():
            if not _number_ok(v, ">= 0"):
                raise CalibrationError(f"expected seconds >= 0, got {v!r}", where=where, key=f"launch_overhead.{k}")
        for sect in ("links", "memory", "ssd", "collectives"):
            if data.get(sect) is not None and not isinstance(data[sect], dict):
                raise CalibrationError(f"expected a mapping, got {type(data[sect]).__name__}", where=where, key=sect)
            if sect != "collectives":
                _check_rates(data.get(sect), where, sect)
                _check_entries(data.get(sect) or {}, where, sect)
        threads = data.get("threads")
        if threads is not None and not (_number_ok(threads, "> 0") and float(threads) == int(threads)):
            raise CalibrationError(f"expected a whole number >= 1 (the torch threads of the samples), got {threads!r}",
                                   where=where, key="threads")  # fmt: skip
        samples = None
        samples_rel = need(data, "samples", "", str)
        if with_samples:
            samples = _read_samples(f.parent / samples_rel, where)
        forests: dict[str, Any] = {}
        measured = [c for c in OP_CLASSES if isinstance(eff.get(c), dict) and eff[c].get("measured")]
        wanted: dict[str, str] = {}  # models.json key -> where in profile.yaml it is named
        for c in measured:
            model = eff[c].get("model")
            if not isinstance(model, dict):
                continue
            for sect, dflt in (("residual", c), ("residual_with_tokens", f"{c}_tokens"), ("residual_many_rows", f"{c}_many_rows")):
                if isinstance(model.get(sect), dict):
                    wanted[str(model[sect].get("key", dflt))] = f"efficiency.{c}.model.{sect}"
        models_rel = data.get("models")
        if wanted:
            if not models_rel:
                raise CalibrationError("efficiency models name residual trees but the profile has no 'models' file", where=where, key="models")
            forests = _read_forests(f.parent / str(models_rel), wanted, f.name)
        try:
            roof = roof_from_device(device)
        except CalibrationError as e:
            raise CalibrationError(e.message, where=where, key="device.peak_flops") from None
        models: dict[str, Any] = {}
        notes: dict[str, str] = {}
        cv: dict[str, Any] = {}
        for c in OP_CLASSES:
            entry = eff.get(c)
            if entry is None:
                notes[c] = "not in the profile: datasheet default efficiency"
                continue
            if not isinstance(entry, dict):
                raise CalibrationError("expected a mapping", where=where, key=f"efficiency.{c}")
            m = need(entry, "measured", f"efficiency.{c}.", bool)
            notes[c] = str(entry.get("note", ""))
            if "cross_validation" in entry:
                _check_cross_validation(entry["cross_validation"], where, f"efficiency.{c}.cross_validation")
                cv[c] = entry["cross_validation"]
            if not m:
                continue
            model = need(entry, "model", f"efficiency.{c}.", dict)
            base_d = need(model, "base", f"efficiency.{c}.model.", dict)
            base = _checked_base(base_d, where, f"efficiency.{c}.model.base")
            by_dtype = _bases_by_dtype(model.get("base_by_dtype"), where, f"efficiency.{c}.model.base_by_dtype")
            base_inputs = model.get("base_inputs", "flops_and_bytes")
            if base_inputs not in BASE_INPUTS:
                raise CalibrationError(f"expected one of {', '.join(BASE_INPUTS)}, got {base_inputs!r}", where=where,
                                       key=f"efficiency.{c}.model.base_inputs")  # fmt: skip
            for sect in ("residual", "residual_with_tokens", "residual_many_rows"):
                sec = model.get(sect)
                if sec is None:
                    continue
                if not isinstance(sec, dict):
                    raise CalibrationError(f"expected a mapping (file, key, trees, features, ...), got {sec!r}"[:200],
                                           where=where, key=f"efficiency.{c}.model.{sect}")  # fmt: skip
                for k in ("features", "kernel_kinds"):
                    if k in sec and not (isinstance(sec[k], list) and all(isinstance(x, str) for x in sec[k])):
                        raise CalibrationError(f"expected a list of names, got {sec[k]!r}"[:200], where=where,
                                               key=f"efficiency.{c}.model.{sect}.{k}")  # fmt: skip
            res = model.get("residual") or {}
            res_tok = model.get("residual_with_tokens") or {}
            res_many = model.get("residual_many_rows") or {}
            if res_many and c != "gemm":
                raise CalibrationError("only the gemm class has row regimes", where=where, key=f"efficiency.{c}.model.residual_many_rows")
            if res_many and not res:
                raise CalibrationError(f"residual_many_rows needs a residual (the trees for at most {FEW_ROWS} rows)",
                                       where=where, key=f"efficiency.{c}.model.residual")  # fmt: skip
            kinds = tuple(res.get("kernel_kinds") or res_tok.get("kernel_kinds") or ())
            for sect, sec, tok in (("residual", res, False), ("residual_with_tokens", res_tok, True), ("residual_many_rows", res_many, False)):
                if sec and "features" in sec and list(sec["features"]) != feature_names(c, kinds, tok):
                    raise CalibrationError(
                        "the residual trees were fitted on other features than this simkit computes "
                        f"({len(sec['features'])} vs {len(feature_names(c, kinds, tok))}): refit the profile",
                        where=where,
                        key=f"efficiency.{c}.model.{sect}.features",
                    )
            for sec, tok, dflt in ((res, False, c), (res_tok, True, f"{c}_tokens"), (res_many, False, f"{c}_many_rows")):
                fo = forests.get(str(sec.get("key", dflt))) if sec else None
                n_feat = len(feature_names(c, kinds, tok))
                if fo is not None and len(fo.feature) and int(fo.feature.max()) >= n_feat:
                    raise CalibrationError(f"a split reads feature {int(fo.feature.max())}, but the class has {n_feat} "
                                           "features: refit the profile", where=str(f.parent / str(models_rel)),
                                           key=str(sec.get("key", dflt)))  # fmt: skip
            cm = ClassModel(c, roof, base, forests.get(str(res.get("key", c))) if res else None, kinds)
            cm.base_by_dtype = by_dtype
            cm.base_bytes_only = base_inputs == "bytes"
            if res_tok:
                cm.forest_tokens = forests.get(str(res_tok.get("key", f"{c}_tokens")))
            if res_many:
                cm.forest_many_rows = forests.get(str(res_many.get("key", f"{c}_many_rows")))
            cm.launch_overhead = float(overhead.get(c, base.launch_s))
            fe = need(entry, "fit_error", f"efficiency.{c}.", dict)
            _check_errors(fe, where, f"efficiency.{c}.fit_error")
            cm.fit_error = dict(fe)
            models[c] = cm
        prof = cls(
            name=name,
            device=dict(device),
            source=source,
            license=lic,
            samples=samples,
            models=models,
            overheads={str(k): float(v) for k, v in overhead.items()},
            notes=notes,
            links=dict(data.get("links") or {}),
            memory=dict(data.get("memory") or {}),
            ssd=dict(data.get("ssd") or {}),
            collectives=dict(data.get("collectives") or {}),
            threads=threads,
            cross_validation=cv,
            path=f,
            host=host,
        )
        return prof




def _read_samples(path: Path, where: str) -> Any:
    import pandas as pd

    try:
        df = pd.read_csv(path, low_memory=False)
    except FileNotFoundError:
        raise CalibrationError(f"samples file not found: {path}", where=where, key="samples") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise CalibrationError(f"unreadable samples ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})", where=str(path)) from None
    for col in ("op_class", "time_s"):
        if col not in df.columns:
            raise CalibrationError(f"the samples lack the column {col!r}", where=str(path))
    return df


# ---------------------------------------------------------------------------------------------
# Finding and resolving profiles


_CACHE: dict[tuple[str, float], Profile] = {}


def load_cached(path: str | Path) -> Profile:
    """Profile.load, cached per file and modification time (samples are not read)."""
    p = Path(path)
    try:
        f = p / PROFILE_FILE if p.is_dir() else p
    except OSError:  # not a usable path (e.g. too long): Profile.load names it
        f = p
    try:
        key = (str(f.resolve()), f.stat().st_mtime)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Path.resolve): Profile.load names the file
        return Profile.load(f, with_samples=False)
    prof = _CACHE.get(key)
    if prof is None:
        prof = Profile.load(f, with_samples=False)
        _CACHE[key] = prof
    return prof


def calibrate_command(device_kind: str, catalog_name: str) -> str:
    """The command that measures a profile of ``catalog_name`` on the machine it runs on."""
    dev = "cuda" if device_kind == "gpu" else "cpu"
    return f"simkit calibrate --device {dev} --catalog {catalog_name}"  # (its default --out is where auto looks)


def _catalog_facts(device_kind: str, catalog_name: str) -> dict[str, Any]:
    from simkit.specs.catalog import default_catalog

    try:
        item = default_catalog().get(device_kind, str(catalog_name))
    except Exception:  # a device outside the default catalog: nothing to compare with
        return {}
    return catalog_fingerprint(device_kind, item)


def resolve_calibration(setting: str, device_kind: str, catalog_name: str) -> tuple[EfficiencyModel, str, str | None]:
    """The scenario key ``calibration: auto | none | <path>`` -> (model, description, warning).

    ``auto``: the first profile of this catalog device, in the order of
    :func:`simkit.specs.calibration.list_profiles` (``SIMKIT_PROFILE_PATH``, the per-user folder,
    the shipped profiles; within a folder the newest ``device.measured_at``), whose
    ``device.fingerprint`` agrees with what the catalog says about the device (GPU: SM count and
    memory; CPU: hardware threads); a profile whose fingerprint differs, or that has none, is not
    used, nor is one of ``simkit calibrate --tiny`` (``device.suite: tiny``): the datasheet
    defaults are, with a warning naming what differs and the command that calibrates, unless a
    later profile matches (then a warning names the profiles passed over). A profile.yaml that cannot be read is skipped with
    a warning naming it. ``none``: the datasheet defaults. A path: that profile (errors if it is
    missing or corrupt, or if it was measured on another device kind; warns if its catalog name or
    fingerprint disagrees with the scenario's device)."""
    s = str(setting).strip()
    if s == "none":
        return DatasheetEfficiency(), "datasheet defaults (calibration: none)", None
    if s == "auto":
        found, skipped = search_profiles(device_kind, catalog_name)
        if not found:
            where = ", ".join(str(f.path) for f in profile_search_path())
            return (
                DatasheetEfficiency(),
                "datasheet defaults (no calibration profile matches)",
                "; ".join([f"no calibration profile for {device_kind} {catalog_name!r} in {where}: using datasheet "
                           f"default efficiencies (accuracy ~30%); run `{calibrate_command(device_kind, catalog_name)}` "
                           "or pass calibration: <path>", *skipped]),
            )  # fmt: skip
        target = _catalog_facts(device_kind, catalog_name)
        rejected = []
        for p in found:
            f, dev = p.file, p.device
            label = f.parent.name if p.origin == SHIPPED_FOLDER else str(f.parent)
            if dev.get("suite") == "tiny":  # `simkit calibrate --tiny`: a smoke test of the command, not for use
                rejected.append(f"{label} was measured by the --tiny smoke-test suite (not for predictions)")
                continue
            raw = dev.get("fingerprint")
            if not isinstance(raw, Mapping):
                rejected.append(f"{label} has no device fingerprint")
                continue
            fp = parse_fingerprint(raw, device_kind, str(f))
            m = compare_fingerprints(fp, target)
            if m.matches:
                prof = load_cached(f)
                passed = ([f"calibration: auto passed over {'; '.join(rejected)}, and uses {label} (found after them in "
                           "the profile search path; `simkit calibrate list` shows the order)"] if rejected else [])  # fmt: skip
                return prof, _describe(prof), "; ".join([*passed, *skipped]) or None
            rejected.append(f"{label} differs from catalog {catalog_name} ({m.describe(f'catalog {catalog_name}')})")
        return (
            DatasheetEfficiency(),
            "datasheet defaults (no calibration profile's fingerprint matches)",
            "; ".join([f"WARNING: no calibration profile of {device_kind} {catalog_name!r} matches its device "
                       f"fingerprint: {'; '.join(rejected)}. Using datasheet default efficiencies (accuracy ~30%). Measure "
                       f"the device with `{calibrate_command(device_kind, catalog_name)}`, or pass calibration: <path> to "
                       "use a profile anyway", *skipped]),
        )  # fmt: skip
    prof = load_cached(s)
    dev_kind = prof.device.get("kind")
    if dev_kind != device_kind:
        raise CalibrationError(
            f"the profile was measured on a {dev_kind}, but the scenario computes on a {device_kind}",
            where=str(prof.path or s),
            key="device.kind",
        )
    warn = None
    cat = prof.device.get("catalog")
    if cat and str(cat) != str(catalog_name):
        warn = f"calibration profile {prof.name!r} was measured on {cat}, the scenario uses {catalog_name}"
    elif prof.fingerprint is not None:
        m = compare_fingerprints(prof.fingerprint, _catalog_facts(device_kind, catalog_name))
        if not m.matches:
            warn = (f"WARNING: calibration profile {prof.name!r} describes another {device_kind} than catalog "
                    f"{catalog_name} ({m.describe(f'catalog {catalog_name}')}); measure it with "
                    f"`{calibrate_command(device_kind, catalog_name)}`")  # fmt: skip
    if prof.device.get("suite") == "tiny":
        tiny = (f"WARNING: calibration profile {prof.name!r} was measured by `simkit calibrate --tiny`, a smoke test "
                "of the command (a few samples per class, not for predictions): its times can be off by orders of "
                f"magnitude; measure the device with `{calibrate_command(device_kind, catalog_name)}` (or --quick)")  # fmt: skip
        warn = f"{tiny}; {warn}" if warn else tiny
    return prof, _describe(prof), warn


def _shown_path(path: Path | str | None) -> str:
    """A profile's file as summary.json names it: a shipped profile relative to simkit's data folder
    (``calibration/profiles/NAME/profile.yaml``), so that the same run gives the same bytes from
    any checkout or installation; any other profile as given. provenance.json keeps the absolute
    path."""
    if path is None:
        return "in memory"
    from simkit.specs.catalog import data_root

    root = data_root()
    for p, r in ((Path(path), root), (Path(path).resolve(), root.resolve())):
        if p.is_relative_to(r):
            return p.relative_to(r).as_posix()
    return str(path)


def _describe(prof: Profile) -> str:
    meas = [c for c in OP_CLASSES if prof.is_measured(c)]
    unmeas = [c for c in OP_CLASSES if not prof.is_measured(c)]
    s = f"profile {prof.name} ({_shown_path(prof.path)})"
    if meas:
        s += f": measured {', '.join(meas)}"
    if unmeas:
        s += f"; datasheet defaults for {', '.join(unmeas)}"
    return s


_SOURCE = re.compile(r"(?:^|; )(?:([\w.+-]+): )?(?:profile (\S+) \(|(datasheet defaults) \()")


def efficiency_sources(description: str) -> list[tuple[str | None, str]]:
    """(device, source) for every device a run's ``calibration`` text (summary.json) names:
    source ``profile NAME`` or ``datasheet defaults``; the device is named only in a fleet's text
    (``h100-sxm: profile ...; l4: datasheet defaults (...)``), else None."""
    return [(m.group(1), f"profile {m.group(2)}" if m.group(2) else "datasheet defaults")
            for m in _SOURCE.finditer(description)]


def mixed_calibration_note(runs: Iterable[tuple[str | None, str | None]], what: str) -> str | None:
    """A note for runs that are compared with each other (a study's points, a search's
    candidates) when some were timed with a measured profile and others with the datasheet
    defaults: their differences then include the calibration's error (datasheet defaults are
    ~30% off, docs/fidelity.md), not only the hardware's or the plan's. ``runs``: (device,
    calibration text) per run, the device as summary.json names it. None when every run used the
    same kind of source."""
    measured: dict[str, set[str]] = {}
    datasheet: set[str] = set()
    for device, text in runs:
        if not text:
            continue
        for dev, src in efficiency_sources(str(text)):
            d = dev or str(device or "?")
            if src == "datasheet defaults":
                datasheet.add(d)
            else:
                measured.setdefault(d, set()).add(src.removeprefix("profile "))
    if not measured or not datasheet:
        return None
    prof = ", ".join(f"{d} ({' / '.join(sorted(p))})" for d, p in sorted(measured.items()))
    return (f"The {what} mix measured and datasheet efficiencies: {prof} with a calibration profile; "
            f"{', '.join(sorted(datasheet))} with the datasheet defaults (accuracy ~30%, docs/fidelity.md). Their "
            f"differences include that error, not only the hardware's or the plan's; `simkit calibrate` on those "
            f"devices compares like with like (docs/calibration.md)")
