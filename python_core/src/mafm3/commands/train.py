"""`mafm3 train segmentation|prognosis`: train a skill (or the UNETR baseline) on a dataset into a new pack.

Runs alone or under torchrun: `torchrun --nproc_per_node N -m mafm3.train segmentation ...` takes the same
arguments (`mafm3.train`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mafm3.commands import add_device_arguments
from mafm3.tasks import RECIPES, TRAINABLE_TASKS

HELP = "train a segmentation or prognosis skill (or the UNETR baseline) on a dataset into a new skill pack"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=TRAINABLE_TASKS, help="what the skill does")
    parser.add_argument(
        "--dataset",
        required=True,
        type=Path,
        metavar="DIR",
        help="HECKTOR 2022 layout folder or datalist JSON",
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="PACK", help="new pack folder (must not exist)"
    )
    parser.add_argument(
        "--preset",
        help="skill preset name (`mafm3 skill info --preset NAME`) or a preset JSON file; default "
        "hecktor-seg-ct, hecktor-seg-petct (with --modalities ct,pet) or hecktor-prognosis",
    )
    parser.add_argument(
        "--modalities",
        type=_modalities,
        metavar="ct[,pet]",
        help="inputs the skill takes (checked against the preset)",
    )
    parser.add_argument(
        "--init", metavar="PACK", help="fine-tune this pack (folder or installed id): a new version"
    )
    parser.add_argument("--id", dest="skill_id", help="skill id of the new pack (default: the preset's name)")
    parser.add_argument(
        "--version", help="version of the new pack (default 1.0.0; with --init the next minor)"
    )
    parser.add_argument("--backbone", help="backbone id or folder (default: the only imported one)")
    split = parser.add_argument_group(
        "split (model selection sees only the validation cases, unless --select-on-test-fold)"
    )
    split.add_argument(
        "--fold", type=int, metavar="K", help="train on fold K (0-based) and hold out its test cases"
    )
    split.add_argument(
        "--folds-file",
        type=Path,
        metavar="JSON|CSV",
        help="split JSON written by mafm3, or a CSV of case id (PatientID, case_id or id) and fold: fold K "
        "is the K-th smallest fold value (default: a k-fold split made here)",
    )
    split.add_argument(
        "--select-on-test-fold",
        action="store_true",
        help="select the checkpoint on the test fold, as the authors did (method-spec G2; recorded in the "
        "pack); default: on an inner validation split",
    )
    split.add_argument("--folds", type=int, default=5, help="k of the k-fold split (default 5)")
    split.add_argument("--split-seed", type=int, default=42, help="seed of the split (default 42)")
    split.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of the training side used for validation (0.2)"
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--iterations", type=int, help="optimiser steps (segmentation default 25000)")
    budget.add_argument("--epochs", type=int, help="passes over the training cases (prognosis default 50)")
    parser.add_argument("--batch-size", type=int, help="cases per iteration and process (default 1 / 4)")
    parser.add_argument(
        "--crops-per-case", type=int, default=4, help="segmentation crops per case (default 4)"
    )
    parser.add_argument(
        "--class-ratios",
        type=float,
        nargs=3,
        metavar=("BG", "GTVP", "GTVN"),
        help="centre segmentation crops on background, GTVp and GTVn voxels with these odds "
        "(default: tumour or background 1:1, the authors' recipe)",
    )
    parser.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-4 / 3e-4)")
    parser.add_argument(
        "--poly-lr",
        action="store_true",
        help="decay the learning rate as (1 - step/iterations)^0.9 to 0 (default: constant / StepLR)",
    )
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-5)")
    parser.add_argument(
        "--val-every", type=int, help="iterations between validations (default 500 / one epoch)"
    )
    parser.add_argument(
        "--recipe",
        choices=RECIPES,
        default="ours",
        help="training recipe: ours (default, corrected) or the authors' (README: Reproducing the paper)",
    )
    parser.add_argument(
        "--reports",
        type=Path,
        metavar="CSV",
        help="prognosis: each patient's report text (PatientID and `text` columns, like the authors' "
        "TNM_hector_prompts.csv), read by the report encoder instead of the template of the clinical record",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the initialisation and the data draws")
    parser.add_argument("--resume", action="store_true", help="continue the run checkpointed in <out>.work")
    parser.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="stop after N iterations of this run (checkpointed; then --resume)",
    )
    parser.add_argument(
        "--baseline", choices=["unetr"], help="train MONAI's UNETR from scratch instead of a skill"
    )
    parser.add_argument(
        "--baseline-size",
        choices=["paper", "small"],
        default="paper",
        help="UNETR size (small: for CPU demos)",
    )
    add_device_arguments(parser, precision_help="autocast; auto: bf16 (or fp16) on CUDA, fp32 on a CPU")
    parser.add_argument(
        "--cache", type=Path, metavar="DIR", help="preprocessed-case cache (default <MAFM3_HOME>/cache)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _modalities(text: str) -> tuple[str, ...]:
    names = tuple(part.strip().upper() for part in text.split(",") if part.strip())
    if names not in (("CT",), ("CT", "PET")):
        raise argparse.ArgumentTypeError(f"use ct or ct,pet, got {text!r}")
    return names


def run(args: argparse.Namespace) -> int:
    from mafm3.commands import options_from
    from mafm3.progress import TerminalProgress
    from mafm3.training.pipeline import TrainOptions, train

    options = options_from(args, TrainOptions)
    with TerminalProgress(enabled=not args.quiet) as progress:
        result = train(options, progress)
    if args.quiet or result.manifest is None:  # only rank 0 writes the pack and reports
        if result.out is None and not args.quiet and os.environ.get("RANK", "0") == "0":
            print(f"stopped at iteration {result.fit.step}; continue with --resume ({result.work})")
        return 0
    best = result.fit.best
    manifest = result.manifest
    print(f"wrote {result.out} ({manifest['id']} {manifest['version']}): {result.fit.selection}")
    print(f"validation: {f'{best.metric} {best.score:.4f}' if best else 'none'}; work folder {result.work}")
    return 0
