"""Cases in model space: a case read as `mafm3 run` reads a study, preprocessed once and cached on disk.

Training, validation and evaluation all start from `case_study`, so a skill learns from the same arrays that
inference later gives it: the CT, the PET when the case has one (HECKTOR ships PET already in SUV), and the
clinical record. `CachedCases` keeps each case's model-space arrays in a `CaseCache`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mafm3.imaging.preprocess import PreprocessingConfig
from mafm3.imaging.study import Study, load_study
from mafm3.progress import ProgressCallback, silent_progress
from mafm3.training.datasets import Case, CaseCache, Cohort


def case_study(case: Case) -> Study:
    """The case as a `Study`: CT in HU, PET in SUV (dataset convention) when present, clinical record."""
    study = load_study(case.ct, case.pet, pet_units="suv")
    return replace(study, clinical=case.clinical)


def model_spacing(config: PreprocessingConfig) -> tuple[float, float, float]:
    """The voxel spacing (mm) along the model array's axes (T, H, W), from `spacing_mm` (x, y, z)."""
    return tuple(float(config.spacing_mm["xyz".index(axis)]) for axis in config.axis_order)


def dataset_record(cohort: Cohort, cases: list[Case]) -> dict:
    """Provenance of the cases used: the dataset's path and a sha256 of their list (ids, file names and
    sizes, endpoints), which changes when a case is added, removed or edited."""
    listing = [
        [
            case.case_id,
            [[path.name, path.stat().st_size] for path in case.files()],
            case.rfs_days,
            case.relapse,
        ]
        for case in cases
    ]
    return {
        "path": str(Path(cohort.source).resolve()),
        "layout": cohort.layout,
        "n_cases": len(cases),
        "case_list_sha256": hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest(),
    }


@dataclass
class CachedCases:
    """Cases whose model-space arrays come from `cache` under `key`, computed by `preprocess` on a miss."""

    cases: list[Case]
    cache: CaseCache
    key: Mapping
    preprocess: Callable[[Case], Mapping[str, np.ndarray]]

    def __len__(self) -> int:
        return len(self.cases)

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        return self.cache.get_or_create(self.cases[index], self.key, self.preprocess)

    def prepare(self, ranks, progress: ProgressCallback = silent_progress) -> None:
        """Preprocess the cases not cached yet, shared out over the ranks (`trainer.Ranks`), then wait."""
        mine = ranks.shard(self.cases)
        for done, (index, case) in enumerate(mine, start=1):
            self.arrays(index)
            if ranks.is_main:
                progress("preprocess", done / len(mine), f"case {case.case_id} ({done} of {len(mine)})")
        ranks.barrier()
