"""UNETR decoder and PET skip encoder (`mafm3.model.decoders`).

Oracles: the size arithmetic of 4 up-sampling levels (16³ tokens -> voxels), the authors' per-block parameter
counts in fixtures/ctclip/mafm3_skill_param_counts.json, and which hidden state reaches which block.

Precision: float32 on the CPU without autocast (the `--precision` policy is not involved); tensors are
compared bit for bit only where the same module runs on the same input, else within a tolerance.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import FIXTURES

from mafm3.model.decoders import UnetrDecoder, UnetrDecoderConfig

SMALL = dict(hidden_size=8, feature_size=2)


def hidden_states(batch: int, grid: tuple[int, int, int], width: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *grid, width, generator=generator) for _ in range(4)]


@pytest.mark.parametrize("channels", [1, 2])
def test_decoder_maps_a_96_cube_to_three_class_logits(channels):
    decoder = UnetrDecoder(UnetrDecoderConfig(**SMALL, pet_skip=channels == 2)).eval()
    image = torch.randn(1, channels, 96, 96, 96)
    with torch.no_grad():
        logits = decoder(image, hidden_states(1, (6, 6, 6), 8))
    assert logits.shape == (1, 3, 96, 96, 96)


def test_non_cubic_crops_and_batches_keep_their_shape():
    decoder = UnetrDecoder(UnetrDecoderConfig(**SMALL)).eval()
    with torch.no_grad():
        logits = decoder(torch.randn(2, 1, 16, 32, 48), hidden_states(2, (1, 2, 3), 8))
    assert logits.shape == (2, 3, 16, 32, 48)


def test_block_parameter_counts_equal_the_authors_decoder():
    expected = json.loads((FIXTURES / "mafm3_skill_param_counts.json").read_text())["segmentation_ctpet"]
    decoder = UnetrDecoder(UnetrDecoderConfig(hidden_size=512, feature_size=16, pet_skip=True))
    counts = {name: sum(p.numel() for p in block.parameters()) for name, block in decoder.named_children()}
    for component, count in expected["trainable_by_component"].items():
        group, _, block = component.partition(":")
        if group in ("decoder", "pet_skip_encoder", "output_head"):
            assert counts[block] == count, component
    assert sum(counts.values()) == expected["decoder_total_including_output_head"] + 7360


@pytest.mark.parametrize(("mapping", "to_half", "to_bottleneck"), [("reversed", 3, 0), ("standard", 0, 3)])
def test_layer_mapping_decides_which_hidden_state_feeds_which_scale(mapping, to_half, to_bottleneck):
    decoder = UnetrDecoder(UnetrDecoderConfig(**SMALL, layer_mapping=mapping)).eval()
    hidden = hidden_states(1, (1, 1, 1), 8)
    seen = {}
    for name, block in (("half", decoder.encoder2), ("bottleneck", decoder.decoder5)):
        block.register_forward_pre_hook(lambda module, args, name=name: seen.update({name: args[0]}))
    with torch.no_grad():
        decoder(torch.randn(1, 1, 16, 16, 16), hidden)
    assert torch.equal(seen["half"], hidden[to_half].permute(0, 4, 1, 2, 3))
    assert torch.equal(seen["bottleneck"], hidden[to_bottleneck].permute(0, 4, 1, 2, 3))


def test_pet_reaches_the_output_only_through_the_pet_skip():
    hidden = hidden_states(1, (2, 2, 2), 8)
    ct, pet = torch.randn(1, 1, 32, 32, 32), torch.randn(1, 1, 32, 32, 32)
    outputs = {}
    for pet_skip in (False, True):
        torch.manual_seed(0)
        decoder = UnetrDecoder(UnetrDecoderConfig(**SMALL, pet_skip=pet_skip)).eval()
        with torch.no_grad():
            outputs[pet_skip] = [decoder(torch.cat([ct, p], 1), hidden) for p in (pet, 2 * pet + 1)]
    assert torch.equal(*outputs[False])  # without the skip the PET channel is ignored by the decoder
    assert not torch.allclose(*outputs[True])


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="`layer_mapping` must be one of"):
        UnetrDecoderConfig(layer_mapping="sideways")
    with pytest.raises(ValueError, match="`feature_size` must be a positive integer"):
        UnetrDecoderConfig(feature_size=0)
    decoder = UnetrDecoder(UnetrDecoderConfig(**SMALL, pet_skip=True))
    with pytest.raises(ValueError, match="needs a 2-channel"):
        decoder(torch.randn(1, 1, 16, 16, 16), hidden_states(1, (1, 1, 1), 8))
    with pytest.raises(ValueError, match="needs 4 hidden states"):
        decoder(torch.randn(1, 2, 16, 16, 16), hidden_states(1, (1, 1, 1), 8)[:3])
