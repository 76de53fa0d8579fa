"""`prognosis.json` and `result.json`: each value read back equals what the test put in or counted itself.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from mafm3.outputs.json_io import DEMO_DISCLAIMER, result_record, write_prognosis_json, write_result_json
from mafm3.results import GTVN, GTVP, ClassificationResult, PrognosisResult, SegmentationResult, StudyResult

SPACING_MM = (0.8, 1.1, 2.5)

PROGNOSIS = PrognosisResult(
    risk=1.37,
    risk_group="high",
    times_days=[0.0, 365.0, 730.0, 1095.0, 1825.0],
    survival=[1.0, 0.81, 0.66, 0.58, 0.47],
    survival_at_years={1: 0.81, 2: 0.66, 3: 0.58, 5: 0.47},
    skill_id="hecktor-rfs-petct",
    skill_version="2.0.1",
)


def _segmentation() -> SegmentationResult:
    labels = np.zeros((6, 8, 10), dtype=np.uint8)
    labels[1:3, 2:5, 3:7] = GTVP.label  # 2·3·4 = 24 voxels
    labels[4:5, 5:7, 1:3] = GTVN.label  # 1·2·2 = 4 voxels
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(SPACING_MM)
    return SegmentationResult(image, [GTVP, GTVN], "hecktor-seg-petct", "1.1.0")


@pytest.mark.parametrize("demo", [False, True])
def test_prognosis_json_holds_risk_curve_and_yearly_probabilities(tmp_path, demo):
    record = json.loads(write_prognosis_json(PROGNOSIS, tmp_path / "prognosis.json", demo=demo).read_text())

    assert record["skill"] == {"id": "hecktor-rfs-petct", "version": "2.0.1"}
    assert record["risk"] == 1.37
    assert record["risk_group"] == "high"
    assert record["survival_curve"] == {
        "times_days": PROGNOSIS.times_days,
        "survival": PROGNOSIS.survival,
        "between": "linear",
    }
    assert record["survival_probability"] == {"1y": 0.81, "2y": 0.66, "3y": 0.58, "5y": 0.47}
    assert record["demo"] is demo
    assert record.get("disclaimer") == (DEMO_DISCLAIMER if demo else None)


def test_result_json_records_the_run(tmp_path):
    study = StudyResult(
        inputs={"ct": Path("/data/ct.nii.gz"), "pet": None, "clinical": {"age": 61}},
        segmentation=_segmentation(),
        prognosis=PROGNOSIS,
        classification=ClassificationResult({"lymphadenopathy": 0.7}, "ctclip-zero-shot", "1.0.0"),
        timings_s={"read": 1.5, "inference": 12.25},
        device="cuda:0",
        backbone={"id": "ct-clip-vit-b", "sha256": "ab" * 32},
        demo=True,
        peak_rss_gb=3.2,
    )
    outputs = ["segmentation.seg.nrrd", "report.html", "result.json"]

    record = json.loads(write_result_json(study, tmp_path / "result.json", outputs).read_text())

    assert record["demo"] is True and record["disclaimer"] == DEMO_DISCLAIMER
    assert record["inputs"] == {"ct": "/data/ct.nii.gz", "pet": None, "clinical": {"age": 61}}
    assert record["skills"] == [
        {"task": "segmentation", "id": "hecktor-seg-petct", "version": "1.1.0"},
        {"task": "prognosis", "id": "hecktor-rfs-petct", "version": "2.0.1"},
        {"task": "classification", "id": "ctclip-zero-shot", "version": "1.0.0"},
    ]
    assert record["backbone"] == {"id": "ct-clip-vit-b", "sha256": "ab" * 32}
    assert record["device"] == "cuda:0"
    assert record["timings_s"] == {"read": 1.5, "inference": 12.25}
    assert record["peak_rss_gb"] == 3.2
    voxel_ml = np.prod(SPACING_MM) / 1000
    assert record["segmentation"]["volumes_ml"] == pytest.approx(
        {"GTVp": 24 * voxel_ml, "GTVn": 4 * voxel_ml}
    )
    assert [s["name"] for s in record["segmentation"]["segments"]] == ["GTVp", "GTVn"]
    assert record["prognosis"]["survival_probability"]["5y"] == 0.47
    assert record["classification"]["probabilities"] == {"lymphadenopathy": 0.7}
    assert record["outputs"] == outputs
    assert isinstance(record["mafm3_version"], str)


def test_result_json_of_a_classification_only_run_has_no_segmentation_or_prognosis(tmp_path):
    study = StudyResult(inputs={}, classification=ClassificationResult({"mass": 0.2}, "zs", "1"))
    record = json.loads(write_result_json(study, tmp_path / "result.json").read_text())
    assert record["segmentation"] is None and record["prognosis"] is None
    assert record["skills"] == [{"task": "classification", "id": "zs", "version": "1"}]
    assert record["demo"] is False and "disclaimer" not in record


def test_the_record_the_worker_sends_and_result_json_carry_the_warnings(tmp_path):
    warnings = [
        "The PET had 12 voxels (0.001 %, slices 3-4) that were not numbers (NaN or infinite); set to 0."
    ]
    study = StudyResult(inputs={}, warnings=warnings)
    assert result_record(study)["warnings"] == warnings  # what `mafm3.worker` sends as its result
    assert json.loads(write_result_json(study, tmp_path / "result.json").read_text())["warnings"] == warnings
    assert result_record(StudyResult(inputs={}))["warnings"] == []
