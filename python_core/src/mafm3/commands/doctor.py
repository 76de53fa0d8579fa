"""`mafm3 doctor`: what a user runs first when "the GPU is not found"."""

from __future__ import annotations

import argparse
import json

HELP = "report Python, torch build, usable GPUs, library versions and installed skills"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _format(report: dict) -> str:
    torch_info = report["torch"]
    lines = [f"mafm3        {report['mafm3']}", f"python       {report['python']['version']}"]
    if torch_info["installed"]:
        cuda = f" (CUDA {torch_info['cuda_version']})" if torch_info["cuda_version"] else ""
        lines.append(f"torch        {torch_info['version']}  {torch_info['build']} build{cuda}")
        lines.append(f"cuda usable  {'yes' if torch_info['cuda_available'] else 'no'}")
        lines.append(f"mps usable   {'yes' if torch_info['mps_available'] else 'no'}")
        for device in torch_info["devices"]:
            lines.append(f"  gpu {device['index']}      {device['name']}, {device['memory_gb']} GB")
        lines.append(f"cpu threads  {torch_info['cpu_threads']}")
    else:
        lines.append("torch        not installed")
    lines.append(f"device       {report['device']} (what --device auto uses)")
    if report["precision"]:
        lines.append(f"precision    {report['precision']} (what --precision auto uses there)")
    for name, installed in report["libraries"].items():
        lines.append(f"{name:<12} {installed or 'not installed'}")
    source = "MAFM3_HOME" if report["home"]["from_env"] else "default; set MAFM3_HOME to move it"
    lines.append(f"home         {report['home']['path']} ({source})")
    installed = sum(not pack.get("shipped") for pack in report["skills"])
    lines.append(f"skills       {installed} installed in {report['skills_dir']}")
    for pack in report["skills"]:
        detail = pack.get("error") or f"{pack.get('task', '?')} [{', '.join(pack.get('modalities') or [])}]"
        detail += " (shipped with mafm3)" if pack.get("shipped") else ""
        lines.append(f"  {pack.get('id')} {pack.get('version', '')}  {detail}")
    lines.extend(f"hint: {hint}" for hint in report["hints"])
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from mafm3.environment import doctor_report

    report = doctor_report()
    print(json.dumps(report, indent=2) if args.json else _format(report))
    return 0
