"""Cosine vector quantiser of CT-CLIP's classification path (vector-quantize-pytorch 1.1.2, eval mode)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosineCodebook(nn.Module):
    """Replaces every token by the codebook row with the highest cosine similarity to it.

    The choice uses L2-normalised tokens and rows; the output is the stored row itself, not normalised. Only
    the eval behaviour exists: the codebook is a buffer and never updates (CT-CLIP's EMA update ran in
    training mode only). The similarities are computed in float32 even under autocast, so a bf16 run picks
    the same codes as a float32 run for the same tokens.
    """

    def __init__(self, *, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.register_buffer("codebook", torch.zeros(1, codebook_size, dim))  # (1 codebook, K, D)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (..., D). Returns (quantised (..., D) float32, indices (...) int64)."""
        codebook = self.codebook[0].float()
        with torch.autocast(tokens.device.type, enabled=False):
            similarity = F.normalize(tokens.float(), dim=-1) @ F.normalize(codebook, dim=-1).T
        indices = similarity.argmax(dim=-1)
        return codebook[indices], indices
