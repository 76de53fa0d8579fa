"""The prognosis training task (`mafm3.training.prognosis.PrognosisTask`) on a tiny report skill.

Oracle: the authors' recipe runs CT-CLIP's BERT in train mode (dropout on) for each training batch, observed
with a forward hook; ours never runs it during a step (the reports were encoded once).

Precision: float32 on the CPU without autocast (the `--precision` policy is not involved).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import small_backbone, tiny_text_tower

from mafm3.clinical import ClinicalRecord
from mafm3.model.lora import LoraSpec
from mafm3.model.prognosis import PrognosisConfig
from mafm3.model.skill_model import SkillConfig, build_skill_model
from mafm3.training.datasets import Case
from mafm3.training.prognosis import PrognosisTask
from mafm3.training.trainer import Network, Ranks


class ZeroImages:
    """Cached cases standing in for `CachedCases`: the cases, and a blank (1, 8, 16, 16) image each."""

    def __init__(self, cases) -> None:
        self.cases = cases

    def __len__(self) -> int:
        return len(self.cases)

    def arrays(self, index: int) -> dict:
        return {"image": np.zeros((1, 8, 16, 16), np.float32)}


@pytest.mark.parametrize(("text_dropout", "bert_modes"), [(True, [True]), (False, [])])
def test_the_authors_recipe_encodes_each_batch_again_with_berts_dropout_on(
    tmp_path, text_dropout, bert_modes
):
    backbone = small_backbone()
    _, tower = tiny_text_tower(tmp_path / "tok", hidden=16)
    head = PrognosisConfig(
        adapter_dim=8, fusion_hidden=8, fusion_out=4, num_time_bins=2, report_source="supplied"
    )
    config = SkillConfig(task="prognosis", lora=LoraSpec(rank=2, stages=("spatial",)), prognosis=head)
    skill = build_skill_model(
        config.for_backbone(backbone.config.dim, text_dim=16), backbone, "a", text_encoder=tower
    )
    skill.head.set_time_bins(torch.tensor([100.0, 200.0]))
    cases = [
        Case(
            f"C{i}",
            Path("ct.nii.gz"),
            clinical=ClinicalRecord(report="lung nodule"),
            rfs_days=60.0 * i,
            relapse=True,
        )
        for i in range(1, 5)
    ]
    ranks = Ranks(0, 1, torch.device("cpu"))
    task = PrognosisTask(
        Network.of_skill(skill), ZeroImages(cases), None, batch_size=2, ranks=ranks, dtype=None, seed=0,
        text_dropout=text_dropout,
    )  # fmt: skip
    modes = []
    tower.bert.register_forward_hook(lambda module, *_: modes.append(module.training))
    assert torch.isfinite(task.loss(0))
    assert modes == bert_modes and not tower.bert.training  # in train mode for that batch only
