"""The progress line: redrawn in place on a terminal, plain lines in a log."""

from __future__ import annotations

import io

from recsampled.index._progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_one_final_line_and_no_carriage_returns():
    stream = io.StringIO()
    with Progress("embedding items", 5, stream=stream) as progress:
        for _ in range(5):
            progress.update()
    assert stream.getvalue().count("\n") == 1 and "\r" not in stream.getvalue()
    assert stream.getvalue().startswith("embedding items: 5/5 (100%)")


def test_a_log_gets_a_line_per_interval():
    stream = io.StringIO()
    with Progress("x", 3, stream=stream, log_interval=0.0) as progress:
        for _ in range(3):
            progress.update()
    assert stream.getvalue().splitlines()[0].startswith("x: 1/3 (33%)")
    assert len(stream.getvalue().splitlines()) == 3  # 1/3, 2/3, then the final 3/3


def test_a_terminal_line_is_redrawn_in_place():
    stream = _Terminal()
    with Progress("x", 2, stream=stream, min_interval=0.0) as progress:
        progress.update()
        progress.update()
    text = stream.getvalue()
    assert text.startswith("\rx: 1/2 (50%)") and text.endswith("\n") and text.count("\n") == 1
