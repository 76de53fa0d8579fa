"""The module's Logic driving the real `python -m mafm3.worker` (python_core/tests/fake_engine.py as engine).

One Logic, so one warm worker, serves the module, as one serves Slicer: start, progress, results as nodes,
cancel, a crash and the restart after it. Every wait has a timeout, so a hang fails instead of blocking.
"""

import os
from pathlib import Path

import fake_engine
import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from skill_packs import write_pack
from synthetic_volumes import ras_matrix, rotation_about_z, volume_node

from mafm3.clinical import ClinicalRecord
from MAFM3SlicerLib.result_nodes import LABEL_MAP_FILE, table_rows

FAKE_ENGINE_DIR = str(Path(__file__).resolve().parents[1] / "python_core" / "tests")
TIMEOUT_S = 120.0  # a fresh worker imports torch before it answers
CLINICAL = {"age": 63.0, "sex": "M", "tobacco": True, "hpv": False, "n_stage": "N2b"}


@pytest.fixture(scope="module")
def logic(mafm3_slicer, tmp_path_factory):
    home = tmp_path_factory.mktemp("mafm3_home")
    write_pack(home / "skills", "fake-seg-petct", "segmentation", ("CT", "PET"), demo=True)
    write_pack(home / "skills", "fake-rfs", "prognosis", ("CT",))
    write_pack(home / "skills", "fake-slow", "segmentation")
    write_pack(home / "skills", "fake-crash", "segmentation")
    environment = {
        **os.environ,
        "MAFM3_HOME": str(home),
        "MAFM3_WORKER_ENGINE": "fake_engine:FakeEngine",
        "PYTHONPATH": os.pathsep.join(filter(None, [FAKE_ENGINE_DIR, os.environ.get("PYTHONPATH")])),
    }
    logic = mafm3_slicer.MAFM3SlicerLogic(workerEnvironment=environment)
    yield logic
    logic.cleanup()


@pytest.fixture
def ct(mrml_scene):
    voxels = np.full((12, 14, 16), -1000, dtype=np.int16)
    voxels[2:10, 3:11, 3:13] = 30
    return volume_node(
        mrml_scene, voxels, ras_matrix(rotation_about_z(15.0), (1.1, 1.1, 3.0), (5, 5, 5)), "CT"
    )


@pytest.fixture
def pet(mrml_scene):
    voxels = np.full((8, 9, 10), 1.2, dtype=np.float32)
    return volume_node(
        mrml_scene, voxels, ras_matrix(rotation_about_z(15.0), (2.0, 2.0, 5.0), (4, 4, 3)), "PET"
    )


def kinds(updates):
    return [update.kind for update in updates]


def ends(updates):
    return [u for u in updates if u.kind in ("result", "error", "cancelled", "crashed")]


def wait_for_progress(logic):
    """Poll until the running job has reported progress (so it is running inside the worker)."""
    updates = []
    for _ in range(int(TIMEOUT_S)):
        updates += logic.pollJob(1.0)
        if "progress" in kinds(updates):
            return updates
    raise TimeoutError("The job reported no progress.")


def test_a_job_reports_progress_and_its_results_arrive_as_nodes(logic, ct, pet):
    job = logic.startJob(ct, pet, CLINICAL, ["fake-seg-petct", "fake-rfs"], device="cpu", overlap=0.5)
    assert logic.jobRunning

    updates = logic.waitForJob(TIMEOUT_S)

    assert kinds(updates)[0] == "ready" and kinds(updates)[-1] == "result", [u.message for u in updates]
    progress = [(u.stage, u.fraction, u.message) for u in updates if u.kind == "progress"]
    assert progress == fake_engine.PROGRESS
    (result,) = ends(updates)
    record, imported = result.record, result.imported
    assert record["inputs"]["clinical"] == ClinicalRecord.from_dict(CLINICAL).to_dict()
    assert record["inputs"]["pet"] is not None and record["demo"] is True
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(job.out_dir / LABEL_MAP_FILE)))
    for name, label in (("GTVp", 1), ("GTVn", 2)):
        on_ct = slicer.util.arrayFromSegmentBinaryLabelmap(imported.segmentation, name, ct)
        np.testing.assert_array_equal(on_ct > 0, written == label)
    assert written.any()
    (row,) = table_rows(imported.prognosis.table)
    assert (row["Skill"], row["Risk score"], row["S(5 y)"]) == ("fake-rfs", fake_engine.PROGNOSIS.risk, 0.4)
    assert logic.resultsFolder == job.folder and not logic.jobRunning


def test_cancel_stops_a_running_job_and_the_same_worker_runs_the_next(logic, ct):
    job = logic.startJob(ct, None, {}, ["fake-slow"])
    wait_for_progress(logic)

    logic.cancelJob()
    updates = logic.waitForJob(TIMEOUT_S)

    (cancelled,) = ends(updates)
    assert (cancelled.kind, cancelled.message) == ("cancelled", "Cancelled.")  # stopped by itself, not killed
    assert not job.folder.exists()
    logic.startJob(ct, None, CLINICAL, ["fake-rfs"])
    updates = logic.waitForJob(TIMEOUT_S)
    assert "ready" not in kinds(updates) and kinds(updates)[-1] == "result"  # no new worker was needed


def test_a_crashed_worker_is_reported_and_the_next_job_starts_a_new_one(logic, ct):
    job = logic.startJob(ct, None, {}, ["fake-crash"])

    updates = logic.waitForJob(TIMEOUT_S)

    crashed_pid = logic.runner.client.ready["pid"]  # the last worker that said hello: the one that crashed
    (crashed,) = ends(updates)
    assert crashed.kind == "crashed" and f"(exit code {fake_engine.CRASH_CODE})" in crashed.message
    assert not job.folder.exists() and not logic.workerStarted
    logic.startJob(ct, None, CLINICAL, ["fake-rfs"])
    updates = logic.waitForJob(TIMEOUT_S)
    (ready,) = [u for u in updates if u.kind == "ready"]
    assert ready.record["pid"] != crashed_pid and kinds(updates)[-1] == "result"


def test_results_of_a_job_whose_scene_closed_are_not_loaded(logic, ct, mrml_scene):
    logic.startJob(ct, None, CLINICAL, ["fake-rfs"])
    logic.forgetJobNodes()  # what the Widget does on the scene's StartCloseEvent
    tables_before = mrml_scene.GetNumberOfNodesByClass("vtkMRMLTableNode")

    (end,) = ends(logic.waitForJob(TIMEOUT_S))

    assert (end.kind, end.message) == (
        "error",
        "The CT of this job left the scene; its results were not loaded.",
    )
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == tables_before
