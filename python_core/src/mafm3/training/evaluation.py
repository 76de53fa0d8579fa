"""`mafm3 eval`: a skill pack (or a UNETR baseline folder) on a dataset, measured on what users get.

A skill runs through `mafm3.engine.Engine`, the code path of `mafm3 run`: the study is read as `run` reads
it, the skill is chosen and activated on its backbone, preprocessed, windowed and mapped back to the CT's
own grid by the engine. The engine is offered exactly the pack under evaluation, installed or not. A
baseline folder (`training.baseline`) has no backbone to run on; it gets the same preprocessing, Gaussian
sliding window and mapping back to the CT grid.

Metrics are computed on the original label grid (`training.metrics`): segmentation, Dice per class (GTVp,
GTVn) without background, the HECKTOR aggregated Dice and HD95 in mm with the empty-mask policy, and beside
them the authors' Dice (`metrics.authors_dice`: background included, empty ground truth skipped), on the
skill's ROI grid as they scored it: our labels and the reference sampled nearest onto it; prognosis,
Harrell's C (risk sign as scikit-survival expects; also as lifelines counts it), Uno's C, time-dependent
AUC and the integrated Brier score, with bootstrap intervals. Writes `<out>` (JSON) and
`<out stem>_per_case.csv` beside it.

`fold=K` evaluates the test cases of fold K of the split recorded in the pack's provenance, and only when the
pack was trained on fold K; without it, every usable case of the dataset is evaluated, and the summary says
how many of them the pack saw in training and lists the cases skipped (`skipped_cases`: no label file, or
no endpoint for prognosis) with the reason. A case counts as seen when its content (`Case.content_sha256`)
is one the pack's provenance records, whatever its id; packs trained before content hashes were recorded
fall back to the case ids (`seen_in_training_by` says which).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mafm3.engine import Engine, RunRequest
from mafm3.engine.device import resolve_device
from mafm3.errors import MAFM3Error
from mafm3.imaging.io import read_image
from mafm3.progress import ProgressCallback, silent_progress
from mafm3.skills.packs import resolve_pack
from mafm3.skills.registry import AvailableSkill
from mafm3.tasks import TRAINABLE_TASKS
from mafm3.training.datasets import Case, Cohort, load_cohort
from mafm3.training.metrics import (
    AUTHORS_DICE_CLASSES,
    authors_dice,
    authors_dice_case,
    image_case_metrics,
    prognosis_summary,
    segmentation_summary,
    write_metrics,
)
from mafm3.training.model_space import case_study, dataset_record
from mafm3.training.splits import Splits


class _PackEngine(Engine):
    """The engine of `mafm3 run`, offered exactly one skill: the pack under evaluation."""

    def __init__(self, skill: AvailableSkill, device: str) -> None:
        super().__init__(device, skill_roots=[])
        self._skill = skill

    def available(self) -> list[AvailableSkill]:
        return [self._skill]


def evaluate(
    dataset: str | Path,
    skill: str | Path,
    out: str | Path,
    *,
    fold: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    dense: bool = False,
    reports: str | Path | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    progress: ProgressCallback = silent_progress,
) -> dict:
    """Evaluate `skill` (pack folder or zip, installed id, or baseline folder) on `dataset`; write the JSON
    summary to `out` and the per-case CSV beside it. Returns the summary. dense: every window of the whole
    ROI box decoded (`RunRequest.dense`) instead of only those holding body or uptake. reports: a CSV of
    each patient's report (`Cohort.with_reports`), for prognosis skills trained on reports."""
    from mafm3.outputs import check_output_file
    from mafm3.skills.packs import opened_pack, verify_pack
    from mafm3.training.baseline import is_baseline

    check_output_file(out)
    cohort = load_cohort(dataset)
    if reports is not None:
        cohort = cohort.with_reports(reports)
    with opened_pack(resolve_pack(skill)) as folder:
        if is_baseline(folder):
            manifest, predict = _baseline_predictor(folder, device, precision, dense)
        else:
            pack = verify_pack(folder)
            manifest = pack.to_dict()
            predict = _engine_predictor(AvailableSkill(pack, Path(folder)), device, precision, dense)
        task = manifest["task"]
        if task not in TRAINABLE_TASKS:
            raise MAFM3Error(
                f"Skill {manifest['id']} does {task}; `mafm3 eval` measures segmentation or prognosis."
            )
        cases, scope, seen = _cases(cohort, manifest, fold)
        rows, outcomes = [], []
        for number, case in enumerate(cases):
            progress("evaluate", number / len(cases), f"case {case.case_id} ({number + 1} of {len(cases)})")
            if task == "segmentation":
                rows.append(_segmentation_row(predict, case, manifest))
            else:
                outcome = predict(case_study(case))
                outcomes.append(outcome)
                rows.append(_prognosis_row(case, outcome))
        progress("evaluate", 1.0, f"{len(cases)} cases")
    ci = {"n_resamples": n_resamples, "seed": seed}
    if task == "segmentation":
        authors = [{name: row[f"authors_dice_{name}"] for name in AUTHORS_DICE_CLASSES} for row in rows]
        metrics = {**segmentation_summary(rows, **ci), "authors": authors_dice(authors)}
    else:
        metrics = _prognosis_metrics(cohort, cases, rows, outcomes, seen, ci)
    summary = {
        "task": task,
        "skill": {
            "id": manifest["id"],
            "version": manifest["version"],
            "weights_sha256": manifest["weights"]["sha256"],
            "baseline": manifest.get("baseline"),
            "demo": manifest.get("demo", False),
        },
        "dataset": dataset_record(cohort, cases),
        **scope,
        "device": resolve_device(device).type,
        "precision": precision,
        "dense": dense,
        "metrics": metrics,
    }
    write_metrics(out, summary, rows)
    return summary


def segmentation_rows(
    pack: str | Path,
    cases: list[Case],
    *,
    device: str = "auto",
    precision: str = "auto",
    dense: bool = False,
    progress: ProgressCallback = silent_progress,
) -> list[dict]:
    """The per-case metrics rows (`image_case_metrics` with `case_id`) of a segmentation skill pack on
    `cases`, each segmented by the engine exactly as `mafm3 run` and `evaluate` segment it."""
    from mafm3.skills.packs import verify_pack

    folder = resolve_pack(pack)
    predict = _engine_predictor(AvailableSkill(verify_pack(folder), folder), device, precision, dense)
    rows = []
    for number, case in enumerate(cases):
        progress("evaluate", number / len(cases), f"case {case.case_id} ({number + 1} of {len(cases)})")
        rows.append(_segmentation_row(predict, case))
    progress("evaluate", 1.0, f"{len(cases)} cases")
    return rows


def _segmentation_row(predict: Callable, case: Case, manifest: dict | None = None) -> dict:
    """`image_case_metrics` of one case with its `case_id`, and with the skill's `manifest` also the
    authors' Dice of each class (`authors_dice_<class>`, `_authors_dice_on_roi`)."""
    study = case_study(case)
    reference = read_image(case.label)[0]
    try:
        prediction = predict(study)
        row = {"case_id": case.case_id, **image_case_metrics(prediction, reference)}
    except ValueError as error:
        raise MAFM3Error(
            f"The label of case {case.case_id} is not on its CT grid ({error}); export it on the CT's "
            "geometry."
        ) from error
    if manifest is not None:
        authors = _authors_dice_on_roi(prediction, reference, study, manifest, case)
        row.update({f"authors_dice_{name}": value for name, value in authors.items()})
    return row


def _engine_predictor(skill: AvailableSkill, device: str, precision: str, dense: bool) -> Callable:
    engine = _PackEngine(skill, device)
    manifest = skill.manifest

    def predict(study):
        pet = study.sources.get("pet", {}).get("path")
        request = RunRequest(
            ct=str(study.sources["ct"].get("path")),
            pet=pet,
            skills=[manifest.id],
            tasks=[manifest.task],
            device=device,
            precision=precision,
            dense=dense,
        )
        result, _ = engine.run(request, study=study)
        return result.segmentation.labels if manifest.task == "segmentation" else result.prognosis

    return predict


def _baseline_predictor(folder: Path, device: str, precision: str, dense: bool) -> tuple[dict, Callable]:
    from mafm3.engine.device import autocast_dtype
    from mafm3.engine.inference import SW_BATCH_SIZE, sliding_window_labels
    from mafm3.imaging.preprocess import PreprocessingConfig, labels_to_ct_grid, prepare_input
    from mafm3.training.baseline import load_baseline

    torch_device = resolve_device(device)
    dtype = autocast_dtype(torch_device, precision)
    baseline = load_baseline(folder, torch_device)
    config = PreprocessingConfig.from_dict(baseline.manifest["preprocessing"])
    inference = baseline.manifest["inference"]

    def predict(study):
        prepared = prepare_input(study, config, skill_name=baseline.manifest["id"])
        labels = sliding_window_labels(
            baseline.module,
            prepared.array,
            inference["window_voxels"],
            overlap=float(inference.get("overlap", 0.25)),
            blend=inference.get("blend", "gaussian"),
            sw_batch_size=SW_BATCH_SIZE,
            device=torch_device,
            dtype=dtype,
            occupied=None if dense else prepared.occupied,
        )
        return labels_to_ct_grid(labels, prepared, study.ct)

    return baseline.manifest, predict


def _authors_dice_on_roi(prediction, reference, study, manifest: dict, case: Case) -> dict[str, float]:
    """`authors_dice_case` of the labels on the CT's grid, both sampled nearest onto the skill's ROI grid."""
    import SimpleITK as sitk

    from mafm3.imaging.preprocess import PreprocessingConfig, model_grid
    from mafm3.imaging.resample import resample_onto

    grid, _ = model_grid(study, PreprocessingConfig.from_dict(manifest["preprocessing"]), manifest["id"])
    on_roi = [
        sitk.GetArrayFromImage(resample_onto(image, grid, "nearest", 0)) for image in (prediction, reference)
    ]
    try:
        return authors_dice_case(*on_roi)
    except ValueError as error:
        raise MAFM3Error(f"Case {case.case_id}: {error}; fix its label map.") from error


def _cases(cohort: Cohort, manifest: dict, fold: int | None) -> tuple[list[Case], dict, list[str]]:
    """The cases to evaluate, what the summary says about them (fold, overlap with training), and the ids
    of the cases the pack trained and selected on (the recorded ids with --fold; else those of this dataset
    matched by content, or by id for packs without content hashes)."""
    task = manifest["task"]
    usable = list(cohort.labelled() if task == "segmentation" else cohort.with_endpoints())
    training = manifest.get("training") or {}
    recorded = Splits.from_dict(training["split"]) if training.get("split") else None
    trained_fold = training.get("fold")
    seen = set()
    if recorded is not None:
        seen = set(recorded[trained_fold].train_ids + recorded[trained_fold].val_ids)
    if fold is None:
        if not usable:
            raise MAFM3Error(f"The dataset {cohort.source} has no cases to evaluate a {task} skill on.")
        reason = "no label file" if task == "segmentation" else "no recurrence-free-survival endpoint"
        usable_ids = {case.case_id for case in usable}
        hashes = training.get("case_content_sha256")
        if hashes:
            seen_content = set(hashes.values())
            seen = {case.case_id for case in usable if case.content_sha256() in seen_content}
        scope = {
            "fold": None,
            "n_cases_seen_in_training": sum(case.case_id in seen for case in usable),
            "seen_in_training_by": "content" if hashes else "case id",
            "skipped_cases": [
                {"case_id": case.case_id, "reason": reason}
                for case in cohort.cases
                if case.case_id not in usable_ids
            ],
        }
        return usable, scope, sorted(seen)
    if recorded is None:
        raise MAFM3Error(
            f"Skill {manifest['id']} records no training split, so fold {fold} is unknown; "
            "evaluate without --fold."
        )
    if fold != trained_fold:
        raise MAFM3Error(
            f"Skill {manifest['id']} was trained on fold {trained_fold}, so the test cases of fold {fold} "
            f"were among its training cases; evaluate it with --fold {trained_fold}."
        )
    test_ids = recorded[fold].test_ids
    if not test_ids:
        raise MAFM3Error(
            f"Fold {fold} of skill {manifest['id']} has no test cases (it was trained on a hold-out split); "
            "evaluate without --fold on a separate dataset."
        )
    usable_ids = {case.case_id for case in usable}
    missing = [case_id for case_id in test_ids if case_id not in usable_ids]
    if missing:
        raise MAFM3Error(
            f"{len(missing)} test case(s) of fold {fold} are not usable in {cohort.source} (the first is "
            f"{missing[0]}); evaluate on the dataset the skill was trained on."
        )
    scope = {
        "fold": fold,
        "n_cases_seen_in_training": 0,
        "selected_on_these_cases": bool(training.get("selection_on_test_fold")),  # the authors' G2
    }
    return cohort.select(test_ids), scope, sorted(seen)


def _prognosis_row(case: Case, outcome) -> dict:
    row = {
        "case_id": case.case_id,
        "rfs_days": case.rfs_days,
        "relapse": int(bool(case.relapse)),
        "risk": outcome.risk,
        "risk_group": outcome.risk_group,
    }
    row.update({f"survival_{years}y": p for years, p in sorted(outcome.survival_at_years.items())})
    return row


def _prognosis_metrics(cohort, cases, rows, outcomes, training_ids, ci) -> dict:
    """`prognosis_summary` of the risks; the censoring distribution (Uno's C, td-AUC, Brier) is estimated on
    the pack's training cases when they are in this dataset, else on the evaluated cases themselves."""
    import torch
    from sksurv.exceptions import NoComparablePairException

    from mafm3.model.mtlr import survival_at
    from mafm3.training.metrics import evaluation_times

    event = np.array([bool(case.relapse) for case in cases])
    time = np.array([float(case.rfs_days) for case in cases])
    risk = np.array([row["risk"] for row in rows])
    by_id = {case.case_id: case for case in cohort.with_endpoints()}
    reference = [by_id[case_id] for case_id in training_ids if case_id in by_id]
    censoring = "training cases of the pack" if reference else "evaluated cases"
    reference = reference or cases
    train_event = np.array([bool(case.relapse) for case in reference])
    train_time = np.array([float(case.rfs_days) for case in reference])
    grid = outcomes[0].times_days  # [0, t_1..t_K], the same for every case of one skill
    times = evaluation_times(time)
    times = times[(times <= grid[-1]) & (times < train_time.max())]
    survival = None
    if times.size >= 2:
        curves = torch.tensor([outcome.survival for outcome in outcomes], dtype=torch.float64)
        survival = survival_at(curves, torch.tensor(grid[1:]), torch.tensor(times)).numpy()
    try:
        summary = prognosis_summary(
            event,
            time,
            risk,
            train_event=train_event,
            train_time_days=train_time,
            survival=survival,
            times_days=times if survival is not None else None,
            **ci,
        )
    except NoComparablePairException as error:
        raise MAFM3Error(
            "The evaluated cases hold no comparable pair (an event before another case's follow-up ends), so "
            "no C-index exists; evaluate on more cases."
        ) from error
    except ValueError as error:
        raise MAFM3Error(f"The survival metrics cannot be computed on these cases ({error}).") from error
    summary["censoring_distribution"] = censoring
    if survival is None:
        summary["integrated_brier_score"] = math.nan
    return summary
