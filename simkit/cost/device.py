"""The compute rates of one device (a GPU, or the CPU sockets of a node) as the cost model sees them."""

from __future__ import annotations

from dataclasses import dataclass

from simkit.specs.hardware import CPUSpec, GPUSpec, MemorySpec, PeakFlops


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

    def peak_flops(self, dtype: str) -> float:
        return self.peak.for_dtype(dtype) * self.sockets

    @classmethod
    def from_gpu(cls, gpu: GPUSpec) -> ComputeDevice:
        return cls(gpu.name, "gpu", gpu.peak_flops, gpu.memory_bandwidth, gpu.memory, gpu.kernel_launch_overhead)

    def calibrated(self, profile_device: dict) -> ComputeDevice:
        """This device with the roofline a calibration profile measured it against (the peaks
        its fitted efficiencies refer to). A profile of another device changes nothing."""
        from dataclasses import replace

        from simkit.specs.hardware import PeakFlops

        if profile_device.get("catalog") not in (None, self.name) or profile_device.get("kind") != self.kind:
            return self
        peaks = profile_device.get("peak_flops") or {}
        bw = profile_device.get("mem_bandwidth")
        if not peaks and not bw:
            return self
        merged = {k: getattr(self.peak, k) for k in ("fp32", "tf32", "fp16", "bf16", "fp8", "int8")}
        merged.update({k: float(v) for k, v in peaks.items() if k in merged and v})
        # the profile's peaks are for the whole measured device: per socket for from_cpu's scaling
        per = {k: (v / self.sockets if v is not None and k in peaks else v) for k, v in merged.items()}
        return replace(self, peak=PeakFlops.model_construct(**per), mem_bandwidth=float(bw) if bw else self.mem_bandwidth)

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
