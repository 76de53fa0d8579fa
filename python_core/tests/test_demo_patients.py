"""Synthetic patients: clinical records and recurrence-free survival from the documented hazard model.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

import math

import numpy as np
import pytest

from mafm3.clinical import ClinicalRecord
from mafm3.demo.patients import (
    Node,
    case_seed,
    n_stage,
    sample_patient,
    sample_patients,
    sample_survival,
    t_stage,
)


@pytest.fixture(scope="module")
def patients():
    return sample_patients(200, cohort_seed=11)


def _concordance(times, events, risks) -> float:
    """Harrell's C by hand: of pairs whose earlier time is an event, the share where it is the riskier."""
    concordant = comparable = 0.0
    for i in range(len(times)):
        if not events[i]:
            continue
        later = times > times[i]
        comparable += later.sum()
        concordant += (risks[later] < risks[i]).sum() + 0.5 * (risks[later] == risks[i]).sum()
    return concordant / comparable


def test_same_seed_gives_the_same_patient_and_another_seed_a_different_one():
    assert sample_patient(5) == sample_patient(5)
    assert sample_patient(5) != sample_patient(6)


def test_cohort_cases_use_disjoint_documented_seeds():
    assert [p.seed for p in sample_patients(3, cohort_seed=2)] == [200000, 200001, 200002]
    assert case_seed(0, 99999) < case_seed(1, 0)
    with pytest.raises(ValueError, match="`index` must be in"):
        case_seed(0, 100000)


def test_tumour_burden_stays_in_the_specified_ranges(patients):
    for p in patients:
        assert 5.0 <= p.tumour_volume_ml <= 60.0
        assert 6.0 <= p.tumour_suv_max <= 20.0
        assert 0 <= len(p.nodes) <= 3
        for node in p.nodes:
            assert 8.0 <= node.diameter_mm <= 25.0 and 4.0 <= node.suv_max <= 10.0
            assert node.level in ("II", "III", "IV") and node.side in (-1, 1)


def test_event_rate_and_follow_up_look_like_a_head_and_neck_cohort(patients):
    relapse = np.array([p.survival.relapse for p in patients])
    days = np.array([p.survival.rfs_days for p in patients])
    assert 0.15 <= relapse.mean() <= 0.45
    assert days.min() >= 1 and days.max() <= round(6 * 365.25)
    # Without an event, follow-up ends at censoring, which is mostly administrative (3-6 years).
    assert np.median(days[~relapse]) > 2 * 365


def test_higher_true_risk_means_shorter_recurrence_free_survival(patients):
    times = np.array([p.survival.rfs_days for p in patients], float)
    events = np.array([p.survival.relapse for p in patients])
    risks = np.array([p.survival.log_hazard for p in patients])
    assert _concordance(times, events, risks) > 0.65
    assert _concordance(times, events, -risks) < 0.35


def test_log_hazard_is_the_documented_formula():
    observed = [p for p in sample_patients(30, cohort_seed=3) if p.clinical.performance_status is not None]
    for p in observed[:10]:
        c = p.clinical
        expected = (
            -7.1
            + 1.2 * math.log(p.tumour_volume_ml)
            + 1.0 * p.tumour_suv_max / 10
            + 0.45 * len(p.nodes)
            - 1.6 * p.hpv
            + 0.3 * (c.t_stage == "T4a")
            + 1.5 * (c.m_stage == "M1")
            + 0.2 * c.performance_status
            + 0.25 * p.tobacco
        )
        assert p.survival.log_hazard == pytest.approx(expected, abs=1e-12)


def test_weibull_event_times_follow_the_model_survival_function():
    # log-hazard 0: S(t) = exp(-t**0.9), so P(T <= 0.5 y) = 1 - exp(-0.5**0.9) = 0.4163; censoring before
    # 0.5 y only comes from loss to follow-up (Exp, mean 25 y), which can remove at most 2 % of those events.
    generator = np.random.default_rng(0)
    draws = [sample_survival(0.0, generator) for _ in range(4000)]
    early = np.mean([d.relapse and d.rfs_days <= 0.5 * 365.25 for d in draws])
    expected_high = 1 - math.exp(-(0.5**0.9))
    assert expected_high * math.exp(-0.5 / 25) - 0.03 <= early <= expected_high + 0.03


def test_stages_follow_tumour_volume_and_node_sides():
    assert [t_stage(v) for v in (5.0, 7.9, 8.0, 19.9, 20.0, 39.9, 40.0, 60.0)] == [
        "T1", "T1", "T2", "T2", "T3", "T3", "T4a", "T4a",
    ]  # fmt: skip
    left, right = Node(12.0, "II", 1, 5.0, False), Node(12.0, "III", -1, 5.0, False)
    assert n_stage((), 1) == "N0"
    assert n_stage((left,), 1) == "N1"
    assert n_stage((left, left), 1) == "N2b"
    assert n_stage((left, right), 1) == "N2c"


def test_clinical_record_is_valid_hides_some_truths_and_round_trips(patients):
    for p in patients[:20]:
        assert ClinicalRecord.from_dict(p.clinical.to_dict()) == p.clinical
        assert p.clinical.hpv in (None, p.hpv)
    hpv_missing = np.mean([p.clinical.hpv is None for p in patients])
    assert 0.1 <= hpv_missing <= 0.4  # documented: 25 %
    assert all(p.clinical.age is not None and p.clinical.t_stage is not None for p in patients)
