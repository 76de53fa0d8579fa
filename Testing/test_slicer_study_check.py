"""MAFM3SlicerLib.study_check: the checks a study passes before any skill runs."""

import numpy as np
import pytest
import slicer
from synthetic_volumes import ras_matrix, rotation_about_z, volume_node

from MAFM3SlicerLib.study_check import COVERAGE_GRID, MIN_PET_COVERAGE, describe_study, pet_coverage_of_ct

AXES = rotation_about_z(20.0)  # oblique, shared by CT and PET unless a test says otherwise
CT_ORIGIN = np.array([10.0, -5.0, 20.0])  # RAS, mm
CT_SPACING = (1.0, 1.2, 2.0)  # mm along x, y, z
CT_SHAPE_ZYX = (10, 12, 15)


def ct_voxels() -> np.ndarray:
    """Air (-1000 HU) around a soft-tissue block (40 HU)."""
    voxels = np.full(CT_SHAPE_ZYX, -1000, dtype=np.int16)
    voxels[2:8, 3:9, 3:12] = 40
    return voxels


def pet_voxels(shape_zyx, background_suv: float = 1.0) -> np.ndarray:
    voxels = np.full(shape_zyx, background_suv, dtype=np.float32)
    voxels[1:3, 1:3, 1:3] = 12.0 * background_suv  # a hot lesion
    return voxels


@pytest.fixture
def ct(mrml_scene):
    return volume_node(mrml_scene, ct_voxels(), ras_matrix(AXES, CT_SPACING, CT_ORIGIN), "CT")


def pet_on_the_ct_grid(scene, size_x: int, shift_mm=(0.0, 0.0, 0.0), background_suv: float = 1.0):
    """A PET on the CT's grid, cut to `size_x` voxels along x: it spans CT x indices -0.5 .. size_x - 0.5."""
    matrix = ras_matrix(AXES, CT_SPACING, CT_ORIGIN + np.asarray(shift_mm))
    return volume_node(
        scene, pet_voxels((CT_SHAPE_ZYX[0], CT_SHAPE_ZYX[1], size_x), background_suv), matrix, "PET"
    )


def test_a_ct_with_a_coarser_mirrored_pet_over_it_passes_with_full_coverage(mrml_scene, ct):
    # PET x axis runs against the CT's, from CT x = 15 mm down; 9 x 7 x 6 voxels of 2 x 2.4 x 4 mm cover the
    # CT.
    pet_axes = AXES @ np.diag([-1.0, 1.0, 1.0])
    pet_matrix = ras_matrix(pet_axes, (2.0, 2.4, 4.0), CT_ORIGIN + AXES @ [15.0, 0.0, 0.0])
    pet = volume_node(mrml_scene, pet_voxels((6, 7, 9)), pet_matrix, "PET")

    description = describe_study(ct, pet)

    assert description.problems == ()
    assert description.pet_coverage_of_ct == 1.0
    assert description.lines()[0].startswith("CT 'CT': 15 x 12 x 10 voxels of 1.00 x 1.20 x 2.00 mm")
    assert description.lines()[1].startswith("PET 'PET': 9 x 7 x 6 voxels of 2.00 x 2.40 x 4.00 mm")


@pytest.mark.parametrize("size_x", [8, 6])
def test_coverage_is_the_share_of_ct_sample_points_inside_the_pet(mrml_scene, ct, size_x):
    sample_x = np.linspace(0, CT_SHAPE_ZYX[2] - 1, COVERAGE_GRID)  # CT x indices of the sample points
    expected = float(np.mean(sample_x <= size_x - 0.5))
    assert 0 < expected < 1

    description = describe_study(ct, pet_on_the_ct_grid(mrml_scene, size_x))

    assert description.pet_coverage_of_ct == pytest.approx(expected)
    partial = [p for p in description.problems if "covers only" in p]
    assert len(partial) == (1 if expected < MIN_PET_COVERAGE else 0)
    if partial:
        assert f"covers only {expected:.0%} of the CT 'CT'" in partial[0]


def test_a_pet_a_metre_away_does_not_overlap(mrml_scene, ct):
    pet = pet_on_the_ct_grid(mrml_scene, CT_SHAPE_ZYX[2], shift_mm=(0.0, 0.0, 1000.0))
    assert pet_coverage_of_ct(ct, pet) == 0.0
    assert describe_study(ct, pet).problems == (
        "The PET 'PET' and the CT 'CT' do not overlap in space; select the PET of the same PET/CT study.",
    )


def test_without_a_ct_the_only_problem_is_to_select_one():
    assert describe_study(None).problems == ("Select a CT volume.",)


def test_a_single_slice_is_refused_as_two_dimensional(mrml_scene):
    ct = volume_node(mrml_scene, ct_voxels()[:1], ras_matrix(AXES, CT_SPACING, CT_ORIGIN), "Scout")
    assert describe_study(ct).problems == ("The CT 'Scout' is 2-D (15 x 12 x 1 voxels); select a 3-D CT.",)


def test_a_colour_image_is_refused(mrml_scene):
    node = mrml_scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "Photo")
    slicer.util.updateVolumeFromArray(node, np.zeros((4, 5, 6, 3), dtype=np.uint8))
    assert "has 3 values per voxel (a colour or vector image)" in describe_study(node).problems[0]


def test_a_node_without_voxels_is_refused(mrml_scene):
    node = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Empty")
    assert describe_study(node).problems == ("The CT 'Empty' holds no voxels; load it again.",)


def test_values_without_air_are_not_taken_for_hounsfield_units(mrml_scene):
    mr_like = np.linspace(0, 800, num=np.prod(CT_SHAPE_ZYX)).reshape(CT_SHAPE_ZYX)
    node = volume_node(mrml_scene, mr_like, ras_matrix(AXES, CT_SPACING, CT_ORIGIN), "T1")

    (problem,) = describe_study(node).problems

    assert f"(1st percentile {np.percentile(mr_like, 1):.1f})" in problem
    assert "does not look like a CT in Hounsfield units" in problem


def test_a_ct_under_a_transform_must_be_hardened(mrml_scene, ct):
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Shift")
    ct.SetAndObserveTransformNodeID(transform.GetID())
    (problem,) = describe_study(ct).problems
    assert problem.startswith("The CT 'CT' is under the transform 'Shift'; harden or remove the transform")


def test_a_pet_in_activity_concentration_is_not_taken_for_suv(mrml_scene, ct):
    pet = pet_on_the_ct_grid(mrml_scene, CT_SHAPE_ZYX[2], background_suv=5000.0)  # Bq/mL of a typical body
    (problem,) = describe_study(ct, pet).problems
    assert "which is activity concentration, not SUV" in problem


def test_a_second_ct_chosen_as_pet_is_refused(mrml_scene, ct):
    other_ct = volume_node(mrml_scene, ct_voxels(), ras_matrix(AXES, CT_SPACING, CT_ORIGIN), "CT 2")
    (problem,) = describe_study(ct, other_ct).problems
    assert problem.startswith("The PET 'CT 2' has values down to -1000.0 (1st percentile), like a CT in HU")


def test_the_same_volume_as_ct_and_pet_is_refused(ct):
    assert describe_study(ct, ct).problems == (
        "The same volume 'CT' is selected as CT and as PET; select the study's PET as PET.",
    )
