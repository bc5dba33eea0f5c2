"""The layers import one way (docs/architecture.md): every ``simkit`` import in every module,
at the top, inside a function or under ``TYPE_CHECKING``, goes to the same layer or a lower one;
and no two modules import each other, directly or round a longer loop (runtime imports, lazy
ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "simkit"

# (module prefix, layer), the longest matching prefix wins; lower layers never import higher ones
LAYERS: dict[str, int] = {
    "simkit": 0, "simkit.units": 0, "simkit.errors": 0, "simkit.cachedir": 0,
    "simkit.specs": 1,
    "simkit.cost": 2,
    "simkit.calibrate": 3, "simkit.workload": 3,
    "simkit.engine": 4,
    "simkit.policies": 5,
    "simkit.scenario": 6, "simkit.metrics": 6,
    "simkit.deployment": 7, "simkit.simulate": 7, "simkit.summary": 7, "simkit.outputs": 7, "simkit.schema_doc": 7,
    "simkit.study": 8, "simkit.search": 8, "simkit.report": 8,
    # the offload validation runs the simulator on this machine's measurements; the step
    # validation (calibrate.validate) prices steps with cost/ alone, and the suite's step
    # composition (calibrate.composition) runs its model, so it stays in calibrate's layer
    "simkit.calibrate.validate_offload": 8,
    "simkit.cli": 9, "simkit.calibrate.cli_calibrate": 9, "simkit.study.cli": 9,
}

KNOWN_UPWARD: set[tuple[str, str]] = set()
"""Upward imports not yet removed, each with its reason; the test fails when one disappears, so
the list only shrinks."""

KNOWN_CYCLES: set[str] = set()
"""Import cycles not yet broken, each with its reason (the test fails when one disappears)."""


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _is_module(name: str) -> bool:
    p = PKG.parent / name.replace(".", "/")
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported simkit module, line, under TYPE_CHECKING?) of every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("simkit"):
            subs = [f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")]
            out += [(m, node.lineno, id(node) in typing_only) for m in subs or [node.module]]
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in typing_only) for a in node.names if a.name.startswith("simkit")]
    return out


MODULES = {_module(p): p for p in sorted(PKG.rglob("*.py"))}


def test_layers_cover_every_module() -> None:
    assert all(_layer(m) is not None for m in MODULES)
    assert "simkit.deployment" in MODULES and "simkit.engine.cluster" in MODULES


def test_no_upward_imports() -> None:
    found = set()
    bad = []
    for mod, path in MODULES.items():
        for target, line, _ in _imports(path):
            if _layer(target) > _layer(mod):
                if (mod, target) in KNOWN_UPWARD:
                    found.add((mod, target))
                else:
                    bad.append(f"{path.relative_to(PKG.parent)}:{line} imports {target} (layer {_layer(target)} > {_layer(mod)})")
    assert not bad, "upward imports:\n" + "\n".join(bad)
    assert found == KNOWN_UPWARD, f"no longer imported upward (drop from KNOWN_UPWARD): {KNOWN_UPWARD - found}"


def test_no_import_cycles() -> None:
    graph = {m: {t for t, _, typing_only in _imports(p) if not typing_only and t in MODULES and t != m}
             for m, p in MODULES.items()}
    # a package's __init__ importing its own modules is how packages re-export: not a cycle
    for m in graph:
        graph[m] = {t for t in graph[m] if not (MODULES[m].name == "__init__.py" and t.startswith(m + "."))}
    cycles = []
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join([*stack[stack.index(t):], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    new = sorted(set(cycles) - KNOWN_CYCLES)
    assert not new, "import cycles:\n" + "\n".join(new)
    assert set(cycles) >= KNOWN_CYCLES, f"no longer cycles (drop from KNOWN_CYCLES): {KNOWN_CYCLES - set(cycles)}"


@pytest.mark.parametrize("mod", ["simkit.units", "simkit.specs.node", "simkit.engine.engine"])
def test_layer_of(mod: str) -> None:
    assert _layer(mod) < _layer("simkit.deployment")
