"""Writing calibration profiles (profile.yaml, samples.csv, models.json; schema in
:mod:`simkit.specs.calibration`). The read side is :mod:`simkit.cost.profile`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from simkit.cost.efficiency import OP_CLASSES
from simkit.cost.profile import Profile
from simkit.specs.calibration import MODELS_FILE, PROFILE_FILE, PROFILE_VERSION, SAMPLES_FILE


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


def profile_to_dict(prof: Profile) -> dict[str, Any]:
    """The profile.yaml mapping of a profile (plain, YAML-safe, numbers rounded)."""
    eff: dict[str, Any] = {}
    for cls in OP_CLASSES:
        cm = prof.models.get(cls)
        if cm is None:
            eff[cls] = {"measured": False, "note": prof.notes.get(cls, "not measured: datasheet default efficiency")}
            continue
        entry: dict[str, Any] = {"measured": True, "model": cm.describe(), "fit_error": dict(cm.fit_error)}
        if cls in prof.cross_validation:
            entry["cross_validation"] = prof.cross_validation[cls]
        entry["note"] = prof.notes.get(cls, "")
        eff[cls] = entry
    d: dict[str, Any] = {
        "simkit_profile": PROFILE_VERSION,
        "name": prof.name,
        "device": dict(prof.device),
        "source": prof.source,
        "license": prof.license,
        "samples": SAMPLES_FILE,
    }
    if _forests(prof):
        d["models"] = MODELS_FILE
    d["efficiency"] = eff
    d["launch_overhead"] = {cls: prof.launch_overhead(cls) for cls in OP_CLASSES}
    for key in ("links", "memory", "ssd", "collectives"):
        val = getattr(prof, key)
        if val:
            d[key] = val
    if prof.threads is not None:
        d["threads"] = int(prof.threads)
    if prof.host is not None:
        d["host_overhead"] = prof.host.to_dict()
    return _plain(d)


def _forests(prof: Profile) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cls, cm in prof.models.items():
        if cm.forest is not None:
            out[cls] = cm.forest
        if cm.forest_tokens is not None:
            out[f"{cls}_tokens"] = cm.forest_tokens
        if cm.forest_many_rows is not None:
            out[f"{cls}_many_rows"] = cm.forest_many_rows
    return out


def save_profile(prof: Profile, directory: str | Path) -> Path:
    """Write profile.yaml, samples.csv (and models.json) into ``directory``; returns the YAML path."""
    import yaml

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    d = profile_to_dict(prof)
    text = yaml.safe_dump(d, sort_keys=False, width=110, allow_unicode=True)
    (out / PROFILE_FILE).write_text(f"# simkit calibration profile (see simkit/specs/calibration.py)\n{text}", encoding="utf-8")
    if prof.samples is not None:
        prof.samples.to_csv(out / SAMPLES_FILE, index=False, float_format="%.9g")
    forests = {key: fo.to_json() for key, fo in _forests(prof).items()}
    if forests:
        with open(out / MODELS_FILE, "w", encoding="utf-8") as f:
            f.write("{\n")
            for i, (cls, fj) in enumerate(forests.items()):
                f.write(f'"{cls}": {{"baseline": {json.dumps(fj["baseline"])}, "depth": {fj["depth"]}, "trees": [\n')
                f.write(",\n".join(json.dumps(t, separators=(",", ":")) for t in fj["trees"]))
                f.write("\n]}" + ("," if i < len(forests) - 1 else "") + "\n")
            f.write("}\n")
    prof.path = out / PROFILE_FILE
    return prof.path

