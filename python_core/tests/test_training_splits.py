"""Splits partition the cases, keep validation out of the test fold, spread strata evenly, and repeat."""

import csv
import random
from collections import Counter
from pathlib import Path

import pytest

from mafm3.errors import MAFM3Error
from mafm3.training.datasets import Case
from mafm3.training.splits import Splits, centre_split, kfold_split, stratum_keys, training_fold

# (centre, cases, events): 100 cases, 20 events; centre E is too small to be its own stratum.
CENTRES = [("A", 40, 10), ("B", 30, 5), ("C", 20, 4), ("D", 8, 1), ("E", 2, 0)]


def make_cases() -> list[Case]:
    cases = []
    for centre, n, events in CENTRES:
        for i in range(n):
            case_id = f"{centre}-{i:03d}"
            cases.append(
                Case(
                    case_id,
                    Path(f"{case_id}__CT.nii.gz"),
                    rfs_days=100.0 + i,
                    relapse=i < events,
                    centre=centre,
                )
            )
    return cases


def test_test_folds_partition_the_cases_and_validation_never_touches_the_test_fold():
    cases = make_cases()
    splits = kfold_split(cases, k=5, seed=42)
    all_ids = {c.case_id for c in cases}
    assert len(splits) == 5 and [fold.index for fold in splits] == [0, 1, 2, 3, 4]
    assert sorted(i for fold in splits for i in fold.test_ids) == sorted(all_ids)  # each case tested once
    for fold in splits:
        train, val, test = set(fold.train_ids), set(fold.val_ids), set(fold.test_ids)
        assert not val & test and not train & test and not train & val
        assert train | val | test == all_ids
        assert len(val) == round(0.2 * (len(all_ids) - len(test)))  # 80 non-test cases -> 16 for validation


def test_each_event_centre_stratum_is_spread_evenly_over_the_folds():
    cases = make_cases()
    by_id = {c.case_id: c for c in cases}
    splits = kfold_split(cases, k=5, seed=7)
    events_per_fold = [sum(by_id[i].relapse for i in fold.test_ids) for fold in splits]
    # Event strata 1|A (10), 1|B (5) and 1|* (C's 4 + D's 1 pooled): each splits exactly, 2 + 1 + 1 per fold.
    assert events_per_fold == [4, 4, 4, 4, 4]
    for stratum, size in Counter((c.relapse, c.centre) for c in cases).items():
        if size >= 5:
            counts = [
                sum((by_id[i].relapse, by_id[i].centre) == stratum for i in fold.test_ids) for fold in splits
            ]
            assert max(counts) - min(counts) <= 1, stratum


def test_strata_smaller_than_the_fold_count_fall_back_to_event_then_one_shared_stratum():
    def cohort(*groups):  # (centre, relapse, count)
        return [
            Case(
                f"{centre}{int(relapse)}-{i}", Path("ct.nii.gz"), rfs_days=1.0, relapse=relapse, centre=centre
            )
            for centre, relapse, count in groups
            for i in range(count)
        ]

    cases = cohort(
        ("A", False, 10), ("A", True, 5), ("E", False, 2), ("F", False, 3), ("F", True, 1), ("G", True, 1)
    )
    keys = Counter(stratum_keys(cases, 5))
    # 0|E (2) and 0|F (3) pool into 0|* (5, kept); 1|F and 1|G pool into 1|* (2, still too small) -> *|*.
    assert keys == {"0|A": 10, "1|A": 5, "0|*": 5, "*|*": 2}
    splits = kfold_split(cases, k=5, seed=0)
    assert sorted(i for fold in splits for i in fold.test_ids) == sorted(c.case_id for c in cases)


def test_the_same_seed_gives_the_same_split_whatever_the_case_order():
    cases = make_cases()
    shuffled = cases[:]
    random.Random(1).shuffle(shuffled)
    assert kfold_split(cases, seed=3) == kfold_split(shuffled, seed=3)
    assert kfold_split(cases, seed=3) != kfold_split(cases, seed=4)


def test_centre_split_tests_exactly_the_named_centres():
    cases = make_cases()
    splits = centre_split(cases, ["B", "E"], seed=1)
    fold = splits[0]
    assert {i.split("-")[0] for i in fold.test_ids} == {"B", "E"} and len(fold.test_ids) == 32
    assert {i.split("-")[0] for i in fold.train_ids + fold.val_ids} == {"A", "C", "D"}
    assert len(fold.val_ids) == round(0.2 * 68)
    with pytest.raises(MAFM3Error, match="Centre\\(s\\) Z not in the dataset: choose from A, B, C, D, E"):
        centre_split(cases, ["Z"])


def test_splits_round_trip_through_json(tmp_path):
    splits = kfold_split(make_cases(), k=3, seed=9, val_fraction=0.25)
    splits.save(tmp_path / "splits.json")
    loaded = Splits.load(tmp_path / "splits.json")
    assert loaded == splits
    assert loaded.parameters == {"k": 3, "val_fraction": 0.25, "stratified_by": ["event", "centre"]}


def test_more_folds_than_cases_is_refused():
    with pytest.raises(MAFM3Error, match="3 cases cannot be split into 5 folds"):
        kfold_split(make_cases()[:3], k=5)


def write_folds_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def authors_style_folds(cases: list[Case], path: Path) -> dict[str, int]:
    """The authors' CSV layout (PatientID, other columns, fold 1..5) over all cases but the last 10."""
    folds = {case.case_id: 1 + i % 5 for i, case in enumerate(cases[:-10])}
    rows = [{"PatientID": i, "text": "a report, with a comma", "fold": f} for i, f in folds.items()]
    write_folds_csv(path, rows)
    return folds


@pytest.mark.parametrize("name", ["folds.csv", "folds.txt"])  # recognised by extension, else by content
def test_a_folds_csv_tests_each_fold_value_and_still_validates_on_an_inner_split(tmp_path, name):
    cases = make_cases()
    folds = authors_style_folds(cases, tmp_path / name)
    for k, value in enumerate([1, 2, 3, 4, 5]):  # fold K = the K-th smallest fold value
        splits, fold = training_fold(
            cases, fold=k, folds=5, split_seed=42, val_fraction=0.2, split_file=tmp_path / name
        )
        expected_test = {i for i, f in folds.items() if f == value}
        train, val, test = set(fold.train_ids), set(fold.val_ids), set(fold.test_ids)
        assert test == expected_test and splits.method == "folds-file"
        assert not val & test and not train & val and train | val == set(folds) - expected_test
        assert abs(len(val) - 0.2 * len(train | val)) <= 1  # one of 5 stratified parts
    assert splits.parameters["fold_values"] == [1, 2, 3, 4, 5]
    assert splits.parameters["n_cases_not_in_file"] == 10  # the unlisted cases are nowhere


def test_select_on_test_fold_validates_on_the_test_cases_and_trains_on_all_others(tmp_path):
    cases = make_cases()
    folds = authors_style_folds(cases, tmp_path / "folds.csv")
    _, fold = training_fold(
        cases,
        fold=2,
        folds=5,
        split_seed=42,
        val_fraction=0.2,
        split_file=tmp_path / "folds.csv",
        select_on_test_fold=True,
    )
    assert set(fold.val_ids) == set(fold.test_ids) == {i for i, f in folds.items() if f == 3}
    assert set(fold.train_ids) == {i for i, f in folds.items() if f != 3}
    with pytest.raises(MAFM3Error, match="--select-on-test-fold selects on a test fold"):
        training_fold(cases, fold=None, folds=5, split_seed=1, val_fraction=0.2, select_on_test_fold=True)


def test_a_split_json_is_still_a_folds_file(tmp_path):
    splits = kfold_split(make_cases(), k=3, seed=9)
    splits.save(tmp_path / "splits")  # no extension: recognised by its content
    loaded, fold = training_fold(
        make_cases(), fold=1, folds=5, split_seed=0, val_fraction=0.2, split_file=tmp_path / "splits"
    )
    assert loaded == splits and fold == splits[1]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"PatientID": "Z-999", "fold": 0}, {"PatientID": "A-000", "fold": 1}], "first is Z-999"),
        ([{"PatientID": "A-000", "split": 0}], "needs a case-id column .* and a fold column"),
        ([{"case_id": "A-000", "fold": "x"}, {"case_id": "A-001", "fold": 1}], "integer fold"),
        ([{"id": "A-000", "fold": 0}, {"id": "A-000", "fold": 1}], "Case A-000 appears twice"),
        ([{"id": "A-000", "fold": 0}, {"id": "A-001", "fold": 0}], "holds 1 fold value"),
    ],
)
def test_bad_folds_csvs_are_refused_in_one_sentence(tmp_path, rows, message):
    path = write_folds_csv(tmp_path / "folds.csv", rows)
    with pytest.raises(MAFM3Error, match=message):
        training_fold(make_cases(), fold=0, folds=5, split_seed=0, val_fraction=0.2, split_file=path)
