"""Refactor guard: run every shipped scenario (and a few overridden variants that cover the
plans no shipped scenario does) and compare their summary.json byte for byte with a saved copy.

    python benchmarks/compare_outputs.py save DIR      # write DIR/NAME/summary.json for every case
    python benchmarks/compare_outputs.py check DIR     # re-run, compare; exit 1 on any difference
    python benchmarks/compare_outputs.py check DIR quickstart fleet   # only these cases

Long workloads are cut to 300 requests (``workload.limit``), so a full pass takes minutes, not
hours. summary.json is written as ``simkit run`` writes it (:func:`simkit.simulate.write_outputs`
holds the one serialisation); the tables are not compared (summary.json summarises them).
summary.json names the calibration profile by its path, so ``save`` records the checkout it ran
from (DIR/checkout.txt) and ``check`` replaces each side's checkout folder by ``<checkout>``
before comparing: two checkouts of the same code compare identical.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "workloads" / "scenarios"

LIMIT = {"workload.limit": 300}
CASES: dict[str, tuple[str, dict[str, object]]] = {
    "azure-code-chunked": ("azure-code-chunked.yaml", LIMIT),
    "azure-conv-continuous": ("azure-conv-continuous.yaml", LIMIT),
    "burstgpt-sample": ("burstgpt-sample.yaml", LIMIT),
    "cpu-server": ("cpu-server.yaml", {}),
    "cxl-long-context": ("cxl-long-context.yaml", {}),
    "disaggregated": ("disaggregated.yaml", LIMIT),
    "llama405b-two-nodes": ("llama405b-two-nodes.yaml", {}),
    "llama70b-tp4pp2": ("llama70b-tp4pp2.yaml", LIMIT),
    "mixtral-ep": ("mixtral-ep.yaml", {}),
    "mooncake-prefix-cache": ("mooncake-prefix-cache.yaml", LIMIT),
    "opt175b-t4-offload": ("opt175b-t4-offload.yaml", {}),
    "quickstart": ("quickstart.yaml", {}),
    # plans no shipped scenario covers
    "fleet": ("quickstart.yaml", {"plan.routing": "least_outstanding",
                                  "plan.fleet": [{"gpu": "h100-sxm", "replicas": 2}, {"gpu": "l4", "replicas": 2}]}),
    "quickstart-swap-reference": ("quickstart.yaml", {"plan.kv_cache.preemption": "swap", "plan.kv_cache.num_blocks": 400,
                                                      "workload.synthetic.arrival.rate": 30}),
    "quickstart-preempt": ("quickstart.yaml", {"plan.kv_cache.num_blocks": 400, "workload.synthetic.arrival.rate": 30}),
    "quickstart-reject": ("quickstart.yaml", {"plan.batching.max_num_batched_tokens": 1024}),
    "quickstart-layer-by-layer": ("quickstart.yaml", {"plan.execution.mode": "layer_by_layer", "workload.limit": 60}),
    "mooncake-prefix-ssd-3rep": ("mooncake-prefix-cache.yaml", {"workload.limit": 300, "plan.parallel.replicas": 3,
                                                                 "plan.prefix_cache.tiers": ["hbm", "dram", "ssd"]}),
    "disaggregated-chunked-rr": ("disaggregated.yaml", {"workload.limit": 200, "plan.routing": "round_robin"}),
    "azure-conv-3rep-lo": ("azure-conv-continuous.yaml", {"workload.limit": 300, "plan.parallel.replicas": 3,
                                                          "plan.routing": "least_outstanding"}),
}


def run_case(name: str, out: Path) -> Path:
    from simkit.scenario import load_scenario
    from simkit.simulate import simulate, write_outputs

    file, over = CASES[name]
    sc = load_scenario(SCENARIOS / file, over)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = simulate(sc)
    write_outputs(res, out / name)
    return out / name / "summary.json"


def _neutral(summary: bytes, checkout: str | None) -> bytes:
    """summary.json with the checkout folder it ran from removed from the paths inside it (shipped
    profiles are named relative to the checkout since 2026-11-30; older baselines named them by
    absolute path) and replaced by ``<checkout>`` elsewhere."""
    if not checkout:
        return summary
    quoted = json.dumps(checkout)[1:-1].encode()
    return summary.replace(quoted + b"/", b"").replace(quoted, b"<checkout>")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("save", "check"):
        print(__doc__)
        return 2
    mode, base = argv[0], Path(argv[1])
    names = argv[2:] or list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"unknown case(s) {unknown}; expected some of {list(CASES)}")
        return 2
    bad = 0
    if mode == "save":
        base.mkdir(parents=True, exist_ok=True)
        (base / "checkout.txt").write_text(str(ROOT))
    saved_root = (base / "checkout.txt").read_text().strip() if (base / "checkout.txt").exists() else None
    for name in names:
        t0 = time.process_time()
        if mode == "save":
            run_case(name, base)
            print(f"{name}: saved ({time.process_time() - t0:.1f} CPU s)")
            continue
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            new = _neutral(run_case(name, Path(tmp)).read_bytes(), str(ROOT))
        old = _neutral((base / name / "summary.json").read_bytes(), saved_root)
        if new == old:
            print(f"{name}: identical ({time.process_time() - t0:.1f} CPU s)")
            continue
        bad += 1
        a, b = json.loads(old), json.loads(new)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        print(f"{name}: DIFFERS in {diff}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
