"""Train / validation / test splits of a cohort: seeded, stratified by event and centre, saved as JSON.

Each fold carves its validation cases out of its own training cases, so model selection never sees the test
fold (the authors selected on it: method-spec G2). The same cases and seed give the same split, whatever
order the cases come in (they are sorted by id first).

`--folds-file` takes such a JSON, or a CSV with a case-id column (`PatientID`, `case_id` or `id`) and a
`fold` column, as the authors' `TNM_hector_prompts.csv` holds (`folds_from_csv`): each fold value's cases are
one test fold, in ascending order of the values (fold 0 = the smallest), and validation is still carved from
the other folds' cases unless `--select-on-test-fold` reproduces the authors' selection on the test fold.

Stratification uses scikit-learn's `StratifiedKFold` on the key (event, centre). A stratum with fewer cases
than folds cannot be spread over them, so its cases fall back to the key (event, any centre), and if that is
still too small, to one shared stratum; each case keeps the finest key that is large enough. Cases without an
endpoint form their own event class ("?").
"""

from __future__ import annotations

import csv
import json
import math
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


CASE_ID_COLUMNS = ("patientid", "case_id", "case id", "id")  # headers of a folds CSV's case ids, lower-case


def load_split_file(path: Path, cases: Sequence[Case], *, val_fraction: float, seed: int) -> Splits:
    """A `--folds-file`: a CSV of case ids and folds (`.csv`, or any file not starting with `{`), else a
    split JSON written by mafm3."""
    path = Path(path)
    try:
        head = path.read_text(encoding="utf-8-sig")[:4096].lstrip()
    except (OSError, UnicodeDecodeError) as error:
        raise MAFM3Error(
            f"Cannot read the folds file {path} ({error}): give a CSV or a split JSON."
        ) from error
    if path.suffix.lower() == ".csv" or (path.suffix.lower() != ".json" and not head.startswith("{")):
        return folds_from_csv(path, cases, val_fraction=val_fraction, seed=seed)
    return Splits.load(path)


def folds_from_csv(path: Path, cases: Sequence[Case], *, val_fraction: float, seed: int) -> Splits:
    """Folds from a CSV of case id and fold (module docstring). Every listed case must be one of `cases`;
    cases it does not list are left out of the split. Each fold's validation share is carved, stratified,
    from its training side as in `kfold_split`."""
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        headers = {str(name).strip().lower(): name for name in reader.fieldnames or []}
        id_header = next((headers[name] for name in CASE_ID_COLUMNS if name in headers), None)
        if id_header is None or "fold" not in headers:
            raise MAFM3Error(
                f"The folds file {path} needs a case-id column (PatientID, case_id or id) and a fold column; "
                f"it has {', '.join(headers) or 'no header'}."
            )
        rows = [((row[id_header] or "").strip(), (row[headers["fold"]] or "").strip()) for row in reader]
    folds_of: dict[str, int] = {}
    for case_id, cell in rows:
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not case_id or not value.is_integer():
            raise MAFM3Error(
                f"The folds file {path} has a row without a case id or an integer fold ({case_id!r}, "
                f"{cell!r}): give every row both."
            )
        if case_id in folds_of:
            raise MAFM3Error(f"Case {case_id} appears twice in the folds file {path}: list each case once.")
        folds_of[case_id] = int(value)
    by_id = {case.case_id: case for case in cases}
    unknown = sorted(set(folds_of) - set(by_id))
    if unknown:
        raise MAFM3Error(
            f"{len(unknown)} case(s) of the folds file {path} are not usable cases of this dataset for this "
            f"task (the first is {unknown[0]}); remove their rows or add the cases."
        )
    labels = sorted(set(folds_of.values()))
    if len(labels) < 2:
        raise MAFM3Error(f"The folds file {path} holds {len(labels)} fold value(s); give at least 2 folds.")
    listed = sorted((by_id[case_id] for case_id in folds_of), key=lambda c: c.case_id)
    folds = []
    for index, label in enumerate(labels):
        test = [case for case in listed if folds_of[case.case_id] == label]
        rest = [case for case in listed if folds_of[case.case_id] != label]
        train, val = _carve_validation(rest, val_fraction, seed)
        folds.append(Fold(index, _ids(train), _ids(val), _ids(test)))
    parameters = {
        "file": str(Path(path).resolve()),
        "fold_values": labels,  # fold K is the K-th smallest value
        "val_fraction": val_fraction,
        "n_cases_not_in_file": len(by_id) - len(listed),
    }
    return Splits("folds-file", seed, parameters, tuple(folds))


def training_fold(
    cases: list[Case],
    *,
    fold: int | None,
    folds: int,
    split_seed: int,
    val_fraction: float,
    split_file: Path | None = None,
    select_on_test_fold: bool = False,
) -> tuple[Splits, Fold]:
    """The split `mafm3 train` uses and its fold `fold`: the one in `split_file` (`--folds-file`, or the saved
    split of a resumed run), else a `k = folds` split when a fold is asked for, else a hold-out (fold 0).
    Refuses folds that do not exist, training cases these cases lack, and test cases that overlap training.

    select_on_test_fold: the authors' selection (method-spec G2): the fold's validation cases train too, and
    the returned fold validates (selects) on its test cases; the returned `Splits` stay as made."""
    if split_file is not None:
        splits = load_split_file(split_file, cases, val_fraction=val_fraction, seed=split_seed)
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
    if select_on_test_fold:
        if not chosen.test_ids:
            raise MAFM3Error("--select-on-test-fold selects on a test fold: choose one with --fold K.")
        train_ids = _ids_of(chosen.train_ids + chosen.val_ids)
        chosen = Fold(chosen.index, train_ids, chosen.test_ids, chosen.test_ids)
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
    return _ids_of(c.case_id for c in cases)


def _ids_of(case_ids) -> tuple[str, ...]:
    return tuple(sorted(case_ids))
