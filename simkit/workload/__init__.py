"""What ARRIVES: traces and synthetic workloads, as columnar request sets."""

from simkit.workload.base import Requests

__all__ = ["Requests"]
