"""The fused serving loop: a whole run of fast engines (one per replica) in one function.

:class:`~simkit.engine.fast.FastEngine` on :class:`~simkit.engine.cluster.FastWorld` already
makes the reference engine's decisions with running totals, but an iteration still crosses a
dozen Python calls (the policy's hook, admission, pricing, block growth, histogram, log, world
heap). :func:`run_fused` makes the same decisions, in the same order, on local variables:

- each replica's serving loop is one generator (:func:`_replica`) whose locals are the replica's
  state; it runs a step's decision, pricing and bookkeeping inline and yields only where the
  stepping path would schedule an event: the end of a step that something else is scheduled
  at or before (``FastEngine._advance``; a step that ends strictly first moves the clock in the
  generator), or an idle wait;
- the world's heap is FastWorld's: the arrival process's next wake (scheduled as FastWorld
  schedules it, ``now + (arrival - now)``), each replica's pending step end or wake-up, ordered
  by time, then by the order they were scheduled in (SimPy's order: a replica woken by an
  arrival is scheduled while the arrival is handled, before the arrival process's next wait);
- the arrival process and the router run in the driver (:func:`run_fused`): the front door's
  verdicts, then ``round_robin`` (replicas in turn) or ``least_outstanding`` (the fewest
  requests queued or running, lowest index on ties; ``prefix_aware`` is the same without a
  prefix cache, and the fast path has none), among the replicas whose pool holds the request
  (a fleet's groups differ); the counts the router reads are the replicas' own, kept as they
  change (queued by the driver, finished or never fitting in the replica's loop); a replica
  alone runs the arrival process in its own loop instead (the router has one choice), so that
  no step or arrival crosses a generator boundary;
- the policies' decisions (``ContinuousBatching._decide``, ``ChunkedPrefill._decide``) and
  admission (``FastEngine.admit``) are written out on the loop's variables;
- the decode set is the fast engine's running totals (KV offsets from a decode clock, a heap of
  finishing clocks, a heap of offsets for the longest context, block growth counted per residue
  of each request's first block boundary);
- a decode run is priced by the scalar loop of :meth:`IterationModel.decode_step_times`
  inlined (the same operations in the same order, less those that cannot change a value: the
  compute term where it is never above the memory term, :func:`_memory_bound`, and the longest
  context's floor where its last value is at most the first step's tokens; with a fitted
  decode-attention efficiency, by :meth:`IterationModel.decode_steps` as the stepping path
  does), cut at the step that reaches
  the next arrival (whichever replica it goes to), a step with prefill chunks by
  :meth:`IterationModel.mixed_step_time` inlined on the constants it exposes
  (``prefill_constants``, ``decode_constants``, ``scalar_tables``; the same operations in the
  same order), else as the fast engine prices it (``FastEngine._step_time``: a one-token chunk
  over a cache, a step beyond the tables, no closed form), memoised for one prompt alone;
- a chunk chain (chunked prefill): while the step is one prompt's chunk alone with the decode
  set (the first admitted prompt's, taking the whole budget or completing with nothing else to
  chunk or admit; with none admitted, the first waiting prompt's, admitted alone), one inner
  loop decides it (the decode set's blocks, the chunk, the admission), prices it (the inline
  form above, with what depends only on the decode set's size or the chunk computed once) and,
  while it ends strictly before the earliest scheduled event (on a replica alone, with the
  arrival process run during it), ends it (finishes in the decode set, the prompt's first token
  and its joining the decode set); the next step's decision then continues the chain (with
  nothing ended, the same prompt's next chunk, without the general decision), and a step that
  does not end first (several replicas) or a decision the chain does not make (two prompts'
  chunks, a decode run, a one-token chunk over a cache, a batch size not yet memoised) goes to
  the general code;
- the KV level is integrated at the instants the block manager would integrate it, and the
  inter-token gaps (one histogram for all replicas) go through its buffer flushed at the same
  points, in the same order across replicas.

Every float is produced by the same operations in the same order as on the stepping path, so
every per-request time, histogram bin, iteration row and counter is the same bits; the few
values the stepping path holds as numpy floats (SimPy's clock after an arrival's wake, every
time a replica computes from it once such a wake has resumed it, and the KV integral computed
from those) are given that type at the end. ``tests/test_lean.py`` checks all of it against the
stepping fast path and the reference engine.

Domain (:func:`fused_loop_reason`, decided when the deployment is built): a plan the stepping
fast path covers (one fast engine per replica, any number of replicas, a fleet of GPU types),
with ``continuous`` or ``chunked_prefill`` batching and a router in :data:`ROUTERS`. Within it,
a run that meets something the loop does not model (a decode step whose KV blocks do not fit,
where the stepping path preempts; a prompt of no tokens) stops and writes nothing: the caller
runs the same scenario on the stepping path (deterministic, so the result is the one the stepping
path gives) and ``engine_path`` says so.
"""

from __future__ import annotations

import heapq
from array import array
from collections import deque
from collections.abc import Generator
from typing import TYPE_CHECKING

import numpy as np

from simkit.engine.state import TBTHistogram

if TYPE_CHECKING:
    from simkit.cost.iteration import IterationModel
    from simkit.engine.cluster import Cluster
    from simkit.engine.fast import FastEngine

INF = float("inf")

PREEMPTION = "a decode step short of KV blocks (preemption)"
BEYOND = "a sequence joining with its first block boundary beyond a block past the allocated clock"

ROUTERS = {"round_robin": False, "least_outstanding": True, "prefix_aware": True}
"""The routing policies the fused loop runs -> whether it picks the least outstanding replica
(else replicas in turn). ``prefix_aware`` breaks ties of its prefix hits by least outstanding,
and with no prefix cache (none on the fast path) every hit is 0."""


def fused_loop_reason(policy: str, routing: str) -> str | None:
    """None when :func:`run_fused` covers a plan the stepping fast path covers (one engine per
    replica), else why the stepping path runs it."""
    if policy not in ("continuous", "chunked_prefill"):
        return f"batching policy {policy}"
    if routing not in ROUTERS:
        return f"routing {routing}"
    return None


def _growth(upto: int, xa: int, n_active: int, cnt: list[int], pend: int, bs: int) -> int:
    """Blocks the decode set gains from clock ``xa`` (allocated up to) to ``upto``
    (FastEngine._growth_to on the loop's state: ``pend`` sequences whose first block boundary is
    ``xa + bs``, the others counted by residue, see ``pend`` in :func:`_replica`)."""
    if upto <= xa:
        return 0
    L = upto - xa
    g = n_active * (L // bs)
    r = L % bs
    if r:
        # the residues xa, xa+1, ..., xa+r-1 (mod bs): one slice, or two where they wrap
        lo = xa % bs
        hi = lo + r
        g += sum(cnt[lo:hi]) if hi <= bs else sum(cnt[lo:]) + sum(cnt[: hi - bs])
    if pend and upto > xa + bs:
        # FastEngine's pending requests: -(-(upto - n0) // bs) each, n0 = xa + bs below upto
        g += pend * -(-(L - bs) // bs)
    return g


def _dec_memo(cost: IterationModel, nb: int) -> tuple:
    """What the loop memoises per decode batch size: (IterationModel.decode_constants(nb) and
    fixed_step_time(nb), or None without the closed form; fixed_step_time(nb); whether the
    attention's memory term is never below its compute term, :func:`_memory_bound`; where it is
    and the memory term has an integer form (:func:`_integral`), what a decode run's steps are
    priced with then: ``(c1 + c3, K = 2.0 * kvh * d * kb, ratio, cb, ov, fixed, float(nb) * K, the
    most attended tokens kv with c1 + c3 + kv * K below 2**53)``, else None; float(nb))."""
    c0 = cost.decode_constants(nb)
    fixed = cost.fixed_step_time(nb)
    if c0 is None:
        return None, fixed, False, None, float(nb)
    mb = _memory_bound(c0)
    ik = _integral(c0) if mb else None
    if ik is None:
        lin = None
    else:
        c13, k = ik
        lin = (c13, k, c0[3], c0[8], c0[9], fixed, float(nb) * k, _kv_max(c13, k))
    return (*c0, fixed), fixed, mb, lin, float(nb)


_EXACT = 9007199254740992.0
"""2**53: every whole number below it is a float, and a sum or product of two such whole numbers
with a result below it is exact."""


def _kv_max(c13: float, k: float) -> float:
    """The most attended tokens ``kv`` (whole) with ``c13 + kv * k`` below 2**53, for the whole
    numbers :func:`_integral` returns (computed in integers: exact); inf where ``k`` is 0."""
    return INF if k == 0.0 else float((2**53 - 1 - int(c13)) // int(k))


def _integral(c: tuple) -> tuple[float, float] | None:
    """``(c1 + c3, 2.0 * kvh * d * kb)`` when decode attention's memory term with the constants
    ``c`` (IterationModel.decode_constants), ``(c1 + 2.0 * kv * kvh * d * kb + c3) * cb``, is a
    sum of whole numbers for whole ``kv``: ``c1``, ``c3``, ``kvh``, ``d`` and ``kb`` whole,
    non-negative and finite (and ``2.0 * kvh * d * kb`` below 2**53); else None.

    Then, for a whole ``kv >= 0`` with ``U = c1 + c3 + kv * K`` (``K`` the second value) below
    2**53, every intermediate of ``c1 + 2.0 * kv * kvh * d * kb + c3`` is a whole number from 0 to
    ``U`` (each factor is 0 or at least 1, so a partial product is at most the whole product, or
    0 from a zero factor on), hence exact, and the sum is ``U``; ``(c1 + c3) + kv * K`` is ``U``
    too, and so is a running sum ``U0 + j * (fb * K)`` of such whole numbers below 2**53: the loop
    keeps ``U`` for a decode run's steps and multiplies it by ``cb`` (the same float as the
    original expression's parenthesis, then the same operations). The caller checks the run's
    last ``U`` against 2**53 (rounding is monotone: a true value at or above 2**53 never rounds
    below it, one below it is exact)."""
    c1, c3 = c[1], c[2]
    kvh, d, kb = c[4:7]
    for v in (c1, c3, kvh, d, kb):
        if not (0 <= v < _EXACT) or not float(v).is_integer():
            return None
    k = 2.0 * kvh * d * kb
    c13 = c1 + c3
    if not (k < _EXACT and c13 < _EXACT):
        return None
    return c13, k


def _memory_bound(c: tuple) -> bool:
    """Whether decode attention with the constants ``c`` (IterationModel.decode_constants) has
    ``b >= a`` in floats for every attended-token count ``kv >= 0``, where
    ``a = f4 * kv * cf`` (compute) and ``b = (c1 + 2.0 * kv * kvh * d * kb + c3) * cb`` (memory),
    so that ``b if b > a else a`` is ``b`` (equal floats being the same bits).

    Sufficient: every factor finite and non-negative and ``2 kvh d kb cb >= f4 cf (1 + 1e-9)``.
    Then, ``u = 2**-53`` being the unit roundoff and rounding being monotone, the float ``b`` is at
    least ``(2 kv kvh d kb)(1-u)**3 cb (1-u) >= kv * 2 kvh d kb cb (1-u)**4`` (adding ``c1, c3 >= 0``
    does not lower it) and the float ``a`` at most ``kv f4 cf (1+u)**2``; the margin 1e-9 (which
    also covers this test's own roundings) exceeds the ~6u between them. Tokens counts are at
    least 1 and the constants far from the subnormal range, where relative bounds would fail
    (checked: a nonzero factor or product below :data:`_TINY` is refused)."""
    f4, c1, c3, ratio, kvh, d, kb, cf, cb = c[:9]
    for v in (f4, c1, c3, kvh, d, kb, cf, cb):
        if not (0.0 <= v < INF):
            return False
    if ratio is not None and not (0.0 <= ratio < INF):
        return False
    mem, comp = 2.0 * kvh * d * kb * cb, f4 * cf
    for v in (f4, kvh, d, kb, cf, cb, mem, comp):
        if 0.0 < v < _TINY:  # near the subnormal range relative error bounds fail: no claim
            return False
    return mem >= comp * (1.0 + 1e-9)


_TINY = 1e-150
"""Nonzero factors and products of :func:`_memory_bound` below this are refused: any product of
two of them stays a normal float (> 1e-300), so the relative rounding bounds of its proof hold."""


def _tbt_fresh(hist: TBTHistogram, vals: list[float], wts: list[float], t: float, last_dec: float, nb: int,
               fresh: list[tuple[float, int]]) -> tuple[list[float], list[float]]:
    """FastEngine._tbt_groups(t) when sequences joined the decode set since its last step
    (``fresh``: their first-token time and count): the older sequences' gap since ``last_dec``,
    then each newcomer's, through the histogram's buffer as TBTHistogram.push1 does. Returns the
    buffer's lists (a flush replaces them). The common case, no newcomers, stays inline in
    :func:`run_fused`."""
    buf = hist.BUF
    n_old = nb
    for e in fresh:
        n_old -= e[1]
    if n_old:
        if len(vals) >= buf:
            hist.flush()
            vals, wts = hist._vals, hist._wts
        vals.append(t - last_dec)
        wts.append(float(n_old))
    for lt, c in fresh:
        if len(vals) >= buf:
            hist.flush()
            vals, wts = hist._vals, hist._wts
        vals.append(t - lt)
        wts.append(float(c))
    return vals, wts


Resume = tuple[float, float, float]
"""What the driver sends a replica's loop when it resumes it: the time (of its step's end or
wake-up), the next arrival not yet arrived (``Cluster.next_arrival()``), and the time of the
earliest event then scheduled (``FastWorld.peek()``)."""


def _replica(
    engine: FastEngine,
    waiting: deque[int],
    outst: list[int],
    shared: tuple[list[int], list[int], array, array, array, list[int], list[int], list[int], TBTHistogram, list[tuple]],
    clock: list,
    arrivals: tuple[list[float], list[int], list[int]] | None,
) -> Generator[float | None, Resume | None, str | None]:
    """The serving loop of the replica ``engine`` serves (continuous or chunked-prefill batching)
    on local variables. It yields the end of a step that does not end strictly before the
    earliest scheduled event (the driver schedules it and resumes the loop there), or None to wait
    idle until the driver wakes it (a request queued in ``waiting``); it is resumed with a
    :data:`Resume`, and ends when sent None while idle (the run is over: it writes its counters
    and KV integrals to ``engine``) or when it meets something it does not model (it returns why,
    having written nothing).

    ``outst[engine.index]``: the replica's outstanding requests, as the router reads them (the
    driver adds those it queues). ``shared``: the prompt and output lengths, the admission,
    first-token and finish times, blocks at admission, prompt tokens prefilled (chunked),
    requests that never fit, the inter-token histogram and the iteration log, all of them
    indexed by request or appended in event order. ``clock``: [whether SimPy's clock is numpy
    (an arrival's wake has fired), the time of the last event, whether it is a numpy float,
    requests queued (alone)].

    ``arrivals``: on a replica alone, the arrival times in order (and inf), request ids and
    front-door verdicts: the loop is then the whole world (the router has one choice), and runs
    the arrival process itself between its steps, as the lone replica's world would (the driver
    only starts it and collects it), so that no step or arrival crosses a generator boundary."""
    inp, out, sched, first_tok, finish, blocks_at_admit, kvp, never_fits, hist, rows = shared
    cost = engine.cost
    kvm = engine.kv
    policy = engine.policy
    chunked = policy.name == "chunked_prefill"
    max_seqs = int(policy.max_num_seqs)  # type: ignore[attr-defined]
    max_tokens = int(policy.max_tokens) if not chunked else 0  # type: ignore[attr-defined]
    chunk_budget = int(policy.budget) if chunked else 0  # type: ignore[attr-defined]
    num_blocks = kvm.num_blocks
    bs = kvm.block_size
    wm = kvm.watermark_blocks
    # the integer factors every step multiplies by, as the floats float arithmetic converts them
    # to (float * int converts the int exactly as float() does): the same products, without
    # int-float mixed operations (CPython's slow path for them) in the loop
    gpus = float(engine.cfg.num_gpus)
    index = ri = engine.index
    tp = cost.tp
    comm_time = cost.comm_time
    step_time = engine._step_time
    mixed_step_time = cost.mixed_step_time
    pre_c = cost.prefill_constants()
    host_fixed = cost.iteration_overhead
    host_seq = cost.per_seq_overhead
    decode_steps = cost.decode_steps
    layers = float(cost.layers)
    log_on = engine.log.enabled
    add_row = rows.append

    # the KV block manager: blocks in use, their peak, and their integral over time (integrated
    # at each change, as KVBlockManager._mark does)
    used = 0
    peak = 0
    area = 0.0
    t_mark = 0.0
    # engine counters, accumulated in the stepping path's order
    busy = 0.0
    busy_gpu = 0.0
    stage_comm = 0.0
    mc_pre = 0
    mc_dec = 0
    # the inter-token histogram's buffer (re-read at every resume: another replica may have
    # flushed it), flushed where TBTHistogram's would be
    BUF = hist.BUF

    # the decode set (FastEngine's running totals)
    D = 0
    Xa = 0
    info: dict[int, tuple[int, int, int]] = {}
    """request -> (offset, n0, blocks at join)."""
    sum_off = 0
    fin_heap: list[int] = []
    fin_at: dict[int, list[int]] = {}
    """The decode set's finishing clocks, each once (a heap of ints: FastEngine's heap of
    (clock, request) pairs without the pairs' comparisons), and each one's requests in the order
    they joined; the requests finishing at one clock are handled in that order instead of by
    request index: each adds integers to the step's sums and writes its own row, so the order
    changes no value."""
    long_heap: list[tuple[int, int]] = []
    cnt = [0] * bs
    n_active = 0
    pend = 0
    """Sequences of the decode set whose first block boundary ``n0`` is ``Xa + bs`` (FastEngine's
    ``_pending``, less those it holds with ``n0 < Xa + bs``: those are counted in ``cnt`` at once).
    FastEngine counts a sequence by the residue ``n0 % bs`` from ``Xa >= n0`` on, and before that
    adds ``-(-(upto - n0) // bs)`` (its boundaries in ``[n0, upto)``) to the growth up to ``upto``;
    the residue's count is the boundaries ``x = n0 (mod bs)`` in ``[Xa, upto)``, the same ones
    when ``n0 - bs < Xa`` (the first such ``x`` is ``n0`` itself), and ``Xa`` only grows. A
    sequence joins with ``n0 - D`` in ``[1, bs]`` (its blocks hold its prompt and one token more)
    and ``Xa >= D``, so only ``n0 = Xa + bs`` waits: for the first advance of ``Xa``, which moves
    all of them (of one residue, ``Xa % bs``) into ``cnt``; a sequence is counted in ``cnt`` iff
    ``n0 < Xa + bs``."""
    fresh: list[list] = []
    """[last-token time, count] of the requests that joined since the last decode step."""
    last_dec = 0.0
    prompt_memo: dict[int, float] = {}
    """prompt tokens -> seconds of a continuous-batching step prefilling that prompt alone."""
    prefill_memo: dict[tuple[int, int, int], float] = {}
    """(tokens, cached tokens, logits rows) -> seconds of a step prefilling one prompt alone."""
    dec_memo: dict[int, tuple] = {}
    """batch -> (IterationModel.decode_constants(batch) and fixed_step_time(batch), or None
    without the closed form; fixed_step_time(batch))."""
    prefilling: list[int] = []
    fast = False
    """A chunk chain decided and priced the step (it ends below as any step); set only there, and
    reset where the step reads it last (so false at every decision without a write per step)."""
    """Admitted requests whose prompt is not all prefilled (chunked), in admission order."""

    heappush, heappop = heapq.heappush, heapq.heappop
    nrun = 0
    top = 0
    """(chunked) Tokens of the chunked prompt cached at the end of the step."""

    # SimPy's clock is a numpy float from the first time a wait of the arrival process fires
    # (FastWorld schedules it as SimPy does: ``np.float64``), and so is every time a replica
    # computes from it once a wake-up at such a time has resumed it (its steps' ends, and the
    # clock they set); the same values are Python floats here, and the values the KV manager
    # keeps are given that type at the end (their sums, hence the summary, are then the same
    # objects as the stepping path's)
    np_clock = False
    marks = 0
    """Changes of the KV level (each integrates it up to the change's time)."""
    marks_at_switch = -1
    # time 0: the engine starts idle (nothing is queued before the arrival process runs)
    now = 0.0
    nxt = peek = INF
    vals = hist._vals
    wts = hist._wts
    alone = arrivals is not None
    if arrivals is not None:
        # the arrival process (as in the driver): the next arrival to handle, its pending wait
        # (its start at time 0 handles the arrivals due then, else waits for the first), and
        # what Cluster.next_arrival() returns
        at, ids, codes = arrivals
        n = len(ids)
        ak = 0
        aw = peek = (at[0] if at[0] > 0 else 0.0) if n else INF
        nxt = at[0]
    while True:
        if not nrun and not waiting:
            if alone:
                # idle: the arrival process runs until it queues a request (the engine's wake-up
                # is scheduled then, before the process's next wait, so the engine resumes at once)
                woke = False
                while not woke and aw < INF:
                    now = aw
                    if not np_clock and now > 0:
                        np_clock = True  # a wait of the arrival process fired: a numpy float clock
                        marks_at_switch = marks
                    # the arrival its wait was for, then every later one already due
                    nxt = at[ak + 1]
                    if not codes[ak]:
                        waiting.append(ids[ak])
                        woke = True
                    ak += 1
                    aw = INF
                    while ak < n:
                        dt = at[ak] - now
                        if dt > 0.0:
                            aw = now + dt
                            break
                        nxt = at[ak + 1]
                        if not codes[ak]:
                            waiting.append(ids[ak])
                            woke = True
                        ak += 1
                peek = aw
            if not waiting:
                clock[1] = now
                clock[2] = np_clock
                if alone:
                    # every arrival has been handled (an idle replica alone waits only at the end)
                    clock[3] = codes.count(0)
                msg = yield None
                if msg is None:
                    break  # the run is over
                now, nxt, peek = msg
                if not np_clock and clock[0]:
                    np_clock = True
                    marks_at_switch = marks
                vals = hist._vals
                wts = hist._wts

        # ---- the policy's decision -------------------------------------------------------------
        nb = len(info)
        if chunked and nb and (prefilling or waiting) and pre_c is not None:
            # ---- a chunk chain: while the step is the first admitted prompt's chunk alone with the
            # decode set (it takes the whole budget, or completes with nothing else to chunk and
            # nothing to admit) or, with none admitted, the first waiting prompt's (it takes the
            # whole budget, or nothing else waits or could be admitted): ChunkedPrefill._decide,
            # the inline price of the step (IterationModel.mixed_step_time's operations in the
            # same order, as below), and, while it ends strictly before the earliest scheduled
            # event (or, alone, with the arrival process run during it as below),
            # FastEngine._advance and _mixed_end; a step that does not end first goes on below
            # as any step, and a decision that is not such a step is made below (with the decode
            # set's blocks already reserved here, the decision's reservation adds none)
            f4p, heads, kvh, d, ab, kb, cf, cb, ov = pre_c
            body, head = cost.scalar_tables
            n_body, n_head = len(body), len(head)  # (the chain computes no step that grows them)
            nb_q = q_tok = 0
            cont = False
            """The step is the same prompt's next chunk unless it ends the prompt (the last step
            ended nothing: the decode set and the budget are the same)."""
            while True:
                if not cont:
                    budget = chunk_budget - nb
                    if budget <= 0:
                        break
                    if prefilling:
                        i = prefilling[0]
                        c0 = kvp[i]
                        rem = inp[i] - c0
                        if rem < budget and (len(prefilling) > 1 or (waiting and nrun < max_seqs)):
                            break
                        admit = False
                    elif waiting and nrun < max_seqs:
                        i = waiting[0]
                        rem = inp[i]
                        if rem < budget and len(waiting) > 1 and nrun + 1 < max_seqs:
                            break
                        c0 = 0
                        admit = True
                    else:
                        break  # (a decode run)
                    ntok = rem if rem <= budget else budget
                    if ntok == 1 and c0:
                        break
                    memo = dec_memo.get(nb)
                    if memo is None or memo[0] is None or n_body <= ntok + nb or n_head <= nb + 1:
                        break  # (below: the memo made, the tables grown, or no closed form)
                    consts = memo[0]
                    neg, j = long_heap[0]
                    while j not in info:
                        heappop(long_heap)
                        neg, j = long_heap[0]
                    longest = D - neg
                else:
                    c0 = top
                    rem = inp[i] - c0
                    if rem < budget and (len(prefilling) > 1 or (waiting and nrun < max_seqs)):
                        break
                    ntok = rem if rem <= budget else budget
                    if ntok == 1:
                        break  # (a one-token chunk over a cache: priced as a decode, below)
                    admit = False
                    longest = D - long_heap[0][0]  # (no sequence has left: the heap's top is current)
                # the decode set's next step's blocks (FastEngine.decode_ready: at a decision the
                # blocks are allocated up to the decode clock, Xa == D, so the step's are those of
                # the residue D, _growth(D + 1) as above), then the admission
                total = cnt[D % bs]
                if total:
                    if total > num_blocks - used:
                        return PREEMPTION
                    area += (now - t_mark) * used
                    t_mark = now
                    marks += 1
                    used += total
                    if used > peak:
                        peak = used
                if pend:
                    # Xa advances (from D): the sequences waiting at D + bs are counted
                    cnt[Xa % bs] += pend
                    n_active += pend
                    pend = 0
                Xa = D + 1
                if admit:
                    nblk = -(-(rem + 1) // bs)
                    if used > num_blocks - nblk - wm:
                        break
                    area += (now - t_mark) * used
                    t_mark = now
                    marks += 1
                    used += nblk
                    if used > peak:
                        peak = used
                    blocks_at_admit[i] = nblk
                    sched[i] = now
                    nrun += 1
                    waiting.popleft()
                    prefilling.append(i)
                top = c0 + ntok
                done1 = top >= inp[i]
                if longest + 1 > mc_dec:
                    mc_dec = longest + 1
                if top > mc_pre:
                    mc_pre = top
                # the price (FastEngine._step_time: IterationModel.mixed_step_time inlined, as below)
                if nb != nb_q:
                    # what depends on the decode set's size alone
                    nb_q = nb
                    f4, c1, c3, ratio, kvh_, d_, kb_, cf_, cb_, ov_, _, _ = consts
                    mb = memo[2]  # (the memo of this nb: a new size comes with a new decision)
                    host = host_fixed + host_seq * (1 + nb)
                    fb = memo[4]  # float(nb)
                if ntok != q_tok:
                    # what depends on the chunk alone (the same products, in the same order)
                    q_tok = ntok
                    tri = ntok * (ntok + 1) // 2
                    b1 = 2.0 * ntok * heads * d * ab
                    b3 = 2.0 * ntok * kvh * d * kb
                t = body[ntok + nb] + head[nb + done1]
                # the attended tokens (an integer below 2**53) plus fb = float(nb): the float the
                # stepping path's integer converts to, without a mixed compare and product below
                kv = sum_off + nb * D + fb
                if ratio is not None:
                    y = (longest + 1.0) * ratio
                    if y > kv:
                        kv = y
                if mb:
                    # the memory term is never below the compute term (_memory_bound): ``b``
                    total = 0.0 + ((c1 + 2.0 * kv * kvh_ * d_ * kb_ + c3) * cb_ + ov_) * layers
                else:
                    a = f4 * kv * cf_
                    b = (c1 + 2.0 * kv * kvh_ * d_ * kb_ + c3) * cb_
                    total = 0.0 + ((b if b > a else a) + ov_) * layers
                fc = f4p * (ntok * c0 + tri) * cf
                bc = (b1 + 2.0 * top * kvh * d * kb + b3) * cb
                total += ((bc if bc > fc else fc) + ov) * layers
                dur = t + total + host
                if tp > 1:
                    stage_comm += comm_time(ntok + nb)
                # the step (FastEngine._advance)
                start = now
                end = now + dur
                if end < peek:
                    now = end
                elif alone:
                    # the arrival process runs during the step (as below)
                    if aw <= end:
                        while True:
                            now = aw
                            nxt = at[ak + 1]
                            if not codes[ak]:
                                waiting.append(ids[ak])
                            ak += 1
                            aw = INF
                            while ak < n:
                                dt = at[ak] - now
                                if dt > 0.0:
                                    aw = now + dt
                                    break
                                nxt = at[ak + 1]
                                if not codes[ak]:
                                    waiting.append(ids[ak])
                                ak += 1
                            if not aw < end:
                                break
                    peek = aw
                    now = end
                else:
                    fast = True
                    pre = [i]
                    break
                busy += dur
                if gpus != 1.0:
                    busy_gpu += dur * gpus
                # FastEngine._mixed_end
                if log_on:
                    add_row((index, start, now, 1, ntok, nb, 1 + nb, used))
                kvp[i] = top
                if done1:
                    first_tok[i] = now
                    del prefilling[0]  # (i: the first)
                if not fresh:
                    if len(vals) >= BUF:
                        hist.flush()
                        vals, wts = hist._vals, hist._wts
                    vals.append(now - last_dec)
                    wts.append(fb)
                elif len(fresh) == 1 and len(vals) + 2 <= BUF:
                    # one group joined since (no flush on the way): _tbt_fresh's values inline
                    lt, c = fresh[0]
                    fresh = []
                    if nb > c:
                        vals.append(now - last_dec)
                        wts.append(float(nb - c))
                    vals.append(now - lt)
                    wts.append(float(c))
                else:
                    vals, wts = _tbt_fresh(hist, vals, wts, now, last_dec, nb, fresh)
                    fresh = []
                D += 1
                last_dec = now
                cont = fin_heap[0] > D and not done1
                if cont:
                    continue
                n_fin = 0
                if fin_heap[0] <= D:
                    # FastEngine._pop_finished
                    freed = 0
                    while True:
                        for j in fin_at.pop(heappop(fin_heap)):
                            off, n0, nblk = info.pop(j)
                            sum_off -= off
                            if n0 < Xa + bs:
                                cnt[n0 % bs] -= 1
                                n_active -= 1
                            else:
                                pend -= 1
                            x_ = Xa - n0
                            freed += nblk + (-(-x_ // bs) if x_ > 0 else 0)
                            finish[j] = now
                            n_fin += 1
                        if not (fin_heap and fin_heap[0] <= D):
                            break
                if done1:
                    if out[i] <= 1:
                        finish[i] = now
                        if not n_fin:
                            freed = 0
                        freed += blocks_at_admit[i]
                        n_fin += 1
                    else:
                        # FastEngine._join with kv = the prompt, one token generated
                        off = inp[i] - D
                        nblk = blocks_at_admit[i]
                        n0 = nblk * bs - off
                        info[i] = (off, n0, nblk)
                        sum_off += off
                        c = D + out[i] - 1
                        if c in fin_at:
                            fin_at[c].append(i)
                        else:
                            fin_at[c] = [i]
                            heappush(fin_heap, c)
                        heappush(long_heap, (-off, i))
                        if n0 < Xa + bs:
                            cnt[n0 % bs] += 1
                            n_active += 1
                        elif n0 == Xa + bs:
                            pend += 1
                        else:
                            return BEYOND
                        if len(long_heap) > 2 * len(info) + 64:
                            long_heap[:] = [(-e[0], r) for r, e in info.items()]
                            heapq.heapify(long_heap)
                        fresh.append([now, 1])
                if n_fin:
                    # FastEngine._finish: the blocks of all of them released in one call
                    nrun -= n_fin
                    outst[ri] -= n_fin
                    area += (now - t_mark) * used
                    t_mark = now
                    marks += 1
                    used -= freed
                nb = len(info)
                if not nb:
                    break
            if not fast and not nrun and not waiting:
                continue  # (idle: as at the top)
        if fast:
            n_pq = 1  # (the chain's step)
        elif chunked and (prefilling or waiting):
            pre = []
            q = []
            # ChunkedPrefill._decide: the decode set, its next step's blocks reserved
            # (FastEngine.decode_ready), then chunks of the admitted prompts, then admissions; with
            # nothing to prefill, the decode run below reserves them with its later steps' (at the
            # same instant: the KV integral gains (now - now) * used = 0.0 from the second change)
            if nb and (prefilling or waiting):
                free = num_blocks - used
                if nb > free and _growth(D + 1, Xa, n_active, cnt, pend, bs) > free:
                    return PREEMPTION
                upto = D + 1
                total = cnt[Xa % bs] if upto == Xa + 1 else _growth(upto, Xa, n_active, cnt, pend, bs)
                if total:
                    area += (now - t_mark) * used
                    t_mark = now
                    marks += 1
                    used += total
                    if used > peak:
                        peak = used
                if upto > Xa:
                    if pend:
                        cnt[Xa % bs] += pend
                        n_active += pend
                        pend = 0
                    Xa = upto
            budget = chunk_budget - nb
            for i in prefilling:
                if budget <= 0:
                    break
                rem = inp[i] - kvp[i]
                if rem > 0:
                    c = rem if rem <= budget else budget
                    pre.append(i)
                    q.append(c)
                    budget -= c
            while budget > 0 and waiting and nrun < max_seqs:
                i = waiting[0]
                need = inp[i]
                nblk = -(-(need + 1) // bs)
                if used > num_blocks - nblk - wm:
                    break
                area += (now - t_mark) * used
                t_mark = now
                marks += 1
                used += nblk
                if used > peak:
                    peak = used
                blocks_at_admit[i] = nblk
                sched[i] = now
                nrun += 1
                waiting.popleft()
                prefilling.append(i)
                c = need if need <= budget else budget
                pre.append(i)
                q.append(c)
                budget -= c
        elif waiting and nrun < max_seqs:
            # ContinuousBatching._decide: whole prompts, first come first served, within the
            # token budget and the batch limit (FastEngine.admit)
            pre = []
            q = []
            budget = max_tokens
            while waiting and nrun < max_seqs:
                i = waiting[0]
                need = inp[i]
                if need > budget and pre:
                    break
                nblk = -(-(need + 1) // bs)
                if used > num_blocks - nblk - wm:
                    break
                area += (now - t_mark) * used
                t_mark = now
                marks += 1
                used += nblk
                if used > peak:
                    peak = used
                blocks_at_admit[i] = nblk
                sched[i] = now
                nrun += 1
                waiting.popleft()
                pre.append(i)
                q.append(need)
                budget -= need
                if budget <= 0:
                    break
            if pre:
                nb = 0  # a prefill step decodes nothing: decodes run only when nothing is admitted
        else:
            pre = q = ()  # (nothing to admit or chunk)

        start = now
        if fast:
            fast = False  # (priced by the chain; reset where it is read last)
        elif pre:
            # ---- a step of prefill chunks (and, chunked, one decode step): FastEngine._mixed_begin
            n_pq = len(pre)
            if not chunked and n_pq == 1:
                # one whole prompt, nothing cached, one logits row (the usual prefill step of
                # continuous batching): memoised by its length, as FastEngine memoises
                # (tokens, 0, 1)
                ntok = q[0]
                if ntok > mc_pre:
                    mc_pre = ntok
                dur = prompt_memo.get(ntok)  # type: ignore[assignment]
                if dur is None:
                    dur = prompt_memo[ntok] = step_time(q, [0], 0, 0, 0, 1)
                if tp > 1:
                    stage_comm += comm_time(ntok)
            else:
                # the chunks' tokens, their prompt-attention pairs and cached tokens (integers:
                # exact in any order), and whether one is a one-token chunk over a cache (priced
                # as a decode: the array form's)
                one_tok = False
                if chunked and n_pq == 1:
                    i = pre[0]
                    c0 = kvp[i]
                    ntok = q[0]
                    top = c0 + ntok
                    done1 = top >= inp[i]
                    rows_ = nb + done1
                    pairs = ntok * c0 + ntok * (ntok + 1) // 2
                    ctx_sum = c0
                    one_tok = ntok == 1 and c0 > 0
                else:
                    ntok = pairs = ctx_sum = top = 0
                    if chunked:
                        kv_pre = [kvp[i] for i in pre]
                        completes = []
                        rows_ = nb
                        for kk in range(n_pq):
                            qk = q[kk]
                            ck = kv_pre[kk]
                            upto = ck + qk
                            c = upto >= inp[pre[kk]]
                            completes.append(c)
                            rows_ += c
                            if upto > top:
                                top = upto
                            ntok += qk
                            pairs += qk * ck + qk * (qk + 1) // 2
                            ctx_sum += ck
                            if qk == 1 and ck > 0:
                                one_tok = True
                    else:
                        rows_ = n_pq
                        for qk in q:
                            if qk > top:
                                top = qk
                            ntok += qk
                            pairs += qk * (qk + 1) // 2
                dec_sum = longest = 0
                if nb:
                    neg, i = long_heap[0]
                    while i not in info:
                        heappop(long_heap)
                        neg, i = long_heap[0]
                    longest = D - neg
                    dec_sum = sum_off + nb * D
                    if longest + 1 > mc_dec:
                        mc_dec = longest + 1
                if top > mc_pre:
                    mc_pre = top
                if nb or n_pq != 1:
                    # FastEngine._step_time: IterationModel.mixed_step_time inlined (the same
                    # operations in the same order), else that call (or the array form)
                    T = ntok + nb
                    body, head = cost.scalar_tables
                    consts = None
                    if nb:
                        try:
                            consts = dec_memo[nb][0]
                        except KeyError:
                            memo = dec_memo[nb] = _dec_memo(cost, nb)
                            consts = memo[0]
                    if pre_c is not None and not one_tok and len(body) > T and len(head) > rows_ and (consts or not nb):
                        f4p, heads, kvh, d, ab, kb, cf, cb, ov = pre_c
                        t = body[T] + head[rows_]
                        total = 0.0
                        if nb:
                            # IterationModel._decode_attention1(nb, float(dec_sum + nb), longest + 1.0)
                            f4, c1, c3, ratio, kvh_, d_, kb_, cf_, cb_, ov_, _, _ = consts
                            kv = dec_sum + nb  # (an int: float arithmetic converts it exactly, as float() does)
                            if ratio is not None:
                                y = (longest + 1.0) * ratio
                                if y > kv:
                                    kv = y
                            a = f4 * kv * cf_
                            b = (c1 + 2.0 * kv * kvh_ * d_ * kb_ + c3) * cb_
                            total += ((b if b > a else a) + ov_) * layers
                        # float(ntok), float(ctx_sum) + float(ntok), float(pairs) there: integers
                        # below 2**53, which float arithmetic converts exactly (as float() does)
                        kv_tokens = ctx_sum + ntok
                        flops = f4p * pairs
                        byts = 2.0 * ntok * heads * d * ab + 2.0 * kv_tokens * kvh * d * kb + 2.0 * ntok * kvh * d * kb
                        fc = flops * cf
                        bc = byts * cb
                        total += ((bc if bc > fc else fc) + ov) * layers
                        dur = t + total + (host_fixed + host_seq * (n_pq + nb))
                    else:
                        if chunked and n_pq == 1:
                            kv_pre = [c0]
                        elif not chunked:
                            kv_pre = [0] * n_pq
                        dur = mixed_step_time(q, kv_pre, nb, dec_sum, longest, rows_)
                        if dur is None:
                            dur = step_time(q, kv_pre, nb, dec_sum, longest, rows_)
                else:
                    key = (ntok, c0, rows_)
                    dur = prefill_memo.get(key)  # type: ignore[assignment]
                    if dur is None:
                        dur = prefill_memo[key] = step_time(q, [c0], 0, 0, 0, rows_)
                if tp > 1:
                    stage_comm += comm_time(ntok + nb)
        elif nb:
            # ---- a decode run of the whole decode set (FastEngine.decode_ready, _decode_begin) --
            # the first to finish (no stale entries: a request leaves the heap when it finishes,
            # and never joins the decode set again without a preemption)
            s = fin_heap[0] - D
            free = num_blocks - used
            # the run's blocks: a bound first (at most one block per sequence and bs steps, and
            # s >= 1, so that a first step short of blocks, nb > free, is within it)
            if nb * (s // bs + 1) > free:
                if nb > free and _growth(D + 1, Xa, n_active, cnt, pend, bs) > free:
                    return PREEMPTION
                if _growth(D + s, Xa, n_active, cnt, pend, bs) > free:
                    lo, hi = 1, s
                    while lo < hi:
                        mid = (lo + hi + 1) // 2
                        if _growth(D + mid, Xa, n_active, cnt, pend, bs) <= free:
                            lo = mid
                        else:
                            hi = mid - 1
                    s = lo
            neg, i = long_heap[0]
            while i not in info:
                heappop(long_heap)
                neg, i = long_heap[0]
            longest = D - neg
            try:
                consts, fixed_step, mem_bound, lin, fb = dec_memo[nb]
            except KeyError:
                consts, fixed_step, mem_bound, lin, fb = dec_memo[nb] = _dec_memo(cost, nb)
            ta = nxt - now
            if consts is not None:
                # IterationModel.decode_step_times, inlined (the same operations in the same order),
                # ending at the step that reaches the next arrival (each step takes at least
                # fixed_step, so the bound the array form below takes from it never binds here);
                # its ``kv0 + batch``, kv0 = float(sum_off + nb * D), is the float of the integer
                # sum (whole numbers below 2**53 add exactly)
                base = float(sum_off + nb * (D + 1))
                times: list[float] = []
                add_time = times.append
                acc = 0.0
                if (lin is not None and (lin[2] is None or (longest + 1.0 + (s - 1)) * lin[2] <= base)
                        and base + fb * (s - 1) <= lin[7]):  # fmt: skip
                    # as the first form below (the memory term never below the compute term, the
                    # floor never binding), with the memory term's parenthesis as a running sum
                    # of whole numbers below 2**53 (_integral; the run's last attended tokens are at
                    # most the memo's bound, whole numbers below 2**53 computed exactly): the same
                    # float at every step
                    c13, k, _, cb, ov, fixed, du, _ = lin
                    u = c13 + base * k
                    for _ in range(s):
                        x = fixed + (u * cb + ov) * layers
                        acc += x
                        add_time(x)
                        if acc >= ta:
                            break
                        u += du
                elif mem_bound and ((ratio := consts[3]) is None or (longest + 1.0 + (s - 1)) * ratio <= base):
                    # the same steps where neither max changes the value: the longest context's
                    # floor ``y`` never exceeds ``kv`` (y grows with j, and its last value is at
                    # most the first kv, kv only growing) and the memory term ``b`` is never below
                    # the compute term ``a`` (_memory_bound), so ``kv`` stays ``base + fb * j`` and
                    # ``b if b > a else a`` is ``b``: neither ``y`` nor ``a`` is computed; ``kv``
                    # (``base + fb * j`` there) is kept as a running sum, the same value: whole
                    # numbers of tokens, far below 2**53, are added exactly in floats
                    f4, c1, c3, ratio, kvh, d, kb, cf, cb, ov, fixed, _ = consts
                    kv = base
                    for _ in range(s):
                        x = fixed + ((c1 + 2.0 * kv * kvh * d * kb + c3) * cb + ov) * layers
                        acc += x
                        add_time(x)
                        if acc >= ta:
                            break
                        kv += fb
                else:
                    f4, c1, c3, ratio, kvh, d, kb, cf, cb, ov, fixed, _ = consts
                    if ratio is not None:
                        lo_ = longest + 1.0
                        for j in range(s):
                            kv = base + fb * j
                            y = (lo_ + j) * ratio
                            if y > kv:
                                kv = y
                            a = f4 * kv * cf
                            b = (c1 + 2.0 * kv * kvh * d * kb + c3) * cb
                            x = fixed + ((b if b > a else a) + ov) * layers
                            acc += x
                            add_time(x)
                            if acc >= ta:
                                break
                    else:
                        for j in range(s):
                            kv = base + fb * j
                            a = f4 * kv * cf
                            b = (c1 + 2.0 * kv * kvh * d * kb + c3) * cb
                            x = fixed + ((b if b > a else a) + ov) * layers
                            acc += x
                            add_time(x)
                            if acc >= ta:
                                break
                s = len(times)
                dur = acc
            else:
                # a fitted decode-attention efficiency: FastEngine's array form, over no more steps
                # than reach the next arrival
                if ta < INF and fixed_step > 0:
                    cut = int(ta / fixed_step) + 2  # min(s, max(cut, 1)), without the calls
                    if cut < 1:
                        cut = 1
                    if cut < s:
                        s = cut
                times_a = decode_steps(nb, float(sum_off + nb * D), s, float(longest))
                if s == 1:
                    dur = float(times_a[0])
                else:
                    ends = np.cumsum(times_a)
                    if ta < float(ends[-1]):
                        j = int(np.searchsorted(ends, ta, side="left"))
                        if j + 1 < s:
                            s = j + 1
                        ends = ends[:s]
                        times_a = times_a[:s]
                    dur = float(ends[-1])
                times = times_a.tolist()
            upto = D + s
            if upto > Xa:
                # FastEngine._alloc_to: _growth(upto), inline where the run is shorter than a block
                # (then the residues' counts alone: the sequences waiting at Xa + bs gain nothing)
                span = upto - Xa
                if span == 1:
                    total = cnt[Xa % bs]
                elif span < bs:
                    lo = Xa % bs
                    if span == 2:
                        # the residues lo and lo + 1 (mod bs, bs > 2): the index lo + 1 - bs is
                        # lo + 1 or, for the last residue, 0 (a negative index counts from the end)
                        total = cnt[lo] + cnt[lo + 1 - bs]
                    else:
                        hi = lo + span
                        total = sum(cnt[lo:hi]) if hi <= bs else sum(cnt[lo:]) + sum(cnt[: hi - bs])
                else:
                    total = _growth(upto, Xa, n_active, cnt, pend, bs)
                if total:
                    area += (now - t_mark) * used
                    t_mark = now
                    marks += 1
                    used += total
                    if used > peak:
                        peak = used
                if pend:
                    cnt[Xa % bs] += pend
                    n_active += pend
                    pend = 0
                Xa = upto
            if longest + s > mc_dec:
                mc_dec = longest + s
            if tp > 1:
                stage_comm += comm_time(nb) * s
        else:
            if nrun:
                return "an idle engine with requests running"
            # nothing runs and the head request cannot be admitted: it never fits
            i = waiting.popleft()
            never_fits.append(i)
            outst[ri] -= 1
            continue

        # ---- the step runs from ``start`` to ``end`` (FastEngine._advance) ----------------------
        end = now + dur
        if end < peek:
            now = end
        elif alone:
            # the arrival process runs during the step: its pending wake comes first even at an
            # equal time (scheduled before the step's end), later ones only when strictly earlier
            # (the first wake at or before the end, then each one strictly before it)
            if aw <= end:
                while True:
                    now = aw
                    nxt = at[ak + 1]
                    if not codes[ak]:
                        waiting.append(ids[ak])
                    ak += 1
                    aw = INF
                    while ak < n:
                        dt = at[ak] - now
                        if dt > 0.0:
                            aw = now + dt
                            break
                        nxt = at[ak + 1]
                        if not codes[ak]:
                            waiting.append(ids[ak])
                        ak += 1
                    if not aw < end:
                        break
            peek = aw
            now = end
        else:
            # something is scheduled at or before the step's end: the driver schedules the end
            # after it and resumes this loop there (meanwhile other replicas and arrivals run)
            now, nxt, peek = yield end
            vals = hist._vals
            wts = hist._wts
        busy += dur
        if gpus != 1.0:
            busy_gpu += dur * gpus

        if pre:
            # ---- FastEngine._mixed_end -------------------------------------------------------------
            if log_on:
                add_row((index, start, now, 1, ntok, nb, n_pq + nb, used))
            if not chunked:
                done_pre = pre
            elif n_pq == 1:
                i = pre[0]
                kvp[i] = top
                if done1:
                    done_pre = [i]
                    prefilling.remove(i)  # (the reference keeps the others in order)
                else:
                    done_pre = []
            else:
                done_pre = []
                for kk in range(n_pq):
                    i = pre[kk]
                    kvp[i] = kv_pre[kk] + q[kk]
                    if completes[kk]:
                        done_pre.append(i)
                if done_pre:
                    # every chunk but the last takes its prompt's whole remainder (else the budget
                    # would be spent), and the chunks are prefilling's first prompts in order (each
                    # has tokens left: a prompt leaves it when complete), then the admitted ones
                    # (appended to it): the completed prompts are its first len(done_pre)
                    del prefilling[: len(done_pre)]
            # (their first-token times are written in the loop that joins them, below: no value
            # in between reads them)
            n_fin = 0
            freed = 0
            if nb:
                # FastEngine._tbt_groups(now), through the histogram's buffer (TBTHistogram.push1)
                if not fresh:
                    if len(vals) >= BUF:
                        hist.flush()
                        vals, wts = hist._vals, hist._wts
                    vals.append(now - last_dec)
                    wts.append(float(nb))
                elif len(fresh) == 1 and len(vals) + 2 <= BUF:
                    # one group joined since (no flush on the way): _tbt_fresh's values inline
                    lt, c = fresh[0]
                    fresh = []
                    if nb > c:
                        vals.append(now - last_dec)
                        wts.append(float(nb - c))
                    vals.append(now - lt)
                    wts.append(float(c))
                else:
                    vals, wts = _tbt_fresh(hist, vals, wts, now, last_dec, nb, fresh)
                    fresh = []
                D += 1
                last_dec = now
                # FastEngine._pop_finished
                while fin_heap and fin_heap[0] <= D:
                    for i in fin_at.pop(heappop(fin_heap)):
                        off, n0, nblk = info.pop(i)
                        sum_off -= off
                        if n0 < Xa + bs:
                            cnt[n0 % bs] -= 1
                            n_active -= 1
                        else:
                            pend -= 1
                        x_ = Xa - n0
                        freed += nblk + (-(-x_ // bs) if x_ > 0 else 0)
                        finish[i] = now
                        n_fin += 1
            joined = 0
            for i in done_pre:
                first_tok[i] = now
                if out[i] <= 1:
                    finish[i] = now
                    freed += blocks_at_admit[i]
                    n_fin += 1
                    continue
                # FastEngine._join with kv = the prompt, one token generated
                off = inp[i] - D
                nblk = blocks_at_admit[i]
                n0 = nblk * bs - off
                info[i] = (off, n0, nblk)
                sum_off += off
                c = D + out[i] - 1
                if c in fin_at:
                    fin_at[c].append(i)
                else:
                    fin_at[c] = [i]
                    heappush(fin_heap, c)
                heappush(long_heap, (-off, i))
                if n0 < Xa + bs:
                    cnt[n0 % bs] += 1
                    n_active += 1
                elif n0 == Xa + bs:
                    pend += 1
                else:
                    return BEYOND
                joined += 1
            if joined:
                if len(long_heap) > 2 * len(info) + 64:
                    long_heap[:] = [(-e[0], r) for r, e in info.items()]
                    heapq.heapify(long_heap)
                fresh.append([now, joined])
            if n_fin:
                # FastEngine._finish: the blocks of all of them released in one call
                nrun -= n_fin
                outst[ri] -= n_fin
                area += (now - t_mark) * used
                t_mark = now
                marks += 1
                used -= freed
            continue

        # ---- FastEngine._decode_end ------------------------------------------------------------
        if log_on:
            add_row((index, start, now, s, 0, nb, nb, used))
        extra = (now - start) - dur
        if extra < 0.0:
            extra = 0.0
        gap_end = start + times[0] + extra
        # FastEngine._tbt_groups(gap_end), through the histogram's buffer (TBTHistogram.push1),
        # then TBTHistogram.push(times[1:], nb)
        if not fresh and len(vals) + s <= BUF:
            # no flush on the way (push1 flushes a full buffer, push one that would overflow):
            # the gap, then the later steps' times, as the run's times with the first replaced
            k = len(vals)
            vals += times
            vals[k] = gap_end - last_dec
            wts += [fb] * s
        elif len(fresh) == 1 and len(vals) + s + 1 <= BUF:
            # one group joined since the last decode step (the prefill step before this run), and
            # no flush on the way: _tbt_fresh's values (the older sequences' gap, the newcomers'),
            # then the later steps' times, as above
            lt, c = fresh[0]
            fresh = []
            if nb > c:
                vals.append(gap_end - last_dec)
                wts.append(float(nb - c))
            k = len(vals)
            vals += times
            vals[k] = gap_end - lt
            wts.append(float(c))
            wts += [fb] * (s - 1)
        else:
            if not fresh:
                if len(vals) >= BUF:
                    hist.flush()
                    vals, wts = hist._vals, hist._wts
                vals.append(gap_end - last_dec)
                wts.append(fb)
            else:
                vals, wts = _tbt_fresh(hist, vals, wts, gap_end, last_dec, nb, fresh)
                fresh = []
            if s > 1:
                m = s - 1
                if len(vals) + m > BUF:
                    hist.flush()
                    vals, wts = hist._vals, hist._wts
                    if m > BUF:
                        hist.add(np.asarray(times[1:], dtype=np.float64), fb)
                        m = 0
                if m:
                    vals.extend(times[1:])
                    wts.extend([fb] * m)
        D += s
        last_dec = now
        if fin_heap[0] <= D:
            # FastEngine._pop_finished, then _finish (blocks released in one call)
            n_fin = 0
            freed = 0
            while True:
                for i in fin_at.pop(heappop(fin_heap)):
                    off, n0, nblk = info.pop(i)
                    sum_off -= off
                    if n0 < Xa + bs:
                        cnt[n0 % bs] -= 1
                        n_active -= 1
                    else:
                        pend -= 1
                    x_ = Xa - n0
                    freed += nblk + (-(-x_ // bs) if x_ > 0 else 0)
                    finish[i] = now
                    n_fin += 1
                if not (fin_heap and fin_heap[0] <= D):
                    break
            nrun -= n_fin
            outst[ri] -= n_fin
            area += (now - t_mark) * used
            t_mark = now
            marks += 1
            used -= freed

    if waiting or nrun:
        raise AssertionError("the fused loop ended with requests left")
    # ---- write what the stepping path writes of this replica ----------------------------------
    if np_clock and marks > marks_at_switch:
        area, t_mark = np.float64(area), np.float64(t_mark)
    kvm.used, kvm.peak, kvm._area, kvm._t = used, peak, area, t_mark
    engine.busy_time += busy
    # one GPU: dur * 1.0 is dur, so the sum of them is busy's (the same additions in the same order)
    engine.busy_gpu_s += busy if gpus == 1.0 else busy_gpu
    engine.stage_busy[0] += busy
    engine.stage_comm[0] += stage_comm
    mc = engine.max_context
    mc["attn_prefill"] = max(mc["attn_prefill"], mc_pre)
    mc["attn_decode"] = max(mc["attn_decode"], mc_dec)
    if alone:
        outst[ri] += clock[3]  # (the driver counts what it queues; alone, the loop queued them)
    engine.outstanding = outst[ri]
    return None


def run_fused(engines: list[FastEngine], cluster: Cluster) -> str | None:
    """Run ``cluster`` (its replicas served by ``engines``, one each, continuous or chunked-prefill
    batching, routed by a policy in :data:`ROUTERS`) to the end and write what the stepping path
    would (the request table, the inter-token histogram, the iteration log, the engines' counters
    and KV integrals, the router's turn). Returns None when done, or the reason it stopped (then
    nothing has been written: run the stepping path)."""
    table = cluster.table
    router = cluster._router
    least = ROUTERS.get(getattr(router, "name", ""))
    if (least is None or cluster.tbt.total or cluster.tbt._vals or cluster._handoff is not None
            or any(e.kv.cache is not None or e.kv.used or e.kv.watermark_blocks < 0 or e.index != k
                   or e.policy.name not in ("continuous", "chunked_prefill") for k, e in enumerate(engines))):  # fmt: skip
        raise AssertionError("the fused loop starts from empty replicas without a prefix cache or a hand-off, batching "
                             "continuously, routed by a policy it knows")
    n = table.n
    inp = table.input.tolist()
    if n and min(inp) < 1:
        return "a prompt of no tokens"
    cluster._arrivals_setup()
    order = cluster._order
    at = cluster._arrivals[order].tolist() + [INF]
    ids = order.tolist()
    codes = cluster._codes[order].tolist()
    n_rep = len(engines)
    caps = cluster._front_caps
    least_cap = cluster._least_cap
    # a fleet's pools differ: a request whose KV exceeds the smallest goes to those that hold it
    needs = cluster._need[order].tolist() if max(caps) > least_cap else None

    # admission, first-token and finish times: C doubles (a third of a list's memory), viewed
    # by numpy without a copy at the end
    nans = array("d", [float("nan")])
    sched = nans * n
    first_tok = nans * n
    finish = nans * n
    rep = array("i", [-1]) * (n if n_rep > 1 else 0)
    """The replica each request was queued at."""
    chunked = any(e.policy.name == "chunked_prefill" for e in engines)
    never_fits: list[int] = []
    hist = TBTHistogram()
    rows: list[tuple] = []
    shared = (inp, table.output.tolist(), sched, first_tok, finish, [0] * n, [0] * n if chunked else [], never_fits, hist,
              rows)  # fmt: skip
    clock: list = [False, 0.0, False, 0]
    """[whether SimPy's clock is numpy, the clock when a replica last went idle, its type, requests
    a replica alone queued]."""
    queues: list[deque[int]] = [deque() for _ in engines]
    outst = [0] * n_rep
    single = n_rep == 1
    loops = [_replica(e, queues[k], outst, shared, clock, (at, ids, codes) if single else None) for k, e in enumerate(engines)]
    for lp in loops:
        # each replica starts idle (nothing is queued yet); alone, it runs the whole world here
        try:
            next(lp)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
    sleeping = [True] * n_rep
    """Idle and not yet woken (a request queued for it schedules its wake-up)."""
    turn = getattr(router, "_next", 0)  # round robin's
    heappush, heappop = heapq.heappush, heapq.heappop
    # FastWorld's heap, as (time, ticket, replica) of the replicas' step ends and wake-ups (SimPy's
    # order: by time, then by the order they were scheduled in), with the arrival process's one
    # pending wait held apart (``aw``, ``a_ticket``): its start at time 0 (after the engines')
    # handles the arrivals due then, else waits for the first (the same time: 0 + (t - 0) is t);
    # either way the first arrival is the one its first event handles
    heap: list[tuple[float, int, int]] = []
    aw = (at[0] if at[0] > 0 else 0.0) if n and not single else INF
    a_ticket = 0
    ticket = 0
    np_clock = False
    enqueued = clock[3] if single else 0
    last_who = 0 if single else -1
    """Who ran last: a replica (its clock is in ``clock``), or the arrival process (-1)."""
    last_arrival = 0.0
    ak = n if single else 0
    """The next arrival to handle (an index into ``order``)."""
    # a replica's step end just scheduled (ticket taken) but kept out of the heap while only the
    # arrival process comes before it, then resumed without a heap entry
    p_who = -1
    p_end = 0.0
    p_ticket = 0
    while True:
        if p_who >= 0:
            if heap and (heap[0][0] < p_end or (heap[0][0] == p_end and heap[0][1] < p_ticket)):
                # another replica's event comes first: the end goes into the heap
                heappush(heap, (p_end, p_ticket, p_who))
                p_who = -1
                continue
            if aw < p_end or (aw == p_end and a_ticket < p_ticket):
                now = aw
                who = -1
            else:
                now = p_end
                who = p_who
                p_who = -1
        elif heap and (heap[0][0] < aw or (heap[0][0] == aw and heap[0][1] < a_ticket)):
            now, _, who = heappop(heap)
            sleeping[who] = False  # (a wake-up; else it was not)
        elif aw < INF:
            now = aw
            who = -1
        else:
            break
        if who >= 0:
            try:
                end = loops[who].send((now, at[ak], (aw if aw < heap[0][0] else heap[0][0]) if heap else aw))
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            if end is None:
                sleeping[who] = True
                last_who = who
            else:
                ticket += 1
                p_end, p_ticket, p_who = end, ticket, who
            continue
        # ---- the arrival process (FastWorld._arrivals): the arrival its wait was for, then every
        # later one already due, then a wait for the next
        last_who = -1
        last_arrival = now
        aw = INF
        if not np_clock and now > 0:
            np_clock = clock[0] = True  # a wait of the arrival process fired: a numpy float clock
        first = True
        while ak < n:
            if not first:
                dt = at[ak] - now
                if dt > 0.0:
                    ticket += 1
                    aw = now + dt
                    a_ticket = ticket
                    break
            first = False
            if not codes[ak]:
                # the router (Cluster._arrive): the replica, among those whose pool holds it
                i = ids[ak]
                if needs is None or needs[ak] <= least_cap:
                    k = outst.index(min(outst)) if least else (turn + enqueued) % n_rep
                else:
                    fits = [k for k in range(n_rep) if caps[k] >= needs[ak]]
                    k = min(fits, key=outst.__getitem__) if least else fits[(turn + enqueued) % len(fits)]
                enqueued += 1
                queues[k].append(i)
                outst[k] += 1
                rep[i] = k
                if sleeping[k]:
                    # its wake-up, scheduled now, before the arrival process's next wait
                    sleeping[k] = False
                    ticket += 1
                    heappush(heap, (now, ticket, k))
            ak += 1

    if ak < n or heap or not all(sleeping) or any(queues):
        raise AssertionError("the fused loop ended with requests left")
    for lp in loops:
        try:
            lp.send(None)
        except StopIteration:
            pass
        else:
            raise AssertionError("a replica's loop did not end")

    # ---- write what the stepping path writes -------------------------------------------------
    t = table
    fin_a = np.frombuffer(finish, dtype=np.float64)
    t.scheduled[:] = np.frombuffer(sched, dtype=np.float64)
    t.first_token[:] = np.frombuffer(first_tok, dtype=np.float64)
    t.finish[:] = fin_a
    served = ~np.isnan(fin_a)
    t.last_token[served] = fin_a[served]
    gen = np.maximum(t.output[served], 1)
    t.gen[served] = gen
    t.kv_len[served] = t.input[served] + gen - 1
    code_a = cluster._codes
    door = code_a > 0
    t.replica[~door] = engines[0].index if single else np.frombuffer(rep, dtype=np.int32)[~door]
    t.rejected[door] = True  # table.reject, for all of them at once
    t.reject_reason[door] = code_a[door]
    for i in never_fits:
        t.reject(i, "never_fits")
    h = cluster.tbt
    h.counts, h.total, h.sum, h.max, h._vals, h._wts = hist.counts, hist.total, hist.sum, hist.max, hist._vals, hist._wts
    if cluster.log.enabled:
        cluster.log.rows.extend(rows)
    if hasattr(router, "_next"):
        router._next = turn + enqueued  # type: ignore[union-attr]  # round robin's turn, as if it had chosen
    cluster._next = INF
    if last_who >= 0:
        cluster.env._now = np.float64(clock[1]) if clock[2] else clock[1]
    else:
        cluster.env._now = np.float64(last_arrival) if np_clock else last_arrival
    return None
