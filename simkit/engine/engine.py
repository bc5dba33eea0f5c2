"""A replica serving requests: the scheduling loop, KV accounting, fast-forwarded decoding.

The event loop sees arrivals, admissions, completions and batch-composition changes, never
operators or tokens: between two such events the decode iterations of an unchanged batch are
costed in one vectorised call (:meth:`IterationModel.decode_steps`) and the replica sleeps
until the first of (a request finishes, the KV cache needs a block it lacks, an arrival that
the policy could admit). That is exactly equivalent to stepping one iteration at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from simkit.cost.iteration import IterationModel
from simkit.engine.interfaces import BatchingPolicy, Step
from simkit.engine.kvcache import TIER_INDEX, KVBlockManager
from simkit.engine.replica import Replica
from simkit.engine.resources import Link
from simkit.engine.state import RequestTable, TBTHistogram
from simkit.specs.tiers import tier_path

if TYPE_CHECKING:
    import simpy

    from simkit.engine.pipeline_fast import PipelineSchedule


@dataclass
class EngineConfig:
    block_size: int
    kv_bytes_per_token: float
    """KV bytes per token on one GPU of the replica (after TP sharding)."""
    preemption: str = "recompute"
    swap_blocks: int = 0
    role: str = "both"
    """both, prefill (disaggregated prefill side) or decode."""
    hash_tokens: int = 512
    num_gpus: int = 1
    layerwise: bool = False
    """Execute each iteration layer by layer (one event per layer) instead of as one step."""
    spill_after: int | None = None
    """KV positions >= this live in a lower tier: they take no KV blocks here."""
    spill_capacity_tokens: float = 0.0
    """Tokens the spill tier can hold (reserved per request at admission)."""
    kv_cap_tokens: int | None = None
    """Most tokens a sequence keeps in its KV blocks (a sliding-window model: the window plus
    the block being filled, as vLLM's block manager recycles the oldest block)."""


@dataclass
class Stage:
    """One pipeline stage of a replica: its cost model, its GPUs' compute stream, and the link
    its activations cross to the next stage (None for the last)."""

    cost: IterationModel
    stream: simpy.Resource
    link_out: Link | None
    tp: int


class IterationLog:
    """Compact per-iteration table: one row per executed step or fast-forwarded run of
    identical decode steps (``steps`` > 1)."""

    COLS = ("replica", "start_s", "end_s", "steps", "prefill_tokens", "decode_seqs", "batch_size", "kv_blocks_used")

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.rows: list[tuple[Any, ...]] = []

    def add(self, *row: Any) -> None:
        if self.enabled:
            self.rows.append(row)


class Engine:
    def __init__(
        self,
        env: simpy.Environment,
        index: int,
        table: RequestTable,
        cost: IterationModel,
        policy: BatchingPolicy,
        kv: KVBlockManager,
        cfg: EngineConfig,
        tbt: TBTHistogram,
        log: IterationLog,
        next_arrival: Callable[[], float],
        links: dict[str, Link] | None = None,
        on_prefilled: Callable[[int, int], None] | None = None,
        tracer: Any = None,
        replica: Replica | None = None,
        stages: list[Stage] | None = None,
        engine_id: int = 0,
        offload: Any = None,
    ) -> None:
        self.env = env
        self.index = index
        self.table = table
        self.cost = cost
        self.policy = policy
        self.kv = kv
        self.cfg = cfg
        self.tbt = tbt
        self.log = log
        self.next_arrival = next_arrival
        self.links = links or {}
        self._demote_paths: dict[tuple[str, str], list[Link]] = {}
        """Links a prefix entry demoted from one tier to another crosses, by (from, to)."""
        self.on_prefilled = on_prefilled
        self.tracer = tracer
        self.replica = replica if replica is not None else Replica(index)
        self.replica.engines.append(self)
        self.waiting = self.replica.waiting
        self.swapped = self.replica.swapped
        self.stages = stages
        self.offload = offload
        """An OffloadExecutor when the plan streams weights/KV/activations, else None."""
        self.pipe: PipelineSchedule | None = None
        """The replica's stage schedule in closed form (engine/pipeline_fast.py), when the
        deployment chose it for a pipelined plan; None: the stages run event by event."""
        self.engine_id = engine_id
        self.stage_busy = [0.0] * (len(stages) if stages else 1)
        self.stage_comm = [0.0] * (len(stages) if stages else 1)
        self.comm_s = 0.0
        """Seconds of those spent in collectives (TP all-reduce, EP all-to-all), per GPU."""
        self.busy_gpu_s = 0.0
        """GPU-seconds of compute (seconds x GPUs computing), for utilisation and energy."""
        self.running: list[int] = []
        self.prefilling: list[int] = []
        """Running requests whose prefill is not complete, in admission order."""
        self._dec_cache: np.ndarray | None = None
        """Running requests in decode phase, valid until the running set or a prefill changes."""
        self.shared: dict[int, list[int]] = {}
        self.spill_used = 0.0
        self.spill_held: dict[int, float] = {}
        self.pending_fetch: list[simpy.Event] = []
        """Prefix-cache fetches in flight: they overlap the next step's compute (layer-pipelined)."""
        self.pending_swap: list[simpy.Event] = []
        """Swap-outs and swap-ins in flight: the next step waits for them before its forward pass
        (vLLM issues the swaps on the model's stream ahead of the forward)."""
        self.outstanding = 0
        self.busy_time = 0.0
        self.swapped_blocks = 0
        self.swap_refused: dict[str, int] = {}
        """Preemptions a swap plan recomputed instead, by reason (the summary warns about them)."""
        self.max_context = {"attn_prefill": 0, "attn_decode": 0}
        """The longest context (tokens attended by one sequence) a prefill / a decode had."""
        self._idle = True
        self._wake = env.event()
        self._fast_forward = False
        """True while a multi-step decode run may be cut short by a hand-off (Process.interrupt)."""
        self._init_state()
        self.proc = env.process(self._loop())

    def _init_state(self) -> None:
        """Hook for subclasses (the fast engine's running totals); called before the process starts."""

    # ---- queue ---------------------------------------------------------------------------------
    def enqueue(self, i: int) -> None:
        self.replica.enqueue(i)

    def wake(self) -> None:
        """Resume the loop if it waits for work (a request was queued, blocks or a KV transfer
        were freed); a no-op while it runs."""
        if self._idle and not self._wake.triggered:
            self._wake.succeed()

    def cut_fast_forward(self) -> None:
        """End a fast-forwarded decode run now (``Process.interrupt``): a request handed off to
        this replica then joins the batch at the next iteration, not when the run would end."""
        if self._fast_forward:
            self._fast_forward = False
            self.proc.interrupt("kv hand-off")

    def prefix_match_len(self, i: int) -> int:
        cache = self.kv.cache
        if cache is None:
            return 0
        return len(cache.match(self._usable_hashes(i)))

    def _usable_hashes(self, i: int) -> tuple[int, ...]:
        return self.table.usable_hashes(i, self.cfg.hash_tokens)

    # ---- admission and KV ----------------------------------------------------------------------
    def admit(self, i: int, reserve_tokens: int | None = None) -> bool:
        """Allocate KV blocks for request ``i``'s prefill (or ``reserve_tokens``), using prefix-cache
        hits; move it to running. False (and nothing changed) when it does not fit."""
        t = self.table
        kv = self.kv
        cache = kv.cache
        hashes: tuple[int, ...] = ()
        tiers: list[str] = []
        if cache is not None and t.kv_len[i] == 0 and self.cfg.role != "decode":
            hashes = self._usable_hashes(i)
            tiers = cache.match(hashes)
            hashes = hashes[: len(tiers)]
        hit_tokens = len(hashes) * self.cfg.hash_tokens
        tokens = int(reserve_tokens if reserve_tokens is not None else max(t.target[i], t.kv_len[i]) + 1)
        spill = 0.0
        if self.cfg.kv_cap_tokens is not None:
            tokens = min(tokens, self.cfg.kv_cap_tokens)
        if self.cfg.spill_after is not None:
            # the spill tier holds the request's positions beyond the threshold, reserved whole
            spill = float(max(int(t.input[i] + t.output[i]) - self.cfg.spill_after, 0))
            if self.spill_used + spill > self.cfg.spill_capacity_tokens:
                return False
            tokens = min(tokens, self.cfg.spill_after)
        if cache is None:
            need = kv.blocks_for(tokens)
            if not kv.can_admit(need) or not kv.make_room(need):
                return False
        else:
            bph = cache.blocks_per_hash
            lower = sum(1 for x in tiers if x != "hbm")
            need = kv.blocks_for(max(tokens - hit_tokens, 0)) + lower * bph
            if not kv.can_admit(need):
                return False
            # pin HBM hits and refresh lower-tier hits so that making room evicts neither
            for h, tier in zip(hashes, tiers):
                if tier == "hbm":
                    cache.pin(h)
                else:
                    cache.touch(h, tier)
            ok = kv.make_room(need)
            # making room demotes entries down the tiers and may drop the oldest: keep the
            # leading hits that are still somewhere, at the tier they are now in
            now_tiers = cache.match(hashes)
            if len(now_tiers) < len(hashes) or now_tiers != tiers:
                for h, tier in zip(hashes[len(now_tiers):], tiers[len(now_tiers):]):
                    if tier == "hbm":
                        cache.unpin(h)
                hashes, tiers = hashes[: len(now_tiers)], now_tiers
                hit_tokens = len(hashes) * self.cfg.hash_tokens
                lower = sum(1 for x in tiers if x != "hbm")
                need = kv.blocks_for(max(tokens - hit_tokens, 0)) + lower * bph
                ok = kv.make_room(need) and cache.match(hashes) == tiers
            if not ok:
                for h, tier in zip(hashes, tiers):
                    if tier == "hbm":
                        cache.unpin(h)
                return False
        priv = kv.blocks_for(max(tokens - hit_tokens, 0))
        kv.alloc(priv)
        t.blocks[i] = priv
        if spill:
            self.spill_used += spill
            self.spill_held[i] = spill
        fetched: dict[str, int] = {}
        hits = [0, 0, 0, 0]  # per TIER_INDEX (integers: one sum per tier is the same number)
        for h, tier in zip(hashes, tiers):
            if tier != "hbm":
                cache.take_from_lower(h, tier)  # type: ignore[union-attr]
                cache.insert_hbm(h, pinned=True)  # type: ignore[union-attr]
                fetched[tier] = fetched.get(tier, 0) + 1
            hits[TIER_INDEX[tier]] += 1
        for k, n in enumerate(hits):
            if n:
                t.hit_tier_tokens[i, k] += n * self.cfg.hash_tokens
        if fetched:
            self._fetch(fetched)
        self.shared[i] = list(hashes)
        t.shared_blocks[i] = len(hashes) * (cache.blocks_per_hash if cache else 0)
        t.cached[i] = hit_tokens
        if hit_tokens > t.kv_len[i]:
            t.kv_len[i] = hit_tokens
        if np.isnan(t.scheduled[i]):
            t.scheduled[i] = self.env.now
        self.running.append(i)
        if t.kv_len[i] < t.target[i]:
            self.prefilling.append(i)
        self._dec_cache = None
        return True

    def _fetch(self, fetched: dict[str, int]) -> None:
        """Bring prefix entries up from lower tiers over the links on their path."""
        per_hash = self.cfg.hash_tokens * self.cfg.kv_bytes_per_token
        for tier, n in fetched.items():
            nbytes = n * per_hash * self.cfg.num_gpus
            for link in tier_path(tier, "hbm"):
                if link in self.links:
                    self.pending_fetch.append(self.links[link].transfer(nbytes, f"prefix {tier}->hbm"))

    def demote_traffic(self, src: str, dst: str, entries: int) -> None:
        path = self._demote_paths.get((src, dst))
        if path is None:
            path = self._demote_paths[(src, dst)] = [self.links[k] for k in tier_path(src, dst) if k in self.links]
        if path:
            per_hash = self.cfg.hash_tokens * self.cfg.kv_bytes_per_token * self.cfg.num_gpus
            tag = f"prefix {src}->{dst}"
            for link in path:
                link.post(entries * per_hash, tag)

    def _publish_prefix(self, i: int) -> None:
        """After a prefill completes, its full prompt blocks become prefix-cache entries (as vLLM's
        automatic prefix caching does), pinned by this request until it finishes."""
        cache = self.kv.cache
        if cache is None or self.cfg.role == "decode":
            return
        t = self.table
        mine = self.shared.setdefault(i, [])
        bph = cache.blocks_per_hash
        blocks, shared = int(t.blocks[i]), int(t.shared_blocks[i])  # written back below
        for h in self._usable_hashes(i)[len(mine):]:
            if blocks < bph:
                break
            where = cache.where(h)
            if where == "hbm":
                cache.pin(h)  # someone published it meanwhile: share theirs, free ours
                self.kv.release(bph)
            else:
                if where is not None:
                    cache.take_from_lower(h, where)
                self.kv.used -= bph
                cache.insert_hbm(h, pinned=True)
            blocks -= bph
            shared += bph
            mine.append(h)
        t.blocks[i] = blocks
        t.shared_blocks[i] = shared

    def _release(self, i: int, finished: bool) -> None:
        t = self.table
        kv = self.kv
        cache = kv.cache
        for h in self.shared.pop(i, []):
            cache.unpin(h)  # type: ignore[union-attr]
        kv.release(int(t.blocks[i]))
        t.blocks[i] = 0
        t.shared_blocks[i] = 0
        if self.spill_held:
            self.spill_used -= self.spill_held.pop(i, 0.0)

    def _preempt_one(self) -> bool:
        """Preempt the most recently admitted running request (recompute or swap). A lone
        request is preempted only when another pipeline engine of the replica runs requests
        that hold the shared blocks (they will free them); the last request of the replica is
        never preempted."""
        if not self.running:
            return False
        if len(self.running) == 1 and not any(e.running for e in self.replica.engines if e is not self):
            return False
        i = self.running.pop()
        if i in self.prefilling:
            self.prefilling.remove(i)
        self._dec_cache = None
        t = self.table
        t.preemptions[i] += 1
        if self.cfg.preemption == "swap":
            refused = (
                "it held shared prefix-cache blocks"
                if self.shared.get(i)
                else "the swap space was full"
                if self.swapped_blocks + t.blocks[i] > self.cfg.swap_blocks
                else None
            )
            if refused is not None:
                self.swap_refused[refused] = self.swap_refused.get(refused, 0) + 1
        if self.cfg.preemption == "swap" and self.swapped_blocks + t.blocks[i] <= self.cfg.swap_blocks and not self.shared.get(i):
            nbytes = float(t.blocks[i]) * self.cfg.block_size * self.cfg.kv_bytes_per_token * self.cfg.num_gpus
            if "d2h" in self.links:
                self.pending_swap.append(self.links["d2h"].transfer(nbytes, "swap out"))
            self.swapped_blocks += int(t.blocks[i])
            self.kv.release(int(t.blocks[i]))
            t.swaps[i] += 1
            self.swapped.append(i)
            return True
        self._release(i, finished=False)
        # recompute (as vLLM): the prompt and every generated token are prefilled again, the last
        # generated one included (it is the input whose forward pass samples the next token, so
        # the completing prefill credits one new token and leaves KV = input + generated - 1
        # behind it, as decoding does)
        t.target[i] = t.input[i] + t.gen[i]
        t.kv_len[i] = 0
        t.cached[i] = 0
        self.waiting.appendleft(i)
        return True

    def swap_in_ready(self) -> None:
        """Bring swapped requests back (FCFS) while their blocks fit."""
        t = self.table
        while self.swapped:
            i = self.swapped[0]
            need = int(t.blocks[i])
            if not self.kv.can_admit(need) or not self.kv.alloc(need):
                return
            self.swapped.popleft()
            self._dec_cache = None
            if t.kv_len[i] < t.target[i]:
                self.prefilling.append(i)
            self.swapped_blocks -= need
            nbytes = float(need) * self.cfg.block_size * self.cfg.kv_bytes_per_token * self.cfg.num_gpus
            if "h2d" in self.links:
                self.pending_swap.append(self.links["h2d"].transfer(nbytes, "swap in"))
            self.running.append(i)

    def decode_ready(self, reserve: bool = True) -> np.ndarray:
        """Running requests in decode phase, each with room for its next token (preempting the
        newest requests when blocks run out). ``reserve`` allocates that room now (a policy that
        admits more requests in the same step must); otherwise the decode run allocates it."""
        t = self.table
        while True:
            dec = self._dec_cache
            if dec is None:
                ids = np.fromiter(self.running, dtype=np.int64, count=len(self.running))
                if ids.size == 0:
                    return ids
                dec = ids[t.kv_len[ids] >= t.target[ids]]
                self._dec_cache = dec
            grow = dec.size if dec.size <= self.kv.free else self._growth(dec, 1)
            if grow <= self.kv.free or self.kv.make_room(grow):
                if reserve:
                    self._grow_blocks(dec, 1)
                return dec
            if not self._preempt_one():
                raise AssertionError("a lone request cannot grow its KV cache (admission should have prevented this)")

    def _growth(self, ids: np.ndarray, steps: int) -> int:
        t = self.table
        if ids.size == 0:
            return 0
        bs = self.cfg.block_size
        have = t.blocks[ids] + t.shared_blocks[ids]
        tok = t.kv_len[ids] + steps
        if self.cfg.spill_after is not None:
            tok = np.minimum(tok, self.cfg.spill_after)
        if self.cfg.kv_cap_tokens is not None:
            tok = np.minimum(tok, self.cfg.kv_cap_tokens)
        need = -(-tok // bs)
        return int(np.maximum(need - have, 0).sum())

    def _grow_blocks(self, ids: np.ndarray, steps: int, kv: np.ndarray | None = None) -> None:
        """Allocate the blocks ``ids`` need to hold ``steps`` more tokens each (``kv``: their
        current KV lengths, if the caller has gathered them)."""
        t = self.table
        if ids.size == 0:
            return
        bs = self.cfg.block_size
        have = t.blocks[ids] + t.shared_blocks[ids]
        tok = (t.kv_len[ids] if kv is None else kv) + steps
        if self.cfg.spill_after is not None:
            tok = np.minimum(tok, self.cfg.spill_after)
        if self.cfg.kv_cap_tokens is not None:
            tok = np.minimum(tok, self.cfg.kv_cap_tokens)
        add = -(-tok // bs) - have
        np.maximum(add, 0, out=add)
        total = int(np.add.reduce(add))
        if total:
            self.kv.make_room(total)
            self.kv.alloc(total)
            t.blocks[ids] += add

    # ---- the loop ------------------------------------------------------------------------------
    def _reject_never_fitting(self) -> bool:
        """When nothing runs anywhere in the replica and nothing is being fetched or swapped, yet
        the head request cannot be admitted, it can never fit: reject it (``never_fits``) rather
        than stall forever. Returns whether it did."""
        if self.waiting and not self.replica.busy() and not self.pending_fetch and not self.pending_swap:
            self.table.reject(self.waiting.popleft(), "never_fits")
            self.outstanding -= 1
            return True
        return False

    def _loop(self):  # type: ignore[no-untyped-def]
        env = self.env
        while True:
            if not self.running and not self.waiting and not self.swapped:
                self._idle = True
                self._wake = env.event()
                yield self._wake
                self._idle = False
            step = self.policy.next_step(self)
            if step.empty:
                if self._reject_never_fitting():
                    continue
                if self.pending_fetch or self.pending_swap:
                    yield env.all_of(self.pending_fetch + self.pending_swap)
                    self.pending_fetch = []
                    self.pending_swap = []
                    continue
                # waiting for something to arrive or finish elsewhere
                self._idle = True
                self._wake = env.event()
                yield self._wake
                self._idle = False
                continue
            if self.pending_swap:
                # the step's swaps run before its forward pass, on the same stream
                yield env.all_of(self.pending_swap)
                self.pending_swap = []
            if not step.prefill_ids and len(step.decode_ids) > 0:
                yield from self._decode_run(step.decode_ids)
            else:
                yield from self._mixed_step(step)

    def _wait_fetch(self, duration: float, steps: list[tuple[np.ndarray, np.ndarray, int]] | None = None):  # type: ignore[no-untyped-def]
        """Compute for ``duration`` while pending transfers complete (layer-pipelined loads).

        In layer-by-layer mode ``steps`` lists each iteration's (q, ctx, logits rows) and every
        layer is its own event; with nothing contended the total equals ``duration``."""
        env = self.env
        start = env.now
        pending, self.pending_fetch = self.pending_fetch, []
        busy0 = self.offload.busy_compute if self.offload is not None else 0.0
        if self.offload is not None and steps:
            compute = env.process(self._offloaded(steps))
        elif self.stages is not None and steps:
            compute = self.pipe.submit(self, steps) if self.pipe is not None else env.process(self._pipeline(steps))
        elif self.cfg.layerwise and steps:
            compute = env.process(self._layers(steps))
        else:
            compute = env.timeout(duration)
        if pending:
            yield env.all_of([compute, *pending])
        else:
            yield compute
        if self.offload is not None:
            took = self.offload.busy_compute - busy0
            self.busy_time += took
            self.busy_gpu_s += took * self.cfg.num_gpus
            self.stage_busy[0] += took
        elif self.stages is None:
            self.busy_time += duration
            self.busy_gpu_s += duration * self.cfg.num_gpus
            self.stage_busy[0] += duration
        return start

    def _offloaded(self, steps: list[tuple[np.ndarray, np.ndarray, int]]):  # type: ignore[no-untyped-def]
        """Run offloaded iterations: in closed form where the plan allows it (engine/offload_fast.py),
        else layer by layer and transfer by transfer."""
        from simkit.engine.offload_fast import wake_at  # (an offloaded plan's module: a plain run needs none)

        assert self.offload is not None
        closed = self.offload.closed_form
        for q, ctx, rows in steps:
            end = closed.run(self.env.now, q, ctx, rows) if closed is not None else None
            if end is None:
                yield from self.offload.run_step(q, ctx, rows)
            else:
                yield wake_at(self.env, end)

    def _pipeline(self, steps: list[tuple[np.ndarray, np.ndarray, int]]):  # type: ignore[no-untyped-def]
        """Run iterations through the pipeline stages: each stage's stream is held for its share
        of the layers, then the activations cross to the next stage's GPUs."""
        env = self.env
        assert self.stages is not None
        for q, ctx, rows in steps:
            act_bytes = float(np.sum(q)) * self.cost.model.hidden_size * self.cost.precision.a_bytes
            for k, st in enumerate(self.stages):
                with st.stream.request() as req:
                    yield req
                    dur = st.cost.step_time(q, ctx, logits_rows=rows)
                    self.stage_busy[k] += dur
                    self.stage_comm[k] += st.cost.comm_time(int(np.sum(q)))
                    t0 = env.now
                    yield env.timeout(dur)
                    self.busy_time += dur
                    self.busy_gpu_s += dur * st.tp
                    if self.tracer is not None:
                        self.tracer.stage(self.index, k, self.engine_id, t0, env.now)
                if st.link_out is not None:
                    # each TP rank sends its 1/tp slice of the activations in parallel
                    yield st.link_out.transfer(act_bytes, f"pp {k}->{k + 1}")

    def _layers(self, steps: list[tuple[np.ndarray, np.ndarray, int]]):  # type: ignore[no-untyped-def]
        env = self.env
        n = self.cost.layers
        for q, ctx, rows in steps:
            before, per_layer, after = self.cost.split_layers(q, ctx, logits_rows=rows)
            yield env.timeout(before)
            for _ in range(n):
                yield env.timeout(per_layer)
            yield env.timeout(after)

    def _mixed_step(self, step: Step):  # type: ignore[no-untyped-def]
        env = self.env
        t = self.table
        pre = np.asarray(step.prefill_ids, dtype=np.int64)
        pq = np.asarray(step.prefill_q, dtype=np.int64)
        dec = step.decode_ids
        completes = t.kv_len[pre] + pq >= t.target[pre]
        q = np.concatenate([pq, np.ones(len(dec), dtype=np.int64)])
        ctx = np.concatenate([t.kv_len[pre], t.kv_len[dec]])
        rows = int(completes.sum()) + len(dec)
        mc = self.max_context
        if pre.size:
            mc["attn_prefill"] = max(mc["attn_prefill"], int((t.kv_len[pre] + pq).max()))
        if len(dec):
            mc["attn_decode"] = max(mc["attn_decode"], int(t.kv_len[dec].max()) + 1)
        dur = self.cost.step_time(q, ctx, logits_rows=rows)
        exact = self.cfg.layerwise or self.stages is not None or self.offload is not None
        if self.stages is None and self.cost.tp > 1:
            self.stage_comm[0] += self.cost.comm_time(int(q.sum()))
        if not exact and not self.pending_fetch:
            start = env.now
            yield env.timeout(dur)
            self.busy_time += dur
            self.busy_gpu_s += dur * self.cfg.num_gpus
            self.stage_busy[0] += dur
        else:
            start = yield from self._wait_fetch(dur, [(q, ctx, rows)] if exact else None)
        now = env.now
        if self.tracer is not None:
            self.tracer.step(self.index, start, now, int(pq.sum()), len(dec))
        self.log.add(self.index, start, now, 1, int(pq.sum()), len(dec), len(q), self.kv.in_use)
        t.kv_len[pre] += pq
        done_pre = pre[completes]
        if done_pre.size:
            self._dec_cache = None
            finished_pre = set(done_pre.tolist())
            self.prefilling = [i for i in self.prefilling if i not in finished_pre]
        finished: list[int] = []
        if done_pre.size:
            first = np.isnan(t.first_token[done_pre])
            t.first_token[done_pre[first]] = now
            again = done_pre[~first]
            if again.size:
                self.tbt.push(now - t.last_token[again])
            t.gen[done_pre] += 1
            t.last_token[done_pre] = now
            t.target[done_pre] = t.kv_len[done_pre]
            if self.kv.cache is not None:
                for i in done_pre.tolist():
                    self._publish_prefix(i)
            for i in done_pre.tolist():
                if t.gen[i] >= t.output[i] or self.cfg.role == "prefill":
                    finished.append(i)
        if len(dec):
            self.tbt.push(now - t.last_token[dec])
            t.kv_len[dec] += 1
            t.gen[dec] += 1
            t.last_token[dec] = now
            finished.extend(dec[t.gen[dec] >= t.output[dec]].tolist())
        self._finish(finished)

    def _finish(self, ids: list[int]) -> None:
        if not ids:
            return
        if len(self.replica.engines) > 1:
            self.replica.wake_all()
        t = self.table
        now = self.env.now
        done = set(ids)
        self.running = [i for i in self.running if i not in done]
        self._dec_cache = None
        for i in ids:
            if self.cfg.role == "prefill" and t.gen[i] < t.output[i] and self.on_prefilled is not None:
                # the KV leaves for a decode replica; blocks are freed once it has been sent
                self.outstanding -= 1
                self.on_prefilled(i, self.index)
                continue
            t.finish[i] = now
            self.outstanding -= 1
            self._release(i, finished=True)

    def release_after_transfer(self, i: int) -> None:
        self._release(i, finished=True)
        self.replica.wake_all()

    def _decode_run(self, dec: np.ndarray):  # type: ignore[no-untyped-def]
        env = self.env
        t = self.table
        B = len(dec)
        kv = t.kv_len[dec]
        gen = t.gen[dec]
        out = t.output[dec]
        s = int((out - gen).min())
        # KV growth bound: the largest s whose new blocks fit (cheap upper bound first)
        avail = self.kv.available
        if B * (s // self.cfg.block_size + 1) > avail and self._growth(dec, s) > avail:
            lo, hi = 1, s
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self._growth(dec, mid) <= avail:
                    lo = mid
                else:
                    hi = mid - 1
            s = lo
        exact = self.swapped or self.stages is not None or self.offload is not None
        if exact:
            # a pipeline or an offloaded plan runs one iteration at a time (micro-batches
            # interleave in the stages; transfers contend)
            s = 1
        elif self.policy.admits_on_arrival or not self.running:
            # only as many steps as it takes to reach the next arrival that could join
            ta = self.next_arrival() - env.now
            if ta < float("inf"):
                # a step takes at least its context-independent part: bound the steps to cost
                fixed = self.cost.fixed_step_time(B)
                if fixed > 0:
                    s = min(s, max(int(ta / fixed) + 2, 1))
        times = self.cost.decode_steps(B, float(kv.sum()), s, float(kv.max()), kv)
        ends = np.cumsum(times)
        if not exact and (self.policy.admits_on_arrival or not self.running):
            ta = self.next_arrival() - env.now
            if ta < ends[-1]:
                j = int(np.searchsorted(ends, ta, side="left"))
                s = min(s, j + 1)
                ends = ends[:s]
                times = times[:s]
        self._grow_blocks(dec, s, kv)
        self.max_context["attn_decode"] = max(self.max_context["attn_decode"], int(kv.max()) + s)
        steps = None
        if self.cfg.layerwise or exact:
            ones = np.ones(B, dtype=np.int64)
            steps = [(ones, kv + k, B) for k in range(s)]
        if self.stages is None and self.cost.tp > 1:
            self.stage_comm[0] += self.cost.comm_time(B) * s
        if steps is None and not self.pending_fetch:
            # the common case, inlined: nothing to wait for but the compute itself
            start = env.now
            dur = float(ends[-1])
            self._fast_forward = s > 1 and self.cfg.role == "decode"
            from simpy import Interrupt  # (SimPy is imported only by a world that runs its loop)

            try:
                yield env.timeout(dur)
            except Interrupt:
                # a KV hand-off arrived: finish the iteration in progress, then stop
                s = min(int(np.searchsorted(ends, env.now - start, side="left")) + 1, s)
                ends = ends[:s]
                times = times[:s]
                dur = float(ends[-1])
                yield env.timeout(max(start + dur - env.now, 0.0))
            self._fast_forward = False
            self.busy_time += dur
            self.busy_gpu_s += dur * self.cfg.num_gpus
            self.stage_busy[0] += dur
        else:
            start = yield from self._wait_fetch(float(ends[-1]), steps)
        now = env.now
        if self.tracer is not None:
            self.tracer.step(self.index, start, now, 0, B, steps=s)
        self.log.add(self.index, start, now, s, 0, B, B, self.kv.in_use)
        # inter-token gaps: the first since each request's last token (any wait for transfers or
        # pipeline stages falls into it), then the step times
        extra = max((now - start) - float(ends[-1]), 0.0)
        self.tbt.push(start + float(ends[0]) + extra - t.last_token[dec])
        if s > 1:
            self.tbt.push(times[1:], float(B))
        gen += s
        t.kv_len[dec] = kv + s
        t.gen[dec] = gen
        t.last_token[dec] = now
        fin = gen >= out
        if fin.any():
            self._finish(dec[fin].tolist())
