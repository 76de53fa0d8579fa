"""Small volume nodes with known, deliberately awkward geometry (oblique, anisotropic), for the tests."""

from __future__ import annotations

import numpy as np
import slicer


def rotation_about_z(degrees: float) -> np.ndarray:
    """(3, 3) rotation about the superior axis: an oblique but otherwise ordinary scan direction."""
    angle = np.radians(degrees)
    return np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )


def ras_matrix(axes: np.ndarray, spacing_mm, origin_ras) -> np.ndarray:
    """(4, 4) IJK-to-RAS matrix: columns = axis directions (RAS) x spacing; last column = origin (RAS)."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(axes, dtype=float) @ np.diag(spacing_mm)
    matrix[:3, 3] = origin_ras
    return matrix


def volume_node(scene, voxels_zyx: np.ndarray, ijk_to_ras: np.ndarray, name: str):
    """A scalar volume node in `scene` with these voxels ((z, y, x) array) and this IJK-to-RAS matrix."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, voxels_zyx)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    return node
