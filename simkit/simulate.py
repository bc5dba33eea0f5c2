"""Scenario -> :class:`Result`: build the deployment, run it, summarise it.

``simulate(scenario)`` is what the CLI, studies and searches call. It is wiring only:
:mod:`simkit.deployment` builds the deployment (hardware, model, calibration, memory plan,
replicas and their engines), :mod:`simkit.engine.cluster` runs it (arrivals, rejection,
routing, hand-offs), :mod:`simkit.summary` summarises it, :mod:`simkit.outputs` holds the
:class:`Result` and writes run folders.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from simkit.cost.links import link_rates
from simkit.deployment import (
    build_deployment,
    build_replicas,
    calibration_provenance,
    plan_memory,
    plan_replica_memory,
    without_pipeline_closed_form,
)
from simkit.engine.clock import PlainClock
from simkit.engine.cluster import Cluster
from simkit.engine.state import RequestTable
from simkit.errors import ScenarioError
from simkit.outputs import Result, write_outputs
from simkit.scenario import Scenario
from simkit.summary import summarize_run

if TYPE_CHECKING:
    from simkit.engine.pipeline_fast import PipelineConflict

# re-exported from their homes, for code that imports them from here
__all__ = ["Result", "link_rates", "plan_memory", "plan_replica_memory", "simulate", "write_outputs"]


def simulate(sc: Scenario, *, record_iterations: bool = True, trace: bool = False, engine: str = "auto") -> Result:
    """Run a scenario. ``engine``: ``auto`` runs the fast exact path where it covers the plan
    (:mod:`simkit.engine.fast`; in one fused loop where :mod:`simkit.engine.lean` covers it) and
    the reference engine elsewhere; ``stepping`` the fast path without the fused loop;
    ``reference`` always the reference engine (``summary["engine_path"]`` says which ran, and
    why)."""
    if engine not in ("auto", "stepping", "reference"):
        raise ScenarioError(f"expected engine 'auto', 'stepping' or 'reference', got {engine!r}", where=sc.source, key="engine")
    wall0 = time.perf_counter()
    with _collector_paused():
        return _simulate(sc, record_iterations, trace, engine, wall0)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a run is built, run and summarised: it
    would otherwise traverse every long-lived object (the imported modules, the links' busy
    periods, the request table's objects) each time enough new ones survive, about 0.1 s of a
    pipelined or offloaded run; reference counting frees the run's objects meanwhile (a run
    leaves only its world's own cycles behind, collected once the collector resumes)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _pipeline_conflict() -> type[PipelineConflict]:
    """The exception the pipeline stages' closed form raises: its module
    (engine/pipeline_fast.py) is imported only where a run raised (a plain run does not import it)."""
    from simkit.engine.pipeline_fast import PipelineConflict

    return PipelineConflict


def _simulate(sc: Scenario, record_iterations: bool, trace: bool, engine: str, wall0: float) -> Result:
    dep = build_deployment(sc, engine, trace)
    # the fused loop (and FastWorld, where it stops) runs no SimPy loop: a plain clock, no SimPy
    cluster = Cluster(RequestTable(dep.reqs), record_iterations, trace, PlainClock() if dep.fused_loop else None)
    executors = build_replicas(dep, cluster)
    try:
        stopped = cluster.run(fused=dep.fused_loop)
    except _pipeline_conflict() as exc:  # (evaluated only when the run raised)
        # a micro-batch overtook another or shared a link with it: the stages' closed form does
        # not hold for this run, so it runs again with the stages event by event (exact)
        dep = without_pipeline_closed_form(dep, exc)
        cluster = Cluster(RequestTable(dep.reqs), record_iterations, trace)
        executors = build_replicas(dep, cluster)
        stopped = cluster.run()
    if stopped is not None:
        # the fused loop stopped (and wrote nothing): the run was stepped
        dep = dataclasses.replace(dep, engine_path=f"fast (the fused loop stopped at {stopped}: stepped)")
    summary, warn, events, link_busy = summarize_run(dep, cluster, executors)
    g0 = dep.groups[0]
    return Result(sc, summary, cluster.table, cluster.log.rows, summary["memory"], warn, events,
                  time.perf_counter() - wall0, calibration_provenance(dep.sc, g0.eff, g0.cal_info), link_busy)
