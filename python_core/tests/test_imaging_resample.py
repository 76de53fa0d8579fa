"""Resampling keeps physical positions; the torch path gives what SimpleITK gives.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from imaging_phantoms import FLIPPED, LEFT_HANDED, OBLIQUE, PERMUTED, grid_image, make_image, voxel_points

from mafm3.imaging.resample import Grid, resample_onto, resample_to_spacing

DIRECTIONS = {
    "identity": np.eye(3),
    "oblique": OBLIQUE,
    "flipped": FLIPPED,
    "permuted": PERMUTED,
    "left-handed": LEFT_HANDED,
}


def _random_volume(direction, size=(17, 19, 13), spacing=(1.1, 0.9, 2.3), origin=(-7.3, 12.1, 40.6), seed=0):
    values = np.random.default_rng(seed).uniform(-1000, 1000, size[::-1]).astype(np.float32)
    return make_image(values, spacing, origin, direction)


@pytest.mark.parametrize("name", DIRECTIONS)
@pytest.mark.parametrize("orientation", ["LPS", "RAS", "SAL"])
def test_oriented_grid_is_the_grid_dicom_orient_produces(name, orientation):
    image = _random_volume(DIRECTIONS[name])
    expected = sitk.DICOMOrient(image, orientation)
    grid = Grid.of(image).oriented(orientation)
    assert grid.size == expected.GetSize() and grid.spacing == expected.GetSpacing()
    np.testing.assert_allclose(grid.origin, expected.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(grid.direction, expected.GetDirection(), atol=1e-12)


def test_new_spacing_covers_the_extent_with_ceil_and_keeps_origin_and_direction():
    grid = Grid.of(grid_image((100, 10, 7), (0.9, 1.0, 2.0), (1.0, 2.0, 3.0), OBLIQUE))
    resampled = grid.with_spacing((0.75, 0.3, 1.5))
    # 90 / 0.75 = 120 exactly (no extra voxel from rounding); 10 / 0.3 = 33.3 -> 34; 14 / 1.5 = 9.3 -> 10
    assert resampled.size == (120, 34, 10)
    assert resampled.origin == grid.origin and resampled.direction == grid.direction


@pytest.mark.parametrize("name", DIRECTIONS)
def test_a_marked_voxel_keeps_its_physical_point_through_resample_and_back(name):
    image = sitk.Image(_random_volume(DIRECTIONS[name]))
    labels = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    labels.CopyInformation(image)
    labels[5, 7, 4] = 1
    point = labels.TransformIndexToPhysicalPoint((5, 7, 4))
    fine = resample_to_spacing(labels, [s / 2 for s in image.GetSpacing()], "nearest")
    assert fine.GetPixelID() == sitk.sitkUInt8
    assert fine[fine.TransformPhysicalPointToIndex(point)] == 1
    marked = np.argwhere(sitk.GetArrayViewFromImage(fine))[:, ::-1]  # (x, y, z) indices
    distances = [
        np.linalg.norm(np.subtract(fine.TransformIndexToPhysicalPoint(i.tolist()), point)) for i in marked
    ]
    assert max(distances) <= np.linalg.norm(image.GetSpacing()) / 2 + 1e-9  # no voxel beyond the marked one
    back = resample_onto(fine, labels, "nearest")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(labels))


@pytest.mark.parametrize("source_name", ["identity", "flipped", "permuted", "left-handed"])
def test_linear_resampling_onto_a_rotated_grid_reproduces_a_linear_field_exactly(source_name):
    # Linear interpolation is exact for a linear function of position: sampling f(p) = 2 L - P + 0.5 S,
    # stored on one grid, at the voxel centres of a rotated, shifted grid must give f there.
    source = grid_image((17, 19, 13), (1.1, 0.9, 2.3), (-7.3, 12.1, 40.6), DIRECTIONS[source_name])
    points = voxel_points(source)
    field = points @ np.array([2.0, -1.0, 0.5])
    source = make_image(
        field.astype(np.float64), source.GetSpacing(), source.GetOrigin(), source.GetDirection()
    )
    middle = source.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in source.GetSize()])
    target = Grid((9, 8, 7), (0.83, 1.27, 1.9), (0.0, 0.0, 0.0), tuple(OBLIQUE.ravel()))
    target = target.crop(target.point_to_index(middle) - (4.2, 3.6, 2.9), target.size)  # centred, shifted
    resampled = resample_onto(source, target, "linear", default_value=np.nan)
    expected = voxel_points(resampled) @ np.array([2.0, -1.0, 0.5])
    values = sitk.GetArrayViewFromImage(resampled)
    inside = ~np.isnan(values)
    assert inside.sum() > 0.5 * values.size
    np.testing.assert_allclose(values[inside], expected[inside], atol=1e-9)


def test_image_from_array_refuses_a_wrong_shape():
    grid = Grid((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    assert grid.image_from_array(np.zeros((6, 5, 4), np.uint8)).GetSize() == (4, 5, 6)
    with pytest.raises(ValueError, match=r"the grid needs \(6, 5, 4\)"):
        grid.image_from_array(np.zeros((4, 5, 6), np.uint8))
