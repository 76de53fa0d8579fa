"""`mafm3 improve`: fine-tune a segmentation skill on corrected cases, compare it with the current version on
held-out cases through the engine, and install it only if it is not worse (`mafm3.training.improve`).

Runs alone or under torchrun: `torchrun --nproc_per_node N -m mafm3.improve ...` takes the same arguments;
every rank fine-tunes, rank 0 evaluates, writes and installs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mafm3.commands import add_device_arguments

HELP = "fine-tune a segmentation skill on corrected cases; compare on held-out cases; install if not worse"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mafm3.training.improve import DEFAULT_HOLDOUT, DEFAULT_ITERATIONS

    parser.add_argument(
        "--skill",
        required=True,
        metavar="ID[@VERSION]",
        help="skill id (its active version), ID@VERSION or pack",
    )
    parser.add_argument(
        "--dataset",
        required=True,
        type=Path,
        metavar="DIR",
        help="dataset of corrected cases (HECKTOR layout)",
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="PACK", help="new pack folder (must not exist)"
    )
    parser.add_argument(
        "--iterations", type=int, help=f"fine-tuning iterations (default {DEFAULT_ITERATIONS})"
    )
    parser.add_argument(
        "--holdout",
        type=float,
        default=DEFAULT_HOLDOUT,
        metavar="FRACTION",
        help=f"share of cases held out for the comparison (default {DEFAULT_HOLDOUT}; folds when few)",
    )
    parser.add_argument(
        "--install", action="store_true", help="install and activate the new version if it is not worse"
    )
    add_device_arguments(
        parser, precision_help="autocast; auto: fp32 training on a CPU, the inference policy for evaluation"
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the held-out split and the training")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    parser.add_argument(
        "--cache", type=Path, metavar="DIR", help="preprocessed-case cache (default <MAFM3_HOME>/cache)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print comparison.json")


def run(args: argparse.Namespace) -> int:
    from mafm3.commands import options_from
    from mafm3.progress import TerminalProgress
    from mafm3.training.improve import ImproveOptions, improve

    options = options_from(args, ImproveOptions)
    with TerminalProgress(enabled=not args.quiet) as progress:
        result = improve(options, progress)
    if result is None:  # a rank other than 0 under torchrun
        return 0
    if args.json:
        print(json.dumps(result.comparison, indent=2))
        return 0
    print(_table(result.comparison))
    print(f"wrote {result.pack} (comparison.json beside the pack's files)")
    print(result.message)
    return 0


def _table(comparison: dict) -> str:
    """Per class: Dice and HD95 of both versions on the held-out cases, and the paired change."""
    metrics, versions = comparison["metrics"], comparison["versions"]
    held_out = len(comparison["held_out_case_ids"])
    current, new = (f"{name} {versions[name]['version']}" for name in ("current", "new"))
    lines = [
        f"{comparison['skill']} on {held_out} held-out case(s) ({comparison['scheme']})",
        f"{'class':<6} {current:>22} {new:>22} {'change':>8}",
    ]
    for name, change in comparison["difference"].items():
        cells = []
        for version in ("current", "new"):
            values = metrics[version]["classes"][name]
            cells.append(f"Dice {_number(values['dice_mean'])} HD95 {_number(values['hd95_mm_mean'], 1)}")
        lines.append(f"{name:<6} {cells[0]:>22} {cells[1]:>22} {_number(change['dice_mean'], 3, '+'):>8}")
    return "\n".join(lines)


def _number(value, digits: int = 3, sign: str = "") -> str:
    return "n/a" if value is None or value != value else f"{value:{sign}.{digits}f}"
