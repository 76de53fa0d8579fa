"""QC flags: each raised by the situation it names, and not otherwise."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from mafm3.clinical import ClinicalRecord
from mafm3.engine.quality import labels_on_box_edge, qc_flags
from mafm3.imaging.measurements import measure_lesions
from mafm3.imaging.resample import Grid
from mafm3.results import GTVN, GTVP, SegmentationResult


def _result(labels_zyx: np.ndarray) -> SegmentationResult:
    labels = sitk.GetImageFromArray(labels_zyx.astype(np.uint8))
    labels.SetSpacing((1.0, 1.0, 2.0))
    ct = sitk.Image(labels.GetSize(), sitk.sitkInt16)
    ct.CopyInformation(labels)
    result = SegmentationResult(labels, [GTVP, GTVN], "s", "1")
    result.measurements = measure_lesions(labels, [1, 2], ct)
    return result


# The model's box: voxels 5..24 (x, y) and 2..11 (z) of the CT grid, at the same spacing.
BOX = Grid(
    size=(20, 20, 10), spacing=(1.0, 1.0, 2.0), origin=(5.0, 5.0, 4.0), direction=tuple(np.eye(3).ravel())
)


def _codes(flags) -> list[str]:
    return [flag.code for flag in flags]


def test_an_empty_segmentation_is_flagged_as_no_lesion():
    flags = qc_flags(_result(np.zeros((16, 30, 30))), BOX, None)
    assert _codes(flags) == ["no-lesion"]
    assert flags[0].message.endswith(".") and flags[0].message.count(". ") == 0  # one sentence


def test_a_lesion_on_the_box_face_is_flagged_and_one_inside_is_not():
    labels = np.zeros((16, 30, 30))
    labels[5:8, 10:14, 10:14] = 1  # well inside the box
    assert qc_flags(_result(labels), BOX, None) == []
    labels[5:8, 10:14, 22:25] = 2  # x index 24 is the box's last column
    assert labels_on_box_edge(_result(labels).labels, BOX) == {2}
    assert _codes(qc_flags(_result(labels), BOX, None)) == ["roi-border"]


def test_nodes_disagreeing_with_the_n_stage_are_flagged():
    primary_only = np.zeros((16, 30, 30))
    primary_only[5:8, 10:14, 10:14] = 1
    with_node = primary_only.copy()
    with_node[5:7, 18:20, 18:20] = 2
    assert _codes(qc_flags(_result(with_node), BOX, ClinicalRecord(n_stage="N0"))) == ["nodes-vs-n-stage"]
    assert _codes(qc_flags(_result(primary_only), BOX, ClinicalRecord(n_stage="N2b"))) == ["nodes-vs-n-stage"]
    assert qc_flags(_result(with_node), BOX, ClinicalRecord(n_stage="N1")) == []
    assert qc_flags(_result(primary_only), BOX, ClinicalRecord(n_stage="N0")) == []
    assert qc_flags(_result(with_node), BOX, ClinicalRecord()) == []


def test_a_misregistered_pet_recorded_by_the_input_check_is_flagged():
    labels = np.zeros((16, 30, 30))
    labels[5:8, 10:14, 10:14] = 1
    record = {"overlap_fraction": 1.0, "body_outline_dice": 0.7, "best_fit_shift_mm": [0, 0, -24.0]}
    flags = qc_flags(_result(labels), BOX, None, record | {"misregistered": True})
    assert _codes(flags) == ["pet-ct-misregistered"]
    assert qc_flags(_result(labels), BOX, None, record | {"misregistered": False}) == []
