"""Re-measure a CPU profile's elementwise samples after their predecessor GEMM and after a read stream.

    python benchmarks/elementwise_before.py PROFILE --out-gemm DIR --out-stream DIR

For each dtype of PROFILE (a `simkit calibrate --device cpu` folder), runs the suite's elementwise
benchmarks twice, back to back, with the same configurations: each call right after the GEMM that
precedes the operator in a decode layer (``Bench.predecessor``, what the suite does since
2026-11-30 14:30) and each call right after summing one last-level cache of data (what it did
before). Writes two profiles, PROFILE's other samples plus each set of elementwise samples,
refitted, so that `benchmarks/repredict_validation.py RESULT.json DIR_GEMM DIR_STREAM` scores the
two ways of timing on the same validation measurements and the same GEMM and attention samples
(docs/fidelity.md, CPU validation). Uses PROFILE's thread count and clock.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from simkit.calibrate import bench
    from simkit.calibrate.retime import open_cpu_profile, write_refit
    from simkit.calibrate.validate import load_profile
    from simkit.errors import SimkitError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", help="a CPU profile folder")
    ap.add_argument("--out-gemm", required=True, help="write the profile with elementwise samples timed after their predecessor GEMM here")
    ap.add_argument("--out-stream", required=True, help="write the profile with elementwise samples timed after a read stream here")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        r = open_cpu_profile(load_profile(a.profile), a.profile, [a.out_gemm, a.out_stream], "--out-gemm/--out-stream")
        prof = r.prof
        stream = r.torch.ones(int(r.llc) // 4, dtype=r.torch.float32)
        rows: dict[str, list[dict[str, Any]]] = {"gemm": [], "stream": []}
        dtypes = [d for d in prof.dtypes() if d in ("fp32", "bf16")]
        for i, dt in enumerate(dtypes):
            order = ["gemm", "stream"] if i % 2 == 0 else ["stream", "gemm"]
            for how in order:
                b = bench.Bench(r.torch, "cpu", r.size, r.timer, prof.source, random.Random(a.seed))
                b.cold_bytes = 2.0 * r.llc
                if how == "stream":
                    b.predecessor = lambda op, dims, dtype: stream.sum  # type: ignore[method-assign]
                n = b.elementwise(dt)
                rows[how].extend(b.rows)
                print(f"{dt}: {n} elementwise configurations after {'their predecessor GEMM' if how == 'gemm' else 'a read stream'}",
                      file=sys.stderr, flush=True)  # fmt: skip
        s = prof.samples
        rest = s[s["op_class"].astype(str) != "elementwise"]
        for how, out in (("gemm", a.out_gemm), ("stream", a.out_stream)):
            write_refit(r, rest, rows[how], out, r.dev, f"elementwise re-timed after {how}")
            print(f"wrote {out}", file=sys.stderr)
    except SimkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
