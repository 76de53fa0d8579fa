"""`mafm3 eval` (`mafm3.training.evaluation`) and the UNETR baseline (`mafm3.training.baseline`).

Oracles: `mafm3 run` on a test case, scored with numpy against the reference label (eval must measure what
users get); Harrell's C counted pair by pair from the per-case CSV; the split recorded in the pack (which
cases are test cases, which were seen in training).
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from training_lab import train_options

from mafm3.cli import main
from mafm3.engine import runner as engine_runner
from mafm3.errors import MAFM3Error
from mafm3.skills.packs import install_pack
from mafm3.training.baseline import is_baseline
from mafm3.training.pipeline import train

EVAL = ["--device", "cpu", "--precision", "fp32", "--bootstrap", "20", "--quiet"]


@pytest.fixture(scope="module")
def segmentation_pack(lab, tmp_path_factory):
    out = tmp_path_factory.mktemp("packs") / "seg"
    train(train_options(lab, "segmentation", out, fold=0, folds=4, iterations=8, val_every=4))
    return out


def read_rows(path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    both = prediction.sum() + reference.sum()
    return 2 * (prediction & reference).sum() / both if both else math.nan


@pytest.fixture()
def image_thresholds(monkeypatch):
    """The network of every segmentation skill replaced by thresholds of its own CT input (model space):
    GTVp on the brightest 2 % of the box, GTVn on the next 8 %. A skill trained for 8 iterations predicts
    one class everywhere or nothing; these masks are partial and differ from case to case and from the
    reference, so the comparison below cannot pass on empty or full masks."""

    def segment(skill, prepared, window, **kwargs):
        ct = prepared.array[0]
        rank = ct.argsort(axis=None, kind="stable").argsort().reshape(ct.shape) / ct.size  # ties broken
        labels = np.select([rank >= 0.98, rank >= 0.9], [1, 2], 0).astype(np.uint8)
        return labels, np.zeros(labels.shape, np.float32)  # and a certain (0) uncertainty map

    monkeypatch.setattr(engine_runner, "segment", segment)


def test_a_fold_is_evaluated_on_its_test_cases_exactly_as_mafm3_run_segments_them(
    lab,
    segmentation_pack,
    image_thresholds,
    tmp_path,
):
    out = tmp_path / "metrics.json"
    command = ["eval", "--dataset", str(lab.cohort), "--skill", str(segmentation_pack), "--fold", "0"]
    assert main([*command, "--out", str(out), *EVAL]) == 0

    summary = json.loads(out.read_text())
    manifest = json.loads((segmentation_pack / "manifest.json").read_text())
    test_ids = manifest["training"]["split"]["folds"][0]["test_ids"]
    rows = read_rows(tmp_path / "metrics_per_case.csv")
    assert [row["case_id"] for row in rows] == test_ids
    assert summary["fold"] == 0 and summary["n_cases_seen_in_training"] == 0
    assert summary["metrics"]["n_cases"] == len(test_ids) and set(summary["metrics"]["classes"]) == {
        "GTVp",
        "GTVn",
    }
    assert summary["skill"]["weights_sha256"] == manifest["weights"]["sha256"]

    install_pack(segmentation_pack)
    case = test_ids[0]
    images = lab.cohort / "imagesTr"
    run = ["run", "--ct", str(images / f"{case}__CT.nii.gz"), "--pet", str(images / f"{case}__PT.nii.gz")]
    run += ["--pet-units", "suv", "--skill", manifest["id"], "--out", str(tmp_path / "run")]
    assert main([*run, "--device", "cpu", "--precision", "fp32", "--quiet"]) == 0
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "run" / "labels.nii.gz")))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(lab.cohort / "labelsTr" / f"{case}.nii.gz")))
    assert predicted.shape == reference.shape
    for label, name in ((1, "GTVp"), (2, "GTVn")):
        assert 0 < (predicted == label).sum() < predicted.size / 2  # a partial mask, neither empty nor all
        expected = dice(predicted == label, reference == label)
        got = float(rows[0][f"{name}_dice"]) if rows[0][f"{name}_dice"] else math.nan
        assert got == pytest.approx(expected, nan_ok=True)
        assert int(rows[0][f"{name}_prediction_voxels"]) == int((predicted == label).sum())


def test_a_fold_the_pack_trained_on_is_refused_and_without_fold_the_overlap_is_reported(
    lab,
    segmentation_pack,
    tmp_path,
    capsys,
):
    command = ["eval", "--dataset", str(lab.cohort), "--skill", str(segmentation_pack)]
    assert main([*command, "--fold", "1", "--out", str(tmp_path / "f1.json"), *EVAL]) == 1
    assert "trained on fold 0" in capsys.readouterr().err and not (tmp_path / "f1.json").exists()

    assert main([*command, "--out", str(tmp_path / "all.json"), *EVAL]) == 0
    summary = json.loads((tmp_path / "all.json").read_text())
    fold = json.loads((segmentation_pack / "manifest.json").read_text())["training"]["split"]["folds"][0]
    assert summary["fold"] is None and summary["metrics"]["n_cases"] == len(
        read_rows(tmp_path / "all_per_case.csv")
    )
    assert summary["n_cases_seen_in_training"] == len(fold["train_ids"]) + len(fold["val_ids"])
    assert summary["seen_in_training_by"] == "content"


def test_seen_in_training_compares_content_so_a_fresh_cohort_with_the_same_ids_is_unseen(
    lab, segmentation_pack, image_thresholds, tmp_path, capsys
):
    from mafm3.demo.writers import write_cohort

    fresh_ids = write_cohort(8, 1, tmp_path / "fresh", "tiny")  # other studies, ids from the same scheme
    manifest = json.loads((segmentation_pack / "manifest.json").read_text())
    fold = manifest["training"]["split"]["folds"][0]
    shared_ids = set(fresh_ids) & set(fold["train_ids"] + fold["val_ids"])
    assert shared_ids  # ids alone would call these cases seen
    command = ["eval", "--dataset", str(tmp_path / "fresh"), "--skill", str(segmentation_pack)]
    assert main([*command, "--out", str(tmp_path / "fresh.json"), *EVAL]) == 0
    summary = json.loads((tmp_path / "fresh.json").read_text())
    assert summary["n_cases_seen_in_training"] == 0 and summary["seen_in_training_by"] == "content"

    # A pack from before content hashes: ids are all there is, and the note says so.
    old = tmp_path / "old-pack"
    old.mkdir()
    (old / "weights.safetensors").write_bytes((segmentation_pack / "weights.safetensors").read_bytes())
    del manifest["training"]["case_content_sha256"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    command = ["eval", "--dataset", str(tmp_path / "fresh"), "--skill", str(old)]
    assert main([*command, "--out", str(tmp_path / "old.json"), *EVAL[:-1]]) == 0
    summary = json.loads((tmp_path / "old.json").read_text())
    assert (
        summary["n_cases_seen_in_training"] == len(shared_ids) and summary["seen_in_training_by"] == "case id"
    )
    assert f"note: {len(shared_ids)} of these cases were used in training (matched by case id only" in (
        capsys.readouterr().out
    )


def test_eval_reports_the_authors_dice_beside_ours(lab, segmentation_pack, image_thresholds, tmp_path):
    out = tmp_path / "metrics.json"
    command = ["eval", "--dataset", str(lab.cohort), "--skill", str(segmentation_pack), "--fold", "0"]
    assert main([*command, "--out", str(out), *EVAL]) == 0
    authors = json.loads(out.read_text())["metrics"]["authors"]
    rows = read_rows(tmp_path / "metrics_per_case.csv")
    per_case = []
    for row in rows:  # MONAI's "mean": the defined classes of each case, then the cases
        cells = [row[f"authors_dice_{name}"] for name in ("background", "GTVp", "GTVn")]
        defined = [float(cell) for cell in cells if cell]  # an empty cell: NaN, a class without ground truth
        per_case.append(sum(defined) / len(defined))
    assert authors["dice"] == pytest.approx(sum(per_case) / len(per_case), rel=1e-12)
    assert authors["classes"]["background"] > 0.9  # the ROI is mostly background, which the authors count
    assert "include_background=True" in authors["definition"]


def test_prognosis_eval_reports_harrells_c_with_the_sign_of_risk(lab, tmp_path):
    pack = tmp_path / "prognosis"
    train(train_options(lab, "prognosis", pack, iterations=None, epochs=2, batch_size=2))
    out = tmp_path / "prognosis.json"
    assert main(["eval", "--dataset", str(lab.cohort), "--skill", str(pack), "--out", str(out), *EVAL]) == 0

    metrics = json.loads(out.read_text())["metrics"]
    rows = read_rows(tmp_path / "prognosis_per_case.csv")
    time = np.array([float(row["rfs_days"]) for row in rows])
    event = np.array([row["relapse"] == "1" for row in rows])
    risk = np.array([float(row["risk"]) for row in rows])
    concordant, comparable = 0.0, 0
    for i in np.flatnonzero(event):
        for j in np.flatnonzero(time > time[i]):  # i relapsed before j's follow-up ended
            comparable += 1
            concordant += 1.0 if risk[i] > risk[j] else 0.5 if risk[i] == risk[j] else 0.0
    assert metrics["harrell_c"] == pytest.approx(concordant / comparable)
    assert metrics["n_cases"] == len(rows) and metrics["n_events"] == int(event.sum())
    assert metrics["harrell_c_ci"]["n_resamples"] == 20
    assert 0 <= metrics["uno_c"] <= 1 and metrics["time_dependent_auc"]["times_days"]
    assert {row["risk_group"] for row in rows} <= {"low", "intermediate", "high"}


def test_the_unetr_baseline_trains_on_the_same_data_and_is_evaluated_side_by_side(
    lab,
    segmentation_pack,
    tmp_path,
):
    out = tmp_path / "unetr"
    result = train(
        train_options(
            lab, "segmentation", out, fold=0, folds=4, iterations=2, baseline="unetr", baseline_size="small"
        )
    )
    manifest = json.loads((out / "manifest.json").read_text())
    skill = json.loads((segmentation_pack / "manifest.json").read_text())
    assert is_baseline(out) and manifest["baseline"] == "unetr" and result.manifest["task"] == "segmentation"
    assert manifest["unetr"]["img_size"] == skill["inference"]["window_voxels"]
    assert manifest["unetr"]["proj_type"] == "perceptron" and manifest["unetr"]["in_channels"] == 1
    assert (
        manifest["training"]["split"] == skill["training"]["split"]
        and manifest["training"]["backbone"] is None
    )
    assert manifest["preprocessing"] == skill["preprocessing"]
    with pytest.raises(MAFM3Error):
        install_pack(out)  # a checkpoint folder, not an installable skill

    metrics = tmp_path / "unetr.json"
    command = [
        "eval",
        "--dataset",
        str(lab.cohort),
        "--skill",
        str(out),
        "--fold",
        "0",
        "--out",
        str(metrics),
    ]
    assert main([*command, *EVAL]) == 0
    summary = json.loads(metrics.read_text())
    assert summary["skill"]["baseline"] == "unetr"
    test_ids = skill["training"]["split"]["folds"][0]["test_ids"]
    assert [row["case_id"] for row in read_rows(tmp_path / "unetr_per_case.csv")] == test_ids


@pytest.mark.slow
def test_eval_takes_a_shipped_skill_id_and_names_the_cases_it_skipped(tmp_path, monkeypatch, capsys):
    from mafm3.demo.writers import write_cohort

    monkeypatch.setenv("MAFM3_HOME", str(tmp_path / "home"))  # nothing installed: the id is a shipped one
    ids = write_cohort(2, 5, tmp_path / "cohort", "tiny")
    (tmp_path / "cohort" / "labelsTr" / f"{ids[1]}.nii.gz").unlink()
    out = tmp_path / "results" / "metrics.json"  # a folder that does not exist yet is made
    command = ["eval", "--dataset", str(tmp_path / "cohort"), "--skill", "demo-seg-petct", "--out", str(out)]
    assert main([*command, *EVAL[:-1]]) == 0
    summary = json.loads(out.read_text())
    assert summary["skill"]["id"] == "demo-seg-petct" and summary["metrics"]["n_cases"] == 1
    assert summary["skipped_cases"] == [{"case_id": ids[1], "reason": "no label file"}]
    assert f"skipped 1 case(s): {ids[1]} (no label file)" in capsys.readouterr().out


@pytest.mark.parametrize("out", ["a_folder", "a_file/metrics.json"])
def test_eval_refuses_an_out_it_cannot_write_before_evaluating_anything(out, tmp_path, capsys):
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    command = ["eval", "--dataset", str(tmp_path / "no-such-dataset"), "--skill", "demo-seg-petct"]
    assert main([*command, "--out", str(tmp_path / out)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "Traceback" not in error
    assert ("is a folder" if out == "a_folder" else "cannot be written") in error  # not the dataset's error
