"""What a fresh process costs before simkit's first line runs, beside the whole 16k case.

    .venv/bin/python benchmarks/import_floor.py               # least CPU of 10 fresh processes per row
    .venv/bin/python benchmarks/import_floor.py --repeat 3    # quicker
    .venv/bin/python benchmarks/import_floor.py --json F      # also write the rows as JSON

Rows, each a fresh process, run in turn (so all rows see the same minutes of the machine):
the interpreter alone (``python -c pass``); the libraries every run imports (numpy with
``numpy.random``, PyYAML, and pydantic with one ``BaseModel`` subclass built and used, which
imports pydantic's model machinery as simkit's first spec class does); those plus every simkit
module a run imports (``simkit.scenario``, ``simkit.simulate``); and the whole
``azure16k-continuous`` case as ``serving_speed.py`` runs it (its cost tables warmed by one
untimed run first). The gap between the last row and the others is what simkit's own code
costs; the second row is a floor no change inside simkit can lower (docs/performance.md, "Why
>= 100x Vidur is out of reach for this design"). CPU seconds (user + system) of the children,
least of ``--repeat``; ``OPENBLAS_NUM_THREADS=1`` as in a ``simkit`` process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_LIBRARIES = (
    "import numpy, numpy.random, yaml\n"
    "from pydantic import BaseModel, ConfigDict\n"
    "class A(BaseModel):\n"
    "    model_config = ConfigDict(frozen=True)\n"
    "    x: int = 1\n"
    "A(x=2)\n"
)
_CASE = "azure16k-continuous"


def rows() -> dict[str, list[str]]:
    """Label -> the fresh process's command line."""
    child = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import serving_speed; "
             "serving_speed.main(sys.argv[1:])")  # fmt: skip
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "+ numpy, numpy.random, PyYAML, pydantic (one BaseModel)": [sys.executable, "-c", _LIBRARIES],
        "+ simkit.scenario, simkit.simulate imported": [sys.executable, "-c", _LIBRARIES + "import simkit.scenario, simkit.simulate\n"],
        f"the whole {_CASE} case (serving_speed.py's child)": [sys.executable, "-c", child, "--child", _CASE],
    }


def _cpu(cmd: list[str], env: dict[str, str]) -> float:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, check=False)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"import_floor.py: error: {' '.join(cmd[:2])}... exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="import_floor.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=10, help="fresh processes per row (least CPU is printed)")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args(argv)
    if a.repeat < 1:
        ap.error("--repeat must be >= 1")
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmds = rows()
    _cpu(cmds[f"the whole {_CASE} case (serving_speed.py's child)"], env)  # warm the cost tables
    best = dict.fromkeys(cmds, float("inf"))
    for _ in range(a.repeat):
        for label, cmd in cmds.items():
            best[label] = min(best[label], _cpu(cmd, env))
    print(f"least CPU s of {a.repeat} fresh process(es) per row")
    for label, s in best.items():
        print(f"  {s:6.3f}  {label}")
    if a.json:
        Path(a.json).write_text(json.dumps({"repeat": a.repeat, "cpu_s": best}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
