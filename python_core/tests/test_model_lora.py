"""Within-model LoRA and per-skill position copies on the shared CT-ViT (`mafm3.model.lora`, `SkillModel`).

Oracles: the bare backbone's own features, taken before any skill exists (a fresh skill must reproduce them
bit for bit, and any sequence of activations must give them back); the base weights' bytes; LoRA's size
formula r·(in + out) per projection.

Precision: float32 on the CPU without autocast (the `--precision` policy is not involved); tensors are
compared bit for bit only where the same module runs on the same input, else within a tolerance.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import lora_only_config, randomise_lora, small_backbone

from mafm3.model.lora import LoraSpec, activate_lora, active_lora, lora_adapter_names, lora_state_dict
from mafm3.model.skill_model import SkillConfig, build_skill_model


def features(backbone, x, skill=None):
    with torch.no_grad():
        tokens, hidden = backbone.forward_features(x) if skill is None else skill.features(x)
    return [tokens, *hidden]


def assert_equal_features(a, b) -> None:
    assert len(a) == len(b)
    for left, right in zip(a, b, strict=True):
        assert torch.equal(left, right)


@pytest.fixture()
def volume():
    return torch.randn(2, 1, 8, 16, 24, generator=torch.Generator().manual_seed(1))  # grid (2, 2, 3)


def test_fresh_lora_skill_with_position_copies_reproduces_the_base_features_bit_for_bit(volume):
    backbone = small_backbone()
    base = features(backbone, volume)
    skill = build_skill_model(lora_only_config(position_copies=True), backbone, "fresh")
    assert skill.position_bias is not backbone.spatial_rel_pos_bias and len(skill.pegs) == 4
    skill.activate()
    assert_equal_features(features(backbone, volume, skill), base)
    randomise_lora(backbone, "fresh", seed=2)  # the same skill, trained: now it must differ
    assert not torch.equal(features(backbone, volume, skill)[0], base[0])


def test_position_copies_are_used_instead_of_the_backbone_modules(volume):
    backbone = small_backbone()
    skill = build_skill_model(lora_only_config(position_copies=True), backbone, "copies")
    base = features(backbone, volume)
    with torch.no_grad():
        skill.pegs[1].dsconv.bias.add_(0.5)
    changed = features(backbone, volume, skill)
    assert not torch.equal(changed[2], base[2])  # layer 2 output moved
    assert torch.equal(changed[1], base[1])  # layer 1 did not: the copy of PEG 2 acts from layer 2 on
    activate_lora(backbone, None)
    assert_equal_features(features(backbone, volume), base)  # the backbone's own PEG is untouched


def test_any_sequence_of_activations_leaves_the_base_bit_identical(volume):
    backbone = small_backbone()
    base_weights = {key: value.clone() for key, value in backbone.state_dict().items()}
    base = features(backbone, volume)
    first = build_skill_model(lora_only_config(), backbone, "first")
    second = build_skill_model(lora_only_config(rank=2, stages=("spatial",)), backbone, "second")
    randomise_lora(backbone, "first", seed=3)
    randomise_lora(backbone, "second", seed=4)
    outputs = {}
    for skill in (first, second, first, second, second, first):
        skill.activate()
        assert active_lora(backbone) == skill.name
        result = features(backbone, volume, skill)
        assert not torch.equal(result[0], base[0])
        outputs.setdefault(skill.name, result)
        assert_equal_features(result, outputs[skill.name])  # switching back gives the same outputs
    activate_lora(backbone, None)
    assert active_lora(backbone) is None
    assert_equal_features(features(backbone, volume), base)
    for key, value in backbone.state_dict().items():
        if "lora_" not in key:
            assert torch.equal(value, base_weights[key.replace(".base_layer", "")]), key


def test_merged_inference_matches_unmerged_and_gives_back_the_very_same_base_tensors(volume):
    backbone = small_backbone()
    base_weights = {key: value.clone() for key, value in backbone.state_dict().items()}
    base = features(backbone, volume)
    first = build_skill_model(lora_only_config(), backbone, "first")
    second = build_skill_model(lora_only_config(rank=2, stages=("spatial",)), backbone, "second")
    randomise_lora(backbone, "first", seed=3, scale=0.05)
    randomise_lora(backbone, "second", seed=4, scale=0.05)
    projection = backbone.enc_spatial_transformer.layers[0][1].to_q.base_layer
    original = projection.weight
    first.activate()
    unmerged = features(backbone, volume, first)
    first.activate(merged=True)
    assert active_lora(backbone) == "first" and not torch.equal(projection.weight, original)
    merged = features(backbone, volume, first)
    for left, right in zip(merged, unmerged, strict=True):
        torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-4)  # same maths, other rounding
    assert not torch.equal(merged[0], base[0])
    second.activate(merged=True)
    first.activate(merged=True)
    activate_lora(backbone, None)
    assert torch.equal(projection.weight, original) and projection.weight.data_ptr() == original.data_ptr()
    assert_equal_features(features(backbone, volume), base)
    for key, value in backbone.state_dict().items():
        if "lora_" not in key:
            assert torch.equal(value, base_weights[key.replace(".base_layer", "")]), key
    with pytest.raises(ValueError, match="a merged adapter cannot be trained"):
        first.activate(trainable=True, merged=True)


def test_training_moves_only_the_skill_and_leaves_other_skills_outputs_unchanged(volume):
    backbone = small_backbone()
    other = build_skill_model(lora_only_config(position_copies=True), backbone, "other")
    randomise_lora(backbone, "other", seed=5)
    other_before = features(backbone, volume, other)
    frozen = {name: p.clone() for name, p in backbone.named_parameters() if ".trained." not in name}
    trained = build_skill_model(lora_only_config(position_copies=True), backbone, "trained")
    trained.activate(trainable=True)
    trained.train()
    optimiser = torch.optim.AdamW(trained.trainable_parameters(), lr=1e-2)
    clinical = torch.zeros(2, trained.config.prognosis.clinical_dim)
    for _ in range(3):
        optimiser.zero_grad()
        trained(volume, clinical).logsumexp(1).mean().backward()
        optimiser.step()
    assert any(t.abs().sum() > 0 for k, t in lora_state_dict(backbone, "trained").items() if "lora_B" in k)
    for name, parameter in backbone.named_parameters():
        if ".trained." not in name:
            assert torch.equal(parameter, frozen[name]), name
    assert_equal_features(features(backbone, volume, other), other_before)


def test_trainable_activation_freezes_every_other_adapter():
    backbone = small_backbone()
    first = build_skill_model(lora_only_config(), backbone, "first")
    build_skill_model(lora_only_config(), backbone, "second")
    first.activate(trainable=True)
    grads = {name for name, p in backbone.named_parameters() if p.requires_grad}
    assert grads and all(".first." in name for name in grads)
    first.activate()
    assert not any(p.requires_grad for p in backbone.parameters())


def test_lora_size_is_rank_times_in_plus_out_per_projection():
    backbone = small_backbone()
    spec = LoraSpec(rank=3, stages=("spatial",), blocks=(1, 3), targets=("to_q", "to_out"))
    assert spec.module_names(backbone) == [
        "enc_spatial_transformer.layers.1.1.to_q",
        "enc_spatial_transformer.layers.1.1.to_out",
        "enc_spatial_transformer.layers.3.1.to_q",
        "enc_spatial_transformer.layers.3.1.to_out",
    ]
    skill = build_skill_model(
        SkillConfig(task="prognosis", lora=spec, prognosis=lora_only_config().prognosis), backbone, "sized"
    )
    inner = 2 * 16  # heads x dim_head
    assert skill.parameter_counts()["lora"] == 2 * (3 * (32 + inner) + 3 * (inner + 32))
    tensors = lora_state_dict(backbone, "sized")
    assert all(torch.count_nonzero(t) == 0 for k, t in tensors.items() if k.endswith("lora_B.weight"))


def test_releasing_a_skill_removes_its_adapter_and_keeps_the_others(volume):
    backbone = small_backbone()
    kept = build_skill_model(lora_only_config(), backbone, "kept")
    released = build_skill_model(lora_only_config(), backbone, "released")
    randomise_lora(backbone, "kept", seed=6)
    kept_before = features(backbone, volume, kept)
    released.release()
    assert lora_adapter_names(backbone) == {"kept"}
    assert_equal_features(features(backbone, volume, kept), kept_before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank": 0}, "`rank` must be a positive integer"),
        ({"stages": ("spatial", "diagonal")}, "`stages` must be a non-empty subset"),
        ({"targets": ()}, "`targets` must be a non-empty subset"),
        ({"dropout": 1.0}, r"`dropout` must be in \[0, 1\)"),
    ],
)
def test_bad_lora_specs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoraSpec(**kwargs)


def test_blocks_outside_the_encoder_and_duplicate_adapters_are_refused():
    backbone = small_backbone()
    with pytest.raises(ValueError, match="outside the 4 layers"):
        LoraSpec(blocks=(4,)).module_names(backbone)
    build_skill_model(lora_only_config(), backbone, "twice")
    with pytest.raises(ValueError, match="already has a LoRA adapter named 'twice'"):
        build_skill_model(lora_only_config(), backbone, "twice")
