"""The search: expand the space, screen every candidate, then branch and bound.

Candidates that pass screening are simulated in order of their optimistic objective (the best
value the bounds allow); the search stops when no candidate left can enter the top N, whose
N-th entry is by then a simulated, feasible plan. Every simulation goes through one function,
:func:`evaluate`, and into a resumable store keyed by the hash of the candidate's complete
scenario, so an interrupted search picks up where it stopped.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simkit.scenario import apply_overrides, scenario_from_dict
from simkit.search.metrics import derive
from simkit.search.screen import Screened, Screener
from simkit.search.spec import Constraint, SearchError, SearchSpec
from simkit.study.store import RunStore, scenario_hash

COST_METRICS = ("cost_usd", "cost_per_hour_usd", "usd_per_million_output_tokens", "output_tokens_per_usd",
                "goodput_output_tokens_per_usd", "max_rate_rps_per_usd_hour")


def evaluate(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Simulate one complete scenario through the study executor's ``run_task``: the row has
    ``status`` (ok|error), ``error``, the summary metrics flattened (``a.b``) and the search's
    derived metrics. The one place a search simulates."""
    from simkit.study.executor import Task, run_task

    rid = scenario_hash(data)
    row = run_task(Task(rid, data, str(Path(where).parent), {}, source=where))
    row.pop("sim_wall_s", None)  # wall-clock time: keeps the search's outputs deterministic
    if row.get("status") == "ok":
        row.update(derive(row))
    return row


@dataclass
class Cand:
    index: int
    labels: dict[str, Any]
    screen: Screened
    cid: str = ""
    row: dict[str, Any] = field(default_factory=dict)
    feasible: bool = False
    reason: str = ""
    category: str = ""
    simulated: bool = False
    pruned: bool = False


@dataclass
class SearchResult:
    spec: SearchSpec
    cands: list[Cand]
    top: list[Cand]
    simulations: int
    """Simulations this call ran (cached ones from a previous, interrupted run not counted)."""
    reused: int
    wall_s: float
    bound_violations: list[str]
    exhaustive: bool

    @property
    def best(self) -> Cand | None:
        return self.top[0] if self.top else None


class Progress:
    """A one-line progress bar with an ETA on stderr (throttled)."""

    def __init__(self, total: int, enabled: bool, stream: Any = None) -> None:
        self.total = max(total, 1)
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.done = 0

    def update(self, done: int, left: int, note: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        self.done = done
        if now - self.last < 0.25 and left:
            return
        self.last = now
        el = now - self.t0
        rate = el / done if done else 0.0
        eta = rate * left
        frac = done / max(done + left, 1)
        bar = "#" * int(frac * 24)
        self.stream.write(f"\rsearch [{bar:<24}] {done} simulated, <= {left} to go, ETA <= {eta:5.0f} s {note}   ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _violations(cons: list[Constraint], row: dict[str, Any]) -> list[Constraint]:
    return [c for c in cons if not c.ok(row.get(c.metric))]


def _bound_violation(c: Constraint, sc: Screened, use_bounds: bool) -> str | None:
    """The constraint is provably violated by the candidate's exact value or its bound (the
    bounds hold at the base workload's rate, so capacity mode uses exact values only)."""
    m = c.metric
    if m in sc.exact:
        return None if c.ok(sc.exact[m]) else f"{m} = {sc.exact[m]:g}, limit {c.value:g}"
    if not use_bounds:
        return None
    if c.bound == "max" and m in sc.lo and sc.lo[m] > c.value:
        return f"{m} >= {sc.lo[m]:.4g} (bound), limit {c.value:g}"
    if c.bound == "min" and m in sc.hi and sc.hi[m] < c.value:
        return f"{m} <= {sc.hi[m]:.4g} (bound), limit {c.value:g}"
    return None


def optimistic(spec: SearchSpec, sc: Screened) -> float:
    m = spec.objective
    if m in sc.exact:
        return float(sc.exact[m])
    if spec.capacity is not None:
        return math.inf if spec.maximize else -math.inf
    if spec.maximize:
        return float(sc.hi.get(m, math.inf))
    return float(sc.lo.get(m, -math.inf))


def run_search(
    spec: SearchSpec,
    store: RunStore | None = None,
    *,
    exhaustive: bool = False,
    progress: bool = False,
    jobs: int = 1,
    evaluator: Callable[[dict[str, Any], str], dict[str, Any]] = evaluate,
) -> SearchResult:
    """Screen, bound and simulate; see the module docstring. ``evaluator`` is the function that
    simulates one scenario (tests count calls through it). ``jobs`` > 1 simulates that many
    candidates at once in worker processes (not in capacity mode): the answer is the same, a
    few more candidates may be simulated than one process would."""
    t_start = time.perf_counter()
    uses_cost = spec.objective in COST_METRICS or any(c.metric in COST_METRICS for c in spec.constraints)
    scr = Screener(spec.where, uses_cost)
    offload_key = "offload" if "offload" in spec.space_keys else None
    cands: list[Cand] = []
    for i, (labels, over) in enumerate(spec.candidates()):
        s = scr.screen(spec.base, over, labels.get(offload_key) if offload_key else None)
        c = Cand(i, labels, s)
        c.cid = scenario_hash(s.data) if s.data is not None else scenario_hash({"overrides": over})
        cands.append(c)
    if scr.unpriced:
        raise SearchError(
            f"the objective or a constraint is a cost metric, but these have no price (price_per_hour 0): "
            f"{', '.join(sorted(scr.unpriced))}; give them a price or leave them out of the space",
            where=spec.spec_path,
            key="objective",
        )
    # exact screening and constraint bounds
    live: list[Cand] = []
    for c in cands:
        s = c.screen
        if not s.ok:
            c.reason, c.category = s.reason, s.category
            continue
        viol = [(k, v) for k in spec.constraints if (v := _bound_violation(k, s, spec.capacity is None)) is not None]
        if viol:
            c.reason = "; ".join(v for _, v in viol)
            c.category = f"constraint {viol[0][0].metric}"
            continue
        live.append(c)
    cap_rate = None
    if spec.capacity is not None and live:
        cap_rate = _base_rate(spec, live[0].screen.data or spec.base)
    sign = -1.0 if spec.maximize else 1.0
    order = sorted(live, key=lambda c: (sign * optimistic(spec, c.screen), c.index))
    done_ids = store.done() if store is not None else set()
    memo: dict[str, dict[str, Any]] = {}
    top: list[tuple[tuple[float, int], Cand]] = []
    sims = 0
    reused = 0
    violations: list[str] = []
    prog = Progress(len(order), progress)
    exh = exhaustive

    def run_one(data: dict[str, Any], row: dict[str, Any] | None = None) -> dict[str, Any]:
        """The row of one scenario: remembered, from the store, or simulated now (``row``: a
        result a worker process computed, to be stored)."""
        nonlocal sims, reused
        rid = scenario_hash(data)
        if rid in memo:
            return memo[rid]
        if row is None and rid in done_ids and store is not None:
            reused += 1
            row = store.row(rid)
        else:
            if row is None:
                row = evaluator(data, spec.where)
            sims += 1
            if store is not None:
                from simkit.study.executor import scenario_yaml

                store.put_files(rid, {"scenario.yaml": scenario_yaml(data)})
                store.put(rid, row)
        memo[rid] = row
        return row

    def pruned(c: Cand) -> bool:
        bkey = (sign * optimistic(spec, c.screen), c.index)
        return not exh and len(top) >= spec.top and not bkey < top[-1][0]

    def prune_rest(rest: list[Cand]) -> None:
        for r in rest:
            r.pruned = True
            r.reason = f"pruned: its bound on {spec.objective} cannot beat the top {spec.top}"
            r.category = "pruned by bound"

    def settle(c: Cand, row: dict[str, Any]) -> None:
        nonlocal exh
        c.row = row
        c.simulated = True
        if row.get("status") != "ok":
            c.reason = row.get("error", "simulation failed")
            c.category = "simulation error"
            return
        if spec.capacity is None:
            bad = _check_bounds(c.screen, row)
            if bad:
                violations.extend(f"{c.cid}: {b}" for b in bad)
                exh = True  # never trust the bounds again in this search
        v = _violations(spec.constraints, row)
        if v:
            c.reason = row.get("capacity_reason") or "; ".join(f"{x.metric} = {_fmt(row.get(x.metric))}, limit {x.value:g}" for x in v)
            c.category = f"constraint {v[0].metric}"
            return
        val = finite_number(row.get(spec.objective))
        if val is None:
            c.reason = f"objective {spec.objective} is undefined for this plan"
            c.category = "objective undefined"
            return
        c.feasible = True
        top.append(((sign * val, c.index), c))
        top.sort(key=lambda t: t[0])
        del top[spec.top:]

    try:
        if jobs > 1 and spec.capacity is None:
            _parallel(order, jobs, pruned, prune_rest, settle, run_one, memo, done_ids, evaluator, spec.where,
                      lambda left: prog.update(sims + reused, left))
        else:
            for k, c in enumerate(order):
                if pruned(c):
                    prune_rest(order[k:])
                    break
                assert c.screen.data is not None
                if spec.capacity is not None:
                    row = _capacity_eval(spec, c, run_one, cap_rate)
                else:
                    row = run_one(c.screen.data)
                settle(c, row)
                prog.update(sims + reused, len(order) - k - 1)
    finally:
        prog.close()
    return SearchResult(spec, cands, [c for _, c in top], sims, reused, time.perf_counter() - t_start, violations, exh)


def _parallel(
    order: list[Cand],
    jobs: int,
    pruned: Callable[[Cand], bool],
    prune_rest: Callable[[list[Cand]], None],
    settle: Callable[[Cand, dict[str, Any]], None],
    run_one: Callable[..., dict[str, Any]],
    memo: dict[str, dict[str, Any]],
    done_ids: set[str],
    evaluator: Callable[[dict[str, Any], str], dict[str, Any]],
    where: str,
    update: Callable[[int], None],
) -> None:
    """Branch and bound with up to ``jobs`` simulations in flight. A candidate is submitted only
    if it can still enter the top N; the top N only improves while others run, so whatever it
    prunes stays pruned, and the result equals the sequential search's."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        ctx.set_forkserver_preload(["simkit.search.run", "simkit.simulate"])
    pending = list(reversed(order))
    running: dict[Future[Any], Cand] = {}
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx)
    try:
        while True:
            while len(running) < jobs and pending:
                c = pending[-1]
                if pruned(c):
                    prune_rest(list(reversed(pending)))
                    pending.clear()
                    break
                pending.pop()
                assert c.screen.data is not None
                if scenario_hash(c.screen.data) in memo or scenario_hash(c.screen.data) in done_ids:
                    settle(c, run_one(c.screen.data))
                    continue
                running[pool.submit(evaluator, c.screen.data, where)] = c
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in sorted(finished, key=lambda f: running[f].index):
                c = running.pop(f)
                assert c.screen.data is not None
                settle(c, run_one(c.screen.data, f.result()))
            update(len(pending) + len(running))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def finite_number(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _fmt(v: Any) -> str:
    x = finite_number(v)
    return "undefined" if x is None else f"{x:.4g}"


def _check_bounds(s: Screened, row: dict[str, Any]) -> list[str]:
    """Bounds a simulation broke (there should be none; a violation switches pruning off)."""
    bad = []
    for m, b in s.lo.items():
        v = finite_number(row.get(m))
        if v is not None and v < b * (1 - 1e-9) - 1e-12:
            bad.append(f"{m} = {v:.6g} below its lower bound {b:.6g}")
    for m, b in s.hi.items():
        v = finite_number(row.get(m))
        if v is not None and v > b * (1 + 1e-9) + 1e-12:
            bad.append(f"{m} = {v:.6g} above its upper bound {b:.6g}")
    for m, b in s.exact.items():
        v = finite_number(row.get(m))
        if v is not None and abs(v - b) > 1e-9 * max(abs(b), 1.0):
            bad.append(f"{m} = {v:.6g}, screening said {b:.6g}")
    return bad


# ---- capacity mode -------------------------------------------------------------------------
def _base_rate(spec: SearchSpec, data: dict[str, Any]) -> float:
    """Requests per second the base workload offers (what rate overrides scale)."""
    w = data.get("workload") or {}
    syn = w.get("synthetic")
    if isinstance(syn, dict):
        arr = syn.get("arrival") or {}
        if arr.get("process") == "all_at_once" or not arr.get("rate"):
            raise SearchError("capacity mode needs arrivals with a rate (workload.synthetic.arrival.rate)", where=spec.spec_path, key="capacity")
        return float(arr["rate"])
    if isinstance(w.get("trace"), dict):
        from simkit.deployment import build_workload

        reqs = build_workload(scenario_from_dict(data, where=spec.where))
        span = float(reqs.arrival_s.max() - reqs.arrival_s.min())
        if len(reqs) < 2 or span <= 0:
            raise SearchError("capacity mode needs a trace whose requests arrive over time", where=spec.spec_path, key="capacity")
        return (len(reqs) - 1) / span
    raise SearchError("capacity mode needs a synthetic workload with an arrival rate, or a trace (a fixed batch has no rate)",
                      where=spec.spec_path, key="capacity")


def at_rate(data: dict[str, Any], rate: float, base_rate: float) -> dict[str, Any]:
    """The scenario with its arrivals scaled to ``rate`` requests per second."""
    w = data["workload"]
    if "synthetic" in w and w["synthetic"] is not None:
        return apply_overrides(data, {"workload.synthetic.arrival.rate": rate})
    scale = float(w["trace"].get("rate_scale", 1.0))
    return apply_overrides(data, {"workload.trace.rate_scale": scale * rate / base_rate})


def bisect_rate(
    feasible: Callable[[float], bool], lo: float, hi: float, tol: float
) -> tuple[float | None, bool, int]:
    """Highest rate in [lo, hi] where ``feasible`` holds, to within ``tol`` relative (the answer
    r is feasible and r x (1 + tol) is not, or r = hi). Assumes feasibility falls with the rate.
    Returns (rate or None if even lo fails, capped at hi, evaluations)."""
    n = 1
    if not feasible(lo):
        return None, False, n
    n += 1
    if feasible(hi):
        return hi, True, n
    a, b = lo, hi  # a feasible, b not
    while b - a > tol * a:
        mid = 0.5 * (a + b)
        n += 1
        if feasible(mid):
            a = mid
        else:
            b = mid
    return a, False, n


def _capacity_eval(spec: SearchSpec, c: Cand, run_one: Callable[[dict[str, Any]], dict[str, Any]], base_rate: float | None) -> dict[str, Any]:
    cap = spec.capacity
    assert cap is not None and c.screen.data is not None and base_rate is not None
    data = c.screen.data
    rows: dict[float, dict[str, Any]] = {}

    def ok(rate: float) -> bool:
        row = run_one(at_rate(data, rate, base_rate))
        rows[rate] = row
        if row.get("status") != "ok":
            return False
        return not [x for x in spec.constraints if x.metric not in CAPACITY_ONLY and not x.ok(row.get(x.metric))]

    r, capped, _ = bisect_rate(ok, cap.min_rate, cap.max_rate, cap.tolerance)
    if r is None:
        row = dict(rows[cap.min_rate])
        if row.get("status") != "ok":
            return row
        v = [x for x in spec.constraints if not x.ok(row.get(x.metric))]
        row["capacity_reason"] = f"constraints not met even at min_rate {cap.min_rate:g} req/s: " + "; ".join(
            f"{x.metric} = {_fmt(row.get(x.metric))}, limit {x.value:g}" for x in v
        )
        row["max_rate_rps"] = math.nan
        row["max_rate_rps_per_usd_hour"] = row["max_rate_rps_per_gpu"] = math.nan
        return row
    row = dict(rows[r])
    row["max_rate_rps"] = r
    row["max_rate_capped"] = capped
    row["rate_rps"] = r
    price = finite_number(row.get("cost_per_hour_usd"))
    gpus = finite_number(row.get("gpus"))
    row["max_rate_rps_per_usd_hour"] = r / price if price else math.nan
    row["max_rate_rps_per_gpu"] = r / gpus if gpus else math.nan
    return row


CAPACITY_ONLY = ("max_rate_rps", "max_rate_rps_per_usd_hour", "max_rate_rps_per_gpu")


def winner_data(res: SearchResult) -> dict[str, Any] | None:
    """The complete scenario of the winner (at its highest feasible rate in capacity mode)."""
    b = res.best
    if b is None or b.screen.data is None:
        return None
    data = b.screen.data
    if res.spec.capacity is not None:
        data = at_rate(data, float(b.row["max_rate_rps"]), _base_rate(res.spec, data))
    return data


def rejected_by_reason(res: SearchResult) -> dict[str, int]:
    cnt = Counter(c.category for c in res.cands if not c.feasible and not c.pruned)
    return dict(sorted(cnt.items(), key=lambda kv: (-kv[1], kv[0])))


def closest_miss(res: SearchResult) -> str | None:
    """When nothing is feasible: which constraint removed the most plans, and how close the
    best simulated plan came to meeting it."""
    cnt = Counter(c.category for c in res.cands if c.category.startswith("constraint "))
    if not cnt:
        return None
    cat, n = cnt.most_common(1)[0]
    metric = cat.split(" ", 1)[1]
    cons = [x for x in res.spec.constraints if x.metric == metric]
    best_v = None
    for c in res.cands:
        v = finite_number(c.row.get(metric)) if c.simulated else None
        if v is None and metric in c.screen.exact:
            v = float(c.screen.exact[metric])
        if v is None:
            continue
        if best_v is None or (cons and ((cons[0].bound == "max" and v < best_v) or (cons[0].bound == "min" and v > best_v))):
            best_v = v
    lim = ", ".join(x.label() for x in cons)
    close = f"; the closest plan reached {metric} = {best_v:.4g}" if best_v is not None else ""
    if best_v is None and cons:
        # nothing simulated: the bounds proved it; say how far the best bound is
        side = [c.screen.lo.get(metric) if cons[0].bound == "max" else c.screen.hi.get(metric) for c in res.cands]
        vals = [v for v in side if v is not None]
        if vals:
            v = min(vals) if cons[0].bound == "max" else max(vals)
            close = f"; no plan can reach it: the best possible is {metric} {'>=' if cons[0].bound == 'max' else '<='} {v:.4g}"
    return f"constraint {lim} removed the most plans ({n}){close}"
