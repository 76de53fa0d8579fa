"""Position modules (mafm3.model.position): continuous position bias and its cache, causal PEG.

Precision: float32 on the CPU without autocast (the `--precision` policy is not involved); tensors are
compared bit for bit only where the same module runs on the same input, else within a tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange

from mafm3.model.attention import reference_attention
from mafm3.model.position import PEG, ContinuousPositionBias, signed_log


def _position_bias(seed: int = 0) -> ContinuousPositionBias:
    torch.manual_seed(seed)
    cpb = ContinuousPositionBias(dim=16, heads=3).eval().requires_grad_(False)
    for parameter in cpb.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    return cpb


def _all_pairs_bias(cpb: ContinuousPositionBias, h: int, w: int) -> torch.Tensor:
    """CT-CLIP's own formulation: the MLP run on the offset of every (query, key) pair."""
    grid = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), dim=-1).reshape(-1, 2)
    offsets = (grid[:, None, :] - grid[None, :, :]).float()
    out = torch.sign(offsets) * torch.log(offsets.abs() + 1)
    for layer in cpb.net:
        out = layer(out)
    return rearrange(out, "i j heads -> heads i j")


def test_signed_log_is_sign_times_log_one_plus_magnitude():
    x = torch.tensor([-(math.e - 1), -3.0, 0.0, 0.5, math.e**2 - 1])
    expected = torch.tensor([-1.0, -math.log(4.0), 0.0, math.log(1.5), 2.0])
    torch.testing.assert_close(signed_log(x), expected)


@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (6, 2)])
def test_bias_equals_the_mlp_of_every_query_key_offset(grid):
    cpb = _position_bias()
    torch.testing.assert_close(cpb.compute(*grid), _all_pairs_bias(cpb, *grid), atol=1e-6, rtol=1e-6)


def test_equal_offsets_give_equal_bias_on_any_grid():
    cpb = _position_bias()
    small, large = cpb.compute(3, 4), cpb.compute(6, 5)
    # offset (Δrow, Δcol) = (1, -2): query (1, 0) -> key (0, 2) on both grids
    assert torch.equal(small[:, 1 * 4 + 0, 0 * 4 + 2], large[:, 1 * 5 + 0, 0 * 5 + 2])
    assert torch.equal(large[:, 4 * 5 + 1, 3 * 5 + 3], large[:, 1 * 5 + 0, 0 * 5 + 2])


def test_cached_bias_equals_the_recomputed_one_and_is_computed_once():
    cpb = _position_bias()
    first = cpb(4, 5)
    assert torch.equal(first, cpb.compute(4, 5))
    assert cpb(4, 5) is first
    assert cpb(3, 3) is not first and torch.equal(cpb(3, 3), cpb.compute(3, 3))


def test_cache_follows_weight_changes():
    cpb = _position_bias()
    before = cpb(4, 4)
    with torch.no_grad():
        cpb.net[0][0].weight.mul_(1.5)  # an optimiser step writes in place like this
    after = cpb(4, 4)
    assert not torch.equal(after, before)
    assert torch.equal(after, cpb.compute(4, 4))
    cpb.load_state_dict(_position_bias(seed=1).state_dict())
    assert torch.equal(cpb(4, 4), _position_bias(seed=1).compute(4, 4))


def test_bias_is_recomputed_with_gradients_when_a_skill_trains_its_copy():
    cpb = _position_bias().requires_grad_(True)
    bias = cpb(4, 4)
    assert bias.grad_fn is not None and cpb(4, 4) is not bias
    bias.sum().backward()
    assert cpb.net[0][0].weight.grad is not None
    cpb.train().requires_grad_(False)
    assert cpb(4, 4) is not cpb(4, 4)


def test_reference_attention_recomputes_the_bias():
    cpb = _position_bias()
    cached = cpb(4, 4)
    with reference_attention():
        assert cpb(4, 4) is not cached and torch.equal(cpb(4, 4), cached)


def test_bias_cached_under_inference_mode_is_not_reused_outside_it():
    cpb = _position_bias()
    with torch.inference_mode():
        inside = cpb(4, 4)
    outside = cpb(4, 4)
    assert inside.is_inference() and not outside.is_inference()


def _peg(seed: int = 0) -> PEG:
    torch.manual_seed(seed)
    peg = PEG(dim=5)
    torch.nn.init.normal_(peg.dsconv.weight)
    torch.nn.init.normal_(peg.dsconv.bias)
    return peg


def test_peg_is_causal_along_t_and_sees_two_slices_back():
    peg, grid = _peg(), torch.randn(2, 6, 4, 3, 5)
    edited = grid.clone()
    edited[:, 2] += torch.randn(2, 4, 3, 5)  # change slice t = 2 only
    changed = (peg.convolve(edited) - peg.convolve(grid)).abs().amax(dim=(0, 2, 3, 4)) > 0
    assert changed.tolist() == [False, False, True, True, True, False]


def test_peg_is_depthwise_and_zero_padded_in_plane():
    peg, grid = _peg(), torch.zeros(1, 3, 4, 4, 5)
    out = peg.convolve(grid)
    torch.testing.assert_close(out, peg.dsconv.bias.expand_as(out))  # zero input, zero padding -> bias only
    grid[..., 0] = 1.0
    delta = peg.convolve(grid) - out
    assert torch.equal(delta[..., 1:], torch.zeros_like(delta[..., 1:]))  # channel 0 reaches no other channel
    # corner token of the last slice: 3 slices (t-2..t) x 2 x 2 in-plane neighbours inside the grid
    weight = peg.dsconv.weight[0, 0]
    torch.testing.assert_close(delta[0, 2, 0, 0, 0], weight[:, 1:, 1:].sum())


def test_peg_on_spatial_sequences_is_the_true_grid_convolution():
    peg, grid = _peg(), torch.randn(2, 3, 4, 5, 5)
    sequences = rearrange(grid, "b t h w d -> (b t) (h w) d")
    expected = rearrange(peg.convolve(grid), "b t h w d -> (b t) (h w) d")
    torch.testing.assert_close(peg(sequences, grid_shape=(2, 3, 4, 5)), expected)
