"""Which engine path users' runs take: every shipped scenario, every scenario, study and search of
docs/examples.md, a sample of the points every shipped study and search expands to, and the plans
``simkit offload-plan --confirm`` simulates for every offloaded scenario among them, each simulated
(its workload cut to ``--limit`` requests; offload-plan's confirmations run the batch it ranks)
and counted by the ``engine_path`` its ``summary.json`` names.

    python benchmarks/engine_paths.py                  # the table: engine path -> runs, and where from
    python benchmarks/engine_paths.py --sample 12      # at most 12 points of each study and search
    python benchmarks/engine_paths.py --json FILE      # also every run's source and engine path

A run's path is found by running it, not by building it: a pipelined run whose micro-batches
overtake is known only when it happens (the run is then repeated event by event). The
particulars of such a conflict (which replica, when) are replaced by ``...`` so that runs group
by what fell back. A search's sample is drawn (seeded) from the candidates its screening keeps;
a study's from its runs.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples.md"


@dataclass
class Run:
    source: str
    """Where the run comes from: ``scenario NAME``, ``study NAME [labels]`` and so on."""
    data: dict[str, Any]
    where: str
    """The file its relative paths resolve against."""


def limited(data: dict[str, Any], limit: int) -> dict[str, Any]:
    """``data`` with its workload cut to at most ``limit`` requests (a limit it already sets
    that is lower stays)."""
    out = json.loads(json.dumps(data))
    wl = out.setdefault("workload", {})
    given = wl.get("limit")
    wl["limit"] = limit if given is None else min(int(given), limit)
    return out


def conflict_free(path: str) -> str:
    """``path`` without a pipeline conflict's particulars (replica, instant), which differ
    between runs that fall back for the same reason."""
    return re.sub(r"replica \d+ at t=[0-9.e+-]+ s", "replica ... at t=... s", path)


def scenario_runs() -> Iterator[Run]:
    from simkit.scenario import load_scenario_data

    for p in sorted((ROOT / "workloads" / "scenarios").glob("*.yaml")):
        yield Run(f"scenario {p.stem}", load_scenario_data(p), str(p))


def example_files(folder: Path) -> list[Path]:
    """docs/examples.md's ``# file: NAME`` blocks, written into ``folder`` (the examples refer
    to each other by these names)."""
    text = EXAMPLES.read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        m = re.match(r"# file: (\S+)\n", block)
        if m is None:
            continue
        p = folder / m.group(1)
        p.write_text(block, encoding="utf-8")
        out.append(p)
    return out


def study_runs(path: Path, label: str, sample: int, rng: random.Random) -> Iterator[Run]:
    from simkit.study.spec import load_study

    study = load_study(path)
    tasks = study.tasks()
    for t in sorted(rng.sample(tasks, sample), key=tasks.index) if len(tasks) > sample else tasks:
        labels = ", ".join(f"{k}={v}" for k, v in t.labels.items() if v not in (None, "") and k != "repeat")
        yield Run(f"{label} [{labels}]", t.scenario, t.source or str(path))


def search_runs(path: Path, label: str, sample: int, rng: random.Random) -> Iterator[Run]:
    from simkit.search.screen import Screener
    from simkit.search.spec import load_spec

    spec = load_spec(path)
    scr = Screener(spec.where, False)
    offload_key = "offload" if "offload" in spec.space_keys else None
    kept = []
    for labels, over in spec.candidates():
        s = scr.screen(spec.base, over, labels.get(offload_key) if offload_key else None)
        if s.ok and s.data is not None:
            kept.append((labels, s.data))
    picked = sorted(rng.sample(range(len(kept)), sample)) if len(kept) > sample else range(len(kept))
    for i in picked:
        labels, data = kept[i]
        yield Run(f"{label} [{', '.join(f'{k}={v}' for k, v in labels.items())}] ({len(kept)} screened in)", data, spec.where)


def all_runs(folder: Path, sample: int, seed: int) -> Iterator[Run]:
    rng = random.Random(seed)
    yield from scenario_runs()
    for p in sorted((ROOT / "workloads" / "studies").glob("*.yaml")):
        yield from study_runs(p, f"study {p.stem}", sample, rng)
    for p in sorted((ROOT / "workloads" / "searches").glob("*.yaml")):
        yield from search_runs(p, f"search {p.stem}", sample, rng)
    from simkit.specs.yamlio import load_yaml

    for p in example_files(folder):
        raw = load_yaml(p)
        name = f"docs/examples.md {p.name}"
        if "space" in raw:
            yield from search_runs(p, name, sample, rng)
        elif "base" in raw:
            yield from study_runs(p, name, sample, rng)
        else:
            yield Run(name, raw, str(p))


def engine_path(run: Run, limit: int) -> str:
    """The run's ``engine_path``, or ``error: ...`` where it does not run."""
    from simkit.errors import SimkitError
    from simkit.scenario import scenario_from_dict
    from simkit.simulate import simulate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sc = scenario_from_dict(limited(run.data, limit), where=run.where)
            return str(simulate(sc, record_iterations=False).summary["engine_path"])
        except SimkitError as e:
            return f"error: {e.__class__.__name__}"


def _recording(real: Any, run: Run, seen: list[tuple[Run, str]]) -> Any:
    """``simulate`` that also appends each run's engine path to ``seen`` (offload-plan's
    confirmations of ``run``'s plans)."""

    def recording(sc: Any, record_iterations: bool = True, trace: bool = False, engine: str = "auto") -> Any:
        res = real(sc, record_iterations=record_iterations, trace=trace, engine=engine)
        plan = sc.plan.offload
        label = f"gpu_batch_size={plan.gpu_batch_size}, num_gpu_batches={plan.num_gpu_batches}"
        seen.append((Run(f"offload-plan {run.source.split()[-1]} [{label}]", {}, run.where), str(res.summary["engine_path"])))
        return res

    return recording


def offload_plan_paths(runs: list[Run], top: int) -> Iterator[tuple[Run, str]]:
    """The engine paths of the runs ``simkit offload-plan --top TOP --confirm TOP`` simulates
    for each offloaded scenario of ``runs`` (its own confirmation runs, recorded as they happen)."""
    import simkit.simulate as simmod
    from simkit.errors import SimkitError
    from simkit.scenario import scenario_from_dict
    from simkit.search.offload import optimize

    real = simmod.simulate
    for run in runs:
        if not (run.data.get("plan") or {}).get("offload"):
            continue
        seen: list[tuple[Run, str]] = []
        simmod.simulate = _recording(real, run, seen)  # type: ignore[assignment]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optimize(scenario_from_dict(run.data, where=run.where), top=top, confirm=top)
        except SimkitError as e:
            seen.append((Run(f"offload-plan {run.source.split()[-1]}", {}, run.where), f"error: {e.__class__.__name__}"))
        finally:
            simmod.simulate = real  # type: ignore[assignment]
        yield from seen


def table(paths: list[tuple[Run, str]]) -> str:
    """Markdown: engine path -> runs, and which sources (files) they came from."""
    count: Counter[str] = Counter()
    where: dict[str, Counter[str]] = defaultdict(Counter)
    for run, path in paths:
        key = conflict_free(path)
        count[key] += 1
        where[key][run.source.split(" [")[0]] += 1
    lines = ["| engine path | runs | from |", "|---|---:|---|"]
    for key, n in sorted(count.items(), key=lambda kv: (-kv[1], kv[0])):
        src = ", ".join(f"{s} ({k})" if k > 1 else s for s, k in sorted(where[key].items()))
        lines.append(f"| `{key}` | {n} | {src} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=200, help="requests per run at most (default 200)")
    ap.add_argument("--sample", type=int, default=16, help="points of each study and search at most (default 16)")
    ap.add_argument("--seed", type=int, default=0, help="the samples' seed")
    ap.add_argument("--confirm", type=int, default=3, help="offload-plan's --top/--confirm per offloaded scenario (default 3)")
    ap.add_argument("--json", type=Path, help="write every run's source and engine path here")
    args = ap.parse_args(argv)
    paths: list[tuple[Run, str]] = []
    with tempfile.TemporaryDirectory(prefix="engine-paths-") as tmp:
        for run in all_runs(Path(tmp), args.sample, args.seed):
            path = engine_path(run, args.limit)
            print(f"{run.source}: {path}", file=sys.stderr, flush=True)
            paths.append((run, path))
        scenarios = [r for r, _ in paths if " [" not in r.source]
        for run, path in offload_plan_paths(scenarios, args.confirm):
            print(f"{run.source}: {path}", file=sys.stderr, flush=True)
            paths.append((run, path))
    print(table(paths))
    if args.json is not None:
        args.json.write_text(json.dumps([{"source": r.source, "engine_path": p} for r, p in paths], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
