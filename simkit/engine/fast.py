"""The fast exact path of the serving loop: the same decisions as :class:`Engine`, with O(1)
running totals per step instead of per-request numpy work.

The reference loop gathers every decoding request's KV length, generated count and block count
from the request table at every step, and scatters them back. Here a replica keeps its decoding
requests as offsets from a per-replica decode clock ``D`` (decode iterations executed by the
replica): a request that joined the decode set at clock ``D0`` with ``kv0`` cached tokens has
``kv0 - D0 + D`` of them now, so the batch's KV sum is ``sum(offsets) + B * D``. The first request
to finish is the top of a heap of finishing clocks. KV block growth is counted without touching
requests: a request needs its next block at a clock ``n0`` fixed when it joins, then every
``block_size`` steps, so the blocks a run needs are counted from per-residue bucket counts
(``n0 mod block_size``) plus the few requests that have not reached their first boundary yet.
Inter-token gaps of a step go to the histogram once per group of requests whose last token
came at the same time (all of the batch but the newest members), with the group size as weight.
The request table is brought up to date for a request when it leaves the decode set (finish,
preemption) and for all of them when the run ends (:meth:`FastEngine.sync`).

Per step, the iteration time is evaluated on Python floats (``IterationModel.decode_step_times``
and ``mixed_step_time``: the same operations in the same order as the array forms, so the same
bits, with the roofline's coefficients taken once from ``EfficiencyModel.roofline_coeffs``)
wherever the efficiency model prices attention in closed form; a decode run is priced only up
to the step that reaches the next arrival (where the run is cut); the loop
(:meth:`FastEngine._loop`) takes the policy's decision through its ``fast_step`` hook as plain
values (no ``Step`` per iteration) and a step that no other event can interrupt (nothing
scheduled before it ends) moves the clock without a SimPy event (:meth:`FastEngine._advance`).
When every replica is served by one fast engine (no hand-off), SimPy's loop itself is replaced
(``FastWorld`` in engine/cluster.py, set as :attr:`FastEngine.world`): the same order of events
on a plain heap, the arrival process as plain calls, each engine's loop resumed directly, so a
step or an arrival costs a heap entry instead of a SimPy event and a generator resume, and on
one replica most steps need neither. Admission is the reference's without the prefix-cache and
spill branches (with a prefix cache or a KV spill tier, the reference's own), and one that
failed for want of blocks is not re-checked until enough blocks are free; a KV spill tier caps a
sequence's blocks at the threshold's as a window does (below); a sliding-window model caps a sequence's blocks at the
window's (admission reserves at most those; a decoding request leaves the residue buckets at
its last block boundary, and counts over a span subtract the boundaries past it) and its decode
attention is priced on the real contexts (sums of integers: the same in any order); with a prefix cache, admission is
the reference's own (lookups, pins, evictions and demotions, fetches), completed prompts publish
their blocks as the reference does before they join the decode set (whose block counts include
the blocks a request shares), finishing requests unpin their entries, the pool's levels are read
with the cache's entries, and a step waits for the fetches its admissions started; the links are
SimPy resources, so such a run stays in SimPy's loop (no ``FastWorld``, no fused loop); swap
preemption is the reference's own swap-out and swap-in (a request swapped back in with its KV
whole rejoins the decode set), a step waits for its swaps before it is priced, and while
requests wait in swap space the decode set runs one iteration at a time, as the reference's;
finished requests leave the running set in O(1) and release their blocks in one call. Per event, the bookkeeping takes the common case inline: the
heaps' tops are read directly when valid, the finished-request scan is skipped when the first
finishing clock is later, one step's block growth is its residue's count, and SimPy's clock is
read as ``env._now`` (what ``env.now`` returns, without a property call).

Everything else is the reference engine's own code (the policies, the event loop, preemption,
the cost model calls with the same arguments), so per-request times are bit-for-bit those of
:class:`Engine`; ``tests/test_fast_engine.py`` checks that on random scenarios. Plans the fast
path does not cover run on the reference engine, and ``summary.json`` says which path ran and
why (``engine_path``). Covered: ``continuous``, ``chunked_prefill`` and ``static`` batching
and disaggregated serving, any number of replicas and any routing, recompute and swap
preemption, prefix caching (``static``: the policy's ``fast_step``; a decode run is not cut at
an arrival, which waits for the batch, as in the reference); sliding-window models,
disaggregated serving of them included (below);
pipeline parallelism with the stages in closed form (``PipelineFastEngine``,
engine/pipeline_fast.py: a step waits for its prefix fetches and swaps as the reference's does,
and those cross other links than the stages' activations; a sliding-window model's stages are
priced on the real contexts); offloaded plans (``OffloadFastEngine``, engine/fast_offload.py:
the steps in closed form, or event by event through the reference's executor whatever the
reason, priced on the real contexts where the step's cost reads more than their count, sum and
maximum: several GPU batches, a window, a KV spill tier). Not covered (reference engine):
layer-by-layer execution, Chrome traces, and a pipelined run whose micro-batches overtake
(repeated with the stages event by event).

Disaggregated serving of a sliding-window model: a request that joins a decode replica behind a
cut run's blocks (:attr:`FastEngine._late`, below) is allocated on its own up to its last block
boundary (its window's blocks) and joins the residue buckets only if it has boundaries left
past the allocation clock.

Disaggregated serving runs in SimPy's loop (the KV hand-off is the cluster's process over the
replica's :class:`Link`, contended as the reference's, in the same events): a prefill replica's
completed prompt leaves the running set and is handed off (``on_prefilled``) with its blocks
held until the transfer ends (:meth:`Engine.release_after_transfer`); on a decode replica a
hand-off interrupts a decode run of several steps (``cut_fast_forward``, the reference's
``Process.interrupt``), which then ends with the step in progress while the blocks allocated
for the whole run stay allocated (:meth:`FastEngine._cuttable`). The allocation clock is then
ahead of the decode clock, and a request that joins with its next block boundary behind it is
allocated on its own (:attr:`FastEngine._late`) until its boundary reaches that clock, where it
joins the residue buckets.
With the stock routing policies, and without a prefix cache, swaps or a sliding window, the run
does not step through this class's loop: :mod:`simkit.engine.lean` makes the same decisions in
one fused loop (this class's objects hold its parameters and receive its results), and steps
through it only where that loop stops.
"""

from __future__ import annotations

import heapq
from bisect import insort
from typing import TYPE_CHECKING, Any

import numpy as np

from simkit.engine.engine import Engine
from simkit.engine.resources import Link
from simkit.specs.tiers import tier_path

if TYPE_CHECKING:
    from simkit.engine.cluster import FastWorld


class _RunSet(dict[int, None]):
    """The running requests in admission order, as the reference's list (``append``, ``pop`` of
    the newest, ``[-1]``, ``len``, iteration, ``in``) with O(1) removal of any member
    (``discard``); a dict underneath, so ``len`` and truth tests cost no Python call."""

    __slots__ = ()

    def append(self, i: int) -> None:
        self[i] = None

    def pop(self) -> int:  # type: ignore[override]
        return self.popitem()[0]

    def discard(self, i: int) -> None:
        dict.pop(self, i, None)

    def __getitem__(self, k: int) -> None:
        raise TypeError("only the newest running request is read: use newest()")

    def newest(self) -> int:
        return next(reversed(self))


def stand_in_contexts(n: int, total: int, longest: int) -> np.ndarray:
    """``n`` contexts in [1, longest] with sum ``total`` and maximum ``longest`` (the first), for
    ``n`` real contexts in [1, longest] with that sum and maximum."""
    out = np.empty(n, dtype=np.int64)
    out[0] = longest
    k = n - 1
    if k:
        rest = total - longest
        out[1:] = rest // k
        out[1 : 1 + rest % k] += 1
    return out


def stand_in_step(pq: list[int], kv_pre: list[int], nb: int, dec_sum: int, longest: int) -> tuple[np.ndarray, np.ndarray]:
    """An iteration's ``(q, ctx)`` arrays as the cost model takes them: the prefill chunks
    (``pq`` tokens over ``kv_pre`` cached ones), then ``nb`` decodes with stand-in contexts of
    the real ones' sum and maximum (:func:`stand_in_contexts`: all the cost model reads)."""
    n_pq = len(pq)
    q = np.ones(n_pq + nb, dtype=np.int64)
    q[:n_pq] = pq
    ctx = np.empty(n_pq + nb, dtype=np.int64)
    ctx[:n_pq] = kv_pre
    if nb:
        ctx[n_pq:] = stand_in_contexts(nb, dec_sum, longest)
    return q, ctx


def fast_path_reason(policy: str, layerwise: bool, trace: bool) -> str | None:
    """None when the fast path covers the plan, else why it runs on the reference engine. A
    pipelined plan it covers runs its stages in closed form (engine/pipeline_fast.py,
    ``PipelineFastEngine``; a run whose micro-batches would overtake is repeated on the
    reference engine with the stages event by event); an offloaded one runs
    ``OffloadFastEngine`` (engine/fast_offload.py: its steps in closed form, or event by event
    through the reference's executor, whatever the reason; a KV spill tier too). Prefix caching
    and swap preemption are covered on any replica (a pipelined replica's fetches and swaps
    cross other links than its stages' activations: the stages' closed form holds, and a step
    waits for its fetches and swaps as the reference's does), and so are sliding-window models
    (priced on the real contexts: each sequence attends at most the window) and disaggregated
    serving (the prefill and decode pools' fast engines in SimPy's loop, the KV hand-off on the
    reference's own link)."""
    if policy not in ("static", "continuous", "chunked_prefill", "disaggregated"):
        return f"batching policy {policy}"
    if layerwise:
        return "layer-by-layer execution"
    if trace:
        return "Chrome trace output"
    return None


class FastEngine(Engine):
    """A :class:`Engine` whose decoding requests are kept as running totals (see the module
    docstring). Only the plans :func:`fast_path_reason` accepts may use it."""

    def _init_state(self) -> None:
        """The running totals (called by :class:`Engine` before its process starts)."""
        cfg, kv = self.cfg, self.kv
        bs = self.cfg.block_size
        self._D = 0
        """Decode clock: decode iterations this replica has executed."""
        self._Xa = 0
        """Clock up to which the decoding requests' KV blocks are allocated (>= the decode clock)."""
        self._info: dict[int, list[Any]] = {}
        """request -> [offset, join clock, generated at join, blocks at join, n0, last token at
        join, finishing clock]."""
        self._sum_off = 0
        self._fin: list[tuple[int, int]] = []
        self._long: list[tuple[int, int]] = []
        """(-offset, request): the longest decoding context is the top's offset + clock."""
        self._cnt = [0] * bs
        """Requests past their first block boundary, by n0 mod block_size."""
        self._n_active = 0
        self._pending: list[tuple[int, int]] = []
        """(n0, request) of requests that have not reached their first block boundary, sorted."""
        self._fresh: dict[float, int] = {}
        """last-token time -> count, of requests that joined since the last decode step."""
        self._last_dec = 0.0
        """End time of the last step that decoded the whole decode set."""
        self._prefill_memo: dict[tuple[int, int, int], float] = {}
        self.running = _RunSet()  # type: ignore[assignment]
        self.world: FastWorld | None = None
        """The event loop that resumes this engine when the world holds only fast engines and
        the arrivals (set by :class:`FastWorld`), else None (SimPy's)."""
        self.world_index = -1
        self._woken = False
        self._no_fit: tuple[int, int | None, int] | None = None
        """(request, reserve_tokens, most blocks in use at which it fits) of the last admission
        that did not fit for want of blocks."""
        if kv.watermark_blocks < 0:
            raise AssertionError("the fast path has no negative watermark")
        self._late: dict[int, int] = {}
        """Decoding requests whose next block boundary is behind the allocation clock (they joined
        after a decode run was cut short by a KV hand-off, which keeps the blocks allocated for the
        whole run): request -> that boundary, each allocated on its own until it reaches ``_Xa``
        (with a KV cap, or until it is past its last boundary: then it has all its blocks)."""
        self._arrival_cut = bool(self.policy.admits_on_arrival)
        """Whether a decode run stops at the step that reaches the next arrival (not static
        batching, whose arrivals wait for the batch: the reference's ``_decode_run``)."""
        self._cut = cfg.role == "decode"
        """A decode replica of disaggregated serving: its decode runs may be cut short by a hand-off."""
        self._prefill_role = cfg.role == "prefill"
        """A prefill replica of disaggregated serving: a completed prompt leaves for a decode replica."""
        self._ends: Any = None
        """The running sums of the times of the decode run in progress (to cut it at a hand-off)."""
        caps = [c for c in (cfg.kv_cap_tokens, cfg.spill_after) if c is not None]
        self._cap_blocks = -(-min(caps) // bs) if caps else None
        """A sliding-window model or a KV spill tier: the most blocks a sequence holds (its
        window's, or those of its positions before the spill threshold, as the reference's
        ``_growth`` caps the tokens; the blocks of the lesser cap), else None."""
        self._spill = cfg.spill_after is not None
        """A KV spill tier: admission reserves the positions past the threshold there (the
        reference's own admission, :meth:`_admit_reference`) and a finishing request frees them."""
        self._window = self.cost.model.sliding_window is not None
        """A sliding-window model: decode attention reads every context (:meth:`_contexts`)."""
        self._m: dict[int, int] = {}
        """With a KV cap: decoding request -> the blocks it may still gain after joining."""
        self._caps: list[tuple[int, int]] = []
        """With a KV cap: (clock of its last block boundary, request) of the requests counted in
        the residue buckets, sorted: each leaves the buckets once the blocks are allocated past it."""
        self._cached = kv.cache is not None
        """A prefix cache: admission, publication and release go through its pins (see :meth:`admit`)."""
        self.uses_links = self._cached or cfg.preemption == "swap"
        """Whether its plan moves data over the replica's links (prefix fetches and demotions,
        swaps): SimPy resources, so the run stays in SimPy's loop (no ``FastWorld``)."""
        self._demotes: dict[tuple[str, str], tuple[list[Link], float, str]] = {}
        """(links, bytes per entry, tag) of prefix entries demoted from one tier to another."""

    # ---- the decode set ----------------------------------------------------------------------
    def _join(self, i: int, kv: int, gen: int, lt: float) -> None:
        """Request ``i`` joins the decode set with ``kv`` cached tokens, ``gen`` generated and its
        last token at ``lt`` (its table row's values, which the caller has at hand)."""
        t = self.table
        clock = self._D
        blocks = int(t.blocks[i])
        off = kv - clock
        # the blocks it holds: its own and those it shares through the prefix cache (fixed while
        # it decodes: entries are published when a prefill completes, before it joins)
        n0 = (blocks + int(t.shared_blocks[i])) * self.cfg.block_size - off
        fin = clock + int(t.output[i]) - gen
        self._info[i] = [off, clock, gen, blocks, n0, lt, fin]
        self._sum_off += off
        heapq.heappush(self._fin, (fin, i))
        long = self._long
        heapq.heappush(long, (-off, i))
        if len(long) > 2 * len(self._info) + 64:
            # stale entries of departed requests pile up when nothing reads the maximum
            # (continuous batching): keep the heap proportional to the batch
            long[:] = [(-e[0], k) for k, e in self._info.items()]
            heapq.heapify(long)
        if self._cap_blocks is not None:
            m = self._m[i] = max(self._cap_blocks - blocks - int(t.shared_blocks[i]), 0)
            if m == 0:
                pass  # holds its window's blocks already: never grows, never counted
            elif n0 < self._Xa and self._cut:
                self._late[i] = n0  # joins behind the blocks a cut decode run allocated ahead
            elif n0 <= self._Xa:
                self._activate_capped(i, n0)
            else:
                insort(self._pending, (n0, i))
        elif n0 < self._Xa and self._cut:
            self._late[i] = n0  # joins behind the blocks a cut decode run allocated ahead
        elif n0 <= self._Xa:
            self._cnt[n0 % self.cfg.block_size] += 1
            self._n_active += 1
        else:
            insort(self._pending, (n0, i))
        self._fresh[lt] = self._fresh.get(lt, 0) + 1

    def _activate_capped(self, i: int, n0: int) -> None:
        """Count request ``i`` (first boundary ``n0`` <= the allocation clock) in the residue
        buckets until its last block boundary, unless the blocks are allocated past it already."""
        last = n0 + (self._m[i] - 1) * self.cfg.block_size
        if last >= self._Xa:
            self._cnt[n0 % self.cfg.block_size] += 1
            self._n_active += 1
            insort(self._caps, (last, i))

    def _extra(self, n0: int) -> int:
        """Blocks a request with first boundary ``n0`` has gained since it joined."""
        x = self._Xa - n0
        return -(-x // self.cfg.block_size) if x > 0 else 0

    def _write(self, i: int, info: list[Any]) -> None:
        """Write decoding request ``i``'s state to the request table."""
        off, d0, g0, b0, n0, lt, _ = info
        t = self.table
        clock = self._D
        t.kv_len[i] = off + clock
        t.gen[i] = g0 + clock - d0
        t.last_token[i] = lt if clock == d0 else self._last_dec
        b = self._late.get(i) if self._late else None
        # a request behind a cut run's blocks has gained those up to its next boundary ``b``
        extra = self._extra(n0) if b is None else (b - n0) // self.cfg.block_size
        t.blocks[i] = b0 + (extra if self._cap_blocks is None else min(extra, self._m[i]))

    def _leave(self, i: int) -> None:
        """Write request ``i``'s state to the table and drop it from the decode set."""
        self._write(i, self._info[i])
        self._drop(i)

    def _drop(self, i: int) -> None:
        """Drop request ``i`` from the decode set (its table row is already up to date)."""
        off, d0, _, _, n0, lt, _ = self._info.pop(i)
        clock = self._D
        self._sum_off -= off
        m = self._m.pop(i) if self._cap_blocks is not None else 0
        if self._late and i in self._late:
            del self._late[i]
        elif self._cap_blocks is not None:
            if m == 0:
                pass
            elif n0 > self._Xa:
                self._pending.remove((n0, i))
            else:
                last = n0 + (m - 1) * self.cfg.block_size
                if last >= self._Xa:  # still counted (else it left the buckets at its last boundary)
                    self._cnt[n0 % self.cfg.block_size] -= 1
                    self._n_active -= 1
                    self._caps.remove((last, i))
        elif n0 <= self._Xa:
            self._cnt[n0 % self.cfg.block_size] -= 1
            self._n_active -= 1
        else:
            self._pending.remove((n0, i))
        if clock == d0:
            c = self._fresh[lt] - 1
            if c:
                self._fresh[lt] = c
            else:
                del self._fresh[lt]

    def sync(self) -> None:
        """Bring the request table up to date for every request still decoding."""
        for i, info in self._info.items():
            self._write(i, info)

    def _growth_to(self, upto: int) -> int:
        a = self._Xa
        late = self._late_growth(upto) if self._late else 0
        if upto <= a:
            return late
        bs = self.cfg.block_size
        L = upto - a
        g = late + self._n_active * (L // bs)
        r = L % bs
        if r:
            # the residues a, a+1, ..., a+r-1 (mod bs): one slice, or two where they wrap
            cnt = self._cnt
            lo = a % bs
            hi = lo + r
            g += sum(cnt[lo:hi]) if hi <= bs else sum(cnt[lo:]) + sum(cnt[: hi - bs])
        if self._cap_blocks is None:
            for n0, _ in self._pending:
                if n0 >= upto:
                    break
                g += -(-(upto - n0) // bs)
            return g
        # a KV cap: the buckets count the boundaries of the requests in them past their last one
        # (every block_size clocks from it up to upto - 1): take those off
        for last, _ in self._caps:
            if last + bs > upto - 1:
                break
            g -= (upto - 1 - last) // bs
        m = self._m
        for n0, i in self._pending:
            if n0 >= upto:
                break
            g += min(-(-(upto - n0) // bs), m[i])
        return g

    def _late_growth(self, upto: int) -> int:
        """Blocks the requests behind a cut run's blocks (:attr:`_late`) gain up to clock ``upto``:
        their boundaries ``b``, ``b + block_size``, ... before it (with a KV cap, up to their
        last boundary: :meth:`_last_boundary`)."""
        bs = self.cfg.block_size
        if self._cap_blocks is None:
            return sum(-(-(upto - b) // bs) for b in self._late.values() if b < upto)
        g = 0
        for i, b in self._late.items():
            if b < upto:
                k = -(-(upto - b) // bs)
                most = (self._last_boundary(i) - b) // bs + 1
                g += k if k < most else most
        return g

    def _last_boundary(self, i: int) -> int:
        """With a KV cap: the clock of decoding request ``i``'s last block boundary (where it gains
        its last block: ``m`` boundaries from its first, ``n0``)."""
        return self._info[i][4] + (self._m[i] - 1) * self.cfg.block_size

    def _late_alloc(self, upto: int) -> None:
        """After allocating up to clock ``upto``: move each request behind a cut run's blocks to
        its next boundary past it; one at or past the allocation clock has every block before
        that clock, as the residue buckets count their requests: it joins them."""
        bs = self.cfg.block_size
        xa = upto if upto > self._Xa else self._Xa
        late = self._late
        capped = self._cap_blocks is not None
        for i, b in list(late.items()):
            if b < upto:
                b += -(-(upto - b) // bs) * bs
                late[i] = b
            if capped:
                last = self._last_boundary(i)
                if b > last:
                    del late[i]  # past its last boundary: it has all its blocks, counted nowhere
                elif b >= xa:
                    del late[i]
                    self._cnt[b % bs] += 1
                    self._n_active += 1
                    insort(self._caps, (last, i))
            elif b >= xa:
                del late[i]
                self._cnt[b % bs] += 1
                self._n_active += 1

    def _alloc_to(self, upto: int) -> None:
        """Allocate the blocks the decode set needs up to clock ``upto`` (as ``_grow_blocks``)."""
        a = self._Xa
        if self._late:
            total = self._growth_to(upto)
            if total:
                self.kv.alloc(total)
            self._late_alloc(upto)
            if upto <= a:
                return
            total = 0  # allocated above: what follows moves the clock and the pending requests
        elif upto == a + 1:
            # one step (every step of chunked prefill): :meth:`_growth_to` reduces to the
            # residue ``a``'s count, as every pending request's first boundary is past ``a``
            total = self._cnt[a % self.cfg.block_size]
        else:
            total = self._growth_to(upto)
        if total:
            self.kv.alloc(total)  # makes room first, as _grow_blocks's make_room + alloc
        if upto > self._Xa:
            self._Xa = upto
            pend = self._pending
            bs = self.cfg.block_size
            k = 0
            if self._cap_blocks is not None:
                while k < len(pend) and pend[k][0] <= upto:
                    self._activate_capped(pend[k][1], pend[k][0])
                    k += 1
                del pend[:k]
                caps = self._caps
                j = 0
                while j < len(caps) and caps[j][0] < upto:  # allocated past their last boundary
                    self._cnt[(caps[j][0]) % bs] -= 1
                    j += 1
                if j:
                    self._n_active -= j
                    del caps[:j]
                return
            while k < len(pend) and pend[k][0] <= upto:
                self._cnt[pend[k][0] % bs] += 1
                k += 1
            if k:
                self._n_active += k
                del pend[:k]

    def _top_finish(self) -> int:
        fin = self._fin
        info = self._info
        while True:
            f, i = fin[0]
            e = info.get(i)
            if e is not None and e[6] == f:
                return f
            heapq.heappop(fin)

    def _decode_shape(self, nb: int) -> tuple[int, int]:
        """The ``nb`` decoding requests' context sum and longest context now (the longest-context
        heap's top when valid, the usual case), noting the longest one more token in
        ``max_context``: all decode attention reads of them (IterationModel.attention_time)."""
        clock = self._D
        neg, i = self._long[0]
        e = self._info.get(i)
        longest = (-neg if e is not None and e[0] == -neg else self._longest_offset()) + clock
        mc = self.max_context
        if longest + 1 > mc["attn_decode"]:
            mc["attn_decode"] = longest + 1
        return self._sum_off + nb * clock, longest

    def _longest_offset(self) -> int:
        long = self._long
        info = self._info
        while True:
            neg, i = long[0]
            e = info.get(i)
            if e is not None and e[0] == -neg:
                return -neg
            heapq.heappop(long)

    def _pop_finished(self) -> list[int]:
        """Requests whose finishing clock is the current one, removed from the decode set."""
        out: list[int] = []
        fin = self._fin
        info = self._info
        clock = self._D
        while fin:
            f, i = fin[0]
            e = info.get(i)
            if e is None or e[6] != f:
                heapq.heappop(fin)
                continue
            if f > clock:
                break
            heapq.heappop(fin)
            # a request preempted and decoding again may have an equal stale entry: leave once
            if i in info:
                self._leave(i)
                out.append(i)
        return out

    def _tbt_groups(self, base: float) -> None:
        """Push the gap ``base - last token`` of every decoding request, grouped."""
        push = self.tbt.push1
        fresh = self._fresh
        if not fresh:  # the usual decode run: every request's last token came at the last step
            if self._info:
                push(base - self._last_dec, float(len(self._info)))
            return
        n_old = len(self._info) - sum(fresh.values())
        if n_old:
            push(base - self._last_dec, float(n_old))
        for lt, c in fresh.items():
            push(base - lt, float(c))

    # ---- overrides of the reference engine ---------------------------------------------------
    def admit(self, i: int, reserve_tokens: int | None = None) -> bool:
        # The reference's admit without a prefix cache or a spill tier (those take the
        # reference's own, _admit_reference): the request's blocks are those of its tokens
        # (capped at a sliding window's), and it fails only on the
        # block count (``kv.can_admit``: free - need < watermark, checked before anything is
        # touched; with a watermark >= 0 it implies ``kv.make_room``, which without a cache only
        # integrates the KV level up to now, as ``kv.alloc`` does at the same instant). A waiting
        # request's need does not change: it fails again while the blocks in use stay above the
        # level at which it would fit, so those checks are skipped.
        if self._cached or self._spill:
            return self._admit_reference(i, reserve_tokens)
        if self._refused_from_memory(i, reserve_tokens):
            return False
        kv = self.kv
        t = self.table
        kv_len = int(t.kv_len[i])
        target = int(t.target[i])
        tokens = reserve_tokens if reserve_tokens is not None else max(target, kv_len) + 1
        if self.cfg.kv_cap_tokens is not None:
            tokens = min(tokens, self.cfg.kv_cap_tokens)  # a sliding window: the window's blocks
        need = kv.blocks_for(tokens)
        limit = kv.num_blocks - need - kv.watermark_blocks  # the most blocks in use at which it fits
        if kv.used > limit:
            self._no_fit = (i, reserve_tokens, limit)
            return False
        self._no_fit = None
        kv.alloc(need)
        t.blocks[i] = need
        # no prefix cache: no shared blocks and no cached tokens (those columns stay 0)
        if t.scheduled[i] != t.scheduled[i]:  # NaN: first admission
            t.scheduled[i] = self.env._now
        self.running.append(i)
        if kv_len < target:
            self.prefilling.append(i)
        else:
            self._join(i, kv_len, int(t.gen[i]), float(t.last_token[i]))
        self._dec_cache = None
        return True

    def _admit_reference(self, i: int, reserve_tokens: int | None) -> bool:
        """Admission with a prefix cache or a KV spill tier: the reference's own (its lookups,
        pins, evictions and demotions, fetches; its spill reservation), then the request joins
        the decode set if its KV is all here."""
        if not Engine.admit(self, i, reserve_tokens):
            return False
        t = self.table
        kv_len = int(t.kv_len[i])
        if kv_len >= int(t.target[i]):
            self._join(i, kv_len, int(t.gen[i]), float(t.last_token[i]))
        return True

    def demote_traffic(self, src: str, dst: str, entries: int) -> None:
        """The reference's :meth:`Engine.demote_traffic` (the same posts, in the same order) with
        each (from, to) pair's links, bytes per entry and tag worked out once."""
        how = self._demotes.get((src, dst))
        if how is None:
            path = [self.links[k] for k in tier_path(src, dst) if k in self.links]
            how = self._demotes[(src, dst)] = (
                path, self.cfg.hash_tokens * self.cfg.kv_bytes_per_token * self.cfg.num_gpus, f"prefix {src}->{dst}"
            )
        path, per_hash, tag = how
        for link in path:
            link.post(entries * per_hash, tag)

    def swap_in_ready(self) -> None:
        """The reference's swap-in; a request whose KV is all back joins the decode set."""
        n = len(self.running)
        super().swap_in_ready()
        if len(self.running) > n:
            t = self.table
            for i in list(self.running)[n:]:
                kv_len = int(t.kv_len[i])
                if kv_len >= int(t.target[i]):
                    self._join(i, kv_len, int(t.gen[i]), float(t.last_token[i]))

    def _refused_from_memory(self, i: int, reserve_tokens: int | None) -> bool:
        """Whether admitting ``i`` fails as it did last time (the blocks in use are still above
        the level at which it would fit)."""
        nf = self._no_fit
        return nf is not None and nf[0] == i and nf[1] == reserve_tokens and self.kv.used > nf[2]

    def _finish(self, ids: list[int]) -> None:
        # the reference's _finish with O(1) removal from the running set; on a prefill replica, a
        # request with tokens left to generate is handed off (its blocks are freed once its KV
        # has been sent: Engine.release_after_transfer)
        if not ids:
            return
        if len(self.replica.engines) > 1:
            self.replica.wake_all()
        if self._prefill_role and self.on_prefilled is not None:
            t = self.table
            gone = [i for i in ids if t.gen[i] < t.output[i]]
            if gone:
                for i in gone:
                    self.running.discard(i)  # type: ignore[attr-defined]
                    self.outstanding -= 1
                    self.on_prefilled(i, self.index)
                ids = [i for i in ids if t.gen[i] >= t.output[i]]
                if not ids:
                    self._dec_cache = None
                    return
        t = self.table
        now = self.env._now
        run = self.running
        self._dec_cache = None
        # the reference releases each request's blocks in turn, all at this instant: one release
        # of their sum integrates and peaks the same
        freed = 0
        cache = self.kv.cache
        spill_held = self.spill_held
        for i in ids:
            run.discard(i)  # type: ignore[attr-defined]
            t.finish[i] = now
            freed += int(t.blocks[i])
            t.blocks[i] = 0
            if cache is not None:
                # the reference's _release: unpin the request's prefix entries (refcounts only:
                # the blocks in use and the LRU order stay as they are)
                for h in self.shared.pop(i, ()):
                    cache.unpin(h)
                t.shared_blocks[i] = 0
            if spill_held:
                # and free its spill reservation (the same subtractions in the same order)
                self.spill_used -= spill_held.pop(i, 0.0)
        self.outstanding -= len(ids)
        self.kv.release(freed)

    def _preempt_one(self) -> bool:
        # the reference preempts the newest running request, reading its table row: bring the
        # row up to date first, and drop the request from the decode set if it was preempted
        i = self.running.newest() if self.running else -1  # type: ignore[attr-defined]
        info = self._info.get(i)
        if info is not None:
            self._write(i, info)
        done = super()._preempt_one()
        if done and info is not None:
            self._drop(i)
        return done

    def decode_ready(self, reserve: bool = True) -> Any:
        """The reference's decode set as a ``range`` of its size (all a policy reads of it)."""
        while True:
            nb = len(self._info)
            if nb == 0:
                return range(0)
            kvm = self.kv
            free = kvm.free if self._cached else kvm.num_blocks - kvm.used  # kv.free, inlined without a cache
            grow = nb if nb <= free else self._growth_to(self._D + 1)
            if grow <= free or self.kv.make_room(grow):
                if reserve:
                    self._alloc_to(self._D + 1)
                return range(nb)
            if not self._preempt_one():
                raise AssertionError("a lone request cannot grow its KV cache (admission should have prevented this)")

    def _idle_wait(self):  # type: ignore[no-untyped-def]
        """Wait until a request is queued for this engine (the reference's wait for ``_wake``);
        in a :attr:`world`, until :meth:`wake` schedules this engine's loop again."""
        self._idle = True
        if self.world is not None:
            self._woken = False
            yield None
        else:
            self._wake = self.env.event()
            yield self._wake
        self._idle = False

    def wake(self) -> None:
        if self.world is None:
            super().wake()
        elif self._idle and not self._woken:
            # SimPy's wake-up event (``_wake.succeed()``): scheduled now, in creation order
            self._woken = True
            self.world.push(self.env._now, self.world_index)

    def _advance(self, dur: float) -> bool:
        """Let ``dur`` seconds of compute pass without an event where nothing can intervene:
        when no event is scheduled up to the step's end (``env.peek()``, or the :attr:`world`'s,
        is later), nothing else can run before this process would resume, so the clock is moved
        to the end directly (the same float ``env.now + dur`` a timeout would fire at) and True
        is returned; else False (the caller yields ``env.timeout(dur)``, or in a world yields
        after this has scheduled the step's end). Events at equal times keep their order
        (``peek()`` equal to the end takes the event path), so every decision is the same."""
        env = self.env
        end = env._now + dur
        world = self.world
        if world is not None:
            if world.peek() > end:
                env._now = end
                return True
            world.push(end, self.world_index)
            return False
        if env.peek() > end:
            env._now = end  # SimPy's clock (no public setter); the event queue is untouched
            return True
        return False

    def _step_time(self, pq: list[int], kv_pre: list[int], nb: int, dec_sum: int, longest: int, rows: int) -> float:
        """``IterationModel.step_time`` of a mixed iteration: on scalars where it can
        (``mixed_step_time``), else on arrays with stand-ins for the decoding requests' contexts
        (same count, sum and maximum: all the cost model reads of them; a sliding-window model's
        real contexts, :meth:`_contexts`)."""
        cost = self.cost
        dur = cost.mixed_step_time(pq, kv_pre, nb, dec_sum, longest, rows)
        if dur is not None:
            return dur
        if self._window:
            # a sliding window: the decoding requests' real contexts (each attends at most the window)
            n_pq = len(pq)
            q = np.ones(n_pq + nb, dtype=np.int64)
            q[:n_pq] = pq
            ctx = np.empty(n_pq + nb, dtype=np.int64)
            ctx[:n_pq] = kv_pre
            if nb:
                ctx[n_pq:] = self._contexts()
        else:
            q, ctx = stand_in_step(pq, kv_pre, nb, dec_sum, longest)
        return cost.step_time(q, ctx, logits_rows=rows)

    def _contexts(self) -> np.ndarray | None:
        """A sliding-window model's decoding contexts (each sequence attends at most the window,
        so the cost reads them all: sums of integers, the same in any order), else None."""
        if not self._window:
            return None
        return np.fromiter((e[0] for e in self._info.values()), dtype=np.int64, count=len(self._info)) + self._D

    # ---- the loop ----------------------------------------------------------------------------
    def _wait_empty_step(self):  # type: ignore[no-untyped-def]
        """What an empty step waits for (the reference's loop does the same): the prefix fetches
        and swaps a decision left in flight, else something to arrive or finish elsewhere."""
        if self.pending_fetch or self.pending_swap:
            yield self.env.all_of(self.pending_fetch + self.pending_swap)
            self.pending_fetch = []
            self.pending_swap = []
        else:
            yield from self._idle_wait()

    def _loop(self):  # type: ignore[no-untyped-def]
        """The reference's loop (:meth:`Engine._loop`) with the policy's ``fast_step`` hook
        (plain values, no :class:`Step`) and the step's work in plain calls around the one
        place it may wait: a step that nothing can interrupt moves the clock without an event
        (:meth:`_advance`), so a run of such steps is one Python loop, not one SimPy event and
        generator per step. With a prefix cache, an admission may fetch entries from a lower tier
        over the links: the next step waits for its compute and those transfers together (the
        reference's ``_wait_fetch``), and an empty step waits for them as the reference does. With
        swap preemption, a step waits for the swaps its decision started before it is priced (the
        reference's wait before its forward pass)."""
        env = self.env
        fast_step = self.policy.fast_step  # type: ignore[attr-defined]
        gpus = self.cfg.num_gpus
        stage_busy = self.stage_busy
        while True:
            if not self.running and not self.waiting and not self.swapped:
                yield from self._idle_wait()
            pre, q, nb = fast_step(self)
            if not pre and not nb:
                if self._reject_never_fitting():
                    continue
                yield from self._wait_empty_step()
                continue
            if self.pending_swap:
                # the step's swaps run before its forward pass, on the same stream (the step is
                # priced after them, as the reference prices it)
                yield env.all_of(self.pending_swap)
                self.pending_swap = []
            dur = self._mixed_begin(pre, q, nb) if pre else self._decode_begin(nb)
            start = env._now
            if self.pending_fetch:
                # the step's compute overlaps the prefix fetches its admissions started
                # (Engine._wait_fetch: the same events in the same order)
                pending, self.pending_fetch = self.pending_fetch, []
                yield env.all_of([env.timeout(dur), *pending])
            elif not self._advance(dur):
                if self._cut and not pre and self._run[1] > 1:
                    # a decode replica's run: a KV hand-off may cut it short (the reference's interrupt)
                    dur = yield from self._cuttable(start, dur)
                else:
                    yield env.timeout(dur) if self.world is None else None
            self.busy_time += dur
            self.busy_gpu_s += dur * gpus
            stage_busy[0] += dur
            if pre:
                self._mixed_end(start, pre, q, nb)
            else:
                self._decode_end(start, dur)

    def _cuttable(self, start: float, dur: float):  # type: ignore[no-untyped-def]
        """Wait for a decode run of several steps that a KV hand-off may cut short, as the
        reference's ``_decode_run`` (``cut_fast_forward`` interrupts it): then the run ends with
        the step in progress (its blocks stay allocated for the whole run); returns its seconds."""
        from simpy import Interrupt  # (SimPy is imported only by a world that runs its loop)

        env = self.env
        self._fast_forward = True
        try:
            yield env.timeout(dur)
        except Interrupt:
            nb, s, times, first = self._run
            ends = self._ends
            s = min(int(np.searchsorted(ends, env._now - start, side="left")) + 1, s)
            ends = ends[:s]
            dur = float(ends[-1])
            self._run = (nb, s, times[:s], first)
            yield env.timeout(max(start + dur - env._now, 0.0))
        self._fast_forward = False
        return dur

    def _mixed_begin(self, pre: list[int], pq: list[int], nb: int) -> float:
        """Price a mixed iteration (prefill chunks of ``pre``, and the ``nb`` decoding requests)
        and note what its end needs; returns its seconds."""
        kv_pre, rows, dec_sum, longest = self._mixed_gather(pre, pq, nb)
        if nb or len(pq) != 1:
            dur = self._step_time(pq, kv_pre, nb, dec_sum, longest, rows)
        else:
            # the time of a step prefilling one prompt is a pure function of (tokens, cached
            # tokens, rows), and prompt lengths repeat: memoised (bounded)
            memo = self._prefill_memo
            key = (pq[0], kv_pre[0], rows)
            dur = memo.get(key)  # type: ignore[assignment]
            if dur is None:
                if len(memo) >= 100_000:
                    memo.clear()
                dur = memo[key] = self._step_time(pq, kv_pre, nb, dec_sum, longest, rows)
        if self.cost.tp > 1:
            self.stage_comm[0] += self.cost.comm_time(int(sum(pq)) + nb)
        return dur

    def _mixed_gather(self, pre: list[int], pq: list[int], nb: int) -> tuple[list[int], int, int, int]:
        """What pricing a mixed iteration reads: the prefill chunks' cached tokens, the logits
        rows, the decoding requests' context sum and longest context; notes what its end needs
        and the longest contexts attended."""
        t = self.table
        kv_pre: list[int] = []
        completes: list[bool] = []
        rows = nb  # logits rows: the decodes and the prefills that complete
        top = 0  # the longest context a prefill chunk attends
        for k, i in enumerate(pre):
            kv = int(t.kv_len[i])
            kv_pre.append(kv)
            upto = kv + pq[k]
            done = upto >= int(t.target[i])
            completes.append(done)
            rows += done
            if upto > top:
                top = upto
        mc = self.max_context
        dec_sum = longest = 0
        if nb:
            dec_sum, longest = self._decode_shape(nb)
        if top > mc["attn_prefill"]:
            mc["attn_prefill"] = top
        self._mixed_ctx = (kv_pre, completes)
        return kv_pre, rows, dec_sum, longest

    def _mixed_end(self, start: float, pre: list[int], pq: list[int], nb: int) -> None:
        """Apply a mixed iteration that ran from ``start`` to now."""
        t = self.table
        now = self.env._now
        kv_pre, completes = self._mixed_ctx
        kvm = self.kv
        self.log.add(self.index, start, now, 1, int(sum(pq)), nb, len(pq) + nb, kvm.in_use if self._cached else kvm.used)
        finished: list[int] = []
        done_pre: list[tuple[int, int, int]] = []  # (request, KV tokens, generated)
        for k, i in enumerate(pre):
            kv = t.kv_len[i] = kv_pre[k] + pq[k]
            if completes[k]:
                done_pre.append((i, kv, 0))
                t.target[i] = kv
        if done_pre:
            gone = {i for i, _, _ in done_pre}
            self.prefilling = [i for i in self.prefilling if i not in gone]
            for k, (i, kv, _) in enumerate(done_pre):
                ft = t.first_token[i]
                if ft != ft:  # NaN: the request's first token
                    t.first_token[i] = now
                else:
                    self.tbt.push1(now - float(t.last_token[i]), 1.0)
                g = int(t.gen[i]) + 1
                t.gen[i] = g
                t.last_token[i] = now
                done_pre[k] = (i, kv, g)
            if self._cached:
                # the completed prompts' blocks become prefix-cache entries, in the reference's
                # order, before they join the decode set (which counts the blocks they share)
                for i, _, _ in done_pre:
                    self._publish_prefix(i)
        if nb:
            self._tbt_groups(now)
            self._D += 1
            self._last_dec = now
            self._fresh = {}
            # no valid entry is due when the heap's top finishes later (_pop_finished would only
            # drop stale entries, which the heap's readers skip anyway)
            dec_done = self._pop_finished() if self._fin[0][0] <= self._D else []
        else:
            dec_done = []
        for i, kv, g in done_pre:
            if g >= t.output[i] or self._prefill_role:
                finished.append(i)
            else:
                self._join(i, kv, g, now)
        finished.extend(dec_done)
        if finished:
            self._finish(finished)

    def _decode_begin(self, nb: int) -> float:
        """Price a run of decode iterations of the whole decode set (``nb`` requests), up to the
        first of: a request finishes, the KV cache lacks a block, the step that reaches the next
        arrival; allocate its blocks and note what its end needs; returns its seconds."""
        clock = self._D
        info = self._info
        # the tops of the finishing and longest-context heaps, when valid (the usual case; else
        # the methods drop the stale entries first)
        f, i = self._fin[0]
        e = info.get(i)
        s = (f if e is not None and e[6] == f else self._top_finish()) - clock
        neg, i = self._long[0]
        e = info.get(i)
        longest = (-neg if e is not None and e[0] == -neg else self._longest_offset()) + clock
        bs = self.cfg.block_size
        kvm = self.kv
        avail = kvm.available if self._cached else kvm.num_blocks - kvm.used  # inlined without a cache
        if nb * (s // bs + 1) > avail and self._growth_to(clock + s) > avail:
            lo, hi = 1, s
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self._growth_to(clock + mid) <= avail:
                    lo = mid
                else:
                    hi = mid - 1
            s = lo
        cost = self.cost
        if self.swapped:
            # requests wait in swap space: one iteration at a time, not cut at an arrival (the
            # reference's "exact" decode run)
            s = 1
            ta = float("inf")
        elif not self._arrival_cut:
            ta = float("inf")  # static batching: the batch decodes until a request finishes
        else:
            ta = self.next_arrival() - self.env._now
        if ta < float("inf"):
            fixed = cost.fixed_step_time(nb)
            if fixed > 0:
                s = min(s, max(int(ta / fixed) + 2, 1))
        kv0 = float(self._sum_off + nb * clock)
        # a run of a few dozen steps on scalars, stopping at the step that reaches the next
        # arrival (the cut below, made as the steps are priced)
        few = cost.decode_step_times(nb, kv0, s, float(longest), ta) if s <= 64 else None
        if few is not None:
            times, ends_l = few
            s = len(times)
            first, dur = ends_l[0], ends_l[-1]
            self._ends = ends_l
        elif s == 1:
            times = cost.decode_steps(nb, kv0, s, float(longest), self._contexts())
            first = dur = float(times[0])  # np.cumsum of one value is that value
        else:
            times = cost.decode_steps(nb, kv0, s, float(longest), self._contexts())
            ends = np.cumsum(times)
            if ta < float(ends[-1]):
                j = int(np.searchsorted(ends, ta, side="left"))
                s = min(s, j + 1)
                ends = ends[:s]
                times = times[:s]
            first, dur = float(ends[0]), float(ends[-1])
            self._ends = ends
        if clock + s > self._Xa or self._late:  # else the blocks are allocated already
            self._alloc_to(clock + s)
        mc = self.max_context
        if longest + s > mc["attn_decode"]:
            mc["attn_decode"] = longest + s
        if cost.tp > 1:
            self.stage_comm[0] += cost.comm_time(nb) * s
        self._run = (nb, s, times, first)
        return dur

    def _decode_end(self, start: float, dur: float) -> None:
        """Apply a decode run that ran from ``start`` to now (``dur`` seconds of compute)."""
        nb, s, times, first = self._run
        now = self.env._now
        kvm = self.kv
        self.log.add(self.index, start, now, s, 0, nb, nb, kvm.in_use if self._cached else kvm.used)
        extra = max((now - start) - dur, 0.0)
        self._tbt_groups(start + first + extra)
        if s > 1:
            self.tbt.push(times[1:], float(nb))
        clock = self._D = self._D + s
        self._last_dec = now
        self._fresh = {}
        if self._fin[0][0] <= clock:  # else nothing is due (as in _mixed_end)
            done = self._pop_finished()
            if done:
                self._finish(done)
