"""Collective communication time: alpha-beta models per algorithm, optionally with fitted parameters.

Every function takes ``nbytes`` (array or scalar), the number of GPUs ``p``, the link's
``bandwidth`` (bytes/s per GPU per direction) and ``latency`` (s per message step), and returns
seconds (an array). ``nbytes`` is, per GPU:

* all_reduce: the buffer each GPU holds (and ends with);
* all_gather: the *output* each GPU ends with (p shards); reduce_scatter: the *input* each GPU
  starts with (p shards);
* send_recv: the message;
* all_to_all: everything a GPU holds before the exchange (it keeps 1/p, sends (p-1)/p).

Algorithms (S = nbytes, B = bandwidth, a = latency):

* ``ring`` all_reduce: ``2(p-1) a + 2(p-1)/p * S/B`` (reduce-scatter then all-gather around a
  ring); all_gather / reduce_scatter: ``(p-1) a + (p-1)/p * S/B``;
* ``tree`` all_reduce: ``2 ceil(log2 p) a + 2 S/B`` (pipelined reduce up and broadcast down a
  binary tree: fewer latency steps, twice the bytes over the busiest link); all_gather /
  reduce_scatter: recursive doubling/halving ``ceil(log2 p) a + (p-1)/p * S/B``;
* send_recv: ``a + S/B``;
* all_to_all (pairwise exchange): ``(p-1) a + (p-1)/p * S/B``.

A :class:`CollectiveFit` (fitted from measurements, stored in a calibration profile's
``collectives`` section) replaces ``bandwidth`` and ``latency`` by *effective* values per message
size band: e.g. NCCL's NVLS all-reduce on an NVSwitch node reaches an effective ring bandwidth
above the per-link figure, and small messages pay a protocol latency well above the wire's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ALGORITHMS = ("ring", "tree")
KINDS = ("all_reduce", "all_gather", "reduce_scatter", "send_recv", "all_to_all")

DEFAULT_BAND_EDGES = (256 * 1024, 4 * 1024 * 1024)
"""Message-size band edges (bytes) of fitted collectives: below 256 KiB latency-bound, 256 KiB to
4 MiB the protocol switch region, above 4 MiB bandwidth-bound."""


def coefficients(kind: str, p: int, algorithm: str = "ring") -> tuple[float, float]:
    """(latency steps, bandwidth factor): time = steps * latency + factor * nbytes / bandwidth."""
    if kind not in KINDS:
        raise ValueError(f"unknown collective {kind!r} (expected one of {', '.join(KINDS)})")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r} (expected one of {', '.join(ALGORITHMS)})")
    p = int(p)
    if kind == "send_recv":
        return 1.0, 1.0
    if p <= 1:
        return 0.0, 0.0
    logp = float(math.ceil(math.log2(p)))
    frac = (p - 1) / p
    if kind == "all_reduce":
        return (2.0 * (p - 1), 2.0 * frac) if algorithm == "ring" else (2.0 * logp, 2.0)
    if kind in ("all_gather", "reduce_scatter"):
        return (float(p - 1), frac) if algorithm == "ring" else (logp, frac)
    return float(p - 1), frac  # all_to_all


@dataclass(frozen=True)
class CollectiveFit:
    """Effective (bandwidth, latency) per message-size band, fitted for one collective kind,
    GPU count and topology under ``algorithm``'s formula."""

    kind: str
    num_gpus: int
    algorithm: str = "ring"
    bands: tuple[tuple[float, float, float], ...] = ()
    """(upper bytes bound, bandwidth bytes/s, latency s), ascending; the last bound is inf."""
    fit_error: Mapping[str, float] = field(default_factory=dict)

    def params(self, nbytes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        S = np.asarray(nbytes, dtype=np.float64)
        uppers = np.array([b[0] for b in self.bands])
        i = np.minimum(np.searchsorted(uppers, S, side="left"), len(self.bands) - 1)
        bw = np.array([b[1] for b in self.bands])[i]
        lat = np.array([b[2] for b in self.bands])[i]
        return bw, lat

    def scaled(self, bandwidth_scale: float) -> CollectiveFit:
        """This fit on a link ``bandwidth_scale`` times as fast (a what-if): every band's
        effective bandwidth scales, its latency (protocol and launch) does not."""
        if bandwidth_scale == 1.0:
            return self
        bands = tuple((u, bw * bandwidth_scale, lat) for u, bw, lat in self.bands)
        return CollectiveFit(self.kind, self.num_gpus, self.algorithm, bands, self.fit_error)

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "bands": [
                {"max_bytes": (None if not np.isfinite(u) else float(u)), "bandwidth": float(bw), "latency": float(lat)}
                for u, bw, lat in self.bands
            ],
            "fit_error": {k: (float(v) if k != "n" else int(v)) for k, v in self.fit_error.items()},
        }

    @classmethod
    def from_dict(cls, kind: str, num_gpus: int, d: Mapping[str, Any]) -> CollectiveFit:
        bands = tuple(
            (float("inf") if b.get("max_bytes") is None else float(b["max_bytes"]), float(b["bandwidth"]), float(b["latency"]))
            for b in d["bands"]
        )
        if not bands:
            raise ValueError("a fitted collective needs at least one band")
        return cls(kind, int(num_gpus), str(d.get("algorithm", "ring")), bands, dict(d.get("fit_error") or {}))


def collective_time(
    kind: str,
    nbytes: Any,
    num_gpus: int,
    bandwidth: float,
    latency: float,
    algorithm: str = "ring",
    fit: CollectiveFit | None = None,
) -> np.ndarray:
    """Seconds of one collective of ``kind`` (see the module docstring for the conventions)."""
    S = np.asarray(nbytes, dtype=np.float64)
    if fit is not None:
        algorithm = fit.algorithm
        bw, lat = fit.params(S)
    else:
        if bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0 (got {bandwidth})")
        bw, lat = np.asarray(float(bandwidth)), np.asarray(float(latency))
    steps, factor = coefficients(kind, num_gpus, algorithm)
    t = steps * lat + factor * S / bw
    return np.where(S > 0, t, 0.0) if kind != "send_recv" else t


def all_reduce_time(nbytes: Any, num_gpus: int, bandwidth: float, latency: float, algorithm: str = "ring",
                    fit: CollectiveFit | None = None) -> np.ndarray:  # fmt: skip
    return collective_time("all_reduce", nbytes, num_gpus, bandwidth, latency, algorithm, fit)


def all_gather_time(nbytes: Any, num_gpus: int, bandwidth: float, latency: float, algorithm: str = "ring",
                    fit: CollectiveFit | None = None) -> np.ndarray:  # fmt: skip
    return collective_time("all_gather", nbytes, num_gpus, bandwidth, latency, algorithm, fit)


def reduce_scatter_time(nbytes: Any, num_gpus: int, bandwidth: float, latency: float, algorithm: str = "ring",
                        fit: CollectiveFit | None = None) -> np.ndarray:  # fmt: skip
    return collective_time("reduce_scatter", nbytes, num_gpus, bandwidth, latency, algorithm, fit)


def send_recv_time(nbytes: Any, num_gpus: int, bandwidth: float, latency: float, algorithm: str = "ring",
                   fit: CollectiveFit | None = None) -> np.ndarray:  # fmt: skip
    """Point-to-point: ``num_gpus`` is ignored (kept for a uniform signature)."""
    return collective_time("send_recv", nbytes, 2, bandwidth, latency, algorithm, fit)


def all_to_all_time(nbytes: Any, num_gpus: int, bandwidth: float, latency: float, algorithm: str = "ring",
                    fit: CollectiveFit | None = None) -> np.ndarray:  # fmt: skip
    return collective_time("all_to_all", nbytes, num_gpus, bandwidth, latency, algorithm, fit)


# ---------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------
def _fit_band(S: np.ndarray, T: np.ndarray, steps: float, factor: float, bw_cap: float | None = None) -> tuple[float, float]:
    """Non-negative least squares on the relative error of ``T = steps*lat + factor*S/bw``;
    returns (bw, lat). A latency-bound band (time flat in size: a fitted bandwidth above 4x
    ``bw_cap``, the large messages' bandwidth) gets ``bw_cap`` and a refitted latency."""
    from scipy.optimize import nnls

    A = np.column_stack([np.full_like(S, steps), factor * S]) / T[:, None]
    scale = np.array([1e-6, 1e-11])  # condition the columns: latency ~us, 1/bw ~1e-11 s/B
    x, _ = nnls(A * scale, np.ones_like(T))
    lat, inv_bw = float(x[0] * scale[0]), float(x[1] * scale[1])
    if bw_cap is not None and (inv_bw <= 0 or 1.0 / inv_bw > 4.0 * bw_cap):
        inv_bw = 1.0 / bw_cap
        y = 1.0 - factor * S * inv_bw / T
        a = steps / T
        lat = max(float(np.dot(a, y) / np.dot(a, a)), 0.0) if steps > 0 else 0.0
    if inv_bw <= 0:
        inv_bw = float(np.max(T / (factor * S)))
    return 1.0 / inv_bw, lat


def fit_collective(
    kind: str,
    nbytes: Sequence[float] | np.ndarray,
    time_s: Sequence[float] | np.ndarray,
    num_gpus: int,
    algorithm: str = "ring",
    edges: Sequence[float] | None = DEFAULT_BAND_EDGES,
    min_per_band: int = 8,
) -> CollectiveFit:
    """Effective bandwidth and latency per size band (``edges=None`` or ``()``: one band)."""
    S = np.asarray(nbytes, dtype=np.float64)
    T = np.asarray(time_s, dtype=np.float64)
    ok = np.isfinite(S) & np.isfinite(T) & (S > 0) & (T > 0)
    S, T = S[ok], T[ok]
    if len(S) < 2:
        raise ValueError(f"need at least 2 samples to fit {kind} over {num_gpus} GPUs (got {len(S)})")
    steps, factor = coefficients(kind, num_gpus, algorithm)
    bounds = [*sorted(float(e) for e in (edges or ())), float("inf")]
    # merge bands with too few samples into the next one
    merged: list[float] = []
    lo = 0.0
    for b in bounds:
        cnt = int(((lo < S) & (b >= S)).sum())
        if cnt >= min_per_band or b == float("inf"):
            merged.append(b)
            lo = b
    if len(merged) > 1 and int((merged[-2] < S).sum()) < min_per_band:
        merged.pop(-2)
    big = np.quantile(S, 0.5) <= S
    bw_all, _ = _fit_band(S[big], T[big], steps, factor)
    bands = []
    lo = 0.0
    for b in merged:
        m = (lo < S) & (b >= S)
        bw, lat = _fit_band(S[m], T[m], steps, factor, bw_all) if m.sum() >= 2 else _fit_band(S, T, steps, factor)
        bands.append((b, float(f"{bw:.5e}"), float(f"{lat:.5e}")))
        lo = b
    fit = CollectiveFit(kind, int(num_gpus), algorithm, tuple(bands))
    pred = collective_time(kind, S, num_gpus, 1.0, 0.0, algorithm, fit)
    e = np.abs(pred / T - 1.0)
    return CollectiveFit(
        kind, int(num_gpus), algorithm, tuple(bands),
        {"median_ape": float(np.median(e)), "p90_ape": float(np.quantile(e, 0.9)), "n": int(len(e))},
    )  # fmt: skip
