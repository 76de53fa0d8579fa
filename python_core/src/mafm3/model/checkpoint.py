"""Reading a CT-CLIP flat state dict and splitting it: the one place that knows CT-CLIP's key names.

`CT-CLIP_v2.pt` (CT-RATE release) is a flat state dict: `visual_transformer.*` (the CT-ViT),
`text_transformer.*` (a HF BERT), the CLIP projections `to_visual_latent.weight` / `to_text_latent.weight`,
`temperature`, and some tensors no forward path uses. The CT-ViT keys load unchanged into `CTViT` once the
prefix is stripped, except the one rename in `RENAMED_VISUAL_KEYS`. Unused tensors are reported with the
reason, never dropped silently.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from mafm3.errors import MAFM3Error

VISUAL_PREFIX = "visual_transformer."
TEXT_PREFIX = "text_transformer."
VISUAL_LATENT_KEY = "to_visual_latent.weight"
TEXT_LATENT_KEY = "to_text_latent.weight"
TEMPERATURE_KEY = "temperature"

# CT-ViT checkpoint names (prefix stripped) -> our module names; every other used key loads as it is.
RENAMED_VISUAL_KEYS = {"vq._codebook.embed": "vq.codebook"}

IGNORED_KEYS: tuple[tuple[str, str], ...] = (  # (regex on the checkpoint key, why no forward path needs it)
    (
        r"visual_transformer\.to_patch_emb_first_frame\.",
        "single-frame patch embedding; its code path is disabled",
    ),
    (
        r"visual_transformer\.to_pixels(_first_frame)?\.",
        "VQ-GAN pixel decoder head; the encoder never decodes",
    ),
    (
        r"visual_transformer\..+\.context_norm\.",
        "cross-attention norm; CT-ViT attention has no context input",
    ),
    (r"visual_transformer\..+\.null_kv$", "zero null key/value slots (an empty tensor): no effect"),
    (
        r"visual_transformer\.vq\._codebook\.cluster_size$",
        "EMA statistic for codebook training; unused in eval",
    ),
    (
        r"visual_transformer\.vq\._codebook\.initted$",
        "k-means initialisation flag; the stored codebook is used",
    ),
    (r"to_(visual|text)_latent_extra\.weight$", "duplicate CLIP projection that CT-CLIP never calls"),
    (
        r"text_transformer\.embeddings\.position_ids$",
        "legacy buffer that transformers >= 4.31 no longer expects",
    ),
)
UNKNOWN_KEY_REASON = "not part of CT-CLIP's image encoder, text encoder or CLIP head"


@dataclass
class CTCLIPStateDict:
    """A CT-CLIP flat state dict, split by use.

    visual: `CTViT` state dict (our module names), with `to_visual_latent.weight` when the file has it.
    text: `text_transformer.*`, `to_text_latent.weight` and `temperature`, checkpoint names unchanged.
    used: the checkpoint keys that went into `visual` or `text`; ignored: checkpoint key -> reason.
    """

    visual: dict[str, torch.Tensor] = field(default_factory=dict)
    text: dict[str, torch.Tensor] = field(default_factory=dict)
    used: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)


def checkpoint_visual_key(name: str) -> str:
    """The checkpoint key of a `CTViT` state-dict name, for messages.

    'vq.codebook' -> 'visual_transformer.vq._codebook.embed'; 'to_visual_latent.weight' stays as it is.
    """
    if name == VISUAL_LATENT_KEY:
        return name
    original = {ours: theirs for theirs, ours in RENAMED_VISUAL_KEYS.items()}.get(name, name)
    return VISUAL_PREFIX + original


def is_text_key(key: str) -> bool:
    """True for a key of CT-CLIP's text side: `text_transformer.*`, `to_text_latent.weight`, `temperature`."""
    return key.startswith(TEXT_PREFIX) or key in (TEXT_LATENT_KEY, TEMPERATURE_KEY)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat state dict from `.safetensors`, or from a PyTorch file (`torch.load(weights_only=True)`).

    Zip-format `.pt` files are memory-mapped, so a 1.7 GB checkpoint is not copied into memory at once.
    Raises MAFM3Error for a missing, truncated or corrupt file, a pickle that needs code to load, or
    anything that is not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise MAFM3Error(
            f"{path} is not a file; give the path of a CT-CLIP checkpoint such as CT-CLIP_v2.pt."
        )
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        needed = re.search(r"GLOBAL (\S+)", str(error))
        if needed:
            raise MAFM3Error(
                f"{path.name} is a pickle that needs Python code to load ({needed.group(1)}), which mafm3 "
                "never runs; save the model's state_dict() instead, or convert the file to safetensors."
            ) from error
        raise MAFM3Error(_unreadable(path)) from error
    except Exception as error:  # a corrupt file can make the unpickler raise almost anything
        raise MAFM3Error(_unreadable(path)) from error
    if not isinstance(state, Mapping) or not state:
        raise MAFM3Error(f"{path.name} holds a {type(state).__name__}, not a state dict of named tensors.")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise MAFM3Error(
                f"{path.name} is not a flat state dict: entry {key!r} is a {type(value).__name__}, not a "
                "tensor; CT-CLIP_v2.pt from the CT-RATE release is a flat state dict."
            )
    return dict(state)


def _unreadable(path: Path) -> str:
    return (
        f"{path.name} cannot be read as a PyTorch or safetensors checkpoint: it is truncated, corrupt or "
        "another format; copy or download it again."
    )


def split_ctclip_state_dict(
    state: Mapping[str, torch.Tensor], source: str = "the checkpoint"
) -> CTCLIPStateDict:
    """Split a CT-CLIP flat state dict into the CT-ViT part, the text part and the ignored keys with reasons.

    Raises MAFM3Error when there is no `visual_transformer.*` tensor, or when attention has null keys/values
    (a CT-ViT variant that CT-CLIP never released).
    """
    split = CTCLIPStateDict()
    for key, tensor in state.items():
        reason = next((why for pattern, why in IGNORED_KEYS if re.match(pattern, key)), None)
        if reason is not None:
            if key.endswith(".null_kv") and tensor.numel():
                raise MAFM3Error(
                    f"{source} has {tensor.shape[1]} null key/value slots in `{key}`, a CT-ViT variant mafm3 "
                    "does not implement; import CT-CLIP's released checkpoint."
                )
            split.ignored[key] = reason
        elif key.startswith(VISUAL_PREFIX):
            name = key.removeprefix(VISUAL_PREFIX)
            split.visual[RENAMED_VISUAL_KEYS.get(name, name)] = tensor
            split.used.append(key)
        elif key == VISUAL_LATENT_KEY:
            split.visual[key] = tensor
            split.used.append(key)
        elif is_text_key(key):
            split.text[key] = tensor
            split.used.append(key)
        else:
            split.ignored[key] = UNKNOWN_KEY_REASON
    if not any(key.startswith(VISUAL_PREFIX) for key in split.used):
        raise MAFM3Error(
            f"{source} holds no `visual_transformer.*` tensors, so it is not a CT-CLIP checkpoint; "
            "import CT-CLIP_v2.pt from the CT-RATE release."
        )
    return split
