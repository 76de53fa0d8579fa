"""Is the selected CT a CT, is the PET a PET in SUV, and do they overlap? Checked before anything runs.

Each problem is one sentence that names the volume, the value seen, and what to do, ready for the module
panel. Intensity statistics come from a strided subsample of at most about `SAMPLE_VOXELS` voxels: enough for
percentiles, and quick on a 512 x 512 x 300 CT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import slicer

from MAFM3SlicerLib.geometry import ijk_to_ras_of

SAMPLE_VOXELS = 1_000_000

# Air is about -1000 HU. A head-and-neck CT always holds air (around the head, in the airway), so its 1st
# percentile lies far below -500 HU; an MR, a PET, or CT values stored without their DICOM rescale (>= 0) do
# not.
AIR_HU = -500.0

# SUV = activity concentration / (injected dose / body weight): body tissue reads about 0.5-20 and tumours
# rarely exceed 50, so a PET in SUV has its 99th percentile far below 100. Activity concentration (Bq/mL)
# reads thousands.
MAX_SUV_99TH_PERCENTILE = 100.0

# A PET/CT skill sees the PET only where it overlaps the CT; below this fraction of the CT it sees too little.
MIN_PET_COVERAGE = 0.5

# Coverage is measured on a grid of COVERAGE_GRID^3 CT voxel centres spread over the CT's field of view.
COVERAGE_GRID = 8


@dataclass(frozen=True)
class VolumeSummary:
    """What the panel shows about one input volume."""

    name: str
    size_xyz: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    percentiles: tuple[float, float, float]  # 1st, 50th and 99th percentile of the voxel values

    def describe(self, role: str) -> str:
        size = " x ".join(str(n) for n in self.size_xyz)
        spacing = " x ".join(f"{s:.2f}" for s in self.spacing_mm)
        low, median, high = self.percentiles
        return (
            f"{role} '{self.name}': {size} voxels of {spacing} mm; "
            f"values 1st/50th/99th percentile {low:.1f} / {median:.1f} / {high:.1f}"
        )


@dataclass(frozen=True)
class StudyDescription:
    """The inputs as the checks saw them, and every problem found (empty when the study is fit to run)."""

    ct: VolumeSummary | None
    pet: VolumeSummary | None
    pet_coverage_of_ct: float | None  # fraction of the CT's field of view inside the PET's; None without both
    problems: tuple[str, ...]

    def lines(self) -> list[str]:
        lines = [summary.describe(role) for role, summary in (("CT", self.ct), ("PET", self.pet)) if summary]
        if self.pet_coverage_of_ct is not None:
            lines.append(f"The PET covers {self.pet_coverage_of_ct:.0%} of the CT's field of view.")
        return lines


def describe_study(ct_node, pet_node=None) -> StudyDescription:
    """Check a CT (required) and a PET (optional) volume node: each a 3-D greyscale volume without a parent
    transform, the CT in HU (AIR_HU), the PET in SUV (MAX_SUV_99TH_PERCENTILE) and over the CT
    (MIN_PET_COVERAGE).
    """
    problems: list[str] = []
    if ct_node is None:
        return StudyDescription(None, None, None, ("Select a CT volume.",))
    ct = _summarise(ct_node, "CT", problems)
    if ct is not None and ct.percentiles[0] > AIR_HU:
        problems.append(
            f"The CT '{ct.name}' has almost no voxel below {AIR_HU:.0f} HU (1st percentile "
            f"{ct.percentiles[0]:.1f}), so it does not look like a CT in Hounsfield units; select the CT, "
            "or load it through the DICOM module so its values are rescaled to HU."
        )
    if pet_node is None:
        return StudyDescription(ct, None, None, tuple(problems))
    if pet_node is ct_node:
        problems.append(
            f"The same volume '{ct_node.GetName()}' is selected as CT and as PET; "
            "select the study's PET as PET."
        )
        return StudyDescription(ct, None, None, tuple(problems))
    pet = _summarise(pet_node, "PET", problems)
    coverage = None
    if pet is not None:
        low, _, high = pet.percentiles
        if low <= AIR_HU:
            problems.append(
                f"The PET '{pet.name}' has values down to {low:.1f} (1st percentile), like a CT in HU; "
                "select the study's PET volume as PET."
            )
        elif high > MAX_SUV_99TH_PERCENTILE:
            problems.append(
                f"The PET '{pet.name}' reads {high:.1f} at its 99th percentile, which is activity "
                "concentration, not SUV; load the PET with the PET-DICOM extension (DICOM module), which "
                "converts it to SUV."
            )
    if ct is not None and pet is not None:
        coverage = pet_coverage_of_ct(ct_node, pet_node)
        if coverage == 0.0:
            problems.append(
                f"The PET '{pet.name}' and the CT '{ct.name}' do not overlap in space; "
                "select the PET of the same PET/CT study."
            )
        elif coverage < MIN_PET_COVERAGE:
            problems.append(
                f"The PET '{pet.name}' covers only {coverage:.0%} of the CT '{ct.name}'; select the PET of "
                "the same PET/CT study, or crop the CT to the PET's field of view."
            )
    return StudyDescription(ct, pet, coverage, tuple(problems))


def pet_coverage_of_ct(ct_node, pet_node) -> float:
    """Fraction of the CT's field of view that lies inside the PET's, in physical (RAS) space.

    Sampled at COVERAGE_GRID^3 CT voxel centres spread evenly over the CT; each is mapped CT IJK -> RAS -> PET
    IJK and counts when it falls inside the PET's voxels (half a voxel beyond the outer centres included).
    Right for oblique and flipped grids alike, because it goes through both full IJK-to-RAS matrices (parent
    transforms are not applied; `describe_study` asks for them to be hardened).
    """
    ct_size = np.array(ct_node.GetImageData().GetDimensions())
    pet_size = np.array(pet_node.GetImageData().GetDimensions())
    axes = [np.linspace(0, n - 1, COVERAGE_GRID) for n in ct_size]
    ct_ijk = np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")] + [np.ones(COVERAGE_GRID**3)])
    pet_ijk = np.linalg.inv(ijk_to_ras_of(pet_node)) @ ijk_to_ras_of(ct_node) @ ct_ijk
    inside = np.all((pet_ijk[:3] >= -0.5) & (pet_ijk[:3] <= pet_size[:, None] - 0.5), axis=0)
    return float(inside.mean())


def _summarise(node, role: str, problems: list[str]) -> VolumeSummary | None:
    """Summary of a volume fit to be checked further, or None after adding the problem that prevents it."""
    name = node.GetName()
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        problems.append(f"The {role} '{name}' holds no voxels; load it again.")
        return None
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        problems.append(
            f"The {role} '{name}' has {components} values per voxel (a colour or vector image); "
            f"select a greyscale {role}."
        )
        return None
    size = tuple(int(n) for n in image.GetDimensions())
    if min(size) < 2:
        problems.append(
            f"The {role} '{name}' is 2-D ({' x '.join(map(str, size))} voxels); select a 3-D {role}."
        )
        return None
    transform = node.GetParentTransformNode()
    if transform is not None:
        problems.append(
            f"The {role} '{name}' is under the transform '{transform.GetName()}'; harden or remove the "
            f"transform so the skill sees the {role} where you see it."
        )
    voxels = slicer.util.arrayFromVolume(node)
    step = max(1, math.ceil((voxels.size / SAMPLE_VOXELS) ** (1 / 3)))
    sample = voxels[::step, ::step, ::step]
    low, median, high = (float(p) for p in np.percentile(sample, [1, 50, 99]))
    spacing = tuple(float(s) for s in node.GetSpacing())
    return VolumeSummary(name, size, spacing, (low, median, high))
