"""Find the backbone a skill was trained on, and keep loaded backbones warm per device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mafm3.config import backbones_dir, bundled_backbones_dir
from mafm3.errors import MAFM3Error
from mafm3.model.ctvit import CTViT
from mafm3.skills.backbone import MANIFEST_FILE, load_backbone, load_text_weights, read_manifest


def backbone_roots() -> list[Path]:
    """Where backbones are looked for: the user's imported ones, then the ones shipped with mafm3."""
    return [backbones_dir(), bundled_backbones_dir()]


def find_backbone(sha256: str, backbone_id: str | None = None) -> Path:
    """The folder of the backbone whose weights have `sha256`. Raises MAFM3Error when none is imported."""
    for root in backbone_roots():
        for manifest_path in sorted(root.glob(f"*/{MANIFEST_FILE}")) if root.is_dir() else []:
            try:
                if read_manifest(manifest_path.parent)["sha256"] == sha256:
                    return manifest_path.parent
            except MAFM3Error:
                continue
    raise MAFM3Error(
        f"The backbone {backbone_id or ''} (sha256 {sha256[:12]}...) this skill was trained on is not "
        "imported; import it with `mafm3 backbone import CHECKPOINT`."
    )


@dataclass
class LoadedBackbone:
    """An imported backbone on a device: its manifest, the frozen CT-ViT and (lazily) its text side."""

    folder: Path
    manifest: dict
    encoder: CTViT
    device: torch.device

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    def text_weights(self):
        return load_text_weights(self.folder) if self.manifest.get("has_text") else None


class BackboneCache:
    """Loaded backbones by (folder, device): a warm process pays for loading once."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[Path, str], LoadedBackbone] = {}

    def get(self, folder: Path, device: torch.device) -> LoadedBackbone:
        key = (Path(folder).resolve(), str(device))
        if key not in self._loaded:
            encoder = load_backbone(folder).to(device).eval().requires_grad_(False)
            self._loaded[key] = LoadedBackbone(Path(folder), read_manifest(folder), encoder, device)
        return self._loaded[key]

    def __len__(self) -> int:
        return len(self._loaded)
