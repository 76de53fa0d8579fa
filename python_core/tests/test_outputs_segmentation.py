"""`.seg.nrrd` and `labels.nii.gz` writers: read back by slicerio, by slicer-core and by SimpleITK.

Oracles: the label array and CT geometry the test builds (oblique, flipped, anisotropic, off-origin, x≠y≠z),
Slicer's documented LPS→RAS convention ijkToRAS = diag(-1, -1, 1)·D·diag(spacing), and the SegmentSpec codes.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from mafm3.outputs.segmentation import write_label_map, write_seg_nrrd
from mafm3.results import GTVN, GTVP, SegmentationResult

SIZE_XYZ = (20, 16, 12)
SPACING_MM = (0.8, 1.1, 2.5)
ORIGIN_LPS = (-120.5, 33.2, -410.0)
OBLIQUE = np.array(sitk.VersorTransform((0.2, 0.1, 1.0), 0.35).GetMatrix()).reshape(3, 3)
DIRECTIONS = {"oblique": OBLIQUE, "oblique-flipped": OBLIQUE @ np.diag([1.0, -1.0, -1.0])}


def _labels_zyx() -> np.ndarray:
    """Two boxes of different labels, away from the borders and from each other; (z, y, x)."""
    labels = np.zeros(SIZE_XYZ[::-1], dtype=np.uint8)
    labels[3:6, 4:9, 5:12] = GTVP.label
    labels[7:9, 10:14, 2:6] = GTVN.label
    return labels


def _result(direction: np.ndarray, segments=(GTVP, GTVN)) -> SegmentationResult:
    labels = sitk.GetImageFromArray(_labels_zyx())
    labels.SetSpacing(SPACING_MM)
    labels.SetOrigin(ORIGIN_LPS)
    labels.SetDirection(direction.ravel().tolist())
    return SegmentationResult(labels, list(segments), "hecktor-seg-ct", "1.0.0")


def _ijk_to_lps(direction: np.ndarray) -> np.ndarray:
    """The CT's voxel-to-LPS matrix, from the constants (not from the code under test)."""
    matrix = np.eye(4)
    matrix[:3, :3] = direction @ np.diag(SPACING_MM)
    matrix[:3, 3] = ORIGIN_LPS
    return matrix


@pytest.mark.parametrize("direction_name", DIRECTIONS)
def test_seg_nrrd_read_by_slicerio_has_segments_voxels_and_ct_geometry(tmp_path, direction_name):
    direction = DIRECTIONS[direction_name]
    path = write_seg_nrrd(_result(direction), tmp_path / "segmentation.seg.nrrd")

    segmentation = slicerio.read_segmentation(str(path))
    np.testing.assert_allclose(segmentation["ijkToLPS"], _ijk_to_lps(direction), atol=1e-12)
    np.testing.assert_array_equal(segmentation["voxels"], _labels_zyx().transpose(2, 1, 0))
    segments = segmentation["segments"]
    assert [s["name"] for s in segments] == ["GTVp", "GTVn"]
    assert [s["labelValue"] for s in segments] == [1, 2]
    assert [s["layer"] for s in segments] == [0, 0]
    for segment, spec in zip(segments, (GTVP, GTVN), strict=True):
        np.testing.assert_allclose(segment["color"], spec.color)
        terminology = segment["terminology"]
        assert terminology["category"] == ["SCT", "49755003", "Morphologically Altered Structure"]
        assert terminology["type"] == [spec.type.scheme, spec.type.value, spec.type.meaning]
    assert segments[0]["terminology"]["type"][1] == "86049000"
    assert segments[1]["terminology"]["type"][1] == "14799000"
    # Extents (i0, i1, j0, j1, k0, k1) of the boxes drawn in _labels_zyx.
    assert segments[0]["extent"] == [5, 11, 4, 8, 3, 5]
    assert segments[1]["extent"] == [2, 5, 10, 13, 7, 8]


@pytest.mark.parametrize("direction_name", DIRECTIONS)
def test_seg_nrrd_read_by_slicer_storage_node_has_names_and_ct_geometry(tmp_path, direction_name):
    slicer = pytest.importorskip("slicer")
    import vtk

    direction = DIRECTIONS[direction_name]
    path = write_seg_nrrd(_result(direction), tmp_path / "segmentation.seg.nrrd")

    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)  # registers the segmentation converter rules
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node)

    segmentation = node.GetSegmentation()
    segments = [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]
    assert [s.GetName() for s in segments] == ["GTVp", "GTVn"]
    np.testing.assert_allclose([s.GetColor() for s in segments], [GTVP.color, GTVN.color], atol=1e-6)
    assert "SCT^86049000^Neoplasm, Primary" in segments[0].GetTerminology()

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
        node, labelmap, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
    )
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetIJKToRASMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(
        ijk_to_ras, np.diag([-1.0, -1.0, 1.0, 1.0]) @ _ijk_to_lps(direction), atol=1e-9
    )
    # Exported label values are the segment order (1, 2), which equals the spec labels here.
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(labelmap), _labels_zyx())


@pytest.mark.parametrize("direction_name", DIRECTIONS)
def test_label_map_nifti_has_the_labels_and_ct_geometry(tmp_path, direction_name):
    direction = DIRECTIONS[direction_name]
    path = write_label_map(_result(direction), tmp_path / "labels.nii.gz")

    image = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), _labels_zyx())
    # NIfTI stores geometry in float32.
    np.testing.assert_allclose(image.GetSpacing(), SPACING_MM, rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), ORIGIN_LPS, atol=1e-4)
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), direction, atol=1e-6)


def test_label_value_without_a_segment_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"values \[2\] that no segment describes"):
        write_seg_nrrd(_result(OBLIQUE, segments=(GTVP,)), tmp_path / "segmentation.seg.nrrd")
    assert not (tmp_path / "segmentation.seg.nrrd").exists()


def test_label_map_that_is_not_uint8_is_refused(tmp_path):
    result = _result(OBLIQUE)
    result.labels = sitk.Cast(result.labels, sitk.sitkInt16)
    with pytest.raises(ValueError, match="must be a uint8 image"):
        write_label_map(result, tmp_path / "labels.nii.gz")
