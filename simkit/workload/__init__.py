"""What ARRIVES: traces and synthetic workloads, as columnar request sets.

``read_trace`` and ``make_synthetic`` are imported on first use (the trace readers pull in
pandas, which a synthetic run does not need).
"""

from typing import Any

from simkit.workload.base import Requests

__all__ = ["TRACE_FORMATS", "Requests", "make_synthetic", "read_trace"]


def __getattr__(name: str) -> Any:
    if name in ("read_trace", "TRACE_FORMATS"):
        from simkit.workload import traces

        return getattr(traces, name)
    if name == "make_synthetic":
        from simkit.workload.synthetic import make_synthetic

        return make_synthetic
    raise AttributeError(name)
