"""Pipeline-parallel iterations in closed form: a replica's stage schedule on plain floats.

The event path (:meth:`Engine._pipeline`, engine/engine.py) runs each iteration of a pipelined
replica as a SimPy process: for every stage it requests the stage's compute stream (a FIFO
resource shared by the replica's ``pp`` virtual engines), holds it for the stage's time, then
sends the activations over the link to the next stage (a :class:`Link`: processor sharing among
transfers that overlap). That is about a dozen SimPy events per stage per iteration.

:class:`PipelineSchedule` computes the same schedule when a micro-batch is submitted (at the
instant its engine decides the iteration), with one clock per stage (when it is next free) and
per link (when its last transfer lands). A micro-batch submitted after another one follows it
through every stage, unless a stage's time is shorter than the earlier micro-batch's
activation transfer: then it could reach a stage first (overtake) or share a link with it, and
the earlier micro-batch's schedule would change after the fact. Under the ordering checked at
each submission (every stage requested strictly after the previous micro-batch requested it,
every link entered strictly after the previous transfer on it landed), the event path's
schedule is exactly this one: a stage is granted at ``max(request, free)``, held until
``start + time``, a transfer enters the link after its latency and, alone on the link, lands
``bytes / bandwidth`` later, the same float operations in the same order as the event path's
``Timeout`` and ``Link`` arithmetic. So per-request times, the engines' busy and communication
seconds and the links' busy seconds, busy periods and bytes are bit for bit the event path's.

When the ordering does not hold, :meth:`PipelineSchedule.submit` raises
:class:`PipelineConflict` and ``simulate`` runs the scenario again with the stages event by
event (``engine_path`` says so): the result is still exact, at the cost of the aborted run.

A decode iteration's stages are priced together (:meth:`PipelineSchedule.submit_decode`): each
stage's ``mixed_step_time`` is its body and head tables of the batch, its share of the layers
times one attention term ``max(flops, bytes) + overhead`` and its host time, and that term
(the stages and the replica share its constants) is computed once, with the same operations in
the same order, for the stages and for the replica-wide step time the first inter-token gap is
measured against. Plans on the fast path (continuous, chunked-prefill and static batching,
disaggregated serving, prefix caching, swap preemption) run :class:`PipelineFastEngine` (the
fast engine's running totals, engine/fast.py), the others :class:`PipelineEngine` (the
reference engine's arrays); a repeated run takes the reference engine. Prefix-cache fetches
and demotions and swaps cross the host and storage links, never a pipeline link, so they leave
the stages' schedule as it is: :class:`PipelineFastEngine` waits for them where the reference's
steps do (a step's swaps before it is submitted, its admissions' fetches with its stages), so
its submissions are at the reference's instants; :class:`PipelineEngine`'s decode iterations
do not wait for fetches, so a reference-engine plan with a prefix cache or swaps runs its stages
event by event (:func:`closed_form_reason`).
"""

from __future__ import annotations

import itertools
import weakref
from typing import TYPE_CHECKING

import numpy as np

from simkit.engine.engine import Engine
from simkit.engine.fast import FastEngine, stand_in_contexts, stand_in_step
from simkit.engine.offload_fast import wake_at

if TYPE_CHECKING:
    import simpy

    from simkit.cost.iteration import IterationModel
    from simkit.engine.engine import Stage
    from simkit.engine.resources import Link


class PipelineConflict(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """A micro-batch would overtake another at a stage, or share a link with it (or reach it at
    the same instant): the closed form does not hold for this run."""

    def __init__(self, replica: int, now: float, what: str) -> None:
        super().__init__(replica, now, what)
        self.replica = replica
        self.now = now
        self.what = what

    def reason(self) -> str:
        return f"replica {self.replica} at t={self.now:.6g} s: {self.what}; the run was repeated event by event"


def closed_form_reason(trace: bool, prefix_cache: bool, preemption: str, fast_engine: bool = False) -> str | None:
    """None when :class:`PipelineSchedule` computes a pipelined plan's stages, else why they run
    event by event (the disaggregated KV hand-off crosses the network or NVLink, never a
    pipeline link, so it does not matter here). ``fast_engine``: the replicas run
    :class:`PipelineFastEngine`, whose steps wait for prefix-cache fetches and swaps as the
    reference's do (those cross the host and storage links, never a pipeline link, so the
    stages' schedule is the same); :class:`PipelineEngine` does not wait for them."""
    if trace:
        return "Chrome trace output"
    if prefix_cache and not fast_engine:
        return "prefix-cache fetches overlap the stages"
    if preemption == "swap" and not fast_engine:
        return "swap preemption waits for KV transfers"
    return None


_URGENT, _NORMAL, _ROOT = 0, 1, 2
"""SimPy's priorities (``simpy.events``; tested equal), and a submission's own place."""

_SUBMITS = itertools.count()
"""Submissions in the order they are made (the order their engines' resumptions are processed)."""


class _At:
    """One event of the event path's schedule of a micro-batch, never made: its time, priority,
    its place among the events its parent scheduled (``seq``) and its parent (the event in whose
    processing it was scheduled; None: forgotten). A submission's own place is a root
    (``prio`` ``_ROOT``, ``seq`` its submission number, no parent). SimPy processes the events of
    one time in (priority, scheduling order) order, so where two of these events share a time
    their order follows from their parents' (:func:`_before`)."""

    __slots__ = ("t", "prio", "seq", "parent", "peer", "ahead")

    def __init__(self, t: float, prio: int, seq: int, parent: _At | None) -> None:
        self.t = t
        self.prio = prio
        self.seq = seq
        self.parent = parent
        self.peer: _At | None = None
        """The last event it was found in order with (:func:`_before`), and whether it is first."""
        self.ahead = False


class _Undecided(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Two events' order does not follow from what :class:`_At` keeps."""


def _before(a: _At, b: _At) -> bool:
    """Whether SimPy processes event ``a`` before event ``b`` (distinct events): by time; at one
    time, a normal event's place is its scheduling order, so two of one priority go in their
    parents' order (their own order in one parent's); an urgent one (scheduled at that time)
    goes right after its parent, before every normal event not yet processed. Every pair of
    events the walk goes through is in the same order as the first: each remembers it (its
    ``peer``), so a later walk that reaches the pair stops there. Raises :class:`_Undecided`
    where the order needs what is not kept (a forgotten parent, or a submission against another
    micro-batch's event of its instant)."""
    seen: list[tuple[_At, _At]] = []
    while True:
        if a.t != b.t:
            first = a.t < b.t
            break
        if a.peer is b:
            first = a.ahead
            break
        if a is b:
            raise _Undecided
        pa, pb = a.prio, b.prio
        if pa == pb and (pa == _ROOT or (a.parent is b.parent and a.parent is not None)):
            first = a.seq < b.seq
            break
        seen.append((a, b))
        if pa == pb:
            a, b = a.parent, b.parent  # type: ignore[assignment]
        elif pa == _URGENT and pb == _NORMAL:
            if a.parent is b:
                first = False
                break
            a = a.parent  # type: ignore[assignment]
        elif pa == _NORMAL and pb == _URGENT:
            if b.parent is a:
                first = True
                break
            b = b.parent  # type: ignore[assignment]
        else:
            raise _Undecided
        if a is None or b is None:
            raise _Undecided
    for x, y in seen:
        x.peer, x.ahead, y.peer, y.ahead = y, first, x, not first
    return first


_ENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per world, per end time: the micro-batches of every replica whose stages end then, not yet
resumed (each ``(its end event's place, the event to fire)``)."""

_KEEP = 16
"""Submissions of a replica whose events' places are kept (older ones' parents are forgotten)."""


class PipelineSchedule:
    """The stage streams and inter-stage links of one pipelined replica, as clocks (see the
    module docstring). Shared by the replica's virtual engines."""

    def __init__(self, env: simpy.Environment, stages: list[Stage], replica: int) -> None:
        self.env = env
        self.stages = stages
        self.replica = replica
        n = len(stages)
        ninf = float("-inf")
        self.free_at = [ninf] * n
        """When each stage's stream is released by the last micro-batch granted it."""
        self.last_req = [ninf] * n
        """When the last micro-batch submitted requested each stage."""
        self.link_end = [ninf] * n
        """When the last transfer on each stage's outgoing link landed."""
        # stages built alike (same layers, first/last roles) cost alike: price one of each
        reps: dict[tuple[int, bool, bool], int] = {}
        self.rep = [reps.setdefault((st.cost.layers, st.cost.first_stage, st.cost.last_stage), k) for k, st in enumerate(stages)]
        self.costs: list[IterationModel] = [st.cost for st in stages]
        self._plan = [(k, self.rep[k], st.cost, st.tp, st.link_out) for k, st in enumerate(stages)]
        self._terms: dict[int, tuple | None] = {}
        """Per decode batch size, what :meth:`_decode_times` prices with (see :meth:`_decode_terms`)."""
        self._hop_memo: dict[int, tuple[float, list[tuple[int, Link | None, float, float]]]] = {}
        self._last_decode: tuple[int, int, int, float] | None = None
        """(batch, context sum, longest, replica-wide time) of the last decode iteration priced."""
        self.e_at: list[_At | None] = [None] * n
        """The place of the event path's timeout of each stage's last holder (see :class:`_At`)."""
        self._rq: _At | None = None
        self._qseq = 0
        """The event in whose processing the current micro-batch makes its next request, and its
        place among the events that one schedules."""
        self._kept: list[list[_At]] = []
        """The places made by the last :data:`_KEEP` submissions."""
        self.resumed_by: _At | None = None
        """Set by the engine before a submission: the end event of its last micro-batch where
        that resumed it and it waited for nothing since (the submission's parent), else None."""
        self.last_end: _At | None = None
        """The place of the last submission's end event (what :meth:`_done` resumes with)."""

    def _times(self, q: np.ndarray, ctx: np.ndarray, rows: int, decode: tuple[int, int] | None = None) -> list[float]:
        """Each stage's ``step_time(q, ctx, logits_rows=rows)``, in its scalar form where it has
        one (bit-identical), one evaluation per distinct stage. ``decode``: the iteration only
        decodes, and its contexts sum to ``decode[0]``, the longest being ``decode[1]``."""
        if decode is not None:
            pq: list[int] = []
            pc: list[int] = []
            nb = len(q)
            dsum, dmax = decode
        else:
            pq, pc, nb, dsum, dmax = self._split(q, ctx)
        out: list[float] = []
        costs = self.costs
        for k, r in enumerate(self.rep):
            if r < k:
                out.append(out[r])
                continue
            cost = costs[k]
            t = cost.mixed_step_time(pq, pc, nb, dsum, dmax, rows)
            out.append(cost.step_time(q, ctx, logits_rows=rows) if t is None else t)
        return out

    @staticmethod
    def _split(q: np.ndarray, ctx: np.ndarray) -> tuple[list[int], list[int], int, int, int]:
        """An iteration as :meth:`IterationModel.mixed_step_time` takes it: the prefill chunks'
        tokens and contexts, and the decodes' count, context sum and longest context (decodes
        as ``attention_time`` counts them: one new token over a cache)."""
        is_dec = (q == 1) & (ctx > 0)
        nb = int(np.count_nonzero(is_dec))
        if nb == len(q):
            pq: list[int] = []
            pc: list[int] = []
            dsum, dmax = int(ctx.sum()), int(ctx.max())
        else:
            pre = ~is_dec
            pq, pc = q[pre].tolist(), ctx[pre].tolist()
            if nb:
                d = ctx[is_dec]
                dsum, dmax = int(d.sum()), int(d.max())
            else:
                dsum = dmax = 0
        return pq, pc, nb, dsum, dmax

    def _comms(self, qsum: int) -> list[float]:
        """Each stage's collective seconds in one pass of ``qsum`` tokens (one evaluation per
        distinct stage)."""
        out: list[float] = []
        for k, r, cost, _, _ in self._plan:
            out.append(out[r] if r < k else cost.comm_time(qsum))
        return out

    def submit(
        self, eng: Engine, steps: list[tuple[np.ndarray, np.ndarray, int]], decode: tuple[int, int] | None = None,
    ) -> simpy.Event:
        """Schedule ``eng``'s iterations ``steps`` (each ``(q, ctx, logits rows)``) through the
        stages from now, with the engine's and the links' accounting; an event that fires when
        the last stage of the last iteration is done (as the event path's process does: one
        event after the stage's own timeout). Raises :class:`PipelineConflict` where the closed
        form does not hold (the run is then abandoned, so nothing needs undoing). ``decode``:
        as :meth:`_times` takes it (one iteration that only decodes)."""
        now = self.env.now
        self._begin(now)
        req = now
        first = True
        for q, ctx, rows in steps:
            qsum = len(q) if decode is not None else int(q.sum())
            req = self._through(eng, now, req, first, qsum, self._times(q, ctx, rows, decode), self._comms(qsum))
            first = False
        return self._done(req)

    def submit_decode(
        self, eng: Engine, nb: int, dec_sum: int, longest: int, contexts: np.ndarray | None = None
    ) -> simpy.Event:
        """:meth:`submit` of one iteration decoding ``nb`` sequences whose contexts (each > 0)
        sum to ``dec_sum``, the longest being ``longest`` (a sliding-window model: the
        ``contexts`` themselves); its stage times as :meth:`_decode_times` gives them."""
        now = self.env._now
        self._begin(now)
        durs, comms = self._decode_times(eng, nb, dec_sum, longest, contexts)
        return self._done(self._through(eng, now, now, True, nb, durs, comms))

    def decode_first(self, eng: Engine, nb: int, dec_sum: int, longest: int, contexts: np.ndarray | None = None) -> float:
        """The replica-wide time of one decode iteration (``eng.cost``'s
        ``decode_steps(nb, dec_sum, 1, longest, contexts)[0]``; ``contexts``: a sliding-window
        model's), which the first inter-token gap of a pipelined decode iteration is measured
        against; from the iteration's shared attention term where :meth:`_decode_times` has
        just priced it (bit-identical), else from the cost model."""
        got = self._last_decode
        if got is not None and got[0] == nb and got[1] == dec_sum and got[2] == longest:
            return got[3]
        cost = eng.cost
        one = cost.decode_step_times(nb, float(dec_sum), 1, float(longest))
        if one is not None:
            return one[1][0]
        return float(cost.decode_steps(nb, float(dec_sum), 1, float(longest), contexts)[0])

    def _decode_terms(self, eng: Engine, nb: int) -> tuple | None:
        """Per batch size: the decode-attention constants every distinct stage and the replica's
        own cost model share (:meth:`IterationModel.decode_constants` without its fixed part),
        each distinct stage's ``(body + head, layers, host)`` of ``nb`` tokens and rows, the
        stages' collective seconds, and the replica's ``(fixed, layers)``; None where they are
        not shared or have no scalar form (then :meth:`_times` prices each stage)."""
        memo = self._terms
        if nb in memo:
            return memo[nb]
        rep_cost = eng.cost
        consts = rep_cost.decode_constants(nb)
        got: tuple | None = None
        if consts is not None:
            stages: list[tuple[float, int, float] | None] = []
            shared = True
            for k, r, cost, _, _ in self._plan:
                if r < k:
                    stages.append(None)
                    continue
                c = cost.decode_constants(nb)
                if c is None or c[:10] != consts[:10]:
                    shared = False
                    break
                # mixed_step_time's decode-only terms: the body and head tables, the host time
                bh = float(cost.body_time(nb)) + float(cost.head_time(nb))
                stages.append((bh, cost.layers, cost.iteration_overhead + cost.per_seq_overhead * nb))
            if shared:
                got = (consts[:10], stages, self._comms(nb), consts[10], rep_cost.layers)
        memo[nb] = got
        return got

    def _decode_times(
        self, eng: Engine, nb: int, dec_sum: int, longest: int, contexts: np.ndarray | None = None
    ) -> tuple[list[float], list[float]]:
        """Each stage's time and collective seconds for one iteration decoding ``nb`` sequences:
        :meth:`IterationModel.mixed_step_time`'s operations in its order, with the attention
        term ``(max(a, b) + overhead)`` computed once for every stage (the stages and the
        replica share its constants), and the replica-wide time as ``decode_step_times`` forms
        it (kept for :meth:`decode_first`). ``contexts``: a sliding-window model's (each
        sequence attends at most the window; no shared scalar terms then), else stand-ins of
        the same count, sum and maximum are all the stages read."""
        terms = self._decode_terms(eng, nb)
        self._last_decode = None
        if terms is None:
            q = np.ones(nb, dtype=np.int64)
            ctx = stand_in_contexts(nb, dec_sum, longest) if contexts is None else contexts
            return self._times(q, ctx, nb, (dec_sum, longest)), self._comms(nb)
        (f4, c1, c3, ratio, kvh, d, kb, cf, cb, ov), stages, comms, fixed, rep_layers = terms
        # _decode_attention1(nb, float(dec_sum + nb), longest + 1.0) up to its factor of layers
        kv = float(dec_sum + nb)
        if ratio is not None:
            y = (longest + 1.0) * ratio
            if y > kv:
                kv = y
        a = f4 * kv * cf
        b = (c1 + 2.0 * kv * kvh * d * kb + c3) * cb
        inner = (b if b > a else a) + ov
        out: list[float] = []
        for k, st in enumerate(stages):
            if st is None:
                out.append(out[self.rep[k]])
            else:
                bh, layers, host = st
                out.append(bh + inner * layers + host)
        self._last_decode = (nb, dec_sum, longest, fixed + inner * rep_layers)
        return out, comms

    def _hops(self, eng: Engine, qsum: int) -> tuple[float, list[tuple[int, Link | None, float, float]]]:
        """The activation bytes of ``qsum`` tokens and, per stage, ``(tp, outgoing link, its
        latency, seconds the bytes take alone on it)`` (``bytes * 1 / bandwidth``, Link's
        arithmetic); memoised per token count."""
        got = self._hop_memo.get(qsum)
        if got is None:
            act_bytes = float(qsum) * eng.cost.model.hidden_size * eng.cost.precision.a_bytes
            hops = [(tp, link, link.latency if link is not None else 0.0, act_bytes * 1 / link.bandwidth if link is not None else 0.0)
                    for _, _, _, tp, link in self._plan]
            if len(self._hop_memo) >= 100_000:
                self._hop_memo.clear()
            got = self._hop_memo[qsum] = (act_bytes, hops)
        return got

    def _through(
        self, eng: Engine, now: float, req: float, first: bool, qsum: int, durs: list[float], comms: list[float],
    ) -> float:
        """One iteration of ``qsum`` tokens through the stages (times ``durs``, collectives
        ``comms``), requested at ``req``: the stages' and links' clocks, the engine's and links'
        accounting; returns when its last stage (or transfer) is done."""
        free_at, last_req, link_end = self.free_at, self.last_req, self.link_end
        e_at, rq, qseq = self.e_at, self._rq, self._qseq
        assert rq is not None
        made = self._kept[-1]
        act_bytes, hops = self._hops(eng, qsum)
        stage_busy, stage_comm = eng.stage_busy, eng.stage_comm
        busy, busy_gpu = eng.busy_time, eng.busy_gpu_s  # summed in the event path's order, stored below
        for k, (tp, link, lat, xfer) in enumerate(hops):
            # FIFO stream: granted after every earlier request, when the last holder releases
            lr = last_req[k]
            if req <= lr and (req < lr or not (first and k == 0)):
                raise PipelineConflict(self.replica, now, f"a micro-batch reaches stage {k} before or with an earlier one")
            last_req[k] = req
            dur = durs[k]
            f = free_at[k]
            start = req if req >= f else f
            # the places of the stage's grant and timeout: granted in the processing of the
            # request where the stream is free then, else in that of the holder's release
            ep = e_at[k]
            if ep is None or req > f or (req == f and self._free_first(ep, rq, now)):
                qa = _At(start, _NORMAL, qseq, rq)
            else:
                rel = _At(f, _NORMAL, 0, ep)
                made.append(rel)
                qa = _At(start, _NORMAL, 0, rel)
            stage_busy[k] += dur
            stage_comm[k] += comms[k]
            end = start + dur
            free_at[k] = end
            ea = e_at[k] = _At(end, _NORMAL, 0, qa)
            made += (qa, ea)
            busy += dur
            busy_gpu += dur * tp
            if link is None:
                # the next request in the timeout's processing, after the release
                rq, qseq = ea, 1
                req = end
                continue
            if act_bytes <= 0:
                # no bytes: the transfer's event is scheduled at once, after the release
                rq, qseq = _At(end, _NORMAL, 1, ea), 0
                made.append(rq)
                req = end
                continue
            enter = end + lat if lat else end
            if enter <= link_end[k]:
                raise PipelineConflict(self.replica, now, f"activations share the link after stage {k} with an earlier micro-batch's")
            # alone on the link: its wake-up is max(remaining, 0) * 1 / bandwidth after the entry
            land = enter + xfer
            link_end[k] = land
            # Link._advance at the entry (idle: only its clock moves) and at the wake-up (busy
            # since the entry), then the transfer's end step adds its bytes
            link.busy_time += land - enter
            log = link.busy_log
            if log is not None:
                if log and log[-1][1] == enter:
                    log[-1][1] = land
                else:
                    log.append([enter, land])
            link._last = land
            link.bytes_moved += act_bytes
            # Link.transfer's start (urgent, after the release), its latency's timeout or (none)
            # its wake-up's arming (urgent), the wake-up, the flow's end, the transfer's end
            u1 = _At(end, _URGENT, 1, ea)
            arm = _At(enter, _NORMAL, 0, u1) if lat else _At(end, _URGENT, 0, u1)
            wk = _At(land, _NORMAL, 0, arm)
            inner = _At(land, _NORMAL, 0, wk)
            rq, qseq = _At(land, _NORMAL, 0, inner), 0
            made += (u1, arm, wk, inner, rq)
            req = land
        eng.busy_time, eng.busy_gpu_s = busy, busy_gpu
        self._rq, self._qseq = rq, qseq
        return req

    def _begin(self, now: float) -> None:
        """A submission at ``now``: its process's start (urgent, in the processing of the
        engine's resumption: a root), where its first request is made; the places of the
        submission :data:`_KEEP` back forget their parents."""
        parent = self.resumed_by
        self.resumed_by = None
        root = _At(now, _ROOT, next(_SUBMITS), None) if parent is None else parent
        self._rq, self._qseq = _At(now, _URGENT, 0, root), 0
        kept = self._kept
        kept.append([root, self._rq])
        if len(kept) > _KEEP:
            for a in kept.pop(0):
                a.parent = None

    def _free_first(self, ep: _At, rq: _At, now: float) -> bool:
        """Whether the last holder's timeout ``ep`` is processed before the request's event
        ``rq`` (the same instant): then the stream is free at the request."""
        try:
            return _before(ep, rq)
        except _Undecided:
            raise PipelineConflict(self.replica, now, "a stage is requested at the instant it is released, in an order not followed") from None

    def _done(self, end: float) -> simpy.Event:
        """An event that fires one event after the timeout ending at ``end`` (as the event
        path's process resumes its engine). Where several replicas' micro-batches end at one
        instant, the timeouts fire in the order they were scheduled here (at the submissions)
        but the event path's last events were scheduled later, each where its last stage was
        granted: each of these timeouts resumes the micro-batch whose end event SimPy would
        process first (:func:`_before` on their places), or the run is repeated event by event
        where that order does not follow from the places kept."""
        env = self.env
        done = env.event()
        rq = self._rq
        assert rq is not None
        # the process's end event, scheduled where its last request would be made
        at = self.last_end = _At(end, _NORMAL, self._qseq, rq)
        self._kept[-1].append(at)
        ends = _ENDS.get(env)
        if ends is None:
            ends = _ENDS[env] = {}
        group = ends.get(end)
        if group is None:
            ends[end] = [(at, done)]
        else:
            group.append((at, done))
        wake_at(env, end).callbacks.append(lambda _ev: self._fire(ends, end))
        return done

    def _fire(self, ends: dict, end: float) -> None:
        """One of the timeouts ending at ``end`` fired: resume the first micro-batch in SimPy's
        order of those ending then (see :meth:`_done`)."""
        group = ends[end]
        if len(group) == 1:
            del ends[end]
            group[0][1].succeed()
            return
        best = 0
        try:
            for j in range(1, len(group)):
                if _before(group[j][0], group[best][0]):
                    best = j
        except _Undecided:
            raise PipelineConflict(self.replica, end, "micro-batches of two replicas end at one instant in an order not followed") from None
        group.pop(best)[1].succeed()


class PipelineEngine(Engine):
    """An :class:`Engine` of a pipelined replica whose stages run in closed form
    (:class:`PipelineSchedule`): its decode iterations (one at a time, as every pipelined
    iteration is) are costed on scalars, bit-identical to the reference engine's arrays."""

    pipe: PipelineSchedule

    def _decode_run(self, dec: np.ndarray):  # type: ignore[no-untyped-def]
        """:meth:`Engine._decode_run` for a pipelined replica: one iteration (the growth bound on
        a longer run does not apply), the replica-wide step time (the first inter-token gap is
        measured against it) on scalars where :meth:`IterationModel.decode_step_times` has
        them, the stages through :meth:`PipelineSchedule.submit`."""
        env = self.env
        t = self.table
        B = len(dec)
        kv = t.kv_len[dec]
        gen = t.gen[dec]
        out = t.output[dec]
        ksum, kmax = int(kv.sum()), int(kv.max())
        self._grow_blocks(dec, 1, kv)
        mc = self.max_context
        if kmax + 1 > mc["attn_decode"]:
            mc["attn_decode"] = kmax + 1
        start = env.now
        pipe = self.pipe
        # every context is > 0 for a decode (attention_time's test): then its sums are the stages'
        if int(kv.min()) > 0:
            done = pipe.submit_decode(self, B, ksum, kmax)
            e0 = pipe.decode_first(self, B, ksum, kmax)
        else:
            done = pipe.submit(self, [(np.ones(B, dtype=np.int64), kv, B)])
            e0 = float(np.cumsum(self.cost.decode_steps(B, float(ksum), 1, float(kmax), kv))[0])
        yield done
        now = env.now
        self.log.add(self.index, start, now, 1, 0, B, B, self.kv.in_use)
        extra = max((now - start) - e0, 0.0)
        self.tbt.push(start + e0 + extra - t.last_token[dec])
        gen += 1
        t.kv_len[dec] = kv + 1
        t.gen[dec] = gen
        t.last_token[dec] = now
        fin = gen >= out
        if fin.any():
            self._finish(dec[fin].tolist())


class PipelineFastEngine(FastEngine):
    """A :class:`FastEngine` of a pipelined replica whose stages run in closed form
    (:class:`PipelineSchedule`): the fast engine's decisions and running totals (the replica's
    ``pp`` engines share its queue and KV blocks, each keeps its own decode set), one
    iteration at a time as every pipelined iteration is, each scheduled through the stages at
    the instant it is decided, then applied when its last stage is done: what
    :class:`PipelineEngine` does with the reference engine's per-request arrays."""

    pipe: PipelineSchedule

    def _loop(self):  # type: ignore[no-untyped-def]
        """:meth:`FastEngine._loop` with each iteration submitted to the stages (no replica-wide
        pricing of a mixed iteration: the stages price it; no collectives on ``stage_comm[0]``:
        the stages count theirs) and no clock moved without an event (the stages' end is one)."""
        env = self.env
        fast_step = self.policy.fast_step  # type: ignore[attr-defined]
        pipe = self.pipe
        resumed_by = None  # the end event that resumed this loop, while it waited for nothing else
        while True:
            if not self.running and not self.waiting and not self.swapped:
                yield from self._idle_wait()
                resumed_by = None
            pre, q, nb = fast_step(self)
            if not pre and not nb:
                if self._reject_never_fitting():
                    continue
                yield from self._wait_empty_step()
                resumed_by = None
                continue
            if self.pending_swap:
                # the step's swaps run before its forward pass (the reference's wait in its loop)
                yield env.all_of(self.pending_swap)
                self.pending_swap = []
                resumed_by = None
            pipe.resumed_by = resumed_by
            start = env._now
            if pre:
                kv_pre, rows, dec_sum, longest = self._mixed_gather(pre, q, nb)
                qa, ctx = stand_in_step(q, kv_pre, nb, dec_sum, longest)
                if nb and self._window:
                    ctx[len(q) :] = self._contexts()  # a sliding window: the real contexts
                done = pipe.submit(self, [(qa, ctx, rows)])
            else:
                # FastEngine._decode_begin of one step: the decode set's context sum and longest
                # context, its blocks for one more token
                dec_sum, longest = self._decode_shape(nb)
                if self._Xa < self._D + 1:
                    self._alloc_to(self._D + 1)
                ctxs = self._contexts()  # a sliding-window model's, else None
                done = pipe.submit_decode(self, nb, dec_sum, longest, ctxs)
                first = pipe.decode_first(self, nb, dec_sum, longest, ctxs)
                self._run = (nb, 1, None, first)
            if self.pending_fetch:
                # the stages overlap the prefix fetches the step's admissions started (the
                # reference's ``_wait_fetch``: the same events in the same order)
                pending, self.pending_fetch = self.pending_fetch, []
                yield env.all_of([done, *pending])
                resumed_by = None
            else:
                resumed_by = pipe.last_end
                yield done
            if pre:
                self._mixed_end(start, pre, q, nb)
            else:
                self._decode_end(start, first)
