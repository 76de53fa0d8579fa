"""`TerminalProgress`: bars on a terminal, plain lines in a log (CI, the worker's log, `make demo > log`)."""

from __future__ import annotations

import io

from mafm3.progress import TerminalProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def feed(progress: TerminalProgress) -> None:
    """Two stages of 500 small steps each, as a long sliding window or a cohort reports them."""
    for stage in ("preprocess", "inference"):
        for step in range(501):
            progress(stage, step / 500, f"window {step} of 500")
    progress.close()


def test_a_log_gets_one_line_per_stage_start_and_per_ten_percent_without_carriage_returns():
    log = io.StringIO()
    feed(TerminalProgress(stream=log))
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    expected = [
        f"{stage:<10} {percent:3d}%" for stage in ("preprocess", "inference") for percent in range(0, 101, 10)
    ]
    assert [line[:15] for line in lines] == expected
    assert lines[-1] == f"{'inference':<10} 100%  window 500 of 500"


def test_a_terminal_gets_a_bar_redrawn_in_place():
    terminal = Terminal()
    feed(TerminalProgress(stream=terminal))
    text = terminal.getvalue()
    assert "\r" in text and text.count("\n") < 10  # redrawn, not one line per update


def test_quiet_prints_nothing():
    log = io.StringIO()
    feed(TerminalProgress(enabled=False, stream=log))
    assert log.getvalue() == ""
