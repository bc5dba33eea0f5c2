"""Calibration profiles: measured (or imported) operator timings and the efficiency models fitted to them.

A profile is a folder::

    calibration/profiles/NAME/
        profile.yaml   # human-readable: device facts, source, licence, fitted parameters, errors
        samples.csv    # every raw sample the fit used (long format, one row per configuration)
        models.json    # the fitted residual trees (plain arrays), when a class has them

``profile.yaml`` (``simkit_profile: 1``)::

    simkit_profile: 1
    name: h100-sxm-vidur
    device: {kind: gpu|cpu, catalog: h100-sxm, description: ..., name/memory/clocks/driver/
             torch_version/threads when known, peak_flops: {dtype: FLOP/s}, mem_bandwidth: B/s,
             sm_count: N}            # peaks = the roofline the fitted efficiencies refer to
    source: where the numbers come from
    license: their licence
    samples: samples.csv            # relative to profile.yaml
    models: models.json             # relative to profile.yaml (absent if no class has trees)
    efficiency:                     # per op class: gemm, elementwise, attn_prefill, attn_decode
      gemm:
        measured: true
        model: {kind, base: {launch_s, compute_efficiency, memory_efficiency, sharpness},
                residual: {file, key, trees, features, ...}}
        fit_error: {median_ape: 0.03, p90_ape: 0.09, n: 16576}     # fractions, in-sample
        cross_validation: {method: leave-one-model-out, ...}       # optional
        note: ...
      attn_decode: {measured: false, note: "no attention timings in the source data: ..."}
    launch_overhead: {gemm: s, elementwise: s, attn_prefill: s, attn_decode: s}
    links: {h2d_pinned: {bandwidth, latency, fit_error}, ...}      # optional
    memory: {stream_copy: {bandwidth, latency, ...}, ...}          # optional
    ssd: {read: {...}, write: {...}}                               # optional
    collectives: {TOPOLOGY: {KIND: {NUM_GPUS: {algorithm, bands, fit_error}}}}   # optional
    threads: N                                                     # optional

Samples CSV columns (blank where not applicable): ``op_class, op, dtype, m, n, k, numel, batch,
tokens, ctx, heads, kv_heads, head_dim, bytes, flops, bytes_moved, time_s, time_s_p10, time_s_p90,
reps, source, tp`` plus optional ``block_size, queue_depth, pinned, direction, num_gpus, threads``
(and others, e.g. ``topology``, ``devices_per_node``, ``raw_times``). ``bytes_moved`` is what the
roofline counts for compute operators; ``bytes`` the payload of copies, SSD I/O and collectives.
Row classes: the four operator classes; ``launch`` (op = canonical operator, time = fixed cost);
``copy`` (op memcpy/h2d/d2h/d2d with ``direction`` and ``pinned``); ``link`` (op = link kind);
``mem_bw`` (stream_copy/read/write); ``ssd_read``/``ssd_write`` (bytes per repetition, time per
repetition, ``block_size``, ``queue_depth``); ``collective`` (op = all_reduce/send_recv/...,
``bytes`` per GPU, ``num_gpus``, ``topology``).

:class:`Profile` implements :class:`simkit.cost.efficiency.EfficiencyModel`; classes with
``measured: false`` delegate to :class:`~simkit.cost.efficiency.DatasheetEfficiency`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simkit.cost.efficiency import OP_CLASSES, DatasheetEfficiency, EfficiencyModel
from simkit.errors import CalibrationError

PROFILE_VERSION = 1
PROFILE_FILE = "profile.yaml"
SAMPLES_FILE = "samples.csv"
MODELS_FILE = "models.json"


def _plain(x: Any) -> Any:
    """YAML-safe plain Python: numpy scalars -> float/int, tuples -> lists, floats rounded to 6
    significant digits (every number a fitted model computes with is rounded so at fit time)."""
    if isinstance(x, Mapping):
        return {(int(k) if isinstance(k, np.integer) else k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_ | bool):
        return bool(x)
    if isinstance(x, np.floating | float):
        x = float(x)
        if not math.isfinite(x):
            return None
        return float(f"{x:.5e}") if x != 0 else 0.0
    return x


@dataclass
class Profile:
    """A loaded (or freshly fitted) calibration profile; an :class:`EfficiencyModel`."""

    name: str
    device: dict[str, Any]
    source: str
    license: str
    samples: Any = None
    """The raw samples (pandas DataFrame)."""
    models: dict[str, Any] = field(default_factory=dict)
    """Fitted :class:`simkit.calibrate.fit.ClassModel` per measured op class."""
    overheads: dict[str, float] = field(default_factory=dict)
    """Launch overhead (s) per op class (``launch_overhead`` in the YAML)."""
    notes: dict[str, str] = field(default_factory=dict)
    links: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    ssd: dict[str, Any] = field(default_factory=dict)
    collectives: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    cross_validation: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    _default: DatasheetEfficiency = field(default_factory=DatasheetEfficiency, repr=False)

    # ---- EfficiencyModel ---------------------------------------------------------------------
    def is_measured(self, op_class: str) -> bool:
        return op_class in self.models

    def launch_overhead(self, op_class: str) -> float:
        """Fixed seconds per operator launch of ``op_class``."""
        return float(self.overheads.get(op_class, self._default.launch_overhead(op_class)))

    def efficiency(
        self,
        op_class: str,
        flops: np.ndarray,
        bytes_: np.ndarray,
        shape: Mapping[str, np.ndarray],
        peak_flops: float,
        peak_bw: float,
        dtype: str,
    ) -> np.ndarray:
        """Fraction of the ideal roofline speed achieved. For measured classes the fitted model's
        predicted time (minus the launch overhead) is turned into an efficiency against the
        profile's own roofline (``device.peak_flops``/``device.mem_bandwidth``), so a caller whose
        catalog peaks are those gets the fitted time back exactly; another dtype's peak scales it."""
        cm = self.models.get(op_class)
        if cm is None:
            return self._default.efficiency(op_class, flops, bytes_, shape, peak_flops, peak_bw, dtype)
        return cm.efficiency(flops, bytes_, shape, dtype)

    def roofline_time(self, op_class: str, flops: Any, bytes_: Any, peak_flops: float, peak_bw: float) -> Any:
        """Closed-form seconds for classes this profile did not measure (the datasheet defaults);
        None for measured classes, whose time needs the fitted model."""
        if op_class in self.models:
            return None
        return self._default.roofline_time(op_class, flops, bytes_, peak_flops, peak_bw)

    def predict_time(self, op_class: str, flops: Any, bytes_: Any, shape: Mapping[str, Any], dtype: str) -> np.ndarray:
        """Seconds per operator at the profile's own roofline (launch overhead included)."""
        cm = self.models.get(op_class)
        F = np.atleast_1d(np.asarray(flops, dtype=np.float64))
        B = np.atleast_1d(np.asarray(bytes_, dtype=np.float64))
        if cm is not None:
            return cm.predict_time(F, B, shape, dtype)
        from simkit.calibrate.fit import roof_from_device

        roof = roof_from_device(self.device)
        pf = roof.peak(dtype)
        ideal = roof.ideal(F, B, pf)
        eff = np.clip(self._default.efficiency(op_class, F, B, shape, pf, roof.mem_bandwidth, dtype), 1e-4, 1.0)
        return ideal / eff + self.launch_overhead(op_class)

    def dtypes(self) -> list[str]:
        return list(self.device.get("dtypes") or [])

    def collective_fit(self, kind: str, topology: str, num_gpus: int) -> Any:
        """The fitted :class:`~simkit.cost.collectives.CollectiveFit`, or None if not measured."""
        from simkit.cost.collectives import CollectiveFit

        entry = ((self.collectives.get(topology) or {}).get(kind) or {}).get(int(num_gpus))
        if entry is None:
            return None
        return CollectiveFit.from_dict(kind, int(num_gpus), entry)

    # ---- YAML --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        eff: dict[str, Any] = {}
        for cls in OP_CLASSES:
            cm = self.models.get(cls)
            if cm is None:
                eff[cls] = {"measured": False, "note": self.notes.get(cls, "not measured: datasheet default efficiency")}
                continue
            entry: dict[str, Any] = {"measured": True, "model": cm.describe(), "fit_error": dict(cm.fit_error)}
            if cls in self.cross_validation:
                entry["cross_validation"] = self.cross_validation[cls]
            entry["note"] = self.notes.get(cls, "")
            eff[cls] = entry
        d: dict[str, Any] = {
            "simkit_profile": PROFILE_VERSION,
            "name": self.name,
            "device": dict(self.device),
            "source": self.source,
            "license": self.license,
            "samples": SAMPLES_FILE,
        }
        if self._forests():
            d["models"] = MODELS_FILE
        d["efficiency"] = eff
        d["launch_overhead"] = {cls: self.launch_overhead(cls) for cls in OP_CLASSES}
        for key in ("links", "memory", "ssd", "collectives"):
            val = getattr(self, key)
            if val:
                d[key] = val
        if self.threads is not None:
            d["threads"] = int(self.threads)
        return _plain(d)

    def _forests(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for cls, cm in self.models.items():
            if cm.forest is not None:
                out[cls] = cm.forest
            if getattr(cm, "forest_tokens", None) is not None:
                out[f"{cls}_tokens"] = cm.forest_tokens
        return out

    def save(self, directory: str | Path) -> Path:
        """Write profile.yaml, samples.csv (and models.json) into ``directory``; returns the YAML path."""
        import yaml

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        d = self.to_dict()
        text = yaml.safe_dump(d, sort_keys=False, width=110, allow_unicode=True)
        (out / PROFILE_FILE).write_text(f"# simkit calibration profile (see simkit/specs/calibration.py)\n{text}", encoding="utf-8")
        if self.samples is not None:
            self.samples.to_csv(out / SAMPLES_FILE, index=False, float_format="%.9g")
        forests = {key: fo.to_json() for key, fo in self._forests().items()}
        if forests:
            with open(out / MODELS_FILE, "w", encoding="utf-8") as f:
                f.write("{\n")
                for i, (cls, fj) in enumerate(forests.items()):
                    f.write(f'"{cls}": {{"baseline": {json.dumps(fj["baseline"])}, "depth": {fj["depth"]}, "trees": [\n')
                    f.write(",\n".join(json.dumps(t, separators=(",", ":")) for t in fj["trees"]))
                    f.write("\n]}" + ("," if i < len(forests) - 1 else "") + "\n")
                f.write("}\n")
        self.path = out / PROFILE_FILE
        return self.path

    @classmethod
    def load(cls, path: str | Path, *, with_samples: bool = True) -> Profile:
        """Read a profile folder or its profile.yaml. Every problem raises CalibrationError naming
        the file and the key."""
        from simkit.calibrate.fit import ClassModel, Forest, RooflineBase, feature_names, roof_from_device
        from simkit.specs.yamlio import load_yaml

        p = Path(path)
        try:
            f = p / PROFILE_FILE if p.is_dir() else p
        except OSError:  # not a usable path (e.g. too long): load_yaml names it
            f = p
        where = str(f)
        data = load_yaml(f, error=CalibrationError)
        if not isinstance(data, dict):
            raise CalibrationError("expected a mapping at the top level", where=where)

        def need(d: Mapping[str, Any], key: str, path_: str, typ: type | tuple[type, ...] | None = None) -> Any:
            if not isinstance(d, Mapping) or key not in d:
                raise CalibrationError("required key is missing", where=where, key=f"{path_}{key}")
            v = d[key]
            if typ is not None and not isinstance(v, typ):
                raise CalibrationError(f"expected {getattr(typ, '__name__', typ)}, got {type(v).__name__}", where=where, key=f"{path_}{key}")
            return v

        ver = need(data, "simkit_profile", "")
        if ver != PROFILE_VERSION:
            raise CalibrationError(f"unsupported profile version {ver!r} (this simkit reads {PROFILE_VERSION})", where=where, key="simkit_profile")
        name = str(need(data, "name", ""))
        device = need(data, "device", "", dict)
        kind = need(device, "kind", "device.")
        if kind not in ("gpu", "cpu"):
            raise CalibrationError(f"expected gpu or cpu, got {kind!r}", where=where, key="device.kind")
        source = str(need(data, "source", ""))
        lic = str(need(data, "license", ""))
        eff = need(data, "efficiency", "", dict)
        overhead = data.get("launch_overhead") or {}
        if not isinstance(overhead, dict):
            raise CalibrationError("expected a mapping of op class to seconds", where=where, key="launch_overhead")
        samples = None
        samples_rel = need(data, "samples", "", str)
        if with_samples:
            samples = _read_samples(f.parent / samples_rel, where)
        forests: dict[str, Any] = {}
        measured = [c for c in OP_CLASSES if isinstance(eff.get(c), dict) and eff[c].get("measured")]
        wanted: dict[str, str] = {}  # models.json key -> where in profile.yaml it is named
        for c in measured:
            model = eff[c].get("model")
            if not isinstance(model, dict):
                continue
            for sect in ("residual", "residual_with_tokens"):
                if isinstance(model.get(sect), dict):
                    wanted[str(model[sect].get("key", c if sect == "residual" else f"{c}_tokens"))] = f"efficiency.{c}.model.{sect}"
        models_rel = data.get("models")
        if wanted:
            if not models_rel:
                raise CalibrationError("efficiency models name residual trees but the profile has no 'models' file", where=where, key="models")
            mf = f.parent / str(models_rel)
            try:
                raw = json.loads(mf.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise CalibrationError(f"models file not found: {mf}", where=str(mf)) from None
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CalibrationError(f"cannot read the fitted models ({e.__class__.__name__}: {e})", where=str(mf)) from None
            if not isinstance(raw, dict):
                raise CalibrationError("expected a mapping of model keys to trees", where=str(mf))
            for key, named_at in wanted.items():
                if key not in raw:
                    raise CalibrationError(f"no trees {key!r} (named at {named_at} of {f.name})", where=str(mf), key=key)
                try:
                    forests[key] = Forest.from_json(raw[key])
                except (KeyError, TypeError, ValueError, IndexError) as e:
                    raise CalibrationError(f"malformed trees ({e.__class__.__name__}: {e})", where=str(mf), key=key) from None
        try:
            roof = roof_from_device(device)
        except CalibrationError as e:
            raise CalibrationError(e.message, where=where, key="device.peak_flops") from None
        models: dict[str, Any] = {}
        notes: dict[str, str] = {}
        cv: dict[str, Any] = {}
        for c in OP_CLASSES:
            entry = eff.get(c)
            if entry is None:
                notes[c] = "not in the profile: datasheet default efficiency"
                continue
            if not isinstance(entry, dict):
                raise CalibrationError("expected a mapping", where=where, key=f"efficiency.{c}")
            m = need(entry, "measured", f"efficiency.{c}.", bool)
            notes[c] = str(entry.get("note", ""))
            if "cross_validation" in entry:
                cv[c] = entry["cross_validation"]
            if not m:
                continue
            model = need(entry, "model", f"efficiency.{c}.", dict)
            base_d = need(model, "base", f"efficiency.{c}.model.", dict)
            try:
                base = RooflineBase.from_dict(base_d)
            except KeyError as e:
                raise CalibrationError("required key is missing", where=where, key=f"efficiency.{c}.model.base.{e.args[0]}") from None
            except (TypeError, ValueError) as e:
                raise CalibrationError(f"expected numbers ({e})", where=where, key=f"efficiency.{c}.model.base") from None
            res = model.get("residual") or {}
            res_tok = model.get("residual_with_tokens") or {}
            kinds = tuple(res.get("kernel_kinds") or res_tok.get("kernel_kinds") or ())
            for sect, sec, tok in (("residual", res, False), ("residual_with_tokens", res_tok, True)):
                if sec and "features" in sec and list(sec["features"]) != feature_names(c, kinds, tok):
                    raise CalibrationError(
                        "the residual trees were fitted on other features than this simkit computes "
                        f"({len(sec['features'])} vs {len(feature_names(c, kinds, tok))}): refit the profile",
                        where=where,
                        key=f"efficiency.{c}.model.{sect}.features",
                    )
            cm = ClassModel(c, roof, base, forests.get(str(res.get("key", c))) if res else None, kinds)
            if res_tok:
                cm.forest_tokens = forests.get(str(res_tok.get("key", f"{c}_tokens")))
            cm.launch_overhead = float(overhead.get(c, base.launch_s))
            fe = need(entry, "fit_error", f"efficiency.{c}.", dict)
            cm.fit_error = dict(fe)
            models[c] = cm
        prof = cls(
            name=name,
            device=dict(device),
            source=source,
            license=lic,
            samples=samples,
            models=models,
            overheads={str(k): float(v) for k, v in overhead.items()},
            notes=notes,
            links=dict(data.get("links") or {}),
            memory=dict(data.get("memory") or {}),
            ssd=dict(data.get("ssd") or {}),
            collectives=dict(data.get("collectives") or {}),
            threads=data.get("threads"),
            cross_validation=cv,
            path=f,
        )
        return prof


def _read_samples(path: Path, where: str) -> Any:
    import pandas as pd

    try:
        df = pd.read_csv(path, low_memory=False)
    except FileNotFoundError:
        raise CalibrationError(f"samples file not found: {path}", where=where, key="samples") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise CalibrationError(f"unreadable samples ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})", where=str(path)) from None
    for col in ("op_class", "time_s"):
        if col not in df.columns:
            raise CalibrationError(f"the samples lack the column {col!r}", where=str(path))
    return df


# ---------------------------------------------------------------------------------------------
# Finding and resolving profiles
# ---------------------------------------------------------------------------------------------
def profiles_dir() -> Path:
    from simkit.specs.catalog import repo_path

    return repo_path("calibration", "profiles")


def find_profile(device_kind: str, catalog_name: str) -> Path | None:
    """The profile.yaml under calibration/profiles/*/ whose device.kind and device.catalog match
    (the first in name order), or None."""
    import yaml

    root = profiles_dir()
    if not root.is_dir():
        return None
    for f in sorted(root.glob(f"*/{PROFILE_FILE}")):
        try:
            head = _device_block(f)
            dev = (yaml.safe_load(head) or {}).get("device") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if str(dev.get("catalog")) == str(catalog_name) and str(dev.get("kind", device_kind)) == str(device_kind):
            return f
    return None


def _device_block(f: Path) -> str:
    """The top of profile.yaml up to (excluding) the efficiency section: enough for device facts,
    without parsing the whole file."""
    lines = []
    with open(f, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("efficiency:"):
                break
            lines.append(line)
    return "".join(lines)


_CACHE: dict[tuple[str, float], Profile] = {}


def load_cached(path: str | Path) -> Profile:
    """Profile.load, cached per file and modification time (samples are not read)."""
    p = Path(path)
    try:
        f = p / PROFILE_FILE if p.is_dir() else p
    except OSError:  # not a usable path (e.g. too long): Profile.load names it
        f = p
    try:
        key = (str(f.resolve()), f.stat().st_mtime)
    except OSError:
        return Profile.load(f, with_samples=False)
    prof = _CACHE.get(key)
    if prof is None:
        prof = Profile.load(f, with_samples=False)
        _CACHE[key] = prof
    return prof


def resolve_calibration(setting: str, device_kind: str, catalog_name: str) -> tuple[EfficiencyModel, str, str | None]:
    """The scenario key ``calibration: auto | none | <path>`` -> (model, description, warning).

    ``auto``: the shipped/user profile whose device matches, else the datasheet defaults with a
    warning. ``none``: the datasheet defaults. A path: that profile (errors if it is missing or
    corrupt, or if it was measured on another device kind)."""
    s = str(setting).strip()
    if s == "none":
        return DatasheetEfficiency(), "datasheet defaults (calibration: none)", None
    if s == "auto":
        f = find_profile(device_kind, catalog_name)
        if f is None:
            return (
                DatasheetEfficiency(),
                "datasheet defaults (no calibration profile matches)",
                f"no calibration profile for {device_kind} {catalog_name!r} in {profiles_dir()}: using datasheet "
                "default efficiencies (accuracy ~30%); run `simkit calibrate` or pass calibration: <path>",
            )
        prof = load_cached(f)
        return prof, _describe(prof), None
    prof = load_cached(s)
    dev_kind = prof.device.get("kind")
    if dev_kind != device_kind:
        raise CalibrationError(
            f"the profile was measured on a {dev_kind}, but the scenario computes on a {device_kind}",
            where=str(prof.path or s),
            key="device.kind",
        )
    warn = None
    cat = prof.device.get("catalog")
    if cat and str(cat) != str(catalog_name):
        warn = f"calibration profile {prof.name!r} was measured on {cat}, the scenario uses {catalog_name}"
    return prof, _describe(prof), warn


def _describe(prof: Profile) -> str:
    meas = [c for c in OP_CLASSES if prof.is_measured(c)]
    unmeas = [c for c in OP_CLASSES if not prof.is_measured(c)]
    s = f"profile {prof.name} ({prof.path})"
    if meas:
        s += f": measured {', '.join(meas)}"
    if unmeas:
        s += f"; datasheet defaults for {', '.join(unmeas)}"
    return s
