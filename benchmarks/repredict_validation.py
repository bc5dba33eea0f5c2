"""Score the steps one `simkit validate --json` run measured against other profiles.

    python benchmarks/repredict_validation.py RESULT.json PROFILE [PROFILE ...]
    python benchmarks/repredict_validation.py RESULT.json PROFILE --drop-op row_length
    python benchmarks/repredict_validation.py RESULT.json PROFILE --shared-attn-base
    python benchmarks/repredict_validation.py RESULT.json PROFILE --without-composition

Each PROFILE is a profile folder. ``--drop-op OP`` also refits each profile's own samples without
the sample rows of operator OP (e.g. ``row_length``, the CPU suite's few-row GEMMs over a grid of
row lengths) and scores that fit too, which isolates what those samples change from the machine's
drift between runs (docs/fidelity.md, CPU validation). ``--shared-attn-base`` also refits each
profile's own samples with one roofline base for every dtype of the attention classes (as profiles
were fitted before 2026-11-30; simkit.calibrate.fit.BASE_PER_DTYPE_CLASSES) and scores that fit:
what the per-dtype attention bases change on the same measurements. ``--without-composition`` also
scores each profile that carries a step composition (``device.step_composition``,
simkit.calibrate.composition) without it: the same fit pricing operators as timed alone, i.e.
what the composition changes on the same measured steps. Prints one line per profile:
median and p90 absolute error and the signed error per configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from simkit.calibrate import fit
    from simkit.calibrate.fit import fit_profile
    from simkit.calibrate.validate import load_profile, repredict
    from simkit.errors import SimkitError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", help="a `simkit validate --json` file")
    ap.add_argument("profiles", nargs="+", help="profile folders")
    ap.add_argument("--drop-op", default=None, help="also refit each profile without the samples of this operator")
    ap.add_argument("--without-composition", action="store_true",
                    help="also score each profile without its measured step composition")
    ap.add_argument("--shared-attn-base", action="store_true",
                    help="also refit each profile with one attention roofline base for all dtypes")
    a = ap.parse_args(argv)
    try:
        result = json.loads(Path(a.result).read_text(encoding="utf-8"))
        for key in ("model", "dtype", "rows"):
            if key not in result:
                raise SimkitError(f"{a.result}: not a `simkit validate --json` result (no {key!r})")
        cells = [f"{r['phase'][0]}{r['batch']}/{r['context']}" for r in result["rows"]]
        for path in a.profiles:
            prof = load_profile(path)
            fits = [(path, prof)]
            if a.drop_op:
                s = prof.samples
                kept = s[s["op"].astype(str) != a.drop_op]
                if len(kept) == len(s):
                    print(f"{path}: no samples of operator {a.drop_op!r}: not refitted")
                else:
                        fits.append((f"{path} without {a.drop_op} ({len(s) - len(kept)} samples)",
                                 fit_profile(kept, prof.device, name=f"{prof.name}-no-{a.drop_op}", source=prof.source,
                                             license=prof.license)))  # fmt: skip
            if a.shared_attn_base:
                per_dtype = fit.BASE_PER_DTYPE_CLASSES
                fit.BASE_PER_DTYPE_CLASSES = ()
                try:
                    fits.append((f"{path} refitted, one attention base for all dtypes",
                                 fit_profile(prof.samples, prof.device, name=f"{prof.name}-shared-attn-base", source=prof.source,
                                             license=prof.license)))  # fmt: skip
                finally:
                    fit.BASE_PER_DTYPE_CLASSES = per_dtype
            if a.without_composition and prof.step_composition() is not None:
                dev = {k: v for k, v in prof.device.items() if k != "step_composition"}
                fits.append((f"{path} without its step composition", dataclasses.replace(prof, device=dev)))
            for label, p in fits:
                r = repredict(result, p)
                errs = ", ".join(f"{c} {100 * e:+.0f}" for c, e in zip(cells, r["errors"]))
                print(f"{label}: median {100 * r['median_ape']:.1f}%, p90 {100 * r['p90_ape']:.1f}% | {errs}")
    except (SimkitError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
