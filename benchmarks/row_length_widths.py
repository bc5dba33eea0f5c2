"""Does the row-length grid need two output widths per row length? An A/B on one run's timings.

    python benchmarks/row_length_widths.py PROFILE [--dtype fp32] [--rows 1,2,3,8]

Times the CPU suite's row-length grid (few-row GEMMs at every k of ROW_LENGTH_GRID, each (rows, k)
at a narrow and a wide n) at ``--rows`` on this machine, then test GEMMs whose k is off the grid
(``--test-k`` x ``--test-rows`` x ``--test-n``, each timed twice), all with the profile's thread
count and clock. Refits the profile's samples with its own grid rows of ``--dtype`` replaced by the
fresh grid's narrow widths, its wide widths, or both, and prints per fit the median and p90
|error| on the test GEMMs and the signed mean error per row count. Every fit sees the same fresh
timings, so the fits differ only in which grid samples they were given (docs/fidelity.md, 11:15-11:25
UTC). About 15 s of fp32 grid GEMMs and 20 s of test GEMMs on the CI VM.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _ints(text: str, what: str) -> tuple[int, ...]:
    from simkit.errors import SimkitError

    try:
        vals = tuple(int(x) for x in text.split(","))
    except ValueError:
        vals = ()
    if not vals or min(vals) < 1:
        raise SimkitError(f"{what}: expected comma-separated positive integers, got {text!r}")
    return vals


def main(argv: list[str] | None = None) -> int:
    from simkit.errors import SimkitError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", help="a CPU profile folder (with its samples.csv)")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--rows", default="1,2,3,8", help="grid row counts (each at most 16)")
    ap.add_argument("--test-rows", default="1,2,3,5,8,12")
    ap.add_argument("--test-k", default="896,1280,3584", help="row lengths of the test GEMMs")
    ap.add_argument("--test-n", default="1280,1792,7168,16000", help="output widths of the test GEMMs")
    a = ap.parse_args(argv)
    try:
        rows = _ints(a.rows, "--rows")
        if max(rows) > 16:
            raise SimkitError(f"--rows: the grid is for few-row GEMMs (at most 16 rows), got {a.rows!r}")
        tests = [("test", m, k, n) for m in _ints(a.test_rows, "--test-rows") for k in _ints(a.test_k, "--test-k")
                 for n in _ints(a.test_n, "--test-n")]  # fmt: skip
        for label, err, by_m, by_k in run(Path(a.profile), a.dtype, rows, tests):
            per = " ".join(f"{m} row(s) {100 * e:+.1f}%" for m, e in by_m)
            per_k = " ".join(f"k={k} {100 * e:+.1f}%" for k, e in by_k)
            print(f"{label}: test GEMMs median {100 * err[0]:.1f}%, p90 {100 * err[1]:.1f}% | signed mean: {per} | {per_k}")
    except (SimkitError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run(path: Path, dtype: str, rows: tuple[int, ...],
        tests: list[tuple[str, int, int, int]],
        ) -> list[tuple[str, tuple[float, float], list[tuple[int, float]], list[tuple[int, float]]]]:  # fmt: skip
    """(fit label, (median, p90) |error| on ``tests``, [(rows, signed mean error)], [(k, signed mean
    error)]) per fit."""
    import pandas as pd

    from simkit.calibrate import bench as B
    from simkit.calibrate.fit import fit_profile
    from simkit.calibrate.probe import speed_probe
    from simkit.calibrate.validate import load_profile
    from simkit.errors import CalibrationError

    prof = load_profile(path)
    s = prof.samples
    if prof.device.get("kind") != "cpu" or s is None or not len(s):
        raise CalibrationError("needs a CPU profile with its samples", where=str(path))
    torch = B.require_torch()
    threads = int(prof.device.get("threads") or 1)
    clock = str(prof.device.get("clock") or "wall")
    eb = 2 if dtype == "bf16" else 4
    size = dataclasses.replace(B.SIZES["quick"], row_length_rows=rows)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        timer = B.Timer("cpu", min_rep_s=size.min_rep_s, budget_s=size.budget_s, min_reps=size.min_reps,
                        max_reps=size.max_reps, clock=clock)  # fmt: skip
        b = B.Bench(torch, "cpu", size, timer, "benchmarks/row_length_widths.py", random.Random(0))
        b.cold_bytes = 2.0 * float(prof.device.get("llc_bytes") or 32e6)
        sc = s[s["op"].astype(str) == "stream_copy"]
        if len(sc):
            b.mem_bw = float((sc.bytes_moved / sc.time_s)[sc["bytes"].idxmax()])
        own = s[(s["op_class"] == "gemm") & (s["dtype"] == dtype)]
        have = {(int(r.m), int(r.k), int(r.n)) for r in own[own["op"].astype(str) != "row_length"].itertuples()}
        cfg = b.row_length_configs(b.probe_rate(dtype), eb, have)
        b.time_gemms(cfg, dtype, eb)
        meas: dict[tuple[int, int, int], list[float]] = {}
        for _ in range(2):
            for r in speed_probe(prof, threads=threads, clock=clock, dtypes=[dtype], shapes=tests).rows:
                meas.setdefault((r.m, r.k, r.n), []).append(r.measured_s)
    finally:
        torch.set_num_threads(before)
    fresh = pd.DataFrame(b.rows).reindex(columns=s.columns)
    narrow = fresh["n"].isin(B.ROW_LENGTH_NARROW).to_numpy()
    base = s[~((s["op"].astype(str) == "row_length") & (s["dtype"] == dtype))]
    fits = [("profile as measured", prof)]
    for label, part in (("grid narrow widths only", fresh[narrow]), ("grid wide widths only", fresh[~narrow]),
                        ("grid both widths", fresh)):  # fmt: skip
        data = pd.concat([base, part], ignore_index=True)
        fits.append((f"{label} ({len(part)} GEMMs)", fit_profile(data, prof.device, name=f"{prof.name}-ab", source=prof.source,
                                                                 license=prof.license)))  # fmt: skip
    out = []
    for label, p in fits:
        errs: dict[int, list[float]] = {}
        errs_k: dict[int, list[float]] = {}
        for (m, k, n), ts in meas.items():
            o = B.gemm_op("test", m, k, n, dtype)
            e = float(p.predict_time("gemm", o.flops, o.bytes, o.shape, dtype)[0]) / float(np.median(ts)) - 1.0
            errs.setdefault(m, []).append(e)
            errs_k.setdefault(k, []).append(e)
        ae = np.abs(np.concatenate([np.asarray(v) for v in errs.values()]))
        out.append((label, (float(np.median(ae)), float(np.percentile(ae, 90))),
                    [(m, float(np.mean(v))) for m, v in sorted(errs.items())],
                    [(k, float(np.mean(v))) for k, v in sorted(errs_k.items())]))  # fmt: skip
    return out


if __name__ == "__main__":
    sys.exit(main())
