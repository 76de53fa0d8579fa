"""The text side of an imported backbone (`mafm3.skills.text_side`) and the built-in zero-shot skill on it.

Oracles: the tower rebuilt from the backbone folder gives the same embeddings as the BERT that was written
into the checkpoint; a backbone without a text side refuses the text skills with one sentence.

Precision: float32 on the CPU without autocast (the `--precision` policy is not involved); tensors are
compared bit for bit only where the same module runs on the same input, else within a tolerance.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import SMALL_BACKBONE, ctclip_state_dict, tiny_text_tower

from mafm3.errors import MAFM3Error
from mafm3.skills.backbone import import_ctclip_checkpoint, load_backbone
from mafm3.skills.packs import load_skill
from mafm3.skills.registry import available_skills, choose_skill
from mafm3.skills.text_side import load_clip_text, load_text_encoder


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MAFM3_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def import_backbone(tmp_path, backbone_id: str, with_text: bool):
    state = ctclip_state_dict(**SMALL_BACKBONE, latent=8)
    tower = None
    if with_text:
        bert, tower = tiny_text_tower(tmp_path / "tokenizer", hidden=16)
        state |= {f"text_transformer.{key}": value for key, value in bert.items()}
        state["to_text_latent.weight"] = torch.randn(8, 16, generator=torch.Generator().manual_seed(5))
    checkpoint = tmp_path / f"{backbone_id}.safetensors"
    save_file(state, checkpoint)
    manifest = import_ctclip_checkpoint(
        checkpoint,
        backbone_id=backbone_id,
        tokenizer_dir=tmp_path / "tokenizer" if with_text else None,
        patch_size=8,
        temporal_patch_size=4,
    )
    return manifest, tower


def test_zero_shot_is_built_in_on_a_backbone_with_its_text_side(home, tmp_path):
    manifest, tower = import_backbone(tmp_path, "texty", with_text=True)
    folder = home / "backbones" / "texty"
    assert torch.allclose(
        load_text_encoder(folder)(["lung nodule is present ."]), tower(["lung nodule is present ."])
    )
    chosen = choose_skill("classification", {"CT"}, available_skills(manifest))
    assert chosen.folder is None and chosen.manifest.id == "ctclip-zeroshot"
    loaded = load_skill(
        chosen.manifest, load_backbone(folder), manifest["sha256"], clip_text=load_clip_text(folder)
    )
    with torch.no_grad():
        probabilities = loaded.model(
            torch.randn(2, 1, 16, 32, 32, generator=torch.Generator().manual_seed(6))
        )
    assert probabilities.shape == (2, 18)
    assert ((probabilities > 0) & (probabilities < 1)).all()


def test_a_backbone_without_text_refuses_the_text_skills(home, tmp_path):
    manifest, _ = import_backbone(tmp_path, "mute", with_text=False)
    folder = home / "backbones" / "mute"
    assert [s.manifest.id for s in available_skills(manifest)] == []
    with pytest.raises(MAFM3Error, match="has no text encoder"):
        load_text_encoder(folder)
    with_text, _ = import_backbone(tmp_path, "texty", with_text=True)
    zero_shot = available_skills(with_text)[0].manifest
    with pytest.raises(MAFM3Error, match="was trained on backbone 'texty'"):
        load_skill(zero_shot, load_backbone(folder), manifest["sha256"])
    with pytest.raises(MAFM3Error, match="needs CT-CLIP's text side"):
        load_skill(zero_shot, load_backbone(home / "backbones" / "texty"), with_text["sha256"])
