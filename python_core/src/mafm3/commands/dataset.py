"""`mafm3 dataset add-case|info`: grow a HECKTOR 2022 layout dataset with annotated cases; summarise one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "add an annotated case to a HECKTOR 2022 layout dataset, or summarise a dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add-case",
        help="add (or with --overwrite replace) one case",
        description="Add an annotator-corrected case to a HECKTOR 2022 layout folder (created if new).",
    )
    add.add_argument("--dataset", required=True, type=Path, metavar="DIR", help="dataset folder")
    add.add_argument(
        "--ct", required=True, type=Path, metavar="PATH", help="CT: DICOM folder or NIfTI/NRRD/MHA"
    )
    add.add_argument(
        "--pet", type=Path, metavar="PATH", help="PET in SUV, on any grid (DICOM folder or file)"
    )
    add.add_argument(
        "--label",
        required=True,
        type=Path,
        metavar="PATH",
        help="label map on the CT grid: 0, 1 GTVp, 2 GTVn",
    )
    add.add_argument("--clinical", type=Path, metavar="JSON", help="clinical record (as for `mafm3 run`)")
    add.add_argument(
        "--id", dest="case_id", metavar="ID", help="case id (default: CT file name without __CT)"
    )
    add.add_argument("--rfs", type=float, metavar="DAYS", help="recurrence-free survival time in days")
    add.add_argument("--relapse", type=int, choices=(0, 1), help="1 if relapse was observed at --rfs, else 0")
    add.add_argument("--centre", metavar="NAME", help="centre name (written as CenterID)")
    add.add_argument("--overwrite", action="store_true", help="replace an existing case with this id")
    add.add_argument(
        "--prediction",
        type=Path,
        metavar="RUN_OUT_DIR",
        help="the `mafm3 run` output folder whose segmentation --label corrects: writes "
        "corrections/<ID>.json (skill version, voxels added/removed, Dice of prediction vs correction)",
    )
    add.add_argument(
        "--editing-seconds",
        type=float,
        metavar="S",
        help="how long the case was open for editing (recorded with --prediction)",
    )
    add.set_defaults(_action=_add_case)

    info = actions.add_parser(
        "info",
        help="count cases, PET, labels, endpoints, events and centres",
        description="Summarise a HECKTOR 2022 layout folder or a datalist JSON.",
    )
    info.add_argument("dataset", type=Path, help="dataset folder or datalist JSON")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(_action=_info)


def run(args: argparse.Namespace) -> int:
    return args._action(args)


def _add_case(args: argparse.Namespace) -> int:
    from mafm3.clinical import ClinicalRecord
    from mafm3.training.datasets import add_case

    case = add_case(
        args.dataset,
        ct=args.ct,
        label=args.label,
        pet=args.pet,
        clinical=ClinicalRecord.from_json(args.clinical) if args.clinical else None,
        case_id=args.case_id,
        rfs_days=args.rfs,
        relapse=None if args.relapse is None else bool(args.relapse),
        centre=args.centre,
        overwrite=args.overwrite,
        prediction=args.prediction,
        editing_seconds=args.editing_seconds,
    )
    parts = ["CT", "PET" if case.pet else None, "label", "clinical" if case.clinical else None]
    parts.append(f"RFS {case.rfs_days:g} days, relapse {int(case.relapse)}" if case.has_endpoint else None)
    parts.append("correction record" if args.prediction else None)
    print(f"added case {case.case_id} to {args.dataset} ({', '.join(p for p in parts if p)})")
    return 0


def _info(args: argparse.Namespace) -> int:
    from mafm3.training import corrections
    from mafm3.training.datasets import load_cohort

    summary = load_cohort(args.dataset).summary()
    summary["corrections"] = corrections.summary(corrections.read_records(args.dataset))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    centres = ", ".join(f"{name} {count}" for name, count in summary["centres"].items()) or "none"
    print(
        "\n".join(
            [
                f"dataset      {summary['source']} ({summary['layout']})",
                f"cases        {summary['cases']}",
                f"with PET     {summary['with_pet']}",
                f"with label   {summary['with_label']}",
                f"clinical     {summary['with_clinical']}",
                f"endpoints    {summary['with_endpoint']} ({summary['events']} events)",
                f"centres      {centres}",
                *_correction_lines(summary["corrections"]),
            ]
        )
    )
    return 0


def _correction_lines(summary: dict) -> list[str]:
    """The correction records: per skill version, the mean Dice of prediction vs correction (the effort)."""
    lines = [f"corrections  {summary['cases_with_record']} case(s) with a record"]
    for version, entry in summary["by_skill_version"].items():
        dice = ", ".join(
            f"{name} {values['mean_dice_prediction_vs_correction']:.3f}"
            if values["mean_dice_prediction_vs_correction"] is not None
            else f"{name} n/a"
            for name, values in entry.items()
            if isinstance(values, dict)
        )
        seconds = entry["mean_editing_seconds"]
        time = f", {seconds:.0f} s editing on average" if seconds is not None else ""
        lines.append(f"  {version}: {entry['cases']} case(s), Dice prediction vs correction {dice}{time}")
    return lines
