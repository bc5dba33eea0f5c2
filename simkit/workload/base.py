"""The columnar request set every reader and generator produces and the engine consumes.

One numpy array per column, never one Python object per request, so that millions of requests
stay compact. Prefix-block hashes (Mooncake ``hash_ids``) are stored CSR-style: the hashes of
request ``i`` are ``prefix_hashes[prefix_offsets[i]:prefix_offsets[i + 1]]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_TOKENS = 2**31 - 1
"""Most tokens one request may ask for (prompt or output): far beyond any context window, and
small enough that a workload's token sums never overflow int64."""


@dataclass(frozen=True, eq=False)
class Requests:
    arrival_s: np.ndarray
    """Arrival times in seconds from the start of the run, float64, non-decreasing."""
    input_tokens: np.ndarray
    """Prompt length per request, int64 >= 1."""
    output_tokens: np.ndarray
    """Tokens to generate per request, int64 >= 1."""
    prefix_hashes: np.ndarray | None = None
    """Flat int64 array of prefix-block hashes (CSR values), or None."""
    prefix_offsets: np.ndarray | None = None
    """int64 array of length n + 1 (CSR offsets into prefix_hashes), or None."""
    prefix_block_tokens: int = 512
    """Tokens covered by one prefix-block hash."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Provenance and counts: source path, format, rows read, rows dropped and why."""

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        if len(self.input_tokens) != n or len(self.output_tokens) != n:
            raise ValueError("arrival_s, input_tokens and output_tokens must have the same length")
        if (self.prefix_hashes is None) != (self.prefix_offsets is None):
            raise ValueError("prefix_hashes and prefix_offsets go together")
        if self.prefix_offsets is not None and len(self.prefix_offsets) != n + 1:
            raise ValueError("prefix_offsets must have length n + 1")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def has_prefixes(self) -> bool:
        return self.prefix_hashes is not None

    def hashes_of(self, i: int) -> np.ndarray:
        if self.prefix_hashes is None or self.prefix_offsets is None:
            return np.empty(0, dtype=np.int64)
        return self.prefix_hashes[self.prefix_offsets[i] : self.prefix_offsets[i + 1]]

    def take(self, idx: np.ndarray) -> Requests:
        """A new request set with the rows ``idx`` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        ph = po = None
        if self.prefix_hashes is not None and self.prefix_offsets is not None:
            starts = self.prefix_offsets[idx]
            lens = self.prefix_offsets[idx + 1] - starts
            po = np.zeros(len(idx) + 1, dtype=np.int64)
            np.cumsum(lens, out=po[1:])
            if len(idx):
                gather = np.repeat(starts - po[:-1], lens) + np.arange(po[-1])
                ph = self.prefix_hashes[gather]
            else:
                ph = np.empty(0, dtype=np.int64)
        return Requests(
            self.arrival_s[idx],
            self.input_tokens[idx],
            self.output_tokens[idx],
            ph,
            po,
            self.prefix_block_tokens,
            dict(self.meta),
        )
