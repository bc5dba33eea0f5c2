"""Achieved efficiency of operators: the bridge between a roofline and a measurement.

The cost model times every operator as ``ideal / efficiency + launch_overhead`` where
``ideal = max(flops / peak_flops, bytes / peak_bandwidth)`` (see roofline.py). An
:class:`EfficiencyModel` answers ``efficiency(...)`` for arrays of operators of one class; a
calibration profile provides a fitted one (simkit.cost.profile.Profile), and :class:`DatasheetEfficiency`
is the documented default used when no profile matches.

Operator classes: ``gemm``, ``attn_prefill``, ``attn_decode``, ``elementwise``; link classes
(``copy_h2d``, ``copy_d2h``, ...) and collectives are timed in cost/collectives.py and
engine links from the same profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from simkit.specs.calibration import HostOverhead

if TYPE_CHECKING:
    from simkit.cost.collectives import CollectiveFit
    from simkit.cost.threads import ThreadWakeup

OP_CLASSES = ("gemm", "attn_prefill", "attn_decode", "elementwise")


@runtime_checkable
class EfficiencyModel(Protocol):
    """What the cost model asks of a calibration: achieved/ideal per operator, and fixed costs."""

    name: str

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
        """Fraction (0, 1] of the ideal roofline speed achieved, per operator. Each operator's
        value depends on its own numbers alone, never on the others in the call: the cost
        tables evaluate token counts and operators in whatever grouping is cheapest
        (cost/iteration.py) and rely on getting the same floats."""
        ...

    def launch_overhead(self, op_class: str) -> float:
        """Fixed seconds per operator launch (kernel launch / dispatch)."""
        ...

    def is_measured(self, op_class: str) -> bool:
        """True when ``op_class`` comes from measurements rather than a documented default."""
        ...

    def roofline_time(self, op_class: str, flops: np.ndarray, bytes_: np.ndarray, peak_flops: float,
                      peak_bw: float) -> np.ndarray | None:  # fmt: skip
        """Seconds per operator in closed form (``ideal / efficiency + launch_overhead``) for
        classes that have one (a hot-path shortcut), else None: then the caller uses
        :meth:`efficiency`."""
        ...

    def roofline_coeffs(self, op_class: str, peak_flops: float, peak_bw: float) -> tuple[float, float, float] | None:
        """``(cf, cb, overhead)`` with :meth:`roofline_time` ``= max(flops * cf, bytes * cb) +
        overhead`` (the same operations, so the same bits) for classes that have a closed form,
        else None. Lets a hot loop price an operator on Python floats."""
        ...

    def collective_fit(self, kind: str, topology: str, num_gpus: int) -> CollectiveFit | None:
        """A measured collective model for this topology and GPU count, or None."""
        ...

    def measured_device(self) -> dict[str, Any] | None:
        """The device facts (roofline peaks, fingerprint) the efficiencies refer to; None when
        they refer to whatever device the caller times against (the datasheet defaults)."""
        ...

    def measured_links(self) -> Mapping[str, Any]:
        """Measured copy/link bandwidths and latencies by kind (empty when none)."""
        ...

    def measured_ssd(self) -> Mapping[str, Any]:
        """Measured SSD read/write bandwidth tables (empty when none)."""
        ...

    def host_overhead(self) -> HostOverhead | None:
        """Host seconds per engine iteration, when this model knows them."""
        ...

    def thread_wakeup(self) -> ThreadWakeup | None:
        """The measured cost of waking OpenMP worker threads before a parallel region
        (simkit.cost.threads), or None: nothing to add (one thread, or not measured)."""
        ...

    @property
    def path(self) -> Path | None:
        """The calibration profile file this model was read from; None when it was not read
        from one (datasheet defaults, a profile fitted in memory)."""
        ...

    def fit_quality(self) -> dict[str, FitQuality] | None:
        """How well the model reproduces its measurements, per measured operator class; None
        when it is not fitted to measurements (datasheet defaults)."""
        ...


@dataclass(frozen=True)
class FitQuality:
    """The measured fidelity of one fitted operator class (docs/fidelity.md)."""

    fit_error: dict[str, float]
    """In-sample errors of the fit (e.g. median and p90 absolute percentage error)."""
    cross_validation: dict[str, Any]
    """The leave-one-model-out cross-validation record ({} when the profile has none)."""


@dataclass(frozen=True)
class DatasheetEfficiency(EfficiencyModel):
    """Documented defaults: a fixed fraction of peak compute and of peak bandwidth per class.

    Values (compute, memory): gemm (0.70, 0.80), attn_prefill (0.50, 0.70), attn_decode
    (0.30, 0.60), elementwise (0.10, 0.60). They are typical of well-tuned fp16 kernels on
    recent NVIDIA GPUs (FlashAttention-2 reaches 50-73% of peak on A100/H100 forward; decode
    attention and small elementwise kernels reach well under peak bandwidth) and are replaced
    by fitted values wherever a calibration profile exists.
    """

    name: str = "datasheet-default"
    compute: Mapping[str, float] = field(
        default_factory=lambda: {"gemm": 0.70, "attn_prefill": 0.50, "attn_decode": 0.30, "elementwise": 0.10}
    )
    memory: Mapping[str, float] = field(
        default_factory=lambda: {"gemm": 0.80, "attn_prefill": 0.70, "attn_decode": 0.60, "elementwise": 0.60}
    )
    overhead_s: float = 4e-6

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
        ec, em = self.compute[op_class], self.memory[op_class]
        if np.ndim(flops) == 0 and np.ndim(bytes_) == 0:
            f, b = float(flops), float(bytes_)
            ideal_s = max(f / peak_flops, b / peak_bw)
            actual_s = max(f / (peak_flops * ec), b / (peak_bw * em))
            return np.float64(ideal_s / actual_s if actual_s > 0 else 1.0)
        flops = np.asarray(flops, dtype=np.float64)
        bytes_ = np.asarray(bytes_, dtype=np.float64)
        ideal = np.maximum(flops * (1.0 / peak_flops), bytes_ * (1.0 / peak_bw))
        actual = np.maximum(flops * (1.0 / (peak_flops * ec)), bytes_ * (1.0 / (peak_bw * em)))
        return np.divide(ideal, actual, out=np.ones_like(ideal), where=actual > 0)

    def roofline_time(self, op_class: str, flops: np.ndarray, bytes_: np.ndarray, peak_flops: float, peak_bw: float) -> np.ndarray:
        """Seconds per operator: max(F / (peak x compute eff), B / (bw x memory eff)) + overhead.
        The same as ideal / efficiency(...) + launch_overhead(...), computed directly (hot path)."""
        cf, cb, overhead = self.roofline_coeffs(op_class, peak_flops, peak_bw)
        return np.maximum(flops * cf, bytes_ * cb) + overhead

    def roofline_coeffs(self, op_class: str, peak_flops: float, peak_bw: float) -> tuple[float, float, float]:
        return 1.0 / (peak_flops * self.compute[op_class]), 1.0 / (peak_bw * self.memory[op_class]), self.overhead_s

    def launch_overhead(self, op_class: str) -> float:
        return self.overhead_s

    def is_measured(self, op_class: str) -> bool:
        return False

    def collective_fit(self, kind: str, topology: str, num_gpus: int) -> CollectiveFit | None:
        return None

    def measured_device(self) -> dict[str, Any] | None:
        return None

    def measured_links(self) -> Mapping[str, Any]:
        return {}

    def measured_ssd(self) -> Mapping[str, Any]:
        return {}

    def host_overhead(self) -> HostOverhead | None:
        return None

    def thread_wakeup(self) -> ThreadWakeup | None:
        return None

    @property
    def path(self) -> Path | None:
        return None

    def fit_quality(self) -> dict[str, FitQuality] | None:
        return None
