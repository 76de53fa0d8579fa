"""The annotator's loop through the panel's Logic, headless against real MRML and the real worker process
(`python -m mafm3.worker` with python_core/tests/fake_engine.py as engine): two corrected cases saved with
their correction records, Improve with progress and the comparison, the switch to the new version (which the
next run then uses) and the way back.

The skill is the demo segmentation skill shipped with mafm3 (real manifest and weights, which `mafm3 skill
install` verifies when the new version is installed); the fake engine stands in for the model, so its
predictions and Dice values are the fake's constants. The correction numbers are counted here with numpy
from the masks before and after the edit.
"""

import json
import os
import time
from pathlib import Path

import fake_engine
import numpy as np
import pytest
import slicer
from skill_packs import write_pack
from synthetic_volumes import ras_matrix, rotation_about_z, volume_node

from MAFM3SlicerLib.errors import PanelError
from MAFM3SlicerLib.result_nodes import TAG_SKILL_VERSION, segment_tag

REPOSITORY_DIR = Path(__file__).resolve().parents[1]
FAKE_ENGINE_DIR = str(REPOSITORY_DIR / "python_core" / "tests")
SHIPPED_SKILL = REPOSITORY_DIR / "python_core/src/mafm3/demo/assets/skills/demo-seg-ct-1.0.0/manifest.json"
SKILL_ID = "demo-seg-ct"
TIMEOUT_S = 120.0  # a fresh worker imports torch before it answers
CT_SERIES_UID = "1.2.826.0.1.3680043.8.498.17001"


class Clock:
    """Stands for time.monotonic: the test says when results are imported and cases saved."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logic(mafm3_slicer, mrml_scene, tmp_path, monkeypatch):
    """The module's Logic with a MAFM3_HOME of the test's own (the shipped demo skills stay visible, to this
    process and to the worker) and the fake engine in its worker; stopped and cleaned up after the test."""
    home = tmp_path / "mafm3_home"
    (home / "skills").mkdir(parents=True)
    monkeypatch.setenv("MAFM3_HOME", str(home))
    environment = {
        **os.environ,
        "MAFM3_WORKER_ENGINE": "fake_engine:FakeEngine",
        "PYTHONPATH": os.pathsep.join(filter(None, [FAKE_ENGINE_DIR, os.environ.get("PYTHONPATH")])),
    }
    logic = mafm3_slicer.MAFM3SlicerLogic(workerEnvironment=environment)
    logic.temporaryDir = tmp_path / "slicer-temporary"
    logic.temporaryDir.mkdir()
    logic.clock = Clock()
    yield logic
    logic.cleanup()
    assert list(logic.temporaryDir.iterdir()) == []  # no job folder is left behind


def ct_node(scene, shape, name, series_uid=None):
    voxels = np.full(shape, -1000, dtype=np.int16)
    voxels[2:-2, 3:-3, 3:-3] = 40
    matrix = ras_matrix(rotation_about_z(20.0), (0.9, 0.9, 2.5), (12.0, -30.0, 55.0))
    node = volume_node(scene, voxels, matrix, name)
    if series_uid is not None:  # what Slicer's DICOM module records for a series it loaded
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)
        hierarchy.SetItemUID(item, "DICOM", series_uid)
    return node


def run_skill(logic, ct):
    """Run the skill on the CT through the worker; the updates and the segmentation the result went into."""
    job = logic.startJob(ct, None, {}, [SKILL_ID], device="cpu")
    updates = logic.waitForJob(TIMEOUT_S)
    assert updates[-1].kind == "result", [u.message for u in updates]
    assert job.out_dir.is_dir()
    return updates[-1].imported.segmentation


def segment_id(segmentation, name):
    (found,) = [
        segmentation.GetSegmentation().GetNthSegmentID(i)
        for i in range(segmentation.GetSegmentation().GetNumberOfSegments())
        if segmentation.GetSegmentation().GetNthSegment(i).GetName() == name
    ]
    return found


def mask(segmentation, name, ct):
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id(segmentation, name), ct) > 0


def paint(segmentation, name, ct, new_mask):
    """What the Segment Editor does to a segment: its voxels become `new_mask` (on the CT grid)."""
    slicer.util.updateSegmentBinaryLabelmapFromArray(
        new_mask.astype(np.uint8), segmentation, segment_id(segmentation, name), ct
    )


def expected_counts(predicted, corrected):
    both = int(np.count_nonzero(predicted & corrected))
    total = int(np.count_nonzero(predicted)) + int(np.count_nonzero(corrected))
    return {
        "voxels_added": int(np.count_nonzero(corrected & ~predicted)),
        "voxels_removed": int(np.count_nonzero(predicted & ~corrected)),
        "dice_prediction_vs_correction": 2 * both / total,
    }


def recorded(record, segment):
    values = record["segments"][segment]
    return {key: values[key] for key in ("voxels_added", "voxels_removed", "dice_prediction_vs_correction")}


def shipped_versions(logic):
    """(version, active) of the skill's versions, as the panel lists them."""
    return [(s.version, s.active) for s in logic.availableSkills() if s.id == SKILL_ID]


def test_saved_corrections_improve_the_skill_the_panel_switches_to_it_and_back(logic, mrml_scene, tmp_path):
    dataset = tmp_path / "dataset"
    # Two studies, both run before either is saved: each segmentation keeps its own prediction.
    ct_1 = ct_node(mrml_scene, (20, 24, 28), "CT 1", series_uid=CT_SERIES_UID)
    ct_2 = ct_node(mrml_scene, (18, 22, 26), "CT 2")
    logic.clock.now = 1000.0
    segmentation_1 = run_skill(logic, ct_1)
    logic.clock.now = 1010.0
    segmentation_2 = run_skill(logic, ct_2)
    assert segmentation_1 is not segmentation_2

    # Case 1: GTVp grows by a slab below it and loses its top slice; GTVn stays as predicted.
    gtvp_1, gtvn_1 = mask(segmentation_1, "GTVp", ct_1), mask(segmentation_1, "GTVn", ct_1)
    z = np.flatnonzero(gtvp_1.any(axis=(1, 2)))
    corrected_gtvp_1 = gtvp_1.copy()
    corrected_gtvp_1[z[0] - 2 : z[0]] = gtvp_1[z[0]]  # two slices added, shaped like its lowest one
    corrected_gtvp_1[z[-1]] = False  # its top slice removed
    paint(segmentation_1, "GTVp", ct_1, corrected_gtvp_1)
    # Case 2: the predicted node is wrong and erased; GTVp is kept.
    gtvn_2 = mask(segmentation_2, "GTVn", ct_2)
    paint(segmentation_2, "GTVn", ct_2, np.zeros_like(gtvn_2))
    assert gtvp_1.any() and gtvn_1.any() and gtvn_2.any()

    logic.clock.now = 1042.5  # 42.5 s after case 1's result arrived
    logic.saveCaseToDataset(dataset, ct_1, None, segmentation_1, {}, "HN-001")
    logic.clock.now = 1100.0  # 90 s after case 2's
    message = logic.saveCaseToDataset(dataset, ct_2, None, segmentation_2, {}, "HN-002")

    assert "correction record" in message
    weights_sha256 = json.loads(SHIPPED_SKILL.read_text())["weights"]["sha256"]
    record_1 = json.loads((dataset / "corrections" / "HN-001.json").read_text())
    record_2 = json.loads((dataset / "corrections" / "HN-002.json").read_text())
    assert (
        record_1["skill"]
        == record_2["skill"]
        == {
            "id": SKILL_ID,
            "version": "1.0.0",
            "weights_sha256": weights_sha256,
        }
    )
    assert (record_1["editing_seconds"], record_2["editing_seconds"]) == (42.5, 90.0)
    assert record_1["inputs"]["ct_series_instance_uid"] == CT_SERIES_UID
    assert record_2["inputs"]["ct_series_instance_uid"] is None  # not loaded from DICOM
    assert recorded(record_1, "GTVp") == pytest.approx(expected_counts(gtvp_1, corrected_gtvp_1))
    assert recorded(record_1, "GTVn") == {
        "voxels_added": 0,
        "voxels_removed": 0,
        "dice_prediction_vs_correction": 1.0,
    }
    assert recorded(record_2, "GTVn") == {
        "voxels_added": 0,
        "voxels_removed": int(np.count_nonzero(gtvn_2)),
        "dice_prediction_vs_correction": 0.0,
    }
    assert recorded(record_2, "GTVp")["dice_prediction_vs_correction"] == 1.0
    # The effort the panel shows for the dataset: the mean of the two cases per segment, and of the times.
    gtvp_dice = np.mean([expected_counts(gtvp_1, corrected_gtvp_1)["dice_prediction_vs_correction"], 1.0])
    assert logic.datasetEffort(dataset) == [
        "2 cases labelled, 2 with a correction record.",
        f"demo-seg-ct 1.0.0: 2 cases, Dice of prediction vs correction GTVp {gtvp_dice:.3f}, GTVn 0.500; "
        "66 s editing on average.",
    ]

    # Improve: progress from the worker, then the comparison; nothing is installed before the answer.
    logic.startImprovement(SKILL_ID, "1.0.0", dataset)
    assert logic.runningOp == "improve"
    updates = logic.waitForJob(TIMEOUT_S)

    progress = [(u.stage, u.fraction, u.message) for u in updates if u.kind == "progress"]
    assert progress == fake_engine.IMPROVE_PROGRESS
    assert updates[-1].kind == "result", [u.message for u in updates]
    improvement = updates[-1].imported
    assert improvement is logic.improvement and improvement.not_worse
    assert (improvement.current_version, improvement.new_version) == ("1.0.0", "1.1.0")
    assert improvement.held_out_cases == len(fake_engine.FAKE_HELD_OUT)
    dice = {row.name: {v: e.value for v, e in row.dice.items()} for row in improvement.classes}
    assert dice == {
        name: {version: fake_engine.FAKE_DICE[version][name] for version in ("current", "new")}
        for name in ("GTVp", "GTVn")
    }
    shown = improvement.html()
    assert "current 1.0.0 vs new 1.1.0 on 2 held-out" in shown
    current, new = (fake_engine.FAKE_DICE[version]["GTVp"] for version in ("current", "new"))
    assert (  # the fake's intervals: the mean +- 0.1 for Dice, 4 to 6 mm around an HD95 of 5 mm
        f"<td>GTVp</td><td>{current:.3f} ({current - 0.1:.3f} to {current + 0.1:.3f})</td>"
        f"<td>{new:.3f} ({new - 0.1:.3f} to {new + 0.1:.3f})</td><td>{new - current:+.3f}</td>"
        "<td>5.0 (4.0 to 6.0)</td>"
    ) in shown
    assert shipped_versions(logic) == [("1.0.0", True)]

    # Switching (the panel's Yes): installed beside 1.0.0, active, and the warm worker's next run uses it.
    assert logic.adoptImprovement().startswith(f"{SKILL_ID} now runs version 1.1.0 (was 1.0.0);")
    assert shipped_versions(logic) == [("1.0.0", False), ("1.1.0", True)]
    assert logic.previousVersions == {SKILL_ID: "1.0.0"} and logic.improvement is None
    rerun = run_skill(logic, ct_node(mrml_scene, (20, 24, 28), "CT 3"))
    assert segment_tag(rerun.GetSegmentation().GetSegment(segment_id(rerun, "GTVp")), TAG_SKILL_VERSION) == (
        "1.1.0"
    )

    # The way back: the version active before the switch.
    logic.useSkillVersion(SKILL_ID, logic.previousVersions[SKILL_ID])
    assert shipped_versions(logic) == [("1.0.0", True), ("1.1.0", False)]
    back = run_skill(logic, ct_node(mrml_scene, (20, 24, 28), "CT 4"))
    assert segment_tag(back.GetSegmentation().GetSegment(segment_id(back, "GTVp")), TAG_SKILL_VERSION) == (
        "1.0.0"
    )


def test_a_case_drawn_by_hand_is_saved_without_a_correction_record(logic, mrml_scene, tmp_path):
    run_skill(logic, ct_node(mrml_scene, (20, 24, 28), "Another CT"))  # a prediction, of another segmentation
    ct = ct_node(mrml_scene, (20, 24, 28), "CT")
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Drawn")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    segmentation.GetSegmentation().AddEmptySegment("GTVp", "GTVp")
    drawn = np.zeros((20, 24, 28), dtype=bool)
    drawn[8:12, 10:14, 10:15] = True
    paint(segmentation, "GTVp", ct, drawn)

    message = logic.saveCaseToDataset(tmp_path / "dataset", ct, None, segmentation, {}, "HN-009")

    assert message.startswith("added case HN-009") and "correction record" not in message
    assert not (tmp_path / "dataset" / "corrections").exists()


def test_predictions_are_kept_while_their_segmentation_is_in_the_scene_without_their_inputs(
    logic, mrml_scene
):
    ct = ct_node(mrml_scene, (20, 24, 28), "CT")
    segmentation = run_skill(logic, ct)
    prediction = logic.predictionFor(segmentation, ct)
    deleted_ct = ct_node(mrml_scene, (20, 24, 28), "CT deleted")
    deleted_segmentation = run_skill(logic, deleted_ct)
    deleted = logic.predictionFor(deleted_segmentation, deleted_ct)
    mrml_scene.RemoveNode(deleted_segmentation)  # the annotator deletes it
    last = run_skill(logic, ct_node(mrml_scene, (18, 22, 26), "CT 2"))

    assert prediction.folder.is_dir() and (prediction.out_dir / "labels.nii.gz").is_file()
    assert sorted(path.name for path in prediction.folder.iterdir()) == ["out"]  # the CT copy is gone
    assert not deleted.folder.exists()  # its segmentation left the scene
    assert logic.predictionFor(last, mrml_scene.GetFirstNodeByName("CT 2")) is not None

    logic.forgetPredictions()  # what the Widget does when the scene closes

    assert logic.predictionFor(segmentation, ct) is None and not prediction.folder.exists()
    assert logic.resultsFolder.is_dir()  # the last run's folder stays for its report


def test_an_improvement_the_gate_finds_worse_is_never_installed(logic, tmp_path):
    write_pack(tmp_path / "mafm3_home" / "skills", "fake-seg-worse", demo=True)

    logic.startImprovement("fake-seg-worse", "1.0.0", tmp_path)
    (end,) = [u for u in logic.waitForJob(TIMEOUT_S) if u.kind == "result"]

    improvement = end.imported
    assert not improvement.not_worse and "1.0.0 stays" in improvement.message
    assert "Worse: mean Dice over classes fell." in improvement.html()
    with pytest.raises(PanelError, match="fake-seg-worse 1.1.0 is worse on the held-out cases; 1.0.0 stays."):
        logic.adoptImprovement()
    assert [(s.version, s.active) for s in logic.availableSkills() if s.id == "fake-seg-worse"] == [
        ("1.0.0", True)
    ]


def test_cancel_stops_an_improvement_and_deletes_its_folder(logic, tmp_path):
    write_pack(tmp_path / "mafm3_home" / "skills", "fake-seg-slow", demo=True)
    job = logic.startImprovement("fake-seg-slow", "1.0.0", tmp_path)
    deadline = time.monotonic() + TIMEOUT_S
    while not any(u.kind == "progress" for u in logic.pollJob(1.0)):
        assert time.monotonic() < deadline, "the improvement reported no progress"

    logic.cancelJob()
    ends = [u for u in logic.waitForJob(TIMEOUT_S) if u.kind in ("result", "error", "cancelled", "crashed")]

    assert [(u.kind, u.message) for u in ends] == [("cancelled", "Cancelled.")]
    assert not job.folder.exists() and logic.improvement is None and not logic.jobRunning


def test_an_improvement_needs_an_existing_dataset_folder(logic, tmp_path):
    with pytest.raises(PanelError, match="The dataset folder .*missing does not exist; choose the folder"):
        logic.startImprovement(SKILL_ID, "1.0.0", tmp_path / "missing")
    assert not logic.jobRunning and list(logic.temporaryDir.iterdir()) == []
