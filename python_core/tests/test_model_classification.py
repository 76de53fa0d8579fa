"""CT-CLIP zero-shot classification (`mafm3.model.classification`, `ClassificationSkill`).

Oracles: the two-prompt softmax worked by hand (aligned latents give sigmoid(exp(T) · (1 - 0))); the prompts
CT-CLIP's `zero_shot.py` uses; the classification path runs the bare backbone whatever skill was active.

Precision: float32 on the CPU without autocast (the `--precision` policy is not involved); tensors are
compared bit for bit only where the same module runs on the same input, else within a tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import lora_only_config, randomise_lora, small_backbone, tiny_text_tower

from mafm3.model.classification import (
    CT_RATE_ABNORMALITIES,
    PROMPTS,
    ClipText,
    zero_shot_probabilities,
)
from mafm3.model.skill_model import SkillConfig, build_skill_model


def test_pair_softmax_matches_the_hand_computation():
    image = torch.tensor([[1.0, 0.0]])
    prompts = torch.tensor(
        [[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]
    )  # label 0 aligned, 1 opposite
    temperature = torch.tensor(math.log(2.0))  # exp(T) = 2
    probabilities = zero_shot_probabilities(image, prompts, temperature)
    sigmoid_two = 1 / (1 + math.exp(-2.0))
    assert probabilities.tolist() == [pytest.approx([sigmoid_two, 1 - sigmoid_two])]


def test_the_eighteen_ct_rate_labels_and_prompts():
    assert len(CT_RATE_ABNORMALITIES) == 18 == len(set(CT_RATE_ABNORMALITIES))
    assert [p.format("Lung nodule") for p in PROMPTS] == [
        "Lung nodule is present.",
        "Lung nodule is not present.",
    ]


def clip_text(folder, latent: int) -> ClipText:
    _, tower = tiny_text_tower(folder, hidden=16)
    projection = torch.randn(latent, 16, generator=torch.Generator().manual_seed(3))
    return ClipText(tower, projection, torch.tensor(math.log(10.0)))


def test_zero_shot_skill_uses_the_bare_backbone_and_ct_clip_text_latents(tmp_path):
    backbone = small_backbone(latent=8)
    text = clip_text(tmp_path / "tok", latent=8)
    labels = ("Lung nodule", "Emphysema", "Cardiomegaly")
    skill = build_skill_model(
        SkillConfig(task="classification", labels=labels), backbone, "zeroshot", clip_text=text
    )
    assert skill.trainable_parameters() == [] and skill.skill_state_dict() == {}
    volume = torch.randn(2, 1, 16, 32, 32, generator=torch.Generator().manual_seed(4))  # grid 4 x 4 x 4
    image = backbone.image_latent(volume)
    texts = [prompt.format(label) for label in labels for prompt in PROMPTS]
    latents = F.normalize(text.to_text_latent(text.text_encoder(texts, pooling="cls")), dim=-1).reshape(
        3, 2, 8
    )
    cosine = torch.einsum("bd,lpd->blp", image, latents)
    expected = (10.0 * cosine).softmax(-1)[..., 0]
    lora_skill = build_skill_model(lora_only_config(), backbone, "other")
    randomise_lora(backbone, "other", seed=1)
    lora_skill.activate()  # another skill was active: classification must still see the bare backbone
    probabilities = skill(volume)
    assert probabilities.shape == (2, 3)
    assert torch.allclose(probabilities, expected, atol=1e-6)


def test_text_projection_must_fit_the_tower(tmp_path):
    _, tower = tiny_text_tower(tmp_path / "tok", hidden=16)
    with pytest.raises(ValueError, match="`to_text_latent` takes 12 features, the text tower gives 16"):
        ClipText(tower, torch.zeros(8, 12), torch.tensor(1.0))
