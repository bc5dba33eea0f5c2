"""Compare parallel layouts of Llama-3-70B on one DGX H100 under the Azure conversation trace.

    .venv/bin/python benchmarks/parallel_plans.py [--requests 2000] [--rate-scale 1.0]

Prints, per plan, TTFT/TPOT percentiles, throughput, the share of GPU time in collectives,
and the simulator's wall time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from simkit.scenario import scenario_from_dict
from simkit.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
PLANS = {
    "TP8": {"tp": 8, "pp": 1, "replicas": 1},
    "TP4xPP2": {"tp": 4, "pp": 2, "replicas": 1},
    "TP2 x4 replicas": {"tp": 2, "pp": 1, "replicas": 4},
    "PP8": {"tp": 1, "pp": 8, "replicas": 1},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rate-scale", type=float, default=1.0)
    ap.add_argument("--calibration", default="auto")
    a = ap.parse_args()
    print(f"llama-3-70b on dgx-h100, Azure 2023 conversation trace, first {a.requests} requests, rate x{a.rate_scale}")
    print(f"{'plan':<17}{'TTFT p50':>10}{'TTFT p99':>10}{'TPOT p50':>10}{'TPOT p99':>10}{'out tok/s':>11}{'coll. share':>12}{'done':>7}{'wall s':>8}")
    for name, par in PLANS.items():
        data = {
            "name": name,
            "hardware": "dgx-h100",
            "model": "llama-3-70b",
            "workload": {
                "trace": {"path": str(ROOT / "workloads/traces/azure_conv_2023.csv"), "format": "azure", "rate_scale": a.rate_scale},
                "limit": a.requests,
            },
            "plan": {"batching": {"policy": "continuous", "max_num_seqs": 256, "max_num_batched_tokens": 8192},
                     "parallel": par},
            "calibration": a.calibration,
        }
        t0 = time.perf_counter()
        s = simulate(scenario_from_dict(data), record_iterations=False).summary
        wall = time.perf_counter() - t0
        print(f"{name:<17}{s['ttft_p50_s'] * 1e3:>8.1f}ms{s['ttft_p99_s'] * 1e3:>8.1f}ms{s['tpot_p50_s'] * 1e3:>8.1f}ms"
              f"{s['tpot_p99_s'] * 1e3:>8.1f}ms{s['output_tokens_per_s']:>11.1f}{s['collective_share'] * 100:>11.1f}%"
              f"{s['requests_completed']:>7}{wall:>8.2f}")


if __name__ == "__main__":
    main()
