"""Per-request and per-iteration records -> the summary. Definitions live in docs/metrics.md.

Every latency is measured from the request's arrival (so queueing is included) unless its name
says otherwise; ``queue_*`` is arrival -> first scheduled alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from simkit.engine.state import REJECT_REASONS, RequestTable, TBTHistogram


def percentile_sorted(v: np.ndarray, p: float) -> float:
    """``float(np.percentile(v, p))`` (numpy's default ``linear`` method) of a sorted array of
    finite values, bit for bit: the same virtual index ``(n - 1) * (p / 100)``, the same two
    neighbours and numpy's two-sided interpolation (from the upper neighbour when the fraction
    is at least 0.5), for ``0 <= p <= 100``. Without ``np.percentile``, whose ``np.unique`` call
    imports ``numpy.ma`` (~12 ms of every run's start-up; tests/test_startup.py checks the bits
    against numpy)."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p!r} is outside [0, 100]")
    n = v.size
    if n == 0:
        return float("nan")
    virtual = (n - 1) * (p / 100)
    if virtual >= n - 1:
        return float(v[-1])
    lo = math.floor(virtual)
    a, b = float(v[lo]), float(v[lo + 1])
    t = virtual - lo
    d = b - a
    return b - d * (1 - t) if t >= 0.5 else a + d * t


def median(x: np.ndarray) -> float:
    """``float(np.median(x))`` of a non-empty array of finite values, bit for bit: the middle
    value, or the sum of the two middle values halved (as ``np.mean`` of the pair). Without
    ``np.median``, whose NaN check imports ``numpy.ma`` (tests/test_startup.py checks the bits)."""
    h = x.size // 2
    if x.size % 2:
        return float(np.partition(x, h)[h])
    part = np.partition(x, [h - 1, h])
    return (float(part[h - 1]) + float(part[h])) / 2.0


def _pcts(x: np.ndarray, ps: tuple[float, ...]) -> list[float]:
    """The ``ps``-th percentiles of the finite values of ``x`` (NaN when there are none), from
    one sorted copy."""
    x = x[np.isfinite(x)]
    if x.size == 0:
        return [float("nan")] * len(ps)
    v = np.sort(x)
    return [percentile_sorted(v, p) for p in ps]


def _pct_missing(x: np.ndarray, missing: int, p: float) -> float:
    """The ``p``-th percentile of ``x`` plus ``missing`` values of infinite latency (requests
    that never completed): inf when the percentile falls among them."""
    x = x[np.isfinite(x)]
    n = x.size + missing
    if n == 0:
        return float("nan")
    if missing == 0:
        return percentile_sorted(np.sort(x), p)
    # numpy's linear method over the sorted values, the missing ones last (infinite)
    rank = p / 100.0 * (n - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    if hi >= x.size:
        return math.inf
    v = np.sort(x)
    return float(v[lo] + (rank - lo) * (v[hi] - v[lo]))


OVERLOAD_GROWTH = 0.05
"""Growth (seconds of extra delay per second of arrivals) above which a run is ``overloaded``."""

MIN_OVERLOAD_REQUESTS = 20


def delay_growth(arrival: np.ndarray, delay: np.ndarray) -> float:
    """How fast a per-request delay rises over the arrivals: the requests are split by arrival
    into halves, and growth is the rise of the median delay from the first half to the second
    per second between the halves' mean arrival times. A stable system delays late arrivals as
    much as early ones (growth ~0); one offered more than it serves builds a backlog, and the
    delay grows by about offered rate / served rate - 1 per second. 0 when the arrivals span no
    time (a batch at t=0) or there are fewer than 20 requests."""
    ok = np.isfinite(delay)
    a, w = arrival[ok], delay[ok]
    if a.size < MIN_OVERLOAD_REQUESTS:
        return 0.0
    order = np.argsort(a, kind="stable")
    a, w = a[order], w[order]
    h = a.size // 2
    dt = float(a[h:].mean() - a[:h].mean())
    if dt <= 0:
        return 0.0
    return (median(w[h:]) - median(w[:h])) / dt


@dataclass
class CostInputs:
    price_per_hour: float
    """$/h of the hardware the deployment occupies."""
    num_gpus: int
    idle_w: float
    tdp_w: float
    busy_s: float
    """Sum over GPUs (or CPU sockets) of time spent computing."""
    num_blocks: int
    kv_time_weighted_used: float
    kv_peak_used: int


def run_window(table: RequestTable) -> tuple[float, float]:
    """(first arrival, last finish) of a run: the one definition of its time span, ``makespan_s``
    (docs/metrics.md). The last finish is the first arrival when nothing finished (0 for no
    requests)."""
    t0 = float(table.arrival.min()) if table.n else 0.0
    done = np.isfinite(table.finish)
    return t0, (float(np.nanmax(table.finish)) if done.any() else t0)


def run_makespan(table: RequestTable) -> float:
    """``makespan_s``: last finish - first arrival (0 when nothing finished)."""
    t0, t_end = run_window(table)
    return max(t_end - t0, 0.0)


def summarize(table: RequestTable, tbt: TBTHistogram, cost: CostInputs, slo: Any, extra: dict[str, Any]) -> dict[str, Any]:
    done = np.isfinite(table.finish)
    n_done = int(done.sum())
    n_rej = int(table.rejected.sum())
    arr = table.arrival
    ttft = (table.first_token - arr)[done]
    e2e = (table.finish - arr)[done]
    queue = (table.scheduled - arr)[done]
    out = table.output[done]
    multi = out > 1
    tpot = ((table.finish - table.first_token)[done][multi]) / (out[multi] - 1)
    makespan = run_makespan(table)
    out_tokens = int(table.gen[done].sum())
    in_tokens = int(table.input[done].sum())
    s: dict[str, Any] = {
        "requests_total": int(table.n),
        "requests_completed": n_done,
        "requests_rejected": n_rej,
        "requests_unfinished": int(table.n - n_done - n_rej),
        "makespan_s": makespan,
    }
    for p, v in zip((50, 90, 99), _pcts(ttft, (50, 90, 99)), strict=True):
        s[f"ttft_p{p}_s"] = v
    s["ttft_mean_s"] = float(ttft.mean()) if ttft.size else float("nan")
    for p, v in zip((50, 90, 99), _pcts(queue, (50, 90, 99)), strict=True):
        s[f"queue_p{p}_s"] = v
    for p, v in zip((50, 90, 99), _pcts(tpot, (50, 90, 99)), strict=True):
        s[f"tpot_p{p}_s"] = v
    s["tpot_mean_s"] = float(tpot.mean()) if tpot.size else float("nan")
    for p in (50, 90, 99):
        s[f"tbt_p{p}_s"] = tbt.percentile(p)
    tbt.flush()
    s["tbt_max_s"] = tbt.max if tbt.total else float("nan")
    for p, v in zip((50, 90, 99), _pcts(e2e, (50, 90, 99)), strict=True):
        s[f"e2e_p{p}_s"] = v
    s["output_tokens"] = out_tokens
    s["input_tokens"] = in_tokens
    s["output_tokens_per_s"] = out_tokens / makespan if makespan > 0 else float("nan")
    s["total_tokens_per_s"] = (out_tokens + in_tokens) / makespan if makespan > 0 else float("nan")
    s["requests_per_s"] = n_done / makespan if makespan > 0 else float("nan")
    # goodput under the SLO: requests whose own TTFT and TPOT meet the per-request bounds
    ttft_b = slo.ttft_s or min([v for v in (slo.ttft_p90_s, slo.ttft_p99_s) if v] or [math.inf])
    tpot_b = slo.tpot_s or min([v for v in (slo.tpot_p90_s, slo.tpot_p99_s) if v] or [math.inf])
    if math.isfinite(ttft_b) or math.isfinite(tpot_b):
        # every submitted request counts: a rejected (or unfinished) one does not meet the SLO
        req_tpot = np.where(out > 1, (table.finish - table.first_token)[done] / np.maximum(out - 1, 1), 0.0)
        ok = (ttft <= ttft_b) & (req_tpot <= tpot_b)
        missing = int(table.n - n_done)
        s["slo_attainment"] = float(ok.sum()) / table.n if table.n else float("nan")
        s["goodput_requests_per_s"] = float(ok.sum()) / makespan if makespan > 0 else float("nan")
        s["goodput_output_tokens_per_s"] = float(out[ok].sum()) / makespan if makespan > 0 else float("nan")
        checks = {
            "ttft_p90_s": (slo.ttft_p90_s, _pct_missing(ttft, missing, 90)),
            "ttft_p99_s": (slo.ttft_p99_s, _pct_missing(ttft, missing, 99)),
            "tpot_p90_s": (slo.tpot_p90_s, _pct_missing(tpot, missing, 90)),
            "tpot_p99_s": (slo.tpot_p99_s, _pct_missing(tpot, missing, 99)),
        }
        s["slo_met"] = all(v <= b for b, v in checks.values() if b is not None)
    s["rejection_reasons"] = {
        REJECT_REASONS[k]: int(c) for k, c in enumerate(np.bincount(table.reject_reason, minlength=len(REJECT_REASONS))) if k and c
    }
    # overload: the wait for admission, or the time in the system (a continuous batch absorbs a
    # backlog into ever larger, slower batches before its waiting queue grows), rises over the run
    admitted = ~table.rejected
    s["queue_growth"] = delay_growth(arr[admitted], (table.scheduled - arr)[admitted])
    s["e2e_growth"] = delay_growth(arr[done], (table.finish - arr)[done])
    s["overloaded"] = bool(max(s["queue_growth"], s["e2e_growth"]) > OVERLOAD_GROWTH)
    # KV cache and prefix cache
    s["kv_blocks_total"] = cost.num_blocks
    s["kv_utilization_mean"] = cost.kv_time_weighted_used / cost.num_blocks if cost.num_blocks else float("nan")
    s["kv_utilization_peak"] = cost.kv_peak_used / cost.num_blocks if cost.num_blocks else float("nan")
    prompt = float(table.input[done].sum())
    hits = table.hit_tier_tokens[done].sum(axis=0)
    s["prefix_cache_hit_rate"] = float(hits.sum()) / prompt if prompt else 0.0
    s["prefix_cache_hit_rate_by_tier"] = {
        t: float(hits[k]) / prompt if prompt else 0.0 for k, t in enumerate(("hbm", "dram", "cxl", "ssd"))
    }
    s["preemptions"] = int(table.preemptions.sum())
    s["swaps"] = int(table.swaps.sum())
    # cost and energy (docs/metrics.md: idle power plus utilisation-weighted dynamic power)
    hours = makespan / 3600.0
    dollars = cost.price_per_hour * hours
    s["cost_usd"] = dollars
    s["cost_per_hour_usd"] = cost.price_per_hour
    s["usd_per_million_output_tokens"] = dollars / out_tokens * 1e6 if out_tokens else float("nan")
    energy = cost.num_gpus * cost.idle_w * makespan + (cost.tdp_w - cost.idle_w) * cost.busy_s
    s["energy_j"] = energy
    s["energy_per_output_token_j"] = energy / out_tokens if out_tokens else float("nan")
    s["device_utilization"] = cost.busy_s / (cost.num_gpus * makespan) if makespan > 0 and cost.num_gpus else float("nan")
    s.update(extra)
    return s


def requests_columns(table: RequestTable) -> dict[str, np.ndarray]:
    """The per-request table's columns (requests.parquet), in order."""
    return {
        "request_id": np.arange(table.n),
        "replica": table.replica,
        "arrival_s": table.arrival,
        "scheduled_s": table.scheduled,
        "first_token_s": table.first_token,
        "finish_s": table.finish,
        "input_tokens": table.input,
        "output_tokens": table.output,
        "generated_tokens": table.gen,
        "prefix_hit_tokens": table.hit_tier_tokens.sum(axis=1),
        "preemptions": table.preemptions,
        "swaps": table.swaps,
        "rejected": table.rejected,
        "reject_reason": np.asarray(REJECT_REASONS, dtype=object)[table.reject_reason],
        "ttft_s": table.first_token - table.arrival,
        "e2e_s": table.finish - table.arrival,
    }


def requests_frame(table: RequestTable):  # type: ignore[no-untyped-def]
    import pandas as pd

    return pd.DataFrame(requests_columns(table))
