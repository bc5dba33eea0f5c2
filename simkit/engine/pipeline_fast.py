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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import simpy

from simkit.engine.engine import Engine
from simkit.engine.offload_fast import wake_at

if TYPE_CHECKING:
    from simkit.cost.iteration import IterationModel
    from simkit.engine.engine import Stage


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


def closed_form_reason(trace: bool, prefix_cache: bool, preemption: str) -> str | None:
    """None when :class:`PipelineSchedule` computes a pipelined plan's stages, else why they run
    event by event (the disaggregated KV hand-off crosses the network or NVLink, never a
    pipeline link, so it does not matter here)."""
    if trace:
        return "Chrome trace output"
    if prefix_cache:
        return "prefix-cache fetches overlap the stages"
    if preemption == "swap":
        return "swap preemption waits for KV transfers"
    return None


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

    def submit(
        self, eng: Engine, steps: list[tuple[np.ndarray, np.ndarray, int]], decode: tuple[int, int] | None = None,
    ) -> simpy.Event:
        """Schedule ``eng``'s iterations ``steps`` (each ``(q, ctx, logits rows)``) through the
        stages from now, with the engine's and the links' accounting; an event that fires when
        the last stage of the last iteration is done (as the event path's process does: one
        event after the stage's own timeout). Raises :class:`PipelineConflict` where the closed
        form does not hold (the run is then abandoned, so nothing needs undoing). ``decode``:
        as :meth:`_times` takes it (one iteration that only decodes)."""
        env = self.env
        free_at, last_req, link_end = self.free_at, self.last_req, self.link_end
        hidden, a_bytes = eng.cost.model.hidden_size, eng.cost.precision.a_bytes
        stage_busy, stage_comm = eng.stage_busy, eng.stage_comm
        busy, busy_gpu = eng.busy_time, eng.busy_gpu_s  # summed in the event path's order, stored below
        now = env.now
        req = now
        first = True
        for q, ctx, rows in steps:
            qsum = len(q) if decode is not None else int(q.sum())
            act_bytes = float(qsum) * hidden * a_bytes
            durs = self._times(q, ctx, rows, decode)
            comm: list[float] = []
            for k, r, cost, tp, link in self._plan:
                # FIFO stream: granted after every earlier request, when the last holder releases
                if req < last_req[k] or (req == last_req[k] and not (first and k == 0)):
                    raise PipelineConflict(self.replica, now, f"a micro-batch reaches stage {k} before or with an earlier one")
                last_req[k] = req
                dur = durs[k]
                f = free_at[k]
                start = req if req >= f else f
                stage_busy[k] += dur
                c = comm[r] if r < k else cost.comm_time(qsum)
                comm.append(c)
                stage_comm[k] += c
                end = start + dur
                free_at[k] = end
                busy += dur
                busy_gpu += dur * tp
                if link is None or act_bytes <= 0:
                    req = end
                    continue
                enter = end + link.latency if link.latency else end
                if enter <= link_end[k]:
                    raise PipelineConflict(self.replica, now, f"activations share the link after stage {k} with an earlier micro-batch's")
                # alone on the link: its wake-up is max(remaining, 0) * 1 / bandwidth after the entry
                land = enter + act_bytes * 1 / link.bandwidth
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
                req = land
            first = False
        eng.busy_time, eng.busy_gpu_s = busy, busy_gpu
        done = env.event()
        wake_at(env, req).callbacks.append(lambda _ev: done.succeed())
        return done


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
        one = self.cost.decode_step_times(B, float(ksum), 1, float(kmax))
        if one is None:
            e0 = float(np.cumsum(self.cost.decode_steps(B, float(ksum), 1, float(kmax), kv))[0])
        else:
            e0 = one[1][0]
        self._grow_blocks(dec, 1, kv)
        mc = self.max_context
        if kmax + 1 > mc["attn_decode"]:
            mc["attn_decode"] = kmax + 1
        start = env.now
        # every context is > 0 for a decode (attention_time's test): then its sums are the stages'
        hint = (ksum, kmax) if int(kv.min()) > 0 else None
        yield self.pipe.submit(self, [(np.ones(B, dtype=np.int64), kv, B)], hint)
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
