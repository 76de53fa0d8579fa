"""`mafm3 cohort run`: skills over every case of a dataset, resumable, with a summary table and metrics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mafm3.commands import add_device_arguments
from mafm3.tasks import TASKS

HELP = "run skills over a whole dataset (one output folder per case, resumable, summary and metrics)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="cohort_action", metavar="ACTION", required=True)
    run_parser = actions.add_parser(
        "run",
        help="run skills over every case of a dataset",
        description="Run skills over every case of a HECKTOR 2022 layout folder or datalist JSON: one "
        "output folder per case as `mafm3 run` writes it, cases already done skipped, a failed case recorded "
        "without stopping the others, summary.csv, and metrics.json when labels or endpoints exist.",
    )
    run_parser.add_argument("--dataset", type=Path, required=True, help="dataset folder or datalist JSON")
    run_parser.add_argument(
        "--skill", action="extend", nargs="+", default=[], metavar="ID", help="run these skills by id"
    )
    run_parser.add_argument(
        "--task",
        nargs="+",
        default=["segmentation"],
        choices=TASKS,
        help="tasks to run when no --skill is given; the skill is chosen from each case's images",
    )
    run_parser.add_argument("--out", type=Path, required=True, help="output folder (kept between runs)")
    run_parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: one case after another in this process; ray: a Ray Data pipeline "
        "(pip install mafm3[cohort])",
    )
    add_device_arguments(run_parser)
    run_parser.add_argument(
        "--workers", type=int, help="ray: inference actors (default one per GPU, else one)"
    )
    run_parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    from mafm3.cohort import CohortJob, run_cohort

    def progress(stage: str, fraction: float, message: str = "") -> None:
        if message and not args.quiet:
            print(f"{stage}: {message}", file=sys.stderr, flush=True)

    job = CohortJob(
        dataset=args.dataset,
        out=args.out,
        skills=tuple(args.skill),
        tasks=tuple(args.task),
        device=args.device,
        precision=args.precision,
    )
    report = run_cohort(job, engine=args.engine, workers=args.workers, progress=progress)
    counts = report.counts
    print(
        f"{sum(counts.values())} cases: {counts['ok']} run, {counts['skipped']} done before, "
        f"{counts['failed']} failed; summary {report.summary_csv}"
    )
    if report.metrics_json is not None:
        print(f"metrics {report.metrics_json}")
    if counts["failed"]:
        print(f"{counts['failed']} case(s) failed: their errors are in {report.summary_csv}", file=sys.stderr)
        return 1
    return 0
