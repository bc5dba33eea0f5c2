"""Shared, contended resources of a deployment: links with fair-shared bandwidth, memory pools.

A :class:`Link` is one direction of one physical link (PCIe H2D, PCIe D2H, NVMe read, ...).
Concurrent transfers share its bandwidth equally (processor sharing): when a transfer starts or
ends, every active transfer's rate is recomputed, so a transfer alone takes
``latency + bytes / bandwidth`` and two equal ones started together take twice the bandwidth
term each. A :class:`MemoryPool` is a tier's capacity; every allocation names its owner and the
pool refuses to exceed its capacity.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import simpy

from simkit.errors import CapacityError
from simkit.units import fmt_bytes


@dataclass
class _Flow:
    remaining: float
    done: simpy.Event
    tag: str


class Link:
    """One direction of a link, with bandwidth shared fairly among concurrent transfers."""

    def __init__(self, env: simpy.Environment, name: str, bandwidth: float, latency: float = 0.0) -> None:
        if bandwidth <= 0:
            raise ValueError(f"link {name}: bandwidth must be > 0")
        self.env = env
        self.name = name
        self.bandwidth = float(bandwidth)
        self.latency = float(latency)
        self._flows: list[_Flow] = []
        self._last = 0.0
        self._version = 0
        self.busy_time = 0.0
        self.bytes_moved = 0.0
        self.intervals: list[tuple[float, float, str, float]] | None = None
        """(start, end, tag, bytes) per transfer when tracing is on."""
        self.busy_log: list[list[float]] | None = None
        """[start, end] of each busy period (adjacent ones merged) when recording is on."""

    def transfer(self, nbytes: float, tag: str = "") -> simpy.Event:
        """An event that fires when ``nbytes`` have crossed the link (latency included)."""
        done = self.env.event()
        nbytes = float(nbytes)
        if nbytes <= 0:
            done.succeed(0.0)
            return done
        self.env.process(self._run(nbytes, done, tag))
        return done

    def _run(self, nbytes: float, done: simpy.Event, tag: str):  # type: ignore[no-untyped-def]
        start = self.env.now
        if self.latency:
            yield self.env.timeout(self.latency)
        inner = self.env.event()
        self._advance()
        self._flows.append(_Flow(nbytes, inner, tag))
        self._reschedule()
        yield inner
        self.bytes_moved += nbytes
        if self.intervals is not None:
            self.intervals.append((start, self.env.now, tag, nbytes))
        done.succeed(self.env.now - start)

    def _advance(self) -> None:
        now = self.env.now
        dt = now - self._last
        if self._flows and dt > 0:
            share = self.bandwidth * dt / len(self._flows)
            for f in self._flows:
                f.remaining -= share
            self.busy_time += dt
            if self.busy_log is not None:
                if self.busy_log and self.busy_log[-1][1] == self._last:
                    self.busy_log[-1][1] = now
                else:
                    self.busy_log.append([self._last, now])
        self._last = now

    def _reschedule(self) -> None:
        self._version += 1
        if not self._flows:
            return
        v = self._version
        n = len(self._flows)
        target = min(self._flows, key=lambda f: f.remaining)
        delay = max(target.remaining, 0.0) * n / self.bandwidth
        self.env.process(self._wake(delay, v, target))

    def _wake(self, delay: float, version: int, target: _Flow):  # type: ignore[no-untyped-def]
        yield self.env.timeout(delay)
        if version != self._version:
            return
        self._advance()
        # the target flow is done by construction (rounding aside); so is any flow within 1 ns
        slack = self.bandwidth / len(self._flows) * 1e-9
        finished = [f for f in self._flows if f is target or f.remaining <= slack]
        self._flows = [f for f in self._flows if not (f is target or f.remaining <= slack)]
        for f in finished:
            f.done.succeed()
        self._reschedule()

    @property
    def active(self) -> int:
        return len(self._flows)


@dataclass
class MemoryPool:
    """A tier's capacity, with every allocation accounted by owner."""

    name: str
    capacity: float
    used_by: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    used: float = 0.0
    peak: float = 0.0

    def can_fit(self, nbytes: float) -> bool:
        return self.used + nbytes <= self.capacity * (1 + 1e-12)

    def alloc(self, owner: str, nbytes: float) -> None:
        if nbytes < 0:
            raise ValueError("allocation must be >= 0 bytes")
        if not self.can_fit(nbytes):
            raise CapacityError(
                f"{self.name}: {owner} needs {fmt_bytes(nbytes)} but only {fmt_bytes(self.capacity - self.used)} "
                f"of {fmt_bytes(self.capacity)} is free (in use: "
                + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in self.used_by.items() if v > 0)
                + ")",
                key=f"tier {self.name}",
            )
        self.used_by[owner] += nbytes
        self.used += nbytes
        self.peak = max(self.peak, self.used)

    def free(self, owner: str, nbytes: float) -> None:
        have = self.used_by.get(owner, 0.0)
        if nbytes > have * (1 + 1e-9) + 1e-6:
            raise ValueError(f"{self.name}: {owner} frees {nbytes} bytes but holds {have}")
        self.used_by[owner] = max(have - nbytes, 0.0)
        self.used = max(self.used - nbytes, 0.0)

    @property
    def free_bytes(self) -> float:
        return self.capacity - self.used
