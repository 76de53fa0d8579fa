"""The `mafm3` command lines the module runs with Slicer's Python, and how they run.

The GUI process never imports the model, and it does not need the core for anything but JSON: every core step
that reads or writes images (making the demo study, installing a skill pack, adding a case to a training
dataset, installing the core itself) runs as a child process `<python> -m ...`, where `<python>` is the
interpreter the worker runs with. Each function here builds one command line (a list: no shell, no quoting,
paths with spaces are safe); `run_command` runs it and turns a failure into the core's own one sentence.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from MAFM3SlicerLib.errors import PanelError

DEMO_STUDY_SIZES = ("tiny", "small", "realistic")  # `mafm3 demo make-study --size`


def worker_python() -> str:
    """The Python that runs the worker and every `mafm3` command.

    Inside Slicer this is the `PythonSlicer` launcher (on Slicer's PATH): Slicer's own Python, with the
    environment it needs. Elsewhere (the headless tests) it is the running interpreter.
    """
    return shutil.which("PythonSlicer") or sys.executable


def python_module_command(python: str | os.PathLike, module: str, *arguments) -> list[str]:
    """`<python> -m <module> <arguments...>`, every argument as a string."""
    return [str(python), "-m", module, *(str(argument) for argument in arguments)]


def mafm3_command(python: str | os.PathLike, *arguments) -> list[str]:
    """`<python> -m mafm3 <arguments...>`, every argument as a string."""
    return python_module_command(python, "mafm3", *arguments)


def demo_study_command(python, out_dir, seed: int = 0, size: str = "small") -> list[str]:
    """Write one synthetic PET/CT study (ct.nii.gz, pet.nii.gz in SUV, label.nii.gz, clinical.json, ...)."""
    if size not in DEMO_STUDY_SIZES:
        raise ValueError(f"`size` must be one of {DEMO_STUDY_SIZES}, got {size!r}.")
    return mafm3_command(python, "demo", "make-study", "--seed", seed, "--size", size, "--out", out_dir)


def skill_install_command(python, pack) -> list[str]:
    """Install a skill pack (folder or zip); the core verifies its checksum and its backbone first."""
    return mafm3_command(python, "skill", "install", Path(pack))


def skill_use_command(python, skill_id: str, version: str) -> list[str]:
    """Make `version` the active version of a skill (`mafm3 skill use ID@VERSION`): the one runs use."""
    return mafm3_command(python, "skill", "use", f"{skill_id}@{version}")


def add_case_command(
    python,
    dataset,
    *,
    ct,
    label,
    pet=None,
    clinical=None,
    case_id: str | None = None,
    overwrite: bool = False,
    prediction=None,
    editing_seconds: float | None = None,
) -> list[str]:
    """Add one annotated case to a HECKTOR 2022 layout dataset (`mafm3 dataset add-case`).

    prediction: the output folder of the run whose segments the annotator corrected; with it the core records
        the correction (skill, version, weights, series, voxels added and removed per segment, Dice between
        prediction and correction). editing_seconds: how long the prediction was open for editing.
    """
    command = mafm3_command(python, "dataset", "add-case", "--dataset", dataset, "--ct", ct, "--label", label)
    for option, value in (
        ("--pet", pet),
        ("--clinical", clinical),
        ("--id", case_id),
        ("--prediction", prediction),
    ):
        if value is not None:
            command += [option, str(value)]
    if editing_seconds is not None:
        command += ["--editing-seconds", f"{editing_seconds:.1f}"]
    return command + (["--overwrite"] if overwrite else [])


def dataset_info_command(python, dataset) -> list[str]:
    """Summarise a training dataset as JSON (`mafm3 dataset info --json`): its cases, and per skill version
    the correction records' mean Dice of prediction vs correction and editing time."""
    return mafm3_command(python, "dataset", "info", "--json", dataset)


def pip_install_command(python, arguments: Sequence[str | os.PathLike]) -> list[str]:
    """`<python> -m pip install <arguments...>`: what `slicer.util.pip_install` runs, as a list.

    A list rather than `pip_install`'s single string, because Slicer versions split that string on
    whitespace, which breaks paths with spaces (Windows installs Slicer under "Slicer 5.x.y").
    """
    return [str(python), "-m", "pip", "install", "--disable-pip-version-check", *map(str, arguments)]


class CommandError(PanelError):
    """A command exited with an error; the message is the core's sentence, `log` its whole stderr."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


def error_sentence(stderr: str) -> str:
    """The sentence to show for a failed command: its last stderr line, without the CLI's prefix.

    The `mafm3` CLI prints a user error as "mafm3 <command>: error: <sentence>" on its last line.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "The command failed without a message."
    last = lines[-1]
    _, separator, sentence = last.partition(": error: ")
    return sentence if separator else last


def run_command(
    command: Sequence[str], env: Mapping[str, str] | None = None, timeout_s: float = 600.0
) -> str:
    """Run a command to its end and return its stdout.

    Raises:
        CommandError: it exited with an error (message: `error_sentence`), or ran past `timeout_s`.
    """
    try:
        completed = subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=None if env is None else dict(env),
            timeout=timeout_s,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),  # no console window on Windows
        )
    except subprocess.TimeoutExpired as error:
        raise CommandError(
            f"'{' '.join(command[:4])} ...' did not finish within {timeout_s:g} s and was stopped.",
            str(error.stderr or ""),
        ) from error
    except OSError as error:
        raise CommandError(f"Cannot start {command[0]} ({error.strerror}); check the Python path.") from error
    if completed.returncode != 0:
        raise CommandError(error_sentence(completed.stderr), completed.stderr)
    return completed.stdout
