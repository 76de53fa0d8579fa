"""Prognosis head and clinical encoders (`mafm3.model.prognosis`) and the prognosis skill end to end.

Oracles: the authors' parameter counts (fixture JSON); missingness is explicit (an empty record is all
missing-indicators); tertile thresholds put a third of the training risks in each group; the report changes
when and only when a field changes.

Precision: float32 on the CPU without autocast (the `--precision` policy is not involved); tensors are
compared bit for bit only where the same module runs on the same input, else within a tolerance.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from tiny_models import FIXTURES, small_backbone, tiny_text_tower

from mafm3.clinical import ClinicalRecord
from mafm3.errors import MAFM3Error
from mafm3.model.lora import LoraSpec
from mafm3.model.prognosis import (
    PrognosisConfig,
    PrognosisHead,
    clinical_report,
    tabular_feature_names,
    tabular_features,
)
from mafm3.model.skill_model import SkillConfig, build_skill_model

FULL = ClinicalRecord(
    age=61,
    sex="M",
    weight=82,
    tobacco=True,
    alcohol=False,
    performance_status=1,
    hpv=True,
    surgery=False,
    chemotherapy=True,
    t_stage="T4a",
    n_stage="N2b",
    m_stage="M0",
)


def test_head_sizes_equal_the_authors_adapters_fusion_and_mtlr():
    expected = json.loads((FIXTURES / "mafm3_skill_param_counts.json").read_text())["prognosis"]
    head = PrognosisHead(PrognosisConfig())
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in head.named_children()}
    by_prefix = {key.split(" ")[0]: value for key, value in expected["trainable_by_component"].items()}
    assert counts == {
        "image_adapter": by_prefix["image_adapter"],
        "clinical_adapter": by_prefix["text_adapter"],
        "fusion": by_prefix["fusion"],
        "mtlr": by_prefix["head"],
    }


def test_an_empty_record_is_all_missing_indicators():
    names = tabular_feature_names()
    values = dict(zip(names, tabular_features(ClinicalRecord()), strict=True))
    assert len(names) == len(set(names))
    for name, value in values.items():
        assert value == (1.0 if name.endswith("_missing") else 0.0), name


def test_a_full_record_has_no_missing_indicator_and_folds_sub_stages():
    values = dict(zip(tabular_feature_names(), tabular_features(FULL), strict=True))
    assert not any(value for name, value in values.items() if name.endswith("_missing"))
    assert values["age"] == pytest.approx((61 - 60) / 10)
    assert values["sex_male"] == 1.0 and values["sex_female"] == 0.0
    assert values["t_stage_T4"] == 1.0 and values["n_stage_N2"] == 1.0 and values["m_stage_M0"] == 1.0
    assert values["performance_status"] == 0.25
    assert values["tobacco"] == 1.0 and values["alcohol"] == 0.0
    assert sum(values[f"t_stage_{s}"] for s in ("Tis", "T1", "T2", "T3", "T4")) == 1.0
    unstaged = dict(zip(tabular_feature_names(), tabular_features(ClinicalRecord(t_stage="Tx")), strict=True))
    assert unstaged["t_stage_missing"] == 1.0


def test_report_is_deterministic_and_says_what_is_missing():
    report = clinical_report(FULL)
    assert report == clinical_report(FULL)
    for fragment in (
        "61-year-old male",
        "82 kg",
        "tobacco use",
        "no alcohol use",
        "HPV positive",
        "T4a, N2b, M0",
    ):
        assert fragment in report
    empty = clinical_report(ClinicalRecord())
    assert (
        "age not recorded" in empty and "HPV status not recorded" in empty and "T stage not recorded" in empty
    )
    assert clinical_report(ClinicalRecord(age=61)) != clinical_report(ClinicalRecord(age=62))


def test_outcome_gives_curve_years_and_tertile_risk_groups():
    sizes = dict(image_dim=4, adapter_dim=4, fusion_hidden=4, fusion_out=4, num_time_bins=3)
    head = PrognosisHead(PrognosisConfig(clinical_encoder="tabular", **sizes))
    with pytest.raises(ValueError, match="no fitted time bins"):
        head.outcome(torch.zeros(1, 4))
    head.set_time_bins(torch.tensor([365.25, 730.5, 1461.0]))
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [3.0, 2.0, 1.0, 0.0]])
    outcome = head.outcome(logits)
    survival = outcome["survival"]
    assert outcome["times_days"].tolist() == [0.0, 365.25, 730.5, 1461.0]
    assert outcome["survival_at_years"][1].tolist() == pytest.approx(survival[:, 1].tolist())
    assert outcome["survival_at_years"][3].tolist() == pytest.approx(
        ((survival[:, 2] + survival[:, 3]) / 2).tolist()
    )
    assert all(math.isnan(value) for value in outcome["survival_at_years"][5].tolist())  # beyond 4 years
    assert outcome["risk"][1] > outcome["risk"][0]  # more mass in early intervals
    assert outcome["risk_group"] == ["unknown", "unknown"]
    head.set_risk_thresholds(torch.arange(9.0))  # tertiles of 0..8: 2.67 and 5.33
    assert [head.risk_group(r) for r in (1.0, 4.0, 7.0)] == ["low", "intermediate", "high"]
    with pytest.raises(ValueError, match="has 3 time bins"):
        head.set_time_bins(torch.tensor([1.0, 2.0]))


def test_tabular_prognosis_skill_predicts_from_volume_and_record():
    backbone = small_backbone()
    config = SkillConfig(
        task="prognosis",
        lora=LoraSpec(rank=2, stages=("spatial",)),
        prognosis=PrognosisConfig(
            clinical_encoder="tabular", adapter_dim=8, fusion_hidden=8, fusion_out=4, num_time_bins=4
        ),
    ).for_backbone(backbone.config.dim)
    skill = build_skill_model(config, backbone, "tabular").eval()
    skill.head.set_time_bins(torch.tensor([200.0, 400.0, 800.0, 1600.0]))
    with torch.no_grad():
        outcome = skill.predict(torch.randn(2, 1, 8, 16, 16), [FULL, ClinicalRecord()])
    assert outcome["survival"].shape == (2, 5) and outcome["risk"].shape == (2,)
    assert set(outcome["survival_at_years"]) == {1, 2, 3, 5}


def test_report_prognosis_skill_embeds_the_report_with_the_text_tower(tmp_path):
    backbone = small_backbone()
    _, tower = tiny_text_tower(tmp_path / "tok", hidden=16)
    config = SkillConfig(
        task="prognosis",
        prognosis=PrognosisConfig(adapter_dim=8, fusion_hidden=8, fusion_out=4, num_time_bins=2),
    ).for_backbone(backbone.config.dim, text_dim=16)
    skill = build_skill_model(config, backbone, "report", text_encoder=tower)
    encoded = skill.encode_clinical([FULL])
    assert torch.allclose(encoded, tower([clinical_report(FULL)]))
    blind = build_skill_model(config, backbone, "blind")
    with pytest.raises(MAFM3Error, match="lacks; import a CT-CLIP checkpoint with its text side"):
        blind.encode_clinical([FULL])


def test_a_skill_trained_on_reports_reads_the_records_own_report_pooled_as_its_config_says(tmp_path):
    backbone = small_backbone()
    _, tower = tiny_text_tower(tmp_path / "tok", hidden=16)
    head = PrognosisConfig(
        adapter_dim=8,
        fusion_hidden=8,
        fusion_out=4,
        num_time_bins=2,
        report_source="supplied",
        text_pooling="mean_with_padding",
    )
    config = SkillConfig(task="prognosis", prognosis=head).for_backbone(backbone.config.dim, text_dim=16)
    skill = build_skill_model(config, backbone, "authors", text_encoder=tower)
    record = replace(FULL, report="lung nodule is present .")
    encoded = skill.encode_clinical([record])
    assert torch.equal(encoded, tower([record.report], pooling="mean_with_padding"))
    assert not torch.allclose(encoded, tower([record.report]))
    with pytest.raises(MAFM3Error, match="trained on each patient's own report text: give it as `report`"):
        skill.encode_clinical([FULL])


def test_the_template_names_tnm_edition_and_group_only_when_recorded():
    staged = clinical_report(replace(FULL, tnm_edition=8, tnm_group="IVA"))
    assert "TNM Staging (8th edition): T4a, N2b, M0, stage group IVA." in staged
    assert "TNM Staging: T4a, N2b, M0." in clinical_report(FULL)
