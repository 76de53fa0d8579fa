"""CT-ViT transformer blocks: cosine-similarity attention and the GEGLU feed-forward.

Attention runs fused (`F.scaled_dot_product_attention`) by default. `reference_attention()` switches every
CT-ViT attention, and the position-bias cache, to the plain float32 einsum path: the same maths written out,
for tests and benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

_reference_attention = ContextVar("mafm3_reference_attention", default=False)


@contextmanager
def reference_attention() -> Iterator[None]:
    """Within this block attention runs as plain einsum in float32, and position biases are recomputed."""
    token = _reference_attention.set(True)
    try:
        yield
    finally:
        _reference_attention.reset(token)


def reference_attention_enabled() -> bool:
    """True inside `reference_attention()`."""
    return _reference_attention.get()


class GammaLayerNorm(nn.Module):
    """Layer norm (eps 1e-5) with a learned scale `gamma` and CT-CLIP's fixed, always-zero `beta` buffer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D). Returns (..., D)."""
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta)


class Attention(nn.Module):
    """Cosine-similarity multi-head self-attention with an optional additive position bias.

    Queries come from GammaLayerNorm(x), keys and values from the un-normalised x (a quirk of the Phenaki code
    CT-CLIP was trained with). Per head, q and k are L2-normalised and scaled by the learned dim_head-vectors
    `q_scale`, `k_scale`; logits = `scale`·(q·k) + bias. The projection names `to_q`, `to_kv`, `to_out` are
    the checkpoint's and the ones LoRA targets.
    """

    def __init__(self, *, dim: int, heads: int, dim_head: int, scale: float = 8.0) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.scale = scale
        self.norm = GammaLayerNorm(dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner_dim, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, n, D) sequences; attn_bias: (heads, n, n) [head, query, key] or None. Returns (N, n, D)."""
        q = self.to_q(self.norm(x))
        k, v = self.to_kv(x).chunk(2, dim=-1)  # first half keys, second half values
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        q = F.normalize(q, dim=-1) * self.q_scale
        k = F.normalize(k, dim=-1) * self.k_scale
        if reference_attention_enabled():
            out = _plain_attention(q, k, v, attn_bias, self.scale)
        else:
            # A 4-D mask: with a 3-D one, torch 2.13 leaves the fused CPU kernel for the math path (10x).
            mask = None if attn_bias is None else attn_bias.to(q.dtype)[None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


def _plain_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_bias: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """softmax(scale·q·kᵀ + bias)·v in float32 (float64 stays float64).

    q, k, v: (N, heads, n, dim_head); attn_bias: (heads, n, n) or None. Returns (N, heads, n, dim_head).
    """
    dtype = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(q.device.type, enabled=False):
        sim = torch.einsum("b h i d, b h j d -> b h i j", q.to(dtype), k.to(dtype)) * scale
        if attn_bias is not None:
            sim = sim + attn_bias.to(dtype)
        out = torch.einsum("b h i j, b h j d -> b h i d", sim.softmax(dim=-1), v.to(dtype))
    return out.to(v.dtype)


class GEGLU(nn.Module):
    """(..., 2F) -> (..., F): first half u, second half g, output u * GELU(g) with the exact (erf) GELU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, gate = x.chunk(2, dim=-1)
        return u * F.gelu(gate)


class FeedForward(nn.Sequential):
    """LayerNorm(D) -> Linear(D, 2F) -> GEGLU -> Linear(F, D), both linears bias-free; (..., D) -> (..., D).

    Slot 3 was a Dropout(0) in CT-CLIP; an Identity holds its place so the checkpoint's slots 0, 1, 4 load.
    """

    def __init__(self, *, dim: int, inner_dim: int) -> None:
        super().__init__(
            nn.LayerNorm(dim),
            nn.Linear(dim, 2 * inner_dim, bias=False),
            GEGLU(),
            nn.Identity(),
            nn.Linear(inner_dim, dim, bias=False),
        )
