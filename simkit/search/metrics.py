"""The metric names a search may constrain, optimise and plot, and which way is better.

These are the scalar metrics of summary.json (docs/metrics.md) plus a few the search derives
from them (per GPU, per dollar, per user). ``tests/test_search.py`` checks the summary names
against a real summary.json, so this list cannot drift silently.
"""

from __future__ import annotations

import math
from typing import Any

# scalar metrics of summary.json; True = higher is better, False = lower is better, None = neither
SUMMARY_METRICS: dict[str, bool | None] = {
    "requests_total": None,
    "requests_completed": True,
    "requests_rejected": False,
    "requests_unfinished": False,
    "makespan_s": False,
    **{f"{m}_p{p}_s": False for m in ("ttft", "queue", "tpot", "tbt", "e2e") for p in (50, 90, 99)},
    "ttft_mean_s": False,
    "tpot_mean_s": False,
    "tbt_max_s": False,
    "output_tokens": True,
    "input_tokens": True,
    "output_tokens_per_s": True,
    "total_tokens_per_s": True,
    "requests_per_s": True,
    "slo_attainment": True,
    "goodput_requests_per_s": True,
    "goodput_output_tokens_per_s": True,
    "slo_met": True,
    "kv_blocks_total": True,
    "kv_utilization_mean": None,
    "kv_utilization_peak": None,
    "prefix_cache_hit_rate": True,
    "preemptions": False,
    "swaps": False,
    "cost_usd": False,
    "cost_per_hour_usd": False,
    "usd_per_million_output_tokens": False,
    "energy_j": False,
    "energy_per_output_token_j": False,
    "device_utilization": True,
    "collective_share": False,
    "replicas": None,
    "tp": None,
    "pp": None,
    "gpus": False,
    "kv_blocks_per_replica": True,
    "weights_bytes_per_gpu": None,
    "seed": None,
    "queue_growth": False,
    "e2e_growth": False,
    "overloaded": False,
    "max_context_tokens": None,
    "trace_bad_lines": False,
}

# metrics the search derives from summary.json (docs/search.md defines them)
BOOLEAN_METRICS = frozenset({"slo_met", "overloaded"})
"""The summary's true/false metrics: a constraint on one may be written ``{max: false}`` (read as
0) or ``{min: true}`` (1); a true/false bound on any other metric is refused."""

DERIVED_METRICS: dict[str, bool | None] = {
    "output_tokens_per_s_per_gpu": True,
    "goodput_output_tokens_per_s_per_gpu": True,
    "output_tokens_per_usd": True,
    "goodput_output_tokens_per_usd": True,
    "tokens_per_s_per_user": True,
}

# capacity mode adds these (docs/search.md, capacity mode)
CAPACITY_METRICS: dict[str, bool | None] = {
    "max_rate_rps": True,
    "max_rate_rps_per_usd_hour": True,
    "max_rate_rps_per_gpu": True,
}


def known_metrics(capacity: bool) -> dict[str, bool | None]:
    out = {**SUMMARY_METRICS, **DERIVED_METRICS}
    if capacity:
        out.update(CAPACITY_METRICS)
    return out


def _div(a: Any, b: Any) -> float:
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return math.nan
    if not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return math.nan
    return a / b


def derive(s: dict[str, Any]) -> dict[str, float]:
    """The derived metrics of one summary (NaN where undefined, e.g. per GPU on a CPU plan)."""
    price = s.get("cost_per_hour_usd")
    gpus = s.get("gpus")
    tok = s.get("output_tokens_per_s")
    good = s.get("goodput_output_tokens_per_s", math.nan)
    return {
        "output_tokens_per_s_per_gpu": _div(tok, gpus),
        "goodput_output_tokens_per_s_per_gpu": _div(good, gpus),
        "output_tokens_per_usd": _div(tok, price) * 3600.0,
        "goodput_output_tokens_per_usd": _div(good, price) * 3600.0,
        "tokens_per_s_per_user": _div(1.0, s.get("tpot_p50_s")),
    }
