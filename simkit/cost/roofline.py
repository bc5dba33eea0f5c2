"""Operator -> seconds: roofline with calibrated efficiency plus launch overhead."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from simkit.cost.device import ComputeDevice
from simkit.cost.efficiency import EfficiencyModel
from simkit.cost.ops import Op
from simkit.cost.threads import runs_parallel, wakeup_extra


@dataclass(frozen=True)
class OpTime:
    op: Op
    time_s: float
    """Seconds for one occurrence (efficiency, launch overhead and, with a profile that measured
    it, the OpenMP wake-up before a parallel region included)."""
    ideal_s: float
    efficiency: float
    bound: str
    """"compute" or "memory": which side of the roofline the ideal time sits on."""


def ideal_time(flops: np.ndarray, bytes_: np.ndarray, peak_flops: float, peak_bw: float) -> np.ndarray:
    return np.maximum(np.asarray(flops) / peak_flops, np.asarray(bytes_) / peak_bw)


def time_ops(ops: Sequence[Op], device: ComputeDevice, eff: EfficiencyModel, dtype: str) -> list[OpTime]:
    """Time each operator (one occurrence each); operators of one class are evaluated together.
    ``ops`` are one forward pass in execution order (as :func:`~simkit.cost.ops.forward_ops` lists
    them): with a profile that measured the OpenMP wake-up (more than one thread), each parallel
    operator's time includes the wake-up after the serial operators before it."""
    out: list[OpTime | None] = [None] * len(ops)
    by_class: dict[str, list[int]] = {}
    for i, op in enumerate(ops):
        by_class.setdefault(op.op_class, []).append(i)
    pf, bw = device.peak_flops(dtype), device.mem_bandwidth
    for cls, idx in by_class.items():
        flops = np.array([ops[i].flops for i in idx])
        byts = np.array([ops[i].bytes for i in idx])
        keys = set().union(*(ops[i].shape.keys() for i in idx))
        shape = {k: np.array([ops[i].shape.get(k, np.nan) for i in idx]) for k in keys}
        shape["op"] = np.array([ops[i].kernel_name for i in idx])
        ideal = ideal_time(flops, byts, pf, bw)
        e = np.clip(eff.efficiency(cls, flops, byts, shape, pf, bw, dtype), 1e-4, 1.0)
        t = ideal / e + eff.launch_overhead(cls)
        for j, i in enumerate(idx):
            bound = "compute" if flops[j] / pf >= byts[j] / bw else "memory"
            out[i] = OpTime(ops[i], float(t[j]), float(ideal[j]), float(e[j]), bound)
    res = [o for o in out if o is not None]
    wake = eff.thread_wakeup()
    if wake is not None and res:
        # the OpenMP wake-up before each parallel region (simkit.cost.threads), in pass order
        extra = wakeup_extra([runs_parallel(o.op.op_class, o.op.shape) for o in res], [o.time_s for o in res], wake,
                             [o.op.count for o in res])  # fmt: skip
        res = [replace(o, time_s=o.time_s + float(x)) if float(x) else o for o, x in zip(res, extra)]
    return res


def total_time(times: Sequence[OpTime]) -> float:
    return float(sum(t.time_s * t.op.count for t in times))
