"""`mafm3 bench`: per-stage time and memory on a synthetic PET/CT study, side by side with the baselines."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mafm3.commands import add_device_arguments

HELP = "measure speed and memory per stage on a synthetic PET/CT study, side by side with the baselines"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument(
        "--size",
        default="realistic",
        choices=["realistic", "small", "tiny"],
        help="study size: realistic (CT 512x512x200, default), small or tiny; the scaling section runs the "
        "sizes up to this one",
    )
    parser.add_argument(
        "--repeats", type=int, help="timed runs per figure, fastest kept (default 1 CPU, 3 GPU)"
    )
    parser.add_argument(
        "--only",
        choices=["paper-whole-study"],
        help="run one section alone: the paper-size PET/CT skill over the whole study (dense vs fast path)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the full report as JSON")


def _progress(stage: str, fraction: float, message: str = "") -> None:
    if message:
        print(f"bench {stage}: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from mafm3.bench import run_benchmark
    from mafm3.bench.report import format_report

    report = run_benchmark(
        device=args.device,
        size=args.size,
        repeats=args.repeats,
        precision=args.precision,
        only=args.only,
        progress=_progress,
    )
    print(format_report(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {args.json}")
    return 0
