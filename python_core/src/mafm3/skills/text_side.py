"""CT-CLIP's text side of an imported backbone, built for the skills that need it.

The report-based prognosis encoder needs the text tower (BERT + tokenizer); zero-shot classification also
needs `to_text_latent` and the temperature. All of it comes from the backbone folder: nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from mafm3.errors import MAFM3Error
from mafm3.model.classification import ClipText
from mafm3.model.text import TextEncoder, bert_from_state_dict, load_tokenizer
from mafm3.skills.backbone import load_text_weights, read_manifest

BERT_CONFIG_FILE = "config.json"  # a HF model folder given as the tokenizer folder carries it


def load_text_encoder(backbone_dir: str | Path) -> TextEncoder:
    """The frozen text tower of an imported backbone; MAFM3Error if it has no text side or no tokenizer."""
    weights = load_text_weights(backbone_dir)
    if weights.tokenizer_dir is None:
        raise MAFM3Error(
            f"Backbone {read_manifest(backbone_dir)['id']} has its text encoder but no tokenizer; import it "
            "again with `mafm3 backbone import CT-CLIP_v2.pt --tokenizer FOLDER` (CXR-BERT's tokenizer)."
        )
    config_file = weights.tokenizer_dir / BERT_CONFIG_FILE
    bert = bert_from_state_dict(weights.bert, config_file if config_file.is_file() else None)
    return TextEncoder(bert, load_tokenizer(weights.tokenizer_dir))


def load_clip_text(backbone_dir: str | Path, text_encoder: TextEncoder | None = None) -> ClipText:
    """The text tower with CT-CLIP's `to_text_latent` and temperature (zero-shot classification)."""
    weights = load_text_weights(backbone_dir)
    if weights.to_text_latent is None or weights.temperature is None:
        raise MAFM3Error(
            f"Backbone {read_manifest(backbone_dir)['id']} lacks `to_text_latent.weight` or `temperature`, "
            "so it cannot classify zero-shot; import the complete CT-CLIP_v2.pt."
        )
    return ClipText(
        text_encoder or load_text_encoder(backbone_dir), weights.to_text_latent, weights.temperature
    )
