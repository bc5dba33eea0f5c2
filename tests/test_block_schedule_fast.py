"""FlexGen's zig-zag block schedule (several GPU batches per step with prefetch) in closed form
where it reads KV from another tier, writes KV or activations through a staging buffer (disk),
or keeps activations off the GPU (issue 16's tenth round: the plans ``simkit offload-plan``
ranks first), against the reference engine (the oracle): every per-request column, iteration
row, link busy period and summary figure the same bits (``conftest.assert_same_outputs``), and
``engine_path`` names what ran."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simkit.scenario import scenario_from_dict
from simkit.simulate import simulate
from tests.conftest import assert_same_outputs, uniform_workload
from tests.test_fast_cover2 import _HARDWARE, _same_fast, _scenario

_EXAMPLES = int(os.environ.get("SIMKIT_HYPOTHESIS_EXAMPLES", "25"))
_CLOSED = "fast; offloaded steps in closed form"
_ONE_BATCH = ", event by event for steps of one GPU batch (activations off the GPU)"


@st.composite
def _block(draw: st.DrawFn) -> dict:
    """A block-schedule plan.offload of phi-2: KV (and sometimes activations) mostly off the GPU."""
    hardware = draw(st.sampled_from(sorted(_HARDWARE)))
    tiers = _HARDWARE[hardware]

    def share(gpu: list[float]) -> dict:
        g = draw(st.sampled_from(gpu))
        t = draw(st.sampled_from(tiers))
        return {"gpu": g, t: 1.0 - g} if g < 1.0 else {"gpu": 1.0}

    off: dict = {
        "hardware": hardware,
        "weights": share([0.0, 0.5, 1.0]),
        "kv_cache": share([0.0, 0.0, 0.5]),
        "overlap": True,
        "decode_overlap": draw(st.booleans()),
        "pinned": draw(st.booleans()),
        "cpu_attention": draw(st.booleans()),
        "gpu_batch_size": draw(st.integers(1, 4)),
        "num_gpu_batches": draw(st.integers(2, 4)),
    }
    if draw(st.booleans()):
        off["activations"] = share([0.0, 0.5])
    return off


def _expected(off: dict) -> str:
    """The engine path of one replica running ``off``."""
    act = any(f > 0 for t, f in (off.get("activations") or {}).items() if t != "gpu")
    gated = not off["pinned"] or not off["decode_overlap"]
    if act and gated:
        return "fast; offloaded steps event by event (activations off the GPU)"
    if off["cpu_attention"] and not off["pinned"]:
        return "fast; offloaded steps event by event (pageable copies staged by the host thread that runs CPU attention)"
    return _CLOSED + (_ONE_BATCH if act else "")


@settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    off=_block(),
    policy=st.sampled_from(["static", "static", "continuous", "chunked_prefill"]),
    blocks=st.integers(1, 2),
    inp=st.integers(8, 300),
    out=st.integers(1, 24),
    rate=st.sampled_from([0.5, 50.0]),
)
def test_block_schedule_reading_kv_and_activations_equals_reference(off, policy, blocks, inp, out, rate):
    """Static blocks of ``gpu_batch_size`` x ``num_gpu_batches`` prompts and serving steps that
    split into several GPU batches (and some that do not: those keep their events where the
    activations are off the GPU)."""
    batch = off["gpu_batch_size"] * off["num_gpu_batches"]
    batching: dict = {"policy": policy}
    if policy != "static":
        batching["max_num_seqs"] = batch
    if policy == "chunked_prefill":
        batching["chunk_size"] = 128
    workload = uniform_workload(blocks * batch, rate, (inp, inp + 64), (out, out + 8))
    s = _same_fast(_scenario(off, workload, batching, 1))
    if s:
        assert s["engine_path"] == _expected(off)


def test_offload_plans_best_plan_shape_equals_reference():
    """The shape ``simkit offload-plan`` ranks first for OPT-175B on a T4 (weights over GPU, DRAM
    and disk; KV and activations on disk, staged through DRAM both ways; CPU attention; 4 GPU
    batches), on phi-2 so that the reference run stays short: in closed form, the same bits."""
    off = {"hardware": "gcp-t4-vm", "weights": {"gpu": 0.01, "cpu": 0.63, "disk": 0.36},
           "kv_cache": {"gpu": 0.0, "disk": 1.0}, "activations": {"gpu": 0.0, "disk": 1.0},
           "cpu_attention": True, "gpu_batch_size": 8, "num_gpu_batches": 4}  # fmt: skip
    s = _same_fast(_scenario(off, uniform_workload(32, 50.0, (256, 300), (8, 12)), {"policy": "static"}, 1))
    assert s["engine_path"] == _CLOSED + _ONE_BATCH


def test_a6000_search_winner_equals_reference():
    """docs/examples.md's `simkit search a6000-70b-plan.yaml` winner's shape (KV and activations
    in DRAM, attended on the GPU, 4 GPU batches), with fewer prompts and tokens."""
    from simkit.scenario import load_scenario_data

    data = load_scenario_data("workloads/scenarios/quickstart.yaml")
    data.update({"hardware": "lambda-a6000-workstation", "model": "phi-2",
                 "workload": {"batch": {"num_prompts": 16, "input_tokens": 256, "output_tokens": 6}}})  # fmt: skip
    data["plan"] = {"batching": {"policy": "static", "batch_size": 16},
                    "offload": {"weights": {"gpu": 0.33, "cpu": 0.67}, "kv_cache": {"gpu": 0.0, "cpu": 1.0},
                                "activations": {"gpu": 0.0, "cpu": 1.0}, "gpu_batch_size": 4, "num_gpu_batches": 4}}  # fmt: skip
    ref = simulate(scenario_from_dict(data), engine="reference")
    got = simulate(scenario_from_dict(data))
    assert got.summary["engine_path"] == _CLOSED + _ONE_BATCH
    assert_same_outputs(ref, got)


def test_offload_plans_best_plan_stores_replayed_alone_and_among_the_rest(monkeypatch):
    """The stores of one (layer, GPU batch) step are replayed in one go, lane by lane, where a
    bound shows they land before the next step issues its own (``ClosedFormStep._settle``), and
    among the rest (``_Stores``) where it does not: the best-plan shape above takes both, and
    every output is the reference engine's."""
    from simkit.engine import offload_fast

    taken = {"alone": 0, "among": 0}
    settle = offload_fast.ClosedFormStep._settle

    def counted(stores, steps, pend, nxt):  # type: ignore[no-untyped-def]
        settle(stores, steps, pend, nxt)
        taken["alone" if isinstance(steps[pend[0]], float) else "among"] += 1

    monkeypatch.setattr(offload_fast.ClosedFormStep, "_settle", staticmethod(counted))
    off = {"hardware": "gcp-t4-vm", "weights": {"gpu": 0.01, "cpu": 0.63, "disk": 0.36},
           "kv_cache": {"gpu": 0.0, "disk": 1.0}, "activations": {"gpu": 0.0, "disk": 1.0},
           "cpu_attention": True, "gpu_batch_size": 8, "num_gpu_batches": 4}  # fmt: skip
    s = _same_fast(_scenario(off, uniform_workload(32, 50.0, (256, 300), (8, 12)), {"policy": "static"}, 1))
    assert s["engine_path"] == _CLOSED + _ONE_BATCH
    assert taken["alone"] > 0 and taken["among"] > 0, taken


_LANES = [("d2h", 12e9, 5e-6), ("nvme_write", 2e9, 1e-4), ("cxl_write", 30e9, 0.0)]


@st.composite
def _stores(draw: st.DrawFn) -> list:
    """One step's stores: shares written straight to a lane, or staged (d2h, then nvme_write)."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        nbytes = draw(st.sampled_from([1.0, 4096.0, 458752.0, 4559143.587628866, 3e7]))
        if draw(st.booleans()):
            scale = draw(st.sampled_from([1.0, 0.5435, 2.0]))
            out.append(("d2h", nbytes, "nvme_write", nbytes * scale))
        else:
            out.append((draw(st.sampled_from([n for n, _, _ in _LANES])), nbytes))
    return out


def _links(scale: float) -> dict:
    from simkit.engine.resources import Link

    links = {n: Link(None, n, bw * scale, lat) for n, bw, lat in _LANES}  # type: ignore[arg-type]
    for link in links.values():
        link.busy_log = []
    return links


def _shares(spec: list, links: dict) -> list:
    out = []
    for s in spec:
        if len(s) == 4:
            out.append(("kv_write", "disk", s[1], [(s[0], links[s[0]], s[1]), (s[2], links[s[2]], s[3])], True))
        else:
            out.append(("act_write", "cxl", s[1], [(s[0], links[s[0]], s[1])], False))
    return out


@settings(max_examples=4 * _EXAMPLES, deadline=None)
@given(spec=_stores(), at=st.sampled_from([0.0, 1e-3, 0.37, 168.74877438267907, 5000.1]), scale=st.sampled_from([1.0, 0.013, 7.0]))
def test_stores_alone_replayed_lane_by_lane_equal_stores(spec, at, scale):
    """One step's stores alone on idle write lanes: replayed lane by lane (``_solve``, as
    ``ClosedFormStep._settle`` does) they land when ``_Stores`` lands them, with the same link
    counters (busy time, busy periods, bytes), and no later than ``_store_plan``'s bound."""
    from simkit.engine import offload_fast as of

    a, b = _links(scale), _links(scale)
    plan_a, plan_b = _shares(spec, a), _shares(spec, b)
    stores = of._Stores()
    chains = [c for _, _, _, hops, staged in plan_a for c in stores.issue(at, hops, staged)]
    stores.drain()
    want = max(c.done for c in chains)
    got_plan = of._store_plan(plan_b)
    assert got_plan is not None
    comp, span, prog = got_plan
    got = of._solve({}, [(at, comp, None)])
    assert got == want
    assert want <= at + span
    for n in a:
        assert (a[n].busy_time, a[n].bytes_moved, a[n].busy_log) == (b[n].busy_time, b[n].bytes_moved, b[n].busy_log)


def test_store_plan_refuses_next_hops_from_different_lanes():
    """Where a lane takes the next hops of shares whose previous hops crossed different lanes,
    the replay lane by lane might order two joins of one instant otherwise than ``_Stores``:
    ``_store_plan`` refuses (the stores stay among the rest)."""
    from simkit.engine import offload_fast as of

    links = _links(1.0)
    plan = [("kv_write", "disk", 8.0, [("d2h", links["d2h"], 8.0), ("nvme_write", links["nvme_write"], 8.0)], True),
            ("kv_write", "disk", 8.0, [("cxl_write", links["cxl_write"], 8.0), ("nvme_write", links["nvme_write"], 8.0)], True)]  # fmt: skip
    assert of._store_plan(plan) is None
    assert of._store_plan(plan[:1]) is not None


@settings(max_examples=4 * _EXAMPLES, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([1e-300, 1.0, 3.0, 4096.0, 458752.0, 458752.0, 2478244.71849866, 4559143.587628866, 3e7]), min_size=2, max_size=5),
    j=st.sampled_from([0.0, 1e-3, 0.37, 168.74877438267907, 5000.1, 1e12]),
    bw=st.sampled_from([12e9, 2e9, 1.6e10 / 3]),
    logged=st.booleans(),
)
def test_flows_joining_at_one_instant_equal_lane(sizes, j, bw, logged):
    """``_together`` (flows that join an idle direction at one instant, replayed on local
    state) against ``_Lane.add`` of each then ``drain``: the same landing times and link
    counters, bit for bit; and ``_solve`` takes it only where its joins are as ``_Lane``'s
    (every wake-up after the instant: not for 1e-300 bytes at a late instant)."""
    from simkit.engine import offload_fast as of
    from simkit.engine.resources import Link

    a, b = Link(None, "h2d", bw), Link(None, "h2d", bw)  # type: ignore[arg-type]
    if logged:
        a.busy_log, b.busy_log = [[j - 1.0, j]], [[j - 1.0, j]]
    lane_a = of._Lane(a)
    flows = [lane_a.add(j, x) for x in sizes]
    lane_a.drain()
    if j + min(sizes) * 1 / bw > j:
        lane_b = of._Lane(b)
        got = of._together(lane_b, sizes, j)
        assert got == [f.done for f in flows]
        assert (a.busy_time, a.bytes_moved, a.busy_log) == (b.busy_time, b.bytes_moved, b.busy_log)
        assert lane_b.last == lane_a.last
    # through _solve (which decides whether _together applies), the same again
    c = Link(None, "h2d", bw)  # type: ignore[arg-type]
    if logged:
        c.busy_log = [[j - 1.0, j]]
    each = [j] * len(sizes)
    of._solve({}, [(j, [(of._INDEX["h2d"], c, [(0.0, x, [], False)])], None) for x in sizes], each)
    assert each == [max(f.done, j) for f in flows]
    assert (a.busy_time, a.bytes_moved, a.busy_log) == (c.busy_time, c.bytes_moved, c.busy_log)


# issue 16, branch offload11: shares issued at one instant replayed by _run_program (no _solve
# bookkeeping), two flows together written out (_together2), an idle direction's staggered joins
# on local state (_shared): each against what it replaces, bit for bit

_READ_LANES = [("nvme_read", 2e9, 1e-4), ("cxl_read", 30e9, 0.0), ("d2h", 12e9, 5e-6), ("h2d", 12e9, 5e-6),
               ("nvme_write", 2e9, 1e-4), ("cxl_write", 30e9, 0.0)]  # fmt: skip
_SIZES = [0.0, 1e-300, 1.0, 4096.0, 458752.0, 458752.0, 2478244.71849866, 4559143.587628866, 3e7]


def _all_links(scale: float, lat: bool, logged: float | None) -> dict:
    from simkit.engine.resources import Link

    links = {n: Link(None, n, bw * scale, la if lat else 0.0) for n, bw, la in _READ_LANES}  # type: ignore[arg-type]
    for link in links.values():
        link.busy_log = [] if logged is None else [[logged - 1.0, logged]]
    return links


@st.composite
def _items(draw: st.DrawFn) -> list:
    """Items issued together: each a few shares, straight to one direction or staged along
    increasing directions (as a burst's or a step's stores are)."""
    names = [n for n, _, _ in _READ_LANES]
    out = []
    for _ in range(draw(st.integers(1, 4))):
        item = []
        for _ in range(draw(st.integers(0, 3))):
            nbytes = draw(st.sampled_from(_SIZES))
            hops = sorted(draw(st.sets(st.integers(0, len(names) - 1), min_size=1, max_size=3)))
            staged = len(hops) > 1 and draw(st.booleans())
            item.append((nbytes, [names[k] for k in hops], staged))
        out.append(item)
    return out


def _item_shares(item: list, links: dict) -> list:
    return [("kv_read", "disk", nb, [(n, links[n], nb) for n in hops], staged) for nb, hops, staged in item]


@settings(max_examples=8 * _EXAMPLES, deadline=None)
@given(
    items=_items(),
    at=st.sampled_from([0.0, 1e-3, 0.37, 168.74877438267907, 5000.1, 1e12]),
    scale=st.sampled_from([1.0, 0.013, 7.0]),
    lat=st.booleans(),
    logged=st.booleans(),
    split=st.integers(0, 4),
)
def test_program_equals_solve(items, at, scale, lat, logged, split):
    """``_run_program`` (a burst's reads, or a step's stores, issued at one instant, no gate)
    against ``_solve`` of the same items: the same landing times (and ``each``), link counters
    (busy time, bytes, busy periods) and lane clocks, bit for bit; including the shapes where it
    must fall back to ``_replay_lane`` (zero and 1e-300 bytes at late instants, several joins at
    different times on one direction) and where ``_program`` refuses (none here: one link per
    direction)."""
    from simkit.engine import offload_fast as of

    a = _all_links(scale, lat, at if logged else None)
    b = _all_links(scale, lat, at if logged else None)
    comps_a = [of._compile(_item_shares(it, a)) for it in items]
    comps_b = [of._compile(_item_shares(it, b)) for it in items]
    prog = of._program(comps_b)
    assert prog is not None
    lanes_a: dict = {}
    lanes_b: dict = {}
    each = [at] * len(items)
    want = of._solve(lanes_a, [(at, c, None) for c in comps_a], each)
    first, rest = of._run_program(lanes_b, at, prog, split)
    # the last of the items before ``split`` and of the others (_burst's: its activations' and
    # the rest), and the last of all (_settle's: split 0)
    assert first == max(each[:split], default=at)
    assert max(rest, at) == max(each[split:], default=at)
    c = _all_links(scale, lat, at if logged else None)
    prog_c = of._program([of._compile(_item_shares(it, c)) for it in items])
    assert prog_c is not None
    assert of._run_program({}, at, prog_c) == (at, want)
    for n in a:
        assert (a[n].busy_time, a[n].bytes_moved, a[n].busy_log) == (c[n].busy_time, c[n].bytes_moved, c[n].busy_log)
    for n in a:
        assert (a[n].busy_time, a[n].bytes_moved, a[n].busy_log) == (b[n].busy_time, b[n].bytes_moved, b[n].busy_log)
    assert sorted(lanes_a) == sorted(lanes_b)
    for n in lanes_a:
        assert (lanes_a[n].last, lanes_a[n].flows, lanes_a[n].lone) == (lanes_b[n].last, [], None)


def test_program_refuses_what_solve_would_order_otherwise():
    """``_program`` refuses two links (or latencies) on one direction and a staged share whose
    later hop is on an earlier direction (``_solve`` raises there); it accepts the rest."""
    from simkit.engine import offload_fast as of
    from simkit.engine.resources import Link

    links = _all_links(1.0, True, None)
    other = Link(None, "h2d", 12e9, 5e-6)  # type: ignore[arg-type]
    one = of._compile([("kv_read", "disk", 8.0, [("h2d", links["h2d"], 8.0)], False)])
    two = of._compile([("kv_read", "disk", 8.0, [("h2d", other, 8.0)], False)])
    assert of._program([one]) is not None and of._program([one, one]) is not None
    assert of._program([one, two]) is None
    later = of._compile([("kv_read", "disk", 8.0, [("nvme_read", links["nvme_read"], 8.0), ("h2d", other, 8.0)], True)])
    assert of._program([one, later]) is None
    backwards = of._compile([("kv_read", "disk", 8.0, [("h2d", links["h2d"], 8.0), ("nvme_read", links["nvme_read"], 8.0)], True)])
    assert of._program([backwards]) is None


@settings(max_examples=4 * _EXAMPLES, deadline=None)
@given(
    s0=st.sampled_from(_SIZES[2:]),
    s1=st.sampled_from(_SIZES[2:]),
    j=st.sampled_from([0.0, 1e-3, 0.37, 168.74877438267907, 5000.1, 1e12]),
    bw=st.sampled_from([12e9, 2e9, 1.6e10 / 3]),
    logged=st.booleans(),
)
def test_together2_equals_together(s0, s1, j, bw, logged):
    """``_together2`` against ``_together`` of two flows (which the tests above check against
    ``_Lane``): the same landing times, link counters and lane clock."""
    from simkit.engine import offload_fast as of
    from simkit.engine.resources import Link

    a, b = Link(None, "h2d", bw), Link(None, "h2d", bw)  # type: ignore[arg-type]
    if logged:
        a.busy_log, b.busy_log = [[j - 1.0, j]], [[j - 1.0, j]]
    if not j + min(s0, s1) * 1 / bw > j:
        return  # outside both functions' condition (the callers check it)
    lane_a, lane_b = of._Lane(a), of._Lane(b)
    assert list(of._together2(lane_b, s0, s1, j)) == of._together(lane_a, [s0, s1], j)
    assert (a.busy_time, a.bytes_moved, a.busy_log) == (b.busy_time, b.bytes_moved, b.busy_log)
    assert lane_a.last == lane_b.last


@settings(max_examples=8 * _EXAMPLES, deadline=None)
@given(
    flows=st.lists(st.tuples(st.sampled_from([0.0, 0.0, 1e-9, 1e-4, 2.3e-4, 1e-3, 0.01]), st.sampled_from(_SIZES)), min_size=1, max_size=6),
    j=st.sampled_from([0.0, 0.37, 168.74877438267907, 1e12]),
    bw=st.sampled_from([12e9, 2e9, 1.6e10 / 3]),
    logged=st.booleans(),
)
def test_shared_equals_lane(flows, j, bw, logged):
    """``_shared`` (flows joining an idle direction at times in order: the lone flow kept aside,
    closed alone or joined, wake-ups due before each join fired first) against ``_Lane.add`` of
    each then ``drain``: the same landing times, link counters and lane clock, bit for bit
    (joins at one instant, zero and 1e-300 bytes, flows landing exactly at a later join)."""
    from simkit.engine import offload_fast as of
    from simkit.engine.resources import Link

    joins = []
    t = j
    for gap, _ in flows:
        t = t + gap
        joins.append(t)
    sizes = [s for _, s in flows]
    if len(flows) > 1:
        # a flow that lands exactly when the next joins
        joins[1] = joins[0] + sizes[0] * 1 / bw if flows[1][0] == 1e-9 else joins[1]
        joins = sorted(joins)
    a, b = Link(None, "h2d", bw), Link(None, "h2d", bw)  # type: ignore[arg-type]
    if logged:
        a.busy_log, b.busy_log = [[j - 1.0, j]], [[j - 1.0, j]]
    lane_a, lane_b = of._Lane(a), of._Lane(b)
    want = [lane_a.add(x, s) for x, s in zip(joins, sizes, strict=True)]
    lane_a.drain()
    got = of._shared(lane_b, joins, sizes)
    assert got == [f.done for f in want]
    assert (a.busy_time, a.bytes_moved, a.busy_log) == (b.busy_time, b.bytes_moved, b.busy_log)
    assert lane_a.last == lane_b.last


@settings(max_examples=8 * _EXAMPLES, deadline=None)
@given(
    lanes=st.sampled_from([("d2h", "nvme_write"), ("nvme_read", "h2d"), ("nvme_read", "nvme_write"), ("cxl_read", "h2d")]),
    shares=st.tuples(*[st.tuples(st.sampled_from(_SIZES), st.sampled_from([1.0, 0.5435, 2.0, 1e-300]), st.booleans())] * 2),
    one_item=st.booleans(),
    at=st.sampled_from([0.0, 1e-3, 0.37, 168.74877438267907, 5000.1, 1e12]),
    scale=st.sampled_from([1.0, 0.013, 7.0]),
    lat=st.booleans(),
    logged=st.booleans(),
    split=st.integers(0, 2),
    busy=st.sampled_from([None, None, 0, 1]),
)
def test_pair_equals_solve(lanes, shares, one_item, at, scale, lat, logged, split, busy):
    """The commonest program (two first hops on one direction, the staged ones' later hops on a
    second: a step's stores, a burst's activations and KV) runs ``_run_pair``: against
    ``_solve``, the same landing times and link counters, bit for bit; where a direction is busy
    (a flow already on it) or the two cannot join together (1e-300 bytes late, zero bytes) it
    must decline (nothing changed) and ``_run_program`` replays it as ``_solve`` does."""
    from simkit.engine import offload_fast as of

    items = [[(nb, [lanes[0], lanes[1]] if staged else [lanes[0]], staged)] for nb, _, staged in shares]
    if one_item:
        items = [items[0] + items[1]]
    out = []
    for links in (_all_links(scale, lat, at if logged else None) for _ in range(2)):
        comps = []
        for it in items:
            shares_ = [("kv_read", "disk", nb, [(n, links[n], nb * (f if k else 1.0)) for k, n in enumerate(hops)], st_)
                       for (nb, hops, st_), (_, f, _) in zip(it, shares, strict=False)]  # fmt: skip
            comps.append(of._compile(shares_))
        lanes_: dict = {}
        if busy is not None:
            # a flow already on one of the directions (issued before, not yet landed)
            lane = lanes_[lanes[busy]] = of._Lane(links[lanes[busy]])
            lane.add(at - 1e-3, 1e6)
        out.append((links, comps, lanes_))
    (a, comps_a, lanes_a), (b, comps_b, lanes_b) = out
    prog = of._program(comps_b)
    assert prog is not None
    if any(staged for _, _, staged in shares):
        assert prog[2] is not None  # a pair
    each = [at] * len(items)
    want = of._solve(lanes_a, [(at, c, None) for c in comps_a], each)
    split = min(split, len(items))
    first, rest = of._run_program(lanes_b, at, prog, split)
    assert first == max(each[:split], default=at)
    assert max(rest, at) == max(each[split:], default=at)
    if split == 0:
        assert rest == want
    for lane in (*lanes_a.values(), *lanes_b.values()):
        lane.drain()
    for n in a:
        assert (a[n].busy_time, a[n].bytes_moved, a[n].busy_log) == (b[n].busy_time, b[n].bytes_moved, b[n].busy_log)
    assert sorted(lanes_a) == sorted(lanes_b)
    for n in lanes_a:
        assert lanes_a[n].last == lanes_b[n].last
