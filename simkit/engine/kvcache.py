"""Paged KV blocks on a replica's GPUs and the tiered prefix cache beside them.

Blocks are counted per GPU of the replica (every GPU of a TP group holds its shard of each
block). A request holds ``ceil(tokens / block_size)`` private blocks, minus the blocks it shares
through the prefix cache. The prefix cache keys blocks of ``hash_tokens`` tokens by the
request's prefix hashes (Mooncake ``hash_ids``); its HBM part lives in the same block pool
(pinned while a running request uses it, evictable otherwise), and evicted entries are demoted
to the next tier (DRAM, CXL, SSD as the node has them) in LRU order, then dropped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

TIER_INDEX = {"hbm": 0, "dram": 1, "cxl": 2, "ssd": 3}


@dataclass
class PrefixCache:
    """Tiered LRU cache of prefix blocks. Each entry is one hash block of ``hash_tokens`` tokens,
    which occupies ``blocks_per_hash`` KV blocks when it sits in HBM."""

    tiers: list[str]
    """Tiers in use, fastest first; the first is always 'hbm'."""
    capacity: dict[str, int]
    """Entries each lower tier may hold (HBM's limit is the shared block pool)."""
    blocks_per_hash: int
    hbm: OrderedDict[int, int] = field(default_factory=OrderedDict)
    """hash -> number of running requests using it (pinned while > 0)."""
    lower: dict[str, OrderedDict[int, None]] = field(default_factory=dict)
    pinned: int = 0
    on_demote: Callable[[str, str, int], None] | None = None
    """Called with (from_tier, to_tier, entries) when entries move down (for link traffic)."""

    def __post_init__(self) -> None:
        for t in self.tiers[1:]:
            self.lower.setdefault(t, OrderedDict())
        self._lower_tiers: list[tuple[str, OrderedDict[int, None]]] = [(t, self.lower[t]) for t in self.tiers[1:]]
        """(tier, its entries) of the lower tiers, fastest first."""

    @property
    def hbm_blocks(self) -> int:
        return len(self.hbm) * self.blocks_per_hash

    @property
    def unpinned_blocks(self) -> int:
        return (len(self.hbm) - self.pinned) * self.blocks_per_hash

    def where(self, h: int) -> str | None:
        if h in self.hbm:
            return "hbm"
        for t, entries in self._lower_tiers:
            if h in entries:
                return t
        return None

    def match(self, hashes: Sequence[int]) -> list[str]:
        """Tiers of the longest run of leading hashes present somewhere in the cache."""
        out: list[str] = []
        hbm = self.hbm
        for h in hashes:
            if h in hbm:  # where(), inlined (hot: the router asks every replica)
                out.append("hbm")
                continue
            t = self.where(h)
            if t is None:
                break
            out.append(t)
        return out

    def pin(self, h: int) -> None:
        refs = self.hbm[h]
        if refs == 0:
            self.pinned += 1
        self.hbm[h] = refs + 1
        self.hbm.move_to_end(h)

    def unpin(self, h: int) -> None:
        refs = self.hbm.get(h)
        if refs is None:
            return
        if refs == 1:
            self.pinned -= 1
        self.hbm[h] = max(refs - 1, 0)

    def touch(self, h: int, tier: str) -> None:
        """Mark a lower-tier entry most recently used (it is about to be fetched)."""
        self.lower[tier].move_to_end(h)

    def take_from_lower(self, h: int, tier: str) -> None:
        del self.lower[tier][h]

    def insert_hbm(self, h: int, pinned: bool) -> None:
        """Add an entry to HBM (the caller has made room in the block pool)."""
        self.hbm[h] = 1 if pinned else 0
        if pinned:
            self.pinned += 1

    def evict_one(self) -> bool:
        """Demote the least recently used unpinned HBM entry one tier down. False if none."""
        for h, refs in self.hbm.items():
            if refs == 0:
                del self.hbm[h]
                self._push_down(h, 1)
                return True
        return False

    def _push_down(self, h: int, level: int) -> None:
        if level >= len(self.tiers):
            return
        tier = self.tiers[level]
        cap = self.capacity.get(tier, 0)
        if cap <= 0:
            self._push_down(h, level + 1)
            return
        od = self.lower[tier]
        if self.on_demote is not None:
            self.on_demote(self.tiers[level - 1], tier, 1)
        od[h] = None
        od.move_to_end(h)
        while len(od) > cap:
            old, _ = od.popitem(last=False)
            self._push_down(old, level + 1)


def watermark_blocks(num_blocks: int, watermark: float) -> int:
    """Blocks of a pool of ``num_blocks`` kept free at admission (``plan.kv_cache.watermark``, a
    fraction of the pool): a request is admitted only if the free blocks after it stay above them."""
    return int(watermark * num_blocks)


@dataclass
class KVBlockManager:
    num_blocks: int
    block_size: int
    watermark_blocks: int = 0
    used: int = 0
    """Blocks held privately by requests."""
    cache: PrefixCache | None = None
    peak: int = 0
    clock: Callable[[], float] | None = None
    """The simulated clock (``env.now``): with it, blocks in use are integrated over time."""
    _area: float = 0.0
    _t: float = 0.0

    def _mark(self) -> None:
        """Integrate blocks in use up to now. Called before every change of the pool; every
        change of the HBM prefix cache happens at an instant with such a call, so the level now
        is the one held since the last call."""
        level = self.used if self.cache is None else self.used + self.cache.hbm_blocks  # in_use, inlined (hot)
        if level > self.peak:
            self.peak = level
        if self.clock is not None:
            now = self.clock()
            self._area += (now - self._t) * level
            self._t = now

    def block_seconds(self, until: float) -> float:
        """Blocks in use integrated over time from 0 to ``until`` (block-seconds)."""
        self._mark()
        return self._area + max(until - self._t, 0.0) * self.in_use

    def blocks_for(self, tokens: int) -> int:
        return -(-int(tokens) // self.block_size)

    @property
    def in_use(self) -> int:
        """Blocks holding live data: private blocks plus every HBM prefix-cache entry."""
        cache = self.cache
        return self.used if cache is None else self.used + len(cache.hbm) * cache.blocks_per_hash

    @property
    def free(self) -> int:
        cache = self.cache  # num_blocks - in_use, inlined (hot)
        return self.num_blocks - (self.used if cache is None else self.used + len(cache.hbm) * cache.blocks_per_hash)

    @property
    def available(self) -> int:
        """Blocks obtainable now (free plus evictable cache entries)."""
        cache = self.cache
        if cache is None:
            return self.num_blocks - self.used
        return self.num_blocks - (self.used + len(cache.hbm) * cache.blocks_per_hash) + cache.unpinned_blocks

    def make_room(self, n: int) -> bool:
        """Evict unpinned prefix entries until ``n`` blocks are free. False if impossible."""
        self._mark()
        cache = self.cache
        if cache is None:
            return self.num_blocks - self.used >= n
        hbm, bph, evict = cache.hbm, cache.blocks_per_hash, cache.evict_one
        while self.num_blocks - (self.used + len(hbm) * bph) < n:  # free < n
            if not evict():
                return False
        return True

    def can_admit(self, n: int) -> bool:
        return self.available - n >= self.watermark_blocks

    def alloc(self, n: int) -> bool:
        if n <= 0:
            return True
        if not self.make_room(n):
            return False
        self.used += n
        level = self.used if self.cache is None else self.used + self.cache.hbm_blocks  # in_use, inlined (hot)
        if level > self.peak:
            self.peak = level
        return True

    def release(self, n: int) -> None:
        self._mark()
        self.used -= n
        if self.used < 0:
            raise AssertionError("KV block accounting went negative")
