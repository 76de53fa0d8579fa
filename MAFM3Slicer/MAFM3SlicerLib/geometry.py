"""Volume nodes <-> SimpleITK images with exact geometry.

Slicer's volume nodes place voxels in RAS (+x = Right, +y = Anterior, +z = Superior) through one 4x4
IJK-to-RAS matrix. SimpleITK, ITK's file readers and the `mafm3` core use LPS (+x = Left, +y = Posterior,
+z = Superior) with separate spacing, direction cosines and origin. The two differ by a flip of the first two
physical axes, F = diag(-1, -1, 1):

    IJK-to-RAS[:3, :3] = F · D · diag(spacing)        IJK-to-RAS[:3, 3] = F · origin

where D is the LPS direction matrix (columns = axis directions) and origin is the LPS centre of voxel
(0, 0, 0). Voxel arrays are (z, y, x) in both numpy views (`slicer.util.arrayFromVolume`,
`sitk.GetArrayFromImage`).
SimpleITK is imported inside the functions that need it, so loading the module in Slicer stays quick.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])  # its own inverse


@dataclass(frozen=True)
class LPSGeometry:
    """Where a volume's voxels lie, in SimpleITK's terms."""

    spacing_mm: tuple[float, float, float]  # (x, y, z)
    direction: tuple[float, ...]  # 3x3 row-major, columns = unit vectors of the i, j, k axes in LPS
    origin_lps: tuple[float, float, float]  # centre of voxel (0, 0, 0), mm


def ijk_to_ras_from_lps(geometry: LPSGeometry) -> np.ndarray:
    """The (4, 4) IJK-to-RAS matrix of a volume node with the given LPS geometry."""
    direction = np.reshape(geometry.direction, (3, 3))
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(geometry.spacing_mm)
    matrix[:3, 3] = LPS_TO_RAS @ np.asarray(geometry.origin_lps, dtype=float)
    return matrix


def lps_from_ijk_to_ras(ijk_to_ras: np.ndarray) -> LPSGeometry:
    """Spacing, direction and origin (LPS) of a (4, 4) IJK-to-RAS matrix; inverse of `ijk_to_ras_from_lps`."""
    scaled_direction = LPS_TO_RAS @ ijk_to_ras[:3, :3]  # = D · diag(spacing)
    spacing = np.linalg.norm(scaled_direction, axis=0)
    direction = scaled_direction / spacing
    origin = LPS_TO_RAS @ ijk_to_ras[:3, 3]
    return LPSGeometry(
        spacing_mm=tuple(float(s) for s in spacing),
        direction=tuple(float(d) for d in direction.ravel()),
        origin_lps=tuple(float(o) for o in origin),
    )


def ijk_to_ras_of(volume_node) -> np.ndarray:
    """The node's own (4, 4) IJK-to-RAS matrix (parent transforms not applied)."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def image_from_volume(volume_node):
    """A SimpleITK image with the voxels (copied) and LPS geometry of a scalar volume node."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.array(slicer.util.arrayFromVolume(volume_node)))
    geometry = lps_from_ijk_to_ras(ijk_to_ras_of(volume_node))
    image.SetSpacing(geometry.spacing_mm)
    image.SetDirection(geometry.direction)
    image.SetOrigin(geometry.origin_lps)
    return image


def update_volume_from_image(volume_node, image) -> None:
    """Replace a scalar volume node's voxels and geometry with those of a 3-D SimpleITK image."""
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"`image` must be a 3-D scalar image, got {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} components per voxel."
        )
    slicer.util.updateVolumeFromArray(volume_node, sitk.GetArrayFromImage(image))
    geometry = LPSGeometry(image.GetSpacing(), image.GetDirection(), image.GetOrigin())
    volume_node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_from_lps(geometry)))
