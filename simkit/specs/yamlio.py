"""YAML reading with errors that name the file and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from simkit.errors import SpecError

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: str | Path, *, error: type[Exception] = SpecError) -> Any:
    """Read one YAML document; malformed YAML or a missing file raises ``error`` naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"file not found: {p}", where=str(p)) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise error(f"cannot read file ({e.__class__.__name__})", where=str(p)) from None
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader (C-accelerated when available)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"malformed YAML: {loc}{problem}", where=str(p)) from None
