"""Voxel grids and random fields of the demo generator: exact geometry and a unit-variance field.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

import numpy as np
import SimpleITK as sitk

from mafm3.demo.grid import Grid, sample_field, smooth_field

GRID = Grid(origin_mm=(-30.5, 12.25, -400.0), spacing_mm=(4.0, 3.5, 3.27), size=(5, 4, 3))


def _centres(grid: Grid) -> np.ndarray:
    """Physical voxel centres (Z, Y, X, 3) computed by SimpleITK, an independent oracle."""
    image = grid.image(np.zeros(grid.shape_zyx, np.float32))
    return np.array(
        [[[image.TransformIndexToPhysicalPoint((i, j, k)) for i in range(grid.size[0])]
          for j in range(grid.size[1])] for k in range(grid.size[2])]
    )  # fmt: skip


def test_subdivided_voxels_tile_each_voxel_so_their_mean_centre_is_its_centre():
    fine = GRID.subdivided(2)
    z, y, x = GRID.shape_zyx
    pooled = _centres(fine).reshape(z, 2, y, 2, x, 2, 3).mean(axis=(1, 3, 5))
    assert np.allclose(pooled, _centres(GRID))
    assert np.allclose(np.array(fine.spacing_mm) * 2, GRID.spacing_mm)


def test_axes_and_blocks_give_patient_frame_coordinates_of_exactly_the_voxels_in_the_box():
    frame = (10.0, -5.0, -380.0)
    centres = _centres(GRID) - np.array(frame)
    slices, block = GRID.block(frame, low_mm=(-30.0, 15.0, -20.0), high_mm=(-20.0, 25.0, 0.0))
    inside = np.all((centres >= (-30.0, 15.0, -20.0)) & (centres <= (-20.0, 25.0, 0.0)), axis=-1)
    assert inside.sum() == inside[slices].sum() > 0
    x, y, z = block.axes(frame)
    assert np.allclose(np.stack(np.broadcast_arrays(x, y, z), axis=-1), centres[slices])
    assert GRID.block(frame, (500.0, 0.0, 0.0), (600.0, 1.0, 1.0)) is None


def test_smooth_field_has_unit_variance_and_samples_back_on_its_own_nodes():
    field = smooth_field(np.random.default_rng(0), (0.0, 0.0, 0.0), (40.0, 30.0, 20.0), sigma_mm=4.0)
    values = sitk.GetArrayFromImage(field)
    assert abs(values.mean()) < 1e-5 and abs(values.std() - 1) < 1e-5
    assert (
        values[:, :, 1:].std() > 0
        and np.corrcoef(values[..., :-1].ravel(), values[..., 1:].ravel())[0, 1] > 0.8
    )
    nodes = Grid(field.GetOrigin(), field.GetSpacing(), field.GetSize())
    assert np.allclose(sample_field(field, nodes), values, atol=1e-5)
