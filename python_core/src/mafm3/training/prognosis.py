"""Prognosis training: the MTLR head on the CT and the clinical record, with exactly the parameterisation that
inference reads out (`mafm3.model.mtlr`: one definition for the loss, the survival curve and the risk, which
fixes the authors' G4).

The time bins are fitted on the training split's cases only (the authors fitted them on every patient,
test fold included), before the skill is built: the head gets one MTLR output per fitted boundary. Each
iteration takes `batch_size` whole preprocessed volumes per rank (no augmentation, as the authors). The
validation score is Harrell's C on the inner validation split, or minus the MTLR negative log-likelihood when
that split has no comparable pair (e.g. no event). After training, the training subjects' risk tertiles
become the low / intermediate / high thresholds stored with the head.

`--recipe authors` (`authors_recipe`): pycox's Kaplan-Meier quantile bins and discretisation, torchmtlr's
cumulative-hazard risk (both stored in the skill's config, so inference scores risk the same way) and, for a
report encoder, CT-CLIP's BERT run with its dropout on while training, so the report is encoded again for
every batch; ours encodes each report once, dropout off. `--reports CSV` makes a report encoder read each
patient's own report instead of the template (`with_reports`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from mafm3.clinical import ClinicalRecord
from mafm3.engine.inference import autocast
from mafm3.errors import MAFM3Error
from mafm3.imaging.preprocess import PreprocessingConfig, prepare_input
from mafm3.model.mtlr import fit_time_bins, mtlr_neg_log_likelihood, risk_score
from mafm3.model.prognosis import PrognosisConfig
from mafm3.training.datasets import Case
from mafm3.training.metrics import harrell_c_index
from mafm3.training.model_space import CachedCases, case_study
from mafm3.training.trainer import Network, NetworkTask, Ranks, Validation, batch_indices

CACHE_KIND = "image-v1"


def cache_key(config: PreprocessingConfig) -> dict:
    return {"kind": CACHE_KIND, "preprocessing": config.to_dict()}


def model_space_image(case: Case, config: PreprocessingConfig, input_voxels: Sequence[int]) -> dict:
    """The case's whole model input (C, T, H, W) float32, which must have the skill's input size."""
    prepared = prepare_input(case_study(case), config, skill_name=f"case {case.case_id}")
    if tuple(prepared.shape) != tuple(input_voxels):
        raise MAFM3Error(
            f"Case {case.case_id} preprocesses to {tuple(prepared.shape)} voxels, not the skill's input size "
            f"{tuple(input_voxels)}; give the preset an ROI of that size."
        )
    return {"image": prepared.array}


def endpoints(cases: Sequence[Case]) -> tuple[torch.Tensor, torch.Tensor]:
    """RFS in days (N,) float32 and relapse (N,) bool of cases that all have an endpoint."""
    times = torch.tensor([case.rfs_days for case in cases], dtype=torch.float32)
    return times, torch.tensor([bool(case.relapse) for case in cases])


def training_time_bins(cases: Sequence[Case], config: PrognosisConfig) -> torch.Tensor:
    """MTLR boundaries (K,) of the training cases by the config's scheme (K <= num_time_bins)."""
    times, events = endpoints(cases)
    if not events.any():
        raise MAFM3Error(
            "The training cases hold no relapse, so no survival time bins can be fitted; "
            "add cases with events."
        )
    return fit_time_bins(times, events, config.num_time_bins, config.bin_scheme)


def authors_recipe(config: PrognosisConfig) -> PrognosisConfig:
    """The head's config with the authors' bins and risk (`--recipe authors`)."""
    return replace(config, bin_scheme="km_quantiles", risk_score="cumulative_hazard")


def with_reports(config: PrognosisConfig, preset_name: str, reports_given: bool) -> PrognosisConfig:
    """The head's config reading supplied reports when `--reports` is given; MAFM3Error when the skill cannot
    read them (tabular encoder) or needs them and they are missing."""
    if reports_given and config.clinical_encoder != "report":
        raise MAFM3Error(
            f"--reports feeds the report encoder, and {preset_name} reads tabular clinical features; "
            "drop --reports or use a report preset (hecktor-prognosis, hecktor-prognosis-authors)."
        )
    if config.report_source == "supplied" and not reports_given:
        raise MAFM3Error(
            f"{preset_name} reads each patient's own report, as the authors did: give --reports CSV "
            "(case id and `text` columns, e.g. the authors' TNM_hector_prompts.csv)."
        )
    return replace(config, report_source="supplied") if reports_given else config


def check_reports(cases: Sequence[Case], config: PrognosisConfig) -> None:
    """Every case has a report when the skill reads supplied reports."""
    if config.clinical_encoder != "report" or config.report_source != "supplied":
        return
    missing = [case.case_id for case in cases if case.clinical is None or not case.clinical.report]
    if missing:
        raise MAFM3Error(
            f"{len(missing)} training or validation case(s) have no report in --reports (the first is "
            f"{missing[0]}); add a row with its text for each."
        )


def has_comparable_pair(times: torch.Tensor, events: torch.Tensor) -> bool:
    """Whether some event happened strictly before another subject's time (Harrell's C is then defined)."""
    return bool(events.any()) and bool((times[events].min() < times.max()).item())


@dataclass
class Subjects:
    """One side of the split: the cached images and, per case, what the loss needs besides them."""

    data: CachedCases
    records: list[ClinicalRecord]
    clinical: torch.Tensor  # (N, F) clinical encoding, computed once (the clinical encoders are frozen)
    times: torch.Tensor  # (N,) RFS in days
    events: torch.Tensor  # (N,) relapse


class PrognosisTask(NetworkTask):
    """MTLR NLL on whole volumes of the training cases; Harrell's C on the validation cases.

    text_dropout: encode the training batches' reports again at every step with BERT's dropout on (the
    authors' recipe) instead of using the encodings computed once.
    """

    def __init__(
        self,
        network: Network,
        train: CachedCases,
        val: CachedCases | None,
        *,
        batch_size: int,
        ranks: Ranks,
        dtype: torch.dtype | None,
        seed: int,
        text_dropout: bool = False,
    ) -> None:
        self.network, self.skill = network, network.module
        self.batch_size, self.ranks, self.dtype, self.seed = batch_size, ranks, dtype, seed
        self.config = self.skill.config.prognosis
        self.text_dropout = text_dropout and self.config.clinical_encoder == "report"
        self.time_bins = self.skill.head.time_bins_days
        self.train = self._subjects(train)
        self.val = self._subjects(val) if val else None
        comparable = self.val is not None and has_comparable_pair(self.val.times, self.val.events)
        self.metric = "harrell_c" if comparable else "neg_mtlr_nll"

    def _subjects(self, data: CachedCases) -> Subjects:
        records = [case.clinical or ClinicalRecord() for case in data.cases]
        with torch.no_grad():
            clinical = self.skill.encode_clinical(records)
        times, events = endpoints(data.cases)
        return Subjects(data, records, clinical, times.to(self.ranks.device), events.to(self.ranks.device))

    def logits(self, subjects: Subjects, indices: Sequence[int], text_dropout: bool = False) -> torch.Tensor:
        """MTLR logits (B, K + 1) of some of the subjects, with the graph when grad mode is on."""
        images = np.stack([subjects.data.arrays(index)["image"] for index in indices])
        images = torch.from_numpy(images).to(self.ranks.device)
        if text_dropout:
            records = [subjects.records[index] for index in indices]
            clinical = self.skill.encode_clinical(records, text_dropout=True)
        else:
            clinical = subjects.clinical[list(indices)]
        with autocast(self.ranks.device, self.dtype):
            logits = self.skill(images, clinical)
        return logits.float()

    def nll(self, logits: torch.Tensor, times: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
        return mtlr_neg_log_likelihood(logits, times, events, self.time_bins, self.config.bin_scheme)

    def loss(self, step: int) -> torch.Tensor:
        train = self.train
        indices = batch_indices(
            len(train.data), self.batch_size, step, self.ranks.rank, self.ranks.world_size, self.seed
        )
        logits = self.logits(train, indices, text_dropout=self.text_dropout)
        return self.nll(logits, train.times[indices], train.events[indices])

    def all_logits(self, subjects: Subjects) -> torch.Tensor:
        """Eval-mode logits (N, K + 1) of all the subjects, each case computed on one rank."""
        self.set_training(False)
        table = torch.zeros(len(subjects.data), self.time_bins.numel() + 1, dtype=torch.float64)
        with torch.no_grad():
            for index, _ in self.ranks.shard(subjects.data.cases):
                table[index] = self.logits(subjects, [index])[0].double().cpu()
        return self.ranks.sum(table).float()

    def validate(self) -> Validation | None:
        if self.val is None:
            return None
        logits = self.all_logits(self.val)
        times, events = self.val.times, self.val.events
        nll = float(self.nll(logits, times, events))
        values = {"mtlr_nll": nll, "n_cases": len(times), "n_events": int(events.sum())}
        if self.metric == "neg_mtlr_nll":
            return Validation(self.metric, -nll, values)
        risk = risk_score(logits, self.config.risk_score).cpu().numpy()
        values["harrell_c"] = harrell_c_index(events.cpu().numpy(), times.cpu().numpy(), risk)
        return Validation(self.metric, values["harrell_c"], values)

    def set_risk_groups(self) -> None:
        """Store the tertiles of the training subjects' risks (selected weights) as risk-group thresholds."""
        risks = risk_score(self.all_logits(self.train), self.config.risk_score)
        self.skill.head.set_risk_thresholds(risks.cpu())
