"""Write synthetic studies to disk: one study folder, or a cohort in the HECKTOR 2022 layout.

Everything is written to `<out>.partial` and renamed at the end, so an interrupted run leaves no half cohort.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from mafm3.demo.constants import DEMO_NOTICE
from mafm3.demo.dicom import write_ct_series, write_pet_series
from mafm3.demo.patients import LOG_HAZARD_COEFFICIENTS, WEIBULL_SHAPE, Patient, case_seed
from mafm3.demo.study import SyntheticStudy, generate_study
from mafm3.errors import MAFM3Error
from mafm3.imaging.io import write_image
from mafm3.progress import ProgressCallback, silent_progress

COHORT_LAYOUT = """\
Layout (IDs like SYNA-001: synthetic centre code, case number):

imagesTr/<ID>__CT.nii.gz                    CT, int16 HU
imagesTr/<ID>__PT.nii.gz                    PET, float32 SUVbw, on its own grid (about 4 mm voxels)
labelsTr/<ID>.nii.gz                        uint8 on the CT grid: 0 background, 1 GTVp, 2 GTVn
hecktor2022_endpoint_training.csv           PatientID, Relapse (0/1), RFS (days)
hecktor2022_clinical_info_training.csv      PatientID, CenterID, Gender (M/F), Age, Weight, Tobacco, Alcohol,
                                            Performance status, HPV status (0=-, 1=+), Surgery, Chemotherapy
                                            (HECKTOR 2022 names; 0/1 flags; empty = missing), then T-stage,
                                            N-stage, M-stage (the names of the MAFM3 paper's CSV)
dataset.json                                Decathlon/MONAI datalist: {"training": [{"image": [CT, PT],
                                            "label": ..., "id": ..., "center_id": ...}]}, paths relative to it
clinical/<ID>.json                          ClinicalRecord fields, for `mafm3 run --clinical`
demo_truth.csv                              what images cannot tell: study seed, true log-hazard, true HPV...
dicom/<first ID>/CT/, dicom/<first ID>/PT/  DICOM series of the first case (PET in Bq/ml, Units BQML)
"""
STUDY_LAYOUT = """\
ct.nii.gz      CT, int16 HU
pet.nii.gz     PET, float32 SUVbw, on its own grid (about 4 mm voxels)
label.nii.gz   uint8 on the CT grid: 0 background, 1 GTVp, 2 GTVn
clinical.json  ClinicalRecord fields, for `mafm3 run --clinical`
study.json     ground truth: seed, centre, volumes, true uptake, nodes, RFS, relapse, true log-hazard
dicom/CT/      DICOM CT series (HU = stored - 1024)
dicom/PT/      DICOM PET series in Bq/ml (Units BQML; SUV formula in mafm3/demo/dicom.py)
"""
CLINICAL_COLUMNS = (
    "PatientID", "CenterID", "Gender", "Age", "Weight", "Tobacco", "Alcohol", "Performance status",
    "HPV status (0=-, 1=+)", "Surgery", "Chemotherapy", "T-stage", "N-stage", "M-stage",
)  # fmt: skip
ENDPOINT_COLUMNS = ("PatientID", "Relapse", "RFS")
TRUTH_COLUMNS = (
    "PatientID", "seed", "true_log_hazard", "hpv_true", "tobacco_true", "weight_kg", "site",
    "gtvp_volume_ml", "gtvp_suv_max_true", "n_nodes",
)  # fmt: skip


def check_output_folder(out: Path) -> None:
    """Refuse an output folder that exists and is not empty (nothing is overwritten)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MAFM3Error(f"The output folder {out} already exists and is not empty: choose a new folder.")


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """Yield `<out>.partial` to write into; rename it to `out` on success, remove it on failure."""
    check_output_folder(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    staging.rename(out)


def _readme(title: str, body: str) -> str:
    coefficients = ", ".join(f"{name} {value:+g}" for name, value in LOG_HAZARD_COEFFICIENTS.items())
    return (
        f"{title}\n\n{DEMO_NOTICE.upper()}.\n"
        "Made by mafm3.demo (`mafm3 demo ...`); every value is simulated.\n\n"
        f"{body}\n\n"
        f"Recurrence-free survival: Weibull proportional hazards (shape {WEIBULL_SHAPE}, time in years),\n"
        f"log-hazard coefficients: {coefficients}.\nFull model: the docstring of mafm3/demo/patients.py.\n"
    )


def _write_images(study: SyntheticStudy, ct: Path, pet: Path, label: Path) -> None:
    for image, path in ((study.ct, ct), (study.pet, pet), (study.labels, label)):
        write_image(image, path)


def _clinical_json(patient: Patient) -> str:
    return json.dumps(patient.clinical.to_dict(), indent=2) + "\n"


def write_dicom(study: SyntheticStudy, folder: Path) -> None:
    """`folder/CT/` and `folder/PT/` DICOM series of the study."""
    write_ct_series(study, folder / "CT")
    write_pet_series(study, folder / "PT")


def write_study(study: SyntheticStudy, out: Path) -> Path:
    """One study folder: ct/pet/label.nii.gz, clinical.json, study.json, dicom/CT, dicom/PT, README.txt."""
    with _staged(out) as folder:
        _write_images(study, folder / "ct.nii.gz", folder / "pet.nii.gz", folder / "label.nii.gz")
        (folder / "clinical.json").write_text(_clinical_json(study.patient))
        survival = study.patient.survival
        facts = {
            **study.meta,
            "study_id": study.study_id,
            "rfs_days": survival.rfs_days,
            "relapse": survival.relapse,
        }
        (folder / "study.json").write_text(json.dumps(facts, indent=2) + "\n")
        write_dicom(study, folder / "dicom")
        (folder / "README.txt").write_text(
            _readme(
                f"Synthetic head & neck PET/CT study {study.study_id} (seed {study.patient.seed})",
                STUDY_LAYOUT,
            )
        )
    return out


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(value)


def _clinical_row(patient_id: str, patient: Patient) -> dict:
    c = patient.clinical
    values = (
        patient_id, patient.centre.center_id, c.sex, None if c.age is None else int(c.age), c.weight,
        _flag(c.tobacco), _flag(c.alcohol), c.performance_status, _flag(c.hpv), _flag(c.surgery),
        _flag(c.chemotherapy), c.t_stage, c.n_stage, c.m_stage,
    )  # fmt: skip
    return {
        column: "" if value is None else value for column, value in zip(CLINICAL_COLUMNS, values, strict=True)
    }


def _truth_row(patient_id: str, study: SyntheticStudy) -> dict:
    p = study.patient
    values = (
        patient_id, p.seed, round(p.survival.log_hazard, 6), int(p.hpv), int(p.tobacco), p.weight_kg, p.site,
        round(study.meta["gtvp_volume_ml"], 4), round(p.tumour_suv_max, 4), len(p.nodes),
    )  # fmt: skip
    return dict(zip(TRUTH_COLUMNS, values, strict=True))


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_cohort(
    n: int, seed: int, out: Path, size: str = "small", progress: ProgressCallback = silent_progress
) -> list[str]:
    """Generate cases `case_seed(seed, 0..n-1)` and write them in the HECKTOR 2022 layout; returns the IDs."""
    if n < 1:
        raise MAFM3Error(f"The number of studies must be at least 1, got {n}.")
    ids, clinical_rows, endpoint_rows, truth_rows, training = [], [], [], [], []
    with _staged(out) as folder:
        for sub in ("imagesTr", "labelsTr", "clinical"):
            (folder / sub).mkdir()
        for index in range(n):
            progress("generate", index / n, f"study {index + 1} of {n}")
            study = generate_study(case_seed(seed, index), size)
            patient_id = f"{study.patient.centre.code}-{index + 1:03d}"
            ct, pet, label = (
                f"imagesTr/{patient_id}__CT.nii.gz",
                f"imagesTr/{patient_id}__PT.nii.gz",
                f"labelsTr/{patient_id}.nii.gz",
            )
            _write_images(study, folder / ct, folder / pet, folder / label)
            (folder / "clinical" / f"{patient_id}.json").write_text(_clinical_json(study.patient))
            if index == 0:
                write_dicom(study, folder / "dicom" / patient_id)
            survival = study.patient.survival
            ids.append(patient_id)
            clinical_rows.append(_clinical_row(patient_id, study.patient))
            endpoint_rows.append(
                {"PatientID": patient_id, "Relapse": int(survival.relapse), "RFS": survival.rfs_days}
            )
            truth_rows.append(_truth_row(patient_id, study))
            training.append(
                {
                    "image": [ct, pet],
                    "label": label,
                    "id": patient_id,
                    "center_id": study.patient.centre.center_id,
                }
            )
        _write_csv(folder / "hecktor2022_clinical_info_training.csv", CLINICAL_COLUMNS, clinical_rows)
        _write_csv(folder / "hecktor2022_endpoint_training.csv", ENDPOINT_COLUMNS, endpoint_rows)
        _write_csv(folder / "demo_truth.csv", TRUTH_COLUMNS, truth_rows)
        datalist = {
            "name": "mafm3 synthetic head & neck PET/CT",
            "description": DEMO_NOTICE,
            "modality": {"0": "CT", "1": "PT"},
            "labels": {"0": "background", "1": "GTVp", "2": "GTVn"},
            "numTraining": n,
            "training": training,
        }
        (folder / "dataset.json").write_text(json.dumps(datalist, indent=2) + "\n")
        (folder / "README.txt").write_text(
            _readme(
                f"Synthetic HECKTOR-2022-style cohort: {n} studies, cohort seed {seed}, size {size!r}",
                COHORT_LAYOUT,
            )
        )
        progress("generate", 1.0, f"{n} studies written")
    return ids
