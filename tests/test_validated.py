"""specs/validated.py: the objects a run gets without building a validator (constructed section
defaults, the on-disk cache of validated catalog items and scenarios, ``plain``) are the objects
validation gives, for every shipped scenario and catalog item."""

from __future__ import annotations

import json
import linecache
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from simkit.cachedir import in_one_run, one_run
from simkit.errors import ScenarioError, SpecError
from simkit.scenario import Scenario, find_scenario, load_scenario_data, scenario_from_dict, shipped_scenarios
from simkit.specs import validated
from simkit.specs.base import Frozen, Section
from simkit.specs.catalog import KINDS, Catalog, _folders, parse_item
from simkit.specs.yamlio import load_yaml


@pytest.fixture(autouse=True)
def _one_run(request: pytest.FixtureRequest) -> Any:
    """These tests are of the caches a single `simkit run` uses (cachedir.one_run)."""
    if request.node.name.startswith("test_outside_one_run"):
        yield
        return
    with one_run():
        yield


def assert_identical(a: Any, b: Any, where: str = "") -> None:
    """``a`` and ``b`` are the same value down to every type: models of one class with the same
    fields, set fields, extra and private attributes; equal ``model_dump`` and hash."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, BaseModel):
        assert a == b, where
        assert list(a.__dict__) == list(b.__dict__) == list(type(a).__pydantic_fields__), where
        assert a.model_fields_set == b.model_fields_set, where
        assert a.__pydantic_extra__ == b.__pydantic_extra__, where
        assert a.__pydantic_private__ == b.__pydantic_private__, where
        assert a.model_dump() == b.model_dump(), where
        assert a.model_dump_json() == b.model_dump_json(), where
        try:
            ha = hash(a)
        except TypeError:
            with pytest.raises(TypeError):
                hash(b)
        else:
            assert ha == hash(b), where
        for name in type(a).__pydantic_fields__:
            assert_identical(a.__dict__[name], b.__dict__[name], f"{where}.{name}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}.{i}")
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    else:
        assert a == b, where


def _subclasses(cls: type) -> list[type]:
    out = []
    for c in cls.__subclasses__():
        out += [c, *_subclasses(c)]
    return out


def _defaultable(cls: type[BaseModel]) -> bool:
    return all(not f.is_required() for f in cls.__pydantic_fields__.values())


SECTIONS = sorted({c for c in _subclasses(Section) + _subclasses(Frozen) if _defaultable(c)}, key=lambda c: f"{c.__module__}.{c.__qualname__}")


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.__qualname__)
def test_constructed_default_is_the_validated_default(cls: type[BaseModel]) -> None:
    try:
        expected = cls()
    except ValidationError:  # no valid default (Lengths needs input and output): never a declared default
        assert cls not in {type(f.default) for c in SECTIONS + [Scenario] for f in c.__pydantic_fields__.values()}
        return
    assert_identical(validated.constructed_default(cls), expected, cls.__qualname__)


def test_declared_section_defaults_are_validated_defaults() -> None:
    """Every field default that is a model instance (``plan: Plan = ...``) equals its class's
    validated default."""
    seen = 0
    for cls in {*_subclasses(Section), *_subclasses(Frozen), Scenario}:
        for name, f in cls.__pydantic_fields__.items():
            if isinstance(f.default, BaseModel):
                assert_identical(f.default, type(f.default)(), f"{cls.__qualname__}.{name}")
                seen += 1
    assert seen >= 13


SCENARIOS = shipped_scenarios()


def _round_trip(value: Any, roots: tuple[type[BaseModel], ...]) -> Any:
    return validated.decode(json.loads(json.dumps(validated.encode(value))), validated.reachable(roots)[0])


@pytest.mark.parametrize("name", SCENARIOS)
def test_cached_scenario_is_the_validated_scenario(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = find_scenario(name)
    data = load_scenario_data(path)
    monkeypatch.setenv("SIMKIT_CACHE_DIR", "")
    reference = scenario_from_dict(data, where=str(path))  # validated, no cache
    assert_identical(_round_trip(Scenario.model_validate(data), (Scenario,)), Scenario.model_validate(data), name)
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    miss = scenario_from_dict(data, where=str(path))
    assert list((tmp_path / "scenarios").glob("*.json")), "the validated scenario is cached"

    def no_validation(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a cached scenario is not validated again")

    monkeypatch.setattr(Scenario, "model_validate", no_validation)
    hit = scenario_from_dict(data, where=str(path))
    for got in (miss, hit):
        assert_identical(got, reference, name)
        assert got.source == reference.source and got.raw_data() == reference.raw_data()


@pytest.mark.parametrize("name", SCENARIOS)
def test_plain_is_model_dump(name: str) -> None:
    sc = Scenario.model_validate(load_scenario_data(find_scenario(name)))
    for section in (sc, sc.workload, sc.plan, sc.slo, *(getattr(sc.workload, k) for k in ("batch", "synthetic", "trace"))):
        if section is None:
            continue
        for exclude_none in (False, True):
            assert validated.plain(section, exclude_none=exclude_none) == section.model_dump(exclude_none=exclude_none)


def _shipped_items() -> list[tuple[Path, Any]]:
    return [(p, load_yaml(p)) for folder in _folders() if folder.is_dir() for p in sorted(folder.rglob("*.yaml"))]


def test_cached_catalog_items_are_the_validated_items(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = _shipped_items()
    assert len(items) > 20
    reference = [parse_item(doc, str(p)) for p, doc in items]
    for (p, _), item in zip(items, reference, strict=True):
        assert_identical(_round_trip(item, tuple(KINDS.values())), item, str(p))
        assert validated.plain(item) == item.model_dump()
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    folders = _folders()
    miss = Catalog.load(folders)
    assert list((tmp_path / "catalog").glob("*.json")), "the validated items are cached"
    for cls in KINDS.values():
        monkeypatch.setattr(cls, "model_validate", classmethod(lambda *_a, **_k: pytest.fail("validated again")))
    hit = Catalog.load(folders)
    by_file = {str(p): item for (p, _), item in zip(items, reference, strict=True)}
    for cat in (miss, hit):
        assert cat.files == miss.files
        for kind, named in cat.items.items():
            for name, item in named.items():
                assert_identical(item, by_file[str(cat.file_of(kind, name))], f"{kind} {name}")


def _gpu_yaml(tdp: str) -> str:
    src = next(p for p, doc in _shipped_items() if isinstance(doc, dict) and doc.get("kind") == "gpu")
    data = load_yaml(src)
    data["name"] = "test-gpu"
    data["tdp"] = tdp
    return json.dumps(data)


def test_catalog_cache_is_keyed_by_the_files_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "cat"
    folder.mkdir()
    (folder / "g.yaml").write_text(_gpu_yaml("300 W"))
    assert Catalog.load([folder]).get("gpu", "test-gpu").tdp == 300
    (folder / "g.yaml").write_text(_gpu_yaml("400 W"))
    assert Catalog.load([folder]).get("gpu", "test-gpu").tdp == 400
    assert len(list((tmp_path / "cache" / "catalog").glob("*.json"))) == 2


def test_cache_key_follows_the_spec_classes_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed source file of a spec class (or of its validators' module) misses the cache."""
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    roots = tuple(KINDS.values())
    builds: list[int] = []

    def build() -> list[Any]:
        builds.append(1)
        return [parse_item(doc, str(p)) for p, doc in _shipped_items()[:3]]

    def fits(v: Any) -> bool:
        return type(v) is list

    first = validated.cached("catalog", "k", roots, build, fits)
    assert_identical(validated.cached("catalog", "k", roots, build, fits), first)
    assert len(builds) == 1
    real = linecache.getlines
    for module in ("simkit/specs/hardware.py", "simkit/units.py"):
        validated.schema_key.cache_clear()
        monkeypatch.setattr(linecache, "getlines", lambda f, g=None, m=module: [*real(f, g), "# changed\n"] if f.endswith(m) else real(f, g))
        assert_identical(validated.cached("catalog", "k", roots, build, fits), first)
        monkeypatch.setattr(linecache, "getlines", real)
    validated.schema_key.cache_clear()
    assert len(builds) == 3
    assert len(list((tmp_path / "catalog").glob("*.json"))) == 3


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"m": "os:system", "s": [], "f": {}}', b'[{"m": "simkit.specs.hardware:GPUSpec", "s": [], "f": {}}]',
                                    b'{"t": 5}', b"[1, 2, 3]"])
def test_damaged_cache_entry_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: bytes) -> None:
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    path = find_scenario("quickstart")
    data = load_scenario_data(path)
    good = scenario_from_dict(data, where=str(path))
    (entry,) = (tmp_path / "scenarios").glob("*.json")
    entry.write_bytes(damage)
    again = scenario_from_dict(data, where=str(path))
    assert_identical(again, good)
    assert json.loads(entry.read_bytes())["m"] == "simkit.scenario:Scenario", "rewritten"


def test_unwritable_cache_folder_still_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = find_scenario("quickstart")
    data = load_scenario_data(path)
    monkeypatch.setenv("SIMKIT_CACHE_DIR", "")
    reference = scenario_from_dict(data, where=str(path))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(blocker))
    for _ in range(2):
        assert_identical(scenario_from_dict(data, where=str(path)), reference)
        assert Catalog.load(_folders()).get("model", reference.model).name == reference.model
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("cache", [True, False])
def test_errors_are_those_of_validation_and_never_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: bool) -> None:
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path) if cache else "")
    data = load_scenario_data(find_scenario("quickstart"))
    data["plan"] = {"kv_cache": {"block_sise": 16}}
    for _ in range(2):
        with pytest.raises(ScenarioError) as e:
            scenario_from_dict(data, where="x.yaml")
        assert (e.value.where, e.value.key) == ("x.yaml", "plan.kv_cache.block_sise")
        assert e.value.message == "unknown key; did you mean block_size, num_blocks?"
    folder = tmp_path / "cat"
    folder.mkdir()
    (folder / "a.yaml").write_text(_gpu_yaml("300 W"))
    (folder / "b.yaml").write_text(_gpu_yaml("300 Q"))
    for _ in range(2):
        with pytest.raises(SpecError) as e2:
            Catalog.load([folder])
        assert (e2.value.where, e2.value.key) == (str(folder / "b.yaml"), "tdp")
    assert not list((tmp_path / "scenarios").glob("*.json")) and not list((tmp_path / "catalog").glob("*.json"))


def test_duplicate_names_are_reported_in_file_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A duplicate before a malformed item is reported first, as when items were validated one by one."""
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "cat"
    folder.mkdir()
    (folder / "a.yaml").write_text(_gpu_yaml("300 W"))
    (folder / "b.yaml").write_text(_gpu_yaml("300 W"))
    (folder / "c.yaml").write_text(_gpu_yaml("300 Q"))
    with pytest.raises(SpecError, match="duplicate gpu name 'test-gpu'") as e:
        Catalog.load([folder])
    assert e.value.where == str(folder / "b.yaml")


# --- the YAML parse and emit caches (specs/yamlio.py): a warm run imports no PyYAML -----------


def _typed(v: Any) -> Any:
    """``v`` with every value and key tagged by its type (``1 == 1.0 == True`` in Python)."""
    if type(v) is dict:
        return ("dict", [(_typed(k), _typed(x)) for k, x in v.items()])
    if type(v) is list:
        return ("list", [_typed(x) for x in v])
    return (type(v).__name__, v)


SHIPPED_YAML = sorted(p for folder in ("hw_specs", "workloads", "calibration") for p in Path(__file__).resolve().parents[1].joinpath(folder).rglob("*.yaml"))


def test_parse_cache_gives_what_pyyaml_gives_for_every_shipped_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from simkit.specs import yamlio

    assert len(SHIPPED_YAML) > 50
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    parsed = [yaml.load(p.read_text(encoding="utf-8"), Loader=yamlio.loader()) for p in SHIPPED_YAML]  # noqa: S506
    for p, expected in zip(SHIPPED_YAML, parsed, strict=True):
        assert _typed(load_yaml(p)) == _typed(expected), p  # a miss: parsed and kept
    kept = len(list((tmp_path / "yaml").glob("*.json")))
    assert kept == len({p.read_bytes() for p in SHIPPED_YAML}), "every shipped file is kept (profiles' integer keys as pairs)"
    monkeypatch.setattr(yaml, "load", lambda *_a, **_k: pytest.fail("parsed again"))
    for p, expected in zip(SHIPPED_YAML, parsed, strict=True):
        assert _typed(load_yaml(p)) == _typed(expected), p  # a hit


@pytest.mark.parametrize("damage", [b"", b"{", b'{"doc": 1, "x": 2}', b'{"pairs": {"q": 1}}', b'{"pairs": [{"p": 5}]}', b'{"other": 1}'])
def test_damaged_parse_cache_entry_is_parsed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: bytes) -> None:
    from simkit.specs import yamlio

    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    f = tmp_path / "a.yaml"
    f.write_text("a: 1\nb: {2: x}\n")
    first = load_yaml(f)
    (entry,) = (tmp_path / "yaml").glob("*.json")
    entry.write_bytes(damage)
    assert _typed(load_yaml(f)) == _typed(first) == _typed({"a": 1, "b": {2: "x"}})
    assert _typed(yamlio.load_text(f.read_text())) == _typed(first)
    assert json.loads(entry.read_bytes()) == {"pairs": {"p": [["a", 1], ["b", {"p": [[2, "x"]]}]]}}, "rewritten"


def test_parse_cache_keeps_only_what_json_carries_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    f = tmp_path / "a.yaml"
    f.write_text("when: 2024-01-02\nn: 1\n")
    import datetime

    for _ in range(2):
        assert load_yaml(f) == {"when": datetime.date(2024, 1, 2), "n": 1}
    assert not list((tmp_path / "yaml").glob("*.json"))


def test_parse_cache_key_follows_pyyaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another PyYAML (its ``__init__.py``, or its files: libyaml's extension) is another key."""
    import importlib.util

    from simkit.specs import yamlio

    real = importlib.util.find_spec("yaml")
    assert real is not None and real.origin is not None
    keys = {yamlio.yaml_key()}
    fake = tmp_path / "yaml"
    fake.mkdir()
    (fake / "__init__.py").write_bytes(Path(real.origin).read_bytes() + b"\n# another version\n")
    spec = importlib.util.spec_from_file_location("yaml", fake / "__init__.py")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "yaml" else None)
    for extra in (None, "_yaml.so"):
        if extra:
            (fake / extra).write_bytes(b"")
        yamlio.yaml_key.cache_clear()
        keys.add(yamlio.yaml_key())
    monkeypatch.undo()
    yamlio.yaml_key.cache_clear()
    assert yamlio.yaml_key() in keys and len(keys) == 3


@pytest.mark.parametrize("name", SCENARIOS)
def test_dump_cache_gives_what_pyyaml_emits(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from simkit.outputs import resolved_scenario_data
    from simkit.specs import yamlio

    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    path = find_scenario(name)
    data = resolved_scenario_data(scenario_from_dict(load_scenario_data(path), where=str(path)), tmp_path / "out")
    expected = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    assert yamlio.dump_text(data) == expected  # a miss
    monkeypatch.setattr(yaml, "safe_dump", lambda *_a, **_k: pytest.fail("emitted again"))
    assert yamlio.dump_text(data) == expected  # a hit
    changed = {**data, "seed": data.get("seed", 0) + 1}
    monkeypatch.undo()
    assert yamlio.dump_text(changed) == yaml.safe_dump(changed, sort_keys=False, allow_unicode=True)


def test_a_warm_run_imports_no_pyyaml_and_writes_the_same_files(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    code = ("import sys; from simkit import cli; cli.main(['run', 'quickstart', '--out', sys.argv[1]]); "
            "print('yaml' in sys.modules)")
    env = {**os.environ, "SIMKIT_CACHE_DIR": str(tmp_path / "cache")}
    root = Path(__file__).resolve().parents[1]
    runs = [subprocess.run([sys.executable, "-c", code, str(tmp_path / f"out{i}")], capture_output=True, text=True, env=env, cwd=root,
                           check=True) for i in range(2)]
    assert runs[0].stdout.strip().endswith("True") and runs[1].stdout.strip().endswith("False")
    for f in ("summary.json", "requests.parquet", "iterations.parquet", "links.parquet"):
        assert (tmp_path / "out0" / f).read_bytes() == (tmp_path / "out1" / f).read_bytes(), f
    lines = [(tmp_path / f"out{i}" / "scenario.yaml").read_text().splitlines() for i in range(2)]
    assert lines[0][2:] == lines[1][2:] and lines[0][0] == lines[1][0]  # line 2 names the folder


def test_parse_cache_keeps_scalar_keys_with_their_types(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    f = tmp_path / "a.yaml"
    f.write_text("~: a\n1: b\n1.5: c\nfalse: d\n'1': e\n")
    first = load_yaml(f)
    assert _typed(first) == _typed({None: "a", 1: "b", 1.5: "c", False: "d", "1": "e"})
    assert _typed(load_yaml(f)) == _typed(first)  # a hit
    (entry,) = (tmp_path / "yaml").glob("*.json")
    assert "pairs" in json.loads(entry.read_bytes())


def test_outside_one_run_only_the_catalog_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A study, a search or a report (many scenarios in one process) writes no entry per scenario."""
    from simkit.outputs import resolved_scenario_data
    from simkit.specs import yamlio

    monkeypatch.setenv("SIMKIT_CACHE_DIR", str(tmp_path))
    path = find_scenario("quickstart")
    with one_run():
        assert in_one_run()
        with one_run():
            pass
        assert in_one_run()
        reference = scenario_from_dict(load_scenario_data(path), where=str(path))
    assert not in_one_run()
    for folder in ("yaml", "scenarios"):
        for f in (tmp_path / folder).glob("*.json"):
            f.unlink()
    sc = scenario_from_dict(load_scenario_data(path), where=str(path))
    assert_identical(sc, reference)
    yamlio.dump_text(resolved_scenario_data(sc, tmp_path / "out"))
    assert not list((tmp_path / "scenarios").glob("*.json")) and not list((tmp_path / "yaml").glob("*.json"))
    Catalog.load(_folders())
    assert len(list((tmp_path / "catalog").glob("*.json"))) == 1
    assert len(list((tmp_path / "yaml").glob("*.json"))) == 1  # the catalog's parsed files, one entry
