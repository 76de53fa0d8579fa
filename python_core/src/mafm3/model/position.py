"""Position modules of the CT-ViT: the continuous position bias (spatial attention) and the PEG convolution.

Both are small and grid-size agnostic, which is what lets a skill run the frozen transformer on another
token grid; a skill trains its own copies and passes them to `CTViT.forward_features`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mafm3.model.attention import reference_attention_enabled


def signed_log(x: torch.Tensor) -> torch.Tensor:
    """sign(x)·ln(1 + |x|), element-wise: the log-spaced relative offsets of SwinV2's position bias."""
    return torch.sign(x) * torch.log1p(x.abs())


class ContinuousPositionBias(nn.Module):
    """Per-head attention bias from an MLP of the 2-D offset between query and key (CT-CLIP's
    `spatial_rel_pos_bias`): signed_log(Δrow, Δcol) -> Linear(2, D) -> LeakyReLU(0.1) -> Linear(D, D) ->
    LeakyReLU(0.1) -> Linear(D, heads).

    The bias depends only on the grid (h, w), never on the image, so in eval mode without gradients it is
    computed once per grid and cached. The cache is dropped whenever a weight changes through torch's version
    counter (optimiser steps, `load_state_dict`, in-place writes under `no_grad`, moves to another device;
    writes through `.data` are invisible to it). In training mode, with gradients needed, or under
    `reference_attention()` the bias is recomputed on every call.
    """

    def __init__(self, *, dim: int, heads: int, layers: int = 2) -> None:
        super().__init__()
        self.net = nn.ModuleList([nn.Sequential(nn.Linear(2, dim), nn.LeakyReLU(0.1))])
        self.net.extend(nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(0.1)) for _ in range(layers - 1))
        self.net.append(nn.Linear(dim, heads))
        self._cache: dict[tuple, torch.Tensor] = {}
        self._cache_version: tuple = ()

    def compute(self, h: int, w: int) -> torch.Tensor:
        """The bias for an h x w slab, recomputed: (heads, h·w, h·w) [head, query, key], weights' dtype.

        Tokens are numbered row-major (index = row·w + col). The MLP runs on the (2h-1)(2w-1) distinct
        offsets and the result is gathered per (query, key) pair: the same values as running it on all
        (h·w)² pairs as CT-CLIP does, at a fraction of the cost (2,209 MLP rows instead of 331,776 at 24²).
        """
        device, dtype = self.net[-1].weight.device, self.net[-1].weight.dtype
        offsets = torch.stack(
            torch.meshgrid(
                torch.arange(-h + 1, h, device=device), torch.arange(-w + 1, w, device=device), indexing="ij"
            ),
            dim=-1,
        )  # (2h-1, 2w-1, 2): (Δrow, Δcol)
        table = signed_log(offsets.to(dtype))
        with torch.autocast(device.type, enabled=False):
            for layer in self.net:
                table = layer(table)  # -> (2h-1, 2w-1, heads)
        rows, cols = torch.meshgrid(
            torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
        )
        rows, cols = rows.flatten(), cols.flatten()
        bias = table[rows[:, None] - rows[None, :] + h - 1, cols[:, None] - cols[None, :] + w - 1]
        return rearrange(bias, "i j heads -> heads i j")

    def forward(self, h: int, w: int) -> torch.Tensor:
        """The bias for an h x w slab, cached when nothing can learn: (heads, h·w, h·w)."""
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if self.training or needs_grad or reference_attention_enabled():
            return self.compute(h, w)
        # `_version` counts in-place writes (optimiser steps, load_state_dict); data_ptr catches replacement.
        version = tuple((p._version, p.data_ptr(), p.device) for p in self.parameters())
        if version != self._cache_version:
            self._cache, self._cache_version = {}, version
        key = (h, w, torch.is_inference_mode_enabled())  # inference tensors must not leak into autograd
        if key not in self._cache:
            self._cache[key] = self.compute(h, w)
        return self._cache[key]


class PEG(nn.Module):
    """Position-generating convolution: a depthwise 3x3x3 Conv3d (with bias) over the (t, h, w) token grid,
    zero-padded 1 on each side of h and w and causally along t: `causal_padding` = (2 before, 0 after), so
    output slice t sees input slices t-2, t-1, t. The caller adds the result to the tokens (residual).
    """

    causal_padding = (2, 0)  # (before, after) along the grid's first axis

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dsconv = nn.Conv3d(dim, dim, kernel_size=3, groups=dim)

    def convolve(self, grid: torch.Tensor) -> torch.Tensor:
        """grid: (B, t, h, w, D). Returns (B, t, h, w, D), causal along t."""
        x = rearrange(grid, "b t h w d -> b d t h w")
        x = F.pad(x, (1, 1, 1, 1, *self.causal_padding))
        return rearrange(self.dsconv(x), "b d t h w -> b t h w d")

    def forward(self, x: torch.Tensor, grid_shape: tuple[int, int, int, int]) -> torch.Tensor:
        """x: (N, n, D) token sequences; grid_shape (B, t, h, w) with N·n = B·t·h·w. Returns (N, n, D).

        The sequences are reinterpreted as a (B, t, h, w, D) grid by a plain reshape, as CT-CLIP does. For the
        spatial stage, sequences ((B t), (h w)), this is the true grid. For the temporal stage, sequences
        ((B h w), t), it is a memory reinterpretation, not a permutation: CT-CLIP's temporal PEG quirk, kept
        literally because the pretrained weights expect it.
        """
        return self.convolve(x.reshape(*grid_shape, x.shape[-1])).reshape(x.shape)
