"""`mafm3 demo make-cohort` and `make-study`: the HECKTOR 2022 layout and a single study folder on disk.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from mafm3.cli import main
from mafm3.clinical import ClinicalRecord
from mafm3.demo.patients import sample_patient, sample_patients

NOTICE = "synthetic data, not for clinical use"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "cohort"
    assert main(["demo", "make-cohort", "--n", "2", "--seed", "4", "--out", str(out), "--size", "tiny"]) == 0
    return out


def _rows(path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_cohort_has_the_hecktor_2022_files_and_columns(cohort):
    endpoint = _rows(cohort / "hecktor2022_endpoint_training.csv")
    clinical = _rows(cohort / "hecktor2022_clinical_info_training.csv")
    assert list(endpoint[0]) == ["PatientID", "Relapse", "RFS"]
    assert list(clinical[0])[:11] == [
        "PatientID", "CenterID", "Gender", "Age", "Weight", "Tobacco", "Alcohol", "Performance status",
        "HPV status (0=-, 1=+)", "Surgery", "Chemotherapy",
    ]  # fmt: skip
    ids = [row["PatientID"] for row in endpoint]
    assert ids == [row["PatientID"] for row in clinical] and len(set(ids)) == 2
    for patient_id in ids:
        for path in (f"imagesTr/{patient_id}__CT.nii.gz", f"imagesTr/{patient_id}__PT.nii.gz"):
            assert (cohort / path).is_file()
        assert (cohort / "labelsTr" / f"{patient_id}.nii.gz").is_file()
    assert NOTICE in (cohort / "README.txt").read_text().lower()
    assert not (cohort.parent / "cohort.partial").exists()


def test_endpoints_and_clinical_values_are_those_of_the_records_only_model(cohort):
    patients = sample_patients(2, cohort_seed=4)  # no images: the same draws as the cohort's
    endpoint = _rows(cohort / "hecktor2022_endpoint_training.csv")
    clinical = _rows(cohort / "hecktor2022_clinical_info_training.csv")
    for patient, outcome, row in zip(patients, endpoint, clinical, strict=True):
        assert (int(outcome["Relapse"]), int(outcome["RFS"])) == (
            patient.survival.relapse,
            patient.survival.rfs_days,
        )
        assert row["PatientID"].startswith(patient.centre.code)
        assert int(row["CenterID"]) == patient.centre.center_id
        assert row["HPV status (0=-, 1=+)"] == (
            "" if patient.clinical.hpv is None else str(int(patient.clinical.hpv))
        )
        record = ClinicalRecord.from_json(cohort / "clinical" / f"{row['PatientID']}.json")
        assert record == patient.clinical


def test_label_maps_lie_on_their_ct_grid_and_pet_is_suv_on_its_own_grid(cohort):
    for entry in json.loads((cohort / "dataset.json").read_text())["training"]:
        ct, pet = (sitk.ReadImage(str(cohort / path)) for path in entry["image"])
        label = sitk.ReadImage(str(cohort / entry["label"]))
        for get in ("GetSize", "GetOrigin", "GetSpacing", "GetDirection"):
            assert np.allclose(getattr(label, get)(), getattr(ct, get)(), atol=1e-5)
        assert ct.GetPixelID() == sitk.sitkInt16 and label.GetPixelID() == sitk.sitkUInt8
        assert pet.GetPixelID() == sitk.sitkFloat32 and pet.GetSpacing() != ct.GetSpacing()
        assert set(np.unique(sitk.GetArrayFromImage(label))) <= {0, 1, 2}
        assert NOTICE in ct.GetMetaData("descrip")


def test_first_case_has_dicom_ct_and_pet_series(cohort):
    first = json.loads((cohort / "dataset.json").read_text())["training"][0]["id"]
    for modality in ("CT", "PT"):
        assert len(list((cohort / "dicom" / first / modality).glob("*.dcm"))) > 10


def test_make_study_writes_nifti_dicom_and_a_clinical_file_run_can_read(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["demo", "make-study", "--seed", "9", "--out", str(out), "--size", "tiny"]) == 0
    assert "DEMO-9" in capsys.readouterr().out
    for name in ("ct.nii.gz", "pet.nii.gz", "label.nii.gz", "study.json", "README.txt"):
        assert (out / name).is_file()
    assert ClinicalRecord.from_json(out / "clinical.json") == sample_patient(9).clinical
    facts = json.loads((out / "study.json").read_text())
    assert facts["seed"] == 9 and NOTICE in facts["notice"]
    assert (
        len(list((out / "dicom" / "PT").glob("*.dcm")))
        == sitk.ReadImage(str(out / "pet.nii.gz")).GetSize()[2]
    )


def test_a_non_empty_output_folder_is_refused_and_left_untouched(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["demo", "make-study", "--out", str(tmp_path), "--size", "tiny"]) == 1
    assert "already exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
