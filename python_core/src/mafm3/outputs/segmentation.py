"""Label maps on the CT grid, for 3D Slicer (`segmentation.seg.nrrd`, via slicerio) and any viewer (NIfTI).

Both files keep the CT's exact geometry: the `.seg.nrrd` header states it in LPS (`space directions` are the
columns of D·diag(spacing), `space origin` is the origin), which is how SimpleITK maps voxel (i, j, k) to
physical space; Slicer turns it into its RAS `IJKToRAS` = diag(-1, -1, 1)·D·diag(spacing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicerio

from mafm3.imaging.io import write_image
from mafm3.results import SegmentationResult, SegmentSpec

# The DICOM master list context: Slicer's terminology module holds H&N neoplasm codes under this name.
TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"


def label_statistics(result: SegmentationResult) -> sitk.LabelShapeStatisticsImageFilter:
    """Shape statistics of the label map, after checking it is uint8 and every label value has a segment.

    Raises:
        ValueError: labels that are not uint8, or a label value that no `SegmentSpec` describes.
    """
    if result.labels.GetPixelID() != sitk.sitkUInt8:
        raise ValueError(f"`labels` must be a uint8 image, got {result.labels.GetPixelIDTypeAsString()}")
    statistics = result.shape_statistics
    undescribed = sorted(set(statistics.GetLabels()) - {spec.label for spec in result.segments})
    if undescribed:
        raise ValueError(f"the label map holds values {undescribed} that no segment describes")
    return statistics


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    """4x4 matrix from voxel index (i, j, k) = (x, y, z) to physical LPS mm, as SimpleITK maps it."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def segment_terminology(spec: SegmentSpec) -> dict:
    """Slicer's terminology entry for a segment, as slicerio spells it (codes as [scheme, value, meaning])."""
    return {
        "contextName": TERMINOLOGY_CONTEXT,
        "category": [spec.category.scheme, spec.category.value, spec.category.meaning],
        "type": [spec.type.scheme, spec.type.value, spec.type.meaning],
    }


def reference_image_geometry(image: sitk.Image) -> str:
    """Slicer's "Reference image geometry" conversion parameter: IJK-to-RAS (row-major) then the extent.

    With it, Slicer knows the CT grid even though each segment is stored cropped to its own extent.
    """
    ijk_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps(image)
    extent = [v for size in image.GetSize() for v in (0, size - 1)]
    return ";".join([f"{v:.17g}" for v in ijk_to_ras.ravel()] + [str(v) for v in extent]) + ";"


def _segment_extent(statistics: sitk.LabelShapeStatisticsImageFilter, label: int) -> list[int]:
    """Voxel extent [i0, i1, j0, j1, k0, k1] of a label; Slicer's empty extent when it is absent."""
    if not statistics.HasLabel(label):
        return [0, -1, 0, -1, 0, -1]
    box = statistics.GetBoundingBox(label)  # (i0, j0, k0, size_i, size_j, size_k)
    return [v for axis in range(3) for v in (box[axis], box[axis] + box[axis + 3] - 1)]


def write_seg_nrrd(result: SegmentationResult, path: str | Path) -> Path:
    """Write the label map as a Slicer segmentation: one layer, one segment per `SegmentSpec`.

    Segment IDs and names are the spec names (GTVp, GTVn), label values the spec labels, colours the spec
    colours, and the terminology tag carries the SNOMED category and type.
    """
    path = Path(path)
    statistics = label_statistics(result)
    geometry = reference_image_geometry(result.labels)
    segmentation = {
        "voxels": sitk.GetArrayViewFromImage(result.labels).transpose(2, 1, 0),  # (z, y, x) -> (i, j, k)
        "ijkToLPS": ijk_to_lps(result.labels),
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        # Written as the raw header field, because Slicer parses only parameters followed by "&" and
        # slicerio's `conversionParameters` writer leaves the last one without it.
        "Segmentation_ConversionParameters": f"Reference image geometry|{geometry}|"
        "Image geometry of the labelmap created in course of conversion.&",
        "segments": [
            {
                "id": spec.name,
                "name": spec.name,
                "labelValue": spec.label,
                "layer": 0,
                "color": list(spec.color),
                "extent": _segment_extent(statistics, spec.label),
                "terminology": segment_terminology(spec),
            }
            for spec in result.segments
        ],
    }
    slicerio.write_segmentation(str(path), segmentation)
    return path


def write_label_map(result: SegmentationResult, path: str | Path) -> Path:
    """Write the label map as a compressed uint8 image (`.nii.gz`, `.nrrd`, `.mha`) on the CT grid."""
    path = Path(path)
    label_statistics(result)
    return write_image(result.labels, path)


def write_uncertainty_map(result: SegmentationResult, path: str | Path) -> Path:
    """Write the uncertainty map (normalised entropy in percent, uint8, CT grid) as a compressed image."""
    if result.uncertainty is None:
        raise ValueError("the segmentation result has no uncertainty map")
    return write_image(result.uncertainty, path)
