"""A minimal progress line on stderr (no dependency): ``label: done/total (pct) elapsed``."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Rewrites one line on ``stream`` as work advances; silent when ``enabled`` is false.

    Args:
        label: what is being done, e.g. ``"embedding items"``.
        total: the amount of work (items, vectors, trials).
        enabled: print anything at all.
        stream: where the line goes (default ``sys.stderr``).
        min_interval: seconds between redraws (the last one is always drawn). Where the stream
            is not a terminal (a log file, a pipe), ``\r`` cannot redraw a line: a line is written
            at most every ``log_interval`` seconds, and the last one on ``close``.
        log_interval: seconds between lines on a stream that is not a terminal.
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        min_interval: float = 0.2,
        log_interval: float = 10.0,
    ):
        self.label = label
        self.total = max(int(total), 0)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self.log_interval = log_interval
        isatty = getattr(self.stream, "isatty", None)
        self._terminal = bool(isatty and isatty())
        self.done = 0
        self._start = time.perf_counter()
        self._last_draw = -float("inf") if self._terminal else self._start

    def update(self, amount: int = 1) -> None:
        """Advances by ``amount`` and redraws at most every ``min_interval`` seconds."""
        self.done = min(self.done + int(amount), self.total)
        now = time.perf_counter()
        if not self._terminal:
            if self.done < self.total and now - self._last_draw >= self.log_interval:
                self._draw(now, end="\n")
            return
        if self.done >= self.total or now - self._last_draw >= self.min_interval:
            self._draw(now)

    def close(self, note: str = "") -> None:
        """Draws the final line (with an optional note) and ends it."""
        if self.enabled:
            self._draw(time.perf_counter(), end=f" {note}\n" if note else "\n")

    def _draw(self, now: float, end: str = "") -> None:
        self._last_draw = now
        if not self.enabled:
            return
        percent = 100.0 * self.done / self.total if self.total else 100.0
        line = f"{self.label}: {self.done}/{self.total} ({percent:.0f}%) {now - self._start:.1f}s"
        if self._terminal:
            line = "\r" + line
        self.stream.write(line + end)
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log(message: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
    """Writes one line of progress information to ``stream`` (default stderr)."""
    if enabled:
        stream = stream if stream is not None else sys.stderr
        stream.write(message + "\n")
        stream.flush()
