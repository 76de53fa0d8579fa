"""CT-CLIP zero-shot classification (method-spec §1.3 path A): the original capability, kept as a skill.

For each abnormality X the prompts "X is present." and "X is not present." are embedded by the text
tower ([CLS] token -> `to_text_latent` -> L2); the image latent comes from the CT-ViT's full path (temporal
stage, VQ, mean over t, `to_visual_latent`, L2). Logits = cosine · exp(temperature); the softmax over the
prompt pair is the probability that X is present (CT-CLIP's `zero_shot.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mafm3.model.text import TextEncoder

CT_RATE_ABNORMALITIES = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)
PROMPTS = ("{} is present.", "{} is not present.")


class ClipText(nn.Module):
    """CT-CLIP's text side: frozen text tower, `to_text_latent` (latent, hidden) and the log-temperature."""

    def __init__(
        self, text_encoder: TextEncoder, to_text_latent: torch.Tensor, temperature: torch.Tensor
    ) -> None:
        super().__init__()
        if to_text_latent.shape[1] != text_encoder.hidden_size:
            raise ValueError(
                f"`to_text_latent` takes {to_text_latent.shape[1]} features, the text tower gives "
                f"{text_encoder.hidden_size}"
            )
        self.text_encoder = text_encoder
        self.to_text_latent = nn.Linear(to_text_latent.shape[1], to_text_latent.shape[0], bias=False)
        self.to_text_latent.weight = nn.Parameter(to_text_latent.float(), requires_grad=False)
        self.register_buffer("temperature", temperature.detach().float().reshape(()))

    @torch.no_grad()
    def latents(self, texts: list[str]) -> torch.Tensor:
        """texts: N strings. Returns L2-normalised text latents (N, latent)."""
        return F.normalize(self.to_text_latent(self.text_encoder(texts, pooling="cls")), dim=-1)

    def prompt_latents(self, labels: tuple[str, ...]) -> torch.Tensor:
        """Latents of the prompt pairs: (L, 2, latent), [label, (present, absent)]."""
        texts = [prompt.format(label) for label in labels for prompt in PROMPTS]
        return self.latents(texts).reshape(len(labels), len(PROMPTS), -1)


def zero_shot_probabilities(
    image_latents: torch.Tensor, prompt_latents: torch.Tensor, temperature: torch.Tensor
) -> torch.Tensor:
    """image_latents (B, latent), prompt_latents (L, 2, latent), temperature (log scale, 0-d).

    Returns the probability that each abnormality is present: (B, L).
    """
    logits = torch.einsum("b d, l p d -> b l p", image_latents.float(), prompt_latents.float())
    return (logits * temperature.exp()).softmax(dim=-1)[..., 0]
