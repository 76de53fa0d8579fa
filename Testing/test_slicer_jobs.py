"""MAFM3SlicerLib.jobs: a job's files and run parameters, worker events as panel updates, the device line.

The real worker runs in test_slicer_worker_jobs.py; here `JobRunner` gets a client that replays events, to
pin down how each event is shown and what happens to the job folder.
"""

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
from synthetic_volumes import ras_matrix, rotation_about_z, volume_node

from mafm3.clinical import ClinicalRecord
from mafm3.engine.runner import RunRequest
from MAFM3SlicerLib.geometry import image_from_volume
from MAFM3SlicerLib.jobs import JobRunner, describe_worker, prepare_job

CLINICAL = {"age": 58.0, "sex": "F", "hpv": True, "t_stage": "T2"}


@pytest.fixture
def ct(mrml_scene):
    voxels = np.random.default_rng(1).integers(-1024, 2000, size=(6, 7, 8)).astype(np.int16)
    matrix = ras_matrix(
        rotation_about_z(-30.0) @ np.diag([1.0, 1.0, -1.0]), (0.7, 0.9, 2.5), (3.0, -4.0, 50.0)
    )
    return volume_node(mrml_scene, voxels, matrix, "CT")


@pytest.fixture
def pet(mrml_scene):
    voxels = np.random.default_rng(2).uniform(0.2, 15.0, size=(4, 5, 6)).astype(np.float32)
    return volume_node(
        mrml_scene, voxels, ras_matrix(rotation_about_z(10.0), (2.0, 2.0, 3.0), (0, 0, 40)), "PET"
    )


def assert_same_image(path, node):
    """The file, as SimpleITK (and so the core) reads it, is the node: voxels and LPS geometry."""
    read, expected = sitk.ReadImage(str(path)), image_from_volume(node)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(expected))
    np.testing.assert_allclose(read.GetSpacing(), expected.GetSpacing(), rtol=1e-12)
    np.testing.assert_allclose(read.GetDirection(), expected.GetDirection(), atol=1e-12)
    np.testing.assert_allclose(read.GetOrigin(), expected.GetOrigin(), atol=1e-9)


def test_a_job_folder_holds_the_volumes_with_their_exact_geometry_and_the_clinical_record(ct, pet, tmp_path):
    params, folder = prepare_job(ct, pet, CLINICAL, ["seg-petct", "rfs"], "cpu", 0.5, parent_dir=tmp_path)

    assert folder.parent == tmp_path
    assert_same_image(params["ct"], ct)
    assert_same_image(params["pet"], pet)
    assert ClinicalRecord.from_json(params["clinical"]) == ClinicalRecord.from_dict(CLINICAL)
    assert params["out"] == str(folder / "out") and not (folder / "out").exists()
    request_fields = {field.name for field in dataclasses.fields(RunRequest)}
    request = RunRequest(**{key: value for key, value in params.items() if key != "out"})
    assert set(params) - {"out"} <= request_fields
    assert (request.skills, request.device, request.overlap, request.pet_units) == (
        ["seg-petct", "rfs"],
        "cpu",
        0.5,
        "suv",  # the panel's PET is in SUV (study_check) and a NRRD has no DICOM header to convert from
    )


def test_without_pet_clinical_data_or_overlap_the_worker_is_not_given_them(ct, tmp_path):
    params, folder = prepare_job(ct, None, {}, ["seg-ct"], parent_dir=tmp_path)
    assert set(params) == {"ct", "skills", "device", "out"}
    assert sorted(path.name for path in folder.iterdir()) == ["ct.nrrd"]


def test_a_job_without_skills_is_refused_and_a_failure_half_way_leaves_no_folder(ct, tmp_path):
    with pytest.raises(ValueError, match="at least one skill"):
        prepare_job(ct, None, None, [], parent_dir=tmp_path)
    with pytest.raises(TypeError, match="not JSON serializable"):  # after ct.nrrd was written
        prepare_job(ct, None, {"age": object()}, ["seg-ct"], parent_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- JobRunner ----------------------------------------------------------------------------------------------


class ReplayClient:
    """Stands for WorkerClient: hands out the events given to it, records what it was asked."""

    def __init__(self):
        self.events = []
        self.cancelled = []

    def submit(self, op, params):
        return "run-7"

    def poll(self, timeout_s=0.0):
        events, self.events = self.events, []
        return events

    def cancel(self, run_id):
        self.cancelled.append(run_id)

    def stderr_tail(self):
        return "Traceback (most recent call last):\nZeroDivisionError: division by zero"


@pytest.fixture
def runner_and_folder(tmp_path):
    folder = tmp_path / "job"
    (folder / "out").mkdir(parents=True)
    runner = JobRunner(ReplayClient())
    runner.submit({"ct": "ct.nrrd", "out": str(folder / "out")}, folder, {"ct": "vtkMRMLScalarVolumeNode1"})
    return runner, folder


def test_progress_is_clamped_and_a_result_ends_the_job_keeping_its_folder(runner_and_folder):
    runner, folder = runner_and_folder
    runner.client.events = [
        {"id": "hello-1", "event": "ready", "device": "cpu"},
        {"id": "run-7", "event": "progress", "stage": "inference", "fraction": 1.0000001, "message": "w 2/2"},
        {"id": "run-6", "event": "progress", "stage": "read", "fraction": 0.1},  # an older run's leftover
        {"id": "run-7", "event": "result", "result": {"out": str(folder / "out")}},
    ]

    ready, progress, result = runner.poll()

    assert (ready.kind, ready.record["device"]) == ("ready", "cpu")
    assert (progress.kind, progress.stage, progress.fraction, progress.message) == (
        "progress",
        "inference",
        1.0,
        "w 2/2",
    )
    assert (result.kind, result.record, result.job.context) == (
        "result",
        {"out": str(folder / "out")},
        {"ct": "vtkMRMLScalarVolumeNode1"},
    )
    assert not runner.running and folder.is_dir()


@pytest.mark.parametrize(
    ("event", "kind", "message", "has_detail"),
    [
        ({"event": "error", "kind": "user", "message": "Select a CT."}, "error", "Select a CT.", False),
        (
            {"event": "error", "kind": "internal", "message": "The worker failed."},
            "error",
            "The worker failed.",
            True,
        ),
        ({"event": "cancelled"}, "cancelled", "Cancelled.", False),
        (
            {"event": "cancelled", "forced": True},
            "cancelled",
            "Cancelled; the worker did not stop in time",
            False,
        ),
        ({"event": "crashed", "returncode": -9, "stderr_tail": "Killed"}, "crashed", "(exit code -9)", True),
    ],
)
def test_every_other_end_of_a_job_is_shown_in_one_sentence_and_deletes_its_folder(
    runner_and_folder, event, kind, message, has_detail
):
    runner, folder = runner_and_folder
    runner.client.events = [{"id": "run-7", **event}]

    (update,) = runner.poll()

    assert update.kind == kind and message in update.message
    assert bool(update.detail) == has_detail
    assert not runner.running and not folder.exists()


def test_cancel_is_sent_once_and_forgetting_the_nodes_empties_the_context(runner_and_folder):
    runner, _folder = runner_and_folder
    runner.cancel()
    runner.cancel()
    runner.forget_nodes()
    assert runner.client.cancelled == ["run-7"]
    assert runner.job.context == {} and runner.job.cancel_requested


def test_a_crash_while_idle_is_reported_without_a_job():
    runner = JobRunner(ReplayClient())
    runner.client.events = [{"id": None, "event": "crashed", "returncode": 1, "stderr_tail": "ImportError"}]
    (update,) = runner.poll()
    assert (update.kind, update.job, update.detail) == ("crashed", None, "ImportError")


def test_a_second_job_is_refused_while_one_runs(runner_and_folder, tmp_path):
    runner, _folder = runner_and_folder
    with pytest.raises(RuntimeError, match="already running"):
        runner.submit({}, tmp_path, {})


# --- the device line ----------------------------------------------------------------------------------------


def test_the_device_line_names_the_gpu_or_says_why_the_cpu_is_used():
    gpu = {
        "device": "cuda",
        "torch": {
            "installed": True,
            "version": "2.13.0+cu128",
            "build": "CUDA",
            "devices": [{"name": "NVIDIA H200", "memory_gb": 139.8}],
        },
        "hints": [],
    }
    assert describe_worker(gpu) == "GPU: NVIDIA H200 (139.8 GB); torch 2.13.0+cu128, CUDA build"
    hint = "An NVIDIA driver is present but this torch is a CPU build: install a CUDA build."
    cpu = {
        "device": "cpu",
        "torch": {"installed": True, "version": "2.13.0", "build": "CPU", "cpu_threads": 8},
    }
    assert describe_worker({**cpu, "hints": [hint]}) == f"CPU (8 threads); torch 2.13.0, CPU build. {hint}"
    assert describe_worker({"device": "cpu", "torch": {"installed": False}}).startswith(
        "PyTorch is not installed"
    )


def test_the_clinical_file_is_plain_json(ct, tmp_path):
    params, _folder = prepare_job(ct, None, CLINICAL, ["rfs"], parent_dir=tmp_path)
    assert json.loads(open(params["clinical"]).read()) == CLINICAL
