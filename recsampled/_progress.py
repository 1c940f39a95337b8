"""Messages and progress of the library: the ``recsampled`` logger and ``tqdm`` bars.

Library code never prints. Messages go to ``logging.getLogger("recsampled.<module>")``; progress
goes through :func:`progress`, which shows

- a ``tqdm`` bar on stderr when stderr is a terminal,
- plain log lines (``label: done/total (pct) elapsed``) at most every ``interval`` seconds and
  once at the end when it is not (a log file, a pipe: no ``\\r`` concatenation),
- nothing when the ``recsampled`` logger does not show INFO messages (the default of an
  unconfigured program; the CLI shows them unless ``-q``).

:func:`configure_logging` is what the CLI (and a recipe script) calls once at start-up.

Example:
    >>> with progress(3, "embedding items") as bar:
    ...     for _ in range(3):
    ...         bar.update(1)
    >>> bar.n
    3
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

LOGGER_NAME = "recsampled"
logger = logging.getLogger(LOGGER_NAME)

_FORMAT = "%(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message is emitted (tests replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(verbosity: int = 0, *, stream: TextIO | None = None) -> None:
    """Shows the ``recsampled`` logger's messages on ``stream`` (default: stderr).

    Calling it again replaces the handler it added before.

    Args:
        verbosity: ``-1`` warnings only (``-q``), ``0`` progress and information, ``1`` or more
            debug messages too (``-v``).
        stream: where the messages go (default: ``sys.stderr`` at the time of each message).
    """
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    for handler in list(logger.handlers):
        if getattr(handler, "_recsampled", False):
            logger.removeHandler(handler)
    handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler._recsampled = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)


class _LogLines:
    """A tqdm-like counter that logs one plain line at most every ``interval`` seconds."""

    def __init__(self, total: int, desc: str, *, interval: float, log: logging.Logger):
        self.total = max(int(total), 0)
        self.desc = desc
        self.n = 0
        self.interval = interval
        self._log = log
        self._start = self._last = time.perf_counter()

    def update(self, amount: int = 1) -> None:
        self.n = min(self.n + int(amount), self.total)
        now = time.perf_counter()
        if self.n < self.total and now - self._last >= self.interval:
            self._line(now)

    def close(self) -> None:
        self._line(time.perf_counter())

    def _line(self, now: float) -> None:
        self._last = now
        percent = 100.0 * self.n / self.total if self.total else 100.0
        self._log.info(
            "%s: %d/%d (%.0f%%) %.1fs", self.desc, self.n, self.total, percent, now - self._start
        )

    def __enter__(self) -> _LogLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Silent:
    """Counts, shows nothing."""

    def __init__(self, total: int):
        self.total = max(int(total), 0)
        self.n = 0

    def update(self, amount: int = 1) -> None:
        self.n = min(self.n + int(amount), self.total)

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress(
    total: int,
    desc: str,
    *,
    unit: str = "it",
    interval: float = 10.0,
    log: logging.Logger | None = None,
    enabled: bool = True,
) -> Any:
    """A progress counter over ``total`` units: use as a context manager, call ``update(n)``.

    Args:
        total: the amount of work (items, vectors, trials).
        desc: what is being done, e.g. ``"embedding items"``.
        unit: the unit a tqdm bar shows.
        interval: seconds between two plain lines when stderr is not a terminal.
        log: the logger whose INFO level decides whether anything is shown (default
            ``recsampled``).
        enabled: False shows nothing whatever the logger's level (a caller's own switch).

    Returns:
        A ``tqdm`` bar, or an object with the same ``update``/``close``/``n``/``total``.
    """
    log = log or logger
    if not enabled or not log.isEnabledFor(logging.INFO):
        return _Silent(total)
    isatty = getattr(sys.stderr, "isatty", None)
    if isatty is not None and isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)
    return _LogLines(total, desc, interval=interval, log=log)
