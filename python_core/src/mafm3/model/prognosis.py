"""Prognosis head (method-spec §2.5): pooled image tokens + a clinical encoding -> adapters -> fusion -> MTLR.

Two clinical encoders, both built from the same `ClinicalRecord`:

- "tabular": a fixed feature vector, with an explicit missing-indicator for every field (no outside weights);
- "report": a text report embedded by CT-CLIP's frozen BERT. The text is a deterministic template of the
  record's fields (`report_source` "template", ours: reproducible, the authors' LLM is unknown) or the
  record's own `report` (`report_source` "supplied", e.g. the authors' LLM-written `text` column). Pooling:
  mean over the real tokens ("masked_mean", ours) or, as the authors, padded to 512 tokens and averaged over
  every position, padding included ("mean_with_padding", method-spec G10).

How the MTLR time bins are cut and how risk is scored (`bin_scheme`, `risk_score`, `mafm3.model.mtlr`) are
stored with the head too, so inference reads the skill as it was trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mafm3.clinical import ClinicalRecord
from mafm3.model.mtlr import (
    BIN_SCHEMES,
    DAYS_PER_YEAR,
    MTLR,
    RISK_SCORES,
    risk_score,
    survival_at,
    survival_curve,
)
from mafm3.model.text import POOLINGS

CLINICAL_ENCODERS = ("tabular", "report")
REPORT_SOURCES = ("template", "supplied")
RISK_GROUPS = ("low", "intermediate", "high")
SURVIVAL_YEARS = (1, 2, 3, 5)

_BINARY_FIELDS = ("tobacco", "alcohol", "hpv", "surgery", "chemotherapy")
_T_STAGES = ("Tis", "T1", "T2", "T3", "T4")  # T4a / T4b count as T4; T0 / Tx as missing
_N_STAGES = ("N0", "N1", "N2", "N3")  # sub-stages a/b/c count as the main stage; Nx as missing
_M_STAGES = ("M0", "M1")
# Centre and spread used to scale age (years) and weight (kg) to about unit range: fixed, not fitted.
_AGE_YEARS = (60.0, 10.0)
_WEIGHT_KG = (75.0, 20.0)


def _stage_category(stage: str | None, categories: tuple[str, ...]) -> str | None:
    if stage is None:
        return None
    for category in sorted(categories, key=len, reverse=True):  # "Tis" before "T1"...
        if stage.lower().startswith(category.lower()):
            return category
    return None


def tabular_feature_names() -> list[str]:
    """Names of the `tabular_features` entries, in order."""
    names = ["age", "age_missing", "sex_male", "sex_female", "sex_missing", "weight", "weight_missing"]
    for field in _BINARY_FIELDS:
        names += [field, f"{field}_missing"]
    names += ["performance_status", "performance_status_missing"]
    for prefix, categories in (("t", _T_STAGES), ("n", _N_STAGES), ("m", _M_STAGES)):
        names += [f"{prefix}_stage_{c}" for c in categories] + [f"{prefix}_stage_missing"]
    return names


def tabular_features(record: ClinicalRecord) -> list[float]:
    """The record as numbers: scaled age and weight, 0/1 for booleans and one-hot stages, performance status
    / 4, each with a missing indicator (1 when the field is absent, the value slots then 0)."""

    def scaled(value: float | None, centre_spread: tuple[float, float]) -> list[float]:
        centre, spread = centre_spread
        return [0.0, 1.0] if value is None else [(value - centre) / spread, 0.0]

    features = scaled(record.age, _AGE_YEARS)
    features += [float(record.sex == "M"), float(record.sex == "F"), float(record.sex is None)]
    features += scaled(record.weight, _WEIGHT_KG)
    for field in _BINARY_FIELDS:
        value = getattr(record, field)
        features += [0.0, 1.0] if value is None else [float(value), 0.0]
    status = record.performance_status
    features += [0.0, 1.0] if status is None else [status / 4.0, 0.0]
    for stage, categories in (
        (record.t_stage, _T_STAGES),
        (record.n_stage, _N_STAGES),
        (record.m_stage, _M_STAGES),
    ):
        category = _stage_category(stage, categories)
        features += [float(category == c) for c in categories] + [float(category is None)]
    return features


def clinical_report(record: ClinicalRecord) -> str:
    """A deterministic report-style text of the record (the input of the "report" encoder)."""

    sex = {"M": "male", "F": "female"}.get(record.sex or "", "patient of unknown sex")
    age = f"{sex}, age not recorded" if record.age is None else f"{record.age:.0f}-year-old {sex}"
    weight = "weight not recorded" if record.weight is None else f"weighing {record.weight:.0f} kg"

    def yes_no(field: str, yes: str, no: str) -> str:
        value = getattr(record, field)
        return f"{field.replace('_', ' ')} not recorded" if value is None else (yes if value else no)

    habits = [
        yes_no("tobacco", "tobacco use", "no tobacco use"),
        yes_no("alcohol", "alcohol use", "no alcohol use"),
    ]
    status = (
        "performance status not recorded"
        if record.performance_status is None
        else f"performance status {record.performance_status}"
    )
    hpv = {True: "HPV positive", False: "HPV negative", None: "HPV status not recorded"}[record.hpv]
    treatment = [
        yes_no("surgery", "surgery performed", "no surgery"),
        yes_no("chemotherapy", "chemotherapy given", "no chemotherapy"),
    ]
    stages = ", ".join(
        stage or f"{prefix} stage not recorded"
        for stage, prefix in ((record.t_stage, "T"), (record.n_stage, "N"), (record.m_stage, "M"))
    )
    # Edition and group are named only when recorded, so records without them read as they always did.
    edition = "" if record.tnm_edition is None else f" ({record.tnm_edition}th edition)"
    group = "" if record.tnm_group is None else f", stage group {record.tnm_group}"
    return (
        "Patient Information and Clinical Summary: "
        f"{age}, {weight}; {', '.join(habits)}; {status}. "
        f"Head and neck cancer, {hpv}. Treatment: {', '.join(treatment)}. "
        f"TNM Staging{edition}: {stages}{group}."
    )


@dataclass(frozen=True)
class PrognosisConfig:
    """The trainable prognosis head; the defaults are the authors' (1,775,756 parameters with 12 bins)."""

    clinical_encoder: str = "report"  # "tabular" or "report"
    image_dim: int = 512  # D of the backbone tokens
    text_dim: int = 768  # BERT hidden size, used by the "report" encoder
    adapter_dim: int = 512  # width of both adapters' outputs
    fusion_hidden: int = 512
    fusion_out: int = 128
    num_time_bins: int = 12  # K, the MTLR bin boundaries; set to the number of fitted boundaries
    report_source: str = (
        "template"  # "report" encoder: "template" of the fields or the record's "supplied" text
    )
    text_pooling: str = "masked_mean"  # "report" encoder: "masked_mean" or "mean_with_padding" (the authors')
    bin_scheme: str = "event_quantiles"  # or "km_quantiles" (the authors', pycox): `mafm3.model.mtlr`
    risk_score: str = "sum_neg_log_survival"  # or "cumulative_hazard" (the authors'): `mafm3.model.mtlr`

    def __post_init__(self) -> None:
        choices = {
            "clinical_encoder": CLINICAL_ENCODERS,
            "report_source": REPORT_SOURCES,
            "text_pooling": tuple(p for p in POOLINGS if p != "cls"),
            "bin_scheme": BIN_SCHEMES,
            "risk_score": RISK_SCORES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("image_dim", "text_dim", "adapter_dim", "fusion_hidden", "fusion_out", "num_time_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}")

    @property
    def clinical_dim(self) -> int:
        """Width of the clinical encoding that enters the clinical adapter."""
        return self.text_dim if self.clinical_encoder == "report" else len(tabular_feature_names())


def adapter(in_features: int, out_features: int) -> nn.Sequential:
    """Linear -> GELU -> Linear -> LayerNorm, the authors' image and text adapters."""
    return nn.Sequential(
        nn.Linear(in_features, out_features),
        nn.GELU(),
        nn.Linear(out_features, out_features),
        nn.LayerNorm(out_features),
    )


class PrognosisHead(nn.Module):
    """(pooled image (B, D), clinical encoding (B, F)) -> MTLR interval logits (B, K + 1).

    Buffers saved with the skill: `time_bins_days` (K,), the MTLR boundaries fitted on the training events
    (NaN until fitted), and `risk_thresholds` (2,), the training-risk tertiles that split low / intermediate /
    high risk (NaN until set, then groups are "unknown").
    """

    def __init__(self, config: PrognosisConfig) -> None:
        super().__init__()
        self.config = config
        self.image_adapter = adapter(config.image_dim, config.adapter_dim)
        self.clinical_adapter = adapter(config.clinical_dim, config.adapter_dim)
        self.fusion = nn.Sequential(
            nn.Linear(2 * config.adapter_dim, config.fusion_hidden),
            nn.ReLU(),
            nn.Linear(config.fusion_hidden, config.fusion_out),
        )
        self.mtlr = MTLR(config.fusion_out, config.num_time_bins)
        self.register_buffer("time_bins_days", torch.full((config.num_time_bins,), float("nan")))
        self.register_buffer("risk_thresholds", torch.full((2,), float("nan")))

    def forward(self, image_features: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        """image_features: (B, D) mean of the backbone tokens; clinical: (B, F). Returns logits (B, K + 1)."""
        fused = torch.cat([self.image_adapter(image_features), self.clinical_adapter(clinical)], dim=1)
        return self.mtlr(self.fusion(fused))

    def set_time_bins(self, time_bins_days: torch.Tensor) -> None:
        """Store the fitted boundaries (K,); K must equal the head's `num_time_bins`."""
        if time_bins_days.shape != self.time_bins_days.shape:
            raise ValueError(
                f"the head has {self.config.num_time_bins} time bins, got boundaries of shape "
                f"{tuple(time_bins_days.shape)}: build the head with `num_time_bins` = the fitted count"
            )
        self.time_bins_days.copy_(time_bins_days)

    def set_risk_thresholds(self, training_risks: torch.Tensor) -> None:
        """Tertiles of the risks of the training subjects (N,) become the risk-group thresholds."""
        self.risk_thresholds.copy_(
            torch.quantile(training_risks.double(), torch.tensor([1 / 3, 2 / 3]).double())
        )

    def outcome(self, logits: torch.Tensor) -> dict:
        """Interpret logits (B, K + 1) with the stored bins.

        Returns risk (B,), survival (B, K + 1) on times_days (K + 1,) = [0, t_1..t_K], survival_at_years
        {1, 2, 3, 5: (B,)} (NaN beyond t_K), and risk_group (B strings).
        """
        if torch.isnan(self.time_bins_days).any():
            raise ValueError("the prognosis head has no fitted time bins: train it or load its weights first")
        risk = risk_score(logits, self.config.risk_score)
        survival = survival_curve(logits)
        years = torch.tensor(SURVIVAL_YEARS, dtype=torch.float32, device=logits.device)
        at_years = survival_at(survival, self.time_bins_days, years * DAYS_PER_YEAR)
        return {
            "risk": risk,
            "survival": survival,
            "times_days": torch.cat([self.time_bins_days.new_zeros(1), self.time_bins_days]),
            "survival_at_years": {year: at_years[:, i] for i, year in enumerate(SURVIVAL_YEARS)},
            "risk_group": [self.risk_group(float(r)) for r in risk],
        }

    def risk_group(self, risk: float) -> str:
        """ "low" / "intermediate" / "high" by the stored tertiles, "unknown" without them."""
        low, high = (float(t) for t in self.risk_thresholds)
        if math.isnan(low) or math.isnan(high):
            return "unknown"
        return RISK_GROUPS[(risk > low) + (risk > high)]
