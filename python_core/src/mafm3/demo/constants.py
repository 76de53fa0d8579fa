"""Constants of the demo generator that the CLI needs without importing numpy or SimpleITK."""

from __future__ import annotations

from dataclasses import dataclass

DEMO_NOTICE = "demo - synthetic data, not for clinical use"
CASES_PER_COHORT_SEED = 100_000  # case i of cohort seed s has study seed s * CASES_PER_COHORT_SEED + i


@dataclass(frozen=True)
class StudySize:
    ct_size: tuple[int, int, int]  # (x, y, z) voxels
    ct_spacing_mm: tuple[float, float, float]
    lowest_slice_mm: float  # patient-frame height of the first CT slice (0 = glottis)


SIZES = {
    "tiny": StudySize((96, 96, 64), (2.5, 2.5, 4.0), -95.0),  # for tests: the head and neck, coarsely
    "small": StudySize((192, 192, 128), (1.25, 1.25, 2.0), -95.0),  # thoracic inlet to the brain base
    "realistic": StudySize((512, 512, 200), (0.9765625, 0.9765625, 2.0), -205.0),  # upper chest to the vertex
}
