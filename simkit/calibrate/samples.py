"""Sample rows and timing results shared by the benchmarks (simkit.calibrate.bench, .ssd): the
samples.csv columns (schema in simkit.specs.calibration), one measurement's repetitions, and the
lazy torch import every benchmark starts with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simkit.errors import CalibrationError


def require_torch() -> Any:
    """Import torch or raise a CalibrationError that says how to get it."""
    try:
        import torch
    except ImportError:
        raise CalibrationError(
            "calibration needs PyTorch, which is not installed: install simkit[calibrate] "
            "(pip install 'simkit[calibrate]')"
        ) from None
    return torch

SAMPLE_COLUMNS = (
    "op_class",
    "op",
    "dtype",
    "m",
    "n",
    "k",
    "numel",
    "batch",
    "tokens",
    "ctx",
    "heads",
    "kv_heads",
    "head_dim",
    "bytes",
    "flops",
    "bytes_moved",
    "time_s",
    "time_s_p10",
    "time_s_p90",
    "reps",
    "source",
    "tp",
)
OPTIONAL_COLUMNS = ("block_size", "queue_depth", "pinned", "direction", "num_gpus", "threads", "raw_times", "other_cores", "t_s", "slowdown")


@dataclass
class Measurement:
    times: list[float]
    """Seconds per call, one value per repetition."""
    inner: int = 1
    other_cores: float | None = None
    """Cores' worth of CPU time other processes and the hypervisor's steal took while it was
    measured (``simkit.calibrate.bench.ContentionCheck``); None where not checked."""

    @property
    def median(self) -> float:
        return float(np.median(self.times))

    @property
    def p10(self) -> float:
        return float(np.percentile(self.times, 10))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.times, 90))

    @property
    def reps(self) -> int:
        return len(self.times)

    def raw(self) -> str:
        return ";".join(f"{t:.6g}" for t in self.times)


def _nan_row() -> dict[str, Any]:
    row: dict[str, Any] = {c: np.nan for c in (*SAMPLE_COLUMNS, *OPTIONAL_COLUMNS)}
    row["raw_times"] = ""
    row["direction"] = ""
    return row


def make_row(
    op_class: str,
    op: str,
    dtype: str,
    meas: Measurement,
    *,
    flops: float,
    bytes_moved: float,
    source: str,
    shape: dict[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    row = _nan_row()
    row.update(
        op_class=op_class,
        op=op,
        dtype=dtype,
        flops=float(flops),
        bytes_moved=float(bytes_moved),
        bytes=float(extra.pop("bytes", bytes_moved)),
        time_s=meas.median,
        time_s_p10=meas.p10,
        time_s_p90=meas.p90,
        reps=meas.reps,
        source=source,
        tp=1,
        raw_times=meas.raw(),
    )
    if meas.other_cores is not None:
        row["other_cores"] = round(float(meas.other_cores), 3)
    for key, val in (shape or {}).items():
        if key in row:
            row[key] = float(val)
    row.update(extra)
    return row
