"""Where simkit caches derived data (cost tables, the parsed catalog): one folder, one rule.

``$SIMKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/simkit``, else ``~/.cache/simkit``;
``SIMKIT_CACHE_DIR=`` (empty) turns every cache off. Each cache keys its entries by a SHA-256
of everything the entry depends on, so an entry is never stale; deleting the folder only costs
the rebuild.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path | None:
    """The cache folder, or None when caching is off."""
    env = os.environ.get("SIMKIT_CACHE_DIR")
    if env is not None:
        return Path(env) if env.strip() else None
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "simkit"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in its folder (readers never see a
    partial entry); an unwritable folder is ignored (the cache is only an optimisation)."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass
