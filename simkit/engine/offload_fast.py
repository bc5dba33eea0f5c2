"""An offloaded step's layer pipeline in plain floats: the times of the event path of
engine/offload.py, without an event per layer or per transfer.

:meth:`OffloadExecutor.run_step` runs a step as SimPy processes: a reader streams each layer's
weights and KV over the links into two staging buffers while the layers compute, write-backs
leave asynchronously, and transfers that share a link share its bandwidth (processor sharing,
engine/resources.Link). When nothing outside the step uses those links during it (one replica
on its links, no prefix-cache fetches, swaps or KV hand-offs on them, the host CPU not shared
with another replica), the step's timeline is a function of the step alone, and
:class:`ClosedFormStep` computes it directly: the reader's and the compute stream's clocks
advance layer by layer, and each link's fair sharing is replayed with ``Link``'s arithmetic
(the same float operations in the same order), so that the step's end time is the one the event
path produces, bit for bit, and so are the links' busy time, busy periods and bytes moved and the
executor's byte and compute counters (tests/test_offload_fast.py checks it on random plans).
One exception, bounded: when a transfer completes at the very instant (equal floats) another
joins the same link direction, the lane completes the first before the second joins, while the
event path orders the two by when their events were scheduled; if it lets the join in first, the
completing transfer's time differs by the rounding of its remainder (a few units in the last
place, relative 1e-15), and later times on that link by as much. The random plans of the tests
never met such a tie; the lane's own test checks the bound (relative 1e-12) where it draws one.

Covered: weights and KV on any tier (disk staged through DRAM, CXL streamed), KV spilled beyond
a length (``kv_spill``), resident layers, CPU attention, ``decode_overlap: false``, int4
compression, pinned copies and pageable ones without CPU attention, one GPU batch per step with
prefetch (``overlap: true``) and any number without, and FlexGen's zig-zag block schedule
(several GPU batches per step with prefetch: :meth:`ClosedFormStep._blocked`), KV read from any
tier and KV and activations written to any (stores staged through DRAM replayed across the
write lanes: :class:`_Stores`; a step's stores that surely land before the next step issues
its own, lane by lane in one go: :meth:`ClosedFormStep._settle`; a burst's reads and a step's
stores, issued at one instant, are compiled once per step and replayed without :func:`_solve`'s
per-call bookkeeping: :func:`_run_program`, :func:`_run_pair`). Activations off the GPU:
without prefetch, and in the block schedule where no host-to-GPU copy waits for compute (pinned
copies, ``decode_overlap``); a step of one GPU batch with prefetch then runs its events. Run
event by event (:func:`closed_form_reason`): the block schedule with KV spilled past a threshold
(:func:`blocked_reason`; in a serving run only the steps that have several GPU batches),
activations off the GPU otherwise, pageable copies with CPU attention (the host thread that
stages them also runs CPU attention), Chrome traces, and plans where anything else uses the
links or the host CPU during a step.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from simkit.engine.offload import GroupCost, Hop, OffloadExecutor, Placement, Share
from simkit.engine.resources import Link
from simkit.specs.tiers import CPU_READ_PATH

if TYPE_CHECKING:
    import simpy

LANE_ORDER: tuple[str, ...] = ("nvme_read", "cxl_read", "d2h", "h2d", "nvme_write", "cxl_write")
"""The order in which a step's link directions are replayed: a staged share's later hop is on a
direction after its earlier one (its join times are then known)."""


PREFIX_ON_LINKS = "prefix caching moves KV over the same links"
SWAPS_ON_LINKS = "swap preemption moves KV over the same links"
HANDOFFS_ON_LINKS = "KV hand-offs over the same links"
"""The reasons :func:`closed_form_reason` gives for the plans whose steps run event by event
only because other traffic of the replica (its own prefix fetches, demotions or swaps, or
disaggregated serving's KV hand-offs) may contend for the step's links."""


def closed_form_reason(
    layout: Placement, cpu_attention: bool, replicas: int, trace: bool, prefix_cache: bool, preemption: str,
    disaggregated: bool, pp: int, overlap: bool, gpu_batches: int,
) -> str | None:
    """None when :class:`ClosedFormStep` reproduces an offloaded plan's steps exactly, else why
    they run event by event. ``cpu_attention``: attention runs on the host CPU (a resource the
    replicas share); ``overlap``, ``gpu_batches``: plan.offload's overlap and num_gpu_batches."""
    if trace:
        return "Chrome trace output"
    if pp > 1:
        return "pipeline stages"
    if overlap and gpu_batches > 1 and (why := blocked_reason(layout, cpu_attention)) is not None:
        return why
    if act_off_gpu(layout) and overlap and (gpu_batches == 1 or gated_copies(layout)):
        # with prefetch, only the block schedule's steps time activations off the GPU
        # (ClosedFormStep._blocked), and only where no host-to-GPU copy waits for compute
        return "activations off the GPU"
    if prefix_cache:
        return PREFIX_ON_LINKS
    if preemption == "swap":
        return SWAPS_ON_LINKS
    if disaggregated:
        return HANDOFFS_ON_LINKS
    if cpu_attention and replicas > 1:
        return "replicas share the host CPU"
    if cpu_attention and layout.pageable_factor < 1.0:
        return "pageable copies staged by the host thread that runs CPU attention"
    tiers = tuple(CPU_READ_PATH)
    paths = [p for t in tiers for p in (layout.read_path(t), CPU_READ_PATH[t], layout.write_path(t))]
    for path in paths:
        if any(h not in LANE_ORDER for h in path):
            return f"link directions {', '.join(path)}"
        if [LANE_ORDER.index(h) for h in path] != sorted(LANE_ORDER.index(h) for h in set(path)):
            return f"a transfer's hops in the order {', '.join(path)}"
    reads = {h for t in tiers for h in (*layout.read_path(t), *CPU_READ_PATH[t])}
    writes = {h for t in tiers for h in layout.write_path(t)}
    if reads & writes:
        return "reads and writes share a link direction"
    return None


def act_off_gpu(layout: Placement) -> bool:
    """Whether some of the activations live off the GPU (read before and written after every
    layer of every GPU batch)."""
    return any(f > 0 for t, f in layout.act_frac.items() if t != "gpu")


def gated_copies(layout: Placement) -> bool:
    """Whether a decode step's host-to-GPU copies wait for the previous layer's compute
    (pageable copies, or ``decode_overlap: false``: :meth:`OffloadExecutor.run_step`)."""
    return layout.pageable_factor < 1.0 or not layout.plan.decode_overlap


def blocked_reason(layout: Placement, cpu_attention: bool) -> str | None:
    """None when :meth:`ClosedFormStep._blocked` times FlexGen's zig-zag block schedule (several
    GPU batches per layer with prefetch) of this placement: KV read from and written to any
    tier, not spilled past a threshold; else why those steps run event by event."""
    if layout.spill_after is not None:
        return "several GPU batches per layer reading spilled KV: FlexGen's zig-zag block schedule"
    return None


class _Flow:
    """One hop of one share: its bytes on one link direction."""

    __slots__ = ("done", "nbytes", "remaining")

    def __init__(self, nbytes: float) -> None:
        self.nbytes = nbytes
        self.remaining = nbytes
        self.done = math.nan


class _Lane:
    """One link direction's fair sharing, replayed with :class:`Link`'s arithmetic on the real
    link's counters (busy time, busy periods, bytes moved). Flows join in time order; a flow that
    has the lane to itself is kept aside (:attr:`lone`) and replayed in one go, unless another
    joins before it completes (then both share the lane as in ``Link``)."""

    __slots__ = ("bw", "flows", "last", "link", "lone", "target", "wake")

    def __init__(self, link: Link) -> None:
        self.link = link
        self.bw = link.bandwidth
        self.flows: list[_Flow] = []
        self.last = 0.0
        self.wake = math.inf
        self.target: _Flow | None = None
        self.lone: tuple[float, _Flow, float] | None = None
        """(joined, flow, completes) of a flow alone on the lane, not yet replayed."""

    def _advance(self, now: float) -> None:
        dt = now - self.last
        if self.flows and dt > 0:
            share = self.bw * dt / len(self.flows)
            for f in self.flows:
                f.remaining -= share
            self._busy(self.last, now, dt)
        self.last = now

    def _busy(self, start: float, now: float, dt: float) -> None:
        link = self.link
        link.busy_time += dt
        log = link.busy_log
        if log is not None:
            if log and log[-1][1] == start:
                log[-1][1] = now
            else:
                log.append([start, now])

    def _reschedule(self, now: float) -> None:
        if not self.flows:
            self.wake = math.inf
            self.target = None
            return
        target = min(self.flows, key=_remaining)
        self.target = target
        self.wake = now + max(target.remaining, 0.0) * len(self.flows) / self.bw

    def _join(self, now: float, flow: _Flow) -> None:
        self._advance(now)
        self.flows.append(flow)
        self._reschedule(now)

    def _fire(self) -> None:
        """Complete the flows due at the next wake-up."""
        now = self.wake
        self._advance(now)
        slack = self.bw / len(self.flows) * 1e-9
        target = self.target
        finished = [f for f in self.flows if f is target or f.remaining <= slack]
        self.flows = [f for f in self.flows if not (f is target or f.remaining <= slack)]
        for f in finished:
            f.done = now
            self.link.bytes_moved += f.nbytes
        self._reschedule(now)

    def _close(self, at: float, flow: _Flow, wake: float) -> None:
        """Replay a lone flow from ``at`` to ``wake`` (Link._advance, then its bytes)."""
        self.close(at, wake, flow.nbytes)
        flow.done = wake

    def close(self, at: float, wake: float, nbytes: float) -> None:
        """Replay a flow of ``nbytes`` alone on the idle lane from ``at`` to ``wake``."""
        dt = wake - at
        if dt > 0:
            self._busy(at, wake, dt)
        self.last = wake
        self.link.bytes_moved += nbytes

    def add(self, at: float, nbytes: float) -> _Flow:
        """A flow that joins at ``at``, no earlier than the lane's previous one (a wake-up at the
        same instant comes first, as the event path orders them: it was scheduled first)."""
        lone = self.lone
        if lone is not None:
            self.lone = None
            if lone[2] <= at:
                self._close(*lone)
            else:
                self._join(lone[0], lone[1])
        while self.flows and self.wake <= at:
            self._fire()
        flow = _Flow(nbytes)
        if self.flows:
            self._join(at, flow)
        else:
            self.last = at
            self.lone = (at, flow, at + max(nbytes, 0.0) * 1 / self.bw)
        return flow

    def drain(self) -> None:
        """Complete every flow on the lane."""
        if self.lone is not None:
            lone, self.lone = self.lone, None
            self._close(*lone)
        while self.flows:
            self._fire()


class _Chain:
    """One store's hops: the one in flight (``lane``, ``flow``), the ones after it (a share staged
    through DRAM), and when the last landed (NaN until then)."""

    __slots__ = ("done", "flow", "lane", "rest")

    def __init__(self, lane: _Lane | None, flow: _Flow | None, rest: list[Hop]) -> None:
        self.lane = lane
        self.flow = flow
        self.rest = rest
        self.done = math.nan


class _Stores:
    """The block schedule's stores on the write lanes, replayed in time order across the lanes:
    a share staged through DRAM (to disk) sends its next hop once the previous one has landed
    (store and forward: :meth:`OffloadExecutor._hops`), so a completion on one lane may add a
    flow to another. Stores are issued in time order (:meth:`issue`); before a store joins, every
    completion and every next hop due no later than its join has been replayed (a wake-up at the
    same instant comes first, as in ``_Lane.add``)."""

    __slots__ = ("due", "lanes", "owner", "seq")

    def __init__(self) -> None:
        self.lanes: dict[str, _Lane] = {}
        self.owner: dict[int, _Chain] = {}
        self.due: list[tuple[float, int, _Chain]] = []
        """Next hops to join: (join time, order, chain whose ``rest[0]`` joins)."""
        self.seq = 0

    def _join(self, at: float, name: str, link: Link, nbytes: float, rest: list[Hop], chain: _Chain | None) -> _Chain:
        lane = self.lanes.get(name)
        if lane is None:
            lane = self.lanes[name] = _Lane(link)
        flow = lane.add(at, nbytes)
        if chain is None:
            chain = _Chain(lane, flow, rest)
        else:
            chain.lane, chain.flow, chain.rest = lane, flow, rest
        self.owner[id(flow)] = chain
        return chain

    def issue(self, at: float, hops: list[Hop], staged: bool) -> list[_Chain]:
        """The chains of one share issued at ``at``: its hops one after the other where
        ``staged``, else all at once (each joins after its link's latency)."""
        out = []
        for hop in hops[:1] if staged else hops:
            rest = hops[1:] if staged else []
            lat = hop[1].latency
            if lat:
                # joins after the latency, in time order with the rest (a next hop's join)
                chain = _Chain(None, None, [hop, *rest])
                self.seq += 1
                heapq.heappush(self.due, (at + lat, self.seq, chain))
                out.append(chain)
            else:
                self._until(at)
                out.append(self._join(at, hop[0], hop[1], hop[2], rest, None))
        return out

    def _next(self) -> tuple[float, _Lane | None]:
        """The earliest pending event: a lane's completion (the lane) or a next hop's join (None);
        a completion first at the same instant."""
        best, lane = math.inf, None
        for ln in self.lanes.values():
            lone = ln.lone
            w = lone[2] if lone is not None else ln.wake if ln.flows else math.inf
            if w < best:
                best, lane = w, ln
        if self.due and self.due[0][0] < best:
            return self.due[0][0], None
        return best, lane

    def _step(self, lane: _Lane | None) -> None:
        if lane is None:
            # no completion is due before it (_next), and the joins due with it follow it
            at, _, chain = heapq.heappop(self.due)
            name, link, nbytes = chain.rest[0]
            self._join(at, name, link, nbytes, chain.rest[1:], chain)
            return
        lone = lane.lone
        if lone is not None:
            lane.lone = None
            lane._close(*lone)
            finished = [lone[1]]
        else:
            before = lane.flows
            lane._fire()
            finished = [f for f in before if f.done == f.done]
        for f in finished:
            chain = self.owner.pop(id(f))
            if chain.rest:
                link = chain.rest[0][1]
                lat = link.latency
                self.seq += 1
                heapq.heappush(self.due, (f.done + lat if lat else f.done, self.seq, chain))
            else:
                chain.done = f.done

    def _until(self, at: float) -> None:
        """Replay every completion and next hop due no later than ``at``."""
        while True:
            t, lane = self._next()
            if t > at:
                return
            self._step(lane)

    def landed(self, chains: list[_Chain]) -> float:
        """When the last of ``chains`` has landed (nothing else is issued before)."""
        for c in chains:
            while c.done != c.done:
                self._step(self._next()[1])
        return max(c.done for c in chains)

    def drain(self) -> None:
        """Complete every store."""
        while self.owner or self.due:
            self._step(self._next()[1])


def _remaining(f: _Flow) -> float:
    return f.remaining


Compiled = list[tuple[int, Link, list[tuple[float, float, list[Hop], bool]]]]
"""A plan's first hops by link direction: (LANE_ORDER index, link, [(latency, bytes, the hops
that follow, host-to-GPU)]), in LANE_ORDER (see :func:`_compile`)."""
Issued = tuple[float, Compiled, float | None]
"""(issue time, compiled shares, gate: the time before which no host-to-GPU hop starts) of one
transfer."""
_INDEX = {name: k for k, name in enumerate(LANE_ORDER)}


def _compile(plan: list[Share]) -> Compiled:
    """``plan``'s first hops grouped by link direction: a staged share's first hop (the rest
    follow it one after the other), every hop of any other share."""
    by: dict[int, tuple[Link, list[tuple[float, float, list[Hop], bool]]]] = {}
    for _, _, _, hops, staged in plan:
        for k, (name, link, nbytes) in enumerate(hops):
            rest = hops[k + 1 :] if staged else []
            by.setdefault(_INDEX[name], (link, []))[1].append((link.latency, nbytes, rest, name == "h2d"))
            if staged:
                break
    return [(k, link, entries) for k, (link, entries) in sorted(by.items())]


def _solve(lanes: dict[str, _Lane], issued: list[Issued], each: list[float] | None = None) -> float:
    """When the last share of ``issued`` has arrived (``each``, where given: also when the last
    share of each one has, in its place, no earlier than its value there). The link directions
    are replayed one after the other (LANE_ORDER): each one's sharing depends only on when its
    flows join, and a staged share's next hop joins when the previous one (on an earlier
    direction) has landed. Joins at one instant keep their issue order."""
    slots: list[tuple[Link, list[tuple[float, int, float, list[Hop], float | None, int]]] | None] = [None] * len(LANE_ORDER)
    seq = 0
    last = -math.inf
    for item, (at, comp, gate) in enumerate(issued):
        gated = gate is not None and gate > at
        for k, link, entries in comp:
            slot = slots[k]
            if slot is None:
                slot = slots[k] = (link, [])
            js = slot[1]
            for lat, nbytes, rest, h2d in entries:
                a = gate if h2d and gated else at
                seq += 1
                js.append((a + lat if lat else a, seq, nbytes, rest, gate, item))  # type: ignore[arg-type]
    for k, slot in enumerate(slots):
        if slot is None:
            continue
        link, js = slot
        name = LANE_ORDER[k]
        lane = lanes.get(name)
        if lane is None:
            lane = lanes[name] = _Lane(link)
        landed = _replay_lane(lane, js)
        for f_done, rest, gate, it in landed:
            if not rest:
                if f_done > last:
                    last = f_done
                if each is not None and f_done > each[it]:
                    each[it] = f_done
                continue
            # a staged share's next hop leaves once this one has landed
            nxt, nlink, nbytes = rest[0]
            a = gate if nxt == "h2d" and gate is not None and gate > f_done else f_done
            k2 = _INDEX[nxt]
            if k2 <= k:
                raise AssertionError(f"closed-form offload step: {nxt} after {name} is not in LANE_ORDER")
            slot2 = slots[k2]
            if slot2 is None:
                slot2 = slots[k2] = (nlink, [])
            seq += 1
            slot2[1].append((a + nlink.latency if nlink.latency else a, seq, nbytes, rest[1:], gate, it))
    return last


def _replay_lane(lane: _Lane, js: list[tuple[float, int, float, list[Hop], float | None, int]]) -> list[tuple[float, list[Hop], float | None, int]]:
    """The flows ``js`` (join time, issue order, bytes, the hops after, gate, item) on one link
    direction, replayed as Link replays them: (landing time, the hops after, gate, item) of each,
    in join order."""
    if len(js) > 1:
        js.sort()  # by (join time, issue order): the issue order is unique, so nothing after it is compared
    landed: list[tuple[float, list[Hop], float | None, int]] = []
    n = len(js)
    i = 0
    if not lane.flows and lane.lone is None:
        # flows alone on the idle direction, each landing no later than the next joins:
        # Link's join and wake-up, replayed in one go
        bw = lane.bw
        link = lane.link
        log = link.busy_log
        while i < n:
            at, _, nbytes, after, g, it = js[i]
            done = at + (0.0 if nbytes < 0.0 else nbytes) * 1 / bw  # max(nbytes, 0.0), without a call
            if i + 1 < n and js[i + 1][0] < done:
                break
            # lane.close(at, done, nbytes), inlined
            dt = done - at
            if dt > 0:
                link.busy_time += dt
                if log is not None:
                    if log and log[-1][1] == at:
                        log[-1][1] = done
                    else:
                        log.append([at, done])
            lane.last = done
            link.bytes_moved += nbytes
            landed.append((done, after, g, it))
            i += 1
    if i < n:
        # the rest overlap: fair sharing, as Link replays it
        j = js[i][0]
        sizes = [e[2] for e in js[i:]]
        least = min(sizes)
        if (
            n - i > 1 and js[-1][0] == j and least > 0 and j + least * 1 / lane.bw > j
            and not lane.flows and lane.lone is None
        ):
            # all of them join the idle direction at one instant, each wake-up after it
            landed += [(d, e[3], e[4], e[5]) for d, e in zip(_together(lane, sizes, j), js[i:], strict=True)]
        elif not lane.flows and lane.lone is None:
            # the idle direction: _Lane.add of each, then drain, on local state
            rest = js[i:]
            landed += [(d, e[3], e[4], e[5]) for d, e in zip(_shared(lane, [e[0] for e in rest], sizes), rest, strict=True)]
        else:
            flows = [(lane.add(at, nbytes), after, g, it) for at, _, nbytes, after, g, it in js[i:]]
            lane.drain()
            landed += [(f.done, after, g, it) for f, after, g, it in flows]
    return landed


def _shared(lane: _Lane, joins: list[float], sizes: list[float]) -> list[float]:
    """When each of the flows of ``sizes`` bytes that join the idle ``lane`` at ``joins`` (in
    time order) lands: ``_Lane.add`` of each, then ``_Lane.drain``, with the same float
    operations in the same order on the link's counters, on local state (no ``_Flow`` objects,
    no method per event). A flow that finds the lane empty is kept aside alone (``lone``: its
    join and landing) until the next join: if it has landed by then it is closed alone, else it
    joins the fair sharing at its own join time; at each join the wake-ups due by then fire
    first; each wake-up advances every flow by the fair share, completes the target and those
    within the slack, and arms the next for the first of the least remaining."""
    bw = lane.bw
    link = lane.link
    log = link.busy_log
    n = len(sizes)
    rem = list(sizes)
    done = [math.nan] * n
    alive: list[int] = []
    key = rem.__getitem__
    lone: tuple[float, int, float] | None = None
    last = lane.last
    wake = math.inf
    tgt = -1
    for i in range(n + 1):
        at = joins[i] if i < n else math.inf
        if lone is not None:
            a0, x, w0 = lone
            lone = None
            if i == n or w0 <= at:
                # _Lane._close (drain closes it whenever): the lone flow alone from its join to its wake-up
                dt = w0 - a0
                if dt > 0:
                    link.busy_time += dt
                    if log is not None:
                        if log and log[-1][1] == a0:
                            log[-1][1] = w0
                        else:
                            log.append([a0, w0])
                last = w0
                link.bytes_moved += sizes[x]
                done[x] = w0
            else:
                # _Lane._join at its own join time: nothing else on the lane
                last = a0
                alive.append(x)
                tgt = x
                r = rem[x]
                wake = a0 + (0.0 if r < 0.0 else r) * 1 / bw
        while alive and (i == n or wake <= at):
            # _Lane._fire (drain fires them all). The same loop as _together's, written out in
            # both: factored into one function (2026-12-01) it cost +4% of simulate()'s
            # instructions on offload-disk-block (a process of four runs: 4.174 G against 4.095 G).
            now = wake
            dt = now - last
            m = len(alive)
            if dt > 0:
                share = bw * dt / m
                for x in alive:
                    rem[x] -= share
                link.busy_time += dt
                if log is not None:
                    if log and log[-1][1] == last:
                        log[-1][1] = now
                    else:
                        log.append([last, now])
            last = now
            slack = bw / m * 1e-9
            keep = []
            for x in alive:
                if x == tgt or rem[x] <= slack:
                    done[x] = now
                    link.bytes_moved += sizes[x]
                else:
                    keep.append(x)
            alive = keep
            if alive:
                tgt = min(alive, key=key)
                r = rem[tgt]
                wake = now + (0.0 if r < 0.0 else r) * len(alive) / bw
            else:
                wake = math.inf
        if i == n:
            break
        if alive:
            # _Lane._join: advance to the join, then the flow shares the lane
            dt = at - last
            if dt > 0:
                m = len(alive)
                share = bw * dt / m
                for x in alive:
                    rem[x] -= share
                link.busy_time += dt
                if log is not None:
                    if log and log[-1][1] == last:
                        log[-1][1] = at
                    else:
                        log.append([last, at])
            last = at
            alive.append(i)
            tgt = min(alive, key=key)
            r = rem[tgt]
            wake = at + (0.0 if r < 0.0 else r) * len(alive) / bw
        else:
            last = at
            r = sizes[i]
            lone = (at, i, at + (0.0 if r < 0.0 else r) * 1 / bw)
    lane.last = last
    lane.wake = math.inf
    lane.target = None
    return done


def _together(lane: _Lane, sizes: list[float], j: float) -> list[float]:
    """When each of the flows of ``sizes`` bytes that join the idle ``lane`` at the instant
    ``j``, in that order, lands: ``lane.add(j, size)`` of each, then ``lane.drain()``, with the
    same float operations in the same order on the link's counters. The caller checks that the
    joins leave the lane as ``_Lane`` would: every size positive, and the wake-up each join
    arms later than ``j`` (so that none fires between two joins: ``j + min(sizes) * 1 / bw >
    j``, and a later join's wake-up, ``j + least * m / bw``, is no earlier). After the joins the
    lane holds every flow, its clock at ``j``; then each wake-up is ``_Lane._fire``: advance
    (each remaining less the fair share), complete the target and those within the slack, and
    arm the next for the first least remaining."""
    bw = lane.bw
    link = lane.link
    log = link.busy_log
    rem = list(sizes)
    alive = list(range(len(sizes)))
    done = [math.nan] * len(sizes)
    key = rem.__getitem__
    tgt = min(alive, key=key)
    wake = j + max(rem[tgt], 0.0) * len(alive) / bw
    last = j
    while alive:
        now = wake
        dt = now - last
        m = len(alive)
        if dt > 0:
            share = bw * dt / m
            for x in alive:
                rem[x] -= share
            link.busy_time += dt
            if log is not None:
                if log and log[-1][1] == last:
                    log[-1][1] = now
                else:
                    log.append([last, now])
        last = now
        slack = bw / m * 1e-9
        keep = []
        for x in alive:
            if x == tgt or rem[x] <= slack:
                done[x] = now
                link.bytes_moved += sizes[x]
            else:
                keep.append(x)
        alive = keep
        if alive:
            tgt = min(alive, key=key)
            wake = now + max(rem[tgt], 0.0) * len(alive) / bw
    lane.last = last
    lane.wake = math.inf
    lane.target = None
    return done


Chain = tuple[int, float, float, "Chain | None"] | None
"""A staged share's later hops, compiled: (LANE_ORDER index, latency, bytes, the hops after), or
None where none follows."""
Pair = tuple[str, Link, float, float, float, int, int, "tuple[float, float] | None", "tuple[float, float] | None", str, Link, float]
"""The commonest program (a step's two stores staged through DRAM; a burst's activations staged
and its KV straight): two first hops on one direction, the later hops of the staged ones on a
second: (name, link, latency of the first; the two sizes and items; (latency, bytes) of each
one's later hop or None; name, link and least size of the second)."""
Program = tuple[list[tuple[int, str, Link, float, list[tuple[float, Chain, int]], list[float], float, bool]], int, Pair | None]
"""Shares issued together at one instant with no gate, compiled for :func:`_run_program`: for
each link direction that carries any of them, in LANE_ORDER, (LANE_ORDER index, name, link,
latency, the first hops that join it: (bytes, the hops after, item), their sizes, the least,
whether later hops of staged shares join it too); how many first hops there are; and the
program as a :data:`Pair` where it is one."""


def _program(comps: list[Compiled]) -> Program | None:
    """The shares of ``comps`` (one item each, all issued at one instant, none gated) compiled
    for :func:`_run_program`, or None where it would not replay them as :func:`_solve` does (two
    links or latencies on one direction, a later hop on an earlier direction): :func:`_solve`
    then."""
    firsts: dict[int, tuple[Link, float, list[tuple[float, Chain, int]]]] = {}
    later: dict[int, Link] = {}
    count = 0
    for item, comp in enumerate(comps):
        for k, link, entries in comp:
            for lat, nbytes, rest, _ in entries:
                got = firsts.setdefault(k, (link, lat, []))
                if got[0] is not link or got[1] != lat:
                    return None
                prev = k
                for name, nlink, _ in rest:
                    k2 = _INDEX[name]
                    if k2 <= prev or later.setdefault(k2, nlink) is not nlink:
                        return None
                    prev = k2
                chain: Chain = None
                for name, nlink, nb in reversed(rest):
                    chain = (_INDEX[name], nlink.latency, nb, chain)
                got[2].append((nbytes, chain, item))
                count += 1
    out = []
    for k in sorted(set(firsts) | set(later)):
        link, lat, fs = firsts.get(k, (later.get(k), 0.0, []))  # type: ignore[arg-type]
        if k in later and later[k] is not link:
            return None
        sizes = [f[0] for f in fs]
        out.append((k, LANE_ORDER[k], link, lat, fs, sizes, min(sizes, default=math.inf), k in later))
    pair: Pair | None = None
    if len(out) == 2 and len(out[0][4]) == 2 and not out[0][7] and not out[1][4] and out[1][7]:
        (_, na, la, lat, fs, sizes, least, _), (kb, nb, lb, _, _, _, _, _) = out
        (s0, c0, i0), (s1, c1, i1) = fs
        if all(c is None or (c[0] == kb and c[3] is None) for c in (c0, c1)):
            h0 = None if c0 is None else (c0[1], c0[2])
            h1 = None if c1 is None else (c1[1], c1[2])
            pair = (na, la, lat, s0, s1, i0, i1, h0, h1, nb, lb, least)
    return out, count, pair


def _run_program(lanes: dict[str, _Lane], at: float, prog: Program, split: int = 0) -> tuple[float, float]:
    """When the items before ``split`` have landed (no earlier than ``at``), and when the last of
    the others has (-inf where none): :func:`_solve` of the shares :func:`_program` compiled, all issued at ``at``, with the
    same float operations in the same order: a direction's first hops all join at ``at`` plus
    its latency, in issue order, so where nothing else joins it and it is idle they are one
    flow alone (Link's join and wake-up in one go) or flows that join together
    (:func:`_together`, under the condition :func:`_replay_lane` checks); where only later hops
    of staged shares join the idle direction, :func:`_replay_lane`'s first loop (each alone
    while it lands no later than the next joins); anything else is :func:`_replay_lane` itself,
    with the joins :func:`_solve` would make, in its order (a later hop joins after every first
    hop of its instant: ``seq``)."""
    lanes_, seq, pair = prog
    if pair is not None and (got := _run_pair(lanes, at, pair, split)) is not None:
        return got
    first = at
    last = -math.inf
    nx: list[list[tuple[float, int, float, Chain, None, int]] | None] = [None] * len(LANE_ORDER)
    for k, name, link, lat, firsts, sizes, least, receives in lanes_:
        pend = nx[k] if receives else None
        if pend is None and not firsts:
            continue
        lane = lanes.get(name)
        if lane is None:
            lane = lanes[name] = _Lane(link)
        landed: list[tuple[float, Chain, int]]
        idle = not lane.flows and lane.lone is None
        if pend is None:
            j = at + lat if lat else at
            if idle and len(firsts) == 1:
                # alone on the idle direction: Link's join and wake-up (_replay_lane's first loop)
                nbytes, nxt, it = firsts[0]
                done = j + (0.0 if nbytes < 0.0 else nbytes) * 1 / lane.bw
                ln = lane.link
                dt = done - j
                if dt > 0:
                    ln.busy_time += dt
                    log = ln.busy_log
                    if log is not None:
                        if log and log[-1][1] == j:
                            log[-1][1] = done
                        else:
                            log.append([j, done])
                lane.last = done
                ln.bytes_moved += nbytes
                landed = [(done, nxt, it)]
            elif idle and least > 0 and j + least * 1 / lane.bw > j:
                if len(firsts) == 2:
                    d0, d1 = _together2(lane, sizes[0], sizes[1], j)
                    landed = [(d0, firsts[0][1], firsts[0][2]), (d1, firsts[1][1], firsts[1][2])]
                else:
                    landed = [(d, f[1], f[2]) for d, f in zip(_together(lane, sizes, j), firsts, strict=True)]
            else:
                landed = [(d, nxt, it) for d, nxt, _, it in _replay_lane(lane, [(j, s, f[0], f[1], None, f[2]) for s, f in enumerate(firsts)])]
        elif not firsts and idle:
            # only later hops of staged shares, on the idle direction: _replay_lane's first loop,
            # then _replay_lane of the rest (its first loop stops at once where this one stopped)
            if len(pend) > 1:
                pend.sort()
            n = len(pend)
            i = 0
            bw = lane.bw
            ln = lane.link
            log = ln.busy_log
            landed = []
            while i < n:
                a, _, nbytes, nxt, _, it = pend[i]
                done = a + (0.0 if nbytes < 0.0 else nbytes) * 1 / bw
                if i + 1 < n and pend[i + 1][0] < done:
                    landed += [(d, nxt, it) for d, nxt, _, it in _replay_lane(lane, pend[i:])]  # type: ignore[arg-type]
                    break
                dt = done - a
                if dt > 0:
                    ln.busy_time += dt
                    if log is not None:
                        if log and log[-1][1] == a:
                            log[-1][1] = done
                        else:
                            log.append([a, done])
                lane.last = done
                ln.bytes_moved += nbytes
                landed.append((done, nxt, it))
                i += 1
        else:
            j = at + lat if lat else at
            js = [(j, s, f[0], f[1], None, f[2]) for s, f in enumerate(firsts)] + pend
            landed = [(d, nxt, it) for d, nxt, _, it in _replay_lane(lane, js)]  # type: ignore[arg-type]
        for f_done, nxt, it in landed:
            if nxt is None:
                # (_solve's ``last`` and ``each``: the greatest of the landing times)
                if it < split:
                    if f_done > first:
                        first = f_done
                elif f_done > last:
                    last = f_done
                continue
            # a staged share's next hop leaves once this one has landed
            k2, nlat, nbytes, after = nxt
            q = nx[k2]
            if q is None:
                q = nx[k2] = []
            q.append((f_done + nlat if nlat else f_done, seq, nbytes, after, None, it))
            seq += 1
    return first, last


def _run_pair(lanes: dict[str, _Lane], at: float, pair: Pair, split: int) -> tuple[float, float] | None:
    """:func:`_run_program` of a :data:`Pair` written out, where both directions are idle and
    the two first hops join together (:func:`_together2`; else None, nothing changed): the later
    hops join the second direction in :func:`_solve`'s order (landing time, then the first's
    first), each alone while it lands no later than the next joins (else :func:`_replay_lane`)."""
    na, la, lat, s0, s1, i0, i1, h0, h1, nb, lb, least = pair
    a = lanes.get(na)
    b = lanes.get(nb)
    j = at + lat if lat else at
    if (
        (a is not None and (a.flows or a.lone is not None)) or (b is not None and (b.flows or b.lone is not None))
        or not (least > 0 and j + least * 1 / (la.bandwidth if a is None else a.bw) > j)  # (a new lane's bw: its link's)
    ):
        return None
    if a is None:
        a = lanes[na] = _Lane(la)
    if b is None:
        b = lanes[nb] = _Lane(lb)
    d0, d1 = _together2(a, s0, s1, j)
    first = at
    last = -math.inf
    if h0 is None or h1 is None:
        # one later hop, alone on the idle direction; the other landed
        if h0 is None:
            d, it, (hl, nbytes), dd, ii = d1, i1, h1, d0, i0  # type: ignore[misc]
        else:
            d, it, (hl, nbytes), dd, ii = d0, i0, h0, d1, i1
        if ii < split:
            if dd > first:
                first = dd
        elif dd > last:
            last = dd
        t = d + hl if hl else d
        done = t + (0.0 if nbytes < 0.0 else nbytes) * 1 / b.bw
        link = b.link
        dt = done - t
        if dt > 0:
            link.busy_time += dt
            log = link.busy_log
            if log is not None:
                if log and log[-1][1] == t:
                    log[-1][1] = done
                else:
                    log.append([t, done])
        b.last = done
        link.bytes_moved += nbytes
        if it < split:
            if done > first:
                first = done
        elif done > last:
            last = done
        return first, last
    # both staged: their later hops in join order (time, then the first's first)
    t0 = d0 + h0[0] if h0[0] else d0
    t1 = d1 + h1[0] if h1[0] else d1
    if t1 < t0:
        ta, na_, ia, tb, nb_, ib = t1, h1[1], i1, t0, h0[1], i0
    else:
        ta, na_, ia, tb, nb_, ib = t0, h0[1], i0, t1, h1[1], i1
    bw = b.bw
    done_a = ta + (0.0 if na_ < 0.0 else na_) * 1 / bw
    if tb < done_a:
        # they overlap: fair sharing
        seqs = (1, 0) if t1 < t0 else (0, 1)
        landed = _replay_lane(b, [(ta, seqs[0], na_, None, None, ia), (tb, seqs[1], nb_, None, None, ib)])  # type: ignore[list-item]
        ends = [(x[0], x[3]) for x in landed]
    else:
        link = b.link
        log = link.busy_log
        done_b = tb + (0.0 if nb_ < 0.0 else nb_) * 1 / bw
        for t, done, nbytes in ((ta, done_a, na_), (tb, done_b, nb_)):
            dt = done - t
            if dt > 0:
                link.busy_time += dt
                if log is not None:
                    if log and log[-1][1] == t:
                        log[-1][1] = done
                    else:
                        log.append([t, done])
            b.last = done
            link.bytes_moved += nbytes
        ends = [(done_a, ia), (done_b, ib)]
    for done, it in ends:
        if it < split:
            if done > first:
                first = done
        elif done > last:
            last = done
    return first, last


def _together2(lane: _Lane, s0: float, s1: float, j: float) -> tuple[float, float]:
    """:func:`_together` of two flows (``[s0, s1]``), written out: the same float operations in
    the same order (the caller checks its conditions: both sizes positive, the wake-up after
    ``j``)."""
    bw = lane.bw
    link = lane.link
    log = link.busy_log
    r0, r1 = s0, s1
    # the target: min(alive, key=rem.__getitem__), the first of the least
    first = r1 < r0
    now = j + (r1 if first else r0) * 2 / bw  # max(rem, 0.0) * len(alive) / bw: rem is positive
    dt = now - j
    if dt > 0:
        share = bw * dt / 2
        r0 -= share
        r1 -= share
        link.busy_time += dt
        if log is not None:
            if log and log[-1][1] == j:
                log[-1][1] = now
            else:
                log.append([j, now])
    slack = bw / 2 * 1e-9
    end0 = not first or r0 <= slack
    end1 = first or r1 <= slack
    d0 = d1 = math.nan
    if end0:
        d0 = now
        link.bytes_moved += s0
    if end1:
        d1 = now
        link.bytes_moved += s1
    if not (end0 and end1):
        # the other alone: the next wake-up, which completes it
        r = r1 if end0 else r0
        wake = now + (0.0 if r < 0.0 else r) * 1 / bw
        dt = wake - now
        if dt > 0:
            link.busy_time += dt
            if log is not None:
                if log and log[-1][1] == now:
                    log[-1][1] = wake
                else:
                    log.append([now, wake])
        now = wake
        if end0:
            d1 = now
            link.bytes_moved += s1
        else:
            d0 = now
            link.bytes_moved += s0
    lane.last = now
    lane.wake = math.inf
    lane.target = None
    return d0, d1


Lone = tuple[_Lane, float, float, float, bool]


def _lone_hops(lanes: dict[str, _Lane], plan: list[Share]) -> list[Lone] | None:
    """(lane, latency, bytes, transfer seconds, host-to-GPU) of every hop of ``plan`` when each is
    alone on its link direction (no share staged, no two hops on one direction), else None."""
    out: list[Lone] = []
    seen: set[str] = set()
    for _, _, _, hops, staged in plan:
        if staged:
            return None
        for name, link, nbytes in hops:
            if name in seen:
                return None
            seen.add(name)
            lane = lanes.get(name)
            if lane is None:
                lane = lanes[name] = _Lane(link)
            # Link._reschedule's delay for a lone flow: max(remaining, 0) * 1 / bandwidth
            out.append((lane, link.latency, nbytes, max(nbytes, 0.0) * 1 / lane.bw, name == "h2d"))
    return out


StorePlan = tuple[Compiled, float, "Program | None"]
"""One step's stores compiled (:func:`_compile`), a bound on how long after their issue the
last of them has landed when they are alone on the write lanes (:func:`_store_plan`), and the
same for :func:`_run_program` (None: :func:`_solve`)."""
Pending = tuple[int, float, list[Share], StorePlan]
"""(index among the steps, issue time, shares, plan) of stores not yet replayed."""
_NO_CHAINS: list[_Chain] = []


def _store_plan(plan: list[Share]) -> StorePlan | None:
    """``plan``'s stores compiled, with a bound on how long they take alone on idle write lanes,
    or None where replaying them lane by lane (:func:`_solve`) might not join two hops of one
    instant on a lane in the order ``_Stores`` does: where a lane receives the next hops of
    shares whose previous hops crossed different lanes (``_Stores`` orders the completions of
    one instant on different lanes by when the lanes first carried a flow, ``_solve`` by
    LANE_ORDER).

    The bound: a lane is busy whenever it carries a flow (fair sharing is work-conserving), so
    all its flows have landed by its latest join plus its bytes over its bandwidth; a hop joins
    at most its latency after the previous hop's lane has landed everything. Summed over the
    lanes: the longest latency of each and its bytes over its bandwidth, with a margin far
    beyond the float rounding of the replay (relative 1e-6, and 1 us)."""
    came: dict[str, str] = {}
    lat: dict[str, float] = {}
    load: dict[str, float] = {}
    bw: dict[str, float] = {}
    for _, _, _, hops, staged in plan:
        prev = None
        for name, link, nbytes in hops:
            if staged and prev is not None and came.setdefault(name, prev) != prev:
                return None
            lat[name] = max(lat.get(name, 0.0), link.latency)
            load[name] = load.get(name, 0.0) + max(nbytes, 0.0)
            bw[name] = link.bandwidth
            prev = name
    span = sum(lat[n] + load[n] / bw[n] for n in lat)
    if not math.isfinite(span):
        return None
    comp = _compile(plan)
    return comp, span * (1.0 + 1e-6) + 1e-6, _program([comp])


_NO_SHARES: list[Share] = []
"""No shares (one list, so that its ``id`` keys a burst's memo)."""
Burst = tuple[list[tuple[str, float]], int, list[tuple[Compiled, bool]], "Program | None"]
"""A burst of reads compiled (:func:`_burst_plan`): the bytes by kind, how many of the items are
the activations', the items in join order (compiled shares, whether the gate applies), and,
where no gate applies, the items for :func:`_run_program` (None: :func:`_solve`)."""


def _burst_plan(act: list[Share], kv: list[Share], weights: list[Share], gated: bool, kv_first: bool) -> Burst:
    """The join order of :meth:`ClosedFormStep._burst`'s reads, compiled."""
    counts = [(share[0], share[2]) for share in act]
    items: list[tuple[Compiled, bool]] = []
    if act:
        items.append((_compile([share for share in act if not share[4]]), False))
        staged = [share for share in act if share[4]]
        if staged:
            items.append((_compile(staged), False))
    n_first = len(items)
    direct: list[Share] = []
    later: list[tuple[Compiled, bool]] = []
    for plan, g in ([(kv, False), (weights, gated)] if kv_first else [(weights, gated), (kv, False)]):
        own: list[Share] = []
        for share in plan:
            counts.append((share[0], share[2]))
            if share[4] or (g and any(h == "h2d" for h, _, _ in share[3])):
                own.append(share)
            else:
                direct.append(share)
        if own:
            later.append((_compile(own), g))
    if direct:
        items.append((_compile(direct), False))
    items += later
    return counts, n_first, items, None if gated else _program([comp for comp, _ in items])


class ClosedFormStep:
    """The end time of an offloaded step, as :meth:`OffloadExecutor.run_step` produces it."""

    def __init__(self, ex: OffloadExecutor) -> None:
        self.ex = ex
        self._wplans: list[tuple[tuple[tuple[str, float], ...], list[Share]]] = []
        self._streamed: list[int] = []
        """The layers whose weights are streamed."""

    def run(self, now: float, q: np.ndarray, ctx: np.ndarray, rows: int) -> float | None:
        """The end time of the step that starts at ``now``, with the executor's counters and the
        links' updated as the event path updates them; None (nothing changed) when the step needs
        the event path (one GPU batch with prefetch and activations off the GPU)."""
        ex = self.ex
        c = ex.cost
        lay = ex.layout
        q, ctx, groups, cpu_attention, before, after = ex.step_setup(q, ctx, rows)
        prefetch = ex.overlap
        blocked = prefetch and len(groups) > 1
        act = {t: f for t, f in lay.act_frac.items() if t != "gpu" and f > 0}
        if act and prefetch and not blocked:
            # activations off the GPU with prefetch: timed only in the block schedule
            return None
        on_cpu = ex.cpu_stream is not None
        parts = ex.compute_parts
        assert parts is not None
        costs = [ex.group_cost(gq, gc, cpu_attention) for gq, gc in groups]
        writes_of = [
            ex._plan_move(lay.kv_write_bytes(float(gq.sum())), True, "kv_write") + ex._plan_move(lay.spill_write_bytes(gq, gc), True, "kv_write")
            for gq, gc in groups
        ]
        acts_of: list[list[Share]] = []
        if act:
            # each GPU batch's activations are read before each layer and written after it
            h_bytes = c.model.hidden_size * c.precision.a_bytes
            for gi, (gq, _) in enumerate(groups):
                T = float(gq.sum())
                by_tier = {t: T * h_bytes * f for t, f in act.items()}
                acts_of.append(ex._plan_move(by_tier, False, "act_read"))
                writes_of[gi] = writes_of[gi] + ex._plan_move(by_tier, True, "act_write")
        kv_of = [
            ex._plan_move(lay.kv_read_bytes(float(gc.sum())), False, "kv_read", to_host=cpu_attention)
            + ex._plan_move(lay.spill_read_bytes(gc), False, "kv_read", to_host=cpu_attention)
            for _, gc in groups
        ]
        # one GPU batch (or none with prefetch): a layer's fetch brings the KV of every batch; the
        # block schedule reads each batch's KV on its own (_blocked)
        kv_plan: list[Share] = [] if blocked else [s for p in kv_of for s in p]
        reads: dict[str, _Lane] = {}
        writes: dict[str, _Lane] = {}
        fetch_plans: dict[tuple[tuple[str, float], ...], tuple[list[Share], list[Lone] | None, Compiled]] = {}
        by_kind = ex.bytes_by_kind
        assert by_kind is not None
        wplans = self._weights()

        def fetch(layer: int, at: float, gate: float | None) -> float:
            """When layer ``layer``'s weights and KV, issued at ``at``, have arrived (the reads'
            lanes are idle when a fetch is issued: the reader waits for the previous one)."""
            key, wplan = wplans[layer]
            got = fetch_plans.get(key)
            if got is None:
                plan = wplan + kv_plan
                got = fetch_plans[key] = (plan, _lone_hops(reads, plan), _compile(plan))
            plan, lone, comp = got
            for kind, _, nbytes, _, _ in plan:
                by_kind[kind] += nbytes
            if lone is None:
                done = _solve(reads, [(at, comp, gate)])
                return done if done > at else at
            done = at
            for lane, lat, nbytes, dur, h2d in lone:
                # alone on its direction: Link's join and wake-up, replayed in one go (_Lane.close
                # and _busy, inlined)
                a = gate if h2d and gate is not None and gate > at else at
                if lat:
                    a = a + lat
                wake = a + dur
                link = lane.link
                dt = wake - a
                if dt > 0:
                    link.busy_time += dt
                    log = link.busy_log
                    if log is not None:
                        if log and log[-1][1] == a:
                            log[-1][1] = wake
                        else:
                            log.append([a, wake])
                lane.last = wake
                link.bytes_moved += nbytes
                if wake > done:
                    done = wake
            return done

        t = now + before
        ex.busy_compute += before
        parts["embedding_and_head"] += before + after
        decode_only = bool(((q == 1) & (ctx > 0)).all())
        gated = decode_only and (lay.pageable_factor < 1.0 or not lay.plan.decode_overlap)
        if blocked:
            return self._blocked(now, t, costs, writes_of, kv_of, acts_of, after, gated, fetch, reads)
        if prefetch:
            # one GPU batch: the reader streams the layers that need data into BUFFERS staging
            # buffers; a decode step's host-to-GPU copies may wait for the previous layer (gated)
            dev, cpu, attn, _, _ = cost = costs[0]
            kv_moves = ex._needs_kv(groups, cpu_attention)
            needing = list(range(c.layers)) if kv_moves else self._streamed
            index = {li: k for k, li in enumerate(needing)}
            computed: list[float] = []
            pending: list[Issued] = []
            r = now
            w0 = writes_of[0]
            c0 = _compile(w0)
            w_bytes = [(kind, nbytes) for kind, _, nbytes, _, _ in w0]
            buffers = ex.BUFFERS
            # the counters the layers add to, as locals (the same additions in the same order)
            busy, busy_cpu = ex.busy_compute, ex.busy_cpu
            lin, gpu_att, deq, cpu_att = parts["linear"], parts["gpu_attention"], parts["dequant"], parts["cpu_attention"]
            split = cpu > 0 and on_cpu
            for layer in range(c.layers):
                k = index.get(layer)
                if k is not None:
                    # ``r = max(r, x)`` written ``if x > r: r = x`` (the same value, without a call)
                    if k >= buffers:
                        x = computed[needing[k - buffers]]
                        if x > r:
                            r = x
                    x = fetch(layer, r, computed[layer - 1] if gated and layer > 0 else None)
                    if x > r:
                        r = x
                    if r > t:
                        t = r
                # the layer's compute (_compute, inlined)
                busy += dev
                if split:
                    t1 = t + (dev - attn)
                    busy_cpu += cpu
                    t = max(t1 + attn, t1 + cpu)
                else:
                    t = t + dev
                lin += cost[3]
                gpu_att += attn
                deq += cost[4]
                cpu_att += cpu
                if w0:
                    for kind, nbytes in w_bytes:
                        by_kind[kind] += nbytes
                    pending.append((t, c0, None))
                computed.append(t)
            ex.busy_compute, ex.busy_cpu = busy, busy_cpu
            parts["linear"], parts["gpu_attention"], parts["dequant"], parts["cpu_attention"] = lin, gpu_att, deq, cpu_att
            t = t + after
            ex.busy_compute += after
            if pending:
                t = max(t, _solve(writes, pending))
            return t
        for layer in range(c.layers):
            t = max(t, fetch(layer, t, None))
            for gi, (cost, w) in enumerate(zip(costs, writes_of, strict=True)):
                if acts_of and acts_of[gi]:
                    # nothing else is in flight: the activations cross alone, then compute
                    ex.count(acts_of[gi])
                    t = max(t, _solve(reads, [(t, _compile(acts_of[gi]), None)]))
                t = self._compute(t, cost[0], cost[1], cost[2], on_cpu)
                ex.add_parts(cost)
                if w:
                    ex.count(w)
                    t = max(t, _solve(writes, [(t, _compile(w), None)]))
        t = t + after
        ex.busy_compute += after
        return t

    def _blocked(
        self, now: float, t: float, costs: list[GroupCost], writes_of: list[list[Share]], kv_of: list[list[Share]],
        acts_of: list[list[Share]], after: float, gated: bool, fetch: Callable[[int, float, float | None], float],
        reads: dict[str, _Lane],
    ) -> float:
        """The end of a step of several GPU batches with prefetch (FlexGen's zig-zag block
        schedule, :meth:`OffloadExecutor.run_step`'s ``blocked``) that writes no KV through a
        staging buffer, from ``t`` (its layers' start, ``now`` + the time before them).

        The reads: the weights' reader streams each layer's weights once the layer ``BUFFERS``
        places earlier has computed and the previous layer's last GPU batch has started (a decode
        step's gated host-to-GPU copies once the previous layer has computed); the KV reader
        brings the KV of (layer, GPU batch) ``kv_of`` once the step before it has started. So
        the reads are issued in bursts: at ``now`` the first step's KV, then the first layer's
        weights; when a step starts, the next step's KV, after the next layer's weights where the
        step is its layer's last. Each burst has landed before the next is issued (the next
        step waits for what it brought), so a burst is replayed alone on the read lanes
        (:func:`_solve`, Link's arithmetic; the joins of one instant in the event path's order:
        :meth:`_burst`). Each (layer, GPU batch) step starts once its burst has landed and the
        stores of the step before last have landed, computes, then issues its stores. The
        stores share the write links with each other (``_Lane``, Link's arithmetic, replayed as
        they are issued: a store that a step waits for lands before any later one is issued).

        Activations off the GPU (``acts_of``: each GPU batch's reads; their writes are among its
        stores): a step reads its activations once it has started, before the readers it wakes
        issue theirs, and computes once they have landed (in the same burst as those reads;
        ``gated`` is then false: no host-to-GPU copy waits for compute)."""
        ex = self.ex
        parts = ex.compute_parts
        by_kind = ex.bytes_by_kind
        assert parts is not None and by_kind is not None
        on_cpu = ex.cpu_stream is not None
        needing = self._streamed
        index = {li: k for k, li in enumerate(needing)}
        buffers = ex.BUFFERS
        wplans = self._weights()
        stores = _Stores()
        steps: list[float | list[_Chain]] = []
        """The stores of every (layer, GPU batch) step so far: their flows (replayed among the
        rest by ``_Stores``), or when the last landed (replayed alone, :meth:`_settle`)."""
        pend: Pending | None = None
        """The latest step's stores, issued on quiet write lanes, not yet replayed."""
        plans: dict[int, tuple[list[Share], StorePlan | None]] = {}

        def store_plan(w: list[Share]) -> StorePlan | None:
            got = plans.get(id(w))
            if got is None:
                got = plans[id(w)] = (w, _store_plan(w))
            return got[1]
        computed: list[float] = []
        last = len(costs) - 1
        started_last = t
        r = now
        kv_any = any(kv_of) or any(acts_of)
        memo: dict[tuple[int, int, object, bool, bool], Burst] = {}
        assert not (acts_of and gated)
        # the burst at ``now``: the first step's KV (the KV reader was started first), then the
        # first layer's weights where it streams them; what the step waits for
        ready = now
        if kv_any:
            w0 = wplans[0] if index.get(0) == 0 else ((), _NO_SHARES)
            first = w0[1]
            ready = self._burst(reads, now, _NO_SHARES, kv_of[0], first, None, True, memo, w0[0])[1]
            if first:
                r = ready
        for layer in range(ex.cost.layers):
            k = index.get(layer)
            if k is not None and not kv_any:
                # no KV read: the weights' reader alone on the read lanes
                if k >= buffers:
                    x = computed[needing[k - buffers]]
                    if x > r:
                        r = x
                if layer > 0 and started_last > r:
                    r = started_last
                x = fetch(layer, r, computed[layer - 1] if gated and layer > 0 else None)
                if x > r:
                    r = x
                if r > t:
                    t = r
            for gi, cost in enumerate(costs):
                dev, cpu, attn, _, _ = cost
                if ready > t:
                    t = ready
                if len(steps) >= 2:
                    st = steps[-2]
                    # a step's stores are settled once the next step has issued its own
                    x = st if isinstance(st, float) else stores.landed(st) if st else -math.inf
                    if x > t:
                        t = x
                if gi == last:
                    started_last = t
                s0 = t
                if kv_any:
                    # the burst this step's start issues: its own activations, then the next
                    # step's KV, after the next layer's weights where this step is its layer's
                    # last; the step computes once its activations are in (gated: after its
                    # compute, the next layer's weights' host-to-GPU hops: no activations)
                    av = acts_of[gi] if acts_of else _NO_SHARES
                    kv = _NO_SHARES
                    wp = _NO_SHARES
                    wkey: object = ()
                    if gi < last:
                        kv = kv_of[gi + 1]
                    elif layer + 1 < ex.cost.layers:
                        nxt = layer + 1
                        kv = kv_of[0]
                        if nxt in index:
                            kk = index[nxt]
                            # the reader's other conditions hold by now (its previous fetch and
                            # the layer BUFFERS places back are done before this layer started)
                            assert (kk < buffers or computed[needing[kk - buffers]] <= s0) and r <= s0
                            wkey, wp = wplans[nxt]
                    gate = None
                    if gated:
                        gate = t = self._compute(t, dev, cpu, attn, on_cpu)
                    a, ready = self._burst(reads, s0, av, kv, wp, gate, False, memo, wkey)
                    if wp:
                        r = ready
                    if not gated:
                        if a > t:
                            t = a
                        # self._compute(t, dev, cpu, attn, on_cpu), inlined
                        ex.busy_compute += dev
                        if cpu > 0 and on_cpu:
                            t1 = t + (dev - attn)
                            ex.busy_cpu += cpu
                            x = t1 + attn
                            t = t1 + cpu
                            if not t > x:  # max(t1 + attn, t1 + cpu)
                                t = x
                        else:
                            t = t + dev
                else:
                    t = self._compute(t, dev, cpu, attn, on_cpu)
                # ex.add_parts(cost), inlined
                parts["linear"] += cost[3]
                parts["gpu_attention"] += attn
                parts["dequant"] += cost[4]
                parts["cpu_attention"] += cpu
                w = writes_of[gi]
                for kind, _, nbytes, _, _ in w:
                    by_kind[kind] += nbytes
                if pend is not None:
                    self._settle(stores, steps, pend, t)
                    pend = None
                if w:
                    # replay what is due by now: on quiet lanes, this step's stores wait (pend)
                    # until the next step's issue shows whether they land alone
                    if stores.owner or stores.due:
                        stores._until(t)  # (else nothing is in flight on the write lanes)
                    if not stores.owner and not stores.due and (sp := store_plan(w)) is not None:
                        pend = (len(steps), t, w, sp)
                        steps.append(math.nan)
                    else:
                        chains: list[_Chain] = []
                        for _, _, _, hops, staged in w:
                            chains += stores.issue(t, hops, staged)
                        steps.append(chains)
                else:
                    steps.append(_NO_CHAINS)
            computed.append(t)
        t = t + after
        ex.busy_compute += after
        if pend is not None:
            self._settle(stores, steps, pend, math.inf)
        stores.drain()
        for st in steps:
            if isinstance(st, float):
                if st > t:
                    t = st
                continue
            for ch in st:
                if ch.done > t:
                    t = ch.done
        return t

    @staticmethod
    def _settle(stores: _Stores, steps: list[float | list[_Chain]], pend: Pending, nxt: float) -> None:
        """Replay the pending stores of one step (issued on quiet write lanes) before the next
        step's stores, issued at ``nxt``: in one go (:func:`_solve`, lane by lane) where they have
        surely landed by ``nxt`` (:func:`_store_plan`'s bound), else among the rest (``_Stores``)."""
        k, at, w, (comp, span, prog) = pend
        if at + span < nxt and not stores.owner and not stores.due:
            steps[k] = _solve(stores.lanes, [(at, comp, None)]) if prog is None else _run_program(stores.lanes, at, prog)[1]
            return
        chains: list[_Chain] = []
        for _, _, _, hops, staged in w:
            chains += stores.issue(at, hops, staged)
        steps[k] = chains

    def _burst(
        self, reads: dict[str, _Lane], at: float, act: list[Share], kv: list[Share], weights: list[Share], gate: float | None,
        kv_first: bool, memo: dict[tuple[int, int, object, bool, bool], Burst], wkey: object,
    ) -> tuple[float, float]:
        """When the reads issued together at ``at`` in the block schedule have landed: (a step's
        activations ``act``, the rest: one GPU batch's KV ``kv`` and a layer's weights
        ``weights``, the latter's host-to-GPU hops not before ``gate``), their bytes counted.
        They join in the event path's order: the activations (the step issues them before the
        readers it wakes resume: those transfers it starts itself, then those it hands to a
        process), then the transfers each reader starts itself, the reader that resumes first
        (``kv_first``) first, then those it hands to a process of their own (a share staged
        through DRAM, or gated), in the order those processes were made. ``memo``: the step's
        bursts so far, compiled (the same shares recur in every layer), keyed by ``act`` and
        ``kv`` (lists that live as long as the step, or :data:`_NO_SHARES`) and ``wkey``, the
        weights' bytes by tier."""
        key = (id(act), id(kv), wkey, gate is None, kv_first)
        got = memo.get(key)
        if got is None:
            got = memo[key] = _burst_plan(act, kv, weights, gate is not None, kv_first)
        counts, n_first, comps, prog = got
        by_kind = self.ex.bytes_by_kind
        assert by_kind is not None
        for kind, nbytes in counts:
            by_kind[kind] += nbytes
        if not comps:
            return at, at
        if prog is not None and gate is None:
            # issued together, no gate: the same replay without _solve's per-call bookkeeping
            pair = prog[2]
            got2 = None if pair is None else _run_pair(reads, at, pair, n_first)
            a, done = got2 if got2 is not None else _run_program(reads, at, prog, n_first)
            return a, done if done > at else at
        issued: list[Issued] = [(at, comp, gate if gated else None) for comp, gated in comps]
        if not n_first:
            done = _solve(reads, issued)
            return at, done if done > at else at
        each = [at] * len(issued)
        _solve(reads, issued, each)
        return max(each[:n_first]), max(each[n_first:], default=at)

    def _weights(self) -> list[tuple[tuple[tuple[str, float], ...], list[Share]]]:
        """(key, shares) of every layer's streamed weights (the same in every step)."""
        if not self._wplans:
            ex = self.ex
            for layer in range(ex.cost.layers):
                wb = ex.layout.weight_bytes(layer)
                self._wplans.append((tuple(wb.items()), ex._plan_move(wb, False, "weights")))
            self._streamed = [li for li in range(ex.cost.layers) if ex.layout.weight_bytes(li)]
        return self._wplans

    def _compute(self, t: float, dev: float, cpu: float, attn: float, on_cpu: bool) -> float:
        """When one layer of one GPU batch that starts at ``t`` has computed."""
        ex = self.ex
        ex.busy_compute += dev
        if cpu > 0 and on_cpu:
            # the CPU's share of attention runs alongside the GPU's share of the heads, between
            # the projections that produce its input and consume its output
            t1 = t + (dev - attn)
            ex.busy_cpu += cpu
            return max(t1 + attn, t1 + cpu)
        return t + dev


def wake_at(env: simpy.Environment, end: float) -> simpy.Event:
    """An event that fires at time ``end`` exactly (the closed form's end time, where the event
    path's last event lands). ``env.timeout(d)`` fires at ``env.now + d`` rounded, and for a few
    pairs of times no ``d`` gives ``end`` (round-half-even skips it): those are scheduled at the
    absolute time directly."""
    now = env.now
    d = max(end - now, 0.0)
    while now + d < end:
        d = math.nextafter(d, math.inf)
    while d > 0 and now + d > end:
        d = math.nextafter(d, 0.0)
    if now + d == end or end <= now:
        return env.timeout(d)
    ev = env.event()
    ev._ok = True
    ev._value = None
    from simpy.events import NORMAL  # (SimPy is imported only by a world that runs its loop)

    heapq.heappush(env._queue, (end, NORMAL, next(env._eid), ev))  # type: ignore[attr-defined]
    return ev
