"""Cosine codebook (mafm3.model.vq) against a brute-force numpy argmax.

Precision: float32, and bf16 autocast where a test asks for it by name.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mafm3.model.vq import CosineCodebook


def _codebook(size: int = 32, seed: int = 0) -> CosineCodebook:
    generator = torch.Generator().manual_seed(seed)
    vq = CosineCodebook(dim=8, codebook_size=size)
    rows = torch.randn(size, 8, generator=generator)
    vq.codebook.copy_(
        (rows * torch.linspace(0.2, 3.0, size)[:, None])[None]
    )  # rows of very different lengths
    return vq


def test_each_token_gets_the_row_of_highest_cosine_and_the_stored_row_unnormalised():
    vq = _codebook()
    tokens = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(1))
    quantised, indices = vq(tokens)
    rows, flat = vq.codebook[0].numpy().astype(np.float64), tokens.reshape(-1, 8).numpy().astype(np.float64)
    cosine = (flat / np.linalg.norm(flat, axis=1, keepdims=True)) @ (
        rows / np.linalg.norm(rows, axis=1, keepdims=True)
    ).T
    expected = cosine.argmax(axis=1)
    assert indices.shape == (2, 3, 5) and indices.dtype == torch.int64
    np.testing.assert_array_equal(indices.reshape(-1).numpy(), expected)
    np.testing.assert_array_equal(quantised.reshape(-1, 8).numpy(), rows[expected].astype(np.float32))
    assert not np.allclose(np.linalg.norm(rows[expected], axis=1), 1.0)  # the rows really are not unit length
    dot_product_choice = (flat @ rows.T).argmax(axis=1)
    assert (dot_product_choice != expected).any()  # a dot-product codebook would have chosen differently


def test_codes_are_chosen_in_float32_under_bf16_autocast():
    vq = _codebook(size=256)
    tokens = torch.randn(2000, 8, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        quantised, indices = vq(tokens)
        bf16_similarity = F.normalize(tokens, dim=-1) @ F.normalize(vq.codebook[0], dim=-1).T  # in bf16
    assert bf16_similarity.dtype == torch.bfloat16
    assert (bf16_similarity.argmax(dim=-1) != indices).any()  # so the test below can fail
    assert quantised.dtype == torch.float32
    assert torch.equal(indices, vq(tokens)[1])
