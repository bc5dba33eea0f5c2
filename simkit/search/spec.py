"""The search file: a base scenario, a space over dotted scenario keys (with shorthands),
constraints on summary metrics, an objective, and optionally capacity mode. docs/search.md
documents every key. Everything here is validated before a single candidate is simulated.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from simkit.errors import SimkitError
from simkit.scenario import Scenario, apply_overrides, find_base_scenario, load_scenario_data
from simkit.search.metrics import BOOLEAN_METRICS, known_metrics
from simkit.specs.yamlio import load_yaml


class SearchError(SimkitError):
    """A search file is invalid, or the search has no answer to give."""


TOP_KEYS = ("name", "base", "space", "constraints", "objective", "top", "pareto", "capacity")
SHORTHANDS = ("gpu", "layout", "precision", "offload", "fleet")
PRECISIONS: dict[str, dict[str, str]] = {
    "bf16": {"weights": "bf16", "activations": "bf16", "kv_cache": "bf16"},
    "fp16": {"weights": "fp16", "activations": "fp16", "kv_cache": "fp16"},
    "fp8": {"weights": "fp8", "activations": "fp8", "kv_cache": "fp8"},
    "fp8-kv": {"weights": "bf16", "activations": "bf16", "kv_cache": "fp8"},
    "int8": {"weights": "int8", "activations": "int8", "kv_cache": "bf16"},
    "int4": {"weights": "int4", "activations": "fp16", "kv_cache": "fp16"},
    "int4-fp8-kv": {"weights": "int4", "activations": "fp16", "kv_cache": "fp8"},
}
OFFLOAD_CHOICES = ("none", "optimized")
POW2 = [1, 2, 4, 8]
MAX_AXIS_VALUES = 100_000
"""Most values one space key (a range, a layout, a fleet) may give."""
MAX_CANDIDATES = 1_000_000
"""Most candidates a space may hold (every one is screened): refused before any is built."""
MAX_BISECTIONS = 64
"""Most bisection steps capacity mode may need per plan (log2 of (max_rate - min_rate) / (tolerance x min_rate))."""
DEFAULT_PARETO = [("output_tokens_per_s_per_gpu", "tokens_per_s_per_user"), ("cost_per_hour_usd", "ttft_p90_s")]


@dataclass(frozen=True)
class Constraint:
    metric: str
    bound: str  # "max" or "min"
    value: float

    def ok(self, v: Any) -> bool:
        try:
            x = float(v)
        except (TypeError, ValueError):
            return False
        if math.isnan(x):
            return False
        return x <= self.value if self.bound == "max" else x >= self.value

    def label(self) -> str:
        return f"{self.metric} {'<=' if self.bound == 'max' else '>='} {self.value:g}"


@dataclass(frozen=True)
class Capacity:
    min_rate: float
    max_rate: float
    tolerance: float
    """Relative: bisection stops when (high - low) <= tolerance x low."""


@dataclass
class Axis:
    key: str
    """The dotted scenario key or shorthand, as written in the search file (the column name)."""
    labels: list[Any]
    """The value shown in candidates.parquet for each choice."""
    overrides: list[dict[str, Any]]
    """What each choice sets (dotted key -> value)."""


@dataclass
class SearchSpec:
    name: str
    base: dict[str, Any]
    where: str
    """The file relative paths of the base scenario resolve against."""
    axes: list[Axis]
    constraints: list[Constraint]
    objective: str
    maximize: bool
    top: int = 5
    pareto: list[tuple[str, str]] = field(default_factory=lambda: list(DEFAULT_PARETO))
    capacity: Capacity | None = None
    spec_path: str | None = None

    @property
    def space_keys(self) -> list[str]:
        return [a.key for a in self.axes]

    @property
    def size(self) -> int:
        return math.prod(len(a.labels) for a in self.axes)

    def candidates(self) -> typing.Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(labels by space key, overrides) of every candidate, in space order (cartesian product)."""
        for combo in itertools.product(*(range(len(a.labels)) for a in self.axes)):
            labels: dict[str, Any] = {}
            over: dict[str, Any] = {}
            for a, i in zip(self.axes, combo, strict=True):
                labels[a.key] = a.labels[i]
                over.update(a.overrides[i])
            yield labels, over


# ---- key checking --------------------------------------------------------------------------
def _annotation_at(key: str) -> Any:
    """The pydantic annotation of a dotted scenario key; raises SearchError for an unknown key.
    Keys inside ``hardware`` (a free-form node mapping) are checked when candidates resolve."""
    parts = key.split(".")
    model: type[BaseModel] = Scenario
    ann: Any = None
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=3)
            hint = f"; did you mean {', '.join('.'.join([*parts[:i], c]) for c in close)}?" if close else ""
            where = ".".join(parts[:i]) or "the scenario"
            raise SearchError(f"unknown scenario key {key!r}: {where} has no {part!r}{hint}", key=f"space.{key}")
        ann = fields[part].annotation
        if part == "hardware" and i == 0:
            return ann
        inner = _model_in(ann, parts[i + 1] if i < len(parts) - 1 else None)
        if i < len(parts) - 1:
            if inner is None:
                raise SearchError(f"unknown scenario key {key!r}: {'.'.join(parts[: i + 1])} is not a mapping", key=f"space.{key}")
            model = inner
    return ann


def _model_in(ann: Any, child: str | None = None) -> type[BaseModel] | None:
    """The model inside an annotation; of a union of models (``plan.batching``, one per
    policy), the first that has the key ``child``."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    found = None
    for a in typing.get_args(ann):
        m = _model_in(a, child)
        if m is not None and (child is None or child in m.model_fields):
            return m
        found = found or m
    return found


def _all_values(key: str, ann: Any) -> list[Any]:
    """What ``all`` means for a dotted key."""
    if key in ("plan.parallel.tp", "plan.parallel.pp", "plan.parallel.ep"):
        return list(POW2)
    if key == "plan.batching.policy":  # the tag of the union of per-policy options
        from simkit.policies.batching import BATCHING_POLICIES

        return list(BATCHING_POLICIES)
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if ann is bool or bool in args:
        return [False, True]
    lits = [a for a in args if typing.get_origin(a) is typing.Literal]
    if typing.get_origin(ann) is typing.Literal:
        return list(typing.get_args(ann))
    if lits:
        return list(typing.get_args(lits[0]))
    raise SearchError(f"'all' is not defined for {key!r} (give a list of values or a range)", key=f"space.{key}")


def _range(key: str, r: dict[str, Any]) -> list[Any]:
    ks = set(r)
    if not ({"from", "to"} <= ks and ks <= {"from", "to", "step", "times"}) or ("step" in ks and "times" in ks):
        raise SearchError(
            "a range is {from: A, to: B, step: S} (arithmetic) or {from: A, to: B, times: F} (geometric); "
            "to give mapping values, put them in a list",
            key=f"space.{key}",
        )
    a, b = r["from"], r["to"]
    for name, v in (("from", a), ("to", b), *((k, r[k]) for k in ("step", "times") if k in r)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise SearchError(f"range {name}: expected a finite number, got {v!r}", key=f"space.{key}")
    if b < a:
        raise SearchError(f"range to ({b}) is below from ({a})", key=f"space.{key}")
    out: list[Any] = []
    ints = all(isinstance(r[k], int) for k in r)
    if "times" in r:
        f = r["times"]
        if f <= 1:
            raise SearchError(f"range times: expected a factor > 1, got {f}", key=f"space.{key}")
        if a <= 0:
            raise SearchError("a geometric range needs from > 0", key=f"space.{key}")
        steps = (math.log(b) - math.log(a)) / math.log(f)
        if not steps < MAX_AXIS_VALUES:
            raise SearchError(f"range has more than {MAX_AXIS_VALUES} values", key=f"space.{key}")
        v = a
        while v <= b * (1 + 1e-12):
            out.append(v)
            v = v * f
    else:
        s = r.get("step", 1)
        if s <= 0:
            raise SearchError(f"range step: expected a number > 0, got {s}", key=f"space.{key}")
        steps = (b - a) / s
        if not steps < MAX_AXIS_VALUES:
            raise SearchError(f"range has more than {MAX_AXIS_VALUES} values", key=f"space.{key}")
        n = int(math.floor(steps + 1e-9)) + 1
        out = [a + k * s for k in range(n)]
    if not ints:
        out = [float(round(x, 12)) for x in out]
    return out


def _values(key: str, v: Any, ann: Any) -> list[Any]:
    if v == "all":
        return _all_values(key, ann)
    if isinstance(v, dict):
        return _range(key, v)
    if isinstance(v, list):
        if not v:
            raise SearchError("the list of values is empty: the space would have no candidates", key=f"space.{key}")
        return list(v)
    return [v]


# ---- shorthands ----------------------------------------------------------------------------
def gpu_hardware(name: str) -> dict[str, Any]:
    """Overrides that put GPU ``name`` in the base node (:func:`simkit.specs.node.gpu_swap`)."""
    from simkit.specs.node import gpu_swap

    return {f"hardware.{k}": v for k, v in gpu_swap(name, key="space.gpu").items()}


def _gpu_axis(key: str, v: Any) -> Axis:
    from simkit.specs.catalog import default_catalog

    names = default_catalog().names("gpu") if v == "all" else _values(key, v, str)
    return Axis(key, list(names), [gpu_hardware(str(n)) for n in names])


def _layout_axis(v: Any) -> Axis:
    if v == "all":
        v = {}
    if not isinstance(v, dict):
        raise SearchError("layout: expected 'all' or a mapping {max_gpus: N, tp: [...], pp: [...], replicas: [...]}", key="space.layout")
    extra = set(v) - {"max_gpus", "tp", "pp", "replicas"}
    if extra:
        raise SearchError(f"layout: unknown key(s) {sorted(extra)} (expected max_gpus, tp, pp, replicas)", key="space.layout")
    mx = v.get("max_gpus", 8)
    if isinstance(mx, bool) or not isinstance(mx, int) or not 1 <= mx <= MAX_AXIS_VALUES:
        raise SearchError(f"layout.max_gpus: expected an integer from 1 to {MAX_AXIS_VALUES}, got {mx!r}", key="space.layout.max_gpus")
    tps = _values("layout.tp", v.get("tp", [t for t in POW2 if t <= mx]), int)
    pps = _values("layout.pp", v.get("pp", [p for p in POW2 if p <= mx]), int)
    reps = _values("layout.replicas", v.get("replicas", list(range(1, mx + 1))), int)
    if len(tps) * len(pps) * len(reps) > MAX_CANDIDATES:
        raise SearchError(f"layout: {len(tps)} x {len(pps)} x {len(reps)} combinations of tp, pp and replicas "
                          f"(more than {MAX_CANDIDATES})", key="space.layout")
    labels, overs = [], []
    for tp, pp, r in itertools.product(tps, pps, reps):
        if tp * pp * r <= mx:
            labels.append(f"tp={tp},pp={pp},replicas={r}")
            overs.append({"plan.parallel.tp": tp, "plan.parallel.pp": pp, "plan.parallel.replicas": r})
    if not labels:
        raise SearchError(f"layout: no tp x pp x replicas fits in max_gpus={mx}", key="space.layout")
    return Axis("layout", labels, overs)


def _fleet_axis(v: Any) -> Axis:
    """Every mix of replicas over the given GPU types (each with ``tp`` GPUs) with 1 to
    ``max_gpus`` GPUs in all, as ``plan.fleet`` (one group per type with at least one replica)."""
    from simkit.specs.catalog import default_catalog

    if not isinstance(v, dict) or "gpus" not in v:
        raise SearchError("fleet: expected a mapping {gpus: [GPU, ...], max_gpus: N, tp: T}", key="space.fleet")
    extra = set(v) - {"gpus", "max_gpus", "tp"}
    if extra:
        raise SearchError(f"fleet: unknown key(s) {sorted(extra)} (expected gpus, max_gpus, tp)", key="space.fleet")
    cat = default_catalog()
    names = cat.names("gpu") if v["gpus"] == "all" else _values("fleet.gpus", v["gpus"], str)
    for n in names:
        cat.get("gpu", str(n), key="space.fleet.gpus")
    if len(set(names)) != len(names):
        raise SearchError("fleet.gpus: a GPU type is listed twice", key="space.fleet.gpus")
    mx, tp = v.get("max_gpus", 4), v.get("tp", 1)
    for k, x in (("max_gpus", mx), ("tp", tp)):
        if not isinstance(x, int) or isinstance(x, bool) or x < 1:
            raise SearchError(f"fleet.{k}: expected an integer >= 1, got {x!r}", key=f"space.fleet.{k}")
    # mixes of up to mx // tp replicas over the types: C(mx // tp + types, types) - 1 of them
    mixes = math.comb(mx // tp + len(names), len(names)) - 1
    if mixes > MAX_AXIS_VALUES:
        raise SearchError(f"fleet: {mixes} mixes of {len(names)} GPU types with up to {mx} GPUs (more than {MAX_AXIS_VALUES}); "
                          "lower max_gpus or list fewer GPUs", key="space.fleet")
    labels, overs = [], []
    for counts in itertools.product(range(mx // tp + 1), repeat=len(names)):
        if 0 < sum(counts) * tp <= mx:
            groups = [{"gpu": str(n), "replicas": c, "tp": tp} for n, c in zip(names, counts, strict=True) if c]
            labels.append("+".join(f"{g['gpu']}:{g['replicas']}" for g in groups))
            overs.append({"plan.fleet": groups})
    if not labels:
        raise SearchError(f"fleet: no replica of tp={tp} fits in max_gpus={mx}", key="space.fleet")
    return Axis("fleet", labels, overs)


def _precision_axis(v: Any) -> Axis:
    names = list(PRECISIONS) if v == "all" else _values("precision", v, str)
    overs = []
    for n in names:
        if not isinstance(n, str) or n not in PRECISIONS:
            close = difflib.get_close_matches(str(n), list(PRECISIONS), n=2)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SearchError(f"unknown precision {n!r} (expected one of {', '.join(PRECISIONS)}){hint}", key="space.precision")
        overs.append({f"plan.precision.{k}": x for k, x in PRECISIONS[n].items()})
    return Axis("precision", names, overs)


def _offload_axis(v: Any) -> Axis:
    names = list(OFFLOAD_CHOICES) if v == "all" else _values("offload", v, str)
    for n in names:
        if n not in OFFLOAD_CHOICES:
            raise SearchError(f"offload: unknown choice {n!r} (expected none or optimized)", key="space.offload")
    # 'optimized' is resolved per candidate by the placement optimiser (simkit.search.screen)
    return Axis("offload", names, [{} for _ in names])


# ---- loading -------------------------------------------------------------------------------
def parse_spec(data: Any, where: str | None = None, base_dir: str | Path | None = None) -> SearchSpec:
    """Validate a search file's plain data (see docs/search.md)."""
    w = where
    if not isinstance(data, dict):
        raise SearchError("a search file is a mapping with base, space, constraints and objective", where=w)
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), TOP_KEYS, n=2)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SearchError(f"unknown key (expected one of {', '.join(TOP_KEYS)}){hint}", where=w, key=str(k))
    folder = Path(base_dir) if base_dir is not None else (Path(where).parent if where else Path("."))
    # base
    if "base" not in data:
        raise SearchError("missing: give a base scenario (a path relative to this file, or an inline scenario)", where=w, key="base")
    b = data["base"]
    if isinstance(b, str):
        p = find_base_scenario(b, folder, SearchError, w)
        base = load_scenario_data(p)
        base_where = str(p)
    elif isinstance(b, dict):
        base = json.loads(json.dumps(b))
        base_where = str(where) if where else str(folder / "search.yaml")
    else:
        raise SearchError("expected a scenario path or an inline scenario mapping", where=w, key="base")
    # space
    space = data.get("space")
    if space is None or (isinstance(space, dict) and not space):
        raise SearchError("the space is empty: give at least one key with a list of values", where=w, key="space")
    if not isinstance(space, dict):
        raise SearchError("expected a mapping from dotted scenario keys to lists of values", where=w, key="space")
    axes: list[Axis] = []
    try:
        for key, v in space.items():
            key = str(key)
            if key in ("gpu", "hardware.gpu"):
                axes.append(_gpu_axis(key, v))
            elif key == "layout":
                axes.append(_layout_axis(v))
            elif key == "precision":
                axes.append(_precision_axis(v))
            elif key == "offload":
                axes.append(_offload_axis(v))
            elif key == "fleet":
                axes.append(_fleet_axis(v))
            elif "." not in key and key not in Scenario.model_fields:
                close = difflib.get_close_matches(key, [*SHORTHANDS, *Scenario.model_fields], n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise SearchError(f"unknown space key {key!r} (a dotted scenario key or one of the shorthands {', '.join(SHORTHANDS)}){hint}", key=f"space.{key}")
            else:
                ann = _annotation_at(key)
                vals = _values(key, v, ann)
                axes.append(Axis(key, vals, [{key: x} for x in vals]))
    except SearchError as e:
        raise SearchError(e.message, where=w, key=e.key) from None
    except SimkitError as e:
        raise SearchError(e.message, where=w, key=e.key) from None
    spec_keys = [a.key for a in axes]
    if "gpu" in spec_keys and "hardware.gpu" in spec_keys:
        raise SearchError("give the GPU axis once (gpu or hardware.gpu)", where=w, key="space")
    clash = [k for k in spec_keys if k in ("gpu", "hardware.gpu", "layout", "plan.fleet") or k.startswith(("plan.parallel.tp", "plan.parallel.pp", "plan.parallel.replicas"))]
    if "fleet" in spec_keys and clash:
        raise SearchError(f"the fleet axis sets each group's GPU, tp and replicas: drop {', '.join(clash)}", where=w, key="space.fleet")
    # objective
    cap_raw = data.get("capacity")
    metrics = known_metrics(cap_raw is not None)
    obj = data.get("objective")
    if not isinstance(obj, dict) or len(obj) != 1 or next(iter(obj)) not in ("minimize", "maximize"):
        raise SearchError("expected {minimize: METRIC} or {maximize: METRIC}", where=w, key="objective")
    sense, metric = next(iter(obj.items()))
    _check_metric(metric, metrics, w, "objective")
    # constraints
    cons: list[Constraint] = []
    raw_c = data.get("constraints") or {}
    if not isinstance(raw_c, dict):
        raise SearchError("expected a mapping from metric names to {max: X} or {min: X}", where=w, key="constraints")
    for m, c in raw_c.items():
        _check_metric(str(m), metrics, w, f"constraints.{m}")
        if not isinstance(c, dict) or not c or set(c) - {"max", "min"}:
            raise SearchError("expected {max: X} and/or {min: X}", where=w, key=f"constraints.{m}")
        for kind, val in c.items():
            if isinstance(val, bool):
                if str(m) not in BOOLEAN_METRICS:
                    raise SearchError(f"expected a number, got {val!r} (true/false bounds only {' and '.join(sorted(BOOLEAN_METRICS))})",
                                      where=w, key=f"constraints.{m}.{kind}")  # fmt: skip
                val = float(val)
            if not isinstance(val, int | float) or not math.isfinite(val):
                raise SearchError(f"expected a number, got {val!r}", where=w, key=f"constraints.{m}.{kind}")
            cons.append(Constraint(str(m), kind, float(val)))
    # top, pareto
    top = data.get("top", 5)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise SearchError(f"expected an integer >= 1, got {top!r}", where=w, key="top")
    pareto = list(DEFAULT_PARETO)
    if "pareto" in data:
        pr = data["pareto"]
        if not isinstance(pr, list) or not all(isinstance(x, list) and len(x) == 2 for x in pr):
            raise SearchError("expected a list of metric pairs, e.g. [[output_tokens_per_s_per_gpu, tokens_per_s_per_user]]", where=w, key="pareto")
        for x in pr:
            for m in x:
                _check_metric(str(m), metrics, w, "pareto")
                if metrics[str(m)] is None:
                    raise SearchError(f"{m!r} has no better direction; pick a metric to maximise or minimise", where=w, key="pareto")
        pareto = [(str(x[0]), str(x[1])) for x in pr]
    capacity = _capacity(cap_raw, w) if cap_raw is not None else None
    name = data.get("name") or (Path(where).stem if where else "search")
    spec = SearchSpec(str(name), base, base_where, axes, cons, str(metric), sense == "maximize", top, pareto, capacity, where)
    if metrics[spec.objective] is None:
        raise SearchError(f"{metric!r} has no better direction to optimise", where=w, key="objective")
    if spec.size == 0:
        raise SearchError("the space is empty", where=w, key="space")
    if spec.size > MAX_CANDIDATES:
        sizes = " x ".join(f"{len(a.labels)} ({a.key})" for a in axes)
        raise SearchError(f"the space has {spec.size} candidates: {sizes} (more than {MAX_CANDIDATES})", where=w, key="space")
    # a quick check that the base with the first candidate's overrides is a valid mapping path
    _, over = next(spec.candidates())
    try:
        apply_overrides(base, over)
    except SimkitError as e:
        raise SearchError(e.message, where=w, key=e.key) from None
    return spec


def _capacity(c: Any, w: str | None) -> Capacity:
    if not isinstance(c, dict) or set(c) - {"min_rate", "max_rate", "tolerance"} or not {"min_rate", "max_rate"} <= set(c):
        raise SearchError("expected {min_rate: R, max_rate: R, tolerance: 0.02} (requests per second)", where=w, key="capacity")
    lo, hi, tol = c["min_rate"], c["max_rate"], c.get("tolerance", 0.02)
    for k, v in (("min_rate", lo), ("max_rate", hi), ("tolerance", tol)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0 or not math.isfinite(v):
            raise SearchError(f"expected a finite number > 0, got {v!r}", where=w, key=f"capacity.{k}")
    if hi <= lo:
        raise SearchError(f"max_rate ({hi}) must exceed min_rate ({lo})", where=w, key="capacity.max_rate")
    if not 1e-6 <= tol < 1:
        raise SearchError(f"tolerance is relative, from 1e-6 to below 1 (e.g. 0.02 = 2%); got {tol}", where=w, key="capacity.tolerance")
    steps = math.log2(hi - lo) - math.log2(tol) - math.log2(lo)
    if steps > MAX_BISECTIONS:
        raise SearchError(f"bisecting from {lo:g} to {hi:g} req/s to within {tol:g} would take {math.ceil(steps)} simulations "
                          f"per plan (at most {MAX_BISECTIONS}): narrow the rates or loosen the tolerance", where=w, key="capacity")
    return Capacity(float(lo), float(hi), float(tol))


def _check_metric(m: Any, metrics: dict[str, Any], w: str | None, key: str) -> None:
    if not isinstance(m, str):
        raise SearchError(f"expected a metric name, got {m!r}", where=w, key=key)
    if m not in metrics:
        close = difflib.get_close_matches(m, list(metrics), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SearchError(f"unknown metric {m!r} (see docs/metrics.md and docs/search.md){hint}", where=w, key=key)


def load_spec(path: str | Path) -> SearchSpec:
    from simkit.scenario import find_shipped

    p = find_shipped(path, "searches", "search file", SearchError)
    data = load_yaml(p, error=SearchError)
    return parse_spec(data, where=str(p))
