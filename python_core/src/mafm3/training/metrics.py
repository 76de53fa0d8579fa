"""The reported metrics: segmentation (Dice, HECKTOR aggregated Dice, HD95 in mm, volumes) and prognosis
(Harrell's and Uno's C, time-dependent AUC, integrated Brier score), with seeded bootstrap intervals.

Segmentation, per class (GTVp, GTVn; background is never a class, unlike the authors' mean: method-spec G3):
- Dice = 2|P∩R| / (|P| + |R|). Both masks empty: NaN, left out of means and counted (`n_both_empty`).
  One mask empty and the other not: 0.
- Aggregated Dice (HECKTOR 2022) = Σ 2|P∩R| / Σ (|P| + |R|) over cases, in voxels.
- HD95 in mm: MONAI's symmetric 95th-percentile Hausdorff distance between mask edges, with the case's
  spacing. Both masks empty: NaN, left out and counted. One empty and the other not: the image diagonal in mm
  (the worst case; MONAI would give NaN and silently drop the case), counted (`n_hd95_worst_case`).
Arrays are label maps in SimpleITK's array order (z, y, x); spacings are given in that order too, i.e.
`image.GetSpacing()[::-1]`.

Beside these, the authors' Dice (method-spec G3), to compare with the paper's 65.7 %: MONAI
`DiceMetric(include_background=True)` on one-hot maps of background, GTVp and GTVn, a class whose reference
is empty giving NaN (MONAI's `ignore_empty`), reduced as MONAI's "mean": per case the mean of its defined
classes, then the mean over cases (`authors_dice_case`, `authors_dice`). Background dominates it.

Prognosis: Harrell's C both as scikit-survival (ours) and as lifelines (the authors') count it; they differ
only on risks tied within 1e-8 (`lifelines_c_index`). `risk` is higher for an earlier event (the sign
scikit-survival expects; lifelines expects the opposite and would silently return 1 - C). Times are in
days; `event` is True for an observed relapse.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from mafm3.results import GTVN, GTVP

HECKTOR_CLASSES: dict[str, int] = {GTVP.name: GTVP.label, GTVN.name: GTVN.label}
SEGMENTATION_POLICY = {
    "dice_both_empty": "NaN, excluded from means, counted in n_both_empty",
    "dice_one_empty": "0",
    "hd95_both_empty": "NaN, excluded from means, counted in n_both_empty",
    "hd95_one_empty": "image diagonal in mm (worst case), counted in n_hd95_worst_case",
    "aggregated_dice": "sum of 2|P∩R| over cases / sum of |P|+|R| over cases (voxels)",
}


def hd95_mm(prediction: np.ndarray, reference: np.ndarray, spacing_zyx_mm: Sequence[float]) -> float:
    """Symmetric HD95 in mm between two boolean masks (Z, Y, X), with the empty-mask policy above."""
    from monai.metrics import compute_hausdorff_distance

    if not prediction.any() and not reference.any():
        return math.nan
    if not prediction.any() or not reference.any():
        return float(np.linalg.norm(np.multiply(prediction.shape, spacing_zyx_mm)))
    spacing = [float(s) for s in spacing_zyx_mm]
    with warnings.catch_warnings():  # MONAI 1.6 warns about an argument it passes to itself
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        distance = compute_hausdorff_distance(
            prediction[None, None],
            reference[None, None],
            include_background=True,
            percentile=95,
            spacing=spacing,
        )  # (B=1, C=1)
    return float(distance.item())


def segmentation_case_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    classes: Mapping[str, int] = HECKTOR_CLASSES,
) -> dict[str, float]:
    """Per-class Dice, HD95 (mm), volumes (ml) and voxel counts of one case, as a flat row for the CSV.

    prediction, reference: (Z, Y, X) integer label maps on the same grid. Keys are `<class>_<metric>`.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction and reference shapes differ: {prediction.shape} vs {reference.shape}")
    voxel_ml = float(np.prod(spacing_zyx_mm)) / 1000.0
    row: dict[str, float] = {}
    for name, value in classes.items():
        # Dice is counted here rather than with monai.metrics.DiceMetric: the aggregated Dice needs the raw
        # counts anyway, and DiceMetric's one-hot float tensors cost 4 bytes per voxel and class.
        predicted, true = prediction == value, reference == value
        intersection = int((predicted & true).sum())
        n_predicted, n_true = int(predicted.sum()), int(true.sum())
        row[f"{name}_dice"] = 2 * intersection / (n_predicted + n_true) if n_predicted + n_true else math.nan
        row[f"{name}_hd95_mm"] = hd95_mm(predicted, true, spacing_zyx_mm)
        row[f"{name}_prediction_ml"] = n_predicted * voxel_ml
        row[f"{name}_reference_ml"] = n_true * voxel_ml
        row[f"{name}_intersection_voxels"] = intersection
        row[f"{name}_prediction_voxels"] = n_predicted
        row[f"{name}_reference_voxels"] = n_true
    return row


AUTHORS_DICE_CLASSES = ("background", GTVP.name, GTVN.name)  # one-hot channels 0, 1, 2


def authors_dice_case(prediction: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """The authors' per-class Dice of one case (module docstring): {"background" | "GTVp" | "GTVn": Dice}, NaN
    where the reference lacks the class. prediction, reference: label maps (any shape) of 0, 1, 2.

    Counted from the 3 x 3 confusion table (one `bincount`) rather than with MONAI's one-hot float tensors,
    which cost 4 bytes per voxel and class (a 480 x 480 x 240 ROI: 660 MB per map)."""
    n = len(AUTHORS_DICE_CLASSES)
    reference, prediction = np.asarray(reference).ravel(), np.asarray(prediction).ravel()
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction and reference sizes differ: {prediction.size} vs {reference.size}")
    if max(int(prediction.max(initial=0)), int(reference.max(initial=0))) >= n:
        raise ValueError("label maps must hold only 0 (background), 1 (GTVp) and 2 (GTVn)")
    table = np.bincount(reference.astype(np.int64) * n + prediction, minlength=n * n).reshape(n, n)
    in_reference, in_prediction, both = table.sum(axis=1), table.sum(axis=0), np.diag(table)
    return {
        name: 2 * int(both[c]) / int(in_reference[c] + in_prediction[c]) if in_reference[c] else math.nan
        for c, name in enumerate(AUTHORS_DICE_CLASSES)
    }


def authors_dice(cases: Sequence[Mapping[str, float]]) -> dict:
    """The authors' reported Dice over `authors_dice_case` results: MONAI's "mean" reduction (each case's mean
    over its defined classes, then the mean over the cases with any), and per class the mean of its defined
    values (for reading it)."""
    per_case = [_nanmean(np.array([case[name] for name in AUTHORS_DICE_CLASSES], float)) for case in cases]
    return {
        "definition": "MONAI DiceMetric(include_background=True): background, GTVp and GTVn, a class with "
        "empty ground truth skipped, mean per case then over cases, on the skill's ROI grid (the authors', "
        "method-spec G3)",
        "dice": _nanmean(np.array(per_case, float)),
        "classes": {
            name: _nanmean(np.array([case[name] for case in cases], float)) for name in AUTHORS_DICE_CLASSES
        },
    }


def image_case_metrics(
    prediction, reference, classes: Mapping[str, int] = HECKTOR_CLASSES
) -> dict[str, float]:
    """`segmentation_case_metrics` of two SimpleITK label images on one grid, spacing read from the images."""
    import SimpleITK as sitk

    same_grid = prediction.GetSize() == reference.GetSize() and np.allclose(
        prediction.GetSpacing(), reference.GetSpacing(), rtol=0, atol=1e-4
    )
    if not same_grid:
        raise ValueError(
            f"prediction and reference grids differ: {prediction.GetSize()} vs {reference.GetSize()}"
        )
    arrays = (sitk.GetArrayViewFromImage(prediction), sitk.GetArrayViewFromImage(reference))  # (Z, Y, X)
    return segmentation_case_metrics(*arrays, reference.GetSpacing()[::-1], classes)


def segmentation_summary(
    rows: Sequence[Mapping[str, float]],
    classes: Mapping[str, int] = HECKTOR_CLASSES,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Per-class mean Dice, aggregated Dice and mean HD95 (with bootstrap CIs over cases), median HD95 and
    counts."""
    if not rows:
        raise ValueError("`rows` is empty: there is no case to summarise")
    summary: dict = {"n_cases": len(rows), "policy": SEGMENTATION_POLICY, "classes": {}}
    for name in classes:
        dice = np.array([row[f"{name}_dice"] for row in rows], dtype=float)
        hd95 = np.array([row[f"{name}_hd95_mm"] for row in rows], dtype=float)
        overlap = np.array([2 * row[f"{name}_intersection_voxels"] for row in rows], dtype=float)
        sizes = np.array([row[f"{name}_prediction_voxels"] + row[f"{name}_reference_voxels"] for row in rows])
        true = np.array([row[f"{name}_reference_voxels"] > 0 for row in rows])
        predicted = np.array([row[f"{name}_prediction_voxels"] > 0 for row in rows])

        def mean_dice(index: np.ndarray, dice=dice) -> float:
            return _nanmean(dice[index])

        def aggregated_dice(index: np.ndarray, overlap=overlap, sizes=sizes) -> float:
            return overlap[index].sum() / sizes[index].sum() if sizes[index].sum() else math.nan

        everything = np.arange(len(rows))
        ci = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
        summary["classes"][name] = {
            "dice_mean": mean_dice(everything),
            "dice_mean_ci": bootstrap_ci(mean_dice, len(rows), **ci),
            "dice_aggregated": aggregated_dice(everything),
            "dice_aggregated_ci": bootstrap_ci(aggregated_dice, len(rows), **ci),
            "hd95_mm_mean": _nanmean(hd95),
            "hd95_mm_mean_ci": bootstrap_ci(lambda index, hd95=hd95: _nanmean(hd95[index]), len(rows), **ci),
            "hd95_mm_median": float(np.nanmedian(hd95)) if np.isfinite(hd95).any() else math.nan,
            "n_evaluated": int(np.isfinite(dice).sum()),
            "n_both_empty": int((~true & ~predicted).sum()),
            "n_hd95_worst_case": int((true != predicted).sum()),
        }
    class_means = [values["dice_mean"] for values in summary["classes"].values()]
    summary["dice_mean_over_classes"] = _nanmean(np.array(class_means))
    return summary


HARRELL_C_DEFINITIONS = {
    "harrell_c": "scikit-survival concordance_index_censored (ours): risks within 1e-8 count as tied (1/2)",
    "harrell_c_lifelines": "lifelines concordance_index(time, -risk, event) (the authors'): only exactly "
    "equal risks count as tied (1/2)",
}


def harrell_c_index(event: ArrayLike, time_days: ArrayLike, risk: ArrayLike) -> float:
    """Harrell's C: the share of comparable pairs whose earlier event has the higher risk (risk ties 1/2)."""
    from sksurv.metrics import concordance_index_censored

    event, time_days, risk = np.asarray(event, bool), np.asarray(time_days, float), np.asarray(risk, float)
    return float(concordance_index_censored(event, time_days, risk)[0])


def lifelines_c_index(event: ArrayLike, time_days: ArrayLike, risk: ArrayLike) -> float:
    """Harrell's C as lifelines' `concordance_index(time, -risk, event)` counts it (the authors' metric).

    The comparable pairs are scikit-survival's (an event before a later time, or an event and a censoring at
    the same time); the difference is in tied risks: lifelines counts 1/2 only for exactly equal risks,
    scikit-survival (`harrell_c_index`) for risks within 1e-8 of each other. Counted here over all pairs
    (N² booleans) because lifelines itself cannot be installed beside this project's pandas (it requires
    pandas < 3). NaN without a comparable pair.
    """
    event, time, risk = np.asarray(event, bool), np.asarray(time_days, float), np.asarray(risk, float)
    earlier = time[:, None] < time[None, :]
    tied_with_censoring = (time[:, None] == time[None, :]) & ~event[None, :]
    comparable = event[:, None] & (earlier | tied_with_censoring)  # (i, j): i's event should rank higher
    if not comparable.any():
        return math.nan
    concordant = (risk[:, None] > risk[None, :]) & comparable
    tied = (risk[:, None] == risk[None, :]) & comparable
    return float((concordant.sum() + 0.5 * tied.sum()) / comparable.sum())


def uno_c_index(
    train_event: ArrayLike,
    train_time_days: ArrayLike,
    event: ArrayLike,
    time_days: ArrayLike,
    risk: ArrayLike,
    *,
    tau_days: float | None = None,
) -> float:
    """Uno's IPCW C; the censoring distribution is estimated on the training data; pairs up to `tau_days`."""
    from sksurv.metrics import concordance_index_ipcw

    train, test = _surv(train_event, train_time_days), _surv(event, time_days)
    return float(concordance_index_ipcw(train, test, np.asarray(risk, float), tau=tau_days)[0])


def time_dependent_auc(
    train_event: ArrayLike,
    train_time_days: ArrayLike,
    event: ArrayLike,
    time_days: ArrayLike,
    risk: ArrayLike,
    times_days: ArrayLike,
) -> dict:
    """Cumulative/dynamic AUC at `times_days` (within the test follow-up) and its IPCW-weighted mean."""
    from sksurv.metrics import cumulative_dynamic_auc

    train, test = _surv(train_event, train_time_days), _surv(event, time_days)
    auc, mean_auc = cumulative_dynamic_auc(
        train, test, np.asarray(risk, float), np.asarray(times_days, float)
    )
    return {
        "times_days": [float(t) for t in times_days],
        "auc": [float(a) for a in auc],
        "mean": float(mean_auc),
    }


def integrated_brier_score(
    train_event: ArrayLike,
    train_time_days: ArrayLike,
    event: ArrayLike,
    time_days: ArrayLike,
    survival: ArrayLike,
    times_days: ArrayLike,
) -> float:
    """IPCW integrated Brier score over `times_days`; survival: (N, len(times_days)) predicted S(t)."""
    from sksurv import metrics

    train, test = _surv(train_event, train_time_days), _surv(event, time_days)
    return float(
        metrics.integrated_brier_score(
            train, test, np.asarray(survival, float), np.asarray(times_days, float)
        )
    )


def evaluation_times(time_days: ArrayLike, n_times: int = 9) -> np.ndarray:
    """Default time grid: the 10th to 90th percentiles of the test follow-up times (distinct values)."""
    return np.unique(np.percentile(np.asarray(time_days, float), np.linspace(10, 90, n_times)))


def prognosis_summary(
    event: ArrayLike,
    time_days: ArrayLike,
    risk: ArrayLike,
    *,
    train_event: ArrayLike,
    train_time_days: ArrayLike,
    survival: ArrayLike | None = None,
    times_days: ArrayLike | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Harrell's C with its bootstrap CI (and as lifelines counts it), Uno's C (up to the last evaluation
    time), td-AUC and, when `survival` (N, len(times_days)) is given, the integrated Brier score.

    Default times: `evaluation_times(time_days)`.
    """
    from sksurv.exceptions import NoComparablePairException

    event, time_days, risk = np.asarray(event, bool), np.asarray(time_days, float), np.asarray(risk, float)
    if survival is not None and times_days is None:
        raise ValueError("`times_days` must be given with `survival` (the times S(t) was evaluated at)")
    times = evaluation_times(time_days) if times_days is None else np.asarray(times_days, float)

    def c_index(index: np.ndarray) -> float:
        try:
            return harrell_c_index(event[index], time_days[index], risk[index])
        except (NoComparablePairException, ValueError):  # no comparable pair, or no event, in this resample
            return math.nan

    train = (train_event, train_time_days)
    summary = {
        "n_cases": len(event),
        "n_events": int(event.sum()),
        "harrell_c": harrell_c_index(event, time_days, risk),
        "harrell_c_ci": bootstrap_ci(
            c_index, len(event), n_resamples=n_resamples, confidence=confidence, seed=seed
        ),
        "harrell_c_lifelines": lifelines_c_index(event, time_days, risk),
        "harrell_c_definitions": HARRELL_C_DEFINITIONS,
        "uno_c": uno_c_index(*train, event, time_days, risk, tau_days=float(times[-1])),
        "uno_c_tau_days": float(times[-1]),
        "time_dependent_auc": time_dependent_auc(*train, event, time_days, risk, times),
    }
    if survival is not None:
        summary["integrated_brier_score"] = integrated_brier_score(*train, event, time_days, survival, times)
    return summary


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n_cases: int,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Percentile bootstrap interval of `statistic(case_indices)` over cases resampled with replacement.

    Written here rather than with scipy.stats.bootstrap, which cannot leave out the resamples where the
    statistic is undefined (NaN: no comparable pair, no case with that class); they are counted instead.
    """
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n_cases, n_cases)) for _ in range(n_resamples)], dtype=float)
    defined = values[np.isfinite(values)]
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(defined, [tail, 100 - tail]) if defined.size else (math.nan, math.nan)
    return {
        "low": float(low),
        "high": float(high),
        "confidence": confidence,
        "n_resamples": n_resamples,
        "n_undefined": int(n_resamples - defined.size),
        "seed": seed,
    }


def write_metrics(path: str | Path, summary: Mapping, per_case: Sequence[Mapping]) -> tuple[Path, Path]:
    """Write `summary` as JSON (NaN as null) and `per_case` rows as `<stem>_per_case.csv` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = path.with_name(f"{path.stem}_per_case.csv")
    path.write_text(json.dumps(_nan_to_none(summary), indent=2, allow_nan=False) + "\n")
    columns = list(dict.fromkeys(name for row in per_case for name in row))
    with open(table, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows({k: "" if _is_nan(v) else v for k, v in row.items()} for row in per_case)
    return path, table


def _surv(event: ArrayLike, time_days: ArrayLike) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(np.asarray(event, bool), np.asarray(time_days, float))


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _nan_to_none(value):
    if isinstance(value, Mapping):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
