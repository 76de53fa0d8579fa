"""What `mafm3 train` takes (`TrainOptions`), the authors' defaults per task, and what follows from them
alone: the schedule, the crop policy's description and the training precision."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mafm3.engine.device import autocast_dtype
from mafm3.errors import MAFM3Error
from mafm3.tasks import RECIPES
from mafm3.training.trainer import Schedule, steps_per_epoch

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
    recipe: str = "ours"  # one of mafm3.tasks.RECIPES

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise MAFM3Error(f"Unknown --recipe {self.recipe!r}: use {' or '.join(RECIPES)}.")
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


def crop_centres(options: TrainOptions) -> str:
    if options.class_ratios is None:
        return "tumour or background voxel, 1:1"
    background, primary, nodes = options.class_ratios
    return f"background, GTVp or GTVn voxel, {background:g}:{primary:g}:{nodes:g}"


def schedule_for(options: TrainOptions, n_train: int, batch_size: int, world_size: int) -> Schedule:
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


def training_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for training: as for inference, except that "auto" trains in float32 on a CPU.

    Measured on a 2-core AVX512-BF16 CPU (demo-seg-ct, 4 crops of 32³, one thread): 1.9 s per iteration in
    float32, 3.9 s under bf16 autocast (the 3-D convolutions' backward pass is slower in bf16 there).
    """
    if precision == "auto" and device.type == "cpu":
        return None
    return autocast_dtype(device, precision)
