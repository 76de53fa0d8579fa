"""Report figures: CT and PET/CT in three planes through the largest lesion, and the survival curve (PNG).

Each plane is sampled straight from the images in physical space onto an axis-aligned LPS grid with square
pixels, so the figure is anatomically upright with the true aspect ratio whatever the scan's orientation
(oblique, flipped, anisotropic): radiological convention, the patient's right on the image's left; anterior
at the top of the axial plane, superior at the top of the coronal and sagittal planes (anterior on the left).
A PET on its own grid is sampled onto the same plane (linear), so it needs no resampling onto the CT first.
Drawn with matplotlib's `Figure` (Agg canvas): no pyplot, no global backend state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mafm3.results import PrognosisResult, SegmentSpec

CT_WINDOW_HU = (-160.0, 240.0)  # width 400, level 40
MAX_DISPLAY_PIXELS = 512  # longest side of a plane
SEGMENT_FILL_ALPHA = 0.35
PLANES_LAYOUT = {"left": 0.01, "right": 0.91, "bottom": 0.1, "top": 0.88, "wspace": 0.04}  # figure fractions
COLORBAR_BOX = (0.93, 0.18, 0.012, 0.64)  # left, bottom, width, height
OUTLINE_PIXELS = 2  # a plane of up to 512 pixels is shown at about 400: a 1-pixel line would break up
PET_MAX_ALPHA = 0.7
_AIR_HU = -1024.0
DAYS_PER_YEAR = 365.25  # as model.mtlr (not imported: the writers do not import torch)


@dataclass(frozen=True)
class Plane:
    """A display plane: LPS unit vectors shown to the right and downward, and its normal."""

    name: str
    right: tuple[float, float, float]
    down: tuple[float, float, float]
    normal: tuple[float, float, float]


PLANES = (
    Plane("axial", right=(1, 0, 0), down=(0, 1, 0), normal=(0, 0, 1)),
    Plane("coronal", right=(1, 0, 0), down=(0, 0, -1), normal=(0, 1, 0)),
    Plane("sagittal", right=(0, 1, 0), down=(0, 0, -1), normal=(-1, 0, 0)),
)


def _direction_letter(vector: tuple[float, float, float]) -> str:
    """Anatomical letter of an LPS axis direction: (1, 0, 0) -> "L", (0, 0, -1) -> "I"."""
    axis = int(np.argmax(np.abs(vector)))
    return ("LPS" if vector[axis] > 0 else "RAI")[axis]


def physical_bounds_lps(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Corners (lowest, highest) of the axis-aligned LPS box around the image's voxels, in mm."""
    size = image.GetSize()
    corners = [
        image.TransformContinuousIndexToPhysicalPoint(
            [(-0.5, n - 0.5)[bit] for bit, n in zip(bits, size, strict=True)]
        )
        for bits in np.ndindex(2, 2, 2)
    ]
    return np.min(corners, axis=0), np.max(corners, axis=0)


def largest_lesion_centre_lps(labels: sitk.Image) -> tuple[float, float, float] | None:
    """Centroid (LPS mm) of the largest connected component of all non-zero labels; None when empty."""
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(labels)
    if not statistics.GetLabels():
        return None
    # Label only inside the lesions' bounding box: a whole-CT component image would cost 4 bytes a voxel.
    boxes = np.array([statistics.GetBoundingBox(label) for label in statistics.GetLabels()])
    start = boxes[:, :3].min(axis=0)
    stop = (boxes[:, :3] + boxes[:, 3:]).max(axis=0)
    lesions = sitk.RegionOfInterest(labels, size=(stop - start).tolist(), index=start.tolist()) > 0
    components = sitk.LabelShapeStatisticsImageFilter()
    components.Execute(sitk.ConnectedComponent(lesions))
    largest = max(components.GetLabels(), key=components.GetPhysicalSize)
    return components.GetCentroid(largest)


def plane_grid(ct: sitk.Image, plane: Plane, centre_lps: tuple[float, float, float]) -> sitk.Image:
    """A one-voxel-thick reference image (W, H, 1) covering the CT's extent in `plane`, through `centre_lps`.

    Pixels are square: the CT's finest spacing, coarsened so the longest side has at most MAX_DISPLAY_PIXELS.
    """
    low, high = physical_bounds_lps(ct)
    right, down, normal = (np.array(v, dtype=float) for v in (plane.right, plane.down, plane.normal))
    width_mm, height_mm = abs(right @ (high - low)), abs(down @ (high - low))
    spacing = max(min(ct.GetSpacing()), max(width_mm, height_mm) / MAX_DISPLAY_PIXELS)
    size = (max(1, round(width_mm / spacing)), max(1, round(height_mm / spacing)))
    box_centre = (low + high) / 2
    centre = box_centre + normal * (normal @ (np.asarray(centre_lps) - box_centre))
    origin = centre - right * spacing * (size[0] - 1) / 2 - down * spacing * (size[1] - 1) / 2
    grid = sitk.Image(size[0], size[1], 1, sitk.sitkUInt8)
    grid.SetSpacing((spacing, spacing, spacing))
    grid.SetOrigin(origin.tolist())
    grid.SetDirection(np.column_stack([right, down, normal]).ravel().tolist())
    return grid


def sample_plane(
    image: sitk.Image, grid: sitk.Image, *, labels: bool = False, outside: float = 0.0
) -> np.ndarray:
    """`image` sampled on a plane grid: (H, W) float32, or uint8 with nearest neighbour for label maps."""
    if labels:
        interpolator, pixel_type = sitk.sitkNearestNeighbor, sitk.sitkUInt8
    else:
        interpolator, pixel_type = sitk.sitkLinear, sitk.sitkFloat32
    resampled = sitk.Resample(image, grid, sitk.Transform(), interpolator, outside, pixel_type)
    return sitk.GetArrayFromImage(resampled)[0]


def _draw_segments(axes, labels: np.ndarray, segments: Sequence[SegmentSpec]) -> None:
    """Translucent fill and an opaque outline (OUTLINE_PIXELS wide) in each segment's colour, as one RGBA
    image: matplotlib's contour lines cost a third of the whole report to trace and lay out."""
    overlay = np.zeros((*labels.shape, 4))
    for spec in segments:
        mask = labels == spec.label
        if mask.any():
            inner = sitk.BinaryErode(sitk.GetImageFromArray(mask.astype(np.uint8)), [OUTLINE_PIXELS] * 2)
            overlay[mask] = (*spec.color, SEGMENT_FILL_ALPHA)
            overlay[mask & ~sitk.GetArrayViewFromImage(inner).astype(bool)] = (*spec.color, 1.0)
    axes.imshow(overlay, interpolation="nearest")


def _label_edges(axes, plane: Plane, shape: tuple[int, int]) -> None:
    """Anatomical letters just inside the four edges of a plane image of `shape` (H, W)."""
    height, width = shape
    style = {"color": "yellow", "fontsize": 10}
    up, left = tuple(-v for v in plane.down), tuple(-v for v in plane.right)
    axes.text(width / 2, 0.01 * height, _direction_letter(up), ha="center", va="top", **style)
    axes.text(width / 2, 0.99 * height, _direction_letter(plane.down), ha="center", va="bottom", **style)
    axes.text(0.01 * width, height / 2, _direction_letter(left), ha="left", va="center", **style)
    axes.text(0.99 * width, height / 2, _direction_letter(plane.right), ha="right", va="center", **style)


def render_planes_png(
    path: str | Path,
    ct: sitk.Image,
    centre_lps: tuple[float, float, float],
    *,
    labels: sitk.Image | None = None,
    segments: Sequence[SegmentSpec] = (),
    pet: sitk.Image | None = None,
    title: str = "",
) -> Path:
    """Axial, coronal and sagittal planes through `centre_lps`: CT grey (W400/L40), PET hot with an
    uptake-proportional alpha when given, segments as translucent fills with contours when given."""
    grids = [plane_grid(ct, plane, centre_lps) for plane in PLANES]
    pet_planes = [sample_plane(pet, grid) for grid in grids] if pet is not None else None
    pet_max = max(max(float(p.max()) for p in pet_planes), 1e-6) if pet_planes else None
    # A fixed layout: matplotlib's constrained layout measured a fifth of the report's time.
    figure = Figure(figsize=(13, 4.8), facecolor="black")
    all_axes = figure.subplots(1, 3, gridspec_kw=PLANES_LAYOUT)
    for index, (axes, plane, grid) in enumerate(zip(all_axes, PLANES, grids, strict=True)):
        ct_plane = sample_plane(ct, grid, outside=_AIR_HU)
        axes.imshow(ct_plane, cmap="gray", vmin=CT_WINDOW_HU[0], vmax=CT_WINDOW_HU[1])
        if pet_planes is not None:
            uptake = np.clip(pet_planes[index] / pet_max, 0.0, 1.0)
            pet_image = axes.imshow(
                pet_planes[index], cmap="hot", vmin=0.0, vmax=pet_max, alpha=PET_MAX_ALPHA * uptake
            )
        if labels is not None:
            _draw_segments(axes, sample_plane(labels, grid, labels=True), segments)
        _label_edges(axes, plane, ct_plane.shape)
        axes.set_title(plane.name, color="white")
        axes.set_axis_off()
    if pet_planes is not None:
        colorbar = figure.colorbar(pet_image, cax=figure.add_axes(COLORBAR_BOX), label="PET (SUV)")
        colorbar.ax.yaxis.label.set_color("white")
        colorbar.ax.tick_params(colors="white")
    if labels is not None and segments:
        handles = [Patch(color=spec.color, label=spec.name) for spec in segments]
        figure.legend(
            handles=handles,
            loc="lower center",
            ncols=len(handles),
            facecolor="black",
            labelcolor="white",
            edgecolor="black",
        )
    figure.suptitle(title, color="white")
    figure.savefig(path, dpi=100, facecolor="black")
    return Path(path)


def survival_figure(prognosis: PrognosisResult) -> Figure:
    """S(t) over years as the curve the numbers come from: straight lines between the MTLR grid points
    [0, t_1..t_K] (S is linear in between, as `model.mtlr.survival_at` reads S(1..5 y) off it), nothing
    beyond t_K (not estimable), with the 1/2/3/5-year probabilities marked and labelled on it."""
    years = np.asarray(prognosis.times_days, dtype=float) / DAYS_PER_YEAR
    survival = np.asarray(prognosis.survival, dtype=float)
    if years[0] > 0:  # S(0) = 1 by definition
        years, survival = np.concatenate([[0.0], years]), np.concatenate([[1.0], survival])
    figure = Figure(figsize=(7, 4.2), layout="constrained")
    axes = figure.subplots()
    axes.plot(years, survival, color="tab:blue", label="recurrence-free survival S(t)")
    for year, probability in sorted(prognosis.survival_at_years.items()):
        if np.isnan(probability):
            continue
        axes.plot(year, probability, "o", color="tab:red")
        axes.annotate(
            f"{year} y: {probability:.0%}",
            (year, probability),
            textcoords="offset points",
            xytext=(4, 6),
            fontsize=9,
        )
    axes.set_xlim(0, max(years[-1], max(prognosis.survival_at_years, default=0) + 0.25))
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("time (years)")
    axes.set_ylabel("probability free of recurrence")
    axes.set_title(f"Recurrence-free survival (risk group: {prognosis.risk_group})")
    axes.grid(alpha=0.3)
    return figure


def render_survival_png(prognosis: PrognosisResult, path: str | Path) -> Path:
    """`survival_figure` saved as a PNG."""
    survival_figure(prognosis).savefig(path, dpi=100)
    return Path(path)
