"""The step composition of a CPU profile: a short synthetic forward pass against the sum of its operators.

The calibration times every operator alone, back to back in a loop of itself; a real step runs
them one after another, each on the outputs of the one before, with other weights and
activations in between. On the 2-vCPU CI VM the two disagree: in the same minutes, whole bf16
steps took x0.98-1.20 at 2 threads (x1.1 typical) and x0.99-1.09 at 1 thread of what the GEMM
speed probe (operators alone) said the machine ran at (docs/fidelity.md, "2026-12-01").
So after fitting, the suite times a few steps of a 1-layer Llama-3.2-1B-shaped model (dimensions
the GEMM grid samples, none of the held-out validation sets) and records, per dtype, the median of
measured step / predicted step as ``device.step_composition``; the cost model divides the step
operators' efficiency by it (``Profile.efficiency``). It is one number per dtype and thread
count, measured, never fitted to validation rows. Profiles without the section (older ones, the
shipped ``ci-vm-cpu``, ``--tiny`` runs) price operators as timed alone, exactly as before.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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
"""Timed repetitions per cell, interleaved round-robin over the cells (after one warm-up each)."""


def composition_factor(measured_s: Sequence[float], predicted_s: Sequence[float]) -> float:
    """The median over cells of measured / predicted step time."""
    if len(measured_s) != len(predicted_s) or not measured_s:
        raise ValueError("one predicted time per measured cell, at least one cell")
    return float(np.median([m / p for m, p in zip(measured_s, predicted_s)]))


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
    """Time ``cells`` of ``cfg``'s model in each dtype (torch already set to ``threads``; the
    ``clock`` of the profile: thread CPU time for "cpu", else wall) and compare each with
    ``profile``'s prediction (which must not carry a composition itself). Returns the
    ``device.step_composition`` section: ``threads``, ``clock``, ``model``, ``factor`` (per dtype),
    ``rows`` (per dtype and cell: measured and predicted seconds)."""
    from simkit.calibrate.bench import require_torch

    torch = require_torch()
    if profile.step_composition() is not None:
        raise ValueError("the profile already carries a step composition: measure against the operators alone")
    now = time.thread_time if clock == "cpu" else time.perf_counter
    spec = model_spec(cfg)
    device = compute_device(profile)
    max_ctx = max(c for _, _, c in cells)
    rows: list[dict[str, Any]] = []
    factor: dict[str, float] = {}
    with torch.inference_mode():
        for dt in dtypes:
            model = TorchLlama(cfg, dt, max_ctx)
            steps = []
            for phase, b, c in cells:
                cache = model.make_cache(b)
                if phase == "prefill":
                    ids = torch.randint(0, cfg.vocab, (b, c))
                    steps.append(lambda m=model, ids=ids, cache=cache: m.forward(ids, 0, cache))
                else:
                    ids = torch.randint(0, cfg.vocab, (b, 1))
                    steps.append(lambda m=model, ids=ids, c=c, cache=cache: m.forward(ids, c, cache))
            for fn in steps:  # warm-up
                fn()
            times: list[list[float]] = [[] for _ in steps]
            for _ in range(repeats):
                for i, fn in enumerate(steps):
                    t0 = now()
                    fn()
                    times[i].append(now() - t0)
            meas, pred = [], []
            for (phase, b, c), ts in zip(cells, times):
                q, ctx = step_batch(phase, b, c)
                p, _ = predict_step(spec, q, ctx, device, profile, dt)
                m = float(np.median(ts))
                meas.append(m)
                pred.append(p)
                rows.append({"dtype": dt, "phase": phase, "batch": b, "context": c, "measured_s": round(m, 9),
                             "predicted_s": round(p, 9), "ratio": round(m / p, 4)})  # fmt: skip
            factor[dt] = round(composition_factor(meas, pred), 4)
    return {
        "threads": int(threads),
        "clock": clock,
        "model": {k: int(getattr(cfg, k)) for k in ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab")},
        "factor": factor,
        "rows": rows,
    }


def describe_composition(section: dict[str, Any]) -> str:
    """One line for the calibration's output."""
    parts = ", ".join(f"{dt} x{f:.3f}" for dt, f in sorted(section["factor"].items()))
    ratios = [float(r["ratio"]) for r in section["rows"]]
    return (f"step composition ({section['threads']} thread(s), synthetic 1-layer step of hidden {section['model']['hidden']}): "
            f"measured / predicted {parts} (cells x{min(ratios):.2f}-x{max(ratios):.2f})")  # fmt: skip
