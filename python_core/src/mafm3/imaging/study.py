"""One patient's inputs, read, converted and checked: CT in HU, optional PET in SUV, clinical record."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from mafm3.clinical import ClinicalRecord
from mafm3.imaging.io import choose_series, list_dicom_series, read_dicom_series, read_image
from mafm3.imaging.suv import pet_to_suv
from mafm3.imaging.validation import validate_ct, validate_overlap, validate_pet, validate_volume
from mafm3.progress import ProgressCallback, silent_progress


@dataclass
class Study:
    """ct: float32 HU; pet: float32 SUV on its OWN grid (never resampled here), or None; both LPS.

    sources: {"ct": source dict, "pet": source dict with "suv" (the conversion info), "clinical": path}
    (see `imaging.io` for the source dict); JSON-serialisable, for result.json.
    """

    ct: sitk.Image
    pet: sitk.Image | None = None
    clinical: ClinicalRecord | None = None
    sources: dict = field(default_factory=dict)


def study_from_images(
    ct: sitk.Image,
    pet: sitk.Image | None = None,
    clinical: ClinicalRecord | None = None,
    sources: dict | None = None,
) -> Study:
    """Check and cast in-memory images (CT in HU, PET already in SUV) into a `Study`.

    Raises `MAFM3Error` for a CT that is not a CT-like 3-D volume, a negative PET, or a PET and CT that do not
    overlap in physical space.
    """
    validate_ct(ct)
    ct = sitk.Cast(ct, sitk.sitkFloat32)
    if pet is not None:
        validate_volume(pet, "The PET")
        pet = sitk.Cast(pet, sitk.sitkFloat32)
        validate_pet(pet)
        validate_overlap(ct, pet)
    return Study(ct=ct, pet=pet, clinical=clinical, sources=dict(sources or {}))


def load_study(
    ct_path: str | Path,
    pet_path: str | Path | None = None,
    clinical_path: str | Path | None = None,
    *,
    pet_units: str = "auto",
    pet_scale: float | None = None,
    ct_series_uid: str | None = None,
    pet_series_uid: str | None = None,
    progress: ProgressCallback = silent_progress,
) -> Study:
    """Read a study from files: CT (DICOM folder or file, NIfTI, NRRD, MHA), PET, clinical JSON.

    When `ct_path` is a DICOM folder that also holds a PT series and no `pet_path` is given, that PET is used.
    The PET is converted to SUV (`imaging.suv.pet_to_suv` with `pet_units`, `pet_scale`, and the clinical
    weight when the PET header lacks PatientWeight). Raises `MAFM3Error` with one sentence for any bad input.
    """
    progress("read", 0.0, "reading the CT")
    clinical = ClinicalRecord.from_json(clinical_path) if clinical_path is not None else None
    ct, ct_source = read_image(ct_path, "CT", ct_series_uid)
    sources = {"ct": ct_source}
    if clinical_path is not None:
        sources["clinical"] = str(clinical_path)
    progress("read", 0.5, "reading the PET")
    pet, pet_source = _read_pet(ct_source, pet_path, pet_series_uid)
    if pet is not None:
        validate_volume(pet, "The PET")
        files = pet_source.get("files")
        weight_kg = clinical.weight if clinical is not None else None
        pet, pet_source["suv"] = pet_to_suv(pet, files, units=pet_units, scale=pet_scale, weight_kg=weight_kg)
        sources["pet"] = pet_source
    study = study_from_images(ct, pet, clinical, sources)
    progress("read", 1.0, "study loaded")
    return study


def _read_pet(ct_source: dict, pet_path, pet_series_uid: str | None) -> tuple[sitk.Image | None, dict]:
    """The PET at `pet_path`; else a PT series of the CT's study in the CT's DICOM folder; else (None, {})."""
    if pet_path is not None:
        return read_image(pet_path, "PT", pet_series_uid)
    if ct_source["format"] != "dicom":
        return None, {}
    folder = ct_source["path"]
    same_study = [
        s for s in list_dicom_series(folder) if s.study_instance_uid == ct_source["study_instance_uid"]
    ]
    if pet_series_uid is None and not any(candidate.modality == "PT" for candidate in same_study):
        return None, {}
    chosen, note = choose_series(same_study, "PT", pet_series_uid, where=folder)
    return read_dicom_series(chosen), chosen.source(folder, f"{note} of the CT's study, found beside the CT")
