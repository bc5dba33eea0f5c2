"""Batching and scheduling policies (one class each, registered in BATCHING_POLICIES).

Each registered policy declares its validated options as a nested ``Options`` model (pydantic,
unknown keys refused, ``policy`` the literal tag of the scenario's discriminated union): the
scenario schema's ``plan.batching`` is built from this registry (``scenario.BatchingOptions``),
so an unknown policy, or an option the chosen policy does not have, fails when the scenario
loads, naming the key path. ``build(options, role)`` turns options into the step policy one
engine runs (``role`` is ``both``, or ``prefill`` / ``decode`` in a disaggregated deployment).
Adding a policy is one class and one registry entry; ``tests/test_contracts.py`` checks every
entry meets this contract.

- ``static``: FlexGen-style throughput batching. When the replica is empty, take up to
  ``batch_size`` waiting requests whose whole KV (prompt + output) fits, prefill them in one
  iteration, then decode until every one of them has finished. Arrivals wait for the batch.
- ``continuous``: vLLM-style iteration-level batching, prefill first. Each iteration either
  prefills newly admitted requests (as many whole prompts as fit in ``max_num_batched_tokens``
  and ``max_num_seqs``, FCFS) or, if none can be admitted, decodes every running request.
- ``chunked_prefill``: Sarathi-Serve-style. Each iteration has a token budget of
  ``min(chunk_size, max_num_batched_tokens)``: every running decode takes one token, and the rest
  goes to prefill chunks (the oldest partially-prefilled request first, then new admissions).
  The budget must be >= ``max_num_seqs`` (checked when the scenario is simulated, as vLLM
  does), so decodes alone never exceed it and no iteration runs more tokens than the budget.
- ``disaggregated``: prefill and decode on separate replicas (see engine/cluster.py); the prefill
  replicas run ``prefill_only`` and decode replicas run ``continuous`` over requests whose KV
  arrives over the configured link. A hand-off cuts short the decode replica's fast-forwarded
  run (``Process.interrupt``) and joins the decode batch at the next iteration, as a decode
  (its KV is complete: no prefill iteration, no stall of the other decodes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import Field

from simkit.engine.interfaces import BatchingPolicy, Step
from simkit.specs.base import Section

if TYPE_CHECKING:
    from simkit.engine.engine import Engine


Role = Literal["both", "prefill", "decode"]
"""What an engine does in the deployment: everything, or one side of disaggregated serving."""

DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
"""The default token budget of one iteration (vLLM's default for chunked prefill)."""


class BatchingOptions(Section):
    """Options every batching policy has. A policy's own ``Options`` subclasses this and sets
    ``policy`` to a one-value Literal of its registry name (the tag of the scenario's union)."""

    policy: str
    """Registered batching policy: static, continuous, chunked_prefill, disaggregated."""
    max_num_seqs: int = Field(default=256, ge=1, le=2**20)
    """Most sequences running at once on a replica."""

    def iteration_tokens(self) -> int:
        """The most tokens one iteration schedules (sizes activation memory and the cost
        tables); a policy without a token budget sizes them for the default budget."""
        return DEFAULT_MAX_NUM_BATCHED_TOKENS


class TokenBudgetOptions(BatchingOptions):
    """Options of a policy that schedules at most ``max_num_batched_tokens`` per iteration."""

    max_num_batched_tokens: int = Field(default=DEFAULT_MAX_NUM_BATCHED_TOKENS, ge=1, le=2**24)
    """Most tokens in one iteration (continuous and disaggregated: prompts longer than this are rejected)."""

    def iteration_tokens(self) -> int:
        return self.max_num_batched_tokens


class StaticOptions(BatchingOptions):
    """Static (FlexGen-style) batches run to completion. It has no token budget: a batch's
    prompts are prefilled in one forward pass, so its activations are sized for the batch's
    prompt tokens when the workload is a fixed batch (one GPU batch's when offloaded), else for
    the default 8192 tokens per iteration, unless ``plan.kv_cache.activation_reserve`` says
    otherwise."""

    policy: Literal["static"] = "static"
    """Registered batching policy: static."""
    batch_size: int | None = Field(default=None, ge=1)
    """Sequences per batch (default: all waiting, up to max_num_seqs; an offloaded plan's
    default is gpu_batch_size x num_gpu_batches)."""


class StaticBatching:
    name: ClassVar[str] = "static"
    admits_on_arrival: ClassVar[bool] = False
    roles: ClassVar[tuple[Role, ...]] = ("both",)
    Options: ClassVar[type[StaticOptions]] = StaticOptions

    def __init__(self, max_num_seqs: int, batch_size: int | None) -> None:
        self.batch_size = batch_size or max_num_seqs

    @classmethod
    def build(cls, options: StaticOptions, role: Role) -> StaticBatching:
        _check_role(cls, role)
        return cls(options.max_num_seqs, options.batch_size)

    def next_step(self, r: Engine) -> Step:
        pre, q = self._decide(r)
        if pre or not r.running:
            return Step(pre, q)
        return Step(decode_ids=np.fromiter(r.running, dtype=np.int64, count=len(r.running)))

    def fast_step(self, r: Engine) -> tuple[list[int], list[int], int]:
        """:meth:`next_step` as plain values (the fast engine's hook, no :class:`Step`): the
        requests to prefill, their tokens, and how many decode (the whole batch, once prefilled)."""
        pre, q = self._decide(r)
        return pre, q, 0 if pre else len(r.running)

    def _decide(self, r: Engine) -> tuple[list[int], list[int]]:
        """The one home of the decision: with no batch running, admit the next one (each
        request's whole KV reserved); the batch's requests still to prefill and their tokens
        (none: the batch, if any, decodes)."""
        t = r.table
        if not r.running:
            while r.waiting and len(r.running) < self.batch_size:
                i = r.waiting[0]
                if not r.admit(i, reserve_tokens=int(t.input[i] + t.output[i])):
                    break
                r.waiting.popleft()
            if not r.running:
                return [], []
        pre = [i for i in r.running if t.kv_len[i] < t.target[i]]
        return pre, [int(t.target[i] - t.kv_len[i]) for i in pre]


class ContinuousOptions(TokenBudgetOptions):
    """Continuous (vLLM-style, prefill-first) batching."""

    policy: Literal["continuous"] = "continuous"
    """Registered batching policy: continuous."""


class ContinuousBatching:
    name: ClassVar[str] = "continuous"
    admits_on_arrival: ClassVar[bool] = True
    roles: ClassVar[tuple[Role, ...]] = ("both",)
    Options: ClassVar[type[ContinuousOptions]] = ContinuousOptions

    def __init__(self, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_tokens = max_num_batched_tokens

    @classmethod
    def build(cls, options: ContinuousOptions, role: Role) -> ContinuousBatching:
        _check_role(cls, role)
        return cls(options.max_num_seqs, options.max_num_batched_tokens)

    def next_step(self, r: Engine) -> Step:
        pre, q, dec = self._decide(r)
        return Step(pre, q) if dec is None else Step(decode_ids=dec)

    def fast_step(self, r: Engine) -> tuple[list[int], list[int], int]:
        """:meth:`next_step` as plain values (the fast engine's hook, no :class:`Step`): the
        requests to prefill, their tokens, and how many decode (0 when prefilling: a decode
        step only when nothing is admitted)."""
        pre, q, dec = self._decide(r)
        return pre, q, 0 if dec is None else len(dec)

    def _decide(self, r: Engine) -> tuple[list[int], list[int], Any]:
        """The one home of the decision: (prefill ids, their tokens, None) when prefilling, else
        ([], [], the decode set from ``r.decode_ready(reserve=False)``)."""
        t = r.table
        if r.swapped:
            r.swap_in_ready()
        pre: list[int] = []
        q: list[int] = []
        budget = self.max_tokens
        if not r.swapped:
            while r.waiting and len(r.running) < self.max_num_seqs:
                i = r.waiting[0]
                need = int(t.target[i] - t.kv_len[i])
                if need > budget and pre:
                    break
                if not r.admit(i):
                    break
                r.waiting.popleft()
                need = int(t.target[i] - t.kv_len[i])
                if need <= 0:
                    # its KV is all here (a disaggregated hand-off): it joins the decodes
                    continue
                pre.append(i)
                q.append(need)
                budget -= need
                if budget <= 0:
                    break
        if pre:
            return pre, q, None
        return pre, q, r.decode_ready(reserve=False)


class ChunkedPrefillOptions(TokenBudgetOptions):
    """Chunked prefill (Sarathi-Serve-style): decodes and prefill chunks share a token budget."""

    policy: Literal["chunked_prefill"] = "chunked_prefill"
    """Registered batching policy: chunked_prefill."""
    chunk_size: int = Field(default=512, ge=1, le=2**24)
    """Prefill chunk size: each iteration's budget is min(chunk_size, max_num_batched_tokens)."""


class ChunkedPrefill:
    name: ClassVar[str] = "chunked_prefill"
    admits_on_arrival: ClassVar[bool] = True
    roles: ClassVar[tuple[Role, ...]] = ("both",)
    Options: ClassVar[type[ChunkedPrefillOptions]] = ChunkedPrefillOptions

    def __init__(self, max_num_seqs: int, max_num_batched_tokens: int, chunk_size: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.budget = min(chunk_size, max_num_batched_tokens)

    @classmethod
    def build(cls, options: ChunkedPrefillOptions, role: Role) -> ChunkedPrefill:
        _check_role(cls, role)
        return cls(options.max_num_seqs, options.max_num_batched_tokens, options.chunk_size)

    def next_step(self, r: Engine) -> Step:
        pre, q, dec = self._decide(r)
        return Step(pre, q, dec)

    def fast_step(self, r: Engine) -> tuple[list[int], list[int], int]:
        """:meth:`next_step` as plain values (the fast engine's hook, no :class:`Step`): the
        requests to prefill, their chunks' tokens, and how many requests decode."""
        pre, q, dec = self._decide(r)
        return pre, q, len(dec)

    def _decide(self, r: Engine) -> tuple[list[int], list[int], Any]:
        """The one home of the decision: (prefill ids, their chunks' tokens, the decode set)."""
        t = r.table
        if r.swapped:
            r.swap_in_ready()
        dec = r.decode_ready()
        budget = self.budget - len(dec)
        pre: list[int] = []
        q: list[int] = []
        # requests already admitted but not fully prefilled go first
        for i in r.prefilling:
            if budget <= 0:
                break
            rem = int(t.target[i] - t.kv_len[i])
            if rem > 0:
                c = min(rem, budget)
                pre.append(i)
                q.append(c)
                budget -= c
        while budget > 0 and r.waiting and not r.swapped and len(r.running) < self.max_num_seqs:
            i = r.waiting[0]
            if not r.admit(i):
                break
            r.waiting.popleft()
            rem = int(t.target[i] - t.kv_len[i])
            c = min(rem, budget)
            pre.append(i)
            q.append(c)
            budget -= c
        return pre, q, dec


class PrefillOnly(ContinuousBatching):
    """The prefill side of a disaggregated deployment: prefills whole prompts, never decodes
    (requests leave after their first token, their KV sent to a decode replica). Not registered:
    ``Disaggregated.build`` runs it on prefill replicas."""

    name: ClassVar[str] = "prefill_only"
    roles: ClassVar[tuple[Role, ...]] = ("prefill",)

    def next_step(self, r: Engine) -> Step:
        s = super().next_step(r)
        return Step(s.prefill_ids, s.prefill_q)

    def fast_step(self, r: Engine) -> tuple[list[int], list[int], int]:
        pre, q, _ = super().fast_step(r)
        return pre, q, 0


class DisaggregatedOptions(TokenBudgetOptions):
    """Disaggregated prefill and decode replicas; both sides batch continuously."""

    policy: Literal["disaggregated"] = "disaggregated"
    """Registered batching policy: disaggregated."""
    prefill_replicas: int = Field(default=1, ge=1)
    """Replicas that only prefill; the rest of plan.parallel.replicas decode."""
    kv_transfer_link: Literal["network", "nvlink"] = "network"
    """Link the KV cache crosses from a prefill to a decode replica: network or nvlink (GPU-GPU)."""


class Disaggregated:
    """Disaggregated serving (DistServe / Splitwise-style), a deployment shape: the first
    ``prefill_replicas`` replicas run :class:`PrefillOnly`, the rest :class:`ContinuousBatching`
    over requests whose KV arrives over ``kv_transfer_link`` (wired in deployment.py and engine/cluster.py)."""

    name: ClassVar[str] = "disaggregated"
    roles: ClassVar[tuple[Role, ...]] = ("prefill", "decode")
    Options: ClassVar[type[DisaggregatedOptions]] = DisaggregatedOptions

    @classmethod
    def build(cls, options: DisaggregatedOptions, role: Role) -> ContinuousBatching:
        _check_role(cls, role)
        step = PrefillOnly if role == "prefill" else ContinuousBatching
        return step(options.max_num_seqs, options.max_num_batched_tokens)


class PolicyClass(Protocol):
    """What a BATCHING_POLICIES entry is (a class; ``build`` a classmethod)."""

    name: ClassVar[str]
    roles: ClassVar[tuple[Role, ...]]
    """The roles an engine can run it in: ``both``, or ``prefill`` and ``decode``."""
    Options: ClassVar[type[BatchingOptions]]

    def build(self, options: Any, role: Role) -> BatchingPolicy:
        """The step policy of one engine in ``role``."""
        ...


def _check_role(cls: Any, role: Role) -> None:
    if role not in cls.roles:
        raise ValueError(f"batching policy {cls.name!r} has no {role!r} role (it has {', '.join(cls.roles)})")


BATCHING_POLICIES: dict[str, PolicyClass] = {
    "static": StaticBatching,
    "continuous": ContinuousBatching,
    "chunked_prefill": ChunkedPrefill,
    "disaggregated": Disaggregated,
}
"""Policy name -> policy class (:class:`PolicyClass`); the scenario schema's ``plan.batching``
is the discriminated union of their ``Options`` models."""


def build_policy(options: BatchingOptions, role: Role) -> BatchingPolicy:
    """The step policy one engine runs for the scenario's ``plan.batching`` options."""
    return BATCHING_POLICIES[options.policy].build(options, role)


def with_policy(batching: Mapping[str, Any], policy: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """A ``plan.batching`` mapping switched to ``policy``: the given ``options``, plus those of
    ``batching`` the new policy also has (e.g. ``max_num_seqs``); the old policy's own options
    are dropped (the placement optimiser runs its plans as static batches this way)."""
    fields = BATCHING_POLICIES[policy].Options.model_fields
    out = {k: v for k, v in batching.items() if k in fields and k != "policy"}
    out.update(options)
    out["policy"] = policy
    return out
