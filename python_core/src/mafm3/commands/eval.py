"""`mafm3 eval`: measure a skill pack (or a UNETR baseline folder) on a dataset through `mafm3 run`'s path."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from mafm3.commands import add_device_arguments

HELP = "evaluate a skill pack or baseline on a dataset: Dice/HD95 or C-index/AUC/Brier, JSON + per-case CSV"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        required=True,
        type=Path,
        metavar="DIR",
        help="HECKTOR 2022 layout folder or datalist JSON",
    )
    parser.add_argument(
        "--skill",
        required=True,
        metavar="PACK",
        help="pack folder or zip, installed or shipped skill id, or baseline folder",
    )
    parser.add_argument(
        "--fold", type=int, metavar="K", help="only the test cases of fold K of the pack's recorded split"
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="JSON", help="metrics file; the CSV goes beside"
    )
    add_device_arguments(parser)
    parser.add_argument(
        "--dense",
        action="store_true",
        help="decode every window of the ROI box, also those with only air and no PET uptake",
    )
    parser.add_argument(
        "--reports",
        type=Path,
        metavar="CSV",
        help="prognosis: each patient's report text (PatientID and `text` columns), for skills trained "
        "with --reports",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def run(args: argparse.Namespace) -> int:
    from mafm3.progress import TerminalProgress
    from mafm3.training.evaluation import evaluate

    progress = TerminalProgress(enabled=not args.quiet)
    try:
        summary = evaluate(
            args.dataset,
            args.skill,
            args.out,
            fold=args.fold,
            device=args.device,
            precision=args.precision,
            dense=args.dense,
            reports=args.reports,
            n_resamples=args.bootstrap,
            progress=progress,
        )
    finally:
        progress.close()
    if not args.quiet:
        print(_lines(summary, args.out))
    return 0


def _lines(summary: dict, out: Path) -> str:
    metrics = summary["metrics"]
    skill = summary["skill"]
    lines = [f"{skill['id']} {skill['version']} on {metrics['n_cases']} case(s)"]
    if summary["task"] == "segmentation":
        for name, values in metrics["classes"].items():
            ci = values["dice_mean_ci"]
            lines.append(
                f"{name}: Dice {values['dice_mean']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}], aggregated "
                f"{values['dice_aggregated']:.3f}, HD95 {values['hd95_mm_mean']:.1f} mm"
            )
        lines.append(
            f"the authors' Dice (background included, empty ground truth skipped, ROI grid): "
            f"{metrics['authors']['dice']:.3f}"
        )
    else:
        ci = metrics["harrell_c_ci"]
        brier = metrics.get("integrated_brier_score", math.nan)
        lines.append(
            f"Harrell's C {metrics['harrell_c']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}] (scikit-survival; "
            f"lifelines' count {metrics['harrell_c_lifelines']:.3f}), Uno's C {metrics['uno_c']:.3f}, "
            f"mean td-AUC {metrics['time_dependent_auc']['mean']:.3f}, IBS {brier:.3f}"
        )
    skipped = summary.get("skipped_cases") or []
    if skipped:
        listed = ", ".join(f"{case['case_id']} ({case['reason']})" for case in skipped)
        lines.append(f"skipped {len(skipped)} case(s): {listed}")
    if summary.get("n_cases_seen_in_training"):
        basis = (
            "matched by image content"
            if summary.get("seen_in_training_by") == "content"
            else "matched by case id only: the pack records no content hashes"
        )
        lines.append(
            f"note: {summary['n_cases_seen_in_training']} of these cases were used in training ({basis})"
        )
    if summary.get("selected_on_these_cases"):
        lines.append(
            "note: the skill's checkpoint was selected on these test cases (--select-on-test-fold, the "
            "authors' G2), so these numbers are optimistic"
        )
    lines.append(f"metrics: {out} and {out.with_name(out.stem + '_per_case.csv')}")
    return "\n".join(lines)
