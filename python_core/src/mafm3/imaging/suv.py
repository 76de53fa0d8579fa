"""PET activity to standardised uptake value (SUV, body weight), from the DICOM headers.

    SUV = activity (Bq/ml) * body weight (g) / injected dose decayed to the image's reference time (Bq)

with 1 ml of tissue taken as 1 g, so SUV is dimensionless (g/ml). The reference time depends on
DecayCorrection (0054,1102): START: the images are decay-corrected to the scan start, so the dose is decayed
from the injection to the scan start; ADMIN: corrected to the injection time, so the dose is used as is;
NONE: not corrected, so the dose is decayed to each slice's own acquisition time. The scan start is
SeriesDate/SeriesTime unless that is later than the earliest AcquisitionDate/AcquisitionTime (a post-processed
series), as in the QIBA vendor-neutral SUV recipe.

Rescale slope and intercept are NOT applied here: `imaging.io.read_dicom_series` reads PET as float32 with
each slice's own RescaleSlope/RescaleIntercept already applied by GDCM, so the pixels are activity in `Units`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.valuerep import DA, DT, TM

from mafm3.errors import MAFM3Error

PET_UNITS = ("auto", "bqml", "suv")
_ESCAPE = (
    "pass `--pet-units suv` if the PET is already in SUV, or `--pet-suv-scale FACTOR` to multiply it into SUV"
)


def pet_to_suv(
    pet: sitk.Image,
    dicom_files: Sequence[str | Path] | None = None,
    *,
    units: str = "auto",
    scale: float | None = None,
    weight_kg: float | None = None,
) -> tuple[sitk.Image, dict]:
    """The PET in SUV (body weight), float32, on the same grid.

    pet: the PET volume as read (float32, slope/intercept applied; pixels in the header's `Units`).
    dicom_files: the PET series' files (any order); needed unless `units="suv"` or `scale` is given.
    units: "auto" — follow the Units tag (BQML is converted, GML is already SUV); "bqml" — convert from
        Bq/ml whatever the tag says; "suv" — the pixels already are SUV (e.g. HECKTOR's NIfTI PET).
    scale: SUV = pixels * scale, overriding everything else.
    weight_kg: body weight used only when the header has no PatientWeight (e.g. from the clinical record).
    Returns: (suv, info); `info` records the method, the factor (a list with one factor per z slice for
        DecayCorrection NONE) and the header values used.
    Raises: `MAFM3Error` naming the missing or unusable header values, and how to bypass them.
    """
    if units not in PET_UNITS:
        raise ValueError(f"`units` must be one of {PET_UNITS}, got {units!r}")
    pet = sitk.Cast(pet, sitk.sitkFloat32)
    if scale is not None:
        if not (math.isfinite(scale) and scale > 0):
            raise MAFM3Error(f"The PET SUV scale factor must be a positive number, got {scale}.")
        return pet * float(scale), {"method": "scale factor given by the user", "factor": float(scale)}
    if units == "suv":
        return pet, {"method": "PET given in SUV", "factor": 1.0}
    if not dicom_files:
        raise MAFM3Error(f"The PET has no DICOM headers to compute SUV from: {_ESCAPE}.")
    headers = [pydicom.dcmread(str(path), stop_before_pixels=True) for path in dicom_files]
    header = headers[0]
    tag_units = str(header.get("Units", "")).upper()
    if units == "auto" and tag_units == "GML":
        return pet, {"method": "PET stored in SUV (Units GML)", "factor": 1.0, "units": tag_units}
    if units == "auto" and tag_units != "BQML":
        raise MAFM3Error(f"The PET Units are '{tag_units or 'missing'}', not Bq/ml (BQML): {_ESCAPE}.")
    info = _body_weight_terms(header, weight_kg)
    info["units"] = tag_units or None
    injection = info.pop("injection")
    info["injection_time"] = injection.isoformat()
    weight_g = info["weight_kg"] * 1000.0

    def factor_at(reference: datetime) -> float:
        """weight / (dose decayed from injection to `reference`)."""
        elapsed_s = (reference - injection).total_seconds()
        if elapsed_s < 0:
            raise MAFM3Error(
                f"The PET headers put the injection ({injection}) after the scan ({reference}): {_ESCAPE}."
            )
        return weight_g / (info["injected_dose_bq"] * 2.0 ** (-elapsed_s / info["half_life_s"]))

    correction = info["decay_correction"]
    info["method"] = f"body-weight SUV from DICOM headers (DecayCorrection {correction})"
    if correction == "ADMIN":
        info["factor"] = factor_at(injection)
        return pet * info["factor"], info
    if correction == "START":
        scan_start = _scan_start(headers)
        info["scan_time"] = scan_start.isoformat()
        info["factor"] = factor_at(scan_start)
        return pet * info["factor"], info
    # NONE: each slice decays from the injection to its own acquisition time.
    slice_factors = np.zeros(pet.GetSize()[2])
    for slice_header in headers:
        z_index = pet.TransformPhysicalPointToIndex([float(v) for v in slice_header.ImagePositionPatient])[2]
        if 0 <= z_index < len(slice_factors):
            slice_factors[z_index] = factor_at(_acquisition_time(slice_header))
    if not slice_factors.all():
        raise MAFM3Error(f"The PET files do not cover every slice of the PET volume: {_ESCAPE}.")
    info["factor"] = slice_factors.tolist()
    suv = sitk.GetImageFromArray(
        sitk.GetArrayViewFromImage(pet) * slice_factors[:, None, None].astype(np.float32)
    )
    suv.CopyInformation(pet)
    return suv, info


def _body_weight_terms(header: pydicom.Dataset, weight_kg: float | None) -> dict:
    """Dose, half-life, injection time, weight and decay correction from the first PET header."""
    drug = header.get("RadiopharmaceuticalInformationSequence")
    drug = drug[0] if drug else pydicom.Dataset()
    missing = []
    dose = _positive(drug.get("RadionuclideTotalDose"))
    half_life = _positive(drug.get("RadionuclideHalfLife"))
    weight = _positive(header.get("PatientWeight")) or _positive(weight_kg)
    correction = str(header.get("DecayCorrection", "")).upper()
    injection = _parse_datetime(drug.get("RadiopharmaceuticalStartDateTime")) or _parse_datetime(
        (header.get("SeriesDate") or header.get("AcquisitionDate"), drug.get("RadiopharmaceuticalStartTime"))
    )
    if dose is None:
        missing.append("RadionuclideTotalDose")
    if half_life is None:
        missing.append("RadionuclideHalfLife")
    if weight is None:
        missing.append("PatientWeight")
    if correction not in ("START", "ADMIN", "NONE"):
        missing.append("DecayCorrection (START, ADMIN or NONE)")
    if injection is None:
        missing.append("RadiopharmaceuticalStartDateTime (or StartTime with SeriesDate)")
    if missing:
        raise MAFM3Error(f"The PET headers lack {', '.join(missing)}, so SUV cannot be computed: {_ESCAPE}.")
    return {
        "injected_dose_bq": dose,
        "half_life_s": half_life,
        "weight_kg": weight,
        "weight_source": "PatientWeight" if _positive(header.get("PatientWeight")) else "clinical record",
        "decay_correction": correction,
        "injection": injection,
    }


def _scan_start(headers: list[pydicom.Dataset]) -> datetime:
    """SeriesDate/Time, or the earliest acquisition time when the series time is later or missing (QIBA)."""
    acquisitions = [
        _acquisition_time(h) for h in headers if h.get("AcquisitionTime") or h.get("AcquisitionDateTime")
    ]
    earliest = min(acquisitions) if acquisitions else None
    first = headers[0]
    series = _parse_datetime((first.get("SeriesDate"), first.get("SeriesTime")))
    if series is not None and (earliest is None or series <= earliest):
        return series
    if earliest is None:
        raise MAFM3Error(f"The PET headers lack SeriesDate/SeriesTime and AcquisitionTime: {_ESCAPE}.")
    return earliest


def _acquisition_time(header: pydicom.Dataset) -> datetime:
    value = header.get("AcquisitionDateTime") or (
        header.get("AcquisitionDate") or header.get("SeriesDate"),
        header.get("AcquisitionTime"),
    )
    moment = _parse_datetime(value)
    if moment is None:
        raise MAFM3Error(f"A PET slice lacks AcquisitionDate/AcquisitionTime: {_ESCAPE}.")
    return moment


def _parse_datetime(value) -> datetime | None:
    """A DICOM DT string, or a (DA, TM) pair of strings, as a naive datetime (time zones assumed equal);
    None when absent or malformed."""
    try:
        if isinstance(value, tuple):
            day, moment = value
            return datetime.combine(DA(str(day)), TM(str(moment))) if day and moment else None
        if not value:
            return None
        parsed = DT(str(value))
        return datetime.combine(parsed.date(), parsed.time())
    except ValueError:
        return None


def _positive(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None
