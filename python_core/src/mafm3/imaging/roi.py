"""Where the head and neck is: the ROI centre from PET uptake or, without PET, from the CT body outline.

Both heuristics work in physical LPS terms — "superior" is the +S direction of the patient whatever the array
order, flips or obliquity of the image — and return an LPS point (mm). `roi_grid` then places a box of a given
physical size around that point on the model's voxel lattice.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from mafm3.errors import MAFM3Error
from mafm3.imaging.resample import Grid

BODY_HU = -500.0  # the patient's body on a CT: above this (air and lungs below, soft tissue above)


def pet_uptake_centre(
    pet: sitk.Image, superior_fraction: float = 0.25, percentile: float = 95.0
) -> np.ndarray:
    """The authors' ROI centre: centroid of the hottest PET voxels in the superior part of the volume.

    The authors (`processed_sampels.py`) take the slices with array index z >= 0.75 Z, threshold them at their
    95th percentile and use the centre of mass of the voxels above it. Here "the top 25 % of slices" is the
    most superior 25 % of the volume's extent along the patient's S axis (from its 8 corners), which equals
    the authors' slab for an axial volume stored inferior-to-superior and stays right for flipped, permuted
    or oblique ones. The centroid is unweighted (the supra-threshold voxels count equally).

    pet: (x, y, z) volume in SUV (or any uptake unit) on its own grid.
    Returns: the centre as an LPS point (mm), shape (3,).
    """
    grid = Grid.of(pet)
    values = sitk.GetArrayViewFromImage(pet)  # (z, y, x)
    in_slab = _superior_slab(grid, superior_fraction)
    slab_values = values[in_slab]
    threshold = np.percentile(slab_values, percentile)
    hot = in_slab & (values > threshold)
    if not hot.any():  # a flat slab: every voxel equals the threshold
        hot = in_slab & (values >= threshold)
    return _centroid_point(grid, hot)


def ct_body_centre(
    ct: sitk.Image, superior_fraction: float = 0.25, body_hu: float = BODY_HU, working_spacing_mm: float = 4.0
) -> np.ndarray:
    """CT-only fallback: centroid of the body in the superior part of the body.

    The body is the largest connected component of voxels above `body_hu` (air and the scanner table's thin
    foam drop out). Its most superior `superior_fraction` (25 %) along the patient's S axis (the head and
    neck in a head & neck or whole-body scan) gives the centroid. The CT is first averaged down to about
    `working_spacing_mm` voxels (SimpleITK `BinShrink`, which keeps the physical geometry), since a ROI centre
    needs no finer precision and labelling a full-resolution CT costs seconds.

    ct: (x, y, z) CT in HU. Returns: the centre as an LPS point (mm), shape (3,).
    """
    factors = [max(1, int(working_spacing_mm // spacing)) for spacing in ct.GetSpacing()]
    coarse = sitk.BinShrink(ct, factors)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(coarse > body_hu), sortByObjectSize=True)
    body = sitk.GetArrayViewFromImage(components) == 1  # (z, y, x)
    if not body.any():
        raise MAFM3Error(f"The CT shows no body (no voxels above {body_hu:g} HU): give a CT of the patient.")
    grid = Grid.of(coarse)
    superior = _superior_coordinate(grid)
    top, bottom = superior[body].max(), superior[body].min()
    in_top = body & (superior >= top - superior_fraction * (top - bottom))
    return _centroid_point(grid, in_top)


def roi_grid(grid: Grid, centre_lps, size_mm) -> tuple[Grid, tuple[int, int, int]]:
    """A box of `size_mm` (x, y, z) on `grid`'s lattice around `centre_lps`, and its start index on `grid`.

    The box holds round(size_mm / spacing) voxels per axis. It is shifted to stay inside the grid; where the
    grid is smaller than the box, the box starts at index 0 and reaches past the grid's upper end (the padding
    is filled by the resampling's default value), as the authors pad at the upper end.
    """
    box = [max(1, round(length / spacing)) for length, spacing in zip(size_mm, grid.spacing, strict=True)]
    centre = grid.point_to_index(centre_lps)
    lowest = np.floor(centre - (np.asarray(box) - 1) / 2 + 0.5)  # halves round up
    start = tuple(
        int(np.clip(first, 0, max(n - b, 0))) for first, b, n in zip(lowest, box, grid.size, strict=True)
    )
    return grid.crop(start, box), start


def centred_grid(grid: Grid, size_mm) -> tuple[Grid, tuple[int, int, int]]:
    """A box of `size_mm` (x, y, z) on `grid`'s lattice centred on the grid itself, and its start index.

    CT-CLIP's own pre-processing (`scripts/data.py`, the zero-shot crop): a symmetric centre crop where the
    grid is longer than the box and a symmetric pad where it is shorter (the start index is then negative and
    the resampling's default value fills both ends); nothing is shifted towards the body. An odd difference
    puts the extra voxel at the upper end, as a floor division of the difference does.
    """
    box = [max(1, round(length / spacing)) for length, spacing in zip(size_mm, grid.spacing, strict=True)]
    start = tuple(int((n - b) // 2) for n, b in zip(grid.size, box, strict=True))
    return grid.crop(start, box), start


def _superior_coordinate(grid: Grid) -> np.ndarray:
    """(z, y, x) float32 array of each voxel centre's S coordinate (mm): S = o_S + sum_a D[S, a] s_a i_a."""
    step = grid.matrix[2] * np.asarray(grid.spacing)  # mm of S per index step along x, y, z
    x, y, z = (np.arange(n, dtype=np.float32) * np.float32(step[a]) for a, n in enumerate(grid.size))
    return np.float32(grid.origin[2]) + z[:, None, None] + y[None, :, None] + x[None, None, :]


def _superior_slab(grid: Grid, fraction: float) -> np.ndarray:
    """(z, y, x) mask of the voxels centred in the most superior `fraction` of the grid's S extent."""
    corners_s = grid.corners()[:, 2]
    top, bottom = corners_s.max(), corners_s.min()
    return _superior_coordinate(grid) >= top - fraction * (top - bottom)


def _centroid_point(grid: Grid, mask_zyx: np.ndarray) -> np.ndarray:
    """LPS point of the centroid of a (z, y, x) mask (index -> point is affine, so centroids commute)."""
    z, y, x = np.nonzero(mask_zyx)
    return grid.index_to_point((x.mean(), y.mean(), z.mean()))
