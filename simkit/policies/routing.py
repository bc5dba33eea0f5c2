"""Routing of arriving requests across replicas (one class each, registered in ROUTING_POLICIES).

- ``round_robin``: replicas in turn.
- ``least_outstanding``: the replica with the fewest requests assigned and not yet finished
  (ties: lowest index).
- ``prefix_aware``: the replica whose prefix cache holds the longest run of the request's
  leading prefix blocks (any tier); ties broken by least outstanding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simkit.engine.replica import Replica


class RoundRobin:
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, i: int, replicas: Sequence[Replica]) -> int:
        k = self._next % len(replicas)
        self._next += 1
        return k


class LeastOutstanding:
    name = "least_outstanding"

    def choose(self, i: int, replicas: Sequence[Replica]) -> int:
        return min(range(len(replicas)), key=lambda k: (replicas[k].outstanding, k))


class PrefixAware:
    name = "prefix_aware"

    def choose(self, i: int, replicas: Sequence[Replica]) -> int:
        best = (-1, 0, 0)
        choice = 0
        for k, r in enumerate(replicas):
            hit = r.prefix_match_len(i)
            key = (hit, -r.outstanding, -k)
            if key > best:
                best, choice = key, k
        return choice


ROUTING_POLICIES: dict[str, type] = {
    "round_robin": RoundRobin,
    "least_outstanding": LeastOutstanding,
    "prefix_aware": PrefixAware,
}
