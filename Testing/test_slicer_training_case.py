"""MAFM3SlicerLib.training_case and the Logic's "Save case to training dataset": segments -> a HECKTOR-layout
case through the real `mafm3 dataset add-case`, read back with the core's own dataset reader."""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from synthetic_volumes import ras_matrix, rotation_about_z, volume_node

from mafm3.clinical import ClinicalRecord
from mafm3.training.datasets import read_hecktor
from MAFM3SlicerLib.errors import PanelError
from MAFM3SlicerLib.training_case import default_case_id, label_map_voxels

SHAPE_ZYX = (8, 10, 12)


@pytest.fixture
def ct(mrml_scene):
    voxels = np.random.default_rng(3).integers(-1000, 1500, size=SHAPE_ZYX).astype(np.int16)
    matrix = ras_matrix(rotation_about_z(40.0) @ np.diag([-1.0, 1.0, 1.0]), (0.9, 0.9, 2.0), (10, -20, 30))
    return volume_node(mrml_scene, voxels, matrix, "Planning CT #2")


def block(z, y, x) -> np.ndarray:
    mask = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    mask[z, y, x] = 1
    return mask


def segmentation_with(ct, segments: list[tuple[str, np.ndarray]]):
    """A segmentation on the CT drawn segment by segment: (name, (z, y, x) mask), names may repeat."""
    node = ct.GetScene().AddNewNodeByClass("vtkMRMLSegmentationNode", "Contours")
    node.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    for name, mask in segments:
        segment_id = node.GetSegmentation().AddEmptySegment("", name)
        slicer.util.updateSegmentBinaryLabelmapFromArray(mask, node, segment_id, ct)
    return node


GTVP_MASK = block(slice(2, 5), slice(3, 6), slice(4, 9))
GTVN_MASK = block(slice(5, 7), slice(1, 3), slice(8, 11))


def test_the_label_map_is_1_for_gtvp_2_for_gtvn_on_the_ct_grid_and_other_segments_stay_out(ct):
    other = block(slice(0, 8), slice(0, 10), slice(0, 2))
    segmentation = segmentation_with(ct, [("Spinal cord", other), ("GTVn", GTVN_MASK), ("GTVp", GTVP_MASK)])

    labels = label_map_voxels(segmentation, ct)

    np.testing.assert_array_equal(labels, GTVP_MASK * 1 + GTVN_MASK * 2)


def test_a_case_with_gtvn_only_keeps_label_2(ct):
    labels = label_map_voxels(segmentation_with(ct, [("GTVn", GTVN_MASK)]), ct)
    np.testing.assert_array_equal(labels, GTVN_MASK * 2)


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        ([("GTVp", GTVP_MASK), ("GTVn", GTVP_MASK)], f"GTVp and GTVn overlap in {GTVP_MASK.sum()} voxels;"),
        ([("GTVp", GTVP_MASK), ("GTVp", GTVN_MASK)], "2 segments are named GTVp; rename or delete"),
        ([("GTVn", GTVN_MASK), ("GTVp", GTVP_MASK), ("GTVn", GTVN_MASK)], "2 segments are named GTVn;"),
        ([("Tumour", GTVP_MASK)], "No segment of 'Contours' is named GTVp or GTVn;"),
    ],
)
def test_ambiguous_or_missing_tumour_segments_are_refused(ct, segments, message):
    with pytest.raises(PanelError, match=message):
        label_map_voxels(segmentation_with(ct, segments), ct)


def test_case_ids_keep_only_what_a_dataset_accepts():
    assert default_case_id("Planning CT #2") == "Planning_CT_2"
    assert default_case_id("***") == "case"


def test_saving_a_case_adds_ct_pet_label_and_clinical_record_to_a_dataset(mafm3_slicer, mrml_scene, tmp_path):
    voxels = np.full((16, 18, 20), -1000, dtype=np.int16)  # the core takes volumes of 16 voxels or more
    voxels[2:14, 3:15, 3:17] = 35
    matrix = ras_matrix(rotation_about_z(40.0) @ np.diag([-1.0, 1.0, 1.0]), (0.9, 0.9, 2.0), (10, -20, 30))
    ct = volume_node(mrml_scene, voxels, matrix, "CT")
    pet_voxels = np.random.default_rng(4).uniform(0.5, 9.0, size=(16, 17, 18)).astype(np.float32)
    pet = volume_node(mrml_scene, pet_voxels, ras_matrix(np.eye(3), (3.0, 3.0, 4.0), (-20, -50, 0)), "PET")
    gtvp, gtvn = np.zeros(voxels.shape, np.uint8), np.zeros(voxels.shape, np.uint8)
    gtvp[5:9, 6:10, 6:12] = 1
    gtvn[10:12, 4:6, 13:16] = 1
    segmentation = segmentation_with(ct, [("GTVp", gtvp), ("GTVn", gtvn)])
    clinical = {"age": 71.0, "sex": "F", "hpv": True, "t_stage": "T3", "performance_status": 1}
    logic = mafm3_slicer.MAFM3SlicerLogic()

    message = logic.saveCaseToDataset(tmp_path / "dataset", ct, pet, segmentation, clinical, "HN-001")

    assert message.startswith("added case HN-001")
    (case,) = read_hecktor(tmp_path / "dataset").cases
    assert case.clinical == ClinicalRecord.from_dict(clinical)
    label = sitk.ReadImage(str(case.label))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), gtvp * 1 + gtvn * 2)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(case.ct))), slicer.util.arrayFromVolume(ct)
    )
    np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(case.pet))), pet_voxels)
    label_grid = sitk.ReadImage(str(case.ct))
    np.testing.assert_allclose(label.GetDirection(), label_grid.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(label.GetOrigin(), label_grid.GetOrigin(), atol=1e-4)
