"""Lesion measurements against volumes with known answers (float64 statistics; tolerances say why).

Oracles: a uniform sphere (every number is its SUV, its volume is its voxel count), two nodes of different
uptake (each component keeps its own numbers), and a linear SUV ramp, whose mean over a symmetric sphere
equals the value at its centre (so SUVpeak = the ramp at the lesion voxel furthest up the ramp).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from mafm3.imaging.measurements import PEAK_SPHERE_RADIUS_MM, measure_lesions, peak_sphere_offsets

SPACING = (1.0, 1.25, 2.0)  # (x, y, z) mm, anisotropic on purpose
OBLIQUE = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # axes permuted and flipped


def _image(array_zyx: np.ndarray, origin=(10.0, -20.0, 30.0), direction=OBLIQUE) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(SPACING)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def _ball(shape_zyx, centre_zyx, radius_mm) -> np.ndarray:
    z, y, x = np.indices(shape_zyx, dtype=float)
    dz, dy, dx = ((a - c) * s for a, c, s in zip((z, y, x), centre_zyx, SPACING[::-1], strict=True))
    return dz**2 + dy**2 + dx**2 <= radius_mm**2


def test_uniform_sphere_gives_its_suv_everywhere_and_its_voxel_volume():
    shape = (30, 40, 50)
    lesion = _ball(shape, (15, 20, 25), 15.0)
    suv = np.where(lesion, 5.0, 1.0)
    ct = np.where(lesion, 40.0, -100.0)
    labels = lesion.astype(np.uint8)
    measured = measure_lesions(_image(labels), [1, 2], _image(ct), _image(suv))

    voxel_ml = np.prod(SPACING) / 1000
    segment = measured[1]
    assert measured[2] is None  # no GTVn voxel
    assert abs(segment.volume_ml - lesion.sum() * voxel_ml) < 1e-9  # float products of the spacing
    assert segment.suv_max == 5.0 and segment.suv_mean == 5.0 and segment.hu_mean == 40.0
    # The 1 ml sphere (radius 6.2 mm) fits inside the 15 mm lesion, where every voxel has SUV 5.
    assert abs(segment.suv_peak - 5.0) < 1e-12
    assert segment.mtv_ml == segment.volume_ml
    assert abs(segment.tlg - 5.0 * segment.volume_ml) < 1e-9
    assert len(segment.components) == 1
    centre_lps = _image(labels).TransformContinuousIndexToPhysicalPoint((25, 20, 15))
    np.testing.assert_allclose(segment.components[0].centroid_lps, centre_lps, atol=1e-6)


def test_two_nodes_are_measured_apart_and_the_segment_pools_them():
    shape = (30, 40, 60)
    small = _ball(shape, (15, 20, 15), 7.0)
    large = _ball(shape, (15, 20, 42), 10.0)
    suv = np.where(small, 3.0, 0.5) + np.where(large, 7.5, 0.0)
    labels = (2 * (small | large)).astype(np.uint8)
    measured = measure_lesions(_image(labels), [1, 2], _image(np.zeros(shape)), _image(suv))

    voxel_ml = np.prod(SPACING) / 1000
    nodes = measured[2]
    np.testing.assert_allclose(
        [c.volume_ml for c in nodes.components], [large.sum() * voxel_ml, small.sum() * voxel_ml], rtol=1e-12
    )
    assert [c.suv_max for c in nodes.components] == [8.0, 3.0]
    assert [c.suv_mean for c in nodes.components] == [8.0, 3.0]
    expected_mean = (8.0 * large.sum() + 3.0 * small.sum()) / (large.sum() + small.sum())
    assert abs(nodes.suv_mean - expected_mean) < 1e-12
    assert nodes.suv_max == 8.0
    assert abs(nodes.tlg - sum(c.tlg for c in nodes.components)) < 1e-9  # TLG adds up over components
    assert measured[1] is None


def test_suv_peak_of_a_ramp_is_the_ramp_at_the_lesion_voxel_furthest_up_it():
    shape = (40, 40, 60)
    x_mm = np.arange(shape[2]) * SPACING[0]
    suv = np.broadcast_to(x_mm, shape).copy()  # SUV = x in mm along the array's last axis
    lesion = np.zeros(shape, dtype=bool)
    lesion[15:25, 15:25, 20:36] = True
    measured = measure_lesions(_image(lesion.astype(np.uint8)), [1], _image(np.zeros(shape)), _image(suv))
    # The sphere around voxel x = 35 lies inside the array (35 + 6.2 < 59), so its mean is exact.
    assert abs(measured[1].suv_peak - 35.0) < 1e-9
    assert measured[1].suv_max == 35.0


def test_without_pet_the_suv_numbers_are_absent_not_zero():
    lesion = _ball((20, 20, 20), (10, 10, 10), 6.0).astype(np.uint8)
    measured = measure_lesions(_image(lesion), [1], _image(np.full(lesion.shape, 30.0)))
    segment = measured[1]
    assert segment.hu_mean == 30.0
    record = segment.to_dict()
    for key in ("suv_max", "suv_mean", "suv_peak", "mtv_ml", "tlg"):
        assert record[key] is None and record["components"][0][key] is None


def test_the_peak_sphere_holds_about_one_millilitre():
    kernel = peak_sphere_offsets((0.5, 0.5, 0.5))
    assert abs(kernel.sum() * 0.125 / 1000 - 1.0) < 0.02  # voxelised sphere of radius 6.2 mm
    assert abs(PEAK_SPHERE_RADIUS_MM - 6.2035) < 1e-4


def test_one_hot_voxel_sets_suv_max_but_moves_suv_peak_only_by_its_share_of_the_sphere():
    shape = (30, 40, 50)
    lesion = _ball(shape, (15, 20, 25), 15.0)
    suv = np.where(lesion, 5.0, 1.0)
    suv[15, 20, 25] = 50.0
    measured = measure_lesions(_image(lesion.astype(np.uint8)), [1], _image(np.zeros(shape)), _image(suv))[1]
    # Voxel centres within 6.2035 mm on the (1, 1.25, 2) mm grid, counted here by brute force.
    offsets = np.stack(np.meshgrid(*(np.arange(-8, 9) * s for s in SPACING), indexing="ij"), -1)
    sphere_voxels = int((np.linalg.norm(offsets, axis=-1) <= 6.2035).sum())
    assert measured.suv_max == 50.0
    assert abs(measured.suv_peak - (5.0 * (sphere_voxels - 1) + 50.0) / sphere_voxels) < 1e-9
