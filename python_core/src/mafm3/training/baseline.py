"""The paper's segmentation baseline: MONAI's UNETR trained from scratch on the same data, crops, loss,
optimiser and budget as a skill (`mafm3 train segmentation --baseline unetr`), so the adaptation claim can be
measured side by side (method-spec §3.2, §4.3).

The result is a checkpoint folder, not an installable skill (it does not run on the backbone):
`manifest.json` (format "mafm3-baseline-v1", `"baseline": "unetr"`, the UNETR arguments, the preset's
preprocessing, inference window and outputs, training provenance and validation metrics) and
`weights.safetensors`. `mafm3 eval --skill FOLDER` recognises it and runs it with the same preprocessing,
Gaussian sliding window and mapping back to the CT grid as `mafm3 run` uses for skills.

Sizes: "paper" is the authors' `hector_basline.py` (feature size 16, hidden 768, MLP 3072, 12 heads,
perceptron patch projection, instance norm, residual blocks; MONAI's UNETR always has 12 layers); "small"
(hidden 192, MLP 768, 4 heads, feature size 8) trains on a CPU for demos and tests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mafm3 import __version__
from mafm3.errors import MAFM3Error
from mafm3.files import atomic_folder, file_sha256

FORMAT = "mafm3-baseline-v1"
MANIFEST_FILE, WEIGHTS_FILE = "manifest.json", "weights.safetensors"
SIZES = {
    "paper": {"feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12},
    "small": {"feature_size": 8, "hidden_size": 192, "mlp_dim": 768, "num_heads": 4},
}


def unetr_arguments(channels: int, window: Sequence[int], size: str = "paper") -> dict:
    """MONAI `UNETR` keyword arguments: `channels` inputs (CT, PET), 3 classes, img_size = the window."""
    if size not in SIZES:
        raise MAFM3Error(f"Unknown baseline size {size!r}; use one of {', '.join(SIZES)}.")
    return {
        "in_channels": channels,
        "out_channels": 3,
        "img_size": list(window),
        **SIZES[size],
        "proj_type": "perceptron",
        "norm_name": "instance",
        "res_block": True,
        "conv_block": True,
        "dropout_rate": 0.0,
    }


def build_unetr(arguments: dict) -> torch.nn.Module:
    from monai.networks.nets import UNETR

    return UNETR(**{**arguments, "img_size": tuple(arguments["img_size"])})


def is_baseline(folder: str | Path) -> bool:
    """Whether `folder` holds a baseline checkpoint (rather than a skill pack)."""
    path = Path(folder) / MANIFEST_FILE
    try:
        return Path(folder).is_dir() and json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def export_baseline(
    module: torch.nn.Module,
    arguments: dict,
    folder: str | Path,
    *,
    preset,
    name: str,
    version: str,
    training: dict,
    metrics: dict,
) -> dict:
    """Write the baseline's folder (which must not exist) atomically and return its manifest."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists():
        raise MAFM3Error(f"{folder} already exists; write the baseline to a new folder.")
    with atomic_folder(folder) as partial:
        tensors = {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}
        save_file(tensors, partial / WEIGHTS_FILE)
        manifest = {
            "format": FORMAT,
            "id": name,
            "version": version,
            "task": "segmentation",
            "baseline": "unetr",
            "modalities": list(preset.modalities),
            "description": f"UNETR baseline trained from scratch ({preset.name} data and budget)",
            "unetr": arguments,
            "preprocessing": preset.preprocessing,
            "inference": preset.inference,
            "outputs": list(preset.outputs),
            "weights": {"file": WEIGHTS_FILE, "sha256": file_sha256(partial / WEIGHTS_FILE)},
            "trainable_parameters": sum(p.numel() for p in module.parameters()),
            "training": training,
            "metrics": metrics,
            "demo": preset.demo,
            "mafm3_version": __version__,
        }
        (partial / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclass
class Baseline:
    """A loaded baseline checkpoint: its manifest and the UNETR in eval mode."""

    manifest: dict
    module: torch.nn.Module


def load_baseline(folder: str | Path, device: torch.device) -> Baseline:
    """Read a baseline folder, check its weights' sha256, and build the UNETR on `device`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    weights = folder / manifest["weights"]["file"]
    if file_sha256(weights) != manifest["weights"]["sha256"]:
        raise MAFM3Error(
            f"The weights of the baseline {folder} do not match the sha256 in its manifest; "
            "get an intact copy."
        )
    module = build_unetr(manifest["unetr"])
    module.load_state_dict(load_file(weights))
    return Baseline(manifest, module.to(device).eval())
