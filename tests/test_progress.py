"""recsampled._progress: plain lines in a log, a tqdm bar on a terminal, nothing when quiet."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from recsampled import _progress
from recsampled._progress import configure_logging, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def info(caplog):
    caplog.set_level(logging.INFO, logger="recsampled")
    return caplog


def test_a_log_gets_one_final_line_and_no_carriage_returns(info, capsys):
    with progress(5, "embedding items") as bar:
        for _ in range(5):
            bar.update()
    messages = [r.getMessage() for r in info.records]
    assert len(messages) == 1 and messages[0].startswith("embedding items: 5/5 (100%)")
    assert "\r" not in capsys.readouterr().err


def test_a_log_gets_a_line_per_interval(info):
    with progress(3, "x", interval=0.0) as bar:
        for _ in range(3):
            bar.update()
    messages = [r.getMessage() for r in info.records]
    assert messages[0].startswith("x: 1/3 (33%)")
    assert len(messages) == 3  # 1/3, 2/3, then the final 3/3


def test_nothing_is_shown_below_info_or_when_disabled(caplog):
    caplog.set_level(logging.WARNING, logger="recsampled")
    with progress(2, "x", interval=0.0) as bar:
        bar.update(2)
    caplog.set_level(logging.INFO, logger="recsampled")
    with progress(2, "y", interval=0.0, enabled=False) as bar:
        bar.update(2)
    assert caplog.records == [] and bar.n == 2


def test_a_terminal_gets_a_tqdm_bar(info, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress(2, "x") as bar:
        bar.update()
        bar.update()
    assert type(bar).__name__ == "tqdm" and "\r" in terminal.getvalue()
    assert "x: 100%" in terminal.getvalue() and info.records == []


def test_configure_logging_levels_and_one_handler(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    log = logging.getLogger("recsampled.test")
    try:
        configure_logging(-1)
        configure_logging(0)  # replaces the handler: every message once
        log.info("hello")
        log.debug("hidden")
        configure_logging(1)
        log.debug("shown")
        assert stream.getvalue() == "hello\nshown\n"
        assert sum(getattr(h, "_recsampled", False) for h in _progress.logger.handlers) == 1
    finally:
        for handler in list(_progress.logger.handlers):
            _progress.logger.removeHandler(handler)
        _progress.logger.setLevel(logging.NOTSET)
