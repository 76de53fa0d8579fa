"""`mafm3 run`: one study in, segmentation / prognosis / classification out, written under --out."""

from __future__ import annotations

import argparse
import math
import sys

from mafm3.commands import add_device_arguments
from mafm3.tasks import TASKS

HELP = "run skills on one study (CT, optional PET and clinical data) and write the results"


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, help="CT: DICOM folder, NIfTI, NRRD or MHA")
    parser.add_argument("--pet", help="PET (converted to SUV); a PT series beside a DICOM CT is found")
    parser.add_argument(
        "--ct-series", metavar="UID", help="SeriesInstanceUID of the CT when the DICOM folder holds several"
    )
    parser.add_argument(
        "--pet-series", metavar="UID", help="SeriesInstanceUID of the PET when the DICOM folder holds several"
    )
    parser.add_argument("--clinical", help="clinical record as JSON (fields in mafm3.clinical)")
    parser.add_argument(
        "--report",
        metavar="FILE",
        help="the patient's report as a text file, for prognosis skills trained on reports (--reports); "
        "replaces the clinical JSON's `report`",
    )
    parser.add_argument("--skill", nargs="+", default=[], metavar="ID", help="run these skills by id")
    parser.add_argument(
        "--task",
        nargs="+",
        default=["segmentation"],
        choices=TASKS,
        help="tasks to run when no --skill is given; the skill is chosen from the images at hand",
    )
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--dicom-seg", action="store_true", help="also write a DICOM SEG (needs a DICOM CT)")
    parser.add_argument(
        "--rtstruct", action="store_true", help="also write an RTSTRUCT for planning (needs a DICOM CT)"
    )
    parser.add_argument(
        "--sr", action="store_true", help="also write a DICOM SR (TID 1500) and the SEG it cites (DICOM CT)"
    )
    add_device_arguments(parser)
    parser.add_argument("--overlap", type=float, help="sliding-window overlap in [0, 1)")
    parser.add_argument(
        "--sw-batch-size", type=positive_int, default=4, help="windows per forward pass (at least 1)"
    )
    parser.add_argument(
        "--dense",
        action="store_true",
        help="decode every window of the ROI box, also those with only air and no PET uptake",
    )
    parser.add_argument("--pet-units", default="auto", choices=["auto", "suv", "bqml"], help="PET units")
    parser.add_argument("--pet-suv-scale", type=float, help="multiply the PET by this to get SUV")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def run(args: argparse.Namespace) -> int:
    from mafm3.engine import Engine, RunRequest
    from mafm3.progress import TerminalProgress

    request = RunRequest(
        ct=args.ct,
        pet=args.pet,
        clinical=args.clinical,
        report=args.report,
        skills=args.skill,
        tasks=args.task,
        overlap=args.overlap,
        sw_batch_size=args.sw_batch_size,
        dense=args.dense,
        pet_units=args.pet_units,
        pet_scale=args.pet_suv_scale,
        device=args.device,
        precision=args.precision,
        ct_series_uid=args.ct_series,
        pet_series_uid=args.pet_series,
    )
    progress = TerminalProgress(enabled=not args.quiet)
    try:
        result, files = Engine(args.device).run_and_write(
            request,
            args.out,
            overwrite=args.overwrite,
            dicom_seg=args.dicom_seg,
            rtstruct=args.rtstruct,
            sr=args.sr,
            progress=progress,
        )
    finally:
        progress.close()
    if not args.quiet:
        print(summary(result, files))
    else:
        for warning in result.warnings:  # a warning is never silenced
            print(f"mafm3 run: warning: {warning}", file=sys.stderr)
    return 0


def summary(result, files) -> str:
    """A few lines a clinician reads first: segment volumes, risk, survival, where the report is."""
    lines = []
    if result.demo:
        lines.append("DEMO - synthetic data, not for clinical use")
    if result.segmentation is not None:
        volumes = ", ".join(f"{name} {ml:.1f} ml" for name, ml in result.segmentation.volumes_ml().items())
        lines.append(f"segmentation ({result.segmentation.skill_id}): {volumes}")
        lines += [f"QC: {flag.message}" for flag in result.segmentation.qc_flags]
    if result.prognosis is not None:
        prognosis = result.prognosis
        two_years = prognosis.survival_at_years.get(2, math.nan)
        shown = "beyond the model's follow-up" if math.isnan(two_years) else f"{two_years:.0%}"
        lines.append(
            f"prognosis ({prognosis.skill_id}): risk {prognosis.risk:.3f} ({prognosis.risk_group}), "
            f"2-year recurrence-free survival {shown}"
        )
    if result.classification is not None:
        top = sorted(result.classification.probabilities.items(), key=lambda item: -item[1])[:3]
        lines.append("classification: " + ", ".join(f"{label} {p:.0%}" for label, p in top))
    lines.append(f"device {result.device}, {result.timings_s.get('total', 0):.1f} s")
    lines += [f"WARNING: {warning}" for warning in result.warnings]
    report = [f for f in files if f.name == "report.html"]
    if report:
        lines.append(f"report: {report[0]}")
    return "\n".join(lines)
