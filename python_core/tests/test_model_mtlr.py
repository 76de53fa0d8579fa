"""MTLR survival head (`mafm3.model.mtlr`): one parameterisation for loss, curve and risk (method-spec G4).

Oracles: the likelihood worked by hand on one boundary (two intervals); the law that the loss of a subject is
-log of the probability its curve gives to what was observed; survival is 1 at t = 0 and never increases;
curves that lie below others have the higher risk and the shorter expected survival (computed here with the
trapezoid rule); numerical gradients. The authors' scheme (pycox's Kaplan-Meier quantile cuts and
discretisation, torchmtlr's cumulative-hazard risk) against a small Kaplan-Meier example and a curve worked
by hand.

Precision: float32 on the CPU without autocast (the `--precision` policy is not involved); tensors are
compared bit for bit only where the same module runs on the same input, else within a tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch

from mafm3.model.mtlr import (
    MTLR,
    fit_time_bins,
    interval_index,
    km_quantile_cuts,
    mtlr_neg_log_likelihood,
    risk_score,
    survival_at,
    survival_curve,
)


def test_interval_logits_are_reverse_cumulative_sums_with_a_zero_last_logit():
    layer = MTLR(in_features=2, num_time_bins=3)
    features = torch.tensor([[1.0, -2.0]])
    psi = layer.linear(features)[0].tolist()
    z = layer(features)[0].tolist()
    expected = [psi[0] + psi[1] + psi[2], psi[1] + psi[2], psi[2], 0.0]
    assert z == pytest.approx(expected, abs=1e-6)


def test_likelihood_on_one_boundary_matches_the_hand_computation():
    # One boundary t1 = 100 days -> intervals [0, 100) and [100, inf). psi = ln 3 gives logits (ln 3, 0):
    # P(event before 100) = 3/4, P(after) = 1/4.
    logits = torch.tensor([[math.log(3.0), 0.0]])
    bins = torch.tensor([100.0])
    cases = [  # (time, event, -log likelihood)
        (50.0, 1, math.log(4 / 3)),  # event in the first interval
        (150.0, 1, math.log(4.0)),  # event in the last interval
        (50.0, 0, 0.0),  # censored at 50: the event is somewhere after, probability 1
        (150.0, 0, math.log(4.0)),  # censored after the boundary: event in [100, inf)
    ]
    for time, event, nll in cases:
        loss = mtlr_neg_log_likelihood(logits, torch.tensor([time]), torch.tensor([event]), bins)
        assert loss.item() == pytest.approx(nll, abs=1e-6)
    batch = mtlr_neg_log_likelihood(
        logits.expand(4, 2),
        torch.tensor([c[0] for c in cases]),
        torch.tensor([c[1] for c in cases]),
        bins,
    )
    assert batch.item() == pytest.approx(sum(c[2] for c in cases) / 4, abs=1e-6)


def test_the_loss_is_minus_log_of_what_the_survival_curve_assigns_to_the_observation():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=generator)
    bins = torch.tensor([10.0, 20.0, 30.0, 40.0])
    times = torch.tensor([5.0, 15.0, 25.0, 45.0, 12.0, 33.0])
    events = torch.tensor([1, 1, 1, 1, 0, 0])
    survival = survival_curve(logits)  # at [0, 10, 20, 30, 40]
    index = interval_index(times, bins)
    for i in range(6):
        loss = mtlr_neg_log_likelihood(logits[i : i + 1], times[i : i + 1], events[i : i + 1], bins)
        j = int(index[i])
        next_survival = survival[i, j + 1] if j + 1 < survival.shape[1] else torch.tensor(0.0)
        probability = survival[i, j] - next_survival if events[i] else survival[i, j]
        assert loss.item() == pytest.approx(-math.log(probability.item()), rel=1e-5)


def test_survival_starts_at_one_and_never_increases():
    logits = 5 * torch.randn(50, 9, generator=torch.Generator().manual_seed(1))
    survival = survival_curve(logits)
    assert torch.allclose(survival[:, 0], torch.ones(50))
    assert (survival[:, 1:] <= survival[:, :-1]).all()
    assert (survival >= 0).all()


def test_risk_orders_subjects_like_their_expected_survival():
    bins = torch.tensor([100.0, 200.0, 400.0, 800.0])
    grid = torch.cat([torch.zeros(1), bins])
    hazards = torch.tensor([0.004, 0.0005, 0.002, 0.001])  # exponential curves: none cross
    survival = torch.exp(-hazards[:, None] * grid[None])
    probabilities = torch.cat([survival[:, :-1] - survival[:, 1:], survival[:, -1:]], dim=1)
    logits = probabilities.log()  # softmax(log p) = p: these logits encode exactly those curves
    assert torch.allclose(survival_curve(logits), survival, atol=1e-6)
    expected_time = torch.trapezoid(survival, grid, dim=1)  # restricted mean survival up to t_K
    risk = risk_score(logits)
    assert torch.argsort(risk).tolist() == torch.argsort(expected_time, descending=True).tolist()
    assert torch.argsort(risk).tolist() == torch.argsort(hazards).tolist()


def test_gradients_match_finite_differences():
    logits = torch.randn(
        4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True
    )
    bins = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    times = torch.tensor([0.5, 2.5, 1.5, 3.5], dtype=torch.float64)
    events = torch.tensor([1, 0, 1, 0])
    assert torch.autograd.gradcheck(lambda z: mtlr_neg_log_likelihood(z, times, events, bins), (logits,))
    assert torch.autograd.gradcheck(risk_score, (logits,))


def test_time_bins_are_quantiles_of_training_events_without_duplicates():
    times = torch.tensor([10.0, 20.0, 20.0, 20.0, 40.0, 1000.0, 5.0])
    events = torch.tensor([1, 1, 1, 1, 1, 0, 0])  # censored times never become boundaries
    # Event times 10, 20, 20, 20, 40 at levels 0, 1/4, 1/2, 3/4, 1 are the sorted values themselves.
    assert fit_time_bins(times, events, num_bins=5).tolist() == [10.0, 20.0, 40.0]
    assert fit_time_bins(times, events, num_bins=3).tolist() == [10.0, 20.0, 40.0]
    with pytest.raises(ValueError, match="at least one observed event"):
        fit_time_bins(times, torch.zeros(7), num_bins=5)


def test_survival_is_interpolated_on_the_bin_grid_and_unknown_beyond_it():
    survival = torch.tensor([[1.0, 0.8, 0.5]])  # at 0, 100, 300 days
    bins = torch.tensor([100.0, 300.0])
    values = survival_at(survival, bins, torch.tensor([0.0, 50.0, 100.0, 200.0, 300.0, 301.0]))
    assert values[0, :5].tolist() == pytest.approx([1.0, 0.9, 0.8, 0.65, 0.5])
    assert math.isnan(values[0, 5].item())


# Eight patients (days, 1 = event), the Kaplan-Meier curve worked by hand (S = 1 before the first event):
#   t:        2      3 (cens.)  4 (2 ev.)       6 (cens.)  7                9 (cens.)  10
#   at risk:  8      7          6               4          3                2          1
#   S(t):     7/8    7/8        7/8*4/6=0.5833  0.5833     0.5833*2/3=0.3889 0.3889    0
KM_TIMES = torch.tensor([2.0, 3.0, 4.0, 4.0, 6.0, 7.0, 9.0, 10.0])
KM_EVENTS = torch.tensor([1, 0, 1, 1, 0, 1, 0, 1])


def test_kaplan_meier_quantile_cuts_are_pycoxs_on_a_hand_worked_curve():
    # Five levels from min S = 0 to 1: 0, 0.25, 0.5, 0.75, 1. Each gives the latest time whose S is still
    # >= the level: 10 (S >= 0), 9 (0.3889 >= 0.25), 6 (0.5833 >= 0.5), 3 (0.875 >= 0.75), 0 (S(0) = 1);
    # censoring times become cuts too. Three levels 0, 0.5, 1 give 10, 6, 0.
    cuts = km_quantile_cuts(KM_TIMES.numpy(), KM_EVENTS.bool().numpy(), 5)
    assert cuts.tolist() == [0.0, 3.0, 6.0, 9.0, 10.0]
    assert km_quantile_cuts(KM_TIMES.numpy(), KM_EVENTS.bool().numpy(), 3).tolist() == [0.0, 6.0, 10.0]
    assert fit_time_bins(KM_TIMES, KM_EVENTS, 5, "km_quantiles").tolist() == [3.0, 6.0, 9.0, 10.0]
    # Ours on the same patients: quantiles of the event times 2, 4, 4, 7, 10 only.
    assert fit_time_bins(KM_TIMES, KM_EVENTS, 5).tolist() == [2.0, 4.0, 7.0, 10.0]


def test_the_authors_discretisation_moves_events_up_and_censorings_down_to_the_cuts():
    bins = torch.tensor([3.0, 6.0, 9.0, 10.0])  # intervals [0,3) [3,6) [6,9) [9,10) [10,inf)
    # Events move up to the first cut at or after them: 2 -> 3, 4 -> 6, 7 -> 9, 10 -> 10, i.e. the
    # intervals ending at those cuts. Censorings move down to the last cut at or before them (3, 6, 9) and
    # are scored on the intervals after it.
    authors = interval_index(KM_TIMES, bins, KM_EVENTS, "km_quantiles")
    assert authors.tolist() == [0, 1, 1, 1, 2, 2, 3, 3]
    # Ours: [t_j, t_j+1) holds every time, so the event at the cut 10 falls in [10, inf).
    assert interval_index(KM_TIMES, bins, KM_EVENTS).tolist() == [0, 1, 1, 1, 2, 2, 3, 4]
    probabilities = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15])
    logits = probabilities.log().expand(8, 5)
    expected = [  # -log P(observed): the event's interval, or every interval after the censoring's cut
        -math.log(0.1), -math.log(0.2 + 0.3 + 0.25 + 0.15), -math.log(0.2), -math.log(0.2),
        -math.log(0.3 + 0.25 + 0.15), -math.log(0.3), -math.log(0.25 + 0.15), -math.log(0.25),
    ]  # fmt: skip
    for i in range(8):
        loss = mtlr_neg_log_likelihood(
            logits[i : i + 1], KM_TIMES[i : i + 1], KM_EVENTS[i : i + 1], bins, "km_quantiles"
        )
        assert loss.item() == pytest.approx(expected[i], rel=1e-5)


def test_cumulative_hazard_risk_is_torchmtlrs_on_a_hand_worked_curve():
    # P(interval) = 1/2, 1/4, 1/4 -> S at [0, t1, t2] = 1, 1/2, 1/4. torchmtlr's hazards p_j / S(t_j+1):
    # 0.5 / 0.5 = 1 and 0.25 / 0.25 = 1; cumulative 1, 2; risk 3. Ours: -log(1/2) - log(1/4) = 3 ln 2.
    logits = torch.tensor([[0.5, 0.25, 0.25]]).log()
    assert risk_score(logits, "cumulative_hazard").item() == pytest.approx(3.0, rel=1e-6)
    assert risk_score(logits).item() == pytest.approx(3 * math.log(2.0), rel=1e-6)
    with pytest.raises(ValueError, match="`scheme` must be one of"):
        risk_score(logits, "expected_time")
