"""Progress reporting: long steps call a `ProgressCallback`; the CLI draws a bar, the worker forwards JSON."""

from __future__ import annotations

from typing import Protocol


class ProgressCallback(Protocol):
    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        """`stage` names the step (e.g. "preprocess"), `fraction` is in [0, 1] within that step."""


def silent_progress(stage: str, fraction: float, message: str = "") -> None:
    """A callback that reports nothing."""
