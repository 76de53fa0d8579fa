"""Checks that refuse, in one sentence, inputs the skills cannot handle (rather than guessing).

Each check raises `MAFM3Error` naming what is wrong, the value seen and what to do. Intensity checks use
robust percentiles of a strided subsample (every 4th voxel along each axis), which is plenty for a 3-D
volume and keeps the checks fast on a 512 x 512 x 300 CT.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk
from scipy import ndimage, signal

from mafm3.errors import MAFM3Error
from mafm3.imaging.resample import Grid, resample_onto
from mafm3.imaging.roi import BODY_HU

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
WARN_OVERLAP_FRACTION = 0.8  # PET and CT of one PET/CT acquisition share (nearly) all of the smaller box
MAX_NON_FINITE_FRACTION = 0.01  # up to 1 % NaN/inf voxels are masked (with a warning); more are refused
BODY_SUV = 0.1  # the PET body: smoothed uptake above this (fat and lung take up 0.2-0.5 SUV, air 0)
BODY_SMOOTHING_MM = 4.0  # PET noise smoothing before the body threshold
BODY_WORKING_SPACING_MM = 4.0
BODY_SEARCH_MM = 40.0  # body outlines are fitted over shifts of up to this along each axis
BODY_DICE_MARGIN = 0.005  # a shift must improve the outline Dice by more than this to count
MAX_BODY_SHIFT_MM = 12.0  # a best-fitting shift this long or longer (three 4 mm steps) is warned


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


def replace_non_finite(image: sitk.Image, name: str, fill_value: float) -> tuple[sitk.Image, str | None]:
    """`image` (float32) with NaN/inf voxels set to `fill_value`, and a warning naming how many; refused when
    more than `MAX_NON_FINITE_FRACTION` of the voxels are not finite (the reconstruction failed).

    fill_value: what the voxel most likely was where nothing was measured (air, -1024 HU, for CT; no
    uptake, 0, for PET).
    """
    values = sitk.GetArrayViewFromImage(image)
    bad = ~np.isfinite(values)
    count = int(np.count_nonzero(bad))
    if count == 0:
        return image, None
    fraction = count / bad.size
    if fraction > MAX_NON_FINITE_FRACTION:
        raise MAFM3Error(
            f"{name} has {count:,} voxels ({100 * fraction:.1f} %) that are not numbers (NaN or infinite): "
            f"give a complete reconstruction of it."
        )
    repaired = sitk.GetImageFromArray(np.where(bad, np.float32(fill_value), values).astype(np.float32))
    repaired.CopyInformation(image)
    where = np.argwhere(bad)
    slices = f"slices {where[:, 0].min()}-{where[:, 0].max()}"
    warning = (
        f"{name} had {count:,} voxels ({100 * fraction:.3f} %, {slices}) that were not numbers (NaN or "
        f"infinite); they were set to {fill_value:g} before the model saw them."
    )
    return repaired, warning


def registration_check(ct: sitk.Image, pet: sitk.Image) -> tuple[dict, list[str]]:
    """How well PET and CT lie on each other, with a warning (one sentence each) when they seem shifted.

    Measures: the shared fraction of their boxes (`validate_overlap`, which refuses below one half), and the
    agreement of their body outlines (`body_outline_fit`): the Dice where they are, and the shift of the PET
    that would fit its outline best to the CT's. A PET registered to its CT fits best where it is.
    Returns: ({"overlap_fraction", "body_outline_dice", "best_fit_shift_mm", "misregistered"}, warnings);
    `misregistered` is true when either warning was given (the segmentation's QC flag reads it).
    """
    fraction = validate_overlap(ct, pet)
    warnings = []
    if fraction < WARN_OVERLAP_FRACTION:
        warnings.append(
            f"The PET and CT share only {100 * fraction:.0f} % of their physical extent (a PET and CT of one "
            f"acquisition share nearly all of it): check that the PET is registered to this CT."
        )
    dice, shift_mm = body_outline_fit(ct, pet)
    distance = float(np.linalg.norm(shift_mm))
    if distance >= MAX_BODY_SHIFT_MM:
        shown = ", ".join(f"{v:+.0f}" for v in shift_mm)
        warnings.append(
            f"The PET's body outline fits the CT's best when shifted by ({shown}) mm (L, P, S), not where it "
            f"is: the PET seems misregistered to the CT, so the results may be wrong; check the registration."
        )
    record = {
        "overlap_fraction": round(fraction, 4),
        "body_outline_dice": round(dice, 4),
        "best_fit_shift_mm": [round(float(v), 1) for v in shift_mm],
        "misregistered": bool(warnings),
    }
    return record, warnings


def body_outline_fit(ct: sitk.Image, pet: sitk.Image) -> tuple[float, np.ndarray]:
    """The Dice of the CT and PET body outlines as they lie, and the PET shift (mm, LPS) that fits best.

    Both bodies are drawn on one 4 mm axis-aligned grid over the two volumes: the CT body above -500 HU, the
    PET body where the uptake smoothed over 4 mm exceeds 0.1 SUV, each its largest connected component with
    holes filled slice by slice (airway and lungs belong to the body). For every shift of up to
    `BODY_SEARCH_MM` per axis, the Dice is taken only where both fields of view cover (so a shift does not
    win by sliding the cut ends of the scan apart); the four sums it needs are cross-correlations, computed
    with FFTs (scipy). Ties favour no shift.
    """
    low = np.minimum(_bounding_box(ct)[0], _bounding_box(pet)[0])
    high = np.maximum(_bounding_box(ct)[1], _bounding_box(pet)[1])
    step = BODY_WORKING_SPACING_MM
    size = tuple(int(n) for n in np.maximum(np.ceil((high - low) / step), 1))
    grid = Grid(size, (step,) * 3, tuple(float(v) for v in low + step / 2), tuple(np.eye(3).ravel()))
    ct_view = _field_of_view(ct, grid)
    pet_view = _field_of_view(pet, grid)
    ct_values = sitk.GetArrayFromImage(resample_onto(ct, grid, "linear", -1024.0))
    ct_body = _body(ct_values > BODY_HU) & ct_view
    smooth_pet = sitk.SmoothingRecursiveGaussian(pet, BODY_SMOOTHING_MM)
    pet_body = _body(sitk.GetArrayFromImage(resample_onto(smooth_pet, grid, "linear", 0.0)) > BODY_SUV)
    pet_body &= pet_view

    def correlation(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
        """c[s] = sum_x fixed(x) moving(x - s), for every shift s (zero shift at the centre index)."""
        return signal.fftconvolve(fixed.astype(np.float32), moving[::-1, ::-1, ::-1].astype(np.float32))

    shared = correlation(ct_body, pet_body)
    ct_in_pet_view = correlation(ct_body, pet_view)
    pet_in_ct_view = correlation(ct_view, pet_body)
    total = ct_in_pet_view + pet_in_ct_view
    centre = np.array(pet_body.shape) - 1  # index of the zero shift (z, y, x)
    reach = int(BODY_SEARCH_MM // step)
    window = tuple(slice(c - reach, c + reach + 1) for c in centre)
    with np.errstate(divide="ignore", invalid="ignore"):
        dice = np.where(total[window] > 0.5 * total[tuple(centre)], 2 * shared[window] / total[window], 0.0)
    at_zero = float(dice[reach, reach, reach])
    best = np.unravel_index(np.argmax(dice), dice.shape)
    if dice[best] <= at_zero + BODY_DICE_MARGIN:
        return at_zero, np.zeros(3)
    shift_zyx = (np.array(best) - reach) * step
    return at_zero, shift_zyx[::-1].astype(float)


def _field_of_view(image: sitk.Image, grid: Grid) -> np.ndarray:
    """(z, y, x) mask of the `grid` voxels inside `image`'s field of view."""
    inside = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    inside.CopyInformation(image)
    return sitk.GetArrayFromImage(resample_onto(inside, grid, "nearest", 0)).astype(bool)


def _body(mask_zyx: np.ndarray) -> np.ndarray:
    """The largest connected component (the patient, not the scanner table), its holes filled in each axial
    slice (the airway and lungs belong to the body)."""
    components, count = ndimage.label(mask_zyx)
    if count > 1:
        mask_zyx = components == np.argmax(np.bincount(components.ravel())[1:]) + 1
    return np.stack([ndimage.binary_fill_holes(plane) for plane in mask_zyx])


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
