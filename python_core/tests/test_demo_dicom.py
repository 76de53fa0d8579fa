"""DICOM CT and PET series of a synthetic study: same geometry as the NIfTI, SUV recovered from the header.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

import datetime

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from mafm3.demo.dicom import write_ct_series, write_pet_series
from mafm3.demo.study import generate_study


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    study = generate_study(3, size="tiny")
    folder = tmp_path_factory.mktemp("dicom")
    write_ct_series(study, folder / "CT")
    write_pet_series(study, folder / "PT")
    return study, folder


def _read_series(folder) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _seconds(tm: str) -> float:
    moment = datetime.datetime.strptime(tm.split(".")[0], "%H%M%S")
    return moment.hour * 3600 + moment.minute * 60 + moment.second


@pytest.mark.parametrize("modality", ["CT", "PT"])
def test_series_read_back_by_simpleitk_have_the_study_geometry(written, modality):
    study, folder = written
    expected = study.ct if modality == "CT" else study.pet
    image = _read_series(folder / modality)
    assert image.GetSize() == expected.GetSize()
    assert np.allclose(image.GetOrigin(), expected.GetOrigin(), atol=1e-4)
    assert np.allclose(image.GetSpacing(), expected.GetSpacing(), atol=1e-6)
    assert np.allclose(image.GetDirection(), expected.GetDirection())


def test_ct_series_holds_the_hounsfield_units_exactly(written):
    study, folder = written
    assert np.array_equal(
        sitk.GetArrayFromImage(_read_series(folder / "CT")), sitk.GetArrayFromImage(study.ct)
    )


def test_pet_in_bq_per_ml_converts_back_to_the_generated_suv_by_the_body_weight_formula(written):
    study, folder = written
    slices = sorted(
        (pydicom.dcmread(path) for path in (folder / "PT").glob("*.dcm")),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    suv = []
    for ds in slices:
        assert ds.Units == "BQML" and ds.DecayCorrection == "START"
        drug = ds.RadiopharmaceuticalInformationSequence[0]
        elapsed_s = _seconds(ds.SeriesTime) - _seconds(drug.RadiopharmaceuticalStartTime)
        decayed_dose_bq = float(drug.RadionuclideTotalDose) * 2 ** (
            -elapsed_s / float(drug.RadionuclideHalfLife)
        )
        bq_per_ml = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        suv.append(bq_per_ml * float(ds.PatientWeight) * 1000 / decayed_dose_bq)
    expected = sitk.GetArrayFromImage(study.pet)
    assert float(slices[0].RadiopharmaceuticalInformationSequence[0].RadionuclideHalfLife) == 6586.2
    # 16-bit storage with a per-slice slope: error at most half a step, i.e. the slice maximum / 131070.
    step = expected.max(axis=(1, 2), keepdims=True) / 65535
    assert np.all(np.abs(np.stack(suv) - expected) <= step / 2 + 1e-6)
    assert np.abs(np.stack(suv) - expected).max() > 0  # it really went through Bq/ml and back


def test_ct_and_pet_share_study_and_frame_of_reference_and_say_they_are_synthetic(written):
    _, folder = written
    ct = pydicom.dcmread(next((folder / "CT").glob("*.dcm")))
    pt = pydicom.dcmread(next((folder / "PT").glob("*.dcm")))
    assert (ct.Modality, pt.Modality) == ("CT", "PT")
    assert ct.StudyInstanceUID == pt.StudyInstanceUID and ct.FrameOfReferenceUID == pt.FrameOfReferenceUID
    assert ct.SeriesInstanceUID != pt.SeriesInstanceUID
    assert (float(ct.RescaleSlope), float(ct.RescaleIntercept)) == (1.0, -1024.0)
    for ds in (ct, pt):
        assert "synthetic data, not for clinical use" in ds.SeriesDescription
        assert "synthetic data, not for clinical use" in ds.ImageComments


def test_same_study_writes_byte_identical_files(written, tmp_path):
    study, folder = written
    write_pet_series(study, tmp_path / "PT")
    for path in (folder / "PT").glob("*.dcm"):
        assert (tmp_path / "PT" / path.name).read_bytes() == path.read_bytes()
