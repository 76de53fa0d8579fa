"""An imported backbone on disk: a folder with `weights.safetensors`, `manifest.json` and maybe `tokenizer/`.

`import_ctclip_checkpoint` converts CT-CLIP's flat `.pt` once (the only time a pickle is read, with
`weights_only=True`); `load_backbone` builds the frozen CT-ViT from the folder and `load_text_weights` gives
the text side. The weights file keeps CT-CLIP's own key names, minus the keys no forward path uses; the
manifest records the encoder config, the file's sha256 (what skill packs pin), and which keys were used or
ignored and why. Torch is imported only inside the functions that need it, so reading a manifest is instant.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mafm3 import __version__
from mafm3.config import backbones_dir
from mafm3.errors import MAFM3Error
from mafm3.files import atomic_folder, file_sha256
from mafm3.progress import ProgressCallback, silent_progress

if TYPE_CHECKING:
    import torch

    from mafm3.model.ctvit import CTViT

FORMAT = "mafm3-backbone-v1"
ARCHITECTURE = "ct-clip-ct-vit"
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")  # a HF tokenizer folder holds at least one of these


@dataclass
class TextWeights:
    """CT-CLIP's text side. bert: HF `BertModel` state dict (`text_transformer.` stripped);
    to_text_latent: (latent_dim, 768) or None; temperature: 0-d log-temperature or None;
    tokenizer_dir: the copied tokenizer folder or None."""

    bert: dict[str, torch.Tensor]
    to_text_latent: torch.Tensor | None
    temperature: torch.Tensor | None
    tokenizer_dir: Path | None


def default_backbone_id(checkpoint: Path) -> str:
    """A backbone id from a file name: 'CT-CLIP_v2.pt' -> 'ct-clip-v2'."""
    return re.sub(r"[^a-z0-9]+", "-", Path(checkpoint).stem.lower()).strip("-") or "backbone"


def resolve_backbone_dir(name_or_path: str | Path) -> Path:
    """A backbone folder given as a path, or as the id of one under `backbones_dir()`."""
    path = Path(name_or_path)
    return path if path.is_dir() or path.is_absolute() or len(path.parts) > 1 else backbones_dir() / path


def read_manifest(backbone_dir: str | Path) -> dict:
    """The manifest of an imported backbone folder. Raises MAFM3Error if it is missing or not a backbone."""
    path = Path(backbone_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise MAFM3Error(
            f"{Path(backbone_dir)} is not an imported backbone (no {MANIFEST_FILE}); create one with "
            "`mafm3 backbone import CT-CLIP_v2.pt`."
        ) from error
    except (OSError, json.JSONDecodeError) as error:
        raise MAFM3Error(f"{path} cannot be read ({error}); import the backbone again.") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MAFM3Error(f"{path} is not a mafm3 backbone manifest ({FORMAT}); import the backbone again.")
    return manifest


def import_ctclip_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path | None = None,
    *,
    backbone_id: str | None = None,
    tokenizer_dir: str | Path | None = None,
    patch_size: int = 20,
    temporal_patch_size: int = 10,
    progress: ProgressCallback = silent_progress,
) -> dict:
    """Convert a CT-CLIP flat state dict into a backbone folder and return its manifest.

    checkpoint: `.pt` or `.safetensors` with CT-CLIP's key names (e.g. CT-CLIP_v2.pt).
    out_dir: the folder to create (default `backbones_dir() / backbone_id`); it must not exist or be empty.
    tokenizer_dir: a HF tokenizer folder (vocab.txt, ...) copied to `<out_dir>/tokenizer`.
    patch_size, temporal_patch_size: in voxels, as the checkpoint was trained (CT-CLIP: 20 and 10).
    The encoder is built from the tensors before anything is written; on any failure nothing is left behind.
    """
    from safetensors.torch import save_file

    from mafm3.model.checkpoint import TEXT_PREFIX, read_state_dict, split_ctclip_state_dict
    from mafm3.model.ctvit import CTViT, CTViTConfig

    checkpoint = Path(checkpoint)
    backbone_id = backbone_id or default_backbone_id(checkpoint)
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", backbone_id):
        raise MAFM3Error(
            f"Backbone id {backbone_id!r} is not valid; use lower-case letters, digits, '.', '_' and '-'."
        )
    out_dir = Path(out_dir) if out_dir is not None else backbones_dir() / backbone_id
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MAFM3Error(
            f"{out_dir} already exists and is not empty; choose another --out folder or remove it."
        )
    if tokenizer_dir is not None and not any(
        (Path(tokenizer_dir) / name).is_file() for name in TOKENIZER_FILES
    ):
        raise MAFM3Error(
            f"{tokenizer_dir} is not a HF tokenizer folder (no {' or '.join(TOKENIZER_FILES)}); give the "
            "folder of microsoft/BiomedVLP-CXR-BERT-specialized's tokenizer."
        )

    progress("import", 0.0, f"reading {checkpoint.name}")
    state = read_state_dict(checkpoint)
    split = split_ctclip_state_dict(state, source=checkpoint.name)
    config = CTViTConfig.from_state_dict(
        split.visual, patch_size=patch_size, temporal_patch_size=temporal_patch_size
    )
    CTViT.from_state_dict(config, split.visual)  # refuses an incomplete or inconsistent CT-ViT before writing
    tensors = _without_shared_storage({key: state[key].contiguous() for key in split.used})

    with atomic_folder(out_dir) as partial:
        progress("import", 0.3, f"writing {WEIGHTS_FILE}")
        save_file(tensors, partial / WEIGHTS_FILE, metadata={"format": "pt"})
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, partial / TOKENIZER_DIR)
        progress("import", 0.8, "hashing the weights")
        manifest = {
            "format": FORMAT,
            "id": backbone_id,
            "architecture": ARCHITECTURE,
            "source": checkpoint.name,
            "config": asdict(config),
            "weights": WEIGHTS_FILE,
            "sha256": file_sha256(partial / WEIGHTS_FILE),
            "has_latent": config.latent_dim is not None,
            "has_text": any(key.startswith(TEXT_PREFIX) for key in split.text),
            "tokenizer": TOKENIZER_DIR if tokenizer_dir is not None else None,
            "used_keys": split.used,
            "ignored_keys": split.ignored,
            "mafm3_version": __version__,
        }
        (partial / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    progress("import", 1.0, f"backbone {backbone_id} in {out_dir}")
    return manifest


def _without_shared_storage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy tensors sharing storage with an earlier one (tied weights): safetensors refuses to write them."""
    seen = set()
    for key, tensor in tensors.items():
        storage = tensor.untyped_storage().data_ptr()
        if tensor.numel() and storage in seen:
            tensors[key] = tensor.clone()
        seen.add(storage)
    return tensors


def load_backbone(backbone_dir: str | Path) -> CTViT:
    """The frozen CT-ViT (eval mode, float32, CPU) of an imported backbone folder; no text tensor is read."""
    from safetensors import safe_open

    from mafm3.model.checkpoint import is_text_key, split_ctclip_state_dict
    from mafm3.model.ctvit import CTViT, CTViTConfig

    backbone_dir = Path(backbone_dir)
    manifest = read_manifest(backbone_dir)
    with safe_open(backbone_dir / manifest["weights"], framework="pt") as weights:
        state = {key: weights.get_tensor(key) for key in weights.keys() if not is_text_key(key)}
    split = split_ctclip_state_dict(state, source=f"backbone {manifest['id']}")
    return CTViT.from_state_dict(CTViTConfig(**manifest["config"]), split.visual)


def load_text_weights(backbone_dir: str | Path) -> TextWeights:
    """CT-CLIP's text side of an imported backbone. Raises MAFM3Error if its checkpoint had no text side."""
    from safetensors import safe_open

    from mafm3.model.checkpoint import TEMPERATURE_KEY, TEXT_LATENT_KEY, TEXT_PREFIX, is_text_key

    backbone_dir = Path(backbone_dir)
    manifest = read_manifest(backbone_dir)
    if not manifest["has_text"]:
        raise MAFM3Error(
            f"Backbone {manifest['id']} has no text encoder; import a CT-CLIP checkpoint that holds "
            "`text_transformer.*` (CT-CLIP_v2.pt does)."
        )
    with safe_open(backbone_dir / manifest["weights"], framework="pt") as weights:
        text = {key: weights.get_tensor(key) for key in weights.keys() if is_text_key(key)}
    tokenizer = manifest.get("tokenizer")
    return TextWeights(
        bert={
            key.removeprefix(TEXT_PREFIX): value for key, value in text.items() if key.startswith(TEXT_PREFIX)
        },
        to_text_latent=text.get(TEXT_LATENT_KEY),
        temperature=text.get(TEMPERATURE_KEY),
        tokenizer_dir=backbone_dir / tokenizer if tokenizer else None,
    )
