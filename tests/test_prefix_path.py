"""Exact shortcuts of the prefix-caching path (docs/performance.md, prefix caching section).

The link's event-callback transfers against a SimPy process per transfer and per wake-up (the
implementation they replaced): on random traffic, awaited and posted, bursts at one instant,
equal sizes, latency or none, every observable is identical bit for bit: when each awaited
transfer ends and the value it reports, the order in which the waiting processes resume, the
bytes moved, busy time, busy periods, per-transfer intervals and the clock when the world ends.
The request table's remembered usable prefix hashes against computing them afresh."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from simkit.engine.resources import Link, settle_clock
from simkit.engine.state import RequestTable
from simkit.workload.base import Requests


@dataclass
class _RefFlow:
    remaining: float
    done: simpy.Event
    tag: str


class ProcessLink:
    """Processor-sharing link with one SimPy process per transfer and per wake-up (the oracle)."""

    def __init__(self, env: simpy.Environment, bandwidth: float, latency: float) -> None:
        self.env = env
        self.bandwidth = bandwidth
        self.latency = latency
        self._flows: list[_RefFlow] = []
        self._last = 0.0
        self._version = 0
        self.busy_time = 0.0
        self.bytes_moved = 0.0
        self.intervals: list[tuple[float, float, str, float]] = []
        self.busy_log: list[list[float]] = []

    def transfer(self, nbytes: float, tag: str = "") -> simpy.Event:
        done = self.env.event()
        if nbytes <= 0:
            done.succeed(0.0)
            return done
        self.env.process(self._run(float(nbytes), done, tag))
        return done

    def _run(self, nbytes: float, done: simpy.Event, tag: str):  # type: ignore[no-untyped-def]
        start = self.env.now
        if self.latency:
            yield self.env.timeout(self.latency)
        inner = self.env.event()
        self._advance()
        self._flows.append(_RefFlow(nbytes, inner, tag))
        self._reschedule()
        yield inner
        self.bytes_moved += nbytes
        self.intervals.append((start, self.env.now, tag, nbytes))
        done.succeed(self.env.now - start)

    def _advance(self) -> None:
        now = self.env.now
        dt = now - self._last
        if self._flows and dt > 0:
            share = self.bandwidth * dt / len(self._flows)
            for f in self._flows:
                f.remaining -= share
            self.busy_time += dt
            if self.busy_log and self.busy_log[-1][1] == self._last:
                self.busy_log[-1][1] = now
            else:
                self.busy_log.append([self._last, now])
        self._last = now

    def _reschedule(self) -> None:
        self._version += 1
        if not self._flows:
            return
        target = min(self._flows, key=lambda f: f.remaining)
        delay = max(target.remaining, 0.0) * len(self._flows) / self.bandwidth
        self.env.process(self._wake(delay, self._version, target))

    def _wake(self, delay: float, version: int, target: _RefFlow):  # type: ignore[no-untyped-def]
        yield self.env.timeout(delay)
        if version != self._version:
            return
        self._advance()
        slack = self.bandwidth / len(self._flows) * 1e-9
        finished = [f for f in self._flows if f is target or f.remaining <= slack]
        self._flows = [f for f in self._flows if not (f is target or f.remaining <= slack)]
        for f in finished:
            f.done.succeed()
        self._reschedule()


# one client's script: (wait before, bytes, awaited?, a burst of this many transfers at once)
_op = st.tuples(
    st.sampled_from([0.0, 0.0, 1e-4, 3e-4, 1e-3, 2.5e-3]),
    st.sampled_from([1e5, 1e5, 2.5e5, 1e6, 3e6, 0.0]),
    st.booleans(),
    st.integers(1, 4),
)


def _world(kind: str, bandwidth: float, latency: float, clients: list[list[tuple[float, float, bool, int]]]):
    env = simpy.Environment()
    link = ProcessLink(env, bandwidth, latency) if kind == "process" else Link(env, "l", bandwidth, latency)
    if kind != "process":
        link.intervals = []
        link.busy_log = []
    seen: list[tuple[str, float, object]] = []

    def client(c: int, script: list[tuple[float, float, bool, int]]):  # type: ignore[no-untyped-def]
        for k, (wait, nbytes, awaited, burst) in enumerate(script):
            if wait:
                yield env.timeout(wait)
            seen.append((f"c{c} op{k}", env.now, None))
            events = []
            for b in range(burst):
                if awaited or kind == "process":
                    ev = link.transfer(nbytes * (b + 1), f"c{c}.{k}.{b}")
                    if awaited:
                        events.append(ev)
                else:
                    link.post(nbytes * (b + 1), f"c{c}.{k}.{b}")
            for b, ev in enumerate(events):
                value = yield ev
                seen.append((f"c{c} op{k} end{b}", env.now, value))

    for c, script in enumerate(clients):
        env.process(client(c, script))
    env.run()
    if kind != "process":
        settle_clock(env, [link])  # type: ignore[list-item]
    return seen, link.bytes_moved, link.busy_time, link.busy_log, link.intervals, env.now


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([1e9, 3e9, 12.5e9]),
    st.sampled_from([0.0, 0.0, 1e-5, 2e-4]),
    st.lists(st.lists(_op, min_size=1, max_size=8), min_size=1, max_size=4),
)
def test_link_events_match_a_process_per_transfer(bandwidth: float, latency: float, clients) -> None:  # type: ignore[no-untyped-def]
    assert _world("callbacks", bandwidth, latency, clients) == _world("process", bandwidth, latency, clients)


@pytest.mark.parametrize("latency", [0.0, 2e-4])
def test_posts_of_one_instant_start_together_and_end_as_one_at_a_time(latency: float) -> None:
    """Posts of one instant on a link that only carries posts take one start event (and one
    latency timeout, one wake-up) between them, yet every observable, the clock the world ends
    at included, is that of a process per transfer; an awaited transfer ends the batching."""
    env = simpy.Environment()
    link = Link(env, "l", 1e9, latency)
    for k in range(5):
        link.post(1e5 * (k + 1))
    assert len(env._queue) == 1  # one start event for the five
    posts = [[(0.0, 1e5, False, 5), (1e-4, 2.5e5, False, 3), (0.0, 1e6, False, 4)],
             [(5e-5, 3e6, False, 2), (3e-4, 1e5, False, 4)]]  # fmt: skip
    assert _world("callbacks", 1e9, latency, posts) == _world("process", 1e9, latency, posts)
    mixed = [[(0.0, 1e5, False, 3), (1e-4, 2.5e5, True, 2), (0.0, 1e6, False, 4)]]
    assert _world("callbacks", 1e9, latency, mixed) == _world("process", 1e9, latency, mixed)
    link.transfer(1.0)
    link.post(1.0)
    link.post(1.0)
    assert link.awaited and len(env._queue) == 4  # each start on its own once a transfer was awaited


def test_posted_transfers_share_the_link() -> None:
    """A posted transfer takes its share of the bandwidth: an awaited one beside it is slower."""
    env = simpy.Environment()
    link = Link(env, "l", 1e9)
    link.post(1e9)
    done = link.transfer(1e9)
    env.run()
    assert done.value == 2.0
    assert link.bytes_moved == 2e9 and link.busy_time == 2.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 12)), min_size=1, max_size=8),
    st.lists(st.tuples(st.integers(0, 7), st.sampled_from([256, 512, 1024])), min_size=1, max_size=30),
)
def test_usable_hashes_remembered_answer_is_the_computed_one(reqs, queries) -> None:  # type: ignore[no-untyped-def]
    """``RequestTable.usable_hashes`` (remembering its last answer for the router's replica
    scan) answers every query as computing it afresh does, whatever the order of queries."""
    lens = [n for _, n in reqs]
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    hashes = np.arange(int(offsets[-1]), dtype=np.int64) * 7 + 3
    table = RequestTable(Requests(
        np.zeros(len(reqs)), np.array([p for p, _ in reqs], dtype=np.int64), np.ones(len(reqs), dtype=np.int64),
        prefix_hashes=hashes, prefix_offsets=offsets,
    ))
    for i, hash_tokens in queries:
        i %= len(reqs)
        whole = (reqs[i][0] - 1) // hash_tokens
        expected = tuple(int(h) for h in hashes[offsets[i]: offsets[i + 1]][:whole])
        assert table.usable_hashes(i, hash_tokens) == expected
