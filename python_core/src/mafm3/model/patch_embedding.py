"""Patch embedding: non-overlapping pt x p x p voxel blocks -> D-dim tokens (CT-CLIP's `to_patch_emb`)."""

from __future__ import annotations

import torch
from einops.layers.torch import Rearrange
from torch import nn

from mafm3.errors import MAFM3Error


class PatchEmbedding(nn.Sequential):
    """Patchify -> LayerNorm(C·pt·p·p) -> Linear(C·pt·p·p -> D) -> LayerNorm(D).

    Inside a patch the features are flattened channel outermost, then slice, row, column (innermost):
    feature index ((c·pt + a)·p + b)·p + col. The slots are numbered 0..3 as in CT-CLIP's checkpoint
    (`to_patch_emb.{1,2,3}.*`); slot 0 is the parameter-free patchify. A skill's resolution-aware embedding is
    another instance with its own patch size and channel count.
    """

    def __init__(self, *, dim: int, channels: int, patch_size: int, temporal_patch_size: int) -> None:
        for name, value in (
            ("dim", dim),
            ("channels", channels),
            ("patch_size", patch_size),
            ("temporal_patch_size", temporal_patch_size),
        ):
            if value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value}")
        features = channels * temporal_patch_size * patch_size * patch_size
        super().__init__(
            Rearrange(
                "b c (t pt) (h p1) (w p2) -> b t h w (c pt p1 p2)",
                pt=temporal_patch_size,
                p1=patch_size,
                p2=patch_size,
            ),
            nn.LayerNorm(features),
            nn.Linear(features, dim),
            nn.LayerNorm(dim),
        )
        self.channels = channels
        self.patch_size = patch_size
        self.temporal_patch_size = temporal_patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T, H, W) with T divisible by pt and H, W by p. Returns tokens (B, t, h, w, D)."""
        pt, p = self.temporal_patch_size, self.patch_size
        if x.ndim != 5 or x.shape[1] != self.channels or x.shape[2] % pt or x.shape[3] % p or x.shape[4] % p:
            raise MAFM3Error(
                f"The encoder takes volumes of shape (B, {self.channels}, T, H, W) with T a multiple of {pt} "
                f"and H, W multiples of {p}, got {tuple(x.shape)}; crop or pad the volume to fit."
            )
        return super().forward(x)
