"""UNETR-style segmentation decoder on the 4 spatial hidden states of the CT-ViT (method-spec §2.3, §2.4).

Built from MONAI's UNETR blocks exactly as the authors' `hector_ours.py` wires them: a residual
convolution stem on the raw CT (`encoder1`), three progressive up-sampling paths from hidden states to 1/2,
1/4 and 1/8 of the crop (`encoder2..4`), the 1/16 token grid as bottleneck, and four up-blocks back to full
resolution. For PET/CT skills a second stem on the PET channel (`encoder1_pt`) is added to the CT stem
before the last up-block (the PEMMA pattern).

The four up-sampling levels assume a 16³ token (patch) size, as UNETR does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.networks.blocks import UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import UnetOutBlock
from torch import nn

LAYER_MAPPINGS = ("reversed", "standard")
PATCH_SIZE = 16  # voxels per token along each axis that the 4 up-sampling levels undo (2**4)


@dataclass(frozen=True)
class UnetrDecoderConfig:
    """How the decoder is built; stored in the skill manifest.

    `layer_mapping`: which hidden state feeds which scale.
      - "reversed" (the authors): h3 -> 1/2 skip, h2 -> 1/4, h1 -> 1/8, h0 -> bottleneck (1/16).
      - "standard" (UNETR): h0 -> 1/2 skip, h1 -> 1/4, h2 -> 1/8, h3 -> bottleneck.
    """

    hidden_size: int = 512  # D, width of the backbone tokens
    feature_size: int = 16  # channels of the full-resolution stem; deeper levels use 2x, 4x, 8x
    out_channels: int = 3  # background, GTVp, GTVn
    layer_mapping: str = "reversed"
    pet_skip: bool = False  # add a PET stem (channel 1 of the input) to the CT stem
    norm_name: str = "instance"  # MONAI norm name; "instance" = InstanceNorm3d without affine
    res_block: bool = True

    def __post_init__(self) -> None:
        if self.layer_mapping not in LAYER_MAPPINGS:
            raise ValueError(f"`layer_mapping` must be one of {LAYER_MAPPINGS}, got {self.layer_mapping!r}")
        for name in ("hidden_size", "feature_size", "out_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}")


class UnetrDecoder(nn.Module):
    """Hidden states of the spatial transformer + the raw crop -> per-voxel class logits."""

    def __init__(self, config: UnetrDecoderConfig) -> None:
        super().__init__()
        self.config = config
        fs, hidden, norm, res = config.feature_size, config.hidden_size, config.norm_name, config.res_block

        def stem() -> UnetrBasicBlock:
            return UnetrBasicBlock(3, 1, fs, kernel_size=3, stride=1, norm_name=norm, res_block=res)

        def up_path(out_channels: int, num_layer: int) -> UnetrPrUpBlock:
            return UnetrPrUpBlock(
                3,
                hidden,
                out_channels,
                num_layer=num_layer,
                kernel_size=3,
                stride=1,
                upsample_kernel_size=2,
                norm_name=norm,
                conv_block=True,
                res_block=res,
            )

        def up_block(in_channels: int, out_channels: int) -> UnetrUpBlock:
            return UnetrUpBlock(
                3,
                in_channels,
                out_channels,
                kernel_size=3,
                upsample_kernel_size=2,
                norm_name=norm,
                res_block=res,
            )

        self.encoder1 = stem()
        self.encoder1_pt = stem() if config.pet_skip else None
        self.encoder2 = up_path(fs * 2, num_layer=2)
        self.encoder3 = up_path(fs * 4, num_layer=1)
        self.encoder4 = up_path(fs * 8, num_layer=0)
        self.decoder5 = up_block(hidden, fs * 8)
        self.decoder4 = up_block(fs * 8, fs * 4)
        self.decoder3 = up_block(fs * 4, fs * 2)
        self.decoder2 = up_block(fs * 2, fs)
        self.out = UnetOutBlock(3, fs, config.out_channels)

    def forward(self, image: torch.Tensor, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """image: (B, C, T, H, W), C = 1 (CT) or 2 (CT, PET) with T, H, W multiples of 16;
        hidden_states: 4 tensors (B, t, h, w, D), residual stream after spatial layers 1..4, t = T / 16.
        Returns logits (B, out_channels, T, H, W)."""
        if len(hidden_states) != 4:
            raise ValueError(f"the decoder needs 4 hidden states, got {len(hidden_states)}")
        if self.encoder1_pt is not None and image.shape[1] < 2:
            raise ValueError(
                f"a decoder with a PET skip needs a 2-channel (CT, PET) input, got {image.shape[1]}"
            )
        h0, h1, h2, h3 = (h.permute(0, 4, 1, 2, 3) for h in hidden_states)  # (B, D, t, h, w)
        if self.config.layer_mapping == "reversed":
            half, quarter, eighth, bottleneck = h3, h2, h1, h0
        else:
            half, quarter, eighth, bottleneck = h0, h1, h2, h3
        stem = self.encoder1(image[:, :1])
        if self.encoder1_pt is not None:
            stem = stem + self.encoder1_pt(image[:, 1:2])
        x = self.decoder5(bottleneck, self.encoder4(eighth))
        x = self.decoder4(x, self.encoder3(quarter))
        x = self.decoder3(x, self.encoder2(half))
        return self.out(self.decoder2(x, stem))
