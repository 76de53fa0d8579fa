"""Loading a study: CT in HU, PET in SUV on its own grid, clinical record; a PET beside a DICOM CT is used.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from imaging_phantoms import ct_phantom, origin_for_centre, pet_headers, pet_phantom, write_dicom_series
from pydicom.uid import generate_uid

from mafm3.errors import MAFM3Error
from mafm3.imaging.io import write_image
from mafm3.imaging.study import load_study

CT_SIZE, CT_SPACING = (20, 20, 16), (2.0, 2.0, 3.0)
PET_SIZE, PET_SPACING = (16, 16, 16), (4.0, 4.0, 4.0)
SUV_FACTOR = 70_000 / (370e6 * 2 ** (-3600 / 6586.2))  # 70 kg, 370 MBq F-18 injected 1 h before the series


def _ct():
    origin = origin_for_centre(CT_SIZE, CT_SPACING, np.eye(3))
    return ct_phantom(CT_SIZE, CT_SPACING, origin, np.eye(3), axis_lp=(0.0, 0.0), radius_mm=12.0)


def _pet_activity(centre=(0.0, 0.0, 0.0)):
    """A PET in Bq/ml: the SUV phantom divided by the SUV factor, rounded to whole Bq/ml."""
    origin = origin_for_centre(PET_SIZE, PET_SPACING, np.eye(3), centre)
    suv = pet_phantom(PET_SIZE, PET_SPACING, origin, np.eye(3), hot_lps=centre)
    return np.round(sitk.GetArrayFromImage(suv) / SUV_FACTOR), origin


def _dicom_study(folder, pet_study_uid=None, **pet_values):
    study_uid = generate_uid()
    ct = _ct()
    write_dicom_series(
        folder / "ct",
        sitk.GetArrayFromImage(ct),
        CT_SPACING,
        ct.GetOrigin(),
        np.eye(3),
        "CT",
        study_uid=study_uid,
        intercept=-1024,
    )
    activity, origin = _pet_activity()
    write_dicom_series(
        folder / "pt",
        activity,
        PET_SPACING,
        origin,
        np.eye(3),
        "PT",
        study_uid=pet_study_uid or study_uid,
        headers=pet_headers(**pet_values),
    )
    return sitk.GetArrayFromImage(ct), activity


def test_a_dicom_folder_gives_the_ct_and_the_pet_beside_it_in_suv(tmp_path):
    ct_values, activity = _dicom_study(tmp_path)
    study = load_study(tmp_path)
    assert study.ct.GetPixelID() == sitk.sitkFloat32 and study.pet.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(study.ct), ct_values)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(study.pet), activity * SUV_FACTOR, rtol=1e-6)
    assert study.pet.GetSpacing() == PET_SPACING  # on its own grid
    assert study.sources["pet"]["suv"]["factor"] == pytest.approx(SUV_FACTOR)
    assert "found beside the CT" in study.sources["pet"]["note"]
    assert len(study.sources["ct"]["files"]) == CT_SIZE[2]
    json.dumps(study.sources)  # goes into result.json as it is


def test_a_pet_of_another_study_is_not_taken_from_the_ct_folder(tmp_path):
    _dicom_study(tmp_path, pet_study_uid=generate_uid())
    assert load_study(tmp_path).pet is None


def test_nifti_files_with_a_pet_already_in_suv(tmp_path):
    ct = sitk.Cast(_ct(), sitk.sitkInt16)
    activity, origin = _pet_activity()
    pet = sitk.GetImageFromArray((activity * SUV_FACTOR).astype(np.float32))
    pet.SetSpacing(PET_SPACING)
    pet.SetOrigin(tuple(origin))
    write_image(ct, tmp_path / "ct.nii.gz")
    write_image(pet, tmp_path / "pet.nii.gz")
    (tmp_path / "clinical.json").write_text(json.dumps({"age": 61, "hpv": "yes"}))
    study = load_study(
        tmp_path / "ct.nii.gz", tmp_path / "pet.nii.gz", tmp_path / "clinical.json", pet_units="suv"
    )
    assert study.ct.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(study.pet), sitk.GetArrayViewFromImage(pet))
    assert study.clinical.age == 61 and study.clinical.hpv is True
    assert study.sources["pet"]["suv"]["method"] == "PET given in SUV"
    with pytest.raises(MAFM3Error, match="no DICOM headers to compute SUV from: pass `--pet-units suv`"):
        load_study(tmp_path / "ct.nii.gz", tmp_path / "pet.nii.gz")


def test_the_clinical_weight_stands_in_for_a_missing_patient_weight(tmp_path):
    _, activity = _dicom_study(tmp_path, weight_kg=None)
    with pytest.raises(MAFM3Error, match="lack PatientWeight"):
        load_study(tmp_path)
    (tmp_path / "clinical.json").write_text(json.dumps({"weight": 70}))
    study = load_study(tmp_path, clinical_path=tmp_path / "clinical.json")
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(study.pet), activity * SUV_FACTOR, rtol=1e-6)


def test_a_pet_elsewhere_in_space_is_refused(tmp_path):
    write_image(_ct(), tmp_path / "ct.nrrd")
    activity, origin = _pet_activity(centre=(0.0, 0.0, 400.0))
    pet = sitk.GetImageFromArray((activity * SUV_FACTOR).astype(np.float32))
    pet.SetSpacing(PET_SPACING)
    pet.SetOrigin(tuple(origin))
    write_image(pet, tmp_path / "pet.mha")
    with pytest.raises(MAFM3Error, match="The PET and CT share only 0 % of their physical extent"):
        load_study(tmp_path / "ct.nrrd", tmp_path / "pet.mha", pet_units="suv")


def test_an_mr_given_as_ct_is_refused(tmp_path):
    mr = sitk.GetImageFromArray(np.random.default_rng(0).gamma(2.0, 300.0, (20, 20, 20)).astype(np.float32))
    write_image(mr, tmp_path / "mr.nii.gz")
    with pytest.raises(MAFM3Error, match="The CT does not look like Hounsfield units"):
        load_study(tmp_path / "mr.nii.gz")
