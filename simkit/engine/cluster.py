"""The run loop of a deployment: one SimPy world in which an arrival process admits or rejects
each request (context, KV capacity, token budget), a router sends it to a replica, prefill
replicas hand their KV to decode replicas over a link (disaggregated serving), and a tracer
records a Chrome trace. The replicas and their engines are built into the cluster's world by
:mod:`simkit.deployment`; :meth:`Cluster.run` runs until every request is done."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import simpy

from simkit.engine.engine import IterationLog
from simkit.engine.fast import FastEngine
from simkit.engine.replica import Replica
from simkit.engine.state import RequestTable, TBTHistogram


class Router(Protocol):
    """A routing policy (policies/routing.py): the replica of ``replicas`` request ``i`` goes to."""

    def choose(self, i: int, replicas: Sequence[Replica]) -> int: ...


@dataclass(frozen=True)
class Admission:
    """What the front door refuses (``table.reject`` reasons, docs/metrics.md): a request longer
    than ``max_context``; one whose KV (capped at ``kv_cap_tokens`` for a sliding window) no
    replica holds; with ``prompt_budget`` set, a prompt beyond one iteration's token budget."""

    max_context: int
    kv_cap_tokens: int | None
    prompt_budget: int | None


@dataclass(frozen=True)
class HandOff:
    """Disaggregated serving: the first ``prefill_replicas`` replicas prefill, then ship each
    request's KV (``kv_bytes_per_token_per_gpu`` x ``gpus`` bytes per token) over their ``link``
    to the decode replica ``router`` picks."""

    prefill_replicas: int
    link: str
    kv_bytes_per_token_per_gpu: float
    gpus: int
    router: Router


class Tracer:
    """Chrome-trace events of compute steps and pipeline stages (links add their own intervals)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def stage(self, replica: int, stage: int, engine: int, start: float, end: float) -> None:
        self.events.append(
            {"name": f"micro-batch {engine}", "ph": "X", "pid": replica, "tid": f"stage {stage} compute",
             "ts": start * 1e6, "dur": (end - start) * 1e6, "args": {"engine": engine}}
        )

    def step(self, replica: int, start: float, end: float, prefill_tokens: int, decode: int, steps: int = 1) -> None:
        name = "prefill+decode" if prefill_tokens and decode else ("prefill" if prefill_tokens else "decode")
        self.events.append(
            {
                "name": name if steps == 1 else f"decode x{steps}",
                "ph": "X",
                "pid": replica,
                "tid": "compute",
                "ts": start * 1e6,
                "dur": (end - start) * 1e6,
                "args": {"prefill_tokens": prefill_tokens, "decode_seqs": decode, "steps": steps},
            }
        )



class Cluster:
    """One SimPy world serving ``table``'s requests: build replicas into it (``env``, ``tbt``,
    ``log``, ``tracer``, :meth:`next_arrival` and :meth:`on_prefilled` are what engines are
    built with), :meth:`serve` them, then :meth:`run`."""

    def __init__(self, table: RequestTable, record_iterations: bool, trace: bool) -> None:
        self.env = simpy.Environment()
        self.table = table
        self.tbt = TBTHistogram()
        self.log = IterationLog(record_iterations)
        self.tracer = Tracer() if trace else None
        self.record_iterations = record_iterations
        self._arrivals = table.arrival
        self._order = np.argsort(self._arrivals, kind="stable")
        self._ptr = 0
        self.replicas: list[Replica] = []
        self._front: list[Replica] = []
        self._front_caps: list[int] = []
        self._router: Router | None = None
        self._admission: Admission | None = None
        self._handoff: HandOff | None = None

    def next_arrival(self) -> float:
        """The arrival time of the next request not yet arrived (inf when none is left)."""
        k = self._ptr
        return float(self._arrivals[self._order[k]]) if k < len(self._order) else float("inf")

    def serve(
        self, replicas: list[Replica], front_caps: list[int], router: Router, admission: Admission, handoff: HandOff | None
    ) -> None:
        """Serve with ``replicas``: arrivals go to the front ones (the prefill replicas with
        ``handoff``, else all), of KV capacity ``front_caps`` tokens each."""
        self.replicas = replicas
        self._front = replicas[: handoff.prefill_replicas] if handoff is not None else replicas
        self._front_caps = front_caps
        self._router = router
        self._admission = admission
        self._handoff = handoff

    def on_prefilled(self, i: int, src: int) -> None:
        """A prefill replica finished request ``i``'s prompt: ship its KV (disaggregated serving)."""
        self.env.process(self._ship_kv(i, src))

    def _ship_kv(self, i: int, src: int) -> Generator[Any, Any, None]:
        h = self._handoff
        assert h is not None
        table, replicas = self.table, self.replicas
        nbytes = float(table.kv_len[i]) * h.kv_bytes_per_token_per_gpu * h.gpus
        link = replicas[src].links[h.link]
        yield link.transfer(nbytes, f"kv r{src}->decode")
        replicas[src].release_after_transfer(i)
        dec = replicas[h.prefill_replicas:]
        k = h.router.choose(i, dec)
        table.target[i] = table.kv_len[i]
        table.handoff[i] = self.env.now
        dec[k].hand_off(i)

    def _arrival_process(self) -> Generator[Any, Any, None]:
        env, table, arrivals, order = self.env, self.table, self._arrivals, self._order
        adm, router, front, front_caps = self._admission, self._router, self._front, self._front_caps
        assert adm is not None and router is not None
        most_cap, least_cap = max(front_caps), min(front_caps)
        max_ctx, kv_cap, budget = adm.max_context, adm.kv_cap_tokens, adm.prompt_budget
        for k in range(len(order)):
            i = int(order[k])
            dt = arrivals[i] - env.now
            if dt > 0:
                yield env.timeout(dt)
            self._ptr = k + 1
            total = int(table.input[i] + table.output[i])
            reason = None
            if total > max_ctx:
                reason = "exceeds_max_context"
            elif most_cap < (kv_need := total if kv_cap is None else min(total, kv_cap)):
                reason = "exceeds_kv_capacity"
            elif budget is not None and table.input[i] > budget:
                reason = "prompt_exceeds_token_budget"
            if reason is not None:
                table.reject(i, reason)
                continue
            fits = front if kv_need <= least_cap else [g for g, c in zip(front, front_caps, strict=True) if c >= kv_need]
            fits[router.choose(i, fits)].enqueue(i)

    def run(self) -> None:
        """Run until every request has finished or been rejected; fast engines write their
        running totals back to the request table."""
        self.env.process(self._arrival_process())
        if self.record_iterations:
            for g in self.replicas:
                for link in g.links.values():
                    link.busy_log = []
        self.env.run()
        for g in self.replicas:
            for e in g.engines:
                if isinstance(e, FastEngine):
                    e.sync()
