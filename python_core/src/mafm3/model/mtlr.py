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

Written by hand (about 60 lines): torchmtlr, where this form comes from, is not on PyPI, and pycox (dormant
since 2024, not a dependency) uses the shifted parameterisation that caused G4.
"""

from __future__ import annotations

import torch
from torch import nn

DAYS_PER_YEAR = 365.25


def fit_time_bins(times_days: torch.Tensor, events: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Bin boundaries (K,) in days: `num_bins` quantiles (levels 0..1) of the event times, duplicates removed.

    Call on the training subjects only; K <= num_bins after de-duplication.
    """
    event_times = times_days[events.bool()].double()
    if event_times.numel() == 0:
        raise ValueError("time bins need at least one observed event in the training data")
    if num_bins < 1:
        raise ValueError(f"`num_bins` must be a positive integer, got {num_bins}")
    levels = torch.linspace(0, 1, num_bins, dtype=torch.float64)
    return torch.unique(torch.quantile(event_times, levels)).float()


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


def interval_index(times_days: torch.Tensor, time_bins: torch.Tensor) -> torch.Tensor:
    """Index j (B,) of the interval [t_j, t_{j+1}) holding each time; 0 before t_1, K from t_K on."""
    return torch.bucketize(times_days.to(time_bins.dtype), time_bins, right=True)


def mtlr_neg_log_likelihood(
    logits: torch.Tensor, times_days: torch.Tensor, events: torch.Tensor, time_bins: torch.Tensor
) -> torch.Tensor:
    """Mean NLL over the batch. logits (B, K + 1); times_days, events (B,); time_bins (K,)."""
    index = interval_index(times_days, time_bins)
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


def risk_score(logits: torch.Tensor) -> torch.Tensor:
    """Sum of the cumulative hazard -log S(t_j) over the K bin boundaries: (B,)."""
    return -torch.log(survival_curve(logits)[:, 1:].clamp_min(torch.finfo(logits.dtype).tiny)).sum(1)


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
