"""Install steps run one after the other in the background, with their whole log (Qt-free).

pip and light-the-torch take minutes; run on Slicer's GUI thread they would freeze it. `BackgroundInstall`
starts each step as a child process, and a reader thread collects its output; the Widget calls `poll()` from a
qt.QTimer to show the current step and its last line, and shows `log` in full when a step fails. Cancel kills
the running step; the steps already done stay done, and the dependency check offers the rest again.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from MAFM3SlicerLib.dependencies import InstallStep


@dataclass(frozen=True)
class InstallProgress:
    """What the panel shows: the step running (1-based index and label), its last output line, and, once
    finished, whether every step succeeded (`failed`: the label of the step that did not)."""

    step: int
    steps: int
    label: str
    last_line: str
    finished: bool
    failed: str | None = None


class BackgroundInstall:
    """Run `steps` one after the other, each to its end, in a background thread.

    env: the steps' environment (Slicer's startup environment inside Slicer). work_dir: the folder the steps
    were prepared in (constraints, the core's copy); deleted when the install ends, however it ends.
    """

    def __init__(self, steps: Sequence[InstallStep], env: Mapping[str, str] | None = None, work_dir=None):
        self.steps = list(steps)
        self.env = None if env is None else dict(env)
        self.work_dir = None if work_dir is None else Path(work_dir)
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._step = 0
        self._failed: str | None = None
        self._finished = threading.Event()
        self._cancelled = False
        self._process: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, name="mafm3-install", daemon=True)

    def start(self) -> BackgroundInstall:
        self._thread.start()
        return self

    @property
    def log(self) -> str:
        """Every line the steps wrote so far (stdout and stderr), with a header per step."""
        with self._lock:
            return "\n".join(self._lines)

    def poll(self) -> InstallProgress:
        """Where the install is now; never waits."""
        with self._lock:
            index = min(self._step, len(self.steps) - 1) if self.steps else 0
            return InstallProgress(
                step=index + 1,
                steps=len(self.steps),
                label=self.steps[index].label if self.steps else "",
                last_line=self._lines[-1] if self._lines else "",
                finished=self._finished.is_set(),
                failed=self._failed,
            )

    def wait(self, timeout_s: float | None = None) -> InstallProgress:
        """Wait for the end (for scripts and tests; the panel polls)."""
        self._finished.wait(timeout_s)
        return self.poll()

    def cancel(self) -> None:
        """Stop after killing the step that runs now."""
        with self._lock:
            self._cancelled = True
            process = self._process
        if process is not None:
            with contextlib.suppress(OSError):
                process.kill()

    def _append(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    def _run(self) -> None:
        try:
            for index, step in enumerate(self.steps):
                with self._lock:
                    self._step = index
                    if self._cancelled:
                        self._failed = f"{step.label} (cancelled)"
                        return
                self._append(f"== {step.label}: {' '.join(step.command)}")
                returncode = self._run_step(step)
                if returncode != 0:
                    with self._lock:
                        cancelled = self._cancelled
                        self._failed = step.label + (
                            " (cancelled)" if cancelled else f" (exit code {returncode})"
                        )
                    return
        finally:
            if self.work_dir is not None:
                shutil.rmtree(self.work_dir, ignore_errors=True)
            self._finished.set()

    def _run_step(self, step: InstallStep) -> int:
        try:
            process = subprocess.Popen(
                step.command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                encoding="utf-8",
                errors="replace",
                env=self.env,
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),  # no console window on Windows
            )
        except OSError as error:
            self._append(f"Cannot start {step.command[0]} ({error.strerror}).")
            return -1
        with self._lock:
            self._process = process
            if self._cancelled:
                process.kill()
        for line in iter(process.stdout.readline, ""):
            self._append(line.rstrip())
        process.stdout.close()
        return process.wait()
