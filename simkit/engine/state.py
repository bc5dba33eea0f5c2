"""Per-request state, columnar (one numpy array per field over all requests of a run)."""

from __future__ import annotations

import struct

import numpy as np

from simkit.workload.base import Requests

REJECT_REASONS = ("", "exceeds_max_context", "exceeds_kv_capacity", "prompt_exceeds_token_budget", "never_fits")
"""Codes of :attr:`RequestTable.reject_reason` (0: not rejected). ``exceeds_max_context``: prompt
+ output is longer than the model's context; ``exceeds_kv_capacity``: longer than the replica's
whole KV cache; ``prompt_exceeds_token_budget``: a prompt longer than one iteration's token budget
under a policy that prefills prompts whole; ``never_fits``: the replica was idle and still could
not admit it (docs/metrics.md)."""


class RequestTable:
    """Columnar state of every request: what it asked for, how far it got, when things happened."""

    def __init__(self, reqs: Requests) -> None:
        n = len(reqs)
        self.n = n
        self.arrival = np.asarray(reqs.arrival_s, dtype=np.float64)
        self.input = np.asarray(reqs.input_tokens, dtype=np.int64)
        self.output = np.asarray(reqs.output_tokens, dtype=np.int64)
        self.gen = np.zeros(n, dtype=np.int64)
        """Tokens generated so far."""
        self.kv_len = np.zeros(n, dtype=np.int64)
        """Tokens whose K/V are in this request's cache (computed, hit, or received)."""
        self.target = self.input.copy()
        """Tokens to prefill before decoding: the prompt, or prompt + generated after a recompute."""
        self.cached = np.zeros(n, dtype=np.int64)
        """Prompt tokens served from the prefix cache (no prefill compute)."""
        self.blocks = np.zeros(n, dtype=np.int64)
        """KV blocks this request holds privately (prefix-cache blocks are counted by the cache)."""
        self.shared_blocks = np.zeros(n, dtype=np.int64)
        self.scheduled = np.full(n, np.nan)
        self.first_token = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.last_token = np.full(n, np.nan)
        self.replica = np.full(n, -1, dtype=np.int32)
        self.preemptions = np.zeros(n, dtype=np.int32)
        self.swaps = np.zeros(n, dtype=np.int32)
        self.rejected = np.zeros(n, dtype=bool)
        self.handoff = np.full(n, np.nan)
        """When the request's KV reached its decode replica (disaggregated serving)."""
        self.reject_reason = np.zeros(n, dtype=np.int8)
        """Index into :data:`REJECT_REASONS` (0 for requests that were not rejected)."""
        self.hit_tier_tokens = np.zeros((n, 4), dtype=np.int64)
        """Prefix-cache hit tokens per tier (hbm, dram, cxl, ssd)."""
        self.reqs = reqs
        self._hashes_memo: tuple[int, int, tuple[int, ...]] = (-1, 0, ())

    def usable_hashes(self, i: int, hash_tokens: int) -> tuple[int, ...]:
        """Request ``i``'s prefix hashes that a cache of ``hash_tokens``-token entries can serve:
        those of the whole blocks before its last prompt token (whose forward pass is always
        computed). The last answer is remembered: the prefix-aware router asks every replica."""
        mi, mt, hashes = self._hashes_memo
        if mi != i or mt != hash_tokens:
            hs = self.reqs.hashes_of(i)
            usable = min(len(hs), int(self.input[i] - 1) // hash_tokens)
            hashes = tuple(hs[:usable].tolist())
            self._hashes_memo = (i, hash_tokens, hashes)
        return hashes

    def reject(self, i: int, reason: str) -> None:
        """Mark request ``i`` rejected for ``reason`` (one of :data:`REJECT_REASONS`)."""
        self.rejected[i] = True
        self.reject_reason[i] = REJECT_REASONS.index(reason)


def _doubles(xs: list[float]) -> np.ndarray:
    """``np.array(xs, dtype=np.float64)`` (the same values) for a list of Python numbers, packed
    by ``struct`` (~90 instructions an element against numpy's ~280: numpy inspects each element
    for its type and shape first)."""
    return np.frombuffer(struct.pack(f"{len(xs)}d", *xs), dtype=np.float64)


class TBTHistogram:
    """Inter-token gaps aggregated in fine log-spaced bins (1% wide), so that percentiles of
    millions of gaps cost constant memory. Percentiles are exact to within one bin (1%)."""

    LO, HI, PER_DECADE = 1e-7, 1e4, 230  # 230 bins per decade -> ratio 1.01

    BUF = 1 << 16

    def __init__(self) -> None:
        self.nbins = int(np.ceil(np.log10(self.HI / self.LO) * self.PER_DECADE)) + 2
        self.counts = np.zeros(self.nbins, dtype=np.float64)
        self.total = 0.0
        self.sum = 0.0
        self.max = 0.0
        self._vals: list[float] = []
        self._wts: list[float] = []
        """Gaps buffered as Python floats (appending to a list costs less than writing numpy
        elements one by one), with their weights; binned in bulk by :meth:`flush`."""

    def push(self, values: np.ndarray | list[float], weight: float = 1.0) -> None:
        """Buffer gaps (cheap); they are binned in bulk when the buffer fills or on read."""
        k = len(values)
        if len(self._vals) + k > self.BUF:
            self.flush()
            if k > self.BUF:
                self.add(np.asarray(values, dtype=np.float64), weight)
                return
        self._vals.extend(values.tolist() if isinstance(values, np.ndarray) else values)
        self._wts.extend([weight] * k)

    def push1(self, value: float, weight: float) -> None:
        if len(self._vals) >= self.BUF:
            self.flush()
        self._vals.append(value)
        self._wts.append(weight)

    def flush(self) -> None:
        if self._vals:
            v = _doubles(self._vals)
            w = _doubles(self._wts)
            self._vals = []
            self._wts = []
            self.add(v, w)

    def _bin(self, x: np.ndarray) -> np.ndarray:
        b = (np.log10(np.maximum(x, self.LO) * (1.0 / self.LO)) * self.PER_DECADE).astype(np.int64) + 1
        return np.minimum(b, self.nbins - 1)

    def add(self, values: np.ndarray, weight: float | np.ndarray = 1.0) -> None:
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0:
            return
        b = self._bin(v)
        if np.ndim(weight) == 0:
            w = float(weight)
            self.counts += np.bincount(b, minlength=self.nbins) * w
            self.total += w * v.size
            self.sum += w * float(v.sum())
        else:
            wa = np.asarray(weight, dtype=np.float64)
            self.counts += np.bincount(b, weights=wa, minlength=self.nbins)
            self.total += float(wa.sum())
            # not ``v @ wa``: numpy hands a dot product to BLAS, whose threaded kernel splits long
            # vectors across cores (the sum's bits then depend on the machine's core count, and
            # its idle threads spin on the other cores); an elementwise product and numpy's
            # pairwise sum give the same bits everywhere
            self.sum += float((v * wa).sum())
        self.max = max(self.max, float(v.max()))

    def percentile(self, p: float) -> float:
        self.flush()
        if self.total <= 0:
            return float("nan")
        c = np.cumsum(self.counts)
        i = int(np.searchsorted(c, p / 100.0 * self.total, side="left"))
        i = min(max(i, 1), self.nbins - 1)
        # geometric centre of the bin
        return float(self.LO * 10 ** ((i - 0.5) / self.PER_DECADE))

    def mean(self) -> float:
        self.flush()
        return self.sum / self.total if self.total else float("nan")
