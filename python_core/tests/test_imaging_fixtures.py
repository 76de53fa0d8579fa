"""The synthetic images and DICOM series of the imaging tests (`imaging_phantoms`) are what they claim.

Phantoms are defined in physical LPS space (a body cylinder, a hot spot), so their expected positions are
known by construction whatever the grid.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from imaging_phantoms import (
    FLIPPED,
    OBLIQUE,
    PERMUTED,
    ct_phantom,
    grid_image,
    origin_for_centre,
    voxel_points,
    write_dicom_series,
)

# ---------------------------------------------------------------------------------------------------------
# The fixtures are what they claim


def test_voxel_points_match_simpleitk_on_an_oblique_grid():
    image = grid_image((5, 6, 7), (0.7, 1.3, 2.9), (10.0, -20.0, 30.0), OBLIQUE)
    points = voxel_points(image)
    for index in [(0, 0, 0), (4, 5, 6), (2, 1, 3)]:
        expected = image.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose(points[index[2], index[1], index[0]], expected, atol=1e-9)


def test_written_dicom_series_reads_back_with_its_geometry_and_values(tmp_path):
    values = np.arange(4 * 5 * 6, dtype=float).reshape(4, 5, 6) * 3.0 - 1000.0
    files = write_dicom_series(
        tmp_path, values, (0.8, 1.1, 2.5), (-5.0, 7.0, 11.0), OBLIQUE, "CT", intercept=-1024
    )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    image = reader.Execute()
    assert image.GetSize() == (6, 5, 4)
    np.testing.assert_allclose(image.GetSpacing(), (0.8, 1.1, 2.5), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), (-5.0, 7.0, 11.0), atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), OBLIQUE.ravel(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), values)


@pytest.mark.parametrize("direction", [OBLIQUE, FLIPPED, PERMUTED])
def test_ct_phantom_cylinder_axis_is_where_it_was_put(direction):
    size, spacing = (30, 30, 20), (2.0, 2.0, 3.0)
    ct = ct_phantom(
        size, spacing, origin_for_centre(size, spacing, direction), direction, axis_lp=(5.0, -4.0)
    )
    points = voxel_points(ct)[sitk.GetArrayViewFromImage(ct) > 0]
    np.testing.assert_allclose(np.hypot(points[:, 0] - 5.0, points[:, 1] + 4.0).max(), 20.0, atol=1.5)
    assert len(points) > 100
