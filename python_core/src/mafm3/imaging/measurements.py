"""Lesion measurements on the CT grid: per segment and per connected component (each node on its own).

Definitions (research/clinical-outputs.md; the README's PET section states them for users):

- `volume_ml`: voxel count x voxel volume of the segment (or component) on the CT grid.
- `hu_mean`: mean CT number (HU) over its voxels.
- `suv_max`, `suv_mean`: highest and mean SUV (body weight) over its voxels, read from the PET resampled
  linearly onto the CT grid (not on the PET's own grid, as a vendor workstation reads it).
- `suv_peak` (PERCIST 1.0, Wahl et al. 2009): the highest mean SUV in a 1 ml sphere (radius 6.20 mm; voxel
  centres within that radius, on the CT grid) whose centre is a voxel of the lesion; the sphere itself may
  reach beyond the lesion. Near the image's edge the mean is over the sphere's voxels inside the image.
- `mtv_ml`: metabolic tumour volume = the segmented volume (no SUV threshold); `tlg` = suv_mean x mtv_ml.
- `uncertainty_percent`: mean of the uncertainty map (normalised entropy, %) over the voxels.
- `centroid_lps`: physical centroid of the voxels, LPS mm.

SUV numbers are None (absent, never zero) without a PET. Components are 26-connected (voxels sharing a
face, an edge or a corner belong together), numbered by decreasing volume.

SimpleITK's label filters compute the statistics; only the PERCIST sphere mean is written here (a normalised
convolution with a voxelised sphere, scipy), since no library offers SUVpeak.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict

import numpy as np
import SimpleITK as sitk
from scipy import signal

from mafm3.imaging.resample import resample_onto
from mafm3.results import LesionMeasurements, SegmentMeasurements

PEAK_SPHERE_ML = 1.0
PEAK_SPHERE_RADIUS_MM = (3 * PEAK_SPHERE_ML * 1000 / (4 * math.pi)) ** (1 / 3)  # 6.2035 mm
MM3_PER_ML = 1000.0


def peak_sphere_offsets(spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Boolean kernel (z, y, x) of the voxels whose centres lie within PEAK_SPHERE_RADIUS_MM of the centre."""
    half = [int(PEAK_SPHERE_RADIUS_MM // s) for s in spacing_mm[::-1]]  # (z, y, x)
    axes = [np.arange(-h, h + 1) * s for h, s in zip(half, spacing_mm[::-1], strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return z**2 + y**2 + x**2 <= PEAK_SPHERE_RADIUS_MM**2


def sphere_mean(suv_zyx: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Mean SUV in the PERCIST 1 ml sphere centred on each voxel of `suv_zyx` (z, y, x), float64; the mean is
    over the sphere's voxels inside the array."""
    # The sphere is symmetric, so correlation = convolution; by FFT, as a sub-millimetre grid makes the
    # sphere thousands of voxels (direct correlation measured 4x slower on the demo study's 1 mm grid).
    kernel = peak_sphere_offsets(spacing_mm).astype(np.float64)
    total = signal.fftconvolve(suv_zyx.astype(np.float64), kernel, mode="same")
    count = signal.fftconvolve(np.ones(suv_zyx.shape), kernel, mode="same")
    return total / np.rint(count)  # voxel counts are integers: FFT round-off taken out


def suv_on_grid(suv: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """The PET (SUV) sampled linearly at the voxel centres of `grid` (float32; 0 outside the PET)."""
    return resample_onto(sitk.Cast(suv, sitk.sitkFloat32), grid, "linear", 0.0)


def bounding_region(labels: sitk.Image, margin_xyz: Iterable[int]) -> tuple[list[int], list[int]] | None:
    """(index, size) in (x, y, z) of the box around every non-zero label, grown by `margin_xyz` and clipped to
    the image; None when there is no label."""
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(labels != 0)
    if not statistics.HasLabel(1):
        return None
    box = statistics.GetBoundingBox(1)  # (x0, y0, z0, size_x, size_y, size_z)
    start = [max(0, box[a] - m) for a, m in zip(range(3), margin_xyz, strict=True)]
    stop = [
        min(n, box[a] + box[a + 3] + m)
        for a, n, m in zip(range(3), labels.GetSize(), margin_xyz, strict=True)
    ]
    return start, [b - a for a, b in zip(start, stop, strict=True)]


def _intensity_statistics(regions: sitk.Image, image: sitk.Image) -> sitk.LabelIntensityStatisticsImageFilter:
    statistics = sitk.LabelIntensityStatisticsImageFilter()
    statistics.Execute(regions, sitk.Cast(image, sitk.sitkFloat64))
    return statistics


def _measure_regions(
    regions: sitk.Image,
    ct: sitk.Image,
    suv: sitk.Image | None,
    peak: sitk.Image | None,
    uncertainty: sitk.Image | None,
) -> dict[int, LesionMeasurements]:
    """Measurements of every non-zero region value of `regions` (a label image on the crop's grid)."""
    hu = _intensity_statistics(regions, ct)
    pet = _intensity_statistics(regions, suv) if suv is not None else None
    peaks = _intensity_statistics(regions, peak) if peak is not None else None
    entropy = _intensity_statistics(regions, uncertainty) if uncertainty is not None else None
    measured = {}
    for value in hu.GetLabels():
        volume_ml = hu.GetPhysicalSize(value) / MM3_PER_ML
        lesion = LesionMeasurements(
            volume_ml=volume_ml,
            hu_mean=hu.GetMean(value),
            centroid_lps=tuple(float(v) for v in hu.GetCentroid(value)),
        )
        if pet is not None:
            lesion.suv_max = pet.GetMaximum(value)
            lesion.suv_mean = pet.GetMean(value)
            lesion.suv_peak = peaks.GetMaximum(value)
            lesion.mtv_ml = volume_ml
            lesion.tlg = lesion.suv_mean * volume_ml
        if entropy is not None:
            lesion.uncertainty_percent = entropy.GetMean(value)
        measured[value] = lesion
    return measured


def measure_lesions(
    labels: sitk.Image,
    label_values: Iterable[int],
    ct: sitk.Image,
    suv: sitk.Image | None = None,
    uncertainty: sitk.Image | None = None,
) -> dict[int, SegmentMeasurements | None]:
    """Measurements of each label value in `label_values` (None for a value with no voxel).

    labels: uint8 label map; ct (HU) and uncertainty (%, optional) on the same grid (the CT's); suv: the
    PET in SUV body weight on its own grid (optional), resampled linearly onto the CT grid here. The work is
    done inside the labels' bounding box (grown by the sphere radius for SUVpeak), never on the whole CT.
    """
    for name, image in (("ct", ct), ("uncertainty", uncertainty)):
        if image is not None and image.GetSize() != labels.GetSize():
            raise ValueError(
                f"`{name}` is {image.GetSize()} voxels, `labels` {labels.GetSize()}: use one grid"
            )
    margin = [math.ceil(PEAK_SPHERE_RADIUS_MM / s) for s in labels.GetSpacing()]
    region = bounding_region(labels, margin)
    measured: dict[int, SegmentMeasurements | None] = {value: None for value in label_values}
    if region is None:
        return measured
    crop = {
        name: sitk.RegionOfInterest(image, size=region[1], index=region[0])
        for name, image in (("labels", labels), ("ct", ct), ("uncertainty", uncertainty))
        if image is not None
    }
    for name in ("ct", "uncertainty"):  # the same grid, up to header rounding (a file's float32 origin)
        if name in crop:
            crop[name].CopyInformation(crop["labels"])
    if suv is not None:
        crop["suv"] = suv_on_grid(suv, crop["labels"])
    peak = None
    if suv is not None:
        peak_zyx = sphere_mean(sitk.GetArrayViewFromImage(crop["suv"]), labels.GetSpacing())
        peak = sitk.GetImageFromArray(peak_zyx)
        peak.CopyInformation(crop["suv"])
    images = (crop["ct"], crop.get("suv"), peak, crop.get("uncertainty"))
    segments = _measure_regions(crop["labels"], *images)
    for value in measured:
        if value not in segments:
            continue
        components = sitk.ConnectedComponent(crop["labels"] == value, True)
        components = sitk.RelabelComponent(components, sortByObjectSize=True)
        by_component = _measure_regions(components, *images)
        measured[value] = SegmentMeasurements(
            **asdict(segments[value]), components=[by_component[k] for k in sorted(by_component)]
        )
    return measured
