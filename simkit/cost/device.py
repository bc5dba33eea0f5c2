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
