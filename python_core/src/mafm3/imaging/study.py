"""One patient's inputs, read, converted and checked: CT in HU, optional PET in SUV, clinical record."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import SimpleITK as sitk
from pydicom.misc import is_dicom

from mafm3.clinical import ClinicalRecord
from mafm3.errors import MAFM3Error
from mafm3.imaging.io import (
    DicomSeries,
    choose_series,
    dicom_series_in,
    is_image_file,
    read_image,
    read_series,
)
from mafm3.imaging.suv import pet_to_suv
from mafm3.imaging.validation import (
    registration_check,
    replace_non_finite,
    validate_ct,
    validate_pet,
    validate_volume,
)
from mafm3.progress import ProgressCallback, silent_progress

OUTSIDE_HU = -1024.0  # air: what a CT voxel without a measurement most likely was


@dataclass
class Study:
    """ct: float32 HU; pet: float32 SUV on its OWN grid (never resampled here), or None; both LPS.

    sources: {"ct": source dict, "pet": source dict with "suv" (the conversion info), "clinical": path}
    (see `imaging.io` for the source dict); JSON-serialisable, for result.json.
    checks: what the input checks measured: {"pet_ct_registration": {"overlap_fraction", "body_outline_dice",
    "best_fit_shift_mm"}} with a PET (`validation.registration_check`); JSON-serialisable.
    warnings: one sentence each: what was repaired or looks wrong but did not stop the run.
    """

    ct: sitk.Image
    pet: sitk.Image | None = None
    clinical: ClinicalRecord | None = None
    sources: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def study_from_images(
    ct: sitk.Image,
    pet: sitk.Image | None = None,
    clinical: ClinicalRecord | None = None,
    sources: dict | None = None,
) -> Study:
    """Check and cast in-memory images (CT in HU, PET already in SUV) into a `Study`.

    NaN/inf voxels (at most 1 %) become air in the CT and zero uptake in the PET, with a warning; the PET/CT
    registration is measured (`validation.registration_check`) and warned about when doubtful. The warnings
    of the sources (repaired DICOM series) come first.
    Raises `MAFM3Error` for a CT that is not a CT-like 3-D volume, more NaN/inf voxels, a negative PET, or a
    PET and CT that do not overlap in physical space.
    """
    sources = dict(sources or {})
    warnings = [
        warning
        for source in sources.values()
        if isinstance(source, dict)
        for warning in source.get("warnings", [])
    ]
    validate_volume(ct, "The CT")
    ct, repaired = replace_non_finite(sitk.Cast(ct, sitk.sitkFloat32), "The CT", OUTSIDE_HU)
    warnings += [repaired] if repaired else []
    validate_ct(ct)
    checks = {}
    if pet is not None:
        validate_volume(pet, "The PET")
        pet, repaired = replace_non_finite(sitk.Cast(pet, sitk.sitkFloat32), "The PET", 0.0)
        warnings += [repaired] if repaired else []
        validate_pet(pet)
        checks["pet_ct_registration"], registration_warnings = registration_check(ct, pet)
        warnings += registration_warnings
    return Study(ct=ct, pet=pet, clinical=clinical, sources=sources, checks=checks, warnings=warnings)


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

    DICOM series are chosen by SeriesInstanceUID when given, else by modality, and PET and CT must share
    their study (StudyInstanceUID or FrameOfReferenceUID): among several CT series, the one of the PET's
    study is taken. When `ct_path` is a DICOM folder that also holds a PT series of the CT's study and no
    `pet_path` is given, that PET is used. The PET is converted to SUV (`imaging.suv.pet_to_suv` with
    `pet_units`, `pet_scale`, and the clinical weight when the PET header lacks PatientWeight). Raises
    `MAFM3Error` with one sentence for any bad input.
    """
    progress("read", 0.0, "reading the CT")
    clinical = ClinicalRecord.from_json(clinical_path) if clinical_path is not None else None
    ct_listing = _dicom_listing(ct_path)
    pet_listing = _dicom_listing(pet_path) if pet_path is not None else None
    if pet_listing is not None:
        pet_series_uid = pet_series_uid or pet_listing[2]
    if ct_listing is None:
        ct, ct_source = read_image(ct_path, "CT", ct_series_uid)
        pet_series = None
    else:
        ct_folder, ct_all, file_uid = ct_listing
        ct_series_uid = ct_series_uid or file_uid
        pet_series = _chosen_pet(pet_listing, pet_series_uid)
        partners = [pet_series[0]] if pet_series else [s for s in ct_all if s.modality == "PT"]
        chosen, note, warning = choose_series(ct_all, "CT", ct_series_uid, str(ct_folder), partners)
        ct, ct_source = read_series(chosen, ct_folder, note, warning)
        if pet_path is None:
            pet_series = _pet_beside(chosen, ct_all, pet_series_uid, str(ct_folder))
            pet_listing = (ct_folder, ct_all, None) if pet_series else None
        elif pet_series is not None and not chosen.shares_study_with(pet_series[0]):
            raise MAFM3Error(
                f"The PET (study {pet_series[0].study_instance_uid}) and the CT (study "
                f"{chosen.study_instance_uid}) come from different studies and frames of reference: give "
                f"the PET and CT of one study, or choose them with --ct-series and --pet-series."
            )
    sources = {"ct": ct_source}
    if clinical_path is not None:
        sources["clinical"] = str(clinical_path)
    progress("read", 0.5, "reading the PET")
    if pet_series is not None:
        series, note, warning = pet_series
        pet, pet_source = read_series(series, pet_listing[0], note, warning)
    elif pet_path is not None:
        pet, pet_source = read_image(pet_path, "PT", pet_series_uid)
    else:
        pet, pet_source = None, {}
    if pet is not None:
        validate_volume(pet, "The PET")
        files = pet_source.get("files")
        weight_kg = clinical.weight if clinical is not None else None
        pet, pet_source["suv"] = pet_to_suv(pet, files, units=pet_units, scale=pet_scale, weight_kg=weight_kg)
        sources["pet"] = pet_source
    study = study_from_images(ct, pet, clinical, sources)
    progress("read", 1.0, "study loaded")
    return study


def _dicom_listing(path: str | Path) -> tuple[Path, list[DicomSeries], str | None] | None:
    """(folder, its DICOM series, the SeriesInstanceUID of the file given or None for a folder) for a DICOM
    folder or one DICOM file; None for an image file."""
    path = Path(path)
    if not path.exists():
        raise MAFM3Error(f"{path} does not exist: check the path.")
    if path.is_dir():
        return path, dicom_series_in(path), None
    if is_image_file(path) or not is_dicom(path):
        return None
    uid = pydicom.dcmread(path, stop_before_pixels=True).get("SeriesInstanceUID")
    return path.parent, dicom_series_in(path.parent), str(uid) if uid else None


def _chosen_pet(listing, pet_series_uid: str | None):
    """(series, note, warning) of the PET in a separately given DICOM folder or file; None otherwise."""
    if listing is None:
        return None
    folder, series, _ = listing
    return choose_series(series, "PT", pet_series_uid, str(folder))


def _pet_beside(ct: DicomSeries, series: list[DicomSeries], pet_series_uid: str | None, where: str):
    """The PT series of the CT's study in the CT's folder, as (series, note, warning); None when there is
    none (and no UID asks for one)."""
    same_study = [s for s in series if s.shares_study_with(ct)]
    if pet_series_uid is None and not any(candidate.modality == "PT" for candidate in same_study):
        return None
    chosen, note, warning = choose_series(same_study, "PT", pet_series_uid, where)
    return chosen, f"{note} of the CT's study, found beside the CT", warning
