"""CT-ViT, CT-CLIP's 3-D image encoder, written from the method spec with the checkpoint's module names.

Two forward paths:

- `forward_features` (MAFM³, every new skill): patch embedding -> spatial transformer -> `norm_out`, returning
  tokens (B, t, h, w, D) and the 4 per-layer hidden states. A skill passes its own patch embedding, position
  bias and PEG copies as keyword overrides; the encoder's own modules are left untouched.
- `image_latent` (CT-CLIP classification): the spatial path, then `temporal_tokens` (temporal transformer),
  `quantize` (cosine VQ), `image_embedding` (mean over t, flatten) and `project_latent` (Linear, L2 norm).

Load with `load_ctclip_image_encoder(path)`. The encoder comes back in eval mode with every weight frozen;
its only train-mode difference is that the position bias is recomputed instead of cached (there is no
dropout, batch norm or codebook update). Set `encoder.autocast_dtype = torch.bfloat16` for bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mafm3.errors import MAFM3Error
from mafm3.model.attention import Attention, FeedForward, GammaLayerNorm
from mafm3.model.checkpoint import checkpoint_visual_key, read_state_dict, split_ctclip_state_dict
from mafm3.model.patch_embedding import PatchEmbedding
from mafm3.model.position import PEG, ContinuousPositionBias
from mafm3.model.vq import CosineCodebook


@dataclass(frozen=True)
class CTViTConfig:
    """CT-ViT sizes; the defaults are CT-CLIP's. `from_state_dict` infers all but the patch sizes."""

    dim: int = 512  # D, token width
    heads: int = 8
    dim_head: int = 32  # attention inner width = heads · dim_head
    spatial_depth: int = 4
    temporal_depth: int = 4
    channels: int = 1
    patch_size: int = 20  # p1 = p2, in-plane patch size in voxels
    temporal_patch_size: int = 10  # pt, patch size along the slice axis in voxels
    ff_inner_dim: int = 1365  # F, GEGLU inner width
    codebook_size: int = 8192  # K, VQ codebook rows
    latent_dim: int | None = None  # CLIP image-latent width (512); None: no `to_visual_latent`
    latent_in_features: int | None = None  # h·w·D the CLIP projection takes (24·24·512 = 294,912)

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not (value is None and item.name.startswith("latent")) and (
                not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"`{item.name}` must be a positive integer, got {value!r}")
        if (self.latent_dim is None) != (self.latent_in_features is None):
            raise ValueError("`latent_dim` and `latent_in_features` must be given together or not at all")

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, torch.Tensor], *, patch_size: int = 20, temporal_patch_size: int = 10
    ) -> CTViTConfig:
        """Infer the sizes from the tensor shapes of a `CTViT` state dict (`split_ctclip_state_dict` visual).

        The patch sizes cannot be inferred (only their product with the channels can) and are given.
        """
        try:
            dim, patch_features = state["to_patch_emb.2.weight"].shape
            heads = state["spatial_rel_pos_bias.net.2.weight"].shape[0]
            dim_head = state["enc_spatial_transformer.layers.0.1.q_scale"].shape[0]
            ff_inner_dim = state["enc_spatial_transformer.layers.0.3.4.weight"].shape[1]
            codebook_size = state["vq.codebook"].shape[1]
        except KeyError as error:
            raise MAFM3Error(
                f"The checkpoint lacks `{checkpoint_visual_key(error.args[0])}`, so it is not a complete "
                "CT-CLIP checkpoint; import CT-CLIP_v2.pt from the CT-RATE release."
            ) from error
        voxels = temporal_patch_size * patch_size * patch_size
        if patch_features % voxels:
            raise MAFM3Error(
                f"The checkpoint's patch embedding takes {patch_features} features per patch, which is not a "
                f"multiple of {temporal_patch_size}·{patch_size}·{patch_size} voxels; give the patch sizes "
                "it was trained with (CT-CLIP: patch size 20, temporal patch size 10)."
            )
        latent = state.get("to_visual_latent.weight")

        spatial_depth, temporal_depth = (
            len({key.split(".")[2] for key in state if key.startswith(f"{stage}.layers.")})
            for stage in ("enc_spatial_transformer", "enc_temporal_transformer")
        )
        if not temporal_depth:
            raise MAFM3Error(
                "The checkpoint lacks `visual_transformer.enc_temporal_transformer.*`, so it is not a "
                "complete CT-CLIP checkpoint; import CT-CLIP_v2.pt from the CT-RATE release."
            )
        return cls(
            dim=dim,
            heads=heads,
            dim_head=dim_head,
            spatial_depth=spatial_depth,
            temporal_depth=temporal_depth,
            channels=patch_features // voxels,
            patch_size=patch_size,
            temporal_patch_size=temporal_patch_size,
            ff_inner_dim=ff_inner_dim,
            codebook_size=codebook_size,
            latent_dim=None if latent is None else latent.shape[0],
            latent_in_features=None if latent is None else latent.shape[1],
        )


class Transformer(nn.Module):
    """`depth` layers of [PEG, Attention, (no cross-attention), FeedForward], each added to the residual
    stream, then `norm_out`. Slots keep CT-CLIP's numbering, so checkpoint keys `layers.{i}.{0,1,3}` load.
    """

    def __init__(self, *, dim: int, depth: int, heads: int, dim_head: int, ff_inner_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PEG(dim),
                    Attention(dim=dim, heads=heads, dim_head=dim_head),
                    None,  # cross-attention slot, empty in the CT-ViT
                    FeedForward(dim=dim, inner_dim=ff_inner_dim),
                ]
            )
            for _ in range(depth)
        )
        self.norm_out = GammaLayerNorm(dim)

    def forward(
        self,
        x: torch.Tensor,
        *,
        grid_shape: tuple[int, int, int, int],
        attn_bias: torch.Tensor | None = None,
        pegs: Sequence[PEG] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x: (N, n, D) sequences of a (B, t, h, w) token grid (`grid_shape`); attn_bias: (heads, n, n) or
        None; pegs: one PEG per layer to use instead of the layer's own, or None.

        Returns norm_out(x after the last layer), (N, n, D), and the residual stream after each layer.
        """
        if pegs is not None and len(pegs) != len(self.layers):
            raise ValueError(f"`pegs` must hold one PEG per layer ({len(self.layers)}), got {len(pegs)}")
        hidden = []
        for i, (peg, attention, _, feed_forward) in enumerate(self.layers):
            x = x + (peg if pegs is None else pegs[i])(x, grid_shape)
            x = x + attention(x, attn_bias)
            x = x + feed_forward(x)
            hidden.append(x)
        return self.norm_out(x), hidden


class CTViT(nn.Module):
    """CT-CLIP's CT-ViT image encoder. Build it with `from_state_dict` or `load_ctclip_image_encoder`."""

    def __init__(self, config: CTViTConfig) -> None:
        super().__init__()
        self.config = config
        stack = dict(
            dim=config.dim, heads=config.heads, dim_head=config.dim_head, ff_inner_dim=config.ff_inner_dim
        )
        self.to_patch_emb = PatchEmbedding(
            dim=config.dim,
            channels=config.channels,
            patch_size=config.patch_size,
            temporal_patch_size=config.temporal_patch_size,
        )
        self.spatial_rel_pos_bias = ContinuousPositionBias(dim=config.dim, heads=config.heads)
        self.enc_spatial_transformer = Transformer(depth=config.spatial_depth, **stack)
        self.enc_temporal_transformer = Transformer(depth=config.temporal_depth, **stack)
        self.vq = CosineCodebook(dim=config.dim, codebook_size=config.codebook_size)
        self.to_visual_latent = (
            None
            if config.latent_dim is None
            else nn.Linear(config.latent_in_features, config.latent_dim, bias=False)
        )
        self.autocast_dtype: torch.dtype | None = None  # e.g. torch.bfloat16; None runs in float32

    @classmethod
    def from_state_dict(cls, config: CTViTConfig, state: Mapping[str, torch.Tensor]) -> CTViT:
        """Build the encoder around the given tensors (no copy, no random init), in eval mode, frozen.

        Every parameter and buffer must be in `state` with the right shape, and nothing else may be.
        Floating tensors are converted to float32.
        """
        with torch.device("meta"):
            encoder = cls(config)
        state = {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
        try:
            missing, unexpected = encoder.load_state_dict(state, strict=False, assign=True)
        except RuntimeError as error:  # shape mismatches
            raise MAFM3Error(
                "The checkpoint's CT-ViT tensor shapes are inconsistent "
                f"({str(error).splitlines()[-1].strip()}); it is not a CT-CLIP checkpoint mafm3 can load."
            ) from error
        if missing or unexpected:
            names = [f"missing `{checkpoint_visual_key(k)}`" for k in missing[:3]]
            names += [f"unexpected `{checkpoint_visual_key(k)}`" for k in unexpected[:3]]
            raise MAFM3Error(
                f"The checkpoint does not match the CT-ViT layout ({', '.join(names)}); "
                "import CT-CLIP_v2.pt from the CT-RATE release."
            )
        return encoder.eval().requires_grad_(False)

    def _autocast(self, x: torch.Tensor) -> AbstractContextManager:
        return torch.autocast(
            x.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )

    def forward_features(
        self,
        x: torch.Tensor,
        *,
        patch_embedding: PatchEmbedding | None = None,
        position_bias: ContinuousPositionBias | None = None,
        pegs: Sequence[PEG] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The MAFM³ feature path: patch embedding -> spatial transformer -> norm_out.

        x: (B, C, T, H, W) float32; with CT-CLIP's patches T = 240, H = W = 480 gives a 24³ token grid.
        patch_embedding, position_bias, pegs: a skill's own modules used instead of `to_patch_emb`,
        `spatial_rel_pos_bias` and the spatial layers' PEGs (one per layer); None uses the encoder's.
        Returns tokens (B, t, h, w, D) after `norm_out`, and hidden, the residual stream after each spatial
        layer before any norm: a list of `spatial_depth` tensors (B, t, h, w, D).
        """
        with self._autocast(x):
            # The residual stream stays float32 under autocast; only matmuls and convolutions run in bf16.
            tokens = (self.to_patch_emb if patch_embedding is None else patch_embedding)(x).float()
            b, t, h, w, d = tokens.shape
            attn_bias = (self.spatial_rel_pos_bias if position_bias is None else position_bias)(h, w)
            out, hidden = self.enc_spatial_transformer(
                rearrange(tokens, "b t h w d -> (b t) (h w) d"),
                grid_shape=(b, t, h, w),
                attn_bias=attn_bias,
                pegs=pegs,
            )
        # Rows are (b, t) and columns (h, w), so this reshape is the true (B, t, h, w, D) grid.
        return out.reshape(b, t, h, w, d), [state.reshape(b, t, h, w, d) for state in hidden]

    forward = forward_features  # so wrappers that call the module (peft's PeftModel) get the feature path

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T, H, W). Returns the patch embedding (B, t, h, w, D) (a debug intermediate)."""
        with self._autocast(x):
            return self.to_patch_emb(x)

    def spatial_attn_bias(self, h: int, w: int) -> torch.Tensor:
        """The spatial position bias for an h x w slab: (heads, h·w, h·w), [head, query, key]."""
        return self.spatial_rel_pos_bias(h, w)

    def temporal_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The temporal stage. tokens: (B, t, h, w, D) from `forward_features`. Returns (B, t, h, w, D).

        Each in-plane position (b, h, w) is one sequence over t (unmasked, bidirectional, no position bias).
        Its PEG reinterprets the ((B h w), t, D) memory as a (B, t, h, w, D) grid: see `PEG.forward`.
        """
        b, t, h, w, _ = tokens.shape
        with self._autocast(tokens):
            out, _ = self.enc_temporal_transformer(
                rearrange(tokens, "b t h w d -> (b h w) t d"), grid_shape=(b, t, h, w)
            )
        return rearrange(out, "(b h w) t d -> b t h w d", b=b, h=h, w=w)

    def quantize(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (B, t, h, w, D). Returns vq_tokens (B, t, h, w, D) and vq_indices (B, t, h, w).

        One vector per token: vq_tokens[b, t, h, w] = codebook[vq_indices[b, t, h, w]].
        """
        return self.vq(tokens)

    @staticmethod
    def image_embedding(vq_tokens: torch.Tensor) -> torch.Tensor:
        """vq_tokens: (B, t, h, w, D). Returns the mean over t flattened in (h, w, D) order: (B, h·w·D)."""
        return vq_tokens.mean(dim=1).flatten(1)

    def project_latent(self, image_embed: torch.Tensor) -> torch.Tensor:
        """image_embed: (B, h·w·D). Returns the L2-normalised CLIP image latent (B, latent_dim)."""
        if self.to_visual_latent is None:
            raise MAFM3Error(
                "This checkpoint has no `to_visual_latent.weight`, so it cannot compute CLIP image latents; "
                "import the complete CT-CLIP_v2.pt."
            )
        if image_embed.shape[-1] != self.to_visual_latent.in_features:
            raise MAFM3Error(
                f"CT-CLIP's image projection takes {self.to_visual_latent.in_features} features (h·w·D), but "
                f"the volume gave {image_embed.shape[-1]}; classify volumes of the size CT-CLIP was trained "
                "on (480 x 480 in-plane, 240 slices)."
            )
        return F.normalize(self.to_visual_latent(image_embed.float()), dim=-1)

    @torch.inference_mode()
    def image_latent(self, x: torch.Tensor) -> torch.Tensor:
        """CT-CLIP's classification path. x: (B, C, T, H, W). Returns the L2-normalised (B, latent_dim).

        forward_features -> temporal_tokens -> quantize -> image_embedding -> project_latent.
        """
        tokens, _ = self.forward_features(x)
        vq_tokens, _ = self.quantize(self.temporal_tokens(tokens))
        return self.project_latent(self.image_embedding(vq_tokens))


def load_ctclip_image_encoder(path: str | Path, patch_size: int = 20, temporal_patch_size: int = 10) -> CTViT:
    """Load the CT-ViT (and the CLIP image projection, when present) from a CT-CLIP flat state dict.

    path: a `.pt` (read with `torch.load(weights_only=True)`) or `.safetensors` file with
    `visual_transformer.*` keys. patch_size, temporal_patch_size: in voxels, as the checkpoint was trained
    (CT-CLIP: 20 and 10); the other sizes are inferred from the tensor shapes. Returns the encoder in eval
    mode with frozen weights. Raises MAFM3Error for an unreadable file or one that is not CT-CLIP's.
    """
    split = split_ctclip_state_dict(read_state_dict(path), source=Path(path).name)
    config = CTViTConfig.from_state_dict(
        split.visual, patch_size=patch_size, temporal_patch_size=temporal_patch_size
    )
    return CTViT.from_state_dict(config, split.visual)
