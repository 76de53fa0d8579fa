"""MAFM3SlicerLib.commands: the command lines the module runs are ones the core's CLI accepts, and a failing
command turns into the core's own sentence."""

import sys

import pytest

from mafm3.cli import build_parser
from MAFM3SlicerLib.commands import (
    CommandError,
    add_case_command,
    demo_study_command,
    error_sentence,
    mafm3_command,
    run_command,
    skill_install_command,
    skill_use_command,
    worker_python,
)

PYTHON = "/opt/Slicer 5.10/bin/PythonSlicer"


def parsed(command):
    """The arguments the `mafm3` CLI parses from a `<python> -m mafm3 ...` command line."""
    assert command[:3] == [PYTHON, "-m", "mafm3"]
    return build_parser().parse_args(command[3:])


def test_the_demo_study_command_is_make_study_with_seed_size_and_folder(tmp_path):
    args = parsed(demo_study_command(PYTHON, tmp_path / "demo study", seed=3, size="tiny"))
    assert (args.command, args.demo_action, args.seed, args.size) == ("demo", "make-study", 3, "tiny")
    assert args.out == tmp_path / "demo study"
    with pytest.raises(ValueError, match="`size` must be one of"):
        demo_study_command(PYTHON, tmp_path, size="huge")


def test_the_skill_install_command_names_the_pack(tmp_path):
    args = parsed(skill_install_command(PYTHON, tmp_path / "seg.zip"))
    assert (args.command, args.action, args.pack) == ("skill", "install", str(tmp_path / "seg.zip"))


def test_the_add_case_command_passes_every_file_and_the_case_id(tmp_path):
    args = parsed(
        add_case_command(
            PYTHON,
            tmp_path / "dataset",
            ct=tmp_path / "ct.nrrd",
            label=tmp_path / "label.nrrd",
            pet=tmp_path / "pet.nrrd",
            clinical=tmp_path / "clinical.json",
            case_id="HN-007",
            overwrite=True,
        )
    )
    assert (args.command, args.action, args.case_id, args.overwrite) == (
        "dataset",
        "add-case",
        "HN-007",
        True,
    )
    assert (args.dataset, args.ct, args.label, args.pet, args.clinical) == tuple(
        tmp_path / name for name in ("dataset", "ct.nrrd", "label.nrrd", "pet.nrrd", "clinical.json")
    )
    minimal = parsed(add_case_command(PYTHON, "d", ct="c.nrrd", label="l.nrrd"))
    assert (minimal.pet, minimal.clinical, minimal.case_id, minimal.overwrite) == (None, None, None, False)
    assert (minimal.prediction, minimal.editing_seconds) == (None, None)


def test_a_corrected_case_passes_the_runs_output_folder_and_the_editing_time(tmp_path):
    args = parsed(
        add_case_command(
            PYTHON,
            "d",
            ct="c.nrrd",
            label="l.nrrd",
            prediction=tmp_path / "job" / "out",
            editing_seconds=312.46,
        )
    )
    assert (args.prediction, args.editing_seconds) == (tmp_path / "job" / "out", 312.5)  # tenths of a second


def test_the_skill_use_command_names_id_and_version():
    args = parsed(skill_use_command(PYTHON, "demo-seg-ct", "1.1.0"))
    assert (args.command, args.action, args.reference) == ("skill", "use", "demo-seg-ct@1.1.0")


def test_a_failing_command_raises_the_cores_sentence_and_keeps_its_log(tmp_path):
    with pytest.raises(CommandError) as raised:
        run_command(mafm3_command(sys.executable, "skill", "install", tmp_path / "missing.zip"))
    assert str(raised.value) == (
        f"{tmp_path / 'missing.zip'} is not a skill pack folder or .zip, "
        "nor an installed or shipped skill id; give the pack's folder or .zip, "
        "or an id (or ID@VERSION) that `mafm3 skill list` shows."
    )
    assert raised.value.log.startswith("mafm3 skill: error:")


def test_a_command_that_cannot_start_or_prints_nothing_still_gets_a_sentence(tmp_path):
    with pytest.raises(CommandError, match="Cannot start"):
        run_command([str(tmp_path / "no-python"), "-c", "pass"])
    assert error_sentence("") == "The command failed without a message."
    assert error_sentence("Traceback ...\nValueError: boom\n") == "ValueError: boom"


def test_outside_slicer_the_worker_runs_with_this_python():
    assert worker_python() == sys.executable
