"""Skill presets (`mafm3.skills.presets`): the paper's trainable-parameter budgets, exactly.

Oracle: fixtures/ctclip/mafm3_skill_param_counts.json, counted on the authors' own module classes (totals and
per-component breakdown). Counting follows the authors' rule: parameters with requires_grad=True, over the
skill and the whole (frozen) 512-wide backbone, built on the meta device (no memory, no checkpoint).
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import FIXTURES, SMALL, ctclip_state_dict

from mafm3.cli import main
from mafm3.imaging.preprocess import PreprocessingConfig
from mafm3.model.checkpoint import split_ctclip_state_dict
from mafm3.model.ctvit import CTViT, CTViTConfig
from mafm3.model.skill_model import SkillConfig, build_skill_model
from mafm3.skills.presets import DEMO_BACKBONE, PRESETS, build_on_meta, get_preset, parameter_counts

EXPECTED = json.loads((FIXTURES / "mafm3_skill_param_counts.json").read_text())
FIXTURE_SECTION = {
    "hecktor-seg-ct": "segmentation_ct",
    "hecktor-seg-petct": "segmentation_ctpet",
    "hecktor-prognosis": "prognosis",
}
# fixture component -> our part (SkillModel.parameter_counts); LoRA of both stages is one part here.
PART = {
    "cpb_mlp": "position_bias",
    "peg_dsconv": "pegs",
    "lora": "lora",
    "lora_spatial": "lora",
    "lora_temporal": "lora",
    "embedding": "patch_embedding",
    "decoder": "decoder.{}",
    "pet_skip_encoder": "decoder.{}",
    "output_head": "decoder.{}",
    "image_adapter": "head.image_adapter",
    "text_adapter": "head.clinical_adapter",
    "fusion": "head.fusion",
    "head": "head.mtlr",
}


@pytest.mark.parametrize("name", list(FIXTURE_SECTION))
def test_paper_presets_have_exactly_the_authors_trainable_parameters(name):
    expected = EXPECTED[FIXTURE_SECTION[name]]
    skill = build_on_meta(get_preset(name))
    skill.activate(trainable=True)
    everything = {id(p): p for p in [*skill.parameters(), *skill.backbone.parameters()]}
    trainable = sum(p.numel() for p in everything.values() if p.requires_grad)
    assert trainable == expected["expected_trainable_total"] == expected["trainable_total"]
    assert sum(p.numel() for p in skill.trainable_parameters()) == trainable
    grouped: dict[str, int] = {}
    for component, count in expected["trainable_by_component"].items():
        group, _, block = component.split(" ")[0].partition(":")
        part = PART[group].format(block)
        grouped[part] = grouped.get(part, 0) + count
    assert skill.parameter_counts() == grouped


def test_paper_presets_are_counted_on_ct_clips_own_sizes():
    for name in FIXTURE_SECTION:
        preset = get_preset(name)
        assert preset.backbone == CTViTConfig()  # D 512, 8 x 32 heads, 20 x 20 x 10 patches
        assert sum(parameter_counts(preset).values()) == EXPECTED[FIXTURE_SECTION[name]]["trainable_total"]
    assert parameter_counts(get_preset("ctclip-zeroshot")) == {}


def test_prognosis_preset_has_lora_on_both_stages_and_the_segmentation_presets_on_the_spatial_one():
    assert PRESETS["hecktor-prognosis"].config.lora.stages == ("spatial", "temporal")
    assert PRESETS["hecktor-prognosis"].config.lora.rank == 2
    for name in ("hecktor-seg-ct", "hecktor-seg-petct"):
        lora = PRESETS[name].config.lora
        assert (lora.rank, lora.alpha, lora.dropout, lora.stages) == (8, 32.0, 0.2, ("spatial",))


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_declares_consistent_preprocessing_and_config(name):
    preset = PRESETS[name]
    preprocessing = PreprocessingConfig.from_dict(preset.preprocessing)
    assert [c.upper() for c in preprocessing.channels] == list(preset.modalities)
    embedding = preset.config.patch_embedding
    if embedding is not None:
        assert embedding.channels == len(preset.modalities)
    assert SkillConfig.from_dict(json.loads(json.dumps(preset.config.to_dict()))) == preset.config
    assert preset.demo == name.startswith("demo-")


def small_real_backbone() -> CTViT:
    """The demo-sized CT-ViT (DEMO_BACKBONE) with random weights."""
    visual = split_ctclip_state_dict(ctclip_state_dict(**{**SMALL, "latent": None})).visual
    config = CTViTConfig.from_state_dict(visual, patch_size=8, temporal_patch_size=4)
    assert config == DEMO_BACKBONE
    return CTViT.from_state_dict(config, visual)


def test_demo_presets_run_on_the_demo_backbone():
    backbone = small_real_backbone()
    for name, channels in (("demo-seg-ct", 1), ("demo-seg-petct", 2)):
        preset = PRESETS[name]
        skill = build_skill_model(preset.config.for_backbone(backbone.config.dim), backbone, name).eval()
        with torch.no_grad():
            assert skill(torch.randn(1, channels, 32, 32, 32)).shape == (1, 3, 32, 32, 32)
    preset = PRESETS["demo-prognosis"]
    skill = build_skill_model(preset.config.for_backbone(backbone.config.dim), backbone, preset.name).eval()
    clinical = torch.zeros(1, preset.config.prognosis.clinical_dim)
    with torch.no_grad():
        logits = skill(torch.randn(1, 1, *preset.inference["input_voxels"]), clinical)
    assert logits.shape == (1, preset.config.prognosis.num_time_bins + 1)


def test_skill_info_reports_a_preset_as_json(capsys):
    assert main(["skill", "info", "--preset", "hecktor-seg-petct", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trainable_parameters"] == 8_349_371
    assert report["task"] == "segmentation" and report["modalities"] == ["CT", "PET"]
    assert [output["name"] for output in report["outputs"]] == ["GTVp", "GTVn"]
    assert report["outputs"][0]["type"]["value"] == "86049000"  # SNOMED CT: Neoplasm, Primary


AUTHORS_PRESETS = [  # each `-authors` preset trains what the paper preset named without the suffix trains
    "hecktor-seg-ct-authors",
    "hecktor-seg-petct-authors",
    "hecktor-prognosis-authors",
]


@pytest.mark.parametrize("name", AUTHORS_PRESETS)
def test_authors_presets_train_exactly_the_paper_presets_parameters(name, capsys):
    paper = name.removesuffix("-authors")
    assert main(["skill", "info", "--preset", name, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["trainable_parameters"] == EXPECTED[FIXTURE_SECTION[paper]]["trainable_total"]
    assert parameter_counts(get_preset(name)) == parameter_counts(get_preset(paper))  # part by part


def test_unknown_preset_is_refused_with_the_known_names(capsys):
    assert main(["skill", "info", "--preset", "hecktor-seg-mri"]) == 1
    assert "There is no skill preset 'hecktor-seg-mri'; use one of hecktor-seg-ct" in capsys.readouterr().err


def test_the_authors_prognosis_preset_reads_reports_and_uses_the_authors_bins(capsys):
    assert main(["skill", "info", "--preset", "hecktor-prognosis-authors", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    head = report["config"]["prognosis"]
    assert (head["report_source"], head["text_pooling"]) == ("supplied", "mean_with_padding")
    assert (head["bin_scheme"], head["risk_score"]) == ("km_quantiles", "cumulative_hazard")
