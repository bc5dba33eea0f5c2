"""The clock of a world that SimPy's event loop never runs.

A deployment on the fused loop (``Deployment.fused_loop``: continuous or chunked-prefill
batching, one fast engine per replica, nothing crossing the links, no hand-off, no trace) is run
by :func:`simkit.engine.lean.run_fused` and, where that loop stops, by
:class:`simkit.engine.cluster.FastWorld`: both keep the simulated time in ``_now`` (the
attribute they set on a SimPy ``Environment`` too) and drive the engines' loops themselves. Such
a world is built on a :class:`PlainClock` instead of an ``Environment``, so a run of it does not
import SimPy (nor, through SimPy's version look-up, ``importlib.metadata``)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any


class PlainClock:
    """What the engines of a fused-loop world read of SimPy's ``Environment``: the time
    (``now``, ``_now``: 0 at the start, an int as SimPy's ``initial_time``). An engine makes its
    SimPy process and wake-up event when it is built (:class:`simkit.engine.engine.Engine`);
    here neither is made (``process`` and ``event`` give None): only SimPy's loop would run or
    fire them, and the fused loop and ``FastWorld`` resume the engines' loops themselves."""

    __slots__ = ("_now",)

    def __init__(self) -> None:
        self._now: float = 0

    @property
    def now(self) -> float:
        return self._now

    def process(self, generator: Generator[Any, Any, Any]) -> None:
        """No process: ``generator`` (an engine's loop, not started) is never run by SimPy."""
        generator.close()

    def event(self) -> None:
        """No event: an engine's wake-up event is fired only in SimPy's loop."""
