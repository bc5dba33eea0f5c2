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

Covered: one GPU batch per step with prefetch (``overlap: true``), any number without
(``overlap: false``); weights and KV on any tier (disk staged through DRAM, CXL streamed); CPU
attention; ``decode_overlap: false``; pinned copies, and pageable ones without CPU attention (the
host thread that stages pageable copies also runs CPU attention: a shared resource). Run event by
event (:func:`closed_form_reason`, and a step with several GPU batches and prefetch): FlexGen's
zig-zag block schedule, activations off the GPU, KV spill, Chrome traces, and plans where
anything else uses the links or the host CPU during a step.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import simpy

from simkit.engine.offload import Hop, OffloadExecutor, Placement, Share
from simkit.engine.resources import Link
from simkit.specs.tiers import CPU_READ_PATH


def closed_form_reason(
    layout: Placement, cpu_attention: bool, replicas: int, trace: bool, prefix_cache: bool, preemption: str,
    disaggregated: bool, pp: int,
) -> str | None:
    """None when :class:`ClosedFormStep` reproduces an offloaded plan's steps exactly, else why
    they run event by event. ``cpu_attention``: attention runs on the host CPU (a resource the
    replicas share)."""
    if trace:
        return "Chrome trace output"
    if pp > 1:
        return "pipeline stages"
    if any(f > 0 for t, f in layout.act_frac.items() if t != "gpu"):
        return "activations off the GPU"
    if layout.spill_after is not None:
        return "KV spill"
    if prefix_cache:
        return "prefix caching moves KV over the same links"
    if preemption == "swap":
        return "swap preemption moves KV over the same links"
    if disaggregated:
        return "KV hand-offs over the same links"
    if cpu_attention and replicas > 1:
        return "replicas share the host CPU"
    if cpu_attention and layout.pageable_factor < 1.0:
        return "pageable copies staged by the host thread that runs CPU attention"
    tiers = tuple(CPU_READ_PATH)
    reads = {h for t in tiers for h in (*layout.read_path(t), *CPU_READ_PATH[t])}
    writes = {h for t in tiers for h in layout.write_path(t)}
    if reads & writes:
        return "reads and writes share a link direction"
    return None


class _Flow:
    """One hop of one share: its bytes on one link direction."""

    __slots__ = ("done", "gate", "nbytes", "remaining", "succ", "then")

    def __init__(self, nbytes: float, then: list[Hop] | None, gate: float | None) -> None:
        self.nbytes = nbytes
        self.remaining = nbytes
        self.done = math.nan
        self.then = then
        """The hops that follow this one (store and forward through DRAM), if any."""
        self.gate = gate
        """A host-to-GPU hop of the share starts no earlier than this."""
        self.succ: _Flow | None = None

    def end(self) -> float:
        """When the share this hop starts has arrived (NaN while a hop of it is in flight)."""
        f = self
        while f.succ is not None:
            f = f.succ
        return math.nan if f.then is not None else f.done


class _Lane:
    """One link direction's fair sharing, replayed with :class:`Link`'s arithmetic on the real
    link's counters (busy time, busy periods, bytes moved)."""

    __slots__ = ("bw", "flows", "last", "link", "target", "wake")

    def __init__(self, link: Link) -> None:
        self.link = link
        self.bw = link.bandwidth
        self.flows: list[_Flow] = []
        self.last = 0.0
        self.wake = math.inf
        self.target: _Flow | None = None

    def _advance(self, now: float) -> None:
        dt = now - self.last
        if self.flows and dt > 0:
            share = self.bw * dt / len(self.flows)
            for f in self.flows:
                f.remaining -= share
            link = self.link
            link.busy_time += dt
            log = link.busy_log
            if log is not None:
                if log and log[-1][1] == self.last:
                    log[-1][1] = now
                else:
                    log.append([self.last, now])
        self.last = now

    def _reschedule(self, now: float) -> None:
        if not self.flows:
            self.wake = math.inf
            self.target = None
            return
        target = min(self.flows, key=_remaining)
        self.target = target
        self.wake = now + max(target.remaining, 0.0) * len(self.flows) / self.bw

    def join(self, now: float, flow: _Flow) -> None:
        self._advance(now)
        self.flows.append(flow)
        self._reschedule(now)

    def fire(self) -> list[_Flow]:
        """Complete the flows due at the next wake-up; the finished flows."""
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
        return finished


def _remaining(f: _Flow) -> float:
    return f.remaining


class _Net:
    """The link directions one side of a step uses (its reads, or its writes): joins and
    wake-ups are processed in time order, a wake-up before a join at the same instant (the order
    the event path gives them: the wake-up was scheduled first)."""

    __slots__ = ("joins", "lanes", "seq")

    def __init__(self) -> None:
        self.lanes: dict[str, _Lane] = {}
        self.joins: list[tuple[float, int, _Lane, _Flow]] = []
        self.seq = 0

    def start(self, now: float, hops: list[Hop], gate: float | None) -> _Flow:
        """Issue ``hops[0]`` at ``now`` (a host-to-GPU hop waits for ``gate``; the other hops
        follow one after the other); its flow."""
        name, link, nbytes = hops[0]
        if gate is not None and name == "h2d" and gate > now:
            now = gate
        flow = _Flow(nbytes, hops[1:] or None, gate)
        lane = self.lanes.get(name)
        if lane is None:
            lane = self.lanes[name] = _Lane(link)
        self.seq += 1
        heapq.heappush(self.joins, (now + link.latency if link.latency else now, self.seq, lane, flow))
        return flow

    def finish(self, flows: list[_Flow]) -> float:
        """Process joins and wake-ups until every share of ``flows`` has arrived; when the last did."""
        joins = self.joins
        lanes = self.lanes.values()
        left = list(reversed(flows))
        last = -math.inf
        while True:
            while left:
                e = left[-1].end()
                if e != e:  # NaN: still in flight
                    break
                last = max(last, e)
                left.pop()
            if not left:
                return last
            lane = min(lanes, key=_wake)
            j = joins[0][0] if joins else math.inf
            if lane.wake <= j:
                if lane.wake == math.inf:
                    raise AssertionError("closed-form offload step: a transfer never completes")
                for f in lane.fire():
                    if f.then is not None:
                        # a store-and-forward share's next hop leaves once this one has landed
                        f.succ = self.start(f.done, f.then, f.gate)
            else:
                at, _, jl, flow = heapq.heappop(joins)
                jl.join(at, flow)


def _wake(lane: _Lane) -> float:
    return lane.wake


def _issue(net: _Net, plan: list[Share], now: float, gate: float | None) -> list[_Flow]:
    """Start every share of ``plan`` at ``now``: a staged share's first hop (the rest chained to
    it), every hop of any other share at once."""
    out: list[_Flow] = []
    for _, _, _, hops, staged in plan:
        if not hops:
            continue
        if staged:
            out.append(net.start(now, hops, gate))
        else:
            out += [net.start(now, [h], gate) for h in hops]
    return out


class ClosedFormStep:
    """The end time of an offloaded step, as :meth:`OffloadExecutor.run_step` produces it."""

    def __init__(self, ex: OffloadExecutor) -> None:
        self.ex = ex

    def run(self, now: float, q: np.ndarray, ctx: np.ndarray, rows: int) -> float | None:
        """The end time of the step that starts at ``now``, with the executor's counters and the
        links' updated as the event path updates them; None (nothing changed) when the step needs
        the event path (several GPU batches with prefetch: the zig-zag block schedule)."""
        ex = self.ex
        c = ex.cost
        lay = ex.layout
        q = np.asarray(q, dtype=np.int64)
        ctx = np.asarray(ctx, dtype=np.int64)
        gbs = ex.gpu_batch_size or len(q)
        groups = [(q[k : k + gbs], ctx[k : k + gbs]) for k in range(0, len(q), gbs)]
        prefetch = ex.overlap
        if prefetch and len(groups) > 1:
            return None
        cpu_attention = bool(lay.plan.cpu_attention and ex.cpu_cost is not None)
        on_cpu = ex.cpu_stream is not None
        before, _, after = c.split_layers(q, ctx, logits_rows=rows)
        parts = ex.compute_parts
        assert parts is not None
        costs = [ex.group_cost(gq, gc, cpu_attention) for gq, gc in groups]
        writes_of = [ex._plan_move(lay.kv_write_bytes(float(gq.sum())), True, "kv_write") for gq, _ in groups]
        kv_plan: list[Share] = []
        for _, gc in groups:
            kv_plan += ex._plan_move(lay.kv_read_bytes(float(gc.sum())), False, "kv_read", to_host=cpu_attention)
            kv_plan += ex._plan_move(lay.spill_read_bytes(gc), False, "kv_read", to_host=cpu_attention)
        fetch_plans: dict[tuple[tuple[str, float], ...], list[Share]] = {}
        reads, writes = _Net(), _Net()

        def fetch(layer: int, at: float, gate: float | None) -> float:
            """When layer ``layer``'s weights and KV, issued at ``at``, have arrived."""
            wb = lay.weight_bytes(layer)
            key = tuple(wb.items())
            plan = fetch_plans.get(key)
            if plan is None:
                plan = fetch_plans[key] = ex._plan_move(wb, False, "weights") + kv_plan
            ex.count(plan)
            flows = _issue(reads, plan, at, gate)
            return reads.finish(flows) if flows else at

        t = now + before
        ex.busy_compute += before
        parts["embedding_and_head"] += before + after
        if prefetch:
            # one GPU batch: the reader streams the layers that need data into BUFFERS staging
            # buffers; a decode step's host-to-GPU copies may wait for the previous layer (gated)
            dev, cpu, attn, _, _ = cost = costs[0]
            decode_only = bool(((q == 1) & (ctx > 0)).all())
            gated = decode_only and (lay.pageable_factor < 1.0 or not lay.plan.decode_overlap)
            kv_moves = ex._needs_kv(groups, cpu_attention)
            needing = [li for li in range(c.layers) if lay.weight_bytes(li) or kv_moves]
            index = {li: k for k, li in enumerate(needing)}
            computed: list[float] = []
            pending: list[_Flow] = []
            r = now
            for layer in range(c.layers):
                k = index.get(layer)
                if k is not None:
                    if k >= ex.BUFFERS:
                        r = max(r, computed[needing[k - ex.BUFFERS]])
                    r = max(r, fetch(layer, r, computed[layer - 1] if gated and layer > 0 else None))
                    t = max(t, r)
                t = self._compute(t, dev, cpu, attn, on_cpu)
                ex.add_parts(cost)
                ex.count(writes_of[0])
                pending += _issue(writes, writes_of[0], t, None)
                computed.append(t)
            t = t + after
            ex.busy_compute += after
            if pending:
                t = max(t, writes.finish(pending))
            return t
        for layer in range(c.layers):
            t = max(t, fetch(layer, t, None))
            for cost, w in zip(costs, writes_of, strict=True):
                t = self._compute(t, cost[0], cost[1], cost[2], on_cpu)
                ex.add_parts(cost)
                ex.count(w)
                flows = _issue(writes, w, t, None)
                if flows:
                    t = max(t, writes.finish(flows))
        t = t + after
        ex.busy_compute += after
        return t

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
    heapq.heappush(env._queue, (end, simpy.events.NORMAL, next(env._eid), ev))  # type: ignore[attr-defined]
    return ev
