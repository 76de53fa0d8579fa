"""`mafm3 skill list|info|install|remove|use`: the skill packs of this installation, offline."""

from __future__ import annotations

import argparse
import json

HELP = (
    "list, describe, install (offline, checksum verified), remove skill packs, or choose the active version"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list", help="list the installed skill packs", description="List installed skills."
    )
    listing.add_argument(
        "--json", action="store_true", help="print the manifests as JSON (each with `active`: true or false)"
    )
    info = actions.add_parser(
        "info",
        help="describe a pack (folder, zip, installed or shipped id) or a preset",
        description="Describe a skill pack, an installed skill or a preset (with its trainable parameters).",
    )
    which = info.add_mutually_exclusive_group(required=True)
    which.add_argument("pack", nargs="?", help="pack folder or .zip, or an installed or shipped skill id")
    which.add_argument("--preset", help="a built-in preset name, e.g. hecktor-seg-ct")
    info.add_argument("--json", action="store_true", help="print as JSON")
    install = actions.add_parser(
        "install",
        help="install a pack folder or zip into <MAFM3_HOME>/skills (a shipped pack is already available)",
        description="Install a skill pack offline; its weights' sha256 and its backbone are checked first.",
    )
    install.add_argument("pack", help="pack folder or .zip, or the id of a shipped skill")
    remove = actions.add_parser(
        "remove", help="remove an installed skill", description="Remove an installed skill."
    )
    remove.add_argument("skill_id", metavar="ID", help="skill id, e.g. hecktor-seg-ct")
    remove.add_argument("--version", help="which version, when several are installed")
    use = actions.add_parser(
        "use",
        help="make one installed version of a skill the active one (the one runs use)",
        description="Switch a skill to another installed or shipped version, e.g. back to the one an "
        "`mafm3 improve` version was fine-tuned from. The versions stay installed side by side.",
    )
    use.add_argument("reference", metavar="ID@VERSION", help="e.g. demo-seg-petct@1.0.0")


def run(args: argparse.Namespace) -> int:
    actions = {"list": _list, "info": _info, "install": _install, "remove": _remove, "use": _use}
    return actions[args.action](args)


def _list(args: argparse.Namespace) -> int:
    from mafm3.config import skills_dir
    from mafm3.skills.store import installed_and_shipped_manifests

    manifests = installed_and_shipped_manifests()
    if args.json:
        print(json.dumps(manifests, indent=2))
        return 0
    if not manifests:
        print(f"no skills installed in {skills_dir()}; install one with `mafm3 skill install PACK`")
    for manifest in manifests:
        if "error" in manifest:
            print(f"{manifest['id']:<24} BROKEN: {manifest['error']}")
            continue
        modalities = "+".join(manifest.get("modalities", []))
        demo = (
            ("  ACTIVE" if manifest.get("active") else "")
            + ("  DEMO" if manifest.get("demo") else "")
            + ("  (shipped with mafm3)" if manifest.get("shipped") else "")
        )
        backbone = manifest.get("backbone", {}).get("id", "?")
        columns = f"{manifest['id']:<24} {manifest['version']:<10} {manifest['task']:<15} {modalities:<7}"
        print(f"{columns} {backbone}{demo}")
    print(
        "built in: ctclip-zeroshot and ctclip-zeroshot-authors (classification, on a backbone imported with "
        "its text side)"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    if args.preset is not None:
        from mafm3.skills.presets import get_preset, parameter_counts

        preset = get_preset(args.preset)
        counts = parameter_counts(preset)
        report = {
            "preset": preset.name,
            "description": preset.description,
            "task": preset.config.task,
            "modalities": list(preset.modalities),
            "outputs": preset.outputs,
            "trainable_parameters": sum(counts.values()),
            "trainable_by_part": counts,
            "backbone": f"CT-ViT D {preset.backbone.dim}",
            "config": preset.config.to_dict(),
            "preprocessing": preset.preprocessing,
            "inference": preset.inference,
            "demo": preset.demo,
        }
    else:
        report = _pack_report(args.pack)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    return 0


def _pack_report(pack: str) -> dict:
    from mafm3.skills.packs import opened_pack, resolve_pack, verify_pack

    path = resolve_pack(pack)
    with opened_pack(path) as folder:
        manifest = verify_pack(folder)
    return {**manifest.to_dict(), "path": str(path)}


def _print_report(report: dict) -> None:
    name = report.get("preset") if "id" not in report else f"{report['id']} {report['version']}"
    lines = [
        f"skill        {name}{'  (DEMO ONLY)' if report.get('demo') else ''}",
        f"description  {report['description']}",
        f"task         {report['task']}",
        f"modalities   {' + '.join(report['modalities'])}",
        f"trainable    {report['trainable_parameters']:,} parameters",
    ]
    for part, count in report.get("trainable_by_part", {}).items():
        lines.append(f"  {part:<24} {count:>12,}")
    if "backbone" in report:
        backbone = report["backbone"]
        lines.append(
            f"backbone     {backbone['id']} (sha256 {backbone['sha256'][:12]}...)"
            if isinstance(backbone, dict)
            else f"backbone     {backbone}"
        )
    outputs = [output.get("name", "?") for output in report["outputs"]]
    lines.append(f"outputs      {', '.join(outputs)}")
    if "path" in report:
        lines.append(f"path         {report['path']}")
    print("\n".join(lines))


def _install(args: argparse.Namespace) -> int:
    from mafm3.skills.packs import install_pack, is_shipped_folder, resolve_pack

    manifest, target = install_pack(resolve_pack(args.pack))
    if is_shipped_folder(target):
        print(f"{manifest.id} {manifest.version} is shipped with mafm3 and already available ({target})")
    else:
        print(f"installed {manifest.id} {manifest.version} ({manifest.task}) in {target}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    from mafm3.skills.packs import remove_pack

    removed = remove_pack(args.skill_id, args.version)
    print(f"removed {removed}")
    return 0


def _use(args: argparse.Namespace) -> int:
    from mafm3.errors import MAFM3Error
    from mafm3.skills.store import split_reference, use_version

    skill_id, version = split_reference(args.reference)
    if version is None:
        raise MAFM3Error(f"Name the version to use, e.g. `mafm3 skill use {skill_id}@1.0.0`.")
    previous = use_version(skill_id, version)
    back = (
        f"; go back with `mafm3 skill use {skill_id}@{previous}`" if previous not in (None, version) else ""
    )
    print(f"{skill_id} now runs version {version} (was {previous}){back}")
    return 0
