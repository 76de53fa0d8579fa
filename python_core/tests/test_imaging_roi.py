"""ROI centres land where the phantom put the answer, whatever the array order; boxes land on the lattice.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from imaging_phantoms import (
    FLIPPED,
    OBLIQUE,
    PERMUTED,
    ct_phantom,
    make_image,
    origin_for_centre,
    pet_phantom,
    voxel_points,
)

from mafm3.errors import MAFM3Error
from mafm3.imaging.resample import Grid
from mafm3.imaging.roi import centred_grid, ct_body_centre, pet_uptake_centre, roi_grid

DIRECTIONS = {"identity": np.eye(3), "flipped": FLIPPED, "permuted": PERMUTED, "oblique": OBLIQUE}


def _size_for(direction, size_lps):
    """Image size (x, y, z) giving about `size_lps` voxels along L, P, S for this direction."""
    return tuple(size_lps[int(np.abs(np.asarray(direction)[:, axis]).argmax())] for axis in range(3))


@pytest.mark.parametrize("name", DIRECTIONS)
def test_pet_centre_is_the_superior_hot_spot_not_the_hotter_inferior_one(name):
    # 80 x 80 x 200 mm around the origin; the superior quarter is S >= 50 mm. The hot spot sits in its middle
    # (S = 75); a twice as hot spot lies inferior (S = -40). With a flipped z axis, "array index z >= 0.75 Z"
    # would be the inferior quarter and pick the distractor.
    direction = DIRECTIONS[name]
    size, spacing = _size_for(direction, (20, 20, 50)), (4.0, 4.0, 4.0)
    origin = origin_for_centre(size, spacing, direction)
    pet = pet_phantom(
        size, spacing, origin, direction, hot_lps=(6.0, -10.0, 75.0), distractor_lps=(-5, 5, -40)
    )
    np.testing.assert_allclose(pet_uptake_centre(pet), (6.0, -10.0, 75.0), atol=2.0)


@pytest.mark.parametrize("name", ["identity", "flipped", "permuted"])
def test_ct_centre_is_the_body_axis_at_the_centroid_of_its_superior_quarter(name):
    # Body: cylinder of radius 20 mm about (L, P) = (5, -8) from below the image to S = 30 mm; voxel centres
    # at S = -49, -47, ..., so the body spans S = -49..29 and its top quarter S >= 9.5, centroid S = 20.
    direction = DIRECTIONS[name]
    size, spacing = _size_for(direction, (40, 40, 50)), (2.0, 2.0, 2.0)
    origin = origin_for_centre(size, spacing, direction)
    ct = ct_phantom(size, spacing, origin, direction, axis_lp=(5.0, -8.0), s_range=(-60.0, 30.0))
    # A table behind the patient (P 20-26 mm), all along, not touching the body: it must not pull the centre.
    values = sitk.GetArrayFromImage(ct)
    posterior = voxel_points(ct)[..., 1]
    values[(posterior >= 20) & (posterior <= 26)] = 300.0
    ct = make_image(values, spacing, origin, direction)
    np.testing.assert_allclose(ct_body_centre(ct), (5.0, -8.0, 20.0), atol=2.0)


def test_ct_without_body_is_refused():
    air = make_image(np.full((20, 20, 20), -1000.0, np.float32), (2, 2, 2), (0, 0, 0), np.eye(3))
    with pytest.raises(MAFM3Error, match=r"The CT shows no body \(no voxels above -500 HU\)"):
        ct_body_centre(air)


def test_roi_box_is_centred_then_shifted_inside_and_pads_where_the_image_is_short():
    grid = Grid((100, 80, 40), (1.0, 1.0, 1.0), (10.0, 20.0, 30.0), tuple(np.eye(3).ravel()))
    centre = grid.index_to_point((50.2, 10.0, 20.0))
    box, start = roi_grid(grid, centre, (30.0, 30.0, 60.0))
    # x: 50.2 - 14.5 -> 36 (inside); y: 10 - 14.5 < 0 -> shifted to 0; z: 60 voxels > 40 -> 0, padded above
    assert start == (36, 0, 0)
    assert box.size == (30, 30, 60)
    assert (
        box.origin == (46.0, 20.0, 30.0) and box.spacing == grid.spacing and box.direction == grid.direction
    )


def test_ct_clip_crop_is_symmetric_about_the_volume_centre_cropping_or_padding_each_end_alike():
    """CT-CLIP's `data.py` crop (the `-authors` zero-shot skill): not shifted inside, not towards a body."""
    grid = Grid((100, 80, 40), (1.0, 1.0, 2.0), (10.0, 20.0, 30.0), tuple(OBLIQUE.ravel()))
    box, start = centred_grid(grid, (60.0, 60.0, 120.0))
    # x: (100 - 60) / 2 = 20 cut at each end; y: 10 at each end; z: 60 voxels > 40, 10 padded at each end
    assert box.size == (60, 60, 60) and start == (20, 10, -10)
    centre = grid.index_to_point((np.asarray(grid.size) - 1) / 2)
    np.testing.assert_allclose(box.index_to_point((np.asarray(box.size) - 1) / 2), centre, atol=1e-9)
    odd, odd_start = centred_grid(grid, (61.0, 60.0, 80.0))  # 39 more x voxels: 19 cut below, 20 above
    assert odd_start == (19, 10, 0) and odd.size == (61, 60, 40)


def test_roi_box_keeps_the_lattice_of_an_oblique_grid():
    grid = Grid((50, 60, 30), (0.75, 0.75, 1.5), (3.0, -4.0, 5.0), tuple(OBLIQUE.ravel()))
    box, start = roi_grid(grid, grid.index_to_point((20.2, 33.2, 9.2)), (15.0, 15.0, 15.0))
    # box voxel 0 is grid voxel `start`: the lattices coincide
    np.testing.assert_allclose(box.index_to_point((0, 0, 0)), grid.index_to_point(start), atol=1e-12)
    np.testing.assert_allclose(
        box.index_to_point((3, 4, 5)), grid.index_to_point(np.add(start, (3, 4, 5))), atol=1e-12
    )
    # 20 x 20 x 10 voxels from (20.2 - 9.5, 33.2 - 9.5, 9.2 - 4.5) rounded
    assert box.size == (20, 20, 10) and start == (11, 24, 5)
