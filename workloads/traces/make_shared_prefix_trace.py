"""Writes shared_prefix_1rps.csv: a synthetic native-format trace for the prefix-caching examples.

300 requests arriving as a Poisson process at 1 request/s (so ``workload.trace.rate_scale: R``
replays it at about R requests/s). Each prompt is one of 16 system prompts (popularity Zipf(1.1),
1,024 to 3,072 tokens, shared by every request naming it through ``prefix_id``) followed by its
own user text (lognormal, median 256 tokens); outputs are lognormal with median 128 tokens.
Seeded: running it again writes the same bytes.  Usage: python make_shared_prefix_trace.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def main() -> None:
    rng = np.random.default_rng(2024)
    n, n_prefix = 300, 16
    arrival = np.cumsum(rng.exponential(1.0, n))
    arrival -= arrival[0]
    prefix_len = rng.integers(1024, 3073, n_prefix)
    weights = 1.0 / np.arange(1, n_prefix + 1) ** 1.1
    pid = rng.choice(n_prefix, size=n, p=weights / weights.sum())
    user = np.clip(np.round(rng.lognormal(np.log(256), 0.8, n)), 16, 4096).astype(int)
    out = np.clip(np.round(rng.lognormal(np.log(128), 0.8, n)), 1, 1024).astype(int)
    lines = ["arrival_s,input_tokens,output_tokens,prefix_id,prefix_tokens"]
    for i in range(n):
        p = int(prefix_len[pid[i]])
        lines.append(f"{arrival[i]:.4f},{p + int(user[i])},{int(out[i])},{int(pid[i])},{p}")
    Path(__file__).with_name("shared_prefix_1rps.csv").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
