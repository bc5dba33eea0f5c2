"""Batching and scheduling policies (one class each, registered in BATCHING_POLICIES).

- ``static``: FlexGen-style throughput batching. When the replica is empty, take up to
  ``batch_size`` waiting requests whose whole KV (prompt + output) fits, prefill them in one
  iteration, then decode until every one of them has finished. Arrivals wait for the batch.
- ``continuous``: vLLM-style iteration-level batching, prefill first. Each iteration either
  prefills newly admitted requests (as many whole prompts as fit in ``max_num_batched_tokens``
  and ``max_num_seqs``, FCFS) or, if none can be admitted, decodes every running request.
- ``chunked_prefill``: Sarathi-Serve-style. Each iteration has a token budget of
  ``min(chunk_size, max_num_batched_tokens)``: every running decode takes one token, and the rest
  goes to prefill chunks (the oldest partially-prefilled request first, then new admissions).
  The budget must be >= ``max_num_seqs`` (checked when the scenario is simulated, as vLLM
  does), so decodes alone never exceed it and no iteration runs more tokens than the budget.
- ``disaggregated``: prefill and decode on separate replicas (see engine/cluster.py); the prefill
  replicas run ``prefill_only`` and decode replicas run ``continuous`` over requests whose KV
  arrives over the configured link. A hand-off cuts short the decode replica's fast-forwarded
  run (``Process.interrupt``) and joins the decode batch at the next iteration, as a decode
  (its KV is complete: no prefill iteration, no stall of the other decodes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from simkit.engine.interfaces import Step

if TYPE_CHECKING:
    from simkit.engine.engine import Engine


class StaticBatching:
    name = "static"
    admits_on_arrival = False

    def __init__(self, max_num_seqs: int, batch_size: int | None, **_: object) -> None:
        self.batch_size = batch_size or max_num_seqs

    def next_step(self, r: Engine) -> Step:
        t = r.table
        if not r.running:
            while r.waiting and len(r.running) < self.batch_size:
                i = r.waiting[0]
                if not r.admit(i, reserve_tokens=int(t.input[i] + t.output[i])):
                    break
                r.waiting.popleft()
            if not r.running:
                return Step()
        pre = [i for i in r.running if t.kv_len[i] < t.target[i]]
        if pre:
            return Step(pre, [int(t.target[i] - t.kv_len[i]) for i in pre])
        return Step(decode_ids=np.fromiter(r.running, dtype=np.int64, count=len(r.running)))


class ContinuousBatching:
    name = "continuous"
    admits_on_arrival = True

    def __init__(self, max_num_seqs: int, max_num_batched_tokens: int, **_: object) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_tokens = max_num_batched_tokens

    def next_step(self, r: Engine) -> Step:
        t = r.table
        r.swap_in_ready()
        pre: list[int] = []
        q: list[int] = []
        budget = self.max_tokens
        if not r.swapped:
            while r.waiting and len(r.running) < self.max_num_seqs:
                i = r.waiting[0]
                need = int(t.target[i] - t.kv_len[i])
                if need > budget and pre:
                    break
                if not r.admit(i):
                    break
                r.waiting.popleft()
                need = int(t.target[i] - t.kv_len[i])
                if need <= 0:
                    # its KV is all here (a disaggregated hand-off): it joins the decodes
                    continue
                pre.append(i)
                q.append(need)
                budget -= need
                if budget <= 0:
                    break
        if pre:
            return Step(pre, q)
        return Step(decode_ids=r.decode_ready(reserve=False))


class ChunkedPrefill:
    name = "chunked_prefill"
    admits_on_arrival = True

    def __init__(self, max_num_seqs: int, max_num_batched_tokens: int, chunk_size: int, **_: object) -> None:
        self.max_num_seqs = max_num_seqs
        self.budget = min(chunk_size, max_num_batched_tokens)

    def next_step(self, r: Engine) -> Step:
        t = r.table
        r.swap_in_ready()
        dec = r.decode_ready()
        budget = self.budget - len(dec)
        pre: list[int] = []
        q: list[int] = []
        # requests already admitted but not fully prefilled go first
        for i in r.prefilling:
            if budget <= 0:
                break
            rem = int(t.target[i] - t.kv_len[i])
            if rem > 0:
                c = min(rem, budget)
                pre.append(i)
                q.append(c)
                budget -= c
        while budget > 0 and r.waiting and not r.swapped and len(r.running) < self.max_num_seqs:
            i = r.waiting[0]
            if not r.admit(i):
                break
            r.waiting.popleft()
            rem = int(t.target[i] - t.kv_len[i])
            c = min(rem, budget)
            pre.append(i)
            q.append(c)
            budget -= c
        return Step(pre, q, dec)


class PrefillOnly(ContinuousBatching):
    """The prefill side of a disaggregated deployment: prefills whole prompts, never decodes
    (requests leave after their first token, their KV sent to a decode replica)."""

    name = "prefill_only"

    def next_step(self, r: Engine) -> Step:
        s = super().next_step(r)
        return Step(s.prefill_ids, s.prefill_q)


BATCHING_POLICIES: dict[str, type] = {
    "static": StaticBatching,
    "continuous": ContinuousBatching,
    "chunked_prefill": ChunkedPrefill,
    "prefill_only": PrefillOnly,
    # "disaggregated" is a deployment shape (deployment.py, engine/cluster.py), built from prefill_only + continuous
}
