"""Multi-task logistic regression (MTLR) survival head: one parameterisation for loss, curve and risk.

The authors trained with pycox's MTLR loss but evaluated raw logits with torchmtlr-style functions
(method-spec §6, G4). Here everything goes through one definition (Yu et al. 2011, the torchmtlr form):

- K time-bin boundaries 0 < t_1 < ... < t_K (days) fitted on the training events only; they define K + 1
  intervals [0, t_1), [t_1, t_2), ..., [t_K, inf).
- The layer emits K scores psi (B, K); the interval logits are the reverse cumulative sums
  z_j = sum_{k >= j} psi_k (j = 0..K-1) and z_K = 0, i.e. z = psi @ G with G (K, K + 1) lower triangular.
- p = softmax(z) is the probability of the event in each interval; S(t_j) = sum_{k >= j} p_k, S(0) = 1.
- The loss is the negative log-likelihood of the observed interval (event) or of all intervals from the
  censoring one on (censored), computed from z with log-sum-exp.
- risk = sum_{j=1..K} -log S(t_j): the cumulative hazard summed over the bin grid. Higher means earlier
  events; a curve that lies below another everywhere has the higher risk.

The authors' choices, kept as options (`bin_scheme`, `risk_score` of `PrognosisConfig`; `--recipe authors`):

- "km_quantiles" bins, pycox's `LabTransDiscreteTime(n, scheme="quantiles")`: the Kaplan-Meier curve of all
  follow-up times (events and censorings) is cut at n levels evenly spaced from its lowest value to 1; each
  level gives the longest observed time whose S is still >= the level; the distinct times, the first replaced
  by 0, are the cuts (0 and the longest follow-up included). The boundaries are the cuts after 0. An event is
  moved up to the first cut at or after it, a censoring down to the last cut at or before it; an event then
  scores its interval, a censoring the intervals after its cut only. (Ours: an event exactly at a boundary
  counts in the interval the boundary opens.)
- "cumulative_hazard" risk, torchmtlr's `mtlr_risk` (the authors' `utils.mtlr_risk`): hazards
  h_j = p_j / S(t_{j+1}) (j = 0..K-1), risk = sum_j sum_{i <= j} h_i.

Written by hand: torchmtlr, where this form comes from, is not on PyPI, and pycox (dormant since 2024, not a
dependency: numba, h5py, py7zr) uses the shifted parameterisation that caused G4.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

DAYS_PER_YEAR = 365.25
BIN_SCHEMES = ("event_quantiles", "km_quantiles")  # ours, the authors' (pycox)
RISK_SCORES = ("sum_neg_log_survival", "cumulative_hazard")  # ours, the authors' (torchmtlr)


def fit_time_bins(
    times_days: torch.Tensor, events: torch.Tensor, num_bins: int, scheme: str = "event_quantiles"
) -> torch.Tensor:
    """Bin boundaries (K,) in days, fitted on the training subjects only.

    "event_quantiles": `num_bins` quantiles (levels 0..1) of the event times, duplicates removed
    (K <= num_bins). "km_quantiles": the cuts of `km_quantile_cuts` after 0 (K <= num_bins - 1).
    """
    if events.sum() == 0:
        raise ValueError("time bins need at least one observed event in the training data")
    if num_bins < 1:
        raise ValueError(f"`num_bins` must be a positive integer, got {num_bins}")
    if scheme == "km_quantiles":
        cuts = km_quantile_cuts(times_days.double().cpu().numpy(), events.bool().cpu().numpy(), num_bins)
        return torch.from_numpy(cuts[1:]).float()
    if scheme != "event_quantiles":
        raise ValueError(f"`scheme` must be one of {BIN_SCHEMES}, got {scheme!r}")
    levels = torch.linspace(0, 1, num_bins, dtype=torch.float64)
    return torch.unique(torch.quantile(times_days[events.bool()].double(), levels)).float()


def km_quantile_cuts(times_days: np.ndarray, events: np.ndarray, num_cuts: int) -> np.ndarray:
    """pycox's quantile cuts (module docstring): (C,) float64, C <= num_cuts, 0 first, the longest time last.

    The Kaplan-Meier curve is computed here, as pycox does (product as exp of a sum of logs at every observed
    time, S = 1 at 0): the rule compares S with the levels exactly, so another library's rounding of the
    product could move a cut.
    """
    times, at_time = np.unique(times_days, return_inverse=True)
    deaths = np.bincount(at_time, weights=events.astype(float), minlength=times.size)
    at_risk = times_days.size - np.concatenate([[0], np.cumsum(np.bincount(at_time))[:-1]])
    with np.errstate(divide="ignore"):
        survival = np.exp(np.cumsum(np.log(1 - deaths / at_risk)))
    if times[0] > 0:
        times, survival = np.concatenate([[0.0], times]), np.concatenate([[1.0], survival])
    levels = np.linspace(survival.min(), survival.max(), num_cuts)
    # Walking back from the longest time S rises; the first time whose S reaches a level is the latest one.
    latest = np.searchsorted(survival[::-1], levels, side="left")
    cuts = np.unique(times[::-1][latest])
    cuts[0] = 0.0
    return cuts


class MTLR(nn.Module):
    """Linear MTLR layer: features (B, F) -> interval logits (B, K + 1), last logit identically 0."""

    def __init__(self, in_features: int, num_time_bins: int) -> None:
        super().__init__()
        if in_features < 1 or num_time_bins < 1:
            raise ValueError(
                f"`in_features` and `num_time_bins` must be positive, got {in_features}, {num_time_bins}"
            )
        self.linear = nn.Linear(in_features, num_time_bins)
        self.register_buffer("G", torch.tril(torch.ones(num_time_bins, num_time_bins + 1)), persistent=False)

    @property
    def num_time_bins(self) -> int:
        return self.linear.out_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, F). Returns interval logits z (B, K + 1)."""
        return self.linear(features) @ self.G


def interval_index(
    times_days: torch.Tensor,
    time_bins: torch.Tensor,
    events: torch.Tensor | None = None,
    scheme: str = "event_quantiles",
) -> torch.Tensor:
    """Index j (B,) of each subject's interval: for an event, the interval it happened in; for a censoring,
    the first interval it may still happen in.

    "event_quantiles": [t_j, t_{j+1}) holds the time (0 before t_1, K from t_K on), events and censorings
    alike. "km_quantiles" (pycox): an event at t_j belongs to [t_{j-1}, t_j) (moved up to its cut).
    """
    times = times_days.to(time_bins.dtype)
    index = torch.bucketize(times, time_bins, right=True)
    if scheme == "km_quantiles":
        index = torch.where(events.bool(), torch.bucketize(times, time_bins, right=False), index)
    elif scheme != "event_quantiles":
        raise ValueError(f"`scheme` must be one of {BIN_SCHEMES}, got {scheme!r}")
    return index


def mtlr_neg_log_likelihood(
    logits: torch.Tensor,
    times_days: torch.Tensor,
    events: torch.Tensor,
    time_bins: torch.Tensor,
    scheme: str = "event_quantiles",
) -> torch.Tensor:
    """Mean NLL over the batch. logits (B, K + 1); times_days, events (B,); time_bins (K,); scheme: how
    times fall into intervals (`interval_index`)."""
    index = interval_index(times_days, time_bins, events, scheme)
    intervals = torch.arange(logits.shape[1], device=logits.device)
    observed = torch.where(
        events.bool()[:, None], intervals[None] == index[:, None], intervals[None] >= index[:, None]
    )
    log_observed = torch.logsumexp(logits.masked_fill(~observed, float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - log_observed).mean()


def survival_curve(logits: torch.Tensor) -> torch.Tensor:
    """S at the grid [0, t_1, ..., t_K]: (B, K + 1), S[:, 0] = 1, non-increasing."""
    probabilities = torch.softmax(logits, dim=1)
    return probabilities.flip(1).cumsum(1).flip(1).clamp(max=1.0)


def risk_score(logits: torch.Tensor, scheme: str = "sum_neg_log_survival") -> torch.Tensor:
    """Risk (B,) of interval logits (B, K + 1); higher = earlier event.

    "sum_neg_log_survival": the cumulative hazard -log S(t_j) summed over the K bin boundaries;
    "cumulative_hazard": torchmtlr's sum of the cumulative discrete hazards (module docstring).
    """
    survival = survival_curve(logits)
    if scheme == "cumulative_hazard":
        hazard = torch.softmax(logits, dim=1)[:, :-1] / (survival[:, 1:] + 1e-15)  # torchmtlr's epsilon
        return hazard.cumsum(1).sum(1)
    if scheme != "sum_neg_log_survival":
        raise ValueError(f"`scheme` must be one of {RISK_SCORES}, got {scheme!r}")
    return -torch.log(survival[:, 1:].clamp_min(torch.finfo(logits.dtype).tiny)).sum(1)


def survival_at(survival: torch.Tensor, time_bins: torch.Tensor, times_days: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of S on the grid [0, t_1..t_K] at `times_days` (M,): (B, M).

    Beyond t_K the curve is not estimable from the bins: NaN.
    """
    grid = torch.cat([time_bins.new_zeros(1), time_bins]).to(survival.dtype)
    query = times_days.to(survival.dtype)
    right = torch.searchsorted(grid, query, right=True).clamp(1, grid.numel() - 1)
    left = right - 1
    weight = ((query - grid[left]) / (grid[right] - grid[left])).clamp(0, 1)
    values = survival[:, left] * (1 - weight) + survival[:, right] * weight
    return values.masked_fill((query > grid[-1])[None], float("nan"))
