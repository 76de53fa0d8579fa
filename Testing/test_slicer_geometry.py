"""MAFM3SlicerLib.geometry: RAS <-> LPS, volume nodes <-> SimpleITK images, checked against ITK's readers."""

import numpy as np
import pytest
import SimpleITK as sitk
from synthetic_volumes import rotation_about_z

from MAFM3SlicerLib.geometry import (
    LPSGeometry,
    ijk_to_ras_from_lps,
    ijk_to_ras_of,
    image_from_volume,
    lps_from_ijk_to_ras,
    update_volume_from_image,
)
from MAFM3SlicerLib.volume_files import read_volume, write_volume


def oblique_image(mirror: tuple[float, float, float] = (-1.0, -1.0, 1.0)) -> sitk.Image:
    """T != H != W, anisotropic spacing, an oblique direction with the axes flipped by `mirror`, and voxels
    equal to their own flat index, so a swapped or reversed axis shows.
    """
    image = sitk.GetImageFromArray(np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7))  # (z, y, x)
    image.SetSpacing((0.8, 1.3, 3.0))
    image.SetDirection((rotation_about_z(25.0) @ np.diag(mirror)).ravel().tolist())
    image.SetOrigin((-12.5, 40.0, 7.25))
    return image


def assert_same_image(actual: sitk.Image, expected: sitk.Image, tolerance: float = 1e-9) -> None:
    np.testing.assert_array_equal(sitk.GetArrayFromImage(actual), sitk.GetArrayFromImage(expected))
    np.testing.assert_allclose(actual.GetSpacing(), expected.GetSpacing(), rtol=tolerance)
    np.testing.assert_allclose(actual.GetDirection(), expected.GetDirection(), atol=tolerance)
    np.testing.assert_allclose(actual.GetOrigin(), expected.GetOrigin(), atol=tolerance * 100)


def test_ijk_to_ras_puts_each_voxel_at_the_point_simpleitk_gives_with_x_and_y_flipped():
    image = oblique_image(mirror=(1.0, -1.0, 1.0))
    geometry = LPSGeometry(image.GetSpacing(), image.GetDirection(), image.GetOrigin())
    matrix = ijk_to_ras_from_lps(geometry)
    for index in [(0, 0, 0), (6, 0, 0), (0, 5, 0), (0, 0, 4), (6, 5, 4), (3, 2, 1)]:
        left, posterior, superior = image.TransformIndexToPhysicalPoint(index)
        ras = matrix @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], [-left, -posterior, superior], atol=1e-9)


def test_lps_geometry_comes_back_from_its_ijk_to_ras_matrix():
    image = oblique_image(mirror=(1.0, -1.0, 1.0))
    geometry = LPSGeometry(image.GetSpacing(), image.GetDirection(), image.GetOrigin())
    back = lps_from_ijk_to_ras(ijk_to_ras_from_lps(geometry))
    np.testing.assert_allclose(back.spacing_mm, geometry.spacing_mm, rtol=1e-12)
    np.testing.assert_allclose(back.direction, geometry.direction, atol=1e-12)
    np.testing.assert_allclose(back.origin_lps, geometry.origin_lps, atol=1e-12)


def test_a_node_filled_from_an_image_is_written_by_slicer_and_read_by_itk_as_the_same_image(
    mrml_scene, tmp_path
):
    image = oblique_image()
    node = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    update_volume_from_image(node, image)
    assert not np.allclose(ijk_to_ras_of(node)[:3, :3], np.eye(3))  # the geometry under test is not trivial

    assert_same_image(sitk.ReadImage(str(write_volume(node, tmp_path / "ct.nrrd"))), image)


def test_an_image_written_by_itk_and_read_by_slicer_converts_back_to_the_same_image(mrml_scene, tmp_path):
    image = oblique_image()
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    node = read_volume(tmp_path / "ct.nrrd", mrml_scene)

    assert_same_image(image_from_volume(node), image)


def test_a_left_handed_image_read_by_slicer_keeps_every_voxel_at_its_physical_point(mrml_scene, tmp_path):
    """Slicer's reader makes a left-handed grid (direction determinant -1) right-handed by reversing the slice
    order: the node's voxels are re-indexed, but each stays where it was in space.
    """
    image = oblique_image(mirror=(1.0, 1.0, -1.0))
    assert np.linalg.det(np.reshape(image.GetDirection(), (3, 3))) < 0
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    converted = image_from_volume(read_volume(tmp_path / "ct.nrrd", mrml_scene))

    assert np.linalg.det(np.reshape(converted.GetDirection(), (3, 3))) > 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(converted), sitk.GetArrayFromImage(image)[::-1])
    on_original_grid = sitk.Resample(converted, image, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_original_grid), sitk.GetArrayFromImage(image))


def test_a_two_dimensional_image_is_refused_and_the_node_keeps_its_voxels(mrml_scene):
    node = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    update_volume_from_image(node, oblique_image())
    before = sitk.GetArrayFromImage(image_from_volume(node))

    with pytest.raises(ValueError, match="must be a 3-D scalar image, got 2-D"):
        update_volume_from_image(node, sitk.Image(8, 8, sitk.sitkInt16))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image_from_volume(node)), before)
