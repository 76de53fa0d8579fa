"""Volume nodes <-> image files (.nrrd, .nii.gz, ...) through Slicer's own MRML storage nodes.

These files are how volumes cross into the `mafm3` worker process and how its results come back. Slicer's
`slicer.util.loadVolume`/`saveNode` would do the same but need the Slicer application; a
`vtkMRMLVolumeArchetypeStorageNode` does not, so the same code runs in Slicer and under `slicer-core`.

Geometry: NRRD stores spacing, directions and origin as float64, so a NRRD round trip is exact. NIfTI stores
them as float32 (the sform): expect about 1e-7 relative error there, and prefer NRRD for exchange files.
Slicer's reader makes a left-handed voxel grid (direction determinant -1) right-handed by reversing the slice
order: every voxel keeps its physical position, but its index changes. Compare such volumes in space (resample
onto one grid), not index by index.
"""

from __future__ import annotations

from pathlib import Path

import slicer

# File suffixes the archetype storage node writes; it refuses others by returning 0.
WRITABLE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def volume_suffix(path: str | Path) -> str:
    """The file-type suffix of a volume path, counting `.nii.gz` as one suffix."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def write_volume(volume_node, path: str | Path, compress: bool = False) -> Path:
    """Write a scalar volume node's voxels and geometry to `path`; the format follows the suffix.

    Compression is off by default: exchange files are written and read once, and gzip would cost more time
    than the disk it saves. The node is not tied to the file afterwards (its storage node is left alone).
    """
    path = Path(path)
    if volume_suffix(path) not in WRITABLE_SUFFIXES:
        raise ValueError(f"`path` must end in one of {', '.join(WRITABLE_SUFFIXES)}, got '{path.name}'.")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(compress)
    if not storage.WriteData(volume_node):
        raise OSError(
            f"Could not write the volume '{volume_node.GetName()}' to {path}; check the folder exists."
        )
    return path


def read_volume(path: str | Path, scene, name: str | None = None):
    """A new scalar volume node in `scene` with the voxels and geometry of the image file at `path`.

    The node gets a display node (so Slicer shows it) but no storage node: the file is a transient exchange
    file, and Slicer asks where to save the volume when the user saves the scene. On failure nothing is left
    in the scene.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"There is no volume file at {path}.")
    stem = path.name[: -len(volume_suffix(path))] if volume_suffix(path) else path.name
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or stem)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise OSError(f"Could not read {path} as a volume; it is not an image file Slicer can open.")
    node.CreateDefaultDisplayNodes()
    return node
