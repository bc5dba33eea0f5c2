"""The run loop of a deployment: one SimPy world in which an arrival process admits or rejects
each request (context, KV capacity, token budget), a router sends it to a replica, prefill
replicas hand their KV to decode replicas over a link (disaggregated serving), and a tracer
records a Chrome trace. The replicas and their engines are built into the cluster's world by
:mod:`simkit.deployment`; :meth:`Cluster.run` runs until every request is done."""

from __future__ import annotations

import heapq
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from simkit.engine.engine import IterationLog
from simkit.engine.fast import FastEngine
from simkit.engine.lean import run_fused
from simkit.engine.replica import Replica
from simkit.engine.resources import settle_clock
from simkit.engine.state import REJECT_REASONS, RequestTable, TBTHistogram

if TYPE_CHECKING:
    import simpy

    from simkit.engine.clock import PlainClock


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

    def kv_need(self, total_tokens: np.ndarray) -> np.ndarray:
        """Tokens of KV each request holds at most (its whole context, or the window)."""
        return total_tokens if self.kv_cap_tokens is None else np.minimum(total_tokens, self.kv_cap_tokens)

    def rejections(self, input_tokens: np.ndarray, output_tokens: np.ndarray, kv_capacity_tokens: int) -> np.ndarray:
        """Every request's reject reason (an index into ``REJECT_REASONS``; 0: admitted), given
        the KV capacity in tokens of the largest replica: the one home of these rules, for the
        run and the plan search's screening."""
        total = np.asarray(input_tokens, dtype=np.int64) + np.asarray(output_tokens, dtype=np.int64)
        code = np.zeros(len(total), dtype=np.int64)
        # later assignments take precedence: context, then KV capacity, then the token budget
        if self.prompt_budget is not None:
            code[np.asarray(input_tokens) > self.prompt_budget] = REJECT_REASONS.index("prompt_exceeds_token_budget")
        code[self.kv_need(total) > kv_capacity_tokens] = REJECT_REASONS.index("exceeds_kv_capacity")
        code[total > self.max_context] = REJECT_REASONS.index("exceeds_max_context")
        return code


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



def _simpy_environment() -> simpy.Environment:
    import simpy  # imported only by a world that runs SimPy's loop (engine/clock.py)

    return simpy.Environment()


class Cluster:
    """One SimPy world serving ``table``'s requests: build replicas into it (``env``, ``tbt``,
    ``log``, ``tracer``, :meth:`next_arrival` and :meth:`on_prefilled` are what engines are
    built with), :meth:`serve` them, then :meth:`run`."""

    def __init__(self, table: RequestTable, record_iterations: bool, trace: bool, clock: PlainClock | None = None) -> None:
        # ``clock``: a fused-loop world's (engine/clock.py), which SimPy's loop never runs
        self.env: simpy.Environment | PlainClock = clock if clock is not None else _simpy_environment()
        self.table = table
        self.tbt = TBTHistogram()
        self.log = IterationLog(record_iterations)
        self.tracer = Tracer() if trace else None
        self.record_iterations = record_iterations
        self._arrivals = table.arrival
        self._order = np.argsort(self._arrivals, kind="stable")
        self._next = float(self._arrivals[self._order[0]]) if len(self._order) else float("inf")
        """The arrival time of the next request not yet arrived (inf when none is left)."""
        self.replicas: list[Replica] = []
        self._front: list[Replica] = []
        self._front_caps: list[int] = []
        self._router: Router | None = None
        self._admission: Admission | None = None
        self._handoff: HandOff | None = None

    def next_arrival(self) -> float:
        """The arrival time of the next request not yet arrived (inf when none is left)."""
        return self._next

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
        self.replicas[src].sending += 1
        self.env.process(self._ship_kv(i, src))

    def _ship_kv(self, i: int, src: int) -> Generator[Any, Any, None]:
        h = self._handoff
        assert h is not None
        table, replicas = self.table, self.replicas
        nbytes = float(table.kv_len[i]) * h.kv_bytes_per_token_per_gpu * h.gpus
        link = replicas[src].links[h.link]
        yield link.transfer(nbytes, f"kv r{src}->decode")
        replicas[src].sending -= 1
        replicas[src].release_after_transfer(i)
        dec = replicas[h.prefill_replicas:]
        k = h.router.choose(i, dec)
        table.target[i] = table.kv_len[i]
        table.handoff[i] = self.env.now
        dec[k].hand_off(i)

    def _arrivals_setup(self) -> None:
        """Ready :meth:`_arrive` (the front door's verdicts and KV needs of every request)."""
        table, adm, front_caps = self.table, self._admission, self._front_caps
        assert adm is not None and self._router is not None
        self._least_cap = min(front_caps)
        self._codes = adm.rejections(table.input, table.output, max(front_caps))
        self._need = adm.kv_need(table.input + table.output)

    def _arrive(self, i: int, code: int, kv_need: int) -> bool:
        """Request ``i`` arrives now (``code``, ``kv_need``: its entries of the front door's
        verdicts and KV needs): the front door rejects it (False) or the router queues it at a
        front replica (True)."""
        if code:
            self.table.reject(i, REJECT_REASONS[code])
            return False
        front, router = self._front, self._router
        fits = front if kv_need <= self._least_cap else [g for g, c in zip(front, self._front_caps, strict=True) if c >= kv_need]
        fits[router.choose(i, fits)].enqueue(i)  # type: ignore[union-attr]
        return True

    def _arrival_process(self) -> Generator[Any, Any, None]:
        env, arrivals, order = self.env, self._arrivals, self._order
        self._arrivals_setup()
        n = len(order)
        for k in range(n):
            i = int(order[k])
            dt = arrivals[i] - env.now
            if dt > 0:
                yield env.timeout(dt)
            self._next = float(arrivals[order[k + 1]]) if k + 1 < n else float("inf")
            self._arrive(i, int(self._codes[i]), int(self._need[i]))

    def run(self, fused: bool = False) -> str | None:
        """Run until every request has finished or been rejected; fast engines write their
        running totals back to the request table. ``fused``: run the fast engines (one per
        replica) in the fused loop (engine/lean.py, within its domain: the deployment
        decides); returns None, or why the fused loop stopped (the run then stepped)."""
        engines = [e for g in self.replicas for e in g.engines]
        world = None
        stopped = None
        if self.record_iterations:
            for g in self.replicas:
                for link in g.links.values():
                    link.busy_log = []
        if (self._handoff is None and all(len(g.engines) == 1 for g in self.replicas)
                and all(isinstance(e, FastEngine) and e.offload is None and not e.uses_links for e in engines)):  # fmt: skip
            if fused and self.tracer is None:
                stopped = run_fused(engines, self)  # type: ignore[arg-type]
                if stopped is None:
                    return None
            # fast engines and the arrivals only (their plans move nothing over links: no prefix
            # cache, swap, hand-off, offload or pipeline; an offloaded step is a SimPy process):
            # SimPy's loop on a plain heap; with a prefix cache or swaps, data crosses the links,
            # SimPy resources: SimPy's loop
            world = FastWorld(self, engines)  # type: ignore[arg-type]
        else:
            self.env.process(self._arrival_process())
        if world is not None:
            world.run()
        else:
            self.env.run()
            settle_clock(self.env, (link for g in self.replicas for link in g.links.values()))
        for g in self.replicas:
            for e in g.engines:
                if isinstance(e, FastEngine):
                    e.sync()
        return stopped


class FastWorld:
    """The event loop of a world whose processes are the arrival process and fast engines only
    (one per replica, no hand-off: disaggregated serving's KV transfers are SimPy events on the
    links, so it runs in SimPy's loop): SimPy's scheduling reproduced on a plain heap, with the
    arrival process run as plain calls (no generator, no event object per arrival) and each
    engine's loop resumed directly (``FastEngine.world``).

    SimPy fires events in the order (time, priority, scheduling order); here each wait the
    arrival process or an engine schedules is a heap entry ``(time, priority, ticket, who)``
    with tickets from one counter, taken where SimPy would create the event: the processes'
    start at time 0 (urgent, engines in the order they were built, then the arrival process),
    an engine's step (a timeout), an idle engine's wake-up (taken while the arrival process
    queues a request for it, before that process's next wait), the arrival process's wait for its
    next arrival. A step with nothing scheduled before its end moves the clock without an entry
    (the engine's ``_advance``), as it takes no event under SimPy. The arrivals are handled by
    the same code (:meth:`Cluster._arrive`) at the same simulated times, and ``env.now`` is what
    SimPy's clock would be at each point, so runs are the same bit for bit (tested against the
    reference, with arrivals exactly at step ends and several at one instant)."""

    URGENT, NORMAL = 0, 1

    CHUNK = 4096

    def __init__(self, cluster: Cluster, engines: list[FastEngine]) -> None:
        if any(e.cfg.role != "both" for e in engines):
            raise AssertionError("FastWorld runs no disaggregated serving (its hand-offs are SimPy processes)")
        self.cluster = cluster
        self.env = cluster.env
        cluster._arrivals_setup()
        self.n = len(cluster._order)
        self.k = 0
        """The next arrival to handle (an index into ``cluster._order``)."""
        self._tickets = 0
        self.heap: list[tuple[float, int, int, int]] = []
        """Scheduled waits: (time, priority, ticket, engine index, or -1 for the arrivals)."""
        self.loops = [e._loop() for e in engines]
        """The engines' loops (generators), resumed by :meth:`run` (the SimPy processes the
        engines created are never started: nothing runs ``env.run()``)."""
        for w, e in enumerate(engines):
            e.world = self
            e.world_index = w
            self.push(self.env.now, w, self.URGENT)
        self.push(self.env.now, -1, self.URGENT)
        self._started = False
        self._c0 = 0
        self._at_c: list[float] = []
        self._ids_c: list[int] = []
        self._codes_c: list[int] = []
        self._need_c: list[int] = []
        """Arrival times, request ids, front-door verdicts and KV needs of arrivals ``_c0`` ... as
        Python numbers, a chunk at a time (the same values, read without a numpy scalar per
        arrival)."""
        self._load(0)

    def push(self, time: float, who: int, priority: int = 1) -> None:
        """Schedule ``who`` (an engine's index, -1: the arrivals) to resume at ``time``."""
        self._tickets += 1
        heapq.heappush(self.heap, (time, priority, self._tickets, who))

    def peek(self) -> float:
        """The time of the next scheduled wait (inf when none), as ``env.peek()``."""
        return self.heap[0][0] if self.heap else float("inf")

    def run(self) -> None:
        """Resume the earliest scheduled wait until none is left (``env.run()``)."""
        heap, env, loops = self.heap, self.env, self.loops
        pop = heapq.heappop
        while heap:
            time, _, _, who = pop(heap)
            env._now = time  # SimPy's clock (no public setter), as a firing event sets it
            if who < 0:
                self._arrivals()
            else:
                next(loops[who])

    def _load(self, k: int) -> None:
        """Make arrivals ``k`` ... (and the one after the chunk, for :attr:`Cluster._next`) the
        current chunk."""
        self._c0 = k
        cl = self.cluster
        ids = cl._order[k : k + self.CHUNK + 1]
        self._at_c = cl._arrivals[ids].tolist() + [float("inf")]
        ids = ids[: self.CHUNK]
        self._ids_c = ids.tolist()
        self._codes_c = cl._codes[ids].tolist()
        self._need_c = cl._need[ids].tolist()

    def _arrivals(self) -> None:
        """A resume of :meth:`Cluster._arrival_process` at ``env.now``: handle the arrival its
        wait was for and every later one already due, then wait for the next."""
        now = self.env._now
        n, cl = self.n, self.cluster
        k = self.k
        if self._started:
            j = k - self._c0
            cl._next = self._at_c[j + 1]
            cl._arrive(self._ids_c[j], self._codes_c[j], self._need_c[j])
            k += 1
        self._started = True
        while k < n:
            j = k - self._c0
            if j >= self.CHUNK:
                self._load(k)
                j = 0
            dt = self._at_c[j] - now
            if dt > 0:
                self.k = k
                # as SimPy schedules the timeout: the clock plus (a numpy arrival time minus the
                # clock), a numpy float, which the clock then is (the same value and type)
                self.push(np.float64(now + dt), -1)
                return
            cl._next = self._at_c[j + 1]
            cl._arrive(self._ids_c[j], self._codes_c[j], self._need_c[j])
            k += 1
        self.k = n
