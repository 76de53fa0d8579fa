"""The correction record `mafm3 dataset add-case --prediction` writes, and `mafm3 dataset info`'s summary.

Oracle: a hand-made prediction / correction pair whose voxel counts are taken with numpy in the test (and
stated by construction in the comments); the record's identity fields come from the run's result.json.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from mafm3.cli import main

SPACING = (2.0, 2.0, 3.0)  # x, y, z mm: 12 mm3 voxels
SKILL = {"id": "tiny-seg-ct", "version": "1.1.0", "weights_sha256": "ab" * 32}
CT_UID, PET_UID = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"


def image(array: np.ndarray) -> sitk.Image:
    result = sitk.GetImageFromArray(array)
    result.SetSpacing(SPACING)
    result.SetOrigin((-10.0, 5.0, 30.0))
    return result


@pytest.fixture
def pair(tmp_path):
    """CT, the skill's prediction (a run folder; its labels use the skill's values GTVp 7, GTVn 3) and the
    annotator's correction (HECKTOR values GTVp 1, GTVn 2), all on one 16^3 grid."""
    ct = np.full((16, 16, 16), -1000.0, np.float32)
    ct[1:15, 1:15, 1:15] = 40.0  # soft tissue in air
    predicted = np.zeros(ct.shape, np.uint8)
    predicted[2:6, 2:6, 2:6] = 7  # GTVp: 64 voxels
    predicted[8:10, 8:10, 8:10] = 3  # GTVn: 8 voxels, which the annotator deletes
    corrected = np.zeros(ct.shape, np.uint8)
    corrected[3:8, 2:6, 2:6] = 1  # GTVp moved one slice and grown by one: 48 shared, 32 added, 16 removed
    corrected[2:5, 12:14, 12:14] = 2  # a node the skill missed: 12 voxels added
    sitk.WriteImage(image(ct), str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(image(corrected), str(tmp_path / "corrected.nii.gz"))
    run = tmp_path / "run"
    run.mkdir()
    sitk.WriteImage(image(predicted), str(run / "labels.nii.gz"))
    result = {
        "inputs": {
            "sources": {"ct": {"series_instance_uid": CT_UID}, "pet": {"series_instance_uid": PET_UID}}
        },
        "segmentation": {
            "skill": SKILL,
            "segments": [{"label": 7, "name": "GTVp"}, {"label": 3, "name": "GTVn"}],
        },
    }
    (run / "result.json").write_text(json.dumps(result))
    return tmp_path, predicted, corrected


def add_case(folder, *extra: str) -> int:
    command = ["dataset", "add-case", "--dataset", str(folder / "dataset"), "--ct", str(folder / "ct.nii.gz")]
    return main([*command, "--label", str(folder / "corrected.nii.gz"), "--id", "CASE-1", *extra])


def test_the_record_counts_the_voxels_added_and_removed_per_segment_and_their_dice(pair):
    folder, predicted, corrected = pair
    assert add_case(folder, "--prediction", str(folder / "run"), "--editing-seconds", "75") == 0

    record = json.loads((folder / "dataset" / "corrections" / "CASE-1.json").read_text())
    assert record["skill"] == SKILL and record["editing_seconds"] == 75.0 and record["case_id"] == "CASE-1"
    assert record["inputs"] == {"ct_series_instance_uid": CT_UID, "pet_series_instance_uid": PET_UID}
    assert record["saved_at"].endswith("+00:00")
    for name, skill_value, value in (("GTVp", 7, 1), ("GTVn", 3, 2)):
        before, after = predicted == skill_value, corrected == value
        shared = int((before & after).sum())
        expected = {
            "voxels_predicted": int(before.sum()),
            "voxels_corrected": int(after.sum()),
            "voxels_added": int((after & ~before).sum()),
            "voxels_removed": int((before & ~after).sum()),
        }
        segment = record["segments"][name]
        assert {key: segment[key] for key in expected} == expected
        assert segment["added_ml"] == pytest.approx(expected["voxels_added"] * 12 / 1000)
        dice = 2 * shared / (before.sum() + after.sum())
        assert segment["dice_prediction_vs_correction"] == pytest.approx(dice)
    assert record["segments"]["GTVp"]["dice_prediction_vs_correction"] == pytest.approx(2 * 48 / (64 + 80))
    assert (record["segments"]["GTVn"]["voxels_added"], record["segments"]["GTVn"]["voxels_removed"]) == (
        12,
        8,
    )


def test_a_prediction_on_another_grid_is_refused_in_one_sentence_and_nothing_is_written(pair, capsys):
    folder, predicted, _ = pair
    sitk.WriteImage(image(predicted[:, :, :-1]), str(folder / "run" / "labels.nii.gz"))

    assert add_case(folder, "--prediction", str(folder / "run")) == 1
    error = capsys.readouterr().err
    assert "not on the grid of the saved label" in error and error.count("\n") == 1
    assert not (folder / "dataset").exists()


def test_editing_seconds_without_a_prediction_are_refused(pair, capsys):
    folder, _, _ = pair
    assert add_case(folder, "--editing-seconds", "10") == 1
    assert "--prediction" in capsys.readouterr().err


def test_replacing_a_case_without_a_prediction_removes_its_old_record(pair):
    folder, _, _ = pair
    assert add_case(folder, "--prediction", str(folder / "run")) == 0
    assert add_case(folder, "--overwrite") == 0
    assert not (folder / "dataset" / "corrections" / "CASE-1.json").exists()


def test_dataset_info_gives_the_mean_dice_of_prediction_vs_correction_per_skill_version(pair, capsys):
    folder, _, _ = pair
    assert add_case(folder, "--prediction", str(folder / "run"), "--editing-seconds", "60") == 0
    record = json.loads((folder / "dataset" / "corrections" / "CASE-1.json").read_text())
    second = {**record, "case_id": "CASE-2", "editing_seconds": 20.0}
    second["segments"] = {
        **record["segments"],
        "GTVp": {**record["segments"]["GTVp"], "dice_prediction_vs_correction": 0.25},
    }
    (folder / "dataset" / "corrections" / "CASE-2.json").write_text(json.dumps(second))
    capsys.readouterr()

    assert main(["dataset", "info", str(folder / "dataset"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["corrections"]
    entry = summary["by_skill_version"]["tiny-seg-ct@1.1.0"]
    assert summary["cases_with_record"] == 2 and entry["cases"] == 2
    first = record["segments"]["GTVp"]["dice_prediction_vs_correction"]
    assert entry["GTVp"]["mean_dice_prediction_vs_correction"] == pytest.approx((first + 0.25) / 2)
    assert entry["mean_editing_seconds"] == pytest.approx(40.0)
    assert main(["dataset", "info", str(folder / "dataset")]) == 0
    said = f"tiny-seg-ct@1.1.0: 2 case(s), Dice prediction vs correction GTVp {(first + 0.25) / 2:.3f}"
    assert said in capsys.readouterr().out
