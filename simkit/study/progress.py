"""A plain-text progress bar on stderr: done/total, failures, elapsed time and ETA.

On a terminal it redraws one line (at most five times a second); otherwise (a log file, CI) it
prints a line at every tenth of the work and at the end.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _fmt_s(s: float) -> str:
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


class Progress:
    def __init__(self, total: int, reused: int = 0, *, enabled: bool = True, stream: TextIO | None = None,
                 label: str = "runs") -> None:
        self.total = total
        self.reused = reused
        self.done = 0
        self.failed = 0
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and total > 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self._last_draw = 0.0
        self._last_tenth = -1

    def line(self) -> str:
        el = time.perf_counter() - self.t0
        frac = self.done / self.total if self.total else 1.0
        width = 24
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        eta = el / self.done * (self.total - self.done) if self.done else float("nan")
        eta_s = _fmt_s(eta) if self.done else "?"
        reused = f", {self.reused} reused" if self.reused else ""
        return (f"[{bar}] {self.done}/{self.total} {self.label}, {self.failed} failed{reused} | "
                f"{_fmt_s(el)} elapsed, ETA {eta_s}")

    def start(self) -> None:
        if self.enabled:
            self._draw(force=True)

    def update(self, ok: bool) -> None:
        self.done += 1
        if not ok:
            self.failed += 1
        if self.enabled:
            self._draw(force=self.done == self.total)

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.tty:
            if force or now - self._last_draw >= 0.2:
                self.stream.write("\r" + self.line() + ("\n" if self.done == self.total else ""))
                self.stream.flush()
                self._last_draw = now
            return
        tenth = int(10 * self.done / self.total)
        if force or tenth > self._last_tenth:
            self._last_tenth = tenth
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        """End the bar's line on a terminal if the work stopped early."""
        if self.enabled and self.tty and self.done != self.total:
            self.stream.write("\n")
            self.stream.flush()
