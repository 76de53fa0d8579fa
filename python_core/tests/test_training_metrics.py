"""Metrics against hand-computed values: cubes for Dice/HD95, counted pairs for C, worked Brier integrals.

Precision: float64 numpy; tolerances are those of the hand computation.
"""

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from mafm3.training.metrics import (
    authors_dice,
    authors_dice_case,
    bootstrap_ci,
    harrell_c_index,
    hd95_mm,
    image_case_metrics,
    integrated_brier_score,
    lifelines_c_index,
    prognosis_summary,
    segmentation_case_metrics,
    segmentation_summary,
    time_dependent_auc,
    uno_c_index,
    write_metrics,
)

SHAPE_ZYX = (16, 14, 18)  # T != H != W exposes swapped axes
SPACING_ZYX = (3.0, 1.0, 0.5)  # mm


def cube(start_zyx, size=10, shape=SHAPE_ZYX, value=1) -> np.ndarray:
    volume = np.zeros(shape, np.uint8)
    z, y, x = start_zyx
    volume[z : z + size, y : y + size, x : x + size] = value
    return volume


def test_dice_of_two_cubes_offset_by_two_voxels_is_0_8_and_background_is_not_a_class():
    # GTVp: two 10^3 cubes shifted by 2 along z overlap in 8 x 10 x 10 = 800 voxels: 2 * 800 / 2000 = 0.8.
    # GTVn: identical single voxels: 1.0. Background (all the rest) would score near 1 if it were counted.
    prediction, reference = cube((2, 2, 2)), cube((4, 2, 2))
    prediction[0, 0, 0] = reference[0, 0, 0] = 2
    row = segmentation_case_metrics(prediction, reference, SPACING_ZYX)
    assert row["GTVp_dice"] == pytest.approx(0.8)
    assert row["GTVn_dice"] == pytest.approx(1.0)
    assert {key.split("_")[0] for key in row} == {"GTVp", "GTVn"}
    summary = segmentation_summary([row], n_resamples=10)
    assert summary["dice_mean_over_classes"] == pytest.approx(0.9)
    assert row["GTVp_reference_ml"] == pytest.approx(1000 * 1.5 / 1000)  # 1000 voxels of 3 x 1 x 0.5 mm^3


def test_empty_masks_follow_the_stated_policy():
    reference = cube((2, 2, 2))  # no GTVn anywhere
    only_predicted_n = cube((2, 2, 2))
    only_predicted_n[0, 0, 0] = 2
    both_empty = segmentation_case_metrics(cube((2, 2, 2)), reference, SPACING_ZYX)
    false_positive = segmentation_case_metrics(only_predicted_n, reference, SPACING_ZYX)
    assert math.isnan(both_empty["GTVn_dice"]) and math.isnan(both_empty["GTVn_hd95_mm"])
    assert false_positive["GTVn_dice"] == 0.0
    diagonal = math.sqrt((16 * 3.0) ** 2 + (14 * 1.0) ** 2 + (18 * 0.5) ** 2)
    assert false_positive["GTVn_hd95_mm"] == pytest.approx(diagonal)
    summary = segmentation_summary([both_empty, false_positive], n_resamples=10)["classes"]["GTVn"]
    assert summary["dice_mean"] == 0.0  # the NaN case is left out, not averaged in as 1 or 0
    assert summary["n_evaluated"] == 1 and summary["n_both_empty"] == 1 and summary["n_hd95_worst_case"] == 1


# Two hand-worked cases of 10 voxels for the authors' Dice (method-spec G3).
# Case 1, no GTVn in the reference (yet one predicted): background 2·5/(6+6) = 5/6, GTVp 2·3/(4+3) = 6/7,
# GTVn undefined (skipped, not 0). Case 2, no GTVp: background 2·8/(8+10) = 8/9, GTVn 2·0/(2+0) = 0.
AUTHORS_CASES = [
    ([0, 0, 0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 2, 1, 1, 1, 0]),  # (reference, prediction)
    ([0, 0, 0, 0, 0, 0, 0, 0, 2, 2], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
]


def test_authors_dice_counts_background_and_skips_classes_without_ground_truth():
    cases = [authors_dice_case(np.array(p), np.array(r)) for r, p in AUTHORS_CASES]
    assert cases[0]["background"] == pytest.approx(5 / 6) and cases[0]["GTVp"] == pytest.approx(6 / 7)
    assert math.isnan(cases[0]["GTVn"]) and math.isnan(cases[1]["GTVp"])
    assert cases[1]["background"] == pytest.approx(8 / 9) and cases[1]["GTVn"] == 0
    expected = ((5 / 6 + 6 / 7) / 2 + (8 / 9 + 0) / 2) / 2  # per case over its defined classes, then cases
    assert authors_dice(cases)["dice"] == pytest.approx(expected, rel=1e-12)


def test_authors_dice_equals_monais_dice_metric_with_background():
    import torch
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    metric = DiceMetric(include_background=True, reduction="mean")  # MONAI's defaults otherwise, as theirs
    for reference, prediction in AUTHORS_CASES:
        as_one_hot = [one_hot(torch.tensor(m).reshape(1, 1, 10, 1, 1), 3) for m in (prediction, reference)]
        metric(*as_one_hot)
    cases = [authors_dice_case(np.array(p), np.array(r)) for r, p in AUTHORS_CASES]
    assert authors_dice(cases)["dice"] == pytest.approx(metric.aggregate().item(), rel=1e-6)


def test_aggregated_dice_sums_overlaps_and_sizes_over_cases():
    # Case 1: 800 shared voxels, sizes 1000 + 1000. Case 2: a 2x2x2 prediction inside a 4x2x2 reference:
    # 8 shared, sizes 8 + 16. Aggregated: (1600 + 16) / (2000 + 24); mean of cases: (0.8 + 16/24) / 2.
    small_prediction, small_reference = np.zeros(SHAPE_ZYX, np.uint8), np.zeros(SHAPE_ZYX, np.uint8)
    small_prediction[0:2, 0:2, 0:2] = 1
    small_reference[0:4, 0:2, 0:2] = 1
    rows = [
        segmentation_case_metrics(cube((2, 2, 2)), cube((4, 2, 2)), SPACING_ZYX),
        segmentation_case_metrics(small_prediction, small_reference, SPACING_ZYX),
    ]
    gtvp = segmentation_summary(rows, n_resamples=50)["classes"]["GTVp"]
    assert gtvp["dice_aggregated"] == pytest.approx(1616 / 2024)
    assert gtvp["dice_mean"] == pytest.approx((0.8 + 16 / 24) / 2)


def test_hd95_is_in_millimetres_along_the_shifted_axis():
    # A 2-voxel shift: every edge point is within 2 voxels along the shift axis of the other surface, and the
    # 100 points of each far face (> 5 % of the 488 edge points) are exactly 2 voxels away.
    along_z = hd95_mm(cube((2, 2, 2)) > 0, cube((4, 2, 2)) > 0, SPACING_ZYX)
    along_x = hd95_mm(cube((2, 2, 2)) > 0, cube((2, 2, 4)) > 0, SPACING_ZYX)
    assert along_z == pytest.approx(2 * 3.0)
    assert along_x == pytest.approx(2 * 0.5)


def test_image_metrics_take_the_spacing_from_the_images_in_their_xyz_order():
    def image(array):
        result = sitk.GetImageFromArray(array)
        result.SetSpacing(SPACING_ZYX[::-1])  # SimpleITK order (x, y, z) = (0.5, 1.0, 3.0)
        return result

    row = image_case_metrics(image(cube((2, 2, 2))), image(cube((4, 2, 2))))
    assert row["GTVp_hd95_mm"] == pytest.approx(6.0) and row["GTVp_dice"] == pytest.approx(0.8)


def test_hd95_of_two_empty_masks_is_nan():
    empty = np.zeros(SHAPE_ZYX, bool)
    assert math.isnan(hd95_mm(empty, empty, SPACING_ZYX))


TIME = np.array([2.0, 4.0, 6.0, 8.0, 10.0])
EVENT = np.array([True, False, True, True, False])


def test_c_index_of_perfect_and_reversed_orderings():
    risk = -TIME  # earlier event, higher risk
    assert harrell_c_index(EVENT, TIME, risk) == 1.0
    assert harrell_c_index(EVENT, TIME, -risk) == 0.0


def test_c_index_of_a_hand_counted_example_with_censoring_and_tied_risks():
    # Comparable pairs (earlier time has an event): (0,1) (0,2) (0,3) (0,4) (2,3) (2,4) (3,4) = 7.
    # Risk 0.9 < 0.95 makes (0,1) discordant; (2,3) is a risk tie (1/2); the other 5 are concordant.
    risk = np.array([0.9, 0.95, 0.5, 0.5, 0.1])
    assert harrell_c_index(EVENT, TIME, risk) == pytest.approx(5.5 / 7)
    # A survival-like score (higher = longer survival) passed as risk gives 1 - C: the lifelines trap.
    assert harrell_c_index(EVENT, TIME, -risk) == pytest.approx(1.5 / 7)


def test_the_two_harrell_c_counts_differ_only_on_risks_tied_within_1e_8():
    # (days, event, risk). Comparable pairs (an event before a later time, or before a censoring at the same
    # time): A-B, A-C, A-D, A-E, B-C (B's event, C censored the same day), B-D, B-E, E-D: 8.
    # Concordant (higher risk first): A-B, A-C, A-D, A-E, B-D, B-E = 6. E-D: exactly equal risks, 1/2 in both.
    # B-C: C's risk is 5e-9 above B's: scikit-survival calls it a tie (1/2), lifelines a discordant pair (0).
    time = [1, 2, 2, 3, 2.5]
    event = [True, True, False, False, True]
    risk = [0.9, 0.5, 0.5 + 5e-9, 0.2, 0.2]
    assert harrell_c_index(event, time, risk) == pytest.approx((6 + 0.5 + 0.5) / 8)
    assert lifelines_c_index(event, time, risk) == pytest.approx((6 + 0.5) / 8)
    assert math.isnan(lifelines_c_index([False, False], [1, 2], [0.1, 0.2]))
    summary = prognosis_summary(
        event, time, risk, train_event=event, train_time_days=time, times_days=[1.5, 2.2], n_resamples=10
    )
    assert summary["harrell_c"] == pytest.approx(7 / 8)
    assert summary["harrell_c_lifelines"] == pytest.approx(6.5 / 8)
    assert set(summary["harrell_c_definitions"]) == {"harrell_c", "harrell_c_lifelines"}


def test_uno_c_without_censoring_equals_harrell_c():
    rng = np.random.default_rng(3)
    time = rng.permutation(np.arange(1.0, 41.0))
    event = np.ones(40, bool)
    risk = -time + rng.normal(0, 8, 40)
    assert uno_c_index(event, time, event, time, risk) == pytest.approx(harrell_c_index(event, time, risk))


def test_integrated_brier_score_of_worked_predictors():
    time = np.array([2.0, 4.0, 6.0, 8.0])
    event = np.ones(4, bool)  # no censoring: the IPCW weights are all 1
    times = np.array([2.0, 3.0, 5.0, 7.0])
    perfect = (times[None, :] < time[:, None]).astype(float)
    half = np.full((4, 4), 0.5)
    never = np.ones((4, 4))
    assert integrated_brier_score(event, time, event, time, perfect, times) == pytest.approx(0.0)
    assert integrated_brier_score(event, time, event, time, half, times) == pytest.approx(0.25)
    # S = 1 for everyone: Brier(t) = share relapsed by t = 1/4, 1/4, 2/4, 3/4 at t = 2, 3, 5, 7;
    # trapezoids 0.25 + 0.75 + 1.25 = 2.25 over 5 days = 0.45.
    assert integrated_brier_score(event, time, event, time, never, times) == pytest.approx(0.45)


def test_time_dependent_auc_of_a_perfect_risk_is_one():
    time = np.arange(1.0, 21.0)
    event = np.arange(20) % 3 != 0
    result = time_dependent_auc(event, time, event, time, -time, [5.0, 10.0, 15.0])
    assert result["auc"] == pytest.approx([1.0, 1.0, 1.0]) and result["mean"] == pytest.approx(1.0)


def test_bootstrap_ci_is_seeded_and_contains_the_point_estimate():
    rng = np.random.default_rng(0)
    time = rng.exponential(100, 60)
    event = rng.random(60) < 0.6
    risk = -time + rng.normal(0, 60, 60)
    summary = prognosis_summary(event, time, risk, train_event=event, train_time_days=time, n_resamples=200)
    again = prognosis_summary(event, time, risk, train_event=event, train_time_days=time, n_resamples=200)
    other = prognosis_summary(
        event, time, risk, train_event=event, train_time_days=time, n_resamples=200, seed=1
    )
    ci = summary["harrell_c_ci"]
    assert ci["low"] < summary["harrell_c"] < ci["high"]
    assert ci == again["harrell_c_ci"] and ci != other["harrell_c_ci"]
    assert 0.5 < summary["harrell_c"] < 1.0 and 0.5 < summary["uno_c"] < 1.0


def test_bootstrap_counts_resamples_where_the_statistic_is_undefined():
    values = np.array([1.0, 2.0, 3.0, math.nan])
    # NaN whenever the resample draws case 3.
    ci = bootstrap_ci(lambda index: values[index].mean(), 4, n_resamples=400, seed=5)
    expected_undefined = 400 * (1 - (3 / 4) ** 4)  # P(case 3 drawn at least once in 4 draws) = 0.68
    assert abs(ci["n_undefined"] - expected_undefined) < 40
    assert 1.0 <= ci["low"] <= ci["high"] <= 3.0


def test_write_metrics_puts_a_per_case_csv_beside_the_json_and_nan_becomes_null(tmp_path):
    json_path, csv_path = write_metrics(
        tmp_path / "metrics.json",
        {"dice": math.nan, "n": np.int64(2)},
        [{"case_id": "A", "GTVp_dice": 0.5}, {"case_id": "B", "GTVp_dice": math.nan}],
    )
    assert csv_path == tmp_path / "metrics_per_case.csv"
    assert json.loads(json_path.read_text()) == {"dice": None, "n": 2}
    with open(csv_path, newline="") as file:
        assert list(csv.DictReader(file)) == [
            {"case_id": "A", "GTVp_dice": "0.5"},
            {"case_id": "B", "GTVp_dice": ""},
        ]


def test_prognosis_summary_of_a_perfect_risk_without_censoring():
    time = np.arange(1.0, 21.0)
    event = np.ones(20, bool)
    times = [5.0, 10.0, 15.0]
    summary = prognosis_summary(
        event, time, -time, train_event=event, train_time_days=time, survival=np.full((20, 3), 0.5),
        times_days=times, n_resamples=50,
    )  # fmt: skip
    assert summary["harrell_c"] == 1.0 and summary["uno_c"] == pytest.approx(1.0)
    assert summary["time_dependent_auc"]["auc"] == pytest.approx([1.0, 1.0, 1.0])
    assert summary["integrated_brier_score"] == pytest.approx(0.25)  # (1/2)^2 whatever happened, no weights
    assert (summary["n_cases"], summary["n_events"], summary["uno_c_tau_days"]) == (20, 20, 15.0)
