"""The contract between the engine and batching policies.

A policy looks at a replica (its waiting, swapped and running requests, KV blocks) and returns
the next :class:`Step`: which requests prefill how many tokens, and which decode. It may admit
requests through ``replica.admit(i)`` (which allocates their KV blocks and returns False when
they do not fit). The engine executes the step, charges its time, and fast-forwards runs of
identical decode steps when the policy allows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from simkit.engine.engine import Engine


@dataclass
class Step:
    prefill_ids: list[int] = field(default_factory=list)
    prefill_q: list[int] = field(default_factory=list)
    """New tokens each prefilling request computes this step (a chunk or its whole remainder)."""
    decode_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    @property
    def empty(self) -> bool:
        return not self.prefill_ids and len(self.decode_ids) == 0


class BatchingPolicy(Protocol):
    name: str
    admits_on_arrival: bool
    """Whether an arrival can join the running batch (continuous policies) or waits for the
    batch to drain (static). The engine stops fast-forwarding at arrivals only when True."""

    def next_step(self, replica: Engine) -> Step:
        ...
