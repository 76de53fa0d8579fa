"""PET to SUV: every expected value is worked by hand from the header values written into the series.

SUV = activity (Bq/ml) * weight (g) / (dose (Bq) * 2 ** (-elapsed (s) / half-life (s))).

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from imaging_phantoms import pet_headers, write_dicom_series

from mafm3.errors import MAFM3Error
from mafm3.imaging.io import read_image
from mafm3.imaging.suv import pet_to_suv

# Activity in Bq/ml, slice by slice; a different rescale slope per slice, as PET scanners write them.
SLOPES = [1.0, 0.5, 2.0]
STORED = np.array(
    [[[1000, 2000], [3000, 4000]], [[10000, 20000], [5000, 0]], [[100, 200], [300, 7000]]], float
)
ACTIVITY = STORED * np.array(SLOPES)[:, None, None]


def _pet(tmp_path, **header_values):
    slice_headers = header_values.pop("slice_headers", None)
    files = write_dicom_series(
        tmp_path,
        ACTIVITY,
        (4.0, 4.0, 3.0),
        (0.0, 0.0, 0.0),
        np.eye(3),
        "PT",
        slopes=SLOPES,
        headers=pet_headers(**header_values),
        slice_headers=slice_headers,
    )
    image, source = read_image(tmp_path, "PT")
    assert source["files"] == [str(f) for f in files]
    return image, source["files"]


def _array(image):
    return sitk.GetArrayFromImage(image).astype(float)


def test_start_corrected_bqml_gives_the_hand_computed_suv(tmp_path):
    # 370 MBq F-18 (half-life 6586.2 s) injected at 09:00, series at 10:00 (3600 s later), patient 70 kg.
    pet, files = _pet(tmp_path)
    suv, info = pet_to_suv(pet, files)
    expected = ACTIVITY * 70_000 / (370e6 * 2 ** (-3600 / 6586.2))
    np.testing.assert_allclose(_array(suv), expected, rtol=1e-6)
    assert 1.38 < float(_array(suv)[1, 0, 0]) < 1.39  # 5000 Bq/ml in a 70 kg patient 1 h after 370 MBq
    assert info["decay_correction"] == "START" and info["scan_time"] == "2024-03-01T10:00:00"
    assert suv.GetOrigin() == pet.GetOrigin() and suv.GetSpacing() == pet.GetSpacing()


def test_admin_corrected_uses_the_injected_dose_as_is(tmp_path):
    pet, files = _pet(tmp_path, decay_correction="ADMIN")
    suv, info = pet_to_suv(pet, files)
    np.testing.assert_allclose(_array(suv), ACTIVITY * 70_000 / 370e6, rtol=1e-6)
    assert info["factor"] == pytest.approx(70_000 / 370e6)


def test_uncorrected_slices_are_decayed_to_their_own_acquisition_time(tmp_path):
    times = [{"AcquisitionTime": t} for t in ("100000", "100200", "100400")]  # 3600 s, 3720 s, 3840 s
    pet, files = _pet(tmp_path, decay_correction="NONE", slice_headers=times)
    suv, _ = pet_to_suv(pet, files[::-1])  # file order does not matter: slices are placed by position
    elapsed = np.array([3600, 3720, 3840])[:, None, None]
    np.testing.assert_allclose(_array(suv), ACTIVITY * 70_000 / (370e6 * 2 ** (-elapsed / 6586.2)), rtol=1e-6)


def test_start_date_time_wins_and_may_be_the_day_before(tmp_path):
    # injected 23:00 on 29 Feb, series at 01:00 on 1 Mar: 7200 s (the StartTime alone would say 12:00)
    pet, files = _pet(
        tmp_path, series_time="010000", injection_time="120000", injection_datetime="20240229230000"
    )
    suv, info = pet_to_suv(pet, files)
    np.testing.assert_allclose(_array(suv), ACTIVITY * 70_000 / (370e6 * 2 ** (-7200 / 6586.2)), rtol=1e-6)
    assert info["injection_time"] == "2024-02-29T23:00:00"


def test_a_series_time_after_the_acquisition_falls_back_to_the_earliest_acquisition(tmp_path):
    later = [{"SeriesTime": "113000", "AcquisitionTime": t} for t in ("100000", "100500", "101000")]
    pet, files = _pet(tmp_path, slice_headers=later)
    _, info = pet_to_suv(pet, files)
    assert info["scan_time"] == "2024-03-01T10:00:00"
    assert info["factor"] == pytest.approx(70_000 / (370e6 * 2 ** (-3600 / 6586.2)))


def test_weight_comes_from_the_clinical_record_when_the_header_has_none(tmp_path):
    pet, files = _pet(tmp_path, weight_kg=None)
    suv, info = pet_to_suv(pet, files, weight_kg=82.5)
    np.testing.assert_allclose(_array(suv), ACTIVITY * 82_500 / (370e6 * 2 ** (-3600 / 6586.2)), rtol=1e-6)
    assert info["weight_source"] == "clinical record"


def test_pet_stored_as_gml_is_already_suv(tmp_path):
    pet, files = _pet(tmp_path, units="GML")
    suv, info = pet_to_suv(pet, files)
    np.testing.assert_array_equal(_array(suv), _array(pet))
    assert info["factor"] == 1.0


def test_user_units_and_scale_need_no_headers():
    pet = sitk.GetImageFromArray(ACTIVITY.astype(np.float32))
    suv, _ = pet_to_suv(pet, None, units="suv")
    np.testing.assert_array_equal(_array(suv), ACTIVITY)
    scaled, info = pet_to_suv(pet, None, scale=2.5e-4)
    np.testing.assert_allclose(_array(scaled), ACTIVITY * 2.5e-4, rtol=1e-6)
    assert info["method"] == "scale factor given by the user"


def test_missing_tags_are_named_with_the_way_around_them(tmp_path):
    pet, files = _pet(tmp_path, dose_bq=None, half_life_s=None)
    with pytest.raises(MAFM3Error) as caught:
        pet_to_suv(pet, files)
    message = str(caught.value)
    assert message.startswith("The PET headers lack RadionuclideTotalDose, RadionuclideHalfLife, so SUV")
    assert (
        "`--pet-units suv`" in message and "`--pet-suv-scale FACTOR`" in message and message.count(".") <= 1
    )


def test_pet_without_headers_needs_units_or_a_scale():
    with pytest.raises(MAFM3Error, match="no DICOM headers to compute SUV from: pass `--pet-units suv`"):
        pet_to_suv(sitk.GetImageFromArray(ACTIVITY.astype(np.float32)), None)


def test_counts_are_refused_unless_the_user_says_they_are_bqml(tmp_path):
    pet, files = _pet(tmp_path, units="CNTS")
    with pytest.raises(MAFM3Error, match="Units are 'CNTS', not Bq/ml"):
        pet_to_suv(pet, files)
    suv, _ = pet_to_suv(pet, files, units="bqml")
    np.testing.assert_allclose(_array(suv), ACTIVITY * 70_000 / (370e6 * 2 ** (-3600 / 6586.2)), rtol=1e-6)


def test_injection_after_the_scan_is_refused(tmp_path):
    pet, files = _pet(tmp_path, injection_time="110000")
    with pytest.raises(MAFM3Error, match="put the injection .* after the scan"):
        pet_to_suv(pet, files)
