"""Patch embedding (mafm3.model.patch_embedding): the flatten order inside a patch, and shape errors.

Precision: float32 on the CPU without autocast (the `--precision` policy is not involved); tensors are
compared bit for bit only where the same module runs on the same input, else within a tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mafm3.errors import MAFM3Error
from mafm3.model.patch_embedding import PatchEmbedding


def test_patch_features_are_flattened_channel_then_slice_then_row_then_column():
    b, c, pt, p, t, h, w = 2, 2, 3, 2, 2, 3, 4
    embedding = PatchEmbedding(dim=8, channels=c, patch_size=p, temporal_patch_size=pt)
    # every voxel holds its own (b, c, T, H, W) index, so any misplaced feature is visible
    x = np.arange(b * c * t * pt * h * p * w * p, dtype=np.float64).reshape(b, c, t * pt, h * p, w * p)
    expected = x.reshape(b, c, t, pt, h, p, w, p).transpose(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, t, h, w, -1)
    patches = embedding[0](torch.from_numpy(x))
    np.testing.assert_array_equal(patches.numpy(), expected)


def test_tokens_come_from_layer_norm_linear_layer_norm_of_the_patch():
    torch.manual_seed(0)
    embedding = PatchEmbedding(dim=6, channels=1, patch_size=2, temporal_patch_size=2)
    for parameter in embedding.parameters():
        torch.nn.init.normal_(parameter)
    x = torch.randn(1, 1, 4, 4, 2)
    patch = x[0, 0, 2:4, 2:4, 0:2].reshape(-1)  # token (t, h, w) = (1, 1, 0)
    ln1, linear, ln2 = embedding[1], embedding[2], embedding[3]
    hidden = (patch - patch.mean()) / torch.sqrt(patch.var(unbiased=False) + 1e-5) * ln1.weight + ln1.bias
    token = linear.weight @ hidden + linear.bias
    token = (token - token.mean()) / torch.sqrt(token.var(unbiased=False) + 1e-5) * ln2.weight + ln2.bias
    torch.testing.assert_close(embedding(x)[0, 1, 1, 0], token, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(1, 1, 9, 8, 8), (1, 2, 8, 8, 8), (1, 1, 8, 8, 6), (1, 8, 8, 8)])
def test_volumes_that_do_not_tile_into_patches_are_refused(shape):
    embedding = PatchEmbedding(dim=4, channels=1, patch_size=4, temporal_patch_size=2)
    with pytest.raises(MAFM3Error, match=r"takes volumes of shape \(B, 1, T, H, W\) with T a multiple of 2"):
        embedding(torch.zeros(shape))


def test_non_positive_sizes_are_programmer_errors():
    with pytest.raises(ValueError, match="`patch_size` must be a positive integer, got 0"):
        PatchEmbedding(dim=4, channels=1, patch_size=0, temporal_patch_size=2)
