"""DICOM slice geometry from the slices' positions: regular stacks pass, duplicates and gaps are handled."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from imaging_phantoms import write_dicom_series
from pydicom.uid import generate_uid

from mafm3.errors import MAFM3Error
from mafm3.imaging.io import read_image

ROWS, COLUMNS = 10, 12  # 1 mm pixels, axial


def linear_field(x_mm, y_mm, z_mm):
    """The oracle: linear in physical space, so linear interpolation along any line reproduces it exactly."""
    return 9.0 * z_mm + 4.0 * y_mm + x_mm


def _write_stack(folder, heights, posterior_shift_per_mm=0.0):
    """Axial slices at `heights` (mm along S), each shifted posteriorly by `posterior_shift_per_mm` per mm of
    height (a gantry tilt), holding `linear_field` at their pixels' true positions."""
    heights = np.asarray(heights, float)
    shifts = posterior_shift_per_mm * heights
    j, i = np.mgrid[0:ROWS, 0:COLUMNS].astype(float)
    values = np.stack([linear_field(i, shift + j, z) for z, shift in zip(heights, shifts, strict=True)])
    positions = [
        {"ImagePositionPatient": ["0", f"{s:.6f}", f"{z:.6f}"]} for z, s in zip(heights, shifts, strict=True)
    ]
    return write_dicom_series(
        folder, values, (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3), "CT", slice_headers=positions
    )


def test_a_regular_stack_is_read_as_it_is_whatever_the_file_order(tmp_path):
    files = _write_stack(tmp_path, np.arange(8) * 2.0)
    for number, path in enumerate(files):  # file names and instance numbers no longer follow the positions
        path.rename(tmp_path / f"x{(number * 5) % 8}.dcm")
    image, source = read_image(tmp_path)
    assert image.GetSize() == (COLUMNS, ROWS, 8) and image.GetSpacing() == (1.0, 1.0, 2.0)
    assert "geometry" not in source and "warnings" not in source


def test_missing_uneven_and_tilted_slices_are_resampled_from_their_true_positions(tmp_path):
    heights = [0, 2, 4, 6, 10, 12, 15, 18]  # one missing slice (8), then 3 mm steps
    _write_stack(tmp_path, heights, posterior_shift_per_mm=0.25)  # a 14 degree tilt, sub-pixel shifts
    image, source = read_image(tmp_path)

    assert source["geometry"]["regularised"] and source["geometry"]["slice_spacing_mm"] == 2.0
    (warning,) = source["warnings"]
    assert "uneven slice spacing (2.00-4.00 mm)" in warning and "gantry tilt of 14.0 degrees" in warning
    # The regular grid: the series' axes, 2 mm along the normal, wide enough for every shifted slice.
    assert image.GetDirection() == tuple(np.eye(3).ravel()) and image.GetSpacing() == (1.0, 1.0, 2.0)
    assert image.GetOrigin() == (0.0, 0.0, 0.0) and image.GetSize() == (COLUMNS, ROWS + 5, 10)
    # Where every slice covers (y 4.5-9 mm), each voxel holds the field at its own physical point.
    values = sitk.GetArrayFromImage(image)
    z, y, x = np.mgrid[0 : values.shape[0], 5:ROWS, 0:COLUMNS].astype(float)
    np.testing.assert_allclose(values[:, 5:ROWS, :], linear_field(x, y, 2.0 * z), atol=1e-3)


def test_a_duplicated_slice_is_dropped_and_said(tmp_path):
    files = _write_stack(tmp_path, np.arange(8) * 2.0)
    copy = pydicom.dcmread(files[3])
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    copy.save_as(tmp_path / "copy.dcm")
    image, source = read_image(tmp_path)
    assert image.GetSize()[2] == 8 and image.GetSpacing()[2] == 2.0
    assert (
        source["geometry"] == {"duplicates_dropped": 1} and "1 duplicated slice(s)" in source["warnings"][0]
    )


def test_two_different_slices_at_one_position_are_refused(tmp_path):
    files = _write_stack(tmp_path, np.arange(8) * 2.0)
    other = pydicom.dcmread(files[3])
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    other.PixelData = (other.pixel_array + 1).tobytes()
    other.save_as(tmp_path / "other.dcm")
    with pytest.raises(MAFM3Error, match=r"two different slices at the same position \(6\.00 mm"):
        read_image(tmp_path)


def test_a_gap_of_three_missing_slices_is_refused(tmp_path):
    _write_stack(tmp_path, [0, 2, 4, 6, 14, 16, 18])  # 8, 10 and 12 missing
    with pytest.raises(MAFM3Error, match=r"a gap of 8\.0 mm .*about 3 missing slices of 2\.00 mm"):
        read_image(tmp_path)
