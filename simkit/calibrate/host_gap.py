"""The host time per iteration of a synchronous decode loop (the profile's ``host_overhead``).

A serving engine that runs one iteration at a time (prepare inputs on the host, launch the
step, wait for the sampled tokens, hand them back to Python, repeat) leaves the device idle while
the host works. :func:`measure_host_gap` runs the smallest such loop in torch, per batch size:

* host, before the step: the batch's last token ids and positions, Python lists, become tensors
  on the device (what an engine's input preparation ends with);
* the step: embedding gather, one hidden x hidden projection, the LM head, greedy sampling
  (``argmax``), timed on the device (CUDA events around these kernels on a GPU; the wall clock
  around them on a CPU, where they run on the host itself);
* host, after the step: the sampled ids back as a Python list (the device-to-host copy that
  waits for the step), appended to each sequence's output, positions advanced.

Per iteration ``gap = wall - device``: what a roofline of the device alone misses for this loop.
:func:`fit_host_overhead` fits ``gap = per_iteration_s + per_sequence_s x batch`` to the per-batch
medians (6 significant digits). On a GPU (``simkit calibrate --device cuda``) the result is written to the profile's
``host_overhead`` with ``source: measured``. It is a **lower bound** for a real engine: this loop
has no scheduler, no block tables, no detokeniser and no HTTP layer; an engine's own overhead
(vLLM's, SGLang's) is measured by timing the engine (docs/calibration.md). On a CPU the same loop
measures only the input preparation and output handling around torch ops of a minimal loop
(``python -m simkit.calibrate.host_gap --device cpu``), which is not a serving engine's overhead
and is never written to a CPU profile.

torch is imported lazily (``pip install simkit[calibrate]``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from simkit.calibrate.samples import require_torch
from simkit.cost.profile import sig
from simkit.errors import CalibrationError, SimkitError
from simkit.specs.calibration import HostOverhead
from simkit.units import comma_items

HOST_GAP_BATCHES = (1, 2, 4, 8, 16, 32, 64)
HOST_GAP_ITERATIONS = 40
HOST_GAP_WARMUP = 5
HOST_GAP_HIDDEN = 1024
HOST_GAP_VOCAB = 32000
"""The loop's model: small, so that the device step is short and the gap is what is left."""


class _WallSpan:
    """Device time of work that runs on the host (a CPU): the wall clock around it."""

    def __init__(self) -> None:
        self._t0 = self._t1 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        self._t1 = time.perf_counter()

    def seconds(self) -> float:
        return self._t1 - self._t0


class CudaSpan:
    """Device time of the kernels launched between start() and stop(): two CUDA events on the
    current stream; seconds() waits for the end event."""

    def __init__(self, torch: Any) -> None:
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        self._start.record()

    def stop(self) -> None:
        self._end.record()

    def seconds(self) -> float:
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end)) * 1e-3


def device_span(torch: Any, device: str) -> Any:
    """The span timer of ``device`` (``"cuda"``: CUDA events; ``"cpu"``: the wall clock)."""
    return CudaSpan(torch) if device == "cuda" else _WallSpan()


def measure_host_gap(
    torch: Any,
    device: str,
    batch_sizes: Sequence[int] = HOST_GAP_BATCHES,
    iterations: int = HOST_GAP_ITERATIONS,
    hidden: int = HOST_GAP_HIDDEN,
    vocab: int = HOST_GAP_VOCAB,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per batch size, the median wall, device and gap seconds per iteration of the loop in the
    module doc (``iterations`` timed after HOST_GAP_WARMUP untimed ones)."""
    if device not in ("cpu", "cuda"):
        raise CalibrationError(f"unknown device {device!r} (expected cpu or cuda)")
    if iterations < 1 or hidden < 1 or vocab < 2 or not batch_sizes or min(batch_sizes) < 1:
        raise CalibrationError(
            f"host gap: expected iterations >= 1, hidden >= 1, vocab >= 2 and batch sizes >= 1, got iterations {iterations}, "
            f"hidden {hidden}, vocab {vocab}, batch sizes {list(batch_sizes)}"
        )
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float16 if device == "cuda" else torch.float32
    emb = (torch.randn(vocab, hidden, generator=gen) * 0.02).to(device=device, dtype=dt)
    w = (torch.randn(hidden, hidden, generator=gen) * 0.02).to(device=device, dtype=dt)
    head = (torch.randn(vocab, hidden, generator=gen) * 0.02).to(device=device, dtype=dt)
    span = device_span(torch, device)
    rows = []
    for batch in batch_sizes:
        last = [int(t) for t in torch.randint(0, vocab, (batch,), generator=gen)]
        positions = [16] * batch
        outputs: list[list[int]] = [[] for _ in range(batch)]
        wall, dev = [], []
        for it in range(HOST_GAP_WARMUP + iterations):
            t0 = time.perf_counter()
            ids = torch.tensor(last, dtype=torch.int64).to(device)
            pos = torch.tensor(positions, dtype=torch.int64).to(device)
            span.start()
            x = torch.nn.functional.embedding(ids, emb) * (1.0 + (pos[:, None] % 2).to(dt))
            x = torch.nn.functional.linear(x, w)
            nxt = torch.argmax(torch.nn.functional.linear(x, head), dim=-1)
            span.stop()
            last = nxt.tolist()
            for i, tok in enumerate(last):
                outputs[i].append(tok)
                positions[i] += 1
            t1 = time.perf_counter()
            if it >= HOST_GAP_WARMUP:
                wall.append(t1 - t0)
                dev.append(span.seconds())
        gaps = [a - b for a, b in zip(wall, dev)]
        rows.append({"batch": int(batch), "wall_s": statistics.median(wall), "device_s": statistics.median(dev),
                     "gap_s": statistics.median(gaps), "iterations": int(iterations)})  # fmt: skip
    return rows


def fit_host_overhead(rows: Sequence[dict[str, Any]], source: str) -> HostOverhead:
    """``gap_s = per_iteration_s + per_sequence_s x batch`` by least squares over the rows of
    :func:`measure_host_gap`, both terms >= 0 (a negative one is set to 0 and the other refitted)."""
    if not rows:
        raise CalibrationError("host gap: no measurements to fit")
    b = np.array([float(r["batch"]) for r in rows])
    g = np.array([max(float(r["gap_s"]), 0.0) for r in rows])
    if len(set(b.tolist())) < 2:
        a, s = float(np.mean(g)), 0.0
    else:
        (a, s), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(b), b]), g, rcond=None)
        a, s = float(a), float(s)
        if s < 0:
            a, s = float(np.mean(g)), 0.0
        elif a < 0:
            a, s = 0.0, float(np.dot(g, b) / np.dot(b, b))
    return HostOverhead(sig(a), sig(s), source)  # what profile.yaml stores exactly


def measured_source(device_name: str, torch_version: str, rows: Sequence[dict[str, Any]]) -> str:
    """The ``source`` line of a measured ``host_overhead``."""
    bs = ", ".join(str(r["batch"]) for r in rows)
    return (
        f"measured by simkit calibrate on {device_name} (torch {torch_version}): host gap per iteration of a minimal "
        f"synchronous decode loop (wall minus CUDA-event time; batch {bs}; simkit.calibrate.host_gap). A lower bound "
        "for a real engine (no scheduler, detokeniser or server): time the engine for its own value"
    )


def describe(rows: Sequence[dict[str, Any]], host: HostOverhead) -> str:
    """One line per batch and the fit, for progress output and the CLI."""
    lines = [f"batch {r['batch']:>3}: wall {1e6 * r['wall_s']:8.1f} us, device {1e6 * r['device_s']:8.1f} us, "
             f"gap {1e6 * r['gap_s']:8.1f} us" for r in rows]  # fmt: skip
    lines.append(f"fit: {1e6 * host.per_iteration_s:.1f} us per iteration + {1e6 * host.per_sequence_s:.2f} us per sequence")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m simkit.calibrate.host_gap",
        description="Host gap per iteration of a minimal synchronous torch decode loop (see the module doc; on a CPU "
        "only the loop's input preparation and output handling, not a serving engine's overhead).",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--iterations", type=int, default=HOST_GAP_ITERATIONS)
    p.add_argument("--hidden", type=int, default=HOST_GAP_HIDDEN, help="the loop model's hidden size")
    p.add_argument("--vocab", type=int, default=HOST_GAP_VOCAB, help="the loop model's vocabulary (LM head rows)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on a CPU (default 1: on a shared machine, "
                   "threads waiting for a core would time the machine's load)")
    p.add_argument("--batch-sizes", default=",".join(map(str, HOST_GAP_BATCHES)), help="comma-separated, e.g. 1,8,64")
    args = p.parse_args(argv)
    try:
        batches = [int(x) for x in comma_items(args.batch_sizes)]
    except ValueError:
        p.error(f"--batch-sizes: expected comma-separated integers, got {args.batch_sizes!r}")
    try:
        torch = require_torch()
        if args.device == "cuda" and not torch.cuda.is_available():
            raise CalibrationError("--device cuda but torch sees no CUDA GPU (torch.cuda.is_available() is False)")
        if args.threads < 1:
            raise CalibrationError(f"--threads: expected >= 1, got {args.threads}")
        if args.device == "cpu":
            torch.set_num_threads(args.threads)
        rows = measure_host_gap(torch, args.device, batches, args.iterations, args.hidden, args.vocab)
    except SimkitError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    print(describe(rows, fit_host_overhead(rows, "this run")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
