"""Find and load catalog items (``hw_specs/**.yaml``, ``workloads/models/*.yaml``) by name.

One item per file; the file's ``kind`` key says what it is. The catalog is read once per
process and cached. ``SIMKIT_CATALOG_PATH`` (os.pathsep-separated folders) adds user folders
searched before the shipped ones, so a new GPU or model is one YAML file.

The shipped data (``hw_specs``, ``workloads``, ``calibration``) is read from, in this order:
``SIMKIT_HOME`` when set; the source checkout simkit runs from; else the copy an installed
wheel carries as package data (``simkit/_data``, see ``setup.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simkit.errors import SpecError
from simkit.specs.base import Frozen, format_validation_error
from simkit.specs.hardware import HW_KINDS
from simkit.specs.model import ModelSpec
from simkit.specs.validated import cached
from simkit.specs.yamlio import load_yaml, load_yaml_files_keyed

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DATA = "_data"
"""Folder inside the installed ``simkit`` package that holds the shipped data folders."""
KINDS: dict[str, type[Frozen]] = {**HW_KINDS, "model": ModelSpec}


def data_root() -> Path:
    """The folder holding ``hw_specs``, ``workloads`` and ``calibration``: ``SIMKIT_HOME`` if set,
    else the checkout this simkit runs from, else the installed package's data."""
    home = os.environ.get("SIMKIT_HOME")
    if home:
        return Path(home)
    if (REPO_ROOT / "hw_specs").is_dir() and (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT
    from importlib.resources import files

    return Path(str(files("simkit").joinpath(PACKAGE_DATA)))


def repo_path(*parts: str) -> Path:
    """A path inside the simkit data folders (hw_specs, workloads, calibration)."""
    return data_root().joinpath(*parts)


def parse_item(data: Any, where: str, kind: str | None = None) -> Frozen:
    """Validate one catalog item (already-parsed YAML) into its spec class."""
    if not isinstance(data, dict):
        raise SpecError("expected a mapping of keys to values at the top level", where=where)
    k = data.get("kind", kind)
    if k not in KINDS:
        raise SpecError(f"unknown kind {k!r} (expected one of {', '.join(KINDS)})", where=where, key="kind")
    try:
        return KINDS[k].model_validate(data)
    except ValidationError as e:
        raise format_validation_error(e, where, KINDS[k]) from None


@dataclass
class Catalog:
    items: dict[str, dict[str, Frozen]] = field(default_factory=dict)
    files: dict[tuple[str, str], Path] = field(default_factory=dict)

    @classmethod
    def load(cls, folders: list[Path]) -> Catalog:
        found = [(folder, path) for folder in folders if folder.is_dir() for path in sorted(folder.rglob("*.yaml"))]
        docs, digest = load_yaml_files_keyed([path for _, path in found])

        def validate() -> list[Frozen]:
            parsed: list[Frozen] = []

            def parse(i: int) -> Frozen:
                parsed.append(parse_item(docs[i], str(found[i][1])))
                return parsed[-1]

            cls._assemble(found, parse)  # each item's errors in file order, as the duplicates'
            return parsed

        # the validated items of these files' bytes, kept on disk (specs/validated.py): no validator built
        def fits(v: Any) -> bool:
            return type(v) is list and len(v) == len(found) and all(isinstance(x, Frozen) for x in v)

        items = validate() if digest is None else cached("catalog", digest, tuple(KINDS.values()), validate, fits)
        return cls._assemble(found, items.__getitem__)

    @classmethod
    def _assemble(cls, found: list[tuple[Path, Path]], item: Callable[[int], Frozen]) -> Catalog:
        """The catalog of the files ``found`` ((searched folder, file) pairs), ``item(i)`` being
        the i-th file's item: a name given twice in one folder tree is an error; an earlier
        folder (a user catalog) overrides a later one's item."""
        cat = cls({k: {} for k in KINDS})
        roots: dict[tuple[str, str], Path] = {}  # the searched folder each item came from
        for i, (folder, path) in enumerate(found):
            it = item(i)
            kind, name = it.kind, it.name  # type: ignore[attr-defined]
            if name in cat.items[kind]:
                if roots[(kind, name)] == folder:  # same folder tree (any subfolder): a clash
                    raise SpecError(
                        f"duplicate {kind} name {name!r} (also in {cat.files[(kind, name)]})",
                        where=str(path),
                        key="name",
                    )
                continue  # an earlier folder (user catalog) overrides the shipped item
            cat.items[kind][name] = it
            cat.files[(kind, name)] = path
            roots[(kind, name)] = folder
        return cat

    def names(self, kind: str) -> list[str]:
        return sorted(self.items[kind])

    def get(self, kind: str, name: str, *, where: str | None = None, key: str | None = None) -> Any:
        if not isinstance(name, str):
            raise SpecError(f"expected the name of a catalog {kind}, got {name!r}", where=where, key=key)
        try:
            return self.items[kind][name]
        except KeyError:
            import difflib  # (only an unknown name needs it)

            known = self.names(kind)
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SpecError(
                f"unknown {kind} {name!r} (known: {', '.join(known)}){hint}", where=where, key=key
            ) from None

    def file_of(self, kind: str, name: str) -> Path:
        return self.files[(kind, name)]

    def find(self, name: str) -> tuple[str, Any]:
        """Look a name up in every kind (for ``simkit catalog show NAME``)."""
        hits = [(k, v[name]) for k, v in self.items.items() if name in v]
        if not hits:
            import difflib

            every = [n for v in self.items.values() for n in v]
            close = difflib.get_close_matches(name, every, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SpecError(f"no catalog item named {name!r}{hint}")
        return hits[0]


def _folders() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("SIMKIT_CATALOG_PATH", "").split(os.pathsep) if p]
    return [*extra, repo_path("hw_specs"), repo_path("workloads", "models")]


@lru_cache(maxsize=4)
def _cached(key: tuple[str, ...]) -> Catalog:
    return Catalog.load([Path(p) for p in key])


def default_catalog() -> Catalog:
    return _cached(tuple(str(p) for p in _folders()))


def load_model(ref: str, *, where: str | None = None, key: str | None = "model") -> ModelSpec:
    """A catalog model name, a path to a model YAML, or a path to a Hugging Face ``config.json``."""
    p = Path(ref)
    try:
        hf_dir = p.is_dir() and (p / "config.json").exists()
    except OSError:  # not a usable path (e.g. a name longer than the file system allows): a catalog name
        hf_dir = False
    if ref.endswith(".json") or hf_dir:
        from simkit.specs.hf import model_from_hf_config

        cfg_path = p / "config.json" if hf_dir else p
        try:
            found = cfg_path.is_file()
        except OSError:
            found = False
        if not found:
            raise SpecError(f"Hugging Face config not found: {cfg_path}", where=where, key=key)
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SpecError(f"malformed JSON: line {e.lineno}: {e.msg}", where=str(cfg_path)) from None
        except UnicodeDecodeError as e:
            line = e.object[: e.start].count(b"\n") + 1
            raise SpecError(f"line {line}: not UTF-8 text", where=str(cfg_path)) from None
        except OSError as e:
            raise SpecError(f"cannot read file ({e.strerror or e})", where=str(cfg_path)) from None
        except RecursionError:
            raise SpecError("malformed JSON: nested too deeply", where=str(cfg_path)) from None
        return model_from_hf_config(cfg, where=str(cfg_path))
    if ref.endswith((".yaml", ".yml")):
        item = parse_item(load_yaml(p), str(p), kind="model")
        if not isinstance(item, ModelSpec):
            raise SpecError(f"expected kind: model, got {item.kind!r}", where=str(p), key="kind")  # type: ignore[attr-defined]
        return item
    return default_catalog().get("model", ref, where=where, key=key)
