"""Progress reporting: long steps call a `ProgressCallback`; the CLI draws a bar, the worker forwards JSON."""

from __future__ import annotations

import sys
from typing import Protocol, TextIO


class ProgressCallback(Protocol):
    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        """`stage` names the step (e.g. "preprocess"), `fraction` is in [0, 1] within that step."""


def silent_progress(stage: str, fraction: float, message: str = "") -> None:
    """A callback that reports nothing."""


class TerminalProgress:
    """Progress on `stream` (stderr): on a terminal, a bar per stage (tqdm), redrawn in place; elsewhere (a CI
    log, the worker's log, `make demo > log`) one line when a stage starts, each time it passes another
    `LINE_STEP_PERCENT`, and when it ends, so a log holds lines, not carriage-return redraws. A context
    manager: leaving the `with` block closes the bar."""

    LINE_STEP_PERCENT = 10

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty()
        self._bar = None
        self._stage = None
        self._percent = 0

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        if not self.enabled:
            return
        percent = int(100 * min(max(fraction, 0.0), 1.0))  # 100 % only when a stage is done
        if self.interactive:
            self._draw(stage, percent, message)
            return
        new_stage = stage != self._stage
        if (
            new_stage
            or percent // self.LINE_STEP_PERCENT > self._percent // self.LINE_STEP_PERCENT
            or (percent == 100 > self._percent)
        ):
            print(f"{stage:<10} {percent:3d}%  {message}".rstrip(), file=self.stream, flush=True)
            self._stage, self._percent = stage, percent

    def _draw(self, stage: str, percent: int, message: str) -> None:
        from tqdm import tqdm

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(
                total=100,
                desc=f"{stage:<10}",
                leave=False,
                dynamic_ncols=True,
                file=self.stream,
                bar_format="{desc} {percentage:3.0f}% |{bar:20}| {elapsed} {postfix}",
            )
        self._bar.n = percent
        self._bar.set_postfix_str(message, refresh=True)

    def __enter__(self) -> TerminalProgress:
        return self

    def __exit__(self, *exception) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
