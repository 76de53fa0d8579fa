"""`mafm3 demo make-cohort | make-study`: synthetic head & neck PET/CT studies (not for clinical use)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mafm3.demo.constants import CASES_PER_COHORT_SEED, DEMO_NOTICE, SIZES

HELP = f"generate synthetic head & neck PET/CT studies ({DEMO_NOTICE})"


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value < CASES_PER_COHORT_SEED:
        raise argparse.ArgumentTypeError(f"must be between 1 and {CASES_PER_COHORT_SEED - 1}, got {value}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def _add_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size",
        choices=list(SIZES),
        default="small",
        help="CT grid: small 192x192x128 at 1.25x1.25x2 mm (default), realistic 512x512x200 at "
        "0.98x0.98x2 mm, tiny 96x96x64 at 2.5x2.5x4 mm (tests)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="demo_action", metavar="ACTION", required=True)
    cohort = actions.add_parser(
        "make-cohort",
        help="write N synthetic studies in the HECKTOR 2022 layout",
        description="Write N synthetic studies in the HECKTOR 2022 layout (imagesTr, labelsTr, endpoint and "
        "clinical CSVs, dataset.json, clinical/<ID>.json) plus DICOM CT and PET series of the first study.",
    )
    cohort.add_argument("--n", type=_count, required=True, help="number of studies")
    cohort.add_argument(
        "--seed", type=_seed, default=0, help=f"cohort seed; study i gets seed SEED*{CASES_PER_COHORT_SEED}+i"
    )
    cohort.add_argument("--out", type=Path, required=True, help="new (or empty) output folder")
    _add_size(cohort)
    study = actions.add_parser(
        "make-study",
        help="write one synthetic study (NIfTI, DICOM and clinical JSON)",
        description="Write one synthetic study: ct.nii.gz, pet.nii.gz, label.nii.gz, clinical.json, "
        "study.json and DICOM series dicom/CT and dicom/PT (PET in Bq/ml).",
    )
    study.add_argument(
        "--seed", type=_seed, default=0, help="study seed (the same seed gives the same study)"
    )
    study.add_argument("--out", type=Path, required=True, help="new (or empty) output folder")
    _add_size(study)
    backbone = actions.add_parser(
        "make-backbone",
        help="pre-train the demo backbone on synthetic anatomy and import it",
        description="Pre-train the reduced demo CT-ViT on the tissue anatomy of synthetic studies (never on "
        "tumours) and import it as a backbone folder, as `mafm3 backbone import` does for CT-CLIP_v2.pt.",
    )
    backbone.add_argument("--out", type=Path, required=True, help="new (or empty) backbone folder")
    backbone.add_argument("--studies", type=_count, default=12, help="synthetic studies to learn from")
    backbone.add_argument("--steps", type=_count, default=300, help="optimiser steps (batch of 4 crops)")
    backbone.add_argument("--seed", type=_seed, default=0, help="seed of the studies and of the training")


def _print_progress(stage: str, fraction: float, message: str = "") -> None:
    print(f"{stage}: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from mafm3.demo.study import generate_study
    from mafm3.demo.writers import check_output_folder, write_cohort, write_study

    if args.demo_action == "make-backbone":
        from mafm3.demo.backbone import make_demo_backbone
        from mafm3.progress import TerminalProgress

        progress = TerminalProgress()
        try:
            manifest = make_demo_backbone(
                args.out, n_studies=args.studies, steps=args.steps, seed=args.seed, progress=progress
            )
        finally:
            progress.close()
        record = manifest["pretraining"]
        print(
            f"demo backbone {manifest['id']} written to {args.out}: loss {record['loss_first']} -> "
            f"{record['loss_last']} ({DEMO_NOTICE})"
        )
    elif args.demo_action == "make-cohort":
        ids = write_cohort(args.n, args.seed, args.out, args.size, progress=_print_progress)
        print(f"{len(ids)} synthetic studies written to {args.out} ({DEMO_NOTICE})")
    else:
        check_output_folder(args.out)  # before the generation, not after it
        study = generate_study(args.seed, args.size)
        write_study(study, args.out)
        volumes = f"GTVp {study.meta['gtvp_volume_ml']:.1f} ml, {len(study.patient.nodes)} node(s)"
        print(f"study {study.study_id} ({volumes}) written to {args.out} ({DEMO_NOTICE})")
    return 0
