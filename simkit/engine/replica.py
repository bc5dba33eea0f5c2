"""A replica: the unit the router sees. One engine serves it, or ``pp`` virtual engines
(pipeline parallelism) that share its queue, swapped list, KV blocks and stage streams."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from simkit.engine.resources import Link

if TYPE_CHECKING:
    from simkit.engine.engine import Engine


class Replica:
    """The unit the router sees: one replica, run by one engine, or by ``pp`` virtual engines
    (pipeline parallelism, vLLM style) that share its queue, KV blocks and stage streams, so
    that several micro-batches are in flight in the pipeline at once."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.engines: list[Engine] = []
        self.waiting: deque[int] = deque()
        self.swapped: deque[int] = deque()
        self.sending = 0
        """Requests whose KV this replica still holds while it crosses the link to a decode
        replica (disaggregated serving): their blocks are freed when the transfer ends."""

    @property
    def outstanding(self) -> int:
        return sum(e.outstanding for e in self.engines)

    def enqueue(self, i: int) -> None:
        e0 = self.engines[0]
        e0.table.replica[i] = self.index
        e0.outstanding += 1
        self.waiting.append(i)
        self.wake_all()

    def wake_all(self) -> None:
        for e in self.engines:
            e.wake()

    def hand_off(self, i: int) -> None:
        """A request whose KV arrived from a prefill replica (disaggregated serving): queue it
        and cut short any fast-forwarded decode run, so that it joins the batch at the next
        iteration (as vLLM/DistServe schedule it), not when the run would have ended."""
        self.enqueue(i)
        for e in self.engines:
            e.cut_fast_forward()

    def busy(self) -> bool:
        """Whether something here will free blocks or run: a running or swapped request, or KV
        being sent to a decode replica."""
        return any(e.running for e in self.engines) or bool(self.swapped) or self.sending > 0

    def prefix_match_len(self, i: int) -> int:
        return self.engines[0].prefix_match_len(i)

    def release_after_transfer(self, i: int) -> None:
        self.engines[0].release_after_transfer(i)
        self.wake_all()

    @property
    def links(self) -> dict[str, Link]:
        return self.engines[0].links
