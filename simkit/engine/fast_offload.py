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
KV spills. The deployment uses it where the fast path covers the plan, the offloaded steps run
in closed form and no step can hold more sequences than ``gpu_batch_size``
(``fast_offload_reason``); elsewhere an offloaded plan runs on the reference engine.
"""

from __future__ import annotations

import numpy as np

from simkit.engine.fast import FastEngine, stand_in_contexts, stand_in_step


def fast_offload_reason(closed_form: bool, gpu_batch_size: int | None, max_num_seqs: int) -> str | None:
    """None when :class:`OffloadFastEngine` runs an offloaded plan the fast path otherwise
    covers, else why the reference engine does (``offloading`` where the steps run event by
    event: the engine path names why they do)."""
    if not closed_form:
        return "offloading"
    if gpu_batch_size is not None and gpu_batch_size < max_num_seqs:
        return "offloading with several GPU batches per step"
    return None


class OffloadFastEngine(FastEngine):
    """A :class:`FastEngine` whose steps run through its offload executor's closed form (see
    the module docstring)."""

    def _loop(self):  # type: ignore[no-untyped-def]
        """:meth:`FastEngine._loop` with each step (one iteration) timed by the executor, as
        :meth:`Engine._wait_fetch` runs an offloaded step: the compute seconds are the
        executor's, and no clock moves without an event."""
        env = self.env
        fast_step = self.policy.fast_step  # type: ignore[attr-defined]
        cost = self.cost
        ex = self.offload
        gpus = self.cfg.num_gpus
        stage_busy = self.stage_busy
        first = 0.0
        while True:
            if not self.running and not self.waiting:
                yield from self._idle_wait()
            pre, q, nb = fast_step(self)
            start = env._now
            if pre:
                kv_pre, rows, dec_sum, longest = self._mixed_gather(pre, q, nb)
                if cost.tp > 1:
                    self.stage_comm[0] += cost.comm_time(int(sum(q)) + nb)
                qa, ctx = stand_in_step(q, kv_pre, nb, dec_sum, longest)
            elif nb:
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
            else:
                if self._reject_never_fitting():
                    continue
                yield from self._idle_wait()
                continue
            busy0 = ex.busy_compute
            yield env.process(self._offloaded([(qa, ctx, rows)]))
            took = ex.busy_compute - busy0
            self.busy_time += took
            self.busy_gpu_s += took * gpus
            stage_busy[0] += took
            if pre:
                self._mixed_end(start, pre, q, nb)
            else:
                self._decode_end(start, first)
