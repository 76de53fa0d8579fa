"""CT-ViT blocks (mafm3.model.attention): fused vs plain attention, the keys/values quirk, GEGLU.

Precision: float32 and float64 as each test says; no autocast.
"""

from __future__ import annotations

import math

import pytest
import torch

from mafm3.model.attention import GEGLU, Attention, FeedForward, GammaLayerNorm, reference_attention


def _attention(dtype: torch.dtype = torch.float64, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    attention = Attention(dim=12, heads=3, dim_head=4).to(dtype).requires_grad_(False)
    for parameter in attention.parameters():
        torch.nn.init.normal_(parameter, mean=1.0 if parameter.ndim == 1 else 0.0, std=0.3)
    return attention


@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_attention_equals_the_plain_einsum_path_in_float64(with_bias):
    attention, x = _attention(), torch.randn(5, 7, 12, dtype=torch.float64)
    bias = torch.randn(3, 7, 7, dtype=torch.float64) if with_bias else None
    fused = attention(x, bias)
    with reference_attention():
        plain = attention(x, bias)
    torch.testing.assert_close(fused, plain, atol=1e-12, rtol=0)


def test_attention_matches_the_formula_written_out():
    attention, x, bias = (
        _attention(),
        torch.randn(2, 5, 12, dtype=torch.float64),
        torch.randn(3, 5, 5).double(),
    )
    normed = torch.nn.functional.layer_norm(x, (12,), attention.norm.gamma)
    q = (normed @ attention.to_q.weight.T).reshape(2, 5, 3, 4)
    k, v = (x @ attention.to_kv.weight.T).reshape(2, 5, 2, 3, 4).unbind(dim=2)
    q = q / q.norm(dim=-1, keepdim=True) * attention.q_scale
    k = k / k.norm(dim=-1, keepdim=True) * attention.k_scale
    logits = 8 * torch.einsum("bihd,bjhd->bhij", q, k) + bias
    out = (
        torch.einsum("bhij,bjhd->bihd", logits.softmax(dim=-1), v).reshape(2, 5, 12)
        @ attention.to_out.weight.T
    )
    torch.testing.assert_close(attention(x, bias), out, atol=1e-12, rtol=0)


def test_keys_and_values_come_from_the_unnormalised_input():
    # Scaling x leaves LN(x), hence the queries and (after L2 norm) the keys, unchanged but scales the values:
    # the output scales with x. Keys and values from LN(x) would make it scale-invariant.
    attention, x = _attention(), torch.randn(2, 6, 12, dtype=torch.float64)
    torch.testing.assert_close(attention(3.0 * x), 3.0 * attention(x), atol=1e-12, rtol=0)


def test_gamma_layer_norm_has_no_shift_and_keeps_a_zero_beta_buffer():
    norm = GammaLayerNorm(4)
    assert [name for name, _ in norm.named_parameters()] == ["gamma"]
    assert torch.equal(norm.state_dict()["beta"], torch.zeros(4))


def test_geglu_multiplies_the_first_half_by_the_exact_gelu_of_the_second():
    x = torch.randn(3, 10, dtype=torch.float64)
    u, g = x[:, :5], x[:, 5:]
    expected = u * 0.5 * g * (1 + torch.erf(g / math.sqrt(2)))
    torch.testing.assert_close(GEGLU()(x), expected, atol=1e-15, rtol=0)


def test_feed_forward_keeps_the_checkpoint_slot_numbers():
    keys = set(FeedForward(dim=8, inner_dim=6).state_dict())
    assert keys == {"0.weight", "0.bias", "1.weight", "4.weight"}
