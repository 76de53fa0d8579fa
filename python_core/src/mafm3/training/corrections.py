"""The correction record of a saved case: what the annotator changed in a skill's prediction, and how long
it took (`corrections/<case id>.json` in the dataset, written by `mafm3 dataset add-case --prediction`).

| key | meaning |
|---|---|
| `format` | "mafm3-correction-v1" |
| `case_id`, `saved_at` | the case, and when it was saved (UTC, ISO 8601) |
| `editing_seconds` | how long the case was open for editing (null when not given) |
| `skill` | {id, version, weights_sha256} of the skill whose prediction was corrected (`result.json`) |
| `inputs` | {ct_series_instance_uid, pet_series_instance_uid}: the DICOM series it ran on (else null) |
| `prediction` | {folder, result_json_sha256, labels_sha256}: the `mafm3 run` output that was corrected |
| `segments` | per segment (GTVp, GTVn): voxels predicted, corrected, added, removed (and ml), their Dice |

A segment's Dice is null when prediction and correction are both empty.

Counts compare the prediction's label map with the saved label voxel by voxel on the same grid (checked):
added = in the correction, not in the prediction; removed = in the prediction, not in the correction. The Dice
of prediction against correction is the annotator's effort per case (1: nothing to change), the number the
loop of `mafm3 improve` should raise from version to version; `summary` averages it per skill version.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mafm3.errors import MAFM3Error
from mafm3.files import file_sha256
from mafm3.training.metrics import HECKTOR_CLASSES, segmentation_case_metrics

FORMAT = "mafm3-correction-v1"
FOLDER = "corrections"
GRID_TOLERANCE = 1e-4  # mm and direction-cosine units, as for a label on its CT grid


def correction_record(
    prediction: str | Path, correction, case_id: str, editing_seconds: float | None = None
) -> dict:
    """The record of `correction` (the saved label map, a SimpleITK image with 0/1 GTVp/2 GTVn) against the
    segmentation in the `mafm3 run` output folder `prediction` (its label map and result.json).

    Refuses in one sentence a folder without a segmentation, and a prediction on another grid."""
    import SimpleITK as sitk

    from mafm3.imaging.io import read_image
    from mafm3.outputs import LABEL_MAP, RESULT_JSON

    folder = Path(prediction)
    result_path, labels_path = folder / RESULT_JSON, folder / LABEL_MAP
    try:
        result = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MAFM3Error(
            f"{folder} holds no readable {RESULT_JSON} ({error}); give the output folder of the `mafm3 run` "
            "whose segmentation was corrected."
        ) from error
    segmentation = result.get("segmentation")
    if not segmentation or not labels_path.is_file():
        raise MAFM3Error(
            f"The run in {folder} has no segmentation ({LABEL_MAP}); give the output folder of the "
            "segmentation run that was corrected."
        )
    if editing_seconds is not None and not editing_seconds >= 0:
        raise MAFM3Error(f"--editing-seconds must be a number of seconds >= 0, got {editing_seconds}.")
    predicted = read_image(labels_path)[0]
    _check_same_grid(predicted, correction, folder)
    # The prediction's label values are the skill's (`segments`); the dataset's, HECKTOR's (1 GTVp, 2 GTVn).
    values = sitk.GetArrayViewFromImage(predicted)
    as_hecktor = np.zeros(values.shape, np.uint8)
    for segment in segmentation.get("segments", []):
        if segment.get("name") in HECKTOR_CLASSES:
            as_hecktor[values == segment["label"]] = HECKTOR_CLASSES[segment["name"]]
    corrected = sitk.GetArrayViewFromImage(correction)
    row = segmentation_case_metrics(as_hecktor, corrected, correction.GetSpacing()[::-1])
    voxel_ml = float(np.prod(correction.GetSpacing())) / 1000.0
    segments = {}
    for name in HECKTOR_CLASSES:
        both = int(row[f"{name}_intersection_voxels"])
        predicted_voxels, corrected_voxels = (
            int(row[f"{name}_prediction_voxels"]),
            int(row[f"{name}_reference_voxels"]),
        )
        dice = row[f"{name}_dice"]
        segments[name] = {
            "voxels_predicted": predicted_voxels,
            "voxels_corrected": corrected_voxels,
            "voxels_added": corrected_voxels - both,
            "voxels_removed": predicted_voxels - both,
            "added_ml": (corrected_voxels - both) * voxel_ml,
            "removed_ml": (predicted_voxels - both) * voxel_ml,
            "dice_prediction_vs_correction": None if math.isnan(dice) else float(dice),
        }
    sources = (result.get("inputs") or {}).get("sources") or {}
    # A volume file carries no series UID; Slicer passes its DICOM series as the run's `*_series_uid`.
    request = (result.get("inputs") or {}).get("request") or {}
    skill = segmentation.get("skill") or {}
    return {
        "format": FORMAT,
        "case_id": case_id,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "editing_seconds": None if editing_seconds is None else float(editing_seconds),
        "skill": {
            "id": skill.get("id"),
            "version": skill.get("version"),
            "weights_sha256": skill.get("weights_sha256"),
        },
        "inputs": {
            "ct_series_instance_uid": (sources.get("ct") or {}).get("series_instance_uid")
            or request.get("ct_series_uid"),
            "pet_series_instance_uid": (sources.get("pet") or {}).get("series_instance_uid")
            or request.get("pet_series_uid"),
        },
        "prediction": {
            "folder": str(folder.resolve()),
            "result_json_sha256": file_sha256(result_path),
            "labels_sha256": file_sha256(labels_path),
        },
        "segments": segments,
    }


def _check_same_grid(predicted, correction, folder: Path) -> None:
    same = predicted.GetSize() == correction.GetSize() and all(
        np.allclose(a, b, rtol=0, atol=GRID_TOLERANCE)
        for a, b in (
            (predicted.GetSpacing(), correction.GetSpacing()),
            (predicted.GetOrigin(), correction.GetOrigin()),
            (predicted.GetDirection(), correction.GetDirection()),
        )
    )
    if not same:
        raise MAFM3Error(
            f"The prediction in {folder} is not on the grid of the saved label (size {predicted.GetSize()} "
            f"vs {correction.GetSize()}); save the case from the CT the skill ran on, or drop --prediction."
        )


def read_records(dataset: str | Path) -> list[dict]:
    """The correction records of a dataset folder, in case-id order (none for a datalist or without any)."""
    folder = Path(dataset) / FOLDER
    if not folder.is_dir():
        return []
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as error:
            raise MAFM3Error(
                f"The correction record {path} cannot be read ({error}); remove or fix it."
            ) from error
    return records


def summary(records: list[dict]) -> dict:
    """Cases with a record, and per skill version the mean Dice of prediction vs correction per segment
    (over the cases where it is defined), the mean editing time and the voxels added and removed."""
    by_version: dict[str, list[dict]] = {}
    for record in records:
        skill = record.get("skill") or {}
        by_version.setdefault(f"{skill.get('id')}@{skill.get('version')}", []).append(record)
    versions = {}
    for name, group in sorted(by_version.items()):
        seconds = [r["editing_seconds"] for r in group if r.get("editing_seconds") is not None]
        entry = {"cases": len(group), "mean_editing_seconds": float(np.mean(seconds)) if seconds else None}
        for segment in HECKTOR_CLASSES:
            values = [r["segments"][segment] for r in group if segment in r.get("segments", {})]
            dice = [
                v["dice_prediction_vs_correction"]
                for v in values
                if v["dice_prediction_vs_correction"] is not None
            ]
            entry[segment] = {
                "mean_dice_prediction_vs_correction": float(np.mean(dice)) if dice else None,
                "n_dice": len(dice),
                "voxels_added": int(sum(v["voxels_added"] for v in values)),
                "voxels_removed": int(sum(v["voxels_removed"] for v in values)),
            }
        versions[name] = entry
    return {"cases_with_record": len(records), "by_skill_version": versions}
