"""Progress reporting: long steps call a `ProgressCallback`; the CLI draws a bar, the worker forwards JSON."""

from __future__ import annotations

from typing import Protocol


class ProgressCallback(Protocol):
    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        """`stage` names the step (e.g. "preprocess"), `fraction` is in [0, 1] within that step."""


def silent_progress(stage: str, fraction: float, message: str = "") -> None:
    """A callback that reports nothing."""


class TerminalProgress:
    """A progress bar per stage on stderr (tqdm); stages that finish at once print nothing."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar = None
        self._stage = None

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = tqdm(
                total=100,
                desc=f"{stage:<10}",
                leave=False,
                dynamic_ncols=True,
                bar_format="{desc} {percentage:3.0f}% |{bar:20}| {elapsed} {postfix}",
            )
        self._bar.n = round(100 * min(max(fraction, 0.0), 1.0))
        self._bar.set_postfix_str(message, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
