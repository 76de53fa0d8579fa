"""DICOM Structured Report (Comprehensive 3D SR, TID 1500 Measurement Report), written with highdicom.

Content: one volumetric measurement group (TID 1411) per non-empty segment, referencing that segment of the
run's DICOM SEG, with the lesion measurements of `imaging.measurements` (volume; with a PET, SUVbw max,
mean and peak, metabolic volume, TLG; mean HU; mean uncertainty); and, with a prognosis, one measurement
group (TID 1501) with the risk score, the risk group and the probability of no recurrence at 1/2/3/5 years.
Slicer's QuantitativeReporting and dcmqi read TID 1500. highdicom is optional (the dicom-seg extra, see
`dicom_seg`): it is imported when an SR is written, and its absence is refused in one sentence.

Concepts without a standard code (uncertainty, risk score, risk group, recurrence-free survival) use the
private coding scheme "99MAFM3", as DICOM allows for local codes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from mafm3 import __version__
from mafm3.errors import MAFM3Error
from mafm3.outputs.dicom_seg import ct_slices_on_grid, import_highdicom, with_type2_attributes
from mafm3.results import CodedConcept, PrognosisResult, SegmentationResult

SR_SERIES_NUMBER = 9300
PRIVATE_SCHEME = "99MAFM3"
SUV_BW = Code("126401", "DCM", "SUVbw")
UNITS = {
    "ml": Code("ml", "UCUM", "milliliter"),
    "suv": codes.UCUM.StandardizedUptakeValueBodyWeight,
    "hu": codes.UCUM.HounsfieldUnit,
    "g": Code("g", "UCUM", "gram"),
    "percent": Code("%", "UCUM", "percent"),
    "none": Code("1", "UCUM", "no units"),
}
UNCERTAINTY = Code("uncertainty", PRIVATE_SCHEME, "Mean normalised entropy of class probabilities")
RISK_SCORE = Code("risk", PRIVATE_SCHEME, "Recurrence risk score")
RISK_GROUP = Code("risk-group", PRIVATE_SCHEME, "Recurrence risk group")


def recurrence_free_at(years: int) -> Code:
    return Code(f"rfs-{years}y", PRIVATE_SCHEME, f"Recurrence-free survival at {years} years")


# (field of `LesionMeasurements`, concept name, derivation or None, unit key)
SEGMENT_MEASUREMENTS = (
    ("volume_ml", codes.SCT.Volume, None, "ml"),
    ("suv_max", SUV_BW, codes.SCT.Maximum, "suv"),
    ("suv_mean", SUV_BW, codes.SCT.Mean, "suv"),
    ("suv_peak", SUV_BW, codes.DCM.PeakValueWithinROI, "suv"),
    ("mtv_ml", codes.DCM.MetabolicVolume, None, "ml"),
    ("tlg", codes.DCM.TotalLesionGlycolysis, None, "g"),
    ("hu_mean", codes.DCM.AttenuationCoefficient, codes.SCT.Mean, "hu"),
    ("uncertainty_percent", UNCERTAINTY, codes.SCT.Mean, "percent"),
)


def _coded(concept: CodedConcept) -> Code:
    return Code(concept.value, concept.scheme, concept.meaning)


def _segment_groups(hd, segmentation: SegmentationResult, seg: pydicom.Dataset) -> list:
    """One group per non-empty segment; SEG segment numbers are 1..N in label order, as the SEG has them."""
    groups = []
    by_label = sorted(segmentation.segments, key=lambda spec: spec.label)
    for number, spec in enumerate(by_label, start=1):
        measured = segmentation.measurements.get(spec.label)
        if measured is None:
            continue
        measurements = [
            hd.sr.Measurement(name=name, value=float(value), unit=UNITS[unit], derivation=derivation)
            for key, name, derivation, unit in SEGMENT_MEASUREMENTS
            if (value := getattr(measured, key)) is not None
        ]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=spec.name),
                referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, number),
                finding_type=_coded(spec.type),
                finding_category=_coded(spec.category),
                measurements=measurements,
            )
        )
    return groups


def _prognosis_group(hd, prognosis: PrognosisResult):
    measurements = [hd.sr.Measurement(name=RISK_SCORE, value=prognosis.risk, unit=UNITS["none"])]
    measurements += [
        hd.sr.Measurement(name=recurrence_free_at(years), value=probability, unit=UNITS["none"])
        for years, probability in sorted(prognosis.survival_at_years.items())
        if not math.isnan(probability)  # beyond the model's last time bin: not estimable, not reported
    ]
    group = Code(prognosis.risk_group, PRIVATE_SCHEME, f"{prognosis.risk_group} risk")
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="prognosis"),
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(RISK_GROUP, group)],
    )


def write_structured_report(
    segmentation: SegmentationResult | None,
    prognosis: PrognosisResult | None,
    ct_dicom_paths: Sequence[str | Path] | None,
    seg_path: str | Path | None,
    path: str | Path,
    *,
    series_number: int = SR_SERIES_NUMBER,
) -> Path:
    """Write the TID 1500 report of a run; `seg_path` is the run's DICOM SEG (needed with a segmentation).

    Raises:
        MAFM3Error: the CT was not read from DICOM, there is nothing to report, or highdicom is missing.
    """
    if not ct_dicom_paths:
        raise MAFM3Error(
            "A DICOM SR needs a DICOM CT input; the CT was not read from a DICOM series, so use result.json "
            "instead of --sr."
        )
    if segmentation is None and prognosis is None:
        raise MAFM3Error("A DICOM SR reports a segmentation or a prognosis; run one of them, or drop --sr.")
    hd = import_highdicom()  # optional (the dicom-seg extra): refused in one sentence without it
    grid = segmentation.labels if segmentation is not None else None
    ct_headers = (
        ct_slices_on_grid(ct_dicom_paths, grid)
        if grid is not None
        else [pydicom.dcmread(p, stop_before_pixels=True) for p in ct_dicom_paths]
    )
    evidence = [with_type2_attributes(header) for header in ct_headers]
    groups = []
    if segmentation is not None:
        seg = pydicom.dcmread(seg_path)
        evidence.append(seg)
        groups += _segment_groups(hd, segmentation, seg)
    if prognosis is not None:
        groups.append(_prognosis_group(hd, prognosis))
    skill_ids = [r.skill_id for r in (segmentation, prognosis) if r is not None]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="MAFM3", manufacturer_name="MAFM3", model_name=" + ".join(skill_ids)
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MAFM3",
        series_description=f"MAFM3 {' + '.join(skill_ids)} measurements",
        software_versions=__version__,
    )
    sr.save_as(path)
    return Path(path)
