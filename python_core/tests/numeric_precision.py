"""Tolerances derived from the precision a test runs in (float32, or bf16/fp16 autocast). Not tests."""

from __future__ import annotations

import torch

# Relative error each precision allows for one result computed two ways (a fused against a plain path, two
# devices): two units in the last place of the narrower format, as rounding the inputs of each matrix
# product once costs one. float32's bound is for sums of up to ~10^4 terms taken in another order
# (error ~ sqrt(n) ulps).
ULPS = {torch.float32: 128, torch.bfloat16: 2, torch.float16: 2}


def relative_tolerance(dtype: torch.dtype | None) -> float:
    """The relative error allowed under autocast `dtype` (None: float32), derived from its machine epsilon."""
    dtype = dtype or torch.float32
    return ULPS[dtype] * torch.finfo(dtype).eps


def assert_close_in_precision(found: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None) -> None:
    """`found` equals `expected` within `relative_tolerance(dtype)` of the largest magnitude in `expected`."""
    scale = float(expected.float().abs().max())
    torch.testing.assert_close(
        found.float(), expected.float(), rtol=0, atol=relative_tolerance(dtype) * max(scale, 1e-12)
    )
