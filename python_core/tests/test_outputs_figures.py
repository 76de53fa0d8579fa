"""Report figures: planes through the largest lesion, upright and to scale whatever the CT's orientation.

Oracle: a phantom defined in physical LPS mm around (0, 0, 0) — body, spine posterior, GTVp left-anterior
(an ellipsoid 1.5× taller than wide), GTVn on the right — sampled onto CT grids of different orientations;
where a structure must appear follows from the radiological display convention, not from the code.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.image import imread

from mafm3.outputs.figures import (
    PLANES,
    largest_lesion_centre_lps,
    plane_grid,
    render_planes_png,
    render_survival_png,
    sample_plane,
    survival_figure,
)
from mafm3.results import GTVN, GTVP, PrognosisResult

GTVP_CENTRE_LPS = np.array([20.0, -12.0, -5.0])
GTVP_RADII_MM = np.array([10.0, 10.0, 15.0])
GTVN_CENTRE_LPS = np.array([-25.0, -5.0, -5.0])
LPS = np.eye(3)
OBLIQUE_FLIPPED = np.array(sitk.VersorTransform((0.2, 0.1, 1.0), 0.5).GetMatrix()).reshape(3, 3) @ np.diag(
    [-1.0, 1.0, -1.0]
)


def _grid_points(direction, spacing, size_xyz) -> tuple[sitk.Image, np.ndarray]:
    """An image grid centred on LPS (0, 0, 0) and the physical point of each voxel, (z, y, x, 3)."""
    direction = np.asarray(direction, dtype=float)
    origin = -direction @ np.diag(spacing) @ (np.array(size_xyz) - 1) / 2
    image = sitk.Image(size_xyz, sitk.sitkUInt8)
    image.SetSpacing(spacing)
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin(origin.tolist())
    k, j, i = np.meshgrid(*(np.arange(n) for n in reversed(size_xyz)), indexing="ij")
    return image, origin + np.stack([i, j, k], axis=-1) @ (direction @ np.diag(spacing)).T


def _on(grid: sitk.Image, array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(grid)
    return image


def _phantom(direction=LPS) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """(CT in HU, labels, PET in SUV on its own coarser axial grid)."""
    grid, points = _grid_points(direction, (1.2, 1.0, 2.0), (96, 80, 40))
    x, y, z = np.moveaxis(points, -1, 0)
    body = ((x / 45) ** 2 + (y / 30) ** 2 <= 1) & (z < 20)
    hu = np.where(body, 40, -1000).astype(np.int16)
    hu[(x**2 + (y - 20) ** 2 <= 49) & body] = 700
    labels = np.zeros(x.shape, dtype=np.uint8)
    labels[(((points - GTVP_CENTRE_LPS) / GTVP_RADII_MM) ** 2).sum(-1) <= 1] = GTVP.label
    labels[np.linalg.norm(points - GTVN_CENTRE_LPS, axis=-1) <= 5] = GTVN.label
    pet_grid, pet_points = _grid_points(np.eye(3), (3.0, 3.0, 3.0), (40, 30, 30))
    suv = 1 + 12 * np.exp(-(np.linalg.norm(pet_points - GTVP_CENTRE_LPS, axis=-1) ** 2) / 60)
    return _on(grid, hu), _on(grid, labels), _on(pet_grid, suv.astype(np.float32))


def test_largest_lesion_centre_is_the_centroid_of_the_biggest_connected_component():
    grid, points = _grid_points(OBLIQUE_FLIPPED, (0.9, 1.3, 2.0), (30, 24, 14))
    labels = np.zeros(points.shape[:-1], dtype=np.uint8)
    labels[2:6, 3:9, 4:12] = GTVP.label  # 192 voxels, touching the 96 GTVn voxels below: one component
    labels[6:8, 3:9, 4:12] = GTVN.label
    labels[9:13, 12:18, 14:24] = GTVP.label  # 240 voxels: a separate component, bigger than either part alone
    joined = np.zeros_like(labels, dtype=bool)
    joined[2:8, 3:9, 4:12] = True

    centre = largest_lesion_centre_lps(_on(grid, labels))

    np.testing.assert_allclose(centre, points[joined].mean(axis=0), atol=1e-6)


def test_no_lesion_has_no_centre():
    grid, _ = _grid_points(np.eye(3), (1.0, 1.0, 1.0), (8, 8, 8))
    assert largest_lesion_centre_lps(grid) is None


@pytest.mark.parametrize("direction", [LPS, OBLIQUE_FLIPPED], ids=["lps", "oblique-flipped"])
def test_planes_are_upright_radiological_and_to_scale_for_any_ct_orientation(direction):
    ct, labels, _ = _phantom(direction)
    # (right, down) physical offsets (mm) of GTVp from the image centre = the phantom centre (0, 0, 0):
    # axial: patient's left to the right, anterior up; coronal: left to the right, superior up;
    # sagittal: posterior to the right (anterior on the left), superior up.
    expected_offsets_mm = {"axial": (20.0, -12.0), "coronal": (20.0, 5.0), "sagittal": (-12.0, 5.0)}
    expected_size_mm = {"axial": (20.0, 20.0), "coronal": (20.0, 30.0), "sagittal": (20.0, 30.0)}
    for plane in PLANES:
        grid = plane_grid(ct, plane, tuple(GTVP_CENTRE_LPS))
        mask = sample_plane(labels, grid, labels=True) == GTVP.label
        spacing = grid.GetSpacing()[0]
        rows, columns = np.nonzero(mask)
        height, width = mask.shape
        offset = ((columns.mean() - (width - 1) / 2) * spacing, (rows.mean() - (height - 1) / 2) * spacing)
        np.testing.assert_allclose(offset, expected_offsets_mm[plane.name], atol=1.5, err_msg=plane.name)
        size = ((np.ptp(columns) + 1) * spacing, (np.ptp(rows) + 1) * spacing)
        np.testing.assert_allclose(size, expected_size_mm[plane.name], atol=3.0, err_msg=plane.name)


def _near(rgb: np.ndarray, colour, tolerance=0.04) -> np.ndarray:
    return np.all(np.abs(rgb - np.asarray(colour)) <= tolerance, axis=-1)


def test_ct_overlay_png_shows_grey_anatomy_and_both_segment_colours(tmp_path):
    ct, labels, _ = _phantom()
    centre = largest_lesion_centre_lps(labels)
    with_segments = imread(
        render_planes_png(tmp_path / "ct.png", ct, centre, labels=labels, segments=[GTVP, GTVN])
    )[..., :3]
    bare = imread(render_planes_png(tmp_path / "bare.png", ct, centre))[..., :3]

    soft_tissue_grey = (40 + 160) / 400  # 40 HU in the W400/L40 window
    assert _near(with_segments, [soft_tissue_grey] * 3, 0.02).sum() > 1000
    assert _near(with_segments, GTVP.color).sum() > 20
    assert _near(with_segments, GTVN.color).sum() > 5
    assert _near(bare, GTVP.color).sum() == 0
    assert _near(bare, GTVN.color).sum() == 0


def test_pet_ct_png_shows_hot_uptake_over_the_lesion(tmp_path):
    ct, labels, pet = _phantom(OBLIQUE_FLIPPED)
    image = imread(render_planes_png(tmp_path / "petct.png", ct, tuple(GTVP_CENTRE_LPS), pet=pet))[..., :3]
    hot = (image[..., 0] > 0.9) & (image[..., 1] > 0.4) & (image[..., 2] < 0.35)
    assert hot.sum() > 50


def test_survival_png_is_a_non_trivial_plot(tmp_path):
    times = [0.0, 180.0, 365.0, 730.0, 1095.0, 1825.0, 2190.0]
    survival = [1.0, 0.92, 0.85, 0.7, 0.62, 0.5, 0.48]
    prognosis = PrognosisResult(
        0.8, "high", times, survival, {1: 0.85, 2: 0.7, 3: 0.62, 5: 0.5}, "rfs", "1.0"
    )
    image = imread(render_survival_png(prognosis, tmp_path / "survival.png"))[..., :3]
    assert image.std() > 0.05
    assert _near(image, (0.839, 0.153, 0.157), 0.05).sum() > 20  # the red 1/2/3/5-year markers (tab:red)


def test_the_survival_curve_drawn_passes_through_the_json_probabilities(tmp_path):
    """One function of time: the line drawn, read at 1/2/3/5 years by linear interpolation between its
    points (what a straight line is), equals prognosis.json's numbers, which the MTLR head computed."""
    import json

    import torch

    from mafm3.model.mtlr import DAYS_PER_YEAR, survival_at, survival_curve
    from mafm3.outputs.json_io import write_prognosis_json

    bins = torch.tensor([200.0, 500.0, 900.0, 1400.0, 2300.0])  # the 5-year point lies in the last bin
    logits = torch.nn.functional.pad(torch.tensor([[0.4, -0.3, 0.9, 0.1, -0.6]]), (0, 1))
    survival = survival_curve(logits)
    years = (1, 2, 3, 5)
    at_years = survival_at(survival, bins, torch.tensor(years, dtype=torch.float32) * DAYS_PER_YEAR)
    prognosis = PrognosisResult(
        risk=1.0,
        risk_group="intermediate",
        times_days=[0.0, *bins.tolist()],
        survival=survival[0].tolist(),
        survival_at_years={y: float(p) for y, p in zip(years, at_years[0], strict=True)},
        skill_id="p",
        skill_version="1",
    )
    record = json.loads(write_prognosis_json(prognosis, tmp_path / "prognosis.json").read_text())
    line = survival_figure(prognosis).axes[0].lines[0]
    assert line.get_drawstyle() == "default"  # straight segments between the points, not steps
    curve_years, curve_survival = line.get_data()
    drawn = np.interp(years, curve_years, curve_survival)
    from_json = [record["survival_probability"][f"{y}y"] for y in years]
    np.testing.assert_allclose(drawn, from_json, atol=1e-6)  # float32 curve, float64 interpolation
    assert record["survival_curve"]["between"] == "linear"
