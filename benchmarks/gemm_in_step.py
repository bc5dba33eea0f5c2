"""A model's projections timed alone and after the work that precedes them in a decode step, back to back.

    python benchmarks/gemm_in_step.py --hidden 896 --heads 14 --kv-heads 2 --ffn 4864 --rows 1,3,8 --dtype bf16
    python benchmarks/gemm_in_step.py ... --profile calibration/profiles/ci-vm-cpu   # and the profile's prediction

For each projection (QKV, O, MLP up, MLP down) of the given dimensions and each row count, on one
CPU thread with thread CPU time (other processes' load does not count), weights cold (cycled over
copies larger than twice the last-level cache, as the calibration suite times them):

- ``loop``: timed in a loop of itself (what the calibration suite measures);
- ``after LLC``: one last-level cache of data streamed, untimed, before every call (what the suite
  does before elementwise operators);
- ``after attn+norm``: a decode-attention call (the given heads, context ``--context``) and an
  RMSNorm before every call, untimed (what precedes the O projection in a step);
- ``loop again``: the loop once more (the machine's drift over the row).

Prints the loop time and the three others as ratios to it (and, with ``--profile``, the profile's
prediction as a ratio to the loop time). docs/fidelity.md ("small projections in the step") has
the numbers of 2026-11-30 and why the suite does not time GEMMs after an LLC stream.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def projections(hidden: int, heads: int, kv_heads: int, ffn: int) -> list[tuple[str, int, int]]:
    """(name, k, n) of the four projections of a Llama-style layer (gated MLP)."""
    d = hidden // heads
    return [("qkv_proj", hidden, (heads + 2 * kv_heads) * d), ("o_proj", heads * d, hidden),
            ("mlp_up", hidden, 2 * ffn), ("mlp_down", ffn, hidden)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from simkit.calibrate import bench
    from simkit.errors import SimkitError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, required=True)
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--kv-heads", type=int, required=True)
    ap.add_argument("--ffn", type=int, required=True)
    ap.add_argument("--rows", default="1,3,8", help="comma-separated row counts (decode batch sizes)")
    ap.add_argument("--context", type=int, default=300, help="context of the decode attention run before each call")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--profile", default=None, help="also print this profile's prediction")
    ap.add_argument("--budget", type=float, default=0.2, help="seconds of timed calls per measurement")
    a = ap.parse_args(argv)
    try:
        if a.hidden % a.heads or a.heads % a.kv_heads:
            raise SimkitError(f"--hidden {a.hidden} must be a multiple of --heads {a.heads}, and --heads of --kv-heads {a.kv_heads}")
        rows = [int(r) for r in a.rows.split(",") if r.strip()]
        if not rows or min(rows) < 1:
            raise SimkitError(f"--rows must be positive integers (got {a.rows!r})")
        torch = bench.require_torch()
        bench.set_threads(1)
        bench.tune_allocator()
        prof = None
        if a.profile:
            from simkit.calibrate.validate import load_profile

            prof = load_profile(a.profile)
        facts = bench.cpu_facts()
        cold = 2.0 * float(facts.get("llc_bytes") or 32e6)
        timer = bench.Timer("cpu", clock="cpu", budget_s=a.budget, min_reps=7, max_reps=25, min_rep_s=2e-3)
        stream = torch.ones(int(cold / 2) // 4, dtype=torch.float32)
        d = a.hidden // a.heads
        eb = 2 if a.dtype == "bf16" else 4
        print(f"{a.dtype}, 1 thread, thread CPU time; weights cycled over {cold / 2**20:.0f} MiB; ratios to the loop time")
        for m in rows:
            q = bench.rand((m, 1, a.heads, d), a.dtype, "cpu")
            k = bench.rand((m, 1, a.kv_heads, d), a.dtype, "cpu")
            v = bench.rand((m, 1, a.kv_heads, d), a.dtype, "cpu")
            caches = [(bench.rand((m, a.kv_heads, a.context + 1, d), a.dtype, "cpu"),
                       bench.rand((m, a.kv_heads, a.context + 1, d), a.dtype, "cpu")) for _ in range(4)]  # fmt: skip
            cycle = itertools.cycle(caches)
            x = bench.rand((m, a.hidden), a.dtype, "cpu")
            w_norm = bench.rand((a.hidden,), a.dtype, "cpu")

            def attn_norm(q: Any = q, k: Any = k, v: Any = v, cycle: Any = cycle, x: Any = x, w_norm: Any = w_norm) -> Any:
                kc, vc = next(cycle)
                bench.k_attention(q, k, v, kc, vc, a.context)
                return bench.k_rmsnorm(x, w_norm)

            for name, kk, n in projections(a.hidden, a.heads, a.kv_heads, a.ffn):
                act = bench.rand((m, kk), a.dtype, "cpu")
                copies = int(min(64, max(1, -(-cold // (kk * n * eb)))))
                weights = itertools.cycle([bench.rand((n, kk), a.dtype, "cpu") for _ in range(copies)])

                def call(act: Any = act, weights: Any = weights) -> Any:
                    return torch.nn.functional.linear(act, next(weights))

                with torch.inference_mode():
                    loop = timer.measure(call).median
                    after_llc = timer.measure(call, before=stream.sum).median
                    after_attn = timer.measure(call, before=attn_norm).median
                    again = timer.measure(call).median
                line = (f"{name:9s} rows {m:3d} k {kk:5d} n {n:5d}: loop {1e6 * loop:8.1f} us | after LLC x{after_llc / loop:.2f}"
                        f" | after attn+norm x{after_attn / loop:.2f} | loop again x{again / loop:.2f}")  # fmt: skip
                if prof is not None:
                    pred = float(prof.predict_time("gemm", *_gemm(name, m, kk, n, a.dtype), a.dtype)[0])
                    line += f" | profile x{pred / loop:.2f}"
                print(line, flush=True)
    except SimkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _gemm(name: str, m: int, k: int, n: int, dtype: str) -> tuple[Any, Any, dict[str, Any]]:
    import numpy as np

    from simkit.calibrate.bench import gemm_op

    o = gemm_op(name, m, k, n, dtype)
    return np.array([o.flops]), np.array([o.bytes]), {key: np.array([v]) for key, v in o.shape.items()}


if __name__ == "__main__":
    sys.exit(main())
