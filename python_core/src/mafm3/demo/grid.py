"""Axis-aligned LPS voxel grids and smooth random fields that live in physical space.

Anatomy and lesions are functions of the patient frame (millimetres, x to the patient's left, y posterior,
z superior, origin near the larynx), so the same patient can be drawn on the CT grid and on the finer grid
from which the PET is made. Random fields are SimpleITK images in physical space, sampled on any grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

Vector = tuple[float, float, float]


@dataclass(frozen=True)
class Grid:
    """Voxel centres origin + index * spacing (identity direction); sizes and vectors are (x, y, z)."""

    origin_mm: Vector
    spacing_mm: Vector
    size: tuple[int, int, int]

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return self.size[2], self.size[1], self.size[0]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / 1000.0

    def axes(self, frame_origin_mm: Vector) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patient-frame coordinates x (1, 1, X), y (1, Y, 1), z (Z, 1, 1) in mm, float32 for broadcasting."""
        x, y, z = (
            (o - f + s * np.arange(n)).astype(np.float32)
            for o, f, s, n in zip(self.origin_mm, frame_origin_mm, self.spacing_mm, self.size, strict=True)
        )
        return x[None, None, :], y[None, :, None], z[:, None, None]

    def block(
        self, frame_origin_mm: Vector, low_mm: Vector, high_mm: Vector
    ) -> tuple[tuple[slice, slice, slice], Grid] | None:
        """The voxels whose centres may lie in the patient-frame box [low, high]: (z, y, x) slices, sub-grid.

        None when the box misses the grid.
        """
        starts, stops = [], []
        for o, f, s, n, low, high in zip(
            self.origin_mm, frame_origin_mm, self.spacing_mm, self.size, low_mm, high_mm, strict=True
        ):
            starts.append(max(0, int(np.floor((low + f - o) / s))))
            stops.append(min(n, int(np.ceil((high + f - o) / s)) + 1))
            if stops[-1] <= starts[-1]:
                return None
        slices = tuple(slice(start, stop) for start, stop in zip(starts[::-1], stops[::-1], strict=True))
        origin = tuple(o + s * i for o, s, i in zip(self.origin_mm, self.spacing_mm, starts, strict=True))
        return slices, Grid(origin, self.spacing_mm, tuple(b - a for a, b in zip(starts, stops, strict=True)))

    def subdivided(self, factor: int) -> Grid:
        """The grid whose factor**3 voxels tile each voxel of this one (for voxel-integrated downsampling)."""
        spacing = tuple(s / factor for s in self.spacing_mm)
        origin = tuple(
            o - s / 2 + f / 2 for o, s, f in zip(self.origin_mm, self.spacing_mm, spacing, strict=True)
        )
        return Grid(origin, spacing, tuple(n * factor for n in self.size))

    def image(self, array_zyx: np.ndarray) -> sitk.Image:
        """A SimpleITK image of this grid holding `array_zyx` (shape (Z, Y, X))."""
        if array_zyx.shape != self.shape_zyx:
            raise ValueError(f"`array_zyx` must have shape {self.shape_zyx}, got {array_zyx.shape}")
        image = sitk.GetImageFromArray(array_zyx)
        image.SetOrigin(self.origin_mm)
        image.SetSpacing(self.spacing_mm)
        return image

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(image.GetOrigin(), image.GetSpacing(), image.GetSize())


def smooth_field(
    generator: np.random.Generator, low_mm: Vector, high_mm: Vector, sigma_mm: float
) -> sitk.Image:
    """White noise smoothed by a Gaussian of `sigma_mm`, rescaled to mean 0 and SD 1, covering a physical box.

    The noise is drawn at spacing sigma / 2 (finer detail is smoothed away anyway), so a field over a whole
    head costs little; sample it on any grid with `sample_field`.
    """
    spacing = sigma_mm / 2
    size = [int(np.ceil((h - l) / spacing)) + 3 for l, h in zip(low_mm, high_mm, strict=True)]
    noise = generator.standard_normal(size[::-1], dtype=np.float32)
    image = sitk.GetImageFromArray(noise)
    image.SetOrigin(tuple(l - spacing for l in low_mm))
    image.SetSpacing((spacing,) * 3)
    smooth = sitk.SmoothingRecursiveGaussian(image, sigma_mm)
    values = sitk.GetArrayViewFromImage(smooth)
    return (smooth - float(values.mean())) / float(values.std())


def sample_field(field: sitk.Image, grid: Grid) -> np.ndarray:
    """Linear interpolation of `field` at the voxel centres of `grid`: float32 (Z, Y, X)."""
    reference = sitk.Image(list(grid.size), sitk.sitkFloat32)
    reference.SetOrigin(grid.origin_mm)
    reference.SetSpacing(grid.spacing_mm)
    return sitk.GetArrayFromImage(sitk.Resample(field, reference, sitk.Transform(), sitk.sitkLinear, 0.0))
