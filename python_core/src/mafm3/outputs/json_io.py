"""`prognosis.json` and `result.json`: what a run found and how it was run, for scripts and for the record.

prognosis.json: {skill: {id, version}, risk, risk_group, survival_curve: {times_days, survival},
survival_probability: {"1y", "2y", "3y", "5y"}, demo[, disclaimer]}.
result.json: {mafm3_version, demo[, disclaimer], inputs (with `sources`: each file's path and, for DICOM, its
series, study and frame-of-reference UIDs), skills: [{task, id, version, weights_sha256}], backbone, device,
timings_s, peak_rss_gb, segmentation: {skill: {id, version, weights_sha256}, segments, volumes_ml, qc_flags,
postprocessing} | null, prognosis | null, classification: {skill, probabilities} | null, warnings: [one
sentence each], outputs: [file names in the output folder]}.

Each entry of `segmentation.segments` is the segment's definition (label, name, colour, codes) with its
measurements (`imaging.measurements`: volume_ml, hu_mean, suv_max, suv_mean, suv_peak, mtv_ml, tlg,
uncertainty_percent, centroid_lps, components: [the same per connected component]); SUV numbers are null
without a PET, and an empty segment has volume_ml 0 and no components. `qc_flags`: [{code, message}];
`postprocessing`: {rules: the skill's section, removed: [{label, volume_ml, suv_max, reason}]}.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mafm3 import __version__
from mafm3.results import PrognosisResult, SegmentationResult, SegmentMeasurements, StudyResult

DEMO_DISCLAIMER = "demo — synthetic data, not for clinical use"


def _skill(result) -> dict:
    weights = {"weights_sha256": result.skill_weights_sha256} if result.skill_weights_sha256 else {}
    return {"id": result.skill_id, "version": result.skill_version, **weights}


def _write_json(record: dict, path: str | Path) -> Path:
    path = Path(path)
    # `default=str` writes the paths and other plain values a caller may leave in `inputs`.
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return path


def _with_demo_flag(record: dict, demo: bool) -> dict:
    record["demo"] = demo
    if demo:
        record["disclaimer"] = DEMO_DISCLAIMER
    return record


def prognosis_record(result: PrognosisResult, *, demo: bool = False) -> dict:
    """The prognosis as written to `prognosis.json`."""
    return _with_demo_flag(result.to_dict(), demo)


def write_prognosis_json(result: PrognosisResult, path: str | Path, *, demo: bool = False) -> Path:
    """Write risk, risk group, survival curve, 1/2/3/5-year probabilities; `demo` adds the disclaimer."""
    return _write_json(prognosis_record(result, demo=demo), path)


def segment_records(segmentation: SegmentationResult) -> list[dict]:
    """Each segment's definition merged with its measurements (an empty segment, or a result made without
    measurements: its volume, other numbers null)."""
    records, volumes = [], segmentation.volumes_ml()
    for spec in segmentation.segments:
        measured = segmentation.measurements.get(spec.label) or SegmentMeasurements(
            volume_ml=volumes[spec.name], hu_mean=None
        )
        records.append(spec.to_dict() | measured.to_dict())
    return records


def segmentation_record(segmentation: SegmentationResult) -> dict:
    """The `segmentation` section of result.json."""
    return {
        "skill": _skill(segmentation),
        "segments": segment_records(segmentation),
        "volumes_ml": segmentation.volumes_ml(),
        "qc_flags": [flag.to_dict() for flag in segmentation.qc_flags],
        "postprocessing": {"rules": segmentation.postprocessing, "removed": segmentation.removed},
    }


def result_record(study: StudyResult, output_files: Sequence[str] = ()) -> dict:
    """The run as written to `result.json`; `output_files` are names relative to the output folder."""
    tasks = {
        "segmentation": study.segmentation,
        "prognosis": study.prognosis,
        "classification": study.classification,
    }
    segmentation = study.segmentation
    record = _with_demo_flag({"mafm3_version": __version__}, study.demo)
    record |= {
        "inputs": study.inputs,
        "skills": [{"task": task, **_skill(result)} for task, result in tasks.items() if result is not None],
        "backbone": study.backbone,
        "device": study.device,
        "timings_s": study.timings_s,
        "peak_rss_gb": study.peak_rss_gb,
        "segmentation": None if segmentation is None else segmentation_record(segmentation),
        "prognosis": None if study.prognosis is None else study.prognosis.to_dict(),
        "classification": None
        if study.classification is None
        else {"skill": _skill(study.classification), "probabilities": study.classification.probabilities},
        "warnings": list(study.warnings),
        "outputs": list(output_files),
    }
    return record


def write_result_json(study: StudyResult, path: str | Path, output_files: Sequence[str] = ()) -> Path:
    """Write inputs, skills, backbone (id, sha256), device, timings, peak RSS, volumes and the file list."""
    return _write_json(result_record(study, output_files), path)
