"""The fast engine on offloaded plans: :class:`FastEngine`'s decisions and running totals, each
step timed by the offload executor, in closed form (engine/offload_fast.py) or event by event.

An offloaded step runs one iteration (the reference engine's decode runs are one step long
when a plan is offloaded: transfers contend). :class:`OffloadFastEngine` takes the policy's
decision through its ``fast_step`` hook, keeps the decode set as running totals, and hands the
step to the executor as the reference engine does (``Engine._offloaded`` in a SimPy process,
so the events are the same). The decoding requests' contexts it hands over are stand-ins of
the same count, sum and maximum (:func:`stand_in_step`), which is all the step's cost reads of
them (``IterationModel.split_layers``'s attention, the executor's per-GPU-batch attention, KV
bytes and dequantisation, ``IterationModel.decode_context``) when the step is one GPU batch of a
model without a sliding window and no KV spills; otherwise (several GPU batches: the executor
splits the sequences into consecutive GPU batches of ``gpu_batch_size``, each priced on its own
contexts; a sliding window: each sequence attends at most the window; a KV spill tier: each
sequence's positions past the threshold are read and written there) the real contexts, in the
reference's order (:meth:`OffloadFastEngine._real_contexts`). The executor is the reference's
own, so every plan the fast path otherwise covers runs here, whether its steps run in closed
form or event by event (activations off the GPU outside FlexGen's zig-zag block schedule, a
host CPU shared by replicas, links shared with the replica's prefix fetches, swaps or KV
hand-offs), and a step waits for the fetches and swaps as the reference's steps do.
"""

from __future__ import annotations

import numpy as np

from simkit.engine.fast import FastEngine, stand_in_contexts, stand_in_step


class OffloadFastEngine(FastEngine):
    """A :class:`FastEngine` whose steps run through its offload executor (in closed form, or
    event by event: see the module docstring)."""

    def _init_state(self) -> None:
        super()._init_state()
        self._batch_rows: int | None = 0 if self._window or self._spill else self.offload.gpu_batch_size
        """The most sequences a step may hold to be priced on stand-in contexts (one GPU batch;
        None: any number); 0 for a sliding-window model (each sequence attends at most the
        window) or a KV spill tier (each sequence's positions past the threshold are read and
        written where they live): always the real contexts."""

    def _real_contexts(self) -> np.ndarray:
        """The decoding requests' contexts in the reference's order: the running set's (admission
        order, as the reference's ``running`` list and so its ``decode_ready``), those decoding."""
        info = self._info
        clock = self._D
        ctx = np.fromiter((info[i][0] for i in self.running if i in info), dtype=np.int64, count=len(info))
        ctx += clock
        return ctx

    def _step_arrays(self, q: np.ndarray, ctx: np.ndarray, nb: int) -> np.ndarray:
        """``ctx`` (a step's contexts, its ``nb`` decodes' stand-ins last) with the decodes' real
        contexts where the step's cost reads more of them than their count, sum and maximum."""
        most = self._batch_rows
        if nb and most is not None and len(q) > most:
            ctx = ctx.copy()
            ctx[len(q) - nb :] = self._real_contexts()
        return ctx

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
                ctx = self._step_arrays(qa, ctx, nb)
            else:
                # FastEngine._decode_begin of one step: the decode set's context sum and longest
                # context, its blocks for one more token, the replica-wide step time (the first
                # inter-token gap is measured against it)
                dec_sum, longest = self._decode_shape(nb)
                if self._Xa < self._D + 1:
                    self._alloc_to(self._D + 1)
                one = cost.decode_step_times(nb, float(dec_sum), 1, float(longest))
                first = one[1][0] if one is not None else float(cost.decode_steps(nb, float(dec_sum), 1, float(longest), self._contexts())[0])
                if cost.tp > 1:
                    self.stage_comm[0] += cost.comm_time(nb) * 1
                self._run = (nb, 1, None, first)
                qa = np.ones(nb, dtype=np.int64)
                ctx = self._step_arrays(qa, stand_in_contexts(nb, dec_sum, longest), nb)
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
