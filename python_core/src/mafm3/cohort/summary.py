"""A cohort's summary table and metrics, rebuilt from the case folders on disk (see `mafm3.cohort`)."""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from pathlib import Path

from mafm3.cohort import (
    LABEL_MAP,
    METRICS_JSON,
    STATUSES,
    SUMMARY_CSV,
    CaseOutcome,
    completed_record,
    csv_text,
)
from mafm3.files import atomic_write_text
from mafm3.training.datasets import Cohort


def summary_rows(cohort: Cohort, out: Path, outcomes: list[CaseOutcome]) -> list[dict]:
    """One row per case of the cohort, in its order (see the `mafm3.cohort` docstring for the columns)."""
    by_id = {outcome.case_id: outcome for outcome in outcomes}
    rows = []
    for case in cohort:
        outcome = by_id.get(case.case_id)
        record = completed_record(out / case.case_id)
        row = {"case_id": case.case_id}
        if outcome is not None and outcome.status == "failed":
            row |= {"status": "failed", "seconds": outcome.seconds, "error": outcome.error}
        elif record is None:
            row["status"] = "pending"
        else:
            timings = record.get("timings_s") or {}
            seconds = timings.get("read", 0.0) + timings.get("total", 0.0)
            row |= {"status": "ok" if outcome is not None else "skipped", "seconds": round(seconds, 4)}
            volumes = (record.get("segmentation") or {}).get("volumes_ml") or {}
            row |= {f"{name}_ml": round(volume, 4) for name, volume in volumes.items()}
            prognosis = record.get("prognosis") or {}
            row |= {key: prognosis[key] for key in ("risk", "risk_group") if key in prognosis}
        rows.append(row)
    return rows


def write_summary(cohort: Cohort, out: Path, outcomes: list[CaseOutcome]) -> tuple[Path, dict[str, int]]:
    """Write `summary.csv` atomically; returns its path and the number of cases per status."""
    rows = summary_rows(cohort, out, outcomes)
    volumes = list(dict.fromkeys(key for row in rows for key in row if key.endswith("_ml")))
    columns = ["case_id", "status", "seconds", *volumes, "risk", "risk_group", "error"]
    atomic_write_text(out / SUMMARY_CSV, csv_text(rows, columns))
    counts = {status: sum(row["status"] == status for row in rows) for status in STATUSES}
    return out / SUMMARY_CSV, counts


def cohort_metrics(cohort: Cohort, out: Path) -> tuple[dict, list[dict]] | None:
    """Segmentation metrics over the done cases with a label, Harrell's C over those with an endpoint and a
    predicted risk; None when there is neither. Returns the summary and the per-case rows."""
    from mafm3.imaging.io import read_image
    from mafm3.training.metrics import image_case_metrics, segmentation_summary

    rows: dict[str, dict] = {}
    summary: dict = {}
    segmentation, off_grid = [], []
    for case in cohort:
        predicted = out / case.case_id / LABEL_MAP
        if case.label is None or not predicted.is_file() or completed_record(out / case.case_id) is None:
            continue
        try:
            values = image_case_metrics(read_image(predicted)[0], read_image(case.label)[0])
        except ValueError:  # a label not on its CT's grid cannot be compared voxel by voxel
            off_grid.append(case.case_id)
            continue
        segmentation.append(values)
        rows.setdefault(case.case_id, {"case_id": case.case_id}).update(values)
    if segmentation:
        summary["segmentation"] = segmentation_summary(segmentation)
    if off_grid:
        summary["labels_not_on_the_ct_grid"] = off_grid
    endpoints = []
    for case in cohort:
        record = completed_record(out / case.case_id) if case.has_endpoint else None
        risk = ((record or {}).get("prognosis") or {}).get("risk")
        if risk is not None:
            endpoints.append((bool(case.relapse), float(case.rfs_days), float(risk)))
            row = {"risk": risk, "rfs_days": case.rfs_days, "relapse": int(bool(case.relapse))}
            rows.setdefault(case.case_id, {"case_id": case.case_id}).update(row)
    if endpoints:
        summary["prognosis"] = _concordance(*zip(*endpoints, strict=True))
    if not summary:
        return None
    return {"dataset": str(cohort.source), **summary}, list(rows.values())


def _concordance(event, time_days, risk) -> dict:
    """Harrell's C with its bootstrap interval. Uno's C, td-AUC and the Brier score need the training
    cohort's censoring distribution, which a cohort run does not have (`mafm3 eval` reports them)."""
    import numpy as np
    from sksurv.exceptions import NoComparablePairException

    from mafm3.training.metrics import bootstrap_ci, harrell_c_index

    event, time_days, risk = np.asarray(event), np.asarray(time_days), np.asarray(risk)

    def c_index(index: np.ndarray) -> float:
        """NaN where C is undefined: no comparable pair, or (a ValueError) no event in a resample."""
        try:
            with warnings.catch_warnings():  # scikit-survival divides 0 by 0 before raising on no pair
                warnings.filterwarnings("ignore", category=RuntimeWarning)
                return harrell_c_index(event[index], time_days[index], risk[index])
        except (NoComparablePairException, ValueError):
            return math.nan

    everything = np.arange(len(event))
    return {
        "n_cases": len(event),
        "n_events": int(event.sum()),
        "harrell_c": c_index(everything),
        "harrell_c_ci": bootstrap_ci(c_index, len(event)),
    }


def write_metrics_files(cohort: Cohort, out: Path) -> Path | None:
    """Write metrics.json and metrics_per_case.csv (each replaced atomically), or nothing when there are no
    labels or endpoints to measure against. Returns the JSON's path or None."""
    from mafm3.training.metrics import write_metrics

    measured = cohort_metrics(cohort, out)
    if measured is None:
        return None
    with tempfile.TemporaryDirectory(prefix=".metrics-", dir=out) as scratch:
        written = write_metrics(Path(scratch) / METRICS_JSON, *measured)
        for path in written:
            os.replace(path, out / path.name)
    return out / METRICS_JSON
