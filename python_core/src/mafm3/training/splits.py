"""Train / validation / test splits of a cohort: seeded, stratified by event and centre, saved as JSON.

Each fold carves its validation cases out of its own training cases, so model selection never sees the test
fold (the authors selected on it: method-spec G2). The same cases and seed give the same split, whatever
order the cases come in (they are sorted by id first).

Stratification uses scikit-learn's `StratifiedKFold` on the key (event, centre). A stratum with fewer cases
than folds cannot be spread over them, so its cases fall back to the key (event, any centre), and if that is
still too small, to one shared stratum; each case keeps the finest key that is large enough. Cases without an
endpoint form their own event class ("?").
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mafm3.errors import MAFM3Error
from mafm3.training.datasets import Case


@dataclass(frozen=True)
class Fold:
    """One train / validation / test partition; `index` counts from 0."""

    index: int
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    test_ids: tuple[str, ...]


@dataclass(frozen=True)
class Splits:
    """The folds of one splitting, with what made them (for a pack's provenance); indexable like a list."""

    method: str  # "kfold" or "centre"
    seed: int
    parameters: dict
    folds: tuple[Fold, ...]

    def __len__(self) -> int:
        return len(self.folds)

    def __getitem__(self, index: int) -> Fold:
        return self.folds[index]

    def __iter__(self) -> Iterator[Fold]:
        return iter(self.folds)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Splits:
        folds = tuple(
            Fold(
                index=int(fold["index"]),
                train_ids=tuple(fold["train_ids"]),
                val_ids=tuple(fold["val_ids"]),
                test_ids=tuple(fold["test_ids"]),
            )
            for fold in values["folds"]
        )
        return cls(str(values["method"]), int(values["seed"]), dict(values["parameters"]), folds)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Splits:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise MAFM3Error(
                f"Cannot read the split file {path} ({error}): give a file written by mafm3."
            ) from error


def kfold_split(cases: Sequence[Case], *, k: int = 5, seed: int = 42, val_fraction: float = 0.2) -> Splits:
    """k stratified test folds; each fold's validation cases are a stratified share of its other cases.

    The validation share is one part of a stratified split of the non-test cases into round(1 / val_fraction)
    parts (0.2 -> one fifth); `val_fraction=0` leaves no validation cases.
    """
    cases = sorted(cases, key=lambda c: c.case_id)
    if not 2 <= k <= len(cases):
        raise MAFM3Error(f"{len(cases)} cases cannot be split into {k} folds: use 2 to {len(cases)} folds.")
    parts = _stratified_parts(cases, k, seed)
    folds = []
    for index, test in enumerate(parts):
        rest = [case for other, part in enumerate(parts) if other != index for case in part]
        train, val = _carve_validation(rest, val_fraction, seed)
        folds.append(Fold(index, _ids(train), _ids(val), _ids(test)))
    parameters = {"k": k, "val_fraction": val_fraction, "stratified_by": ["event", "centre"]}
    return Splits("kfold", seed, parameters, tuple(folds))


def holdout_split(cases: list[Case], val_fraction: float, seed: int) -> Splits:
    """One fold without test cases: a stratified `val_fraction` of the cases validates, the rest trains."""
    n_parts = min(max(2, round(1 / val_fraction)), len(cases)) if val_fraction > 0 else 0
    parameters = {"val_fraction": val_fraction, "stratified_by": ["event", "centre"]}
    ids = tuple(sorted(case.case_id for case in cases))
    if n_parts < 2:
        return Splits("holdout", seed, parameters, (Fold(0, ids, (), ()),))
    first = kfold_split(cases, k=n_parts, seed=seed, val_fraction=0)[0]
    return Splits("holdout", seed, parameters, (Fold(0, first.train_ids, first.test_ids, ()),))


def training_fold(
    cases: list[Case],
    *,
    fold: int | None,
    folds: int,
    split_seed: int,
    val_fraction: float,
    split_file: Path | None = None,
) -> tuple[Splits, Fold]:
    """The split `mafm3 train` uses and its fold `fold`: the one in `split_file` (`--folds-file`, or the saved
    split of a resumed run), else a `k = folds` split when a fold is asked for, else a hold-out (fold 0).
    Refuses folds that do not exist, training cases these cases lack, and test cases that overlap training."""
    if split_file is not None:
        splits = Splits.load(split_file)
    elif fold is not None:
        splits = kfold_split(cases, k=folds, seed=split_seed, val_fraction=val_fraction)
    else:
        splits = holdout_split(cases, val_fraction, split_seed)
    if fold is None and len(splits) > 1:
        raise MAFM3Error(
            f"The split has {len(splits)} folds; choose one with --fold (0 to {len(splits) - 1})."
        )
    index = fold or 0
    if not 0 <= index < len(splits):
        raise MAFM3Error(f"Fold {index} does not exist; the split has folds 0 to {len(splits) - 1}.")
    chosen = splits[index]
    usable = {case.case_id for case in cases}
    unusable = sorted(set(chosen.train_ids + chosen.val_ids) - usable)
    if unusable:
        raise MAFM3Error(
            f"{len(unusable)} training case(s) of the split lack what this task needs (the first is "
            f"{unusable[0]}); use a split made for these cases."
        )
    if set(chosen.test_ids) & set(chosen.train_ids + chosen.val_ids):
        raise MAFM3Error("The split's test cases overlap its training cases; use a split made by mafm3.")
    if not chosen.train_ids:
        raise MAFM3Error("The split leaves no training cases; add cases.")
    return splits, chosen


def centre_split(
    cases: Sequence[Case], test_centres: Sequence[str], *, seed: int = 42, val_fraction: float = 0.2
) -> Splits:
    """One fold that tests on the named centres only (domain shift); validation is carved from the others."""
    cases = sorted(cases, key=lambda c: c.case_id)
    known = sorted({str(c.centre) for c in cases if c.centre})
    unknown = sorted(set(test_centres) - set(known))
    if unknown:
        raise MAFM3Error(
            f"Centre(s) {', '.join(unknown)} not in the dataset: choose from {', '.join(known)}."
        )
    test = [c for c in cases if c.centre in set(test_centres)]
    rest = [c for c in cases if c.centre not in set(test_centres)]
    if not test or not rest:
        raise MAFM3Error("Holding out these centres leaves no training cases: hold out fewer centres.")
    train, val = _carve_validation(rest, val_fraction, seed)
    parameters = {"test_centres": sorted(test_centres), "val_fraction": val_fraction}
    return Splits("centre", seed, parameters, (Fold(0, _ids(train), _ids(val), _ids(test)),))


def stratum_keys(cases: Sequence[Case], n_splits: int) -> list[str]:
    """The stratification key of each case: "event|centre", coarsened where a stratum has < n_splits cases."""
    events = ["?" if not c.has_endpoint else str(int(c.relapse)) for c in cases]
    keys = [f"{event}|{c.centre or '?'}" for event, c in zip(events, cases, strict=True)]
    for coarser in ([f"{event}|*" for event in events], ["*|*"] * len(cases)):
        counts = Counter(keys)
        keys = [
            key if counts[key] >= n_splits else fallback for key, fallback in zip(keys, coarser, strict=True)
        ]
    return keys


def _stratified_parts(cases: list[Case], n_splits: int, seed: int) -> list[list[Case]]:
    from sklearn.model_selection import StratifiedKFold

    keys = stratum_keys(cases, n_splits)
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # The shared fallback stratum may still be smaller than n_splits; sklearn then spreads it as evenly as
        # it can and warns, which is the documented behaviour here.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return [[cases[i] for i in part] for _, part in splitter.split(np.zeros(len(cases)), keys)]


def _carve_validation(cases: list[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    if not 0 <= val_fraction < 1:
        raise MAFM3Error(f"The validation fraction must be in [0, 1), got {val_fraction}.")
    if val_fraction == 0:
        return cases, []
    n_parts = min(max(2, round(1 / val_fraction)), len(cases))
    if n_parts < 2:
        raise MAFM3Error("A fold has a single training case, too few to carve a validation set: add cases.")
    val = _stratified_parts(cases, n_parts, seed)[0]
    val_ids = {c.case_id for c in val}
    return [c for c in cases if c.case_id not in val_ids], val


def _ids(cases: list[Case]) -> tuple[str, ...]:
    return tuple(sorted(c.case_id for c in cases))
