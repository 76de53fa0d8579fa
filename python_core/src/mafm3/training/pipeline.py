"""`mafm3 train`, end to end: a dataset and a preset (or a pack to fine-tune) in, a skill pack out.

1. Cases: the labelled cases (segmentation) or those with an endpoint (prognosis).
2. Split: fold K of a seeded stratified k-fold split (or of `--folds-file`), whose validation cases are carved
   from its training side; without `--fold`, a stratified hold-out of the validation share and no test
   cases. Selection only ever sees the validation cases (method-spec G2); the test ids are recorded for
   `mafm3 eval --fold K`.
3. Model: the frozen backbone with a fresh skill from the preset (or the pack given to `--init`), or MONAI's
   UNETR from scratch (`--baseline unetr`). Only the skill's own parameters train, which is checked.
4. Data: every case preprocessed once (the preset's `PreprocessingConfig`) into a `CaseCache`.
5. `trainer.fit`, then rank 0 writes the pack (or the baseline folder) with its provenance: the dataset and a
   hash of its case list, the split, the hyper-parameters, the code version, the seed, the backbone's id
   and sha256, and the validation metrics of the selected iteration.

Packs are never overwritten: `--out` must not exist, and fine-tuning makes a new version.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from mafm3 import __version__
from mafm3.config import backbones_dir, home_dir
from mafm3.engine.device import autocast_dtype
from mafm3.errors import MAFM3Error
from mafm3.imaging.preprocess import PreprocessingConfig
from mafm3.progress import ProgressCallback, silent_progress
from mafm3.skills.manifest import ID_PATTERN, VERSION_PATTERN, SkillManifest
from mafm3.skills.presets import Preset, get_preset
from mafm3.tasks import TRAINABLE_TASKS
from mafm3.training import prognosis, segmentation
from mafm3.training.datasets import Case, CaseCache, load_cohort
from mafm3.training.model_space import CachedCases, dataset_record, model_spacing
from mafm3.training.splits import Fold, Splits, kfold_split
from mafm3.training.trainer import (
    FitResult,
    Network,
    Ranks,
    Schedule,
    WorkFolder,
    fit,
    seed_everything,
    steps_per_epoch,
)

DEFAULT_PRESETS = {
    ("segmentation", ("CT",)): "hecktor-seg-ct",
    ("segmentation", ("CT", "PET")): "hecktor-seg-petct",
    ("prognosis", ("CT",)): "hecktor-prognosis",
}
# The authors' settings (method-spec §3.2). Segmentation: 25,000 iterations of one case x 4 crops, validation
# every 500; prognosis: 50 epochs of batch 4, StepLR(20 epochs, x0.5), validation every epoch.
DEFAULTS = {
    "segmentation": {
        "lr": 1e-4,
        "weight_decay": 1e-5,
        "batch_size": 1,
        "iterations": 25_000,
        "val_every": 500,
    },
    "prognosis": {"lr": 3e-4, "weight_decay": 1e-5, "batch_size": 4, "epochs": 50, "lr_step_epochs": 20},
}
PROGNOSIS_LR_GAMMA = 0.5
DEFAULT_VERSION = "1.0.0"


@dataclass
class TrainOptions:
    """Everything `mafm3 train` takes; None means the task's default (see `DEFAULTS`)."""

    task: str
    dataset: Path
    out: Path
    preset: str | None = None
    modalities: tuple[str, ...] | None = None  # e.g. ("CT", "PET"); checked against the preset
    fold: int | None = None  # 0-based; None: hold out a validation share, no test cases
    folds_file: Path | None = None  # a `Splits` JSON; default: a k-fold split made here
    folds: int = 5
    split_seed: int = 42
    val_fraction: float = 0.2
    iterations: int | None = None
    epochs: int | None = None
    resume: bool = False
    stop_after: int | None = None  # iterations in this call, then checkpoint and stop (continue with resume)
    baseline: str | None = None  # "unetr"
    baseline_size: str = "paper"
    backbone: str | None = None  # id under MAFM3_HOME/backbones or a folder; default: the only one there
    init: str | None = None  # pack folder or installed id to fine-tune
    skill_id: str | None = None
    version: str | None = None
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None  # cases per iteration and rank
    crops_per_case: int = 4  # segmentation
    class_ratios: tuple[float, float, float] | None = None  # segmentation crop odds (bg, GTVp, GTVn)
    poly_lr: bool = False  # decay the learning rate to 0 over the run instead of the task's default schedule
    lr: float | None = None
    weight_decay: float | None = None
    val_every: int | None = None  # iterations
    cache: Path | None = None  # default <MAFM3_HOME>/cache

    def __post_init__(self) -> None:
        if self.class_ratios is not None:
            if self.task != "segmentation":
                raise MAFM3Error("--class-ratios places segmentation crops; drop it when training prognosis.")
            self.class_ratios = tuple(float(ratio) for ratio in self.class_ratios)
            # A positive background share lets every case be cropped, even one without tumour.
            if len(self.class_ratios) != 3 or min(self.class_ratios) < 0 or self.class_ratios[0] <= 0:
                raise MAFM3Error(
                    "Give --class-ratios as three non-negative odds for background, GTVp and GTVn, with a "
                    "positive background share (e.g. 1 1 1)."
                )


@dataclass
class TrainResult:
    """out: the pack or baseline folder, None when `stop_after` stopped the run; manifest: its manifest."""

    out: Path | None
    manifest: dict | None
    fit: FitResult
    work: Path
    hyperparameters: dict = field(default_factory=dict)


def train(options: TrainOptions, progress: ProgressCallback = silent_progress) -> TrainResult:
    """Train as `options` say, on this process's rank (torchrun) or alone; returns on every rank."""
    ranks = Ranks.start(options.device)
    try:
        return _train(options, ranks, progress)
    finally:
        ranks.close()


def _train(options: TrainOptions, ranks: Ranks, progress: ProgressCallback) -> TrainResult:
    task = options.task
    if task not in TRAINABLE_TASKS:
        raise MAFM3Error(f"Unknown training task {task!r}; use {' or '.join(TRAINABLE_TASKS)}.")
    out, work = Path(options.out), WorkFolder(options.out)
    _check_output(out, work, options.resume)
    cohort = load_cohort(options.dataset)
    cases = list(cohort.labelled() if task == "segmentation" else cohort.with_endpoints())
    if not cases:
        wanted = "label maps" if task == "segmentation" else "endpoints (RFS, relapse)"
        raise MAFM3Error(f"The dataset {options.dataset} has no cases with {wanted}; add some first.")
    source = _source(options)
    splits, fold = _split(options, cases, work)
    train_cases, val_cases = cohort.select(fold.train_ids), cohort.select(fold.val_ids)
    batch_size = options.batch_size or DEFAULTS[task]["batch_size"]
    schedule = _schedule(options, len(train_cases), batch_size, ranks.world_size)
    dtype = training_dtype(ranks.device, options.precision)
    if ranks.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop sizes: pick the fastest kernels once

    _open_work_folder(work, options, splits, fold, ranks)

    seed_everything(options.seed)
    model = _build(options, source, train_cases, ranks.device, dtype)
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
        "crop_centres": _crop_centres(options) if task == "segmentation" else None,
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
        "hyperparameters": hyperparameters,
        "seed": options.seed,
        "code_version": __version__,
        "backbone": model.backbone,
        "iterations": result.step,
        "selection": result.selection,
        "selected_iteration": result.best_step,
        "init": source.init_record,
        "time_bins_days": model.time_bins,
    }
    metrics = {"validation": asdict(result.best)} if result.best else {}
    manifest = None
    if ranks.is_main:
        manifest = _export(options, source, model, out, _strict_json(training), _strict_json(metrics))
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
    model: _Model,
    train_data: CachedCases,
    val_data: CachedCases | None,
    batch_size: int,
    ranks: Ranks,
    dtype: torch.dtype | None,
):
    """The segmentation or prognosis task of `model` on the cached cases."""
    common = {"batch_size": batch_size, "ranks": ranks, "dtype": dtype, "seed": options.seed}
    if options.task == "prognosis":
        return prognosis.PrognosisTask(model.network, train_data, val_data, **common)
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
        **common,
    )


def training_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for training: as for inference, except that "auto" trains in float32 on a CPU.

    Measured on a 2-core AVX512-BF16 CPU (demo-seg-ct, 4 crops of 32³, one thread): 1.9 s per iteration in
    float32, 3.9 s under bf16 autocast (the 3-D convolutions' backward pass is slower in bf16 there).
    """
    if precision == "auto" and device.type == "cpu":
        return None
    return autocast_dtype(device, precision)


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


@dataclass
class _Source:
    """Where the skill comes from: a preset, or a pack to fine-tune (then `init` is its folder)."""

    preset: Preset
    config: object  # SkillConfig
    skill_id: str
    version: str
    init: Path | None = None
    init_manifest: SkillManifest | None = None

    @property
    def init_record(self) -> dict | None:
        if self.init_manifest is None:
            return None
        manifest = self.init_manifest
        return {"id": manifest.id, "version": manifest.version, "weights_sha256": manifest.weights["sha256"]}


def _source(options: TrainOptions) -> _Source:
    from mafm3.model.skill_model import SkillConfig
    from mafm3.skills.packs import verify_pack
    from mafm3.training.evaluation import resolve_pack

    modalities = tuple(m.upper() for m in options.modalities) if options.modalities else None
    if options.baseline not in (None, "unetr"):
        raise MAFM3Error(f"Unknown baseline {options.baseline!r}; the baseline is `unetr`.")
    if options.baseline and (options.task != "segmentation" or options.init):
        raise MAFM3Error("The UNETR baseline is a segmentation model trained from scratch; drop --init.")
    if options.init:
        folder = resolve_pack(options.init)
        manifest = verify_pack(folder)
        if manifest.task != options.task:
            raise MAFM3Error(
                f"{options.init} is a {manifest.task} skill; train it with `mafm3 train {manifest.task}`."
            )
        preset = Preset(
            manifest.preset or manifest.id,
            manifest.description,
            SkillConfig.from_dict(manifest.config),
            tuple(manifest.modalities),
            manifest.preprocessing,
            manifest.inference,
            manifest.outputs,
            demo=manifest.demo,
        )
        if options.skill_id not in (None, manifest.id):
            raise MAFM3Error("A fine-tuned skill keeps the id of the pack it starts from; drop --id.")
        version = options.version or _next_version(manifest.version)
        source = _Source(preset, preset.config, manifest.id, version, folder, manifest)
    else:
        name = options.preset or DEFAULT_PRESETS.get((options.task, modalities or ("CT",)))
        if name is None:
            raise MAFM3Error(
                f"There is no default {options.task} preset for {modalities}; name one with --preset."
            )
        preset = preset_from_file(Path(name)) if name.endswith(".json") else get_preset(name)
        if preset.config.task != options.task:
            raise MAFM3Error(
                f"Preset {name} is a {preset.config.task} skill, not {options.task}; choose another."
            )
        default_id = f"{preset.name}-unetr-baseline" if options.baseline else preset.name
        source = _Source(
            preset, preset.config, options.skill_id or default_id, options.version or DEFAULT_VERSION
        )
    if modalities and tuple(source.preset.modalities) != modalities:
        raise MAFM3Error(
            f"The skill takes {'+'.join(source.preset.modalities)}, not {'+'.join(modalities)}; "
            "choose a preset for those modalities."
        )
    if not ID_PATTERN.fullmatch(source.skill_id) or not VERSION_PATTERN.fullmatch(source.version):
        raise MAFM3Error(
            f"Skill id {source.skill_id!r} or version {source.version!r} is not valid; use lowercase "
            "letters, digits and '-' for the id and e.g. 1.0.0 for the version."
        )
    return source


def preset_from_file(path: Path) -> Preset:
    """A preset described in a JSON file, for a skill of one's own sizes: the fields of `Preset` (name,
    description, config as `SkillConfig.to_dict()`, modalities, preprocessing, inference, outputs, demo)."""
    from mafm3.model.skill_model import SkillConfig

    try:
        values = json.loads(Path(path).read_text())
        PreprocessingConfig.from_dict(values["preprocessing"])
        return Preset(
            name=values["name"],
            description=values["description"],
            config=SkillConfig.from_dict(values["config"]),
            modalities=tuple(values["modalities"]),
            preprocessing=values["preprocessing"],
            inference=values["inference"],
            outputs=values["outputs"],
            demo=bool(values.get("demo", False)),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MAFM3Error(
            f"Cannot read the preset file {path} ({error}); give the fields of a preset (name, description, "
            "config, modalities, preprocessing, inference, outputs)."
        ) from error


def _next_version(version: str) -> str:
    """The version a fine-tuned pack gets: the minor number up, the patch reset ('1.2.3' -> '1.3.0')."""
    parts = version.split(".")
    if len(parts) < 2 or not all(part.isdigit() for part in parts[:2]):
        raise MAFM3Error(f"Cannot derive a new version from {version!r}; give one with --version.")
    return ".".join([parts[0], str(int(parts[1]) + 1), *(["0"] if len(parts) > 2 else [])])


def _split(options: TrainOptions, cases: list[Case], work: WorkFolder) -> tuple[Splits, Fold]:
    if options.resume and work.split.is_file():
        splits = Splits.load(work.split)
    elif options.folds_file is not None:
        splits = Splits.load(options.folds_file)
    elif options.fold is not None:
        splits = kfold_split(
            cases, k=options.folds, seed=options.split_seed, val_fraction=options.val_fraction
        )
    else:
        splits = holdout_split(cases, options.val_fraction, options.split_seed)
    if options.fold is None and len(splits) > 1:
        raise MAFM3Error(
            f"The split has {len(splits)} folds; choose one with --fold (0 to {len(splits) - 1})."
        )
    index = options.fold or 0
    if not 0 <= index < len(splits):
        raise MAFM3Error(f"Fold {index} does not exist; the split has folds 0 to {len(splits) - 1}.")
    fold = splits[index]
    usable = {case.case_id for case in cases}
    unusable = sorted(set(fold.train_ids + fold.val_ids) - usable)
    if unusable:
        raise MAFM3Error(
            f"{len(unusable)} training case(s) of the split lack what this task needs (the first is "
            f"{unusable[0]}); use a split made for these cases."
        )
    if set(fold.test_ids) & set(fold.train_ids + fold.val_ids):
        raise MAFM3Error("The split's test cases overlap its training cases; use a split made by mafm3.")
    if not fold.train_ids:
        raise MAFM3Error("The split leaves no training cases; add cases.")
    return splits, fold


def holdout_split(cases: list[Case], val_fraction: float, seed: int) -> Splits:
    """One fold without test cases: a stratified `val_fraction` of the cases validates, the rest trains."""
    n_parts = min(max(2, round(1 / val_fraction)), len(cases)) if val_fraction > 0 else 0
    parameters = {"val_fraction": val_fraction, "stratified_by": ["event", "centre"]}
    ids = tuple(sorted(case.case_id for case in cases))
    if n_parts < 2:
        return Splits("holdout", seed, parameters, (Fold(0, ids, (), ()),))
    first = kfold_split(cases, k=n_parts, seed=seed, val_fraction=0)[0]
    return Splits("holdout", seed, parameters, (Fold(0, first.train_ids, first.test_ids, ()),))


def _crop_centres(options: TrainOptions) -> str:
    if options.class_ratios is None:
        return "tumour or background voxel, 1:1"
    background, primary, nodes = options.class_ratios
    return f"background, GTVp or GTVn voxel, {background:g}:{primary:g}:{nodes:g}"


def _schedule(options: TrainOptions, n_train: int, batch_size: int, world_size: int) -> Schedule:
    defaults = DEFAULTS[options.task]
    per_epoch = steps_per_epoch(n_train, batch_size, world_size)
    if options.iterations is not None and options.epochs is not None:
        raise MAFM3Error("Give either --iterations or --epochs, not both.")
    if options.iterations is not None:
        iterations = options.iterations
    elif options.epochs is not None or "epochs" in defaults:
        iterations = (options.epochs or defaults["epochs"]) * per_epoch
    else:
        iterations = defaults["iterations"]
    val_every = options.val_every if options.val_every is not None else defaults.get("val_every", per_epoch)
    lr_step = defaults.get("lr_step_epochs", 0) * per_epoch
    return Schedule(
        iterations=iterations,
        lr=options.lr or defaults["lr"],
        weight_decay=defaults["weight_decay"] if options.weight_decay is None else options.weight_decay,
        lr_step=0 if options.poly_lr else lr_step,
        lr_gamma=PROGNOSIS_LR_GAMMA if lr_step and not options.poly_lr else 1.0,
        lr_poly=options.poly_lr,
        val_every=min(val_every, iterations),
        seed=options.seed,
    )


@dataclass
class _Model:
    network: Network
    backbone: dict | None  # {"id", "sha256"}; None for the baseline
    skill: object | None = None  # SkillModel
    unetr_arguments: dict | None = None
    time_bins: list[float] | None = None


def _build(options: TrainOptions, source: _Source, train_cases: list[Case], device, dtype) -> _Model:
    from mafm3.engine.backbones import find_backbone
    from mafm3.model.skill_model import build_skill_model
    from mafm3.skills.backbone import load_backbone, read_manifest, resolve_backbone_dir
    from mafm3.skills.packs import load_skill
    from mafm3.skills.text_side import load_text_encoder
    from mafm3.training.baseline import build_unetr, unetr_arguments

    if options.baseline:
        window = source.preset.inference["window_voxels"]
        arguments = unetr_arguments(len(source.preset.modalities), window, options.baseline_size)
        return _Model(Network.of_module(build_unetr(arguments).to(device)), None, unetr_arguments=arguments)
    if options.backbone:
        folder = resolve_backbone_dir(options.backbone)
    elif source.init_manifest is not None:
        folder = find_backbone(source.init_manifest.backbone["sha256"], source.init_manifest.backbone["id"])
    else:
        folder = _only_backbone()
    manifest = read_manifest(folder)
    encoder = load_backbone(folder).to(device)
    encoder.autocast_dtype = dtype
    config = source.config
    needs_text = config.task == "prognosis" and config.prognosis.clinical_encoder == "report"
    text_encoder = load_text_encoder(folder).to(device) if needs_text else None
    if source.init is not None:
        skill = load_skill(source.init, encoder, manifest["sha256"], text_encoder=text_encoder).model.to(
            device
        )
    else:
        config = config.for_backbone(
            encoder.config.dim, text_dim=text_encoder.hidden_size if needs_text else None
        )
        if config.task == "prognosis":
            bins = prognosis.training_time_bins(train_cases, config.prognosis.num_time_bins)
            config = replace(config, prognosis=replace(config.prognosis, num_time_bins=bins.numel()))
        skill = build_skill_model(config, encoder, source.skill_id, text_encoder=text_encoder).to(device)
        if config.task == "prognosis":
            skill.head.set_time_bins(bins.to(device))
    network = Network.of_skill(skill)
    check_only_skill_trains(skill, encoder, network.parameters)
    time_bins = skill.head.time_bins_days.tolist() if config.task == "prognosis" else None
    return _Model(network, {"id": manifest["id"], "sha256": manifest["sha256"]}, skill, time_bins=time_bins)


def check_only_skill_trains(skill, backbone: torch.nn.Module, optimised: list[torch.nn.Parameter]) -> None:
    """The optimiser's parameters are exactly the skill's trainable ones, and nothing else requires a
    gradient (no backbone weight, no other skill's adapter). Raises RuntimeError otherwise (a bug)."""
    expected = {id(p) for p in skill.trainable_parameters()}
    learning = {id(p) for p in [*skill.parameters(), *backbone.parameters()] if p.requires_grad}
    if {id(p) for p in optimised} != expected or learning != expected:
        raise RuntimeError("parameters outside the skill would train: the backbone must stay frozen")


def _only_backbone() -> Path:
    folders = sorted(path.parent for path in backbones_dir().glob("*/manifest.json"))
    if len(folders) != 1:
        names = ", ".join(folder.name for folder in folders) or "none"
        raise MAFM3Error(
            f"{len(folders)} backbones are imported ({names}); name the one to train on with --backbone."
        )
    return folders[0]


def _export(options: TrainOptions, source: _Source, model: _Model, out: Path, training: dict, metrics: dict):
    from mafm3.skills.packs import export_pack
    from mafm3.training.baseline import export_baseline

    if options.baseline:
        return export_baseline(
            model.network.module,
            model.unetr_arguments,
            out,
            preset=source.preset,
            name=source.skill_id,
            version=source.version,
            training=training,
            metrics=metrics,
        )
    manifest = export_pack(
        model.skill,
        out,
        preset=source.preset,
        version=source.version,
        backbone_id=model.backbone["id"],
        backbone_sha256=model.backbone["sha256"],
        training=training,
        metrics=metrics,
        description=source.preset.description,
    )
    return manifest.to_dict()
