"""`mafm3 train`, end to end: a dataset and a preset (or a pack to fine-tune) in, a skill pack out.

1. Cases: the labelled cases (segmentation) or those with an endpoint (prognosis).
2. Split: fold K of a seeded stratified k-fold split (or of `--folds-file`, a split JSON or a case-id/fold
   CSV), whose validation cases are carved from its training side; without `--fold`, a stratified hold-out of
   the validation share and no test cases. Selection only ever sees the validation cases (method-spec G2)
   unless `--select-on-test-fold` asks for the authors' selection on the test fold, which the provenance
   records; the test ids are recorded for `mafm3 eval --fold K`.
3. Model: the frozen backbone with a fresh skill from the preset (or the pack given to `--init`), or MONAI's
   UNETR from scratch (`--baseline unetr`). Only the skill's own parameters train, which is checked.
4. Data: every case preprocessed once (the preset's `PreprocessingConfig`) into a `CaseCache`.
5. `trainer.fit`, then rank 0 writes the pack (or the baseline folder) with its provenance: the dataset and a
   hash of its case list, the split, the hyper-parameters, the code version, the seed, the backbone's id
   and sha256, and the validation metrics of the selected iteration.

Packs are never overwritten: `--out` must not exist, and fine-tuning makes a new version.

This module is the orchestration; the steps live beside it: `options` (what train takes, the defaults, the
schedule), `source` (preset, preset file or pack to fine-tune), `splits` (`training_fold`), `build` (the
network and the exported folder), `model_space` (the case cache) and `trainer` (`fit`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch

from mafm3 import __version__
from mafm3.config import home_dir
from mafm3.errors import MAFM3Error
from mafm3.imaging.preprocess import PreprocessingConfig
from mafm3.progress import ProgressCallback, silent_progress
from mafm3.skills.presets import Preset
from mafm3.tasks import TRAINABLE_TASKS
from mafm3.training import prognosis, segmentation
from mafm3.training.build import TrainingModel, build_model, export_trained
from mafm3.training.datasets import Case, CaseCache, load_cohort
from mafm3.training.model_space import CachedCases, dataset_record, model_spacing
from mafm3.training.options import DEFAULTS, TrainOptions, crop_centres, schedule_for, training_dtype
from mafm3.training.source import resolve_source
from mafm3.training.splits import Fold, Splits, training_fold
from mafm3.training.trainer import FitResult, Ranks, WorkFolder, fit, seed_everything

__all__ = ["TrainOptions", "TrainResult", "train"]


@dataclass
class TrainResult:
    """out: the pack or baseline folder, None when `stop_after` stopped the run; manifest: its manifest."""

    out: Path | None
    manifest: dict | None
    fit: FitResult
    work: Path
    hyperparameters: dict = field(default_factory=dict)


def train(
    options: TrainOptions, progress: ProgressCallback = silent_progress, ranks: Ranks | None = None
) -> TrainResult:
    """Train as `options` say, on this process's rank (torchrun) or alone; returns on every rank.

    ranks: a process group already joined, kept open after training (`mafm3 improve` trains several packs
    in one torchrun job: a group cannot be joined again once left); default: join here and leave at the end.
    """
    joined = Ranks.start(options.device) if ranks is None else ranks
    try:
        return _train(options, joined, progress)
    finally:
        if ranks is None:
            joined.close()


def _train(options: TrainOptions, ranks: Ranks, progress: ProgressCallback) -> TrainResult:
    task = options.task
    if task not in TRAINABLE_TASKS:
        raise MAFM3Error(f"Unknown training task {task!r}; use {' or '.join(TRAINABLE_TASKS)}.")
    out, work = Path(options.out), WorkFolder(options.out)
    _check_output(out, work, options.resume)
    cohort = load_cohort(options.dataset)
    if options.reports is not None:
        cohort = cohort.with_reports(options.reports)
    cases = list(cohort.labelled() if task == "segmentation" else cohort.with_endpoints())
    if not cases:
        wanted = "label maps" if task == "segmentation" else "endpoints (RFS, relapse)"
        raise MAFM3Error(f"The dataset {options.dataset} has no cases with {wanted}; add some first.")
    source = resolve_source(options)
    saved_split = work.split if options.resume and work.split.is_file() else None
    splits, fold = training_fold(
        cases,
        fold=options.fold,
        folds=options.folds,
        split_seed=options.split_seed,
        val_fraction=options.val_fraction,
        split_file=saved_split or options.folds_file,
        select_on_test_fold=options.select_on_test_fold,
    )
    train_cases, val_cases = cohort.select(fold.train_ids), cohort.select(fold.val_ids)
    batch_size = options.batch_size or DEFAULTS[task]["batch_size"]
    schedule = schedule_for(options, len(train_cases), batch_size, ranks.world_size)
    dtype = training_dtype(ranks.device, options.precision)
    if ranks.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop sizes: pick the fastest kernels once

    _open_work_folder(work, options, splits, fold, ranks)

    seed_everything(options.seed)
    model = build_model(options, source, train_cases, ranks.device, dtype)
    if task == "prognosis" and model.skill is not None:
        prognosis.check_reports(train_cases + val_cases, model.skill.config.prognosis)
    train_data, val_data = _cached_cases(options, source.preset, train_cases, val_cases)
    for data in (train_data, val_data):
        if data is not None:
            data.prepare(ranks, progress)
    training_task = _task(options, source.preset, model, train_data, val_data, batch_size, ranks, dtype)
    hyperparameters = {
        **asdict(schedule),
        "optimizer": "AdamW",
        "loss": "DiceCE (softmax, one-hot, background included)" if task == "segmentation" else "MTLR NLL",
        "batch_size_per_rank": batch_size,
        "crops_per_case": options.crops_per_case if task == "segmentation" else None,
        "crop_centres": crop_centres(options) if task == "segmentation" else None,
        "segmentation_recipe": (
            asdict(segmentation.RECIPES[options.recipe]) if task == "segmentation" else None
        ),
        "class_ratios": list(options.class_ratios) if options.class_ratios else None,
        "world_size": ranks.world_size,
        "precision": str(dtype).removeprefix("torch.") if dtype else "fp32",
        "device": ranks.device.type,
        "trainable_parameters": sum(p.numel() for p in model.network.parameters),
    }
    result = fit(
        training_task,
        schedule,
        work,
        ranks,
        resume=options.resume,
        stop_after=options.stop_after,
        progress=progress,
    )
    if not result.finished:
        return TrainResult(None, None, result, work.root, hyperparameters)
    if task == "prognosis":
        training_task.set_risk_groups()
    training = {
        "task": task,
        "dataset": dataset_record(cohort, cases),
        "split": splits.to_dict(),
        "fold": fold.index,
        "n_train": len(train_cases),
        "n_val": len(val_cases),
        "n_test": len(fold.test_ids),
        # What `mafm3 eval` compares to tell the cases this pack saw (training and validation) by content.
        "case_content_sha256": {case.case_id: case.content_sha256() for case in train_cases + val_cases},
        "hyperparameters": hyperparameters,
        "seed": options.seed,
        "recipe": options.recipe,
        "code_version": __version__,
        "backbone": model.backbone,
        "iterations": result.step,
        "selection": _selection(result.selection, options.select_on_test_fold),
        "selection_on_test_fold": options.select_on_test_fold,
        "selected_iteration": result.best_step,
        "init": source.init_record,
        "time_bins_days": model.time_bins,
    }
    metrics = {"validation": asdict(result.best)} if result.best else {}
    manifest = None
    if ranks.is_main:
        manifest = export_trained(options, source, model, out, _strict_json(training), _strict_json(metrics))
    ranks.barrier()
    return TrainResult(out, manifest, result, work.root, hyperparameters)


def _open_work_folder(
    work: WorkFolder, options: TrainOptions, splits: Splits, fold: Fold, ranks: Ranks
) -> None:
    """A new run records its options and split in the work folder; a resumed one must match them."""
    fingerprint = {
        "options": {k: str(v) for k, v in asdict(options).items() if k not in _RESUMABLE_OPTIONS},
        "split": splits.to_dict(),
        "fold": fold.index,
    }
    if options.resume and json.loads(work.options.read_text()) != json.loads(json.dumps(fingerprint)):
        raise MAFM3Error(
            f"The options differ from those of the run in {work.root}; resume with the same options "
            "(only --iterations/--epochs, --stop-after and --device may change)."
        )
    if ranks.is_main and not options.resume:
        work.root.mkdir(parents=True, exist_ok=True)
        work.options.write_text(json.dumps(fingerprint, indent=2) + "\n")
        splits.save(work.split)
    ranks.barrier()


def _cached_cases(
    options: TrainOptions, preset: Preset, train_cases: list[Case], val_cases: list[Case]
) -> tuple[CachedCases, CachedCases | None]:
    """The training and validation cases (None without any) as model-space arrays in the case cache."""
    preprocessing = PreprocessingConfig.from_dict(preset.preprocessing)
    if options.task == "segmentation":
        window = tuple(preset.inference["window_voxels"])
        key = segmentation.cache_key(preprocessing, window)
        preprocess = partial(segmentation.model_space_case, config=preprocessing, window=window)
    else:
        key = prognosis.cache_key(preprocessing)
        input_voxels = preset.inference["input_voxels"]
        preprocess = partial(prognosis.model_space_image, config=preprocessing, input_voxels=input_voxels)
    cache = CaseCache(options.cache or home_dir() / "cache")
    train_data = CachedCases(train_cases, cache, key, preprocess)
    return train_data, CachedCases(val_cases, cache, key, preprocess) if val_cases else None


def _task(
    options: TrainOptions,
    preset: Preset,
    model: TrainingModel,
    train_data: CachedCases,
    val_data: CachedCases | None,
    batch_size: int,
    ranks: Ranks,
    dtype: torch.dtype | None,
):
    """The segmentation or prognosis task of `model` on the cached cases."""
    common = {"batch_size": batch_size, "ranks": ranks, "dtype": dtype, "seed": options.seed}
    if options.task == "prognosis":
        text_dropout = options.recipe == "authors"
        return prognosis.PrognosisTask(
            model.network, train_data, val_data, text_dropout=text_dropout, **common
        )
    preprocessing = PreprocessingConfig.from_dict(preset.preprocessing)
    return segmentation.SegmentationTask(
        model.network,
        train_data,
        val_data,
        window=preset.inference["window_voxels"],
        overlap=float(preset.inference.get("overlap", 0.25)),
        spacing=model_spacing(preprocessing),
        crops_per_case=options.crops_per_case,
        class_ratios=options.class_ratios,
        recipe=segmentation.RECIPES[options.recipe],
        rotate_axes=segmentation.axial_axes(preprocessing.axis_order),
        **common,
    )


def _selection(selection: str, on_test_fold: bool) -> str:
    """`FitResult.selection`, naming the test fold when validation ran on it (`--select-on-test-fold`)."""
    if not on_test_fold:
        return selection
    return selection.replace("the inner validation split", "the test fold (the authors' selection, G2)")


def _strict_json(values: dict) -> dict:
    """`values` as plain JSON types, NaN and infinities as None (manifests stay valid strict JSON)."""
    return json.loads(json.dumps(values), parse_constant=lambda _: None)


_RESUMABLE_OPTIONS = ("iterations", "epochs", "resume", "stop_after", "device")


def _check_output(out: Path, work: WorkFolder, resume: bool) -> None:
    if out.exists():
        raise MAFM3Error(
            f"{out} already exists and packs are never overwritten; choose a new --out (fine-tuning with "
            "--init writes a new version)."
        )
    if resume and not work.checkpoint.is_file():
        raise MAFM3Error(f"There is no checkpoint in {work.root} to resume; start without --resume.")
    if not resume and work.checkpoint.is_file():
        raise MAFM3Error(
            f"{work.root} holds the checkpoint of an unfinished run; pass --resume to continue it, or remove "
            "that folder to start again."
        )
