"""The study file: a base scenario, named variants and axes of dotted overrides -> a list of runs.

Every key is documented in ``docs/study.md``. :func:`load_study` reads and checks the file;
:meth:`Study.tasks` expands it into one :class:`~simkit.study.executor.Task` per run and
validates every resolved scenario before anything runs, so a typo in an axis key, a value of
the wrong type or a zip of unequal lengths is one error naming the study file and the key.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simkit import units
from simkit.errors import SimkitError, StudyError, UnitError
from simkit.specs.base import format_validation_error
from simkit.study.executor import RESERVED_COLUMNS, Task
from simkit.study.store import canonical_json, scenario_hash

MAX_RUNS = 1_000_000


class _S(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True, populate_by_name=True, strict=True,
                              allow_inf_nan=False)


class RandomAxes(_S):
    samples: int = Field(ge=1, le=MAX_RUNS)
    """Number of random points to draw (at most 1,000,000, the most runs a study may have)."""
    seed: int = Field(default=0, ge=0)
    """Seed of the draw (same seed, same points); an integer >= 0."""
    keys: dict[str, Any]
    """Dotted key -> a list of choices (drawn uniformly) or a range mapping (drawn uniformly, in log space for scale: log)."""


class Axes(_S):
    grid: dict[str, Any] = Field(default_factory=dict)
    """Dotted key -> list of values or range mapping; every combination runs (cartesian product)."""
    zip: dict[str, Any] = Field(default_factory=dict)
    """Dotted key -> list of values or range mapping, all of one length; the i-th values run together."""
    sets: list[dict[str, Any]] = Field(default_factory=list, alias="list")
    """Explicit override sets, each a mapping dotted key -> value (written ``list:`` in YAML)."""
    random: RandomAxes | None = None
    """Random points: {samples, seed, keys}."""


class Keep(_S):
    tables: bool = False
    """Also keep each run's requests.parquet and iterations.parquet (the summary is always kept)."""


class StudySpec(_S):
    name: str | None = None
    """Names the study (default: the study file's name)."""
    description: str = ""
    """Free text."""
    base: str | dict[str, Any]
    """The base scenario: a path (relative to the study file) or an inline scenario mapping."""
    set: dict[str, Any] = Field(default_factory=dict)
    """Dotted overrides applied to the base for every run (e.g. workload.limit: 200)."""
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Named variants, each a mapping of dotted overrides; every variant runs at every axis point."""
    baseline: str | None = None
    """The variant the others are compared with (default: the first variant)."""
    axes: Axes = Axes()
    """What to sweep: grid, zip, list, random (combined as a cartesian product of the groups given)."""
    repeat: int = Field(default=1, ge=1)
    """Run every point this many times with seeds seed, seed+1, ... (column ``repeat``)."""
    keep: Keep = Keep()
    """What to keep besides the summary of every run."""


# ---- ranges ----------------------------------------------------------------------------------
_RANGE_KEYS = {"range", "count", "step", "scale", "integer"}
_UNIT_KINDS = (
    ("time", lambda s: units.parse_time(s)),
    ("bandwidth", units.parse_bandwidth),
    ("size", lambda s: units.parse_bytes(s, allow_bare=False)),
    ("flop rate", units.parse_flops),
    ("power", units.parse_power),
)
_NUMBER = re.compile(r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$")


def _parse_end(text: str) -> tuple[float, str, str, float]:
    """'10 ms' -> (SI value, kind, unit text, SI per unit); '40' -> (40.0, 'number', '', 1)."""
    text = text.strip()
    if _NUMBER.match(text):
        return float(text), "number", "", 1.0
    m = re.match(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(\S.*?)\s*$", text)
    if not m:
        raise StudyError(f"cannot read {text!r} as a number or a quantity with a unit")
    unit = m.group(2)
    for kind, parse in _UNIT_KINDS:
        try:
            si = parse(text)
            per = parse(f"1 {unit}")
        except UnitError:
            continue
        return si, kind, unit, per
    raise StudyError(f"unknown unit in {text!r} (expected e.g. '2 ms', '64 GB/s', '80 GiB', '989 TFLOPS', '700 W')")


@dataclass(frozen=True)
class Range:
    """``{range: "LOW..HIGH", count|step, scale, integer}``; ends in SI units."""

    low: float
    high: float
    kind: str
    """number, time, bandwidth, size, flop rate or power."""
    unit: str
    """The unit text of the low end; points are written in it."""
    per_unit: float
    """SI value of one ``unit``."""
    scale: str
    integer: bool | None
    """True: round to integers; None (integer ends): integers when every point is whole; False: floats."""

    @classmethod
    def parse(cls, spec: dict[str, Any], key: str) -> tuple[Range, dict[str, Any]]:
        extra = set(spec) - _RANGE_KEYS
        if extra:
            raise StudyError(f"unknown key {sorted(extra)[0]!r} in a range (expected {', '.join(sorted(_RANGE_KEYS))})", key=key)
        text = spec.get("range")
        if not isinstance(text, str) or text.count("..") != 1:
            raise StudyError(f"range must be a string 'LOW..HIGH' such as '2..40' or '1 ms..10 ms', got {text!r}", key=key)
        lo_t, hi_t = text.split("..")
        try:
            lo, kind, unit, per = _parse_end(lo_t)
            hi, kind2, _, _ = _parse_end(hi_t)
        except StudyError as e:
            raise StudyError(e.message, key=key) from None
        if kind != kind2:
            raise StudyError(f"both ends of {text!r} must be the same kind of quantity ({kind} vs {kind2})", key=key)
        scale = spec.get("scale", "linear")
        if scale not in ("linear", "log"):
            raise StudyError(f"scale must be linear or log, got {scale!r}", key=key)
        if scale == "log" and not (lo > 0 and hi > 0):
            raise StudyError(f"a log range needs both ends > 0, got {text!r}", key=key)
        if not hi > lo:
            raise StudyError(f"range {text!r} must go from low to high", key=key)
        integer = spec.get("integer", False)
        if not isinstance(integer, bool):
            raise StudyError(f"integer must be true or false, got {integer!r}", key=key)
        if integer and kind != "number":
            raise StudyError("integer: true is only for ranges of plain numbers", key=key)
        if kind == "number" and all(re.fullmatch(r"\s*[-+]?\d+\s*", t) for t in (lo_t, hi_t)):
            return cls(lo, hi, kind, unit, per, scale, integer or None), spec
        return cls(lo, hi, kind, unit, per, scale, integer), spec

    def value(self, si: float) -> Any:
        if self.kind == "number":
            if self.integer:
                return int(round(si))
            v = float(f"{si:.12g}")
            return int(v) if self.integer is None and v.is_integer() else v
        return f"{si / self.per_unit:.6g} {self.unit}"

    def points(self, spec: dict[str, Any], key: str) -> list[Any]:
        count, step = spec.get("count"), spec.get("step")
        if (count is None) == (step is None):
            raise StudyError("a range needs exactly one of count (number of points) or step", key=key)
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, int) or count < 2:
                raise StudyError(f"count must be an integer >= 2, got {count!r}", key=key)
            if count > MAX_RUNS:
                raise StudyError(f"count must be at most {MAX_RUNS}, got {count}", key=key)
            if self.scale == "log":
                a, b = math.log(self.low), math.log(self.high)
                si = [math.exp(a + (b - a) * i / (count - 1)) for i in range(count)]
            else:
                si = [self.low + (self.high - self.low) * i / (count - 1) for i in range(count)]
            si[0], si[-1] = self.low, self.high
        else:
            if self.scale == "log":
                raise StudyError("step is for linear ranges; give count for a log range", key=key)
            if isinstance(step, str):
                try:
                    s, kind, _, _ = _parse_end(step)
                except StudyError as e:
                    raise StudyError(e.message, key=key) from None
                if kind != self.kind:
                    raise StudyError(f"step {step!r} is a {kind}, the range is a {self.kind}", key=key)
            elif isinstance(step, int | float) and not isinstance(step, bool) and self.kind == "number":
                s = float(step)
            else:
                raise StudyError(f"step must be a {'number' if self.kind == 'number' else self.kind + ' with a unit'}, got {step!r}", key=key)
            if not s > 0:
                raise StudyError(f"step must be > 0, got {step!r}", key=key)
            n = int(math.floor((self.high - self.low) / s * (1 + 1e-12))) + 1
            if n > MAX_RUNS:
                raise StudyError(f"range gives {n} points (more than {MAX_RUNS})", key=key)
            si = [self.low + i * s for i in range(n)]
        vals = [self.value(x) for x in si]
        if self.integer is None and not all(isinstance(v, int) for v in vals):
            vals = [float(v) for v in vals]
        if len({canonical_json(v) for v in vals}) != len(vals):
            raise StudyError(f"range {spec['range']!r} gives repeated values {vals} (fewer points, or a wider range)", key=key)
        return vals

    def draw(self, u: float) -> Any:
        if self.scale == "log":
            si = math.exp(math.log(self.low) + (math.log(self.high) - math.log(self.low)) * u)
        else:
            si = self.low + (self.high - self.low) * u
        if self.kind == "number" and not self.integer:
            return float(f"{si:.12g}")  # a random draw is a float unless integer: true
        return self.value(si)


def axis_values(v: Any, key: str) -> list[Any]:
    """A list of values, or a range mapping expanded to its points."""
    if isinstance(v, list):
        if not v:
            raise StudyError("empty list of values (an axis needs at least one)", key=key)
        return v
    if isinstance(v, dict) and "range" in v:
        rng, spec = Range.parse(v, key)
        return rng.points(spec, key)
    raise StudyError(f"expected a list of values or a range mapping {{range: 'LOW..HIGH', count: N}}, got {v!r}", key=key)


# ---- the study -------------------------------------------------------------------------------
@dataclass
class Point:
    """One run before resolution: the overrides by origin (for error messages) and its labels."""

    overrides: list[tuple[str, str, Any]]  # (origin, dotted key, value)
    labels: dict[str, Any]


@dataclass
class Study:
    spec: StudySpec
    path: Path
    base_data: dict[str, Any]
    base_source: str
    axis_keys: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name or self.path.stem

    @property
    def variant_names(self) -> list[str]:
        return list(self.spec.variants)

    @property
    def baseline(self) -> str | None:
        if not self.spec.variants:
            return None
        return self.spec.baseline or next(iter(self.spec.variants))

    def _err(self, message: str, key: str | None) -> StudyError:
        return StudyError(message, where=str(self.path), key=key)

    def points(self) -> list[Point]:
        """Every run of the study, in order: axis points (grid, zip, list, random), then variant, then repeat."""
        sp = self.spec
        ax = sp.axes
        origins: dict[str, str] = {}

        def claim(key: str, origin: str) -> None:
            if not key or any(not p for p in key.split(".")):
                raise self._err("not a dotted key", f"{origin}.{key}")
            if key in RESERVED_COLUMNS:
                raise self._err(f"{key!r} is a reserved column name of runs.parquet", f"{origin}.{key}")
            for other, o in origins.items():
                if other == key or other.startswith(key + ".") or key.startswith(other + "."):
                    if o != origin:
                        raise self._err(f"also set by {o}.{other}: give each key in one place", f"{origin}.{key}")
                    if other == key:
                        continue
                    raise self._err(f"overlaps {o}.{other}: give each key in one place", f"{origin}.{key}")
            origins[key] = origin

        try:
            groups: list[list[list[tuple[str, str, Any]]]] = []
            for k, v in ax.grid.items():
                claim(k, "axes.grid")
                groups.append([[("axes.grid", k, x)] for x in axis_values(v, f"axes.grid.{k}")])
            if ax.zip:
                cols = {}
                for k, v in ax.zip.items():
                    claim(k, "axes.zip")
                    cols[k] = axis_values(v, f"axes.zip.{k}")
                lens = {k: len(v) for k, v in cols.items()}
                if len(set(lens.values())) > 1:
                    desc = ", ".join(f"{k}: {n}" for k, n in lens.items())
                    raise StudyError(f"zip axes must have equal lengths ({desc})", key="axes.zip." + next(
                        k for k, n in lens.items() if n != next(iter(lens.values()))))
                n = next(iter(lens.values()))
                groups.append([[("axes.zip", k, cols[k][i]) for k in cols] for i in range(n)])
            if ax.sets:
                for i, s in enumerate(ax.sets):
                    if not s:
                        raise StudyError("empty override set", key=f"axes.list.{i}")
                    for k in s:
                        claim(k, "axes.list")
                groups.append([[(f"axes.list.{i}", k, v) for k, v in s.items()] for i, s in enumerate(ax.sets)])
            if ax.random is not None:
                groups.append(self._random(ax.random, claim))
            variant_keys: dict[str, str] = {}
            for name, ov in sp.variants.items():
                if not name:
                    raise StudyError("a variant needs a non-empty name", key="variants")
                for k in ov:
                    claim(k, f"variants.{name}")
                    origins.pop(k)  # variants may share keys with each other, not with axes
                    variant_keys[k] = f"variants.{name}"
        except StudyError as e:
            raise self._err(e.message, e.key) from None
        for k in sp.set:  # a value every run replaces cannot take effect
            for other, o in origins.items():
                if o != "axes.list" and (k == other or k.startswith(other + ".")):
                    raise self._err(f"every run sets it again through {o}.{other}, so this value (set: or --set) would never "
                                    "take effect", f"set.{k}")
        if sp.baseline is not None and sp.baseline not in sp.variants:
            raise self._err(f"no variant named {sp.baseline!r} (variants: {', '.join(sp.variants) or 'none'})", "baseline")
        seeded = {**variant_keys, **origins}
        if "seed" in seeded and sp.repeat > 1:
            raise self._err("repeat sets the seed of each repetition; do not also set seed", f"{seeded['seed']}.seed")
        if not groups and not sp.variants and sp.repeat == 1:
            raise self._err("the study varies nothing: give axes (grid, zip, list, random), variants or repeat", "axes")
        self.axis_keys = list(origins)
        n = math.prod(len(g) for g in groups) * max(1, len(sp.variants)) * sp.repeat
        if n > MAX_RUNS:
            raise self._err(f"the study has {n} runs (more than {MAX_RUNS})", "axes")
        variants = list(sp.variants.items()) or [("", {})]
        out = []
        for combo in itertools.product(*groups):
            flat = [o for part in combo for o in part]
            for vname, ov in variants:
                for r in range(sp.repeat):
                    labels: dict[str, Any] = {k: None for k in self.axis_keys}
                    labels.update({k: v for _, k, v in flat})
                    labels["variant"] = vname
                    labels["repeat"] = r
                    vo = [(f"variants.{vname}", k, v) for k, v in ov.items()]
                    out.append(Point(vo + flat, labels))
        return out

    def _random(self, rnd: RandomAxes, claim: Any) -> list[list[tuple[str, str, Any]]]:
        import numpy as np

        if not rnd.keys:
            raise StudyError("random needs at least one key", key="axes.random.keys")
        draws: dict[str, Any] = {}
        for k, v in rnd.keys.items():
            claim(k, "axes.random.keys")
            key = f"axes.random.keys.{k}"
            if isinstance(v, list):
                if not v:
                    raise StudyError("empty list of choices", key=key)
                draws[k] = v
            elif isinstance(v, dict) and "range" in v:
                if "count" in v or "step" in v:
                    raise StudyError("a random range takes no count or step (samples says how many)", key=key)
                draws[k] = Range.parse(v, key)[0]
            else:
                raise StudyError(f"expected a list of choices or a range mapping {{range: 'LOW..HIGH'}}, got {v!r}", key=key)
        rng = np.random.default_rng(rnd.seed)
        pts = []
        for _ in range(rnd.samples):
            one = []
            for k, d in draws.items():
                if isinstance(d, list):
                    val = d[int(rng.integers(len(d)))]
                else:
                    val = d.draw(float(rng.random()))
                one.append(("axes.random.keys", k, val))
            pts.append(one)
        return pts

    def tasks(self) -> list[Task]:
        """One task per run, every resolved scenario validated first (errors name the study key)."""
        from simkit.scenario import apply_overrides

        try:
            base = apply_overrides(self.base_data, self.spec.set) if self.spec.set else self.base_data
        except SimkitError as e:
            raise self._err(e.message, f"set.{e.key}" if e.key else "set") from None
        points = self.points()
        checker = _Checker(self)
        out = []
        for pt in points:
            ov = {k: v for _, k, v in pt.overrides}
            if self.spec.repeat > 1:
                ov["seed"] = None
            try:
                data = apply_overrides(base, ov) if ov else json.loads(json.dumps(base))
            except SimkitError as e:
                key = e.key or ""
                origin = next((o for o, k, _ in pt.overrides if k == key), "set")
                raise self._err(e.message, f"{origin}.{key}" if key else origin) from None
            if self.spec.repeat > 1:
                base_seed = base.get("seed", 0)
                if isinstance(base_seed, bool) or not isinstance(base_seed, int):
                    raise self._err(f"the base scenario's seed must be an integer, got {base_seed!r}", "base")
                data["seed"] = base_seed + pt.labels["repeat"]
            resolved = checker.check(data, pt)
            out.append(Task(scenario_hash(resolved), resolved, str(Path(self.base_source).parent), pt.labels, self.base_source))
        return out


class _Checker:
    """Validates resolved scenarios (schema, hardware, model, policies, files), caching the
    expensive parts, and makes relative file paths absolute so each run is self-contained."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.hw: dict[str, None] = {}
        self.models: dict[str, None] = {}

    def check(self, data: dict[str, Any], pt: Point) -> dict[str, Any]:
        from simkit.scenario import scenario_from_dict
        from simkit.specs.catalog import load_model
        from simkit.specs.node import resolve_node

        where = self.study.base_source
        try:
            sc = scenario_from_dict(data, where=where)
            hw_key = canonical_json(sc.hardware)
            if hw_key not in self.hw:
                resolve_node(sc.hardware, where=where)
                self.hw[hw_key] = None
            data = _absolute_paths(data, sc)
            model = data["model"]
            if model not in self.models:
                load_model(model, where=where)
                self.models[model] = None
            for key, p in _paths(data):
                if key != "model" and not Path(p).exists():
                    raise StudyError(f"file not found: {p}", key=key)
        except SimkitError as e:
            raise self._attribute(e, pt) from None
        return data

    def _attribute(self, e: SimkitError, pt: Point) -> StudyError:
        key = e.key or ""
        for origin, k, v in pt.overrides:
            if key and (key == k or key.startswith(k + ".") or k.startswith(key + ".")):
                return StudyError(f"{e.message} (value {v!r})", where=str(self.study.path), key=f"{origin}.{k}")
        for k, v in self.study.spec.set.items():
            if key and (key == k or key.startswith(k + ".") or k.startswith(key + ".")):
                return StudyError(f"{e.message} (value {v!r})", where=str(self.study.path), key=f"set.{k}")
        src = e.where if e.where and e.where != self.study.base_source else None
        msg = f"{src}: {e.message}" if src else e.message
        return StudyError(f"{msg} (base scenario {self.study.base_source})", where=str(self.study.path),
                          key=f"base.{key}" if key else "base")


_PATH_KEYS = (("workload", "trace", "path"), ("workload", "synthetic", "lengths", "trace", "path"))


def _paths(data: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for keys in _PATH_KEYS:
        node: Any = data
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, str):
            out.append((".".join(keys), node))
    cal = data.get("calibration")
    if isinstance(cal, str) and cal not in ("auto", "none"):
        out.append(("calibration", cal))
    model = data.get("model")
    if isinstance(model, str) and (model.endswith((".json", ".yaml", ".yml")) or "/" in model):
        out.append(("model", model))
    return out


def _absolute_paths(data: dict[str, Any], sc: Any) -> dict[str, Any]:
    """Relative file paths -> absolute ones, resolved as the run would resolve them."""
    out = json.loads(json.dumps(data))
    for key, p in _paths(out):
        if key == "model":
            absolute = str(Path(p).resolve()) if Path(p).exists() else p
        else:
            absolute = str(Path(sc.resolve_path(p)).resolve())
        node = out
        parts = key.split(".")
        for k in parts[:-1]:
            node = node[k]
        node[parts[-1]] = absolute
    return out


def load_study(path: str | Path, overrides: list[str] | None = None) -> Study:
    """Read and check a study file (the runs are expanded and validated by :meth:`Study.tasks`).
    ``overrides`` (``["workload.limit=50"]``, the CLI's ``--set``) are added to its ``set:``."""
    from simkit.scenario import find_base_scenario, find_shipped, load_scenario_data
    from simkit.specs.yamlio import load_yaml

    p = find_shipped(path, "studies", "study file", StudyError)
    raw = load_yaml(p, error=StudyError)
    if raw is None or (isinstance(raw, dict) and not raw):
        raise StudyError("the study file is empty (expected base:, axes:, variants: ...)", where=str(p))
    if not isinstance(raw, dict):
        raise StudyError("a study is a mapping with base:, axes:, variants: ...", where=str(p))
    if overrides:
        from simkit.scenario import _split_override

        extra = dict(_split_override(o) for o in overrides)
        given = raw.get("set") or {}
        if not isinstance(given, dict):
            raise StudyError(f"expected a mapping of dotted keys to values, got {given!r}", where=str(p), key="set")
        raw = {**raw, "set": {**given, **extra}}
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as e:
        err = format_validation_error(e, str(p))
        raise StudyError(err.message, where=str(p), key=err.key) from None
    if isinstance(spec.base, str):
        try:
            bp = find_base_scenario(spec.base, p.parent, StudyError, str(p))
            base = load_scenario_data(bp)
        except SimkitError as e:
            raise StudyError(e.message, where=str(p), key="base") from None
        source = str(bp)
    else:
        base = json.loads(json.dumps(spec.base))
        source = str(p)
    return Study(spec, p, base, source)

