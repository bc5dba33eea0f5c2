"""Every operator of real CPU decode (or prefill) steps, timed inside the step, against profiles' predictions.

    python benchmarks/step_operators.py PROFILE [PROFILE ...] --hidden 896 --heads 14 --kv-heads 2 \\
        --ffn 4864 --vocab 12000 --layers 4 --cells 2/64,5/400,8/64 --dtype bf16 [--phase prefill]

Runs the decode steps of `simkit validate`'s model (the same ``TorchLlama.forward``, the same
kernels) for each batch/context cell, with every kernel call timed in place (thread CPU time at
one thread, wall clock with ``--threads`` above 1; the timer adds about a microsecond per call),
and prints per operator the time per step
measured inside the step and each profile's prediction for it (``predict_step``, the validation's
prediction). Where `simkit validate` says a step is off, this says which operators are: an
operator timed alone in a loop of itself can run several times faster than inside a step
(docs/fidelity.md, CPU validation). All profiles are scored on the same steps.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ELEMENTWISE = ("embedding", "input_norm", "rope", "residual_add", "post_attn_norm", "mlp_act", "final_norm", "sampling")
"""The elementwise operators of a Llama decode step (``simkit.cost.ops`` names)."""

LINEAR_ORDER = ("qkv_proj", "o_proj", "mlp_up", "mlp_down")
NORM_ORDER = ("input_norm", "post_attn_norm")


class StepTap:
    """Times each kernel call of a forward pass under the name ``simkit.cost.ops`` gives the
    operator: F.linear calls are the layer's QKV, O, MLP up and down projections in that order,
    then the LM head; RMSNorm calls the layer's input and post-attention norms, then the final one."""

    def __init__(self, layers: int, now: Callable[[], float] = time.thread_time) -> None:
        self.layers = layers
        self.now = now
        self.times: dict[str, float] = {}
        self.linear_calls = 0
        self.norm_calls = 0

    def start_step(self) -> None:
        self.linear_calls = self.norm_calls = 0

    def linear_name(self) -> str:
        i = self.linear_calls
        self.linear_calls += 1
        return LINEAR_ORDER[i % 4] if i < 4 * self.layers else "lm_head"

    def norm_name(self) -> str:
        i = self.norm_calls
        self.norm_calls += 1
        return NORM_ORDER[i % 2] if i < 2 * self.layers else "final_norm"

    def timed(self, name: str | Callable[[], str], fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*a: Any, **kw: Any) -> Any:
            key = name() if callable(name) else name
            t0 = self.now()
            out = fn(*a, **kw)
            self.times[key] = self.times.get(key, 0.0) + self.now() - t0
            return out

        return call


def _cells(text: str) -> list[tuple[int, int]]:
    from simkit.errors import SimkitError

    out = []
    for part in text.split(","):
        b, _, c = part.strip().partition("/")
        if not (b.isdigit() and c.isdigit() and int(b) >= 1 and int(c) >= 1):
            raise SimkitError(f"--cells: expected comma-separated BATCH/CONTEXT pairs of positive integers, got {text!r}")
        out.append((int(b), int(c)))
    return out


def main(argv: list[str] | None = None) -> int:
    from simkit.calibrate import bench
    from simkit.calibrate.validate import (
        TorchLlama,
        ValidationConfig,
        compute_device,
        load_profile,
        model_spec,
        predict_step,
        step_batch,
    )
    from simkit.errors import SimkitError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profiles", nargs="+", help="CPU profile folders (measured at --threads threads)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--kv-heads", type=int, required=True)
    ap.add_argument("--ffn", type=int, required=True)
    ap.add_argument("--vocab", type=int, default=12000)
    ap.add_argument("--cells", default="2/64,8/400", help="BATCH/CONTEXT cells, comma-separated")
    ap.add_argument("--phase", choices=["decode", "prefill"], default="decode",
                    help="decode: one new token per sequence over CONTEXT cached ones; prefill: CONTEXT tokens per sequence from an empty cache")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds of steps per cell (at least 5 steps)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; above 1 every time is wall-clock (a kernel's threads run on other cores)")
    a = ap.parse_args(argv)
    try:
        cells = _cells(a.cells)
        if min(a.layers, a.hidden, a.heads, a.kv_heads, a.ffn, a.vocab) < 1:
            raise SimkitError("--layers, --hidden, --heads, --kv-heads, --ffn and --vocab must be >= 1")
        if a.heads % a.kv_heads or a.hidden % a.heads or (a.hidden // a.heads) % 2:
            raise SimkitError(f"--hidden {a.hidden} must be --heads {a.heads} x an even head size, and --heads a multiple of --kv-heads {a.kv_heads}")
        profs = [load_profile(p) for p in a.profiles]
        torch = bench.require_torch()
        if a.threads < 1:
            raise SimkitError(f"--threads must be >= 1 (got {a.threads})")
        bench.set_threads(a.threads)
        now = time.thread_time if a.threads == 1 else time.perf_counter
        bench.tune_allocator()
        cfg = ValidationConfig(layers=a.layers, hidden=a.hidden, heads=a.heads, kv_heads=a.kv_heads, ffn=a.ffn, vocab=a.vocab)
        model = TorchLlama(cfg, a.dtype, max(c for _, c in cells) + 1)
        spec = model_spec(cfg)
        tap = StepTap(a.layers, now=now)
        F = torch.nn.functional
        model.torch = types.SimpleNamespace(nn=types.SimpleNamespace(functional=types.SimpleNamespace(linear=tap.timed(tap.linear_name, F.linear))))
        kernels = {"k_embedding": "embedding", "k_rope": "rope", "k_attention": f"attn_{a.phase}", "k_add": "residual_add",
                   "k_silu_mul": "mlp_act", "k_sampling": "sampling"}  # fmt: skip
        saved = {k: getattr(bench, k) for k in (*kernels, "k_rmsnorm")}
        print(f"{a.dtype} {a.phase} steps, layers {a.layers} hidden {a.hidden} heads {a.heads}/{a.kv_heads} ffn {a.ffn} vocab {a.vocab}; "
              f"ms per step, {'thread CPU time' if a.threads == 1 else f'{a.threads} threads, wall clock'}; "
              f"predictions: {', '.join(p.name for p in profs)}")  # fmt: skip
        try:
            for k, name in kernels.items():
                setattr(bench, k, tap.timed(name, saved[k]))
            bench.k_rmsnorm = tap.timed(tap.norm_name, saved["k_rmsnorm"])  # type: ignore[assignment]
            with torch.inference_mode():
                for b, c in cells:
                    cache = model.make_cache(b)
                    prefill = a.phase == "prefill"
                    ids = torch.randint(0, a.vocab, (b, c if prefill else 1))
                    pos = 0 if prefill else c
                    for _ in range(2):
                        tap.start_step()
                        model.forward(ids, pos, cache)
                    tap.times = {}
                    steps: list[float] = []
                    t_end = time.perf_counter() + a.seconds
                    while time.perf_counter() < t_end or len(steps) < 5:
                        tap.start_step()
                        s0 = now()
                        model.forward(ids, pos, cache)
                        steps.append(now() - s0)
                    q, ctx = step_batch(a.phase, b, c)
                    preds = [predict_step(spec, q, ctx, compute_device(p), p, a.dtype) for p in profs]
                    _report(a.phase, b, c, steps, tap.times, preds)
        finally:
            for k, fn in saved.items():
                setattr(bench, k, fn)
    except SimkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _report(phase: str, b: int, c: int, steps: list[float], times: dict[str, float], preds: list[tuple[float, list[Any]]]) -> None:
    n = len(steps)
    mean = sum(steps) / n
    per_op = []
    for _, ops in preds:
        d: dict[str, float] = {}
        for t in ops:
            d[t.op.name] = d.get(t.op.name, 0.0) + t.time_s * t.op.count
        per_op.append(d)

    def cols(key: Callable[[dict[str, float]], float], meas: float) -> str:
        return " | ".join(f"{1e3 * key(d):8.3f} ({100 * (key(d) / meas - 1):+4.0f}%)" for d in per_op)

    print(f"{phase} b={b} ctx={c}: {n} steps, mean {1e3 * mean:.2f} ms; predicted "
          + ", ".join(f"{1e3 * tot:.2f} ({100 * (tot / mean - 1):+.1f}%)" for tot, _ in preds))  # fmt: skip
    for name, t in sorted(times.items(), key=lambda kv: -kv[1]):
        print(f"  {name:15s} {1e3 * t / n:8.3f} | {cols(lambda d, name=name: d.get(name, float('nan')), t / n)}")
    ew = sum(times.get(k, 0.0) for k in ELEMENTWISE) / n
    share = " | ".join(f"{100 * (sum(d.get(k, 0.0) for k in ELEMENTWISE) - ew) / mean:+.1f}% of the step" for d in per_op)
    print(f"  {'elementwise':15s} {1e3 * ew:8.3f} | {cols(lambda d: sum(d.get(k, 0.0) for k in ELEMENTWISE), ew)}  ({share})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
