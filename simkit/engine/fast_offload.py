"""The fast engine on offloaded plans: :class:`FastEngine`'s decisions and running totals, each
step timed by the offloaded layer pipeline in closed form (engine/offload_fast.py).

An offloaded step runs one iteration (the reference engine's decode runs are one step long
when a plan is offloaded: transfers contend). :class:`OffloadFastEngine` takes the policy's
decision through its ``fast_step`` hook, keeps the decode set as running totals, and hands the
step to the executor as the reference engine does (``Engine._offloaded`` in a SimPy process,
so the events are the same): with the decoding requests' contexts as stand-ins of the same
count, sum and maximum (:func:`stand_in_step`), which is all the step's cost reads of them
(``IterationModel.split_layers``'s attention, the executor's per-GPU-batch attention, KV bytes
and dequantisation, ``IterationModel.decode_context``) when the step is one GPU batch and no
KV spills. The deployment uses it where the fast path covers the plan, no step can hold more
sequences than ``gpu_batch_size`` and the offloaded steps run in closed form, or event by event
only because other traffic of the replica may use the step's links (its own prefix fetches and
demotions or swaps, disaggregated serving's KV hand-offs: ``fast_offload_reason``): then each
step is the executor's event path (:meth:`OffloadExecutor.run_step`, which reads the same
count, sum and maximum of the contexts through the same cost calls), waiting for the fetches
and swaps as the reference's steps do;
elsewhere an offloaded plan runs on the reference engine.
"""

from __future__ import annotations

import numpy as np

from simkit.engine.fast import FastEngine, stand_in_contexts, stand_in_step
from simkit.engine.offload_fast import HANDOFFS_ON_LINKS, PREFIX_ON_LINKS, SWAPS_ON_LINKS


def fast_offload_reason(event_reason: str | None, gpu_batch_size: int | None, step_seqs: int) -> str | None:
    """None when :class:`OffloadFastEngine` runs an offloaded plan the fast path otherwise
    covers, else why the reference engine does. ``event_reason``: why the steps run event by
    event (``offload_fast.closed_form_reason``; None: in closed form); ``offloading`` where that
    is anything but other traffic of the replica on the step's links (prefix fetches, swaps, KV
    hand-offs; the engine path names why the steps run event by event). ``step_seqs``: the
    most sequences a step holds (``max_num_seqs``, a static batch's size)."""
    if event_reason is not None and event_reason not in (PREFIX_ON_LINKS, SWAPS_ON_LINKS, HANDOFFS_ON_LINKS):
        return "offloading"
    if gpu_batch_size is not None and gpu_batch_size < step_seqs:
        return "offloading with several GPU batches per step"
    return None


class OffloadFastEngine(FastEngine):
    """A :class:`FastEngine` whose steps run through its offload executor (in closed form, or
    event by event with a prefix cache, swaps or KV hand-offs: see the module docstring)."""

    def _loop(self):  # type: ignore[no-untyped-def]
        """:meth:`FastEngine._loop` with each step (one iteration) timed by the executor, as
        :meth:`Engine._wait_fetch` runs an offloaded step: the compute seconds are the
        executor's, and no clock moves without an event. As the reference's, a step waits for
        the swaps its decision started before it runs and for the prefix fetches its
        admissions started while it runs, and an empty step waits for the transfers in flight."""
        env = self.env
        fast_step = self.policy.fast_step  # type: ignore[attr-defined]
        cost = self.cost
        ex = self.offload
        gpus = self.cfg.num_gpus
        stage_busy = self.stage_busy
        first = 0.0
        while True:
            if not self.running and not self.waiting and not self.swapped:
                yield from self._idle_wait()
            pre, q, nb = fast_step(self)
            if not pre and not nb:
                if self._reject_never_fitting():
                    continue
                yield from self._wait_empty_step()
                continue
            if self.pending_swap:
                yield env.all_of(self.pending_swap)
                self.pending_swap = []
            start = env._now
            if pre:
                kv_pre, rows, dec_sum, longest = self._mixed_gather(pre, q, nb)
                if cost.tp > 1:
                    self.stage_comm[0] += cost.comm_time(int(sum(q)) + nb)
                qa, ctx = stand_in_step(q, kv_pre, nb, dec_sum, longest)
            else:
                # FastEngine._decode_begin of one step: the decode set's context sum and longest
                # context, its blocks for one more token, the replica-wide step time (the first
                # inter-token gap is measured against it)
                dec_sum, longest = self._decode_shape(nb)
                if self._Xa < self._D + 1:
                    self._alloc_to(self._D + 1)
                one = cost.decode_step_times(nb, float(dec_sum), 1, float(longest))
                first = one[1][0] if one is not None else float(cost.decode_steps(nb, float(dec_sum), 1, float(longest))[0])
                if cost.tp > 1:
                    self.stage_comm[0] += cost.comm_time(nb) * 1
                self._run = (nb, 1, None, first)
                qa = np.ones(nb, dtype=np.int64)
                ctx = stand_in_contexts(nb, dec_sum, longest)
                rows = nb
            busy0 = ex.busy_compute
            compute = env.process(self._offloaded([(qa, ctx, rows)]))
            if self.pending_fetch:
                pending, self.pending_fetch = self.pending_fetch, []
                yield env.all_of([compute, *pending])
            else:
                yield compute
            took = ex.busy_compute - busy0
            self.busy_time += took
            self.busy_gpu_s += took * gpus
            stage_busy[0] += took
            if pre:
                self._mixed_end(start, pre, q, nb)
            else:
                self._decode_end(start, first)
