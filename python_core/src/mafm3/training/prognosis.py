"""Prognosis training: the MTLR head on the CT and the clinical record, with exactly the parameterisation that
inference reads out (`mafm3.model.mtlr`: one definition for the loss, the survival curve and the risk, which
fixes the authors' G4).

The time bins are fitted on the training split's events only (the authors fitted them on every patient,
test fold included), before the skill is built: the head gets one MTLR output per fitted boundary. Each
iteration takes `batch_size` whole preprocessed volumes per rank (no augmentation, as the authors). The
validation score is Harrell's C on the inner validation split, or minus the MTLR negative log-likelihood when
that split has no comparable pair (e.g. no event). After training, the training subjects' risk tertiles
become the low / intermediate / high thresholds stored with the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mafm3.clinical import ClinicalRecord
from mafm3.engine.inference import autocast
from mafm3.errors import MAFM3Error
from mafm3.imaging.preprocess import PreprocessingConfig, prepare_input
from mafm3.model.mtlr import fit_time_bins, mtlr_neg_log_likelihood, risk_score
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


def training_time_bins(cases: Sequence[Case], num_bins: int) -> torch.Tensor:
    """MTLR boundaries (K,) from the training cases' events (K <= num_bins after removing duplicates)."""
    times, events = endpoints(cases)
    if not events.any():
        raise MAFM3Error(
            "The training cases hold no relapse, so no survival time bins can be fitted; "
            "add cases with events."
        )
    return fit_time_bins(times, events, num_bins)


def has_comparable_pair(times: torch.Tensor, events: torch.Tensor) -> bool:
    """Whether some event happened strictly before another subject's time (Harrell's C is then defined)."""
    return bool(events.any()) and bool((times[events].min() < times.max()).item())


@dataclass
class Subjects:
    """One side of the split: the cached images and, per case, what the loss needs besides them."""

    data: CachedCases
    clinical: torch.Tensor  # (N, F) clinical encoding, computed once (the clinical encoders are frozen)
    times: torch.Tensor  # (N,) RFS in days
    events: torch.Tensor  # (N,) relapse


class PrognosisTask(NetworkTask):
    """MTLR NLL on whole volumes of the training cases; Harrell's C on the validation cases."""

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
    ) -> None:
        self.network, self.skill = network, network.module
        self.batch_size, self.ranks, self.dtype, self.seed = batch_size, ranks, dtype, seed
        self.time_bins = self.skill.head.time_bins_days
        self.train = self._subjects(train)
        self.val = self._subjects(val) if val else None
        comparable = self.val is not None and has_comparable_pair(self.val.times, self.val.events)
        self.metric = "harrell_c" if comparable else "neg_mtlr_nll"

    def _subjects(self, data: CachedCases) -> Subjects:
        with torch.no_grad():
            clinical = self.skill.encode_clinical([case.clinical or ClinicalRecord() for case in data.cases])
        times, events = endpoints(data.cases)
        return Subjects(data, clinical, times.to(self.ranks.device), events.to(self.ranks.device))

    def logits(self, subjects: Subjects, indices: Sequence[int]) -> torch.Tensor:
        """MTLR logits (B, K + 1) of some of the subjects, with the graph when grad mode is on."""
        images = np.stack([subjects.data.arrays(index)["image"] for index in indices])
        images = torch.from_numpy(images).to(self.ranks.device)
        with autocast(self.ranks.device, self.dtype):
            logits = self.skill(images, subjects.clinical[list(indices)])
        return logits.float()

    def loss(self, step: int) -> torch.Tensor:
        train = self.train
        indices = batch_indices(
            len(train.data), self.batch_size, step, self.ranks.rank, self.ranks.world_size, self.seed
        )
        logits = self.logits(train, indices)
        return mtlr_neg_log_likelihood(logits, train.times[indices], train.events[indices], self.time_bins)

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
        nll = float(mtlr_neg_log_likelihood(logits, times, events, self.time_bins))
        values = {"mtlr_nll": nll, "n_cases": len(times), "n_events": int(events.sum())}
        if self.metric == "neg_mtlr_nll":
            return Validation(self.metric, -nll, values)
        risk = risk_score(logits).cpu().numpy()
        values["harrell_c"] = harrell_c_index(events.cpu().numpy(), times.cpu().numpy(), risk)
        return Validation(self.metric, values["harrell_c"], values)

    def set_risk_groups(self) -> None:
        """Store the tertiles of the training subjects' risks (selected weights) as risk-group thresholds."""
        self.skill.head.set_risk_thresholds(risk_score(self.all_logits(self.train)).cpu())
