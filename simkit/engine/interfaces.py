"""The contract between the engine and batching policies.

A policy looks at a replica (its waiting, swapped and running requests, KV blocks) and returns
the next :class:`Step`: which requests prefill how many tokens, and which decode. It may admit
requests through ``replica.admit(i)`` (which allocates their KV blocks and returns False when
they do not fit). The engine executes the step, charges its time, and fast-forwards runs of
identical decode steps when the policy allows it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from simkit.engine.state import RequestTable


@dataclass
class Step:
    prefill_ids: list[int] = field(default_factory=list)
    prefill_q: list[int] = field(default_factory=list)
    """New tokens each prefilling request computes this step (a chunk or its whole remainder)."""
    decode_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    @property
    def empty(self) -> bool:
        return not self.prefill_ids and len(self.decode_ids) == 0


class EngineView(Protocol):
    """What a batching policy sees of an engine (engine/engine.py's ``Engine`` and
    ``FastEngine`` are ones): the request table, the replica's queues, the engine's running and
    prefilling requests, and the calls that change them."""

    table: RequestTable
    waiting: deque[int]
    swapped: deque[int]
    running: list[int]
    prefilling: list[int]

    def admit(self, i: int, reserve_tokens: int | None = None) -> bool:
        """Allocate request ``i``'s KV blocks and move it to running; False when it does not fit."""
        ...

    def decode_ready(self, reserve: bool = True) -> np.ndarray:
        """The running requests ready to decode (with a block reserved for their next token)."""
        ...

    def swap_in_ready(self) -> None:
        """Swap swapped-out requests back in while their blocks fit."""
        ...


class BatchingPolicy(Protocol):
    """A batching policy's step decision (``next_step``). A policy the fast engine
    (engine/fast.py) runs also has the hook ``fast_step(replica) -> tuple[list[int], list[int],
    int]``: the same decision (the same calls on the replica, in the same order) as plain values,
    the requests to prefill, their tokens this iteration and how many running requests decode
    (the size of ``replica.decode_ready``'s set), so that no :class:`Step` and no array of decode
    ids is built per iteration. ``static``, ``continuous`` and ``chunked_prefill`` have it (and
    the prefill side of ``disaggregated``)."""

    name: str
    admits_on_arrival: bool
    """Whether an arrival can join the running batch (continuous policies) or waits for the
    batch to drain (static). The engine stops fast-forwarding at arrivals only when True."""

    def next_step(self, replica: EngineView) -> Step:
        ...

