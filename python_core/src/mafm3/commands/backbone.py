"""`mafm3 backbone import|info`: convert CT-CLIP's checkpoint once into a backbone folder; describe one."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

HELP = "import CT-CLIP's checkpoint as a backbone (safetensors + manifest), or describe an imported backbone"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    to_import = actions.add_parser(
        "import",
        help="convert a CT-CLIP flat state dict (e.g. CT-CLIP_v2.pt) into a backbone folder",
        description="Convert a CT-CLIP flat state dict into safetensors + manifest.json, once.",
    )
    to_import.add_argument("checkpoint", type=Path, help="CT-CLIP state dict, .pt or .safetensors")
    to_import.add_argument("--out", type=Path, help="folder to create (default: <MAFM3_HOME>/backbones/<id>)")
    to_import.add_argument(
        "--id", dest="backbone_id", help="backbone id (default: from the file name, ct-clip-v2)"
    )
    to_import.add_argument(
        "--tokenizer", type=Path, help="HF tokenizer folder (vocab.txt, ...) to copy along"
    )
    to_import.add_argument(
        "--patch-size", type=int, default=20, help="in-plane patch size in voxels (default 20)"
    )
    to_import.add_argument(
        "--temporal-patch-size",
        type=int,
        default=10,
        help="patch size along the slices in voxels (default 10)",
    )
    to_import.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info = actions.add_parser(
        "info", help="describe an imported backbone", description="Describe a backbone."
    )
    info.add_argument("backbone", help="backbone folder, or the id of one under <MAFM3_HOME>/backbones")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")


def describe(manifest: dict, path: Path) -> str:
    """The human summary of a backbone manifest."""
    config = manifest["config"]
    lines = [
        f"id           {manifest['id']}",
        f"path         {path}",
        f"source       {manifest['source']}",
        f"weights      {manifest['weights']}  sha256 {manifest['sha256']}",
        f"encoder      CT-ViT, D {config['dim']}, {config['heads']} x {config['dim_head']} heads, "
        f"depth {config['spatial_depth']} spatial + {config['temporal_depth']} temporal, "
        f"FF {config['ff_inner_dim']}, codebook {config['codebook_size']}",
        f"patches      {config['channels']} channel(s), "
        f"{config['temporal_patch_size']} x {config['patch_size']} x {config['patch_size']} voxels "
        "(slices x rows x columns)",
        "clip latent  "
        + (
            f"{config['latent_dim']} from {config['latent_in_features']} features"
            if manifest["has_latent"]
            else "none"
        ),
        "text         "
        + ("BERT weights" if manifest["has_text"] else "none")
        + (f", tokenizer in {manifest['tokenizer']}/" if manifest.get("tokenizer") else ""),
        f"keys         {len(manifest['used_keys'])} used, {len(manifest['ignored_keys'])} ignored",
    ]
    for reason, count in sorted(Counter(manifest["ignored_keys"].values()).items()):
        lines.append(f"  {count:>4} ignored: {reason}")
    return "\n".join(lines)


def _print_step(stage: str, fraction: float, message: str = "") -> None:
    print(f"{stage}: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from mafm3.config import backbones_dir
    from mafm3.skills.backbone import import_ctclip_checkpoint, read_manifest, resolve_backbone_dir

    if args.action == "import":
        manifest = import_ctclip_checkpoint(
            args.checkpoint,
            args.out,
            backbone_id=args.backbone_id,
            tokenizer_dir=args.tokenizer,
            patch_size=args.patch_size,
            temporal_patch_size=args.temporal_patch_size,
            progress=_print_step,
        )
        path = args.out if args.out is not None else backbones_dir() / manifest["id"]
    else:
        path = resolve_backbone_dir(args.backbone)
        manifest = read_manifest(path)
    print(json.dumps(manifest, indent=2) if args.json else describe(manifest, path))
    return 0
