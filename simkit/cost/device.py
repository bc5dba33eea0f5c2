"""The compute rates of one device (a GPU, or the CPU sockets of a node) as the cost model sees them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simkit.specs.hardware import CPUSpec, GPUSpec, MemorySpec, PeakFlops

if TYPE_CHECKING:
    from simkit.cost.efficiency import EfficiencyModel


@dataclass(frozen=True)
class ComputeDevice:
    name: str
    """Catalog name of the GPU, or of the CPU for CPU compute."""
    kind: str
    """"gpu" or "cpu"."""
    peak: PeakFlops
    mem_bandwidth: float
    memory: float
    launch_overhead: float
    sockets: int = 1
    sm_count: int = 0
    """Streaming multiprocessors of a GPU (0: not modelled, e.g. a CPU): how many sequences'
    decode attention runs at once (see IterationModel.decode_attention)."""

    def peak_flops(self, dtype: str) -> float:
        return self.peak.for_dtype(dtype) * self.sockets

    @classmethod
    def from_gpu(cls, gpu: GPUSpec) -> ComputeDevice:
        return cls(
            gpu.name, "gpu", gpu.peak_flops, gpu.memory_bandwidth, gpu.memory, gpu.kernel_launch_overhead, sm_count=gpu.sm_count
        )

    def calibrated(self, profile_device: dict, flops_scale: float = 1.0, bw_scale: float = 1.0) -> ComputeDevice:
        """This device with the roofline a calibration profile measured it against (the peaks
        its fitted efficiencies refer to), times the what-if multipliers ``flops_scale`` and
        ``bw_scale`` that the scenario applied to this device (``hardware.flops_scale`` /
        ``bandwidth_scale``). A fitted efficiency says how well kernels use the hardware, the
        peaks how much hardware there is: an operator's time is the ideal at these (scaled)
        peaks divided by the profile's efficiency, so a what-if moves calibrated times the way
        it moves datasheet ones. A profile of another device changes nothing (the scaled
        catalog figures stay)."""
        from dataclasses import replace

        from simkit.specs.hardware import DTYPE_FALLBACK, PeakFlops

        if profile_device.get("catalog") not in (None, self.name) or profile_device.get("kind") != self.kind:
            return self
        peaks = profile_device.get("peak_flops") or {}
        bw = profile_device.get("mem_bandwidth")
        if not peaks and not bw:
            return self
        # every dtype runs at the peak the profile's own roofline gives it (its fallback chain,
        # e.g. fp16 -> bf16 on a CPU measured in bf16 and fp32): the fitted efficiencies are
        # relative to that peak, so a catalog figure for a dtype the profile lacks must not
        # replace it (that would time operators faster than the profile's measured peak).
        # self's peaks already carry flops_scale; the profile's are of the unscaled device.
        prof = {k: float(v) * flops_scale for k, v in peaks.items() if v}
        per: dict[str, float | None] = {}
        for k in ("fp32", "tf32", "fp16", "bf16", "fp8", "int8"):
            hit = next((prof[d] for d in DTYPE_FALLBACK.get(k, (k,)) if d in prof), None)
            # the profile's peaks are for the whole measured device: per socket for from_cpu's scaling
            per[k] = hit / self.sockets if hit is not None else getattr(self.peak, k)
        return replace(
            self, peak=PeakFlops.model_construct(**per), mem_bandwidth=float(bw) * bw_scale if bw else self.mem_bandwidth
        )

    def for_profile(self, eff: EfficiencyModel, scale: Mapping[str, float]) -> ComputeDevice:
        """:meth:`calibrated` against ``eff``'s roofline when ``eff`` is a calibration profile
        (its ``measured_device()`` is not None), with the node's what-if multipliers ``scale``
        (:attr:`simkit.specs.node.Node.scale`); otherwise this device unchanged."""
        prof_dev = eff.measured_device()
        if prof_dev is None:
            return self
        bw_key = "hbm" if self.kind == "gpu" else "dram"
        return self.calibrated(prof_dev, float(scale.get(f"flops_{self.kind}", 1.0)), float(scale.get(bw_key, 1.0)))

    @classmethod
    def from_cpu(cls, cpu: CPUSpec, dram: MemorySpec, sockets: int, dram_capacity: float) -> ComputeDevice:
        return cls(
            cpu.name,
            "cpu",
            cpu.peak_flops,
            dram.bandwidth * sockets,
            dram_capacity,
            launch_overhead=2e-6,
            sockets=sockets,
        )
