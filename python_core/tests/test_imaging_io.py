"""Reading and writing images: file formats keep their geometry; DICOM folders give the series asked for.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from imaging_phantoms import LEFT_HANDED, OBLIQUE, make_image, write_dicom_series
from pydicom.uid import generate_uid

from mafm3.errors import MAFM3Error
from mafm3.imaging.io import list_dicom_series, read_image, write_image


def _volume(direction=OBLIQUE) -> sitk.Image:
    values = np.arange(6 * 5 * 4, dtype=np.int16).reshape(4, 5, 6) - 60
    return make_image(values, (0.7, 1.3, 2.9), (12.5, -40.25, 600.0), direction)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("direction", [OBLIQUE, LEFT_HANDED], ids=["oblique", "left-handed"])
def test_file_round_trip_keeps_geometry_values_and_pixel_type(tmp_path, suffix, direction):
    image = _volume(direction)
    path = write_image(image, tmp_path / "sub" / f"ct{suffix}")
    read, source = read_image(path)
    assert source["format"] == {".nrrd": "nrrd", ".mha": "metaimage", ".mhd": "metaimage"}.get(
        suffix, "nifti"
    )
    assert read.GetSize() == image.GetSize()
    assert read.GetPixelID() == image.GetPixelID()
    np.testing.assert_allclose(read.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(read.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(read), sitk.GetArrayViewFromImage(image))


def _ct_and_pet_folder(root, ct_slices=(6, 4)):
    """A study folder: CT series (one per entry of `ct_slices`, in sub-folders) and one PT series."""
    study = generate_uid()
    rng = np.random.default_rng(1)
    cts = []
    for number, slices in enumerate(ct_slices):
        values = rng.integers(-1000, 1000, (slices, 5, 6)).astype(float)
        files = write_dicom_series(
            root / f"ct{number}",
            values,
            (1.0, 1.0, 2.0),
            (0, 0, 0),
            np.eye(3),
            "CT",
            study_uid=study,
            intercept=-1024,
        )
        cts.append((values, files))
    pet = rng.integers(0, 5000, (5, 4, 3)).astype(float)
    write_dicom_series(
        root / "pet" / "deeper", pet, (4.0, 4.0, 4.0), (-2, -2, -2), np.eye(3), "PT", study_uid=study
    )
    return cts, pet


def test_folder_with_ct_and_pet_gives_each_by_modality(tmp_path):
    [(ct_values, ct_files)], pet_values = _ct_and_pet_folder(tmp_path, ct_slices=(6,))
    ct, ct_source = read_image(tmp_path, "CT")
    pet, pet_source = read_image(tmp_path, "PT")
    assert (ct_source["modality"], pet_source["modality"]) == ("CT", "PT")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ct), ct_values)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(pet), pet_values)
    assert ct.GetPixelID() == pet.GetPixelID() == sitk.sitkFloat32
    # `files` is the series in slice order: slice k of the image is files[k]
    assert ct_source["files"] == [str(f) for f in ct_files]
    header = pydicom.dcmread(ct_source["files"][0], stop_before_pixels=True)
    assert ct_source["series_instance_uid"] == header.SeriesInstanceUID
    assert ct_source["study_instance_uid"] == pet_source["study_instance_uid"] == header.StudyInstanceUID


def test_several_ct_series_give_the_largest_unless_a_uid_is_passed(tmp_path):
    cts, _ = _ct_and_pet_folder(tmp_path, ct_slices=(4, 7))
    ct, source = read_image(tmp_path, "CT")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ct), cts[1][0])
    assert "largest of 2 CT series" in source["note"]
    smaller_uid = str(pydicom.dcmread(cts[0][1][0]).SeriesInstanceUID)
    ct, source = read_image(tmp_path, "CT", series_uid=smaller_uid)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ct), cts[0][0])
    assert source["series_instance_uid"] == smaller_uid


def test_one_file_of_a_series_reads_the_whole_series(tmp_path):
    [(values, files)], _ = _ct_and_pet_folder(tmp_path, ct_slices=(6,))
    ct, source = read_image(files[3], "CT")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ct), values)
    assert source["format"] == "dicom"


def test_listing_finds_every_series_recursively_largest_first(tmp_path):
    _ct_and_pet_folder(tmp_path, ct_slices=(4, 7))
    series = list_dicom_series(tmp_path)
    assert [(s.modality, len(s.files)) for s in series] == [("CT", 7), ("PT", 5), ("CT", 4)]


def test_each_pet_slice_keeps_its_own_rescale_slope(tmp_path):
    # The first slice has slope 1, so an integer output type taken from it would truncate the others.
    slopes = [1.0, 0.37, 2.5, 0.125]
    stored = np.random.default_rng(2).integers(0, 20000, (4, 5, 6)).astype(float)
    activity = stored * np.asarray(slopes)[:, None, None]
    write_dicom_series(tmp_path, activity, (2.0, 2.0, 3.0), (0, 0, 0), np.eye(3), "PT", slopes=slopes)
    pet, _ = read_image(tmp_path, "PT")
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(pet), activity, rtol=1e-6)


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(MAFM3Error, match=r"does not exist: check the path\.$"):
        read_image(tmp_path / "nothing.nii.gz")


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(MAFM3Error, match="holds no readable DICOM image series"):
        read_image(tmp_path)


def test_folder_without_ct_is_refused_and_names_what_it_holds(tmp_path):
    write_dicom_series(tmp_path, np.ones((3, 4, 5)), (1, 1, 1), (0, 0, 0), np.eye(3), "PT")
    with pytest.raises(MAFM3Error, match=r"holds no CT series \(found: PT\)"):
        read_image(tmp_path, "CT")


def test_unknown_series_uid_is_refused(tmp_path):
    write_dicom_series(tmp_path, np.ones((3, 4, 5)), (1, 1, 1), (0, 0, 0), np.eye(3), "CT")
    with pytest.raises(MAFM3Error, match="no DICOM series with SeriesInstanceUID 1.2.3"):
        read_image(tmp_path, "CT", series_uid="1.2.3")


def test_corrupt_file_is_refused_with_one_sentence(tmp_path):
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(b"not a nifti file at all")
    with pytest.raises(
        MAFM3Error, match=r"^\S+ct\.nii\.gz cannot be read as nifti \(.*\): check that the file"
    ):
        read_image(path)


def test_unsupported_file_is_refused(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(MAFM3Error, match="is not a supported image: give a DICOM series folder, NIfTI"):
        read_image(path)


@pytest.mark.parametrize("pixel_type", [sitk.sitkInt16, sitk.sitkFloat32])
def test_a_nifti_cut_off_in_its_voxels_is_refused_not_zero_filled(tmp_path, pixel_type):
    image = sitk.Cast(
        sitk.GaussianSource(sitk.sitkFloat32, (40, 30, 20), sigma=(8, 8, 8), scale=500), pixel_type
    )
    whole = tmp_path / "whole.nii.gz"
    sitk.WriteImage(image, str(whole), useCompression=True)
    assert sitk.GetArrayFromImage(read_image(whole)[0]).tolist() == sitk.GetArrayFromImage(image).tolist()
    data = whole.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: int(len(data) * 0.7)])  # the header survives, the voxels do not
    with pytest.raises(MAFM3Error, match="incomplete"):
        read_image(cut)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nan_and_infinity_stored_in_a_nifti_are_not_read_as_zero(tmp_path, suffix):
    values = np.full((20, 18, 16), 40.0, np.float32)
    values[3, 4, 5], values[7, 8, 9] = np.nan, np.inf
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(make_image(values, (1.0, 1.0, 2.0), (0, 0, 0), np.eye(3)), str(path))
    assert sitk.GetArrayViewFromImage(sitk.ReadImage(str(path)))[3, 4, 5] == 0  # ITK's silent zero
    read = sitk.GetArrayFromImage(read_image(path)[0])  # a copy: the image is not kept
    assert np.isnan(read[3, 4, 5]) and np.isnan(read[7, 8, 9])
    assert np.count_nonzero(np.isfinite(read)) == values.size - 2 and read[0, 0, 0] == 40.0
