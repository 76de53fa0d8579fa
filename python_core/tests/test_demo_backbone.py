"""The demo backbone: pre-trained on synthetic anatomy, imported like a real CT-CLIP checkpoint.

Precision: float32 on the CPU without autocast (the `--precision` policy is not involved); tensors are
compared bit for bit only where the same module runs on the same input, else within a tolerance.
"""

import json

import numpy as np
import pytest
import torch

from mafm3.demo.anatomy import Tissue
from mafm3.demo.backbone import make_demo_backbone, patch_tissue_shares, pretrain_encoder
from mafm3.model.ctvit import CTViT
from mafm3.skills.backbone import load_backbone, read_manifest
from mafm3.skills.presets import DEMO_BACKBONE


def test_patch_tissue_shares_are_the_fraction_of_each_tissue_in_each_patch():
    tissues = torch.zeros(1, 4, 8, 16, dtype=torch.uint8)  # one token row: two 4 x 8 x 8 patches
    tissues[0, :, :, :8] = Tissue.FAT
    tissues[0, :2, :, 8:] = Tissue.MUSCLE  # half of the second patch muscle, half outside
    shares = patch_tissue_shares(tissues, CTViT(DEMO_BACKBONE))
    assert shares.shape == (1, 1, 1, 2, len(Tissue))
    assert shares[0, 0, 0, 0, Tissue.FAT] == 1.0
    assert shares[0, 0, 0, 1, Tissue.MUSCLE] == 0.5 and shares[0, 0, 0, 1, Tissue.OUTSIDE] == 0.5


@pytest.mark.slow  # about 40 s on 2 cores
def test_pretraining_lowers_the_anatomy_loss_and_leaves_the_unused_stages_alone():
    rng = np.random.default_rng(0)
    tissues = np.zeros((32, 64, 64), np.uint8)
    tissues[:, 16:48, 16:48] = Tissue.MUSCLE
    tissues[:, 28:36, 28:36] = Tissue.AIRWAY
    ct = np.where(tissues == Tissue.MUSCLE, 0.05, -1.0).astype(np.float32)
    ct = np.where(tissues == Tissue.AIRWAY, -1.0, ct) + rng.normal(0, 0.02, ct.shape).astype(np.float32)
    torch.manual_seed(0)
    untouched = CTViT(DEMO_BACKBONE).enc_temporal_transformer.state_dict()
    encoder, record = pretrain_encoder([(ct, tissues)], steps=20, batch_size=1, seed=0)
    assert record["loss_last"] < 0.7 * record["loss_first"]
    for name, tensor in encoder.enc_temporal_transformer.state_dict().items():
        assert torch.equal(tensor, untouched[name])  # same seed, same init: the temporal stage never trained


def test_make_demo_backbone_imports_a_loadable_backbone_with_its_provenance(tmp_path):
    manifest = make_demo_backbone(tmp_path / "backbone", n_studies=1, steps=1)
    assert manifest == read_manifest(tmp_path / "backbone")
    assert manifest["demo"] and "not for clinical use" in manifest["notice"]
    assert manifest["pretraining"]["studies"] == 1 and manifest["config"]["dim"] == DEMO_BACKBONE.dim
    encoder = load_backbone(tmp_path / "backbone")
    tokens, hidden = encoder.forward_features(torch.zeros(1, 1, 8, 16, 16))
    assert tokens.shape == (1, 2, 2, 2, DEMO_BACKBONE.dim) and len(hidden) == DEMO_BACKBONE.spatial_depth
    assert json.loads((tmp_path / "backbone" / "manifest.json").read_text())["id"] == "mafm3-demo-backbone"
