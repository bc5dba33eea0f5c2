"""Shared, contended resources of a deployment: links with fair-shared bandwidth, memory pools.

A :class:`Link` is one direction of one physical link (PCIe H2D, PCIe D2H, NVMe read, ...).
Concurrent transfers share its bandwidth equally (processor sharing): when a transfer starts or
ends, every active transfer's rate is recomputed, so a transfer alone takes
``latency + bytes / bandwidth`` and two equal ones started together take twice the bandwidth
term each. A :class:`MemoryPool` is a tier's capacity; every allocation names its owner and the
pool refuses to exceed its capacity.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING

from simkit.errors import CapacityError
from simkit.units import fmt_bytes

if TYPE_CHECKING:  # SimPy is imported where a world runs its event loop (Cluster), not at import
    import simpy

URGENT = 0
"""SimPy's priority of an urgent event (``simpy.events.URGENT``; tested equal)."""


@dataclass(slots=True)
class _Flow:
    remaining: float
    done: simpy.Event | None
    """Fires the transfer's end step (None for a posted transfer: the link calls it)."""
    xfer: _Transfer


_REMAINING = attrgetter("remaining")


def _urgent(env: simpy.Environment, callback: Callable[[simpy.Event], None]) -> None:
    """Call ``callback`` where a new process would take its first step: an urgent event now (what
    ``env.process`` schedules), so that the link's events keep the places in SimPy's queue that a
    process per transfer and per wake-up gave them, without a generator and a process's events."""
    ev = env.event()
    ev._ok = True
    ev._value = None
    ev.callbacks.append(callback)
    env.schedule(ev, URGENT)


class _Transfer:
    """One transfer's steps: start (latency), join the link's flows, account the bytes and fire
    ``done`` (None: nobody waits for it). Each step runs at the event a per-transfer process
    would have resumed at."""

    __slots__ = ("link", "nbytes", "tag", "done", "start")

    def __init__(self, link: Link, nbytes: float, tag: str, done: simpy.Event | None) -> None:
        self.link = link
        self.nbytes = nbytes
        self.tag = tag
        self.done = done
        self.start = link.env.now

    def begin(self, _ev: simpy.Event) -> None:
        link = self.link
        if link.latency:
            link.env.timeout(link.latency).callbacks.append(self.arrive)  # type: ignore[union-attr]
        else:
            self._enter(at_timeout=False)

    def arrive(self, _ev: simpy.Event) -> None:
        self._enter(at_timeout=True)

    def _enter(self, at_timeout: bool) -> None:
        link = self.link
        inner = None
        if self.done is not None:
            inner = link.env.event()
            inner.callbacks.append(self.finish)  # type: ignore[union-attr]
        link._advance()
        link._flows.append(_Flow(self.nbytes, inner, self))
        link._reschedule(at_timeout)

    def finish(self, _ev: simpy.Event) -> None:
        link = self.link
        now = link.env.now
        link.bytes_moved += self.nbytes
        if link.intervals is not None:
            link.intervals.append((self.start, now, self.tag, self.nbytes))
        if self.done is not None:
            self.done.succeed(now - self.start)


class _Posts:
    """Transfers posted to a link at one instant while none of them has started: they take their
    steps in one event each where a process per transfer took them in adjacent events.

    On a link that carries only posted transfers (nobody waits for its events, so nothing outside
    it depends on when they run), the steps of transfers posted at one instant, before the first
    of them starts, follow each other in the link's own order with nothing of the link's between
    them: their starts, their latencies' ends, and their joins (each but the last making the
    wake-up the previous one armed stale, and itself stale before it is armed). So they are
    taken together: one start event, one latency timeout, the joins in order, and one wake-up,
    the last join's. The link's state goes through the same values in the same order. The
    wake-ups not scheduled would have fired and done nothing; the latest time one would have
    fired at is kept (:attr:`Link.horizon`: :func:`settle_clock` ends the world there, as SimPy's
    clock would). Posts join a batch only while the link has never carried an awaited transfer
    (:attr:`Link.awaited`): the wake-ups of such a link may end an awaited transfer, whose event
    order then matters outside it."""

    __slots__ = ("link", "xfers")

    def __init__(self, link: Link, first: _Transfer) -> None:
        self.link = link
        self.xfers = [first]

    def begin(self, _ev: simpy.Event) -> None:
        link = self.link
        if link._posts is self:
            link._posts = None  # started: a later post at this instant starts after this one
        if link.latency:
            link.env.timeout(link.latency).callbacks.append(self.arrive)  # type: ignore[union-attr]
        else:
            self._enter(at_timeout=False)

    def arrive(self, _ev: simpy.Event) -> None:
        self._enter(at_timeout=True)

    def _enter(self, at_timeout: bool) -> None:
        link = self.link
        xfers = self.xfers
        last = len(xfers) - 1
        if last:
            link._advance()
            flows = link._flows
            least = min(f.remaining for f in flows) if flows else math.inf
            now, bw = link.env._now, link.bandwidth
            horizon = link.horizon
            for k in range(last):
                # _Transfer._enter with the wake-up it arms known to be stale (the next join
                # supersedes it before it is armed): the version moves on, the wake-up is not
                # made; the time it would have fired at is _reschedule's (the least remaining
                # bytes, kept as the flows join, times the flows over the bandwidth)
                x = xfers[k]
                flows.append(_Flow(x.nbytes, None, x))
                link._version += 1
                if x.nbytes < least:
                    least = x.nbytes
                end = now + max(least, 0.0) * len(flows) / bw
                if end > horizon:
                    horizon = end
            link.horizon = horizon
        xfers[last]._enter(at_timeout)


class _Wake:
    """A wake-up of the link when its first flow should be done: armed where a wake-up process
    would have started, stale once the link's flows changed (``version``)."""

    __slots__ = ("link", "delay", "version", "target")

    def __init__(self, link: Link, delay: float, version: int, target: _Flow) -> None:
        self.link = link
        self.delay = delay
        self.version = version
        self.target = target

    def arm(self, _ev: simpy.Event | None) -> None:
        self.link.env.timeout(self.delay).callbacks.append(self.fire)  # type: ignore[union-attr]

    def fire(self, _ev: simpy.Event) -> None:
        link = self.link
        if self.version != link._version:
            return
        link._advance()
        # the target flow is done by construction (rounding aside); so is any flow within 1 ns
        target = self.target
        slack = link.bandwidth / len(link._flows) * 1e-9
        finished = [f for f in link._flows if f is target or f.remaining <= slack]
        link._flows = [f for f in link._flows if not (f is target or f.remaining <= slack)]
        # a process per transfer took its end step at an event of its own, after this one, in
        # this order; a posted transfer's end step touches nothing but the byte count and the
        # intervals, so it is taken now unless an awaited transfer's end precedes it in the list
        # (then it queues behind it, keeping the order of the sums)
        queued = False
        for f in finished:
            if f.done is not None:
                queued = True
                f.done.succeed()
            elif queued:
                ev = link.env.event()
                ev.callbacks.append(f.xfer.finish)  # type: ignore[union-attr]
                ev.succeed()
            else:
                f.xfer.finish(_ev)
        link._reschedule(True)


class Link:
    """One direction of a link, with bandwidth shared fairly among concurrent transfers.

    A transfer and a wake-up of the link are chains of event callbacks, each step at the instant
    and in the queue order a SimPy process per transfer and per wake-up would take it (the
    equivalence is tested against such processes in ``tests/test_prefix_path.py``)."""

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
        self.awaited = False
        """Whether an awaited transfer ever used the link (then each post starts on its own)."""
        self._posts: _Posts | None = None
        """The posted transfers of this instant that have not started yet (see :class:`_Posts`)."""
        self.horizon = 0.0
        """The latest time a wake-up that was not scheduled (stale before it was armed) would have
        fired at: SimPy's clock would end the world no earlier (:func:`settle_clock`)."""

    def transfer(self, nbytes: float, tag: str = "") -> simpy.Event:
        """An event that fires when ``nbytes`` have crossed the link (latency included)."""
        done = self.env.event()
        nbytes = float(nbytes)
        if nbytes <= 0:
            done.succeed(0.0)
            return done
        self.awaited = True
        self._posts = None
        _urgent(self.env, _Transfer(self, nbytes, tag, done).begin)
        return done

    def post(self, nbytes: float, tag: str = "") -> None:
        """A transfer that nobody waits for (background traffic, e.g. prefix-cache demotions):
        it shares the link like any other, without an event for its end."""
        nbytes = float(nbytes)
        if nbytes <= 0:
            return
        xfer = _Transfer(self, nbytes, tag, None)
        if self.awaited:
            _urgent(self.env, xfer.begin)
        elif self._posts is not None:
            self._posts.xfers.append(xfer)
        else:
            posts = self._posts = _Posts(self, xfer)
            _urgent(self.env, posts.begin)


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

    def _reschedule(self, at_timeout: bool) -> None:
        """Schedule a wake-up for the first flow to finish (older wake-ups go stale).
        ``at_timeout``: called from the link's own timeout (a latency's end or a wake-up), whose
        single callback this is. A wake-up process started there would take its first step at
        the very next event (urgent, and no urgent event of this instant is left in the queue
        while an ordinary one is processed), and nothing is scheduled in between, so its timeout
        is scheduled here directly, in the same place in the queue. Otherwise (a transfer's start,
        itself an urgent step) other urgent steps may come first: the wake-up starts urgently."""
        self._version += 1
        if not self._flows:
            return
        n = len(self._flows)
        target = min(self._flows, key=_REMAINING)
        delay = max(target.remaining, 0.0) * n / self.bandwidth
        wake = _Wake(self, delay, self._version, target)
        if at_timeout:
            wake.arm(None)
        else:
            _urgent(self.env, wake.arm)

    @property
    def active(self) -> int:
        return len(self._flows)


def settle_clock(env: simpy.Environment, links: Iterable[Link]) -> None:
    """After ``env.run()``: put the clock where SimPy's would have ended, had the links scheduled
    the wake-ups they knew to be stale (:attr:`Link.horizon`)."""
    for link in links:
        if link.horizon > env._now:
            env._now = link.horizon


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
