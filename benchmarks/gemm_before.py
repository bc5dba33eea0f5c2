"""Re-measure a CPU profile's few-row GEMM samples in a loop of themselves and after their decode-layer predecessor.

    python benchmarks/gemm_before.py PROFILE --out-loop DIR --out-layer DIR

For each dtype of PROFILE (a `simkit calibrate --device cpu` folder), times the profile's GEMM
configurations with at most FEW_ROWS rows twice, back to back (the order alternating per dtype),
with the suite's timer: each call in a loop of itself (what the suite did until 2026-11-30 17:00)
and each call right after the operator that precedes the projection in a decode layer
(``Bench.gemm_predecessor``, what it does since). Writes two profiles, PROFILE's other samples
plus each set of few-row GEMM samples, refitted, so that `benchmarks/repredict_validation.py
RESULT.json DIR_LOOP DIR_LAYER` scores the two timings on the same validation measurements and the
same other samples (docs/fidelity.md, CPU validation). Uses PROFILE's thread count and clock.
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
    import pandas as pd

    from simkit.calibrate import bench
    from simkit.calibrate.retime import open_cpu_profile, write_refit
    from simkit.calibrate.validate import load_profile
    from simkit.cost.profile import FEW_ROWS
    from simkit.errors import SimkitError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", help="a CPU profile folder")
    ap.add_argument("--out-loop", required=True, help="write the profile with few-row GEMMs timed in a loop of themselves here")
    ap.add_argument("--out-layer", required=True, help="write the profile with few-row GEMMs timed after their layer predecessor here")
    a = ap.parse_args(argv)
    try:
        r = open_cpu_profile(load_profile(a.profile), a.profile, [a.out_loop, a.out_layer], "--out-loop/--out-layer")
        prof, dev = r.prof, r.dev
        s = prof.samples
        if s is None or not len(s):
            raise SimkitError(f"{a.profile}: the profile has no samples.csv to re-measure")
        few = (s["op_class"].astype(str) == "gemm") & (pd.to_numeric(s["m"], errors="coerce") <= FEW_ROWS)
        rows: dict[str, list[dict[str, Any]]] = {"loop": [], "layer": []}
        dtypes = [d for d in prof.dtypes() if d in ("fp32", "bf16")]
        for i, dt in enumerate(dtypes):
            sel = s[few & (s["dtype"].astype(str) == dt)]
            chosen = [(int(x.m), str(x.op), int(x.k), int(x.n), 0.0) for x in sel.itertuples()]
            eb = 2 if dt == "bf16" else 4
            for how in (["layer", "loop"] if i % 2 == 0 else ["loop", "layer"]):
                b = bench.Bench(r.torch, "cpu", r.size, r.timer, prof.source, random.Random(0))
                b.cold_bytes = 2.0 * r.llc
                if how == "loop":
                    b.gemm_predecessor = lambda op, m, k, n, dtype: None  # type: ignore[method-assign]
                n = b.time_gemms(chosen, dt, eb)
                rows[how].extend(b.rows)
                print(f"{dt}: {n} few-row GEMMs timed {'in a loop' if how == 'loop' else 'after their layer predecessor'}",
                      file=sys.stderr, flush=True)  # fmt: skip
        for how, out in (("loop", a.out_loop), ("layer", a.out_layer)):
            facts = {k: v for k, v in dev.items() if k != "gemm_timing"}
            if how == "layer":
                facts["gemm_timing"] = bench.GEMM_TIMING
            write_refit(r, s[~few], rows[how], out, facts, f"few-row GEMMs re-timed ({how})")
            print(f"wrote {out}", file=sys.stderr)
    except SimkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
