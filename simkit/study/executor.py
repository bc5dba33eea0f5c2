"""Running a batch of scenarios: in this process, on a local process pool, or on Ray.

A :class:`Task` is one run: its fully resolved scenario (plain data) and the labels that place
it in the study (axis values, variant, repeat). Workers only compute: ``_simulate_task`` turns a
task into its result row and the bytes of its files, and the calling process stores them in a
:class:`~simkit.study.store.RunStore` (files first, row last), so the store has one writer and a
worker may run on another machine (Ray) without a shared file system. Tasks whose run id is
already in the store are skipped: finished runs are never recomputed.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from simkit.errors import SimkitError, StudyError
from simkit.study.progress import Progress
from simkit.study.store import RunStore, atomic_write

EXECUTORS = ("local", "ray")
RESERVED_COLUMNS = ("variant", "repeat", "run_id", "status", "error", "warnings")


@dataclass(frozen=True)
class Task:
    """One run. ``scenario`` is the resolved scenario as plain data; relative paths in it resolve
    against ``base_dir``; ``labels`` are the columns that place it in the study (axis values by
    dotted key, ``variant``, ``repeat``); ``source`` names the file in the run's error messages
    (default: ``base_dir``/scenario.yaml)."""

    run_id: str
    scenario: dict[str, Any]
    base_dir: str
    labels: dict[str, Any]
    source: str | None = None


@dataclass
class ExecStats:
    total: int = 0
    """Distinct runs of the batch (tasks sharing a run id count once)."""
    reused: int = 0
    """Runs already in the store, not recomputed."""
    ran: int = 0
    """Runs simulated now."""
    ok: int = 0
    failed: int = 0
    wall_s: float = 0.0


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``a.b`` keys; lists -> JSON strings (runs.parquet columns)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list | tuple):
            out[key] = json.dumps(v, sort_keys=True)
        else:
            out[key] = v
    return out


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def scenario_yaml(scenario: dict[str, Any]) -> bytes:
    return yaml.dump(scenario, Dumper=_DUMPER, sort_keys=False, allow_unicode=True).encode("utf-8")


def _simulate_task(task: Task, keep_tables: bool = False, write_to: str | None = None) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Simulate one task: (result row, {file name: bytes}). Never raises for a failing run: a
    SimkitError (e.g. the plan does not fit) becomes ``status: error`` with its message. With
    ``write_to`` (a folder this process can write), the files are written there (atomically)
    and not returned."""
    import simkit.simulate as simmod  # looked up at call time (tests count calls)
    from simkit.outputs import jsonable
    from simkit.scenario import scenario_from_dict

    where = task.source or str(Path(task.base_dir) / "scenario.yaml")
    files: dict[str, bytes] = {"scenario.yaml": scenario_yaml(task.scenario)}
    row: dict[str, Any] = {"run_id": task.run_id, "status": "ok", "error": ""}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sc = scenario_from_dict(task.scenario, where=where)
            res = simmod.simulate(sc, record_iterations=keep_tables)
        except SimkitError as e:
            row.update(status="error", error=str(e))
            res = None
        except Exception as e:  # a bug must not stop a long study; it is recorded as such
            row.update(status="error", error=f"internal error: {e.__class__.__name__}: {e}")
            res = None
    msgs = list(dict.fromkeys([str(w.message) for w in caught] + (res.warnings if res is not None else [])))
    row["warnings"] = json.dumps(msgs)
    if res is not None:
        summary = jsonable(res.summary)
        files["summary.json"] = (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode("utf-8")
        if keep_tables:  # the run's tables, as simkit run writes them
            with tempfile.TemporaryDirectory(prefix="simkit-run-") as tmp:
                for p in simmod.write_outputs(res, tmp):
                    if p.suffix == ".parquet":
                        files[p.name] = p.read_bytes()
        metrics = {k: v for k, v in flatten(summary).items() if k not in row}
        row = {**row, **metrics}
    row = {**{k: v for k, v in task.labels.items() if k not in row}, **row}
    if write_to is not None:
        _write_files(Path(write_to), files)
        files = {}
    return row, files


def _write_files(d: Path, files: dict[str, bytes]) -> None:
    if not d.is_dir():
        d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write(d / name, data)


def run_task(task: Task, keep_tables: bool = False, out_dir: Path | None = None) -> dict[str, Any]:
    """Simulate one task and return its row: labels, run_id, status, error and the flattened
    summary metrics. With ``out_dir``, also write the run's files there."""
    row, _ = _simulate_task(task, keep_tables, str(out_dir) if out_dir is not None else None)
    return row


def _pending(tasks: Sequence[Task], store: RunStore, keep_tables: bool) -> tuple[list[Task], int, int]:
    seen: dict[str, Task] = {}
    for t in tasks:
        seen.setdefault(t.run_id, t)
    done = store.done()
    if keep_tables:
        done = {r for r in done if store.has_tables(r)}
    todo = [t for rid, t in seen.items() if rid not in done]
    return todo, len(seen), len(seen) - len(todo)


def execute(
    tasks: Sequence[Task],
    store: RunStore,
    *,
    jobs: int = 1,
    executor: str = "local",
    address: str | None = None,
    progress: bool = True,
    keep_tables: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> ExecStats:
    """Run every task whose run id is not yet in ``store`` and store its files and row.

    ``jobs`` <= 1 runs in this process; more uses a pool of that many processes. ``executor='ray'``
    submits to Ray (``address``: None = the initialised or auto-detected instance, else started
    locally; ``"local"`` = a new local instance; ``"auto"`` or ``"ray://host:10001"`` = a cluster).
    Each run's folder gets its files and, last, its row (with the names of its label columns).
    ``on_row`` is called in this process after each stored row.
    """
    if executor not in EXECUTORS:
        raise StudyError(f"unknown executor {executor!r} (expected one of {', '.join(EXECUTORS)})")
    t0 = time.perf_counter()
    todo, total, reused = _pending(tasks, store, keep_tables)
    stats = ExecStats(total=total, reused=reused)
    bar = Progress(len(todo), reused, enabled=progress)
    bar.start()

    def finish(t: Task, row: dict[str, Any], files: dict[str, bytes]) -> None:
        run_id = t.run_id
        if files:
            store.put_files(run_id, files)
        store.put(run_id, row, labels=list(t.labels))
        stats.ran += 1
        ok = row.get("status") == "ok"
        stats.ok += ok
        stats.failed += not ok
        bar.update(ok)
        if on_row is not None:
            on_row(row)

    try:
        if not todo:
            pass
        elif executor == "ray":
            for t, (row, files) in _run_ray(todo, keep_tables, address):
                finish(t, row, files)
        elif jobs <= 1 or len(todo) == 1:
            for t in todo:
                row, files = _simulate_task(t, keep_tables)
                finish(t, row, files)
        else:
            for t, (row, files) in _run_pool(todo, keep_tables, min(jobs, len(todo)), store):
                finish(t, row, files)
    finally:
        bar.close()
    stats.wall_s = time.perf_counter() - t0
    return stats


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process not yet reaped is a zombie: dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _worker_init(parent: int) -> None:
    """Pool workers exit when the study process is gone (killed with -9, say) instead of
    lingering on an empty task queue."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if not _alive(parent):
                os._exit(1)

    threading.Thread(target=watch, name="simkit-parent-watch", daemon=True).start()


def _run_pool(todo: list[Task], keep_tables: bool, jobs: int, store: RunStore) -> Iterator[tuple[Task, tuple[dict[str, Any], dict[str, bytes]]]]:
    """Local worker processes; each writes its run's files into the store itself (this process
    writes only the rows), so file I/O is spread over the workers."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    methods = mp.get_all_start_methods()
    ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        ctx.set_forkserver_preload(["simkit.study.executor", "simkit.simulate"])
    window = 2 * jobs
    it = iter(todo)
    running: dict[Future[Any], Task] = {}
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),))
    try:
        while True:
            while len(running) < window:
                t = next(it, None)
                if t is None:
                    break
                running[pool.submit(_simulate_task, t, keep_tables, str(store.run_dir(t.run_id)))] = t
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                t = running.pop(f)
                try:
                    result = f.result()
                except BrokenProcessPool:
                    raise StudyError(f"a worker process died (out of memory?) while simulating run {t.run_id}; "
                                     "finished runs are kept: run the study again to resume") from None
                yield t, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(todo: list[Task], keep_tables: bool, address: str | None) -> Iterator[tuple[Task, tuple[dict[str, Any], dict[str, bytes]]]]:
    try:
        import ray
    except ImportError:
        raise StudyError("--executor ray needs Ray: pip install 'simkit[ray]'") from None
    started = False
    if not ray.is_initialized():
        # a local instance's workers import simkit from where this process does
        local = address in (None, "local") and not os.environ.get("RAY_ADDRESS")
        env = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}} if local and os.environ.get("PYTHONPATH") else None
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, runtime_env=env)
        except Exception as e:  # connection errors come as various exception types
            raise StudyError(f"cannot start or reach Ray at {address or 'a local instance'}: {e}") from None
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_simulate_task)
        window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        it = iter(todo)
        running: dict[Any, Task] = {}
        while True:
            while len(running) < window:
                t = next(it, None)
                if t is None:
                    break
                running[remote.remote(t, keep_tables)] = t
            if not running:
                break
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                t = running.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # a worker that died (ray.exceptions.RayError and friends)
                    raise StudyError(f"Ray failed to run run {t.run_id} ({e.__class__.__name__}); finished runs are "
                                     "kept: run the study again to resume") from None
                yield t, result
    finally:
        if started:
            ray.shutdown()
