"""The step composition of a CPU profile: a short synthetic forward pass against the sum of its operators.

The calibration times every operator alone, back to back in a loop of itself; a real step runs
them one after another, each on the outputs of the one before, with other weights and
activations in between. On the 2-vCPU CI VM the two disagree: in the same minutes, whole bf16
steps took x0.98-1.20 at 2 threads (x1.1 typical) and x0.99-1.09 at 1 thread of what the GEMM
speed probe (operators alone) said the machine ran at (docs/fidelity.md, "2026-12-01").
So along the calibration run (a reading every few seconds, like the speed sentinel) the suite
times a few steps of a 1-layer Llama-3.2-1B-shaped model (dimensions the GEMM grid samples, none
of the held-out validation sets) and, after fitting, records per dtype the median over the cells
of measured step / predicted step as ``device.step_composition``; the cost model divides the step
operators' efficiency by it (``Profile.efficiency``). It is one number per dtype and thread
count, measured, never fitted to validation rows. Profiles without the section (older ones, the
shipped ``ci-vm-cpu``, ``--tiny`` runs) price operators as timed alone, exactly as before.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simkit.calibrate.validate import (
    TorchLlama,
    ValidationConfig,
    compute_device,
    model_spec,
    predict_step,
    step_batch,
)

COMPOSITION_MODEL = ValidationConfig(layers=1, hidden=2048, heads=32, kv_heads=8, ffn=8192, vocab=8192)
"""The synthetic step's model: Llama-3.2-1B's layer (``bench.GEMM_MODELS``: hidden 2048, 32 / 8
heads of 64, FFN 8192), one layer, an 8192-token vocabulary (an LM head of the grid's widths)."""

COMPOSITION_CELLS: tuple[tuple[str, int, int], ...] = (("prefill", 1, 64), ("prefill", 2, 64), ("decode", 2, 128), ("decode", 8, 128))
"""(phase, batch, context) of the synthetic steps: rows 64 and 128 of prefill, 2 and 8 of decode
(all on the GEMM grid's row counts)."""

COMPOSITION_REPEATS = 5
"""Readings (one repetition of every cell each, after one warm-up) per cell at least: a run that
took fewer along the way is topped up at its end."""


def composition_factor(measured_s: Sequence[float], predicted_s: Sequence[float]) -> float:
    """The median over cells of measured / predicted step time."""
    if len(measured_s) != len(predicted_s) or not measured_s:
        raise ValueError("one predicted time per measured cell, at least one cell")
    return float(np.median([m / p for m, p in zip(measured_s, predicted_s)]))


STEP_EVERY_S = 10.0
"""Wall seconds between two readings of the synthetic steps during a CPU calibration (one
repetition of every cell per reading, checked before each sample like the speed sentinel)."""


@dataclass
class StepSeries:
    """The synthetic steps of every dtype, read throughout a calibration run: each reading runs
    every cell once, so the steps see the same machine states as the operator samples taken
    around them (the machine moves within a run: ``device.speed_sentinel``), and the factor
    compares the two over the same minutes rather than one step measured after the fit."""

    steps: list[tuple[str, str, int, int, Callable[[], Any]]]
    """(dtype, phase, batch, context, step) per cell."""
    now: Callable[[], float]
    torch: Any
    cfg: ValidationConfig = COMPOSITION_MODEL
    every_s: float = STEP_EVERY_S
    wall: Callable[[], float] = time.perf_counter
    times: list[list[float]] = field(default_factory=list)
    last: float = -math.inf

    @classmethod
    def build(cls, dtypes: Sequence[str], now: Callable[[], float], *, cfg: ValidationConfig = COMPOSITION_MODEL,
              cells: Sequence[tuple[str, int, int]] = COMPOSITION_CELLS, every_s: float = STEP_EVERY_S) -> StepSeries:
        """The models (random weights) and inputs of every cell, each step run once (warm-up)."""
        from simkit.calibrate.bench import require_torch

        torch = require_torch()
        max_ctx = max(c for _, _, c in cells)
        steps: list[tuple[str, str, int, int, Callable[[], Any]]] = []
        with torch.inference_mode():
            for dt in dtypes:
                model = TorchLlama(cfg, dt, max_ctx)
                for phase, b, c in cells:
                    cache = model.make_cache(b)
                    if phase == "prefill":
                        ids = torch.randint(0, cfg.vocab, (b, c))
                        fn: Callable[[], Any] = lambda m=model, ids=ids, cache=cache: m.forward(ids, 0, cache)  # noqa: E731
                    else:
                        ids = torch.randint(0, cfg.vocab, (b, 1))
                        fn = lambda m=model, ids=ids, c=c, cache=cache: m.forward(ids, c, cache)  # noqa: E731
                    fn()
                    steps.append((dt, phase, b, c, fn))
        return cls(steps, now, torch, cfg, every_s, times=[[] for _ in steps])

    def read(self) -> None:
        """One repetition of every cell, now."""
        with self.torch.inference_mode():
            for i, (*_, fn) in enumerate(self.steps):
                t0 = self.now()
                fn()
                self.times[i].append(self.now() - t0)
        self.last = self.wall()

    def tick(self) -> None:
        """A reading when the last one is at least ``every_s`` old."""
        if self.wall() - self.last >= self.every_s:
            self.read()

    def top_up(self, repeats: int = COMPOSITION_REPEATS) -> None:
        """Readings until every cell has at least ``repeats`` (a run shorter than the readings need)."""
        while min(len(t) for t in self.times) < repeats:
            self.read()

    def readings(self) -> dict[str, Any]:
        """The measurements as plain data (what :func:`composition_section` reads)."""
        return {
            "model": {k: int(getattr(self.cfg, k)) for k in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab")},
            "every_s": self.every_s,
            "cells": [[dt, phase, b, c] for dt, phase, b, c, _ in self.steps],
            "times": [list(t) for t in self.times],
        }


def composition_section(readings: dict[str, Any], profile: Any, threads: int, clock: str) -> dict[str, Any]:
    """The ``device.step_composition`` section from :meth:`StepSeries.readings` against
    ``profile``'s prediction (which must not carry a composition itself): ``threads``, ``clock``,
    ``model``, ``every_s``, ``factor`` (per dtype), ``rows`` (per dtype and cell: median measured
    and predicted seconds, their ratio, the number of readings and their p10 / p90)."""
    if profile.step_composition() is not None:
        raise ValueError("the profile already carries a step composition: measure against the operators alone")
    cfg = ValidationConfig(**readings["model"])
    spec = model_spec(cfg)
    device = compute_device(profile)
    rows: list[dict[str, Any]] = []
    meas: dict[str, list[float]] = {}
    pred: dict[str, list[float]] = {}
    for (dt, phase, b, c), ts in zip(readings["cells"], readings["times"]):
        q, ctx = step_batch(phase, b, c)
        p, _ = predict_step(spec, q, ctx, device, profile, dt)
        m = float(np.median(ts))
        meas.setdefault(dt, []).append(m)
        pred.setdefault(dt, []).append(p)
        rows.append({"dtype": dt, "phase": phase, "batch": b, "context": c, "measured_s": round(m, 9),
                     "predicted_s": round(p, 9), "ratio": round(m / p, 4), "readings": len(ts),
                     "p10_s": round(float(np.percentile(ts, 10)), 9), "p90_s": round(float(np.percentile(ts, 90)), 9)})  # fmt: skip
    return {
        "threads": int(threads),
        "clock": clock,
        "model": dict(readings["model"]),
        "every_s": float(readings["every_s"]),
        "factor": {dt: round(composition_factor(meas[dt], pred[dt]), 4) for dt in meas},
        "rows": rows,
    }


def measure_step_composition(
    profile: Any,
    dtypes: Sequence[str],
    threads: int,
    clock: str,
    *,
    cfg: ValidationConfig = COMPOSITION_MODEL,
    cells: Sequence[tuple[str, int, int]] = COMPOSITION_CELLS,
    repeats: int = COMPOSITION_REPEATS,
) -> dict[str, Any]:
    """The section measured now, all at once (``repeats`` readings back to back; torch already set
    to ``threads``; the profile's ``clock``: thread CPU time for "cpu", else wall): for a profile
    fitted earlier (``benchmarks/``), where no calibration run is there to read it along."""
    now = time.thread_time if clock == "cpu" else time.perf_counter
    series = StepSeries.build(dtypes, now, cfg=cfg, cells=cells)
    series.top_up(repeats)
    return composition_section(series.readings(), profile, threads, clock)
