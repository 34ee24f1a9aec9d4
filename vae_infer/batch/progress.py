"""A one-line progress report on stderr (rows, rows/s, ETA), drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

REDRAW_SECONDS = 0.5


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total: int, done: int = 0, enabled: bool | None = None, stream=None,
                 on_rows: Callable[[int], None] | None = None) -> None:
        self._stream = stream  # None: sys.stderr at each write (vae_infer.ray.connect may swap it for a job)
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.done, self.start_done = total, done, done
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.on_rows = on_rows

    @property
    def stream(self):
        return self._stream or sys.stderr

    def update(self, rows: int) -> None:
        self.done += rows
        if self.on_rows is not None:
            self.on_rows(rows)
        now = time.perf_counter()
        if self.enabled and (now - self.last >= REDRAW_SECONDS or self.done >= self.total):
            self.last = now
            self.stream.write("\r" + self.line(now))
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self.t0
        rate = (self.done - self.start_done) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.done:,}/{self.total:,} rows ({pct:5.1f}%)  {rate:,.0f} rows/s  "
                f"ETA {_clock(eta)}  elapsed {_clock(elapsed)}")

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
