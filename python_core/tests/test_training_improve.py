"""The parts of `mafm3 improve` that decide: the held-out split, the paired change and the gate.

Oracles: counting (which cases are held out, how often), means of hand-written per-case Dice, and the gate's
rule as the README states it (mean Dice over classes >= current - 0.01; no class falling by more than 0.01
with the 95 % interval of its paired change below 0).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mafm3.errors import MAFM3Error
from mafm3.training.datasets import Case
from mafm3.training.improve import (
    DICE_TOLERANCE,
    MIN_PAIRED_CASES,
    ImproveOptions,
    gate,
    held_out_splits,
    paired_difference,
)


def cases(n: int) -> list[Case]:
    return [Case(f"C-{index:03d}", Path(f"C-{index:03d}__CT.nii.gz")) for index in range(n)]


def test_a_dozen_cases_hold_out_one_part_that_never_trains_the_same_way_every_time():
    splits, scheme = held_out_splits(cases(12), 0.25, seed=42)
    again, _ = held_out_splits(list(reversed(cases(12))), 0.25, seed=42)

    assert scheme == "holdout" and len(splits) == 1 and len(splits[0].test_ids) == 3
    assert not set(splits[0].test_ids) & set(splits[0].train_ids)
    assert set(splits[0].test_ids) | set(splits[0].train_ids) == {case.case_id for case in cases(12)}
    assert splits[0].val_ids == () and again == splits


def test_few_cases_hold_out_every_part_in_turn_so_each_case_is_held_out_once():
    splits, scheme = held_out_splits(cases(8), 0.25, seed=42)

    held_out = [case_id for fold in splits for case_id in fold.test_ids]
    assert scheme == "folds" and len(splits) == 4
    assert sorted(held_out) == sorted(case.case_id for case in cases(8))  # each exactly once
    assert all(not set(fold.test_ids) & set(fold.train_ids) for fold in splits)


def row(case_id: str, gtvp: float, gtvn: float) -> dict:
    return {"case_id": case_id, "GTVp_dice": gtvp, "GTVn_dice": gtvn}


def test_the_paired_change_averages_the_cases_where_both_versions_are_defined():
    current = [row("a", 0.5, math.nan), row("b", 0.6, 0.2), row("c", 0.7, 0.4)]
    new = [row("a", 0.7, 0.3), row("b", 0.6, 0.5), row("c", 0.9, math.nan)]

    gtvp = paired_difference(current, new, "GTVp", n_resamples=200)
    gtvn = paired_difference(current, new, "GTVn", n_resamples=200)
    assert gtvp["dice_mean"] == pytest.approx((0.2 + 0.0 + 0.2) / 3) and gtvp["n_cases"] == 3
    assert gtvn["dice_mean"] == pytest.approx(0.3) and gtvn["n_cases"] == 1  # only case b is defined twice
    assert gtvp["dice_mean_ci"]["low"] <= gtvp["dice_mean"] <= gtvp["dice_mean_ci"]["high"]


def verdict(current_dice: dict, new_dice: dict, changes: dict) -> dict:
    metrics = {
        name: {"dice_mean_over_classes": sum(values.values()) / len(values)}
        for name, values in (("current", current_dice), ("new", new_dice))
    }
    difference = {
        name: {"dice_mean": change, "dice_mean_ci": {"low": low, "high": high}}
        for name, (change, low, high) in changes.items()
    }
    return gate(metrics, difference)


def test_the_gate_passes_a_version_within_the_tolerance_and_refuses_one_below_it():
    small_drop = DICE_TOLERANCE / 2
    passing = verdict(
        {"GTVp": 0.6, "GTVn": 0.4},
        {"GTVp": 0.6 - small_drop, "GTVn": 0.4},
        {"GTVp": (-small_drop, -0.02, 0.01), "GTVn": (0.0, -0.01, 0.01)},
    )
    assert passing["passed"] and passing["reasons"] == []

    falling = verdict(
        {"GTVp": 0.6, "GTVn": 0.4},
        {"GTVp": 0.55, "GTVn": 0.4},
        {"GTVp": (-0.05, -0.15, 0.05), "GTVn": (0.0, -0.01, 0.01)},
    )
    assert (
        not falling["passed"] and "mean Dice over classes fell from 0.500 to 0.475" in falling["reasons"][0]
    )


def test_the_gate_refuses_a_class_that_drops_beyond_its_noise_even_when_the_mean_rises():
    result = verdict(
        {"GTVp": 0.5, "GTVn": 0.4},
        {"GTVp": 0.8, "GTVn": 0.3},
        {"GTVp": (0.3, 0.2, 0.4), "GTVn": (-0.1, -0.15, -0.05)},
    )
    assert not result["passed"] and result["reasons"] == [
        "GTVn Dice fell by 0.100 (95 % interval of the change -0.150 to -0.050)"
    ]
    noisy = verdict(  # the same drop, but its interval reaches above 0: noise, not a drop
        {"GTVp": 0.5, "GTVn": 0.4},
        {"GTVp": 0.8, "GTVn": 0.3},
        {"GTVp": (0.3, 0.2, 0.4), "GTVn": (-0.1, -0.3, 0.1)},
    )
    assert noisy["passed"]


def test_a_class_on_too_few_cases_for_an_interval_is_judged_by_the_mean_over_classes_only():
    """GTVn defined on one held-out case: its 'interval' is that case's change itself, so it cannot block."""
    current = [row("a", 0.25, 0.04), row("b", 0.3, math.nan), row("c", 0.2, math.nan)]
    new = [row("a", 0.55, 0.0), row("b", 0.6, math.nan), row("c", 0.5, math.nan)]
    difference = {name: paired_difference(current, new, name, n_resamples=200) for name in ("GTVp", "GTVn")}
    assert difference["GTVn"]["n_cases"] == 1 < MIN_PAIRED_CASES
    assert difference["GTVn"]["dice_mean_ci"]["high"] == pytest.approx(-0.04)  # the point: no interval
    metrics = {
        "current": {"dice_mean_over_classes": (0.25 + 0.04) / 2},
        "new": {"dice_mean_over_classes": (0.55 + 0.0) / 2},
    }
    assert gate(metrics, difference)["passed"]

    steady = [row(case, 0.25, 0.04) for case in "abc"]  # the same drop on every one of 3 cases: a real drop
    falling = [row(case, 0.55, 0.0) for case in "abc"]
    difference = {
        name: paired_difference(steady, falling, name, n_resamples=200) for name in ("GTVp", "GTVn")
    }
    result = gate(metrics, difference)
    assert not result["passed"] and result["reasons"][0].startswith("GTVn Dice fell by 0.040")


@pytest.mark.parametrize(
    ("field", "value", "words"), [("holdout", 1.0, "between 0 and 1"), ("iterations", 0, "at least 1")]
)
def test_options_out_of_range_are_refused_in_one_sentence(field, value, words):
    with pytest.raises(MAFM3Error, match=words):
        ImproveOptions(skill="s", dataset=Path("d"), out=Path("o"), **{field: value})


def test_a_prognosis_skill_or_an_existing_out_is_refused_before_anything_trains(tmp_path, monkeypatch):
    from mafm3.training.improve import improve

    monkeypatch.setenv("MAFM3_HOME", str(tmp_path / "home"))
    with pytest.raises(MAFM3Error, match="segmentation skills only"):
        improve(ImproveOptions(skill="demo-prognosis", dataset=tmp_path, out=tmp_path / "new"))
    (tmp_path / "taken").mkdir()
    with pytest.raises(MAFM3Error, match="never overwritten"):
        improve(ImproveOptions(skill="demo-seg-ct", dataset=tmp_path, out=tmp_path / "taken"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["taken"]
