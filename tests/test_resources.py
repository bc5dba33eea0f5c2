"""Links share bandwidth fairly; memory pools never exceed capacity; KV block accounting."""

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from simkit.engine.kvcache import KVBlockManager, PrefixCache
from simkit.engine.resources import Link, MemoryPool
from simkit.errors import CapacityError


def _run_transfers(bw, sizes, starts, latency=0.0):
    env = simpy.Environment()
    link = Link(env, "l", bw, latency)
    done = {}

    def go(k, size, at):
        yield env.timeout(at)
        yield link.transfer(size)
        done[k] = env.now

    for k, (s, a) in enumerate(zip(sizes, starts)):
        env.process(go(k, s, a))
    env.run()
    return done, link


def test_single_transfer_time():
    done, link = _run_transfers(10e9, [5e9], [0.0], latency=1e-3)
    assert done[0] == pytest.approx(0.5 + 1e-3)
    assert link.bytes_moved == 5e9


def test_two_equal_transfers_share_bandwidth():
    done, _ = _run_transfers(10e9, [5e9, 5e9], [0.0, 0.0])
    assert done[0] == pytest.approx(1.0) and done[1] == pytest.approx(1.0)


def test_late_joiner_processor_sharing():
    # A: 10 GB from t=0; B: 2 GB from t=0.5 on a 10 GB/s link.
    # t<0.5 A alone moves 5 GB; then both at 5 GB/s: B done after 0.4 s (t=0.9), A has 3 GB left
    # -> 5 GB moved... A finishes at 0.9 + (5-2)/10 = 1.2
    done, link = _run_transfers(10e9, [10e9, 2e9], [0.0, 0.5])
    assert done[1] == pytest.approx(0.9)
    assert done[0] == pytest.approx(1.2)
    assert link.busy_time == pytest.approx(1.2)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(1e3, 1e9), min_size=1, max_size=6),
    st.lists(st.floats(0, 0.2), min_size=6, max_size=6),
    st.floats(1.1, 4.0),
)
def test_more_bandwidth_is_never_slower(sizes, starts, factor):
    slow, _ = _run_transfers(1e9, sizes, starts[: len(sizes)])
    fast, _ = _run_transfers(1e9 * factor, sizes, starts[: len(sizes)])
    assert max(fast.values()) <= max(slow.values()) * (1 + 1e-9)
    # the link never goes faster than its bandwidth: total bytes / makespan <= bandwidth
    assert sum(sizes) / max(slow.values()) <= 1e9 * (1 + 1e-6) or max(slow.values()) >= min(starts[: len(sizes)])


def test_memory_pool_accounts_by_owner_and_refuses_overflow():
    pool = MemoryPool("hbm", 100.0)
    pool.alloc("weights", 60)
    pool.alloc("kv", 30)
    assert pool.used == 90 and pool.used_by["weights"] == 60
    with pytest.raises(CapacityError, match="hbm"):
        pool.alloc("activations", 20)
    pool.free("kv", 30)
    assert pool.free_bytes == 40 and pool.peak == 90


def test_kv_blocks_and_prefix_cache_eviction():
    cache = PrefixCache(["hbm", "dram"], {"dram": 2}, blocks_per_hash=4)
    kv = KVBlockManager(num_blocks=12, block_size=16, cache=cache)
    for h in (1, 2):
        cache.insert_hbm(h, pinned=False)
    assert kv.in_use == 8 and kv.free == 4 and kv.available == 12
    cache.pin(1)
    assert kv.alloc(8)  # must evict hash 2 (unpinned) to DRAM
    assert cache.where(2) == "dram" and cache.where(1) == "hbm"
    assert not kv.alloc(1)  # hash 1 is pinned; nothing left to evict
    assert cache.match([1, 2, 3]) == ["hbm", "dram"]
