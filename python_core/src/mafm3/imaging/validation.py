"""Checks that refuse, in one sentence, inputs the skills cannot handle (rather than guessing).

Each check raises `MAFM3Error` naming what is wrong, the value seen and what to do. Intensity checks use
robust percentiles of a strided subsample (every 4th voxel along each axis), which is plenty for a 3-D
volume and keeps the checks fast on a 512 x 512 x 300 CT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from mafm3.errors import MAFM3Error
from mafm3.imaging.resample import Grid

if TYPE_CHECKING:
    from mafm3.imaging.study import Study

MIN_VOXELS_PER_AXIS = 16
MAX_VOXELS_PER_AXIS = 2048
MAX_VOXELS = 1_500_000_000
MAX_SPACING_MM = 20.0
CT_AIR_PERCENTILE_MAX_HU = -400.0  # the 1st percentile must be air (or the scanner's padding) ...
CT_TISSUE_PERCENTILE_MIN_HU = -200.0  # ... and the 99th percentile must be tissue or bone
PET_NEGATIVE_TOLERANCE_SUV = 0.5  # reconstruction noise can dip slightly below zero
MIN_OVERLAP_FRACTION = 0.5


def validate_volume(image: sitk.Image, name: str) -> None:
    """A scalar 3-D volume of sensible size: 16-2048 voxels per axis, at most 1.5e9 voxels, spacing in
    (0, 20] mm.

    name: how the user knows the image ("The CT", "The PET").
    """
    dimension = image.GetDimension()
    if dimension != 3:
        raise MAFM3Error(
            f"{name} is {dimension}-D, but a 3-D volume is needed: give the whole 3-D series or file."
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise MAFM3Error(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} values per voxel (colour or vector image): "
            f"give a grey-level volume."
        )
    size, spacing = image.GetSize(), image.GetSpacing()
    if min(size) < MIN_VOXELS_PER_AXIS or max(size) > MAX_VOXELS_PER_AXIS:
        raise MAFM3Error(
            f"{name} has {size[0]} x {size[1]} x {size[2]} voxels, outside the supported "
            f"{MIN_VOXELS_PER_AXIS}-{MAX_VOXELS_PER_AXIS} per axis: give a complete, unmodified volume."
        )
    if int(np.prod(size, dtype=np.int64)) > MAX_VOXELS:
        raise MAFM3Error(
            f"{name} has {np.prod(size, dtype=np.int64):,} voxels, more than {MAX_VOXELS:,}: crop it."
        )
    if not all(0 < s <= MAX_SPACING_MM for s in spacing):
        shown = " x ".join(f"{s:g}" for s in spacing)
        raise MAFM3Error(
            f"{name} has a voxel spacing of {shown} mm, outside (0, {MAX_SPACING_MM:g}] mm: check its header."
        )


def validate_ct(ct: sitk.Image) -> None:
    """A 3-D volume whose intensities look like Hounsfield units (air near -1000 HU, tissue near 0-100 HU).

    Refuses an MR, a PET, or a CT rescaled to [0, 1] / [-1, 1] or stored without its rescale intercept.
    """
    validate_volume(ct, "The CT")
    low, high = _percentiles(ct, (1, 99))
    if low > CT_AIR_PERCENTILE_MAX_HU or high < CT_TISSUE_PERCENTILE_MIN_HU:
        raise MAFM3Error(
            f"The CT does not look like Hounsfield units (1st percentile {low:g}, 99th {high:g}; air should "
            f"be about -1000 HU and tissue about 0-100 HU): give the original CT, not an MR, a PET or a "
            f"rescaled image."
        )


def validate_pet(pet: sitk.Image) -> None:
    """A 3-D volume in SUV whose values are not negative beyond reconstruction noise."""
    validate_volume(pet, "The PET")
    (low,) = _percentiles(pet, (1,))
    if low < -PET_NEGATIVE_TOLERANCE_SUV:
        raise MAFM3Error(
            f"The PET has negative values (1st percentile {low:g} SUV): give a PET in SUV or Bq/ml, not a CT "
            f"or a normalised image."
        )


def validate_overlap(ct: sitk.Image, pet: sitk.Image) -> float:
    """PET and CT must share at least half of the smaller one's physical box; returns the shared fraction.

    The boxes are the axis-aligned LPS bounding boxes of each volume's 8 outer corners.
    """
    ct_low, ct_high = _bounding_box(ct)
    pet_low, pet_high = _bounding_box(pet)
    shared = np.prod(np.clip(np.minimum(ct_high, pet_high) - np.maximum(ct_low, pet_low), 0, None))
    smaller = min(np.prod(ct_high - ct_low), np.prod(pet_high - pet_low))
    fraction = float(shared / smaller)
    if fraction < MIN_OVERLAP_FRACTION:
        raise MAFM3Error(
            f"The PET and CT share only {100 * fraction:.0f} % of their physical extent: give a PET and CT "
            f"of the same study, with their original positions (origin and direction)."
        )
    return fraction


def require_pet(study: Study, skill_name: str, alternative: str | None = None) -> None:
    """Refuse a PET/CT skill when the study has no PET; `alternative` names a CT-only skill to suggest."""
    if study.pet is None:
        instead = (
            f", or run the CT-only skill '{alternative}'" if alternative else ", or choose a CT-only skill"
        )
        raise MAFM3Error(f"Skill '{skill_name}' needs a PET volume and none was given; give a PET{instead}.")


def _percentiles(image: sitk.Image, percentiles: tuple[float, ...]) -> list[float]:
    sample = sitk.GetArrayViewFromImage(image)[::4, ::4, ::4]
    return [float(v) for v in np.percentile(sample, percentiles)]


def _bounding_box(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    corners = Grid.of(image).corners()
    return corners.min(axis=0), corners.max(axis=0)
