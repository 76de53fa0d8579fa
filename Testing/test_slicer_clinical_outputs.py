"""MAFM3SlicerLib.clinical_outputs against real MRML: the measurement table, the uncertainty overlay, the QC
flags and the RTSTRUCT export (core path with a real `mafm3 rtstruct` child process; SlicerRT path with a
recording stand-in for its plugin, which slicer-core does not ship).

Oracles: numbers and files the core's own writers produced from arrays the test set (the table must carry
them unchanged, LPS centroids turned into RAS by sign), the CT node's geometry, and the RTSTRUCT read back
with pydicom.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
import slicer
from synthetic_volumes import ras_matrix, rotation_about_z, volume_node

from mafm3.imaging.measurements import measure_lesions
from mafm3.outputs.json_io import result_record
from mafm3.outputs.segmentation import write_uncertainty_map
from mafm3.results import GTVN, GTVP, QCFlag, SegmentationResult, StudyResult
from MAFM3SlicerLib.clinical_outputs import (
    ROLE_UNCERTAINTY,
    export_rtstruct,
    import_measurements,
    import_uncertainty,
    measurement_rows,
)
from MAFM3SlicerLib.geometry import ijk_to_ras_of
from MAFM3SlicerLib.result_nodes import ROLE_ATTRIBUTE, table_rows
from MAFM3SlicerLib.result_text import result_lines
from MAFM3SlicerLib.volume_files import write_volume

SHAPE_ZYX = (10, 12, 14)


def _ct_node(scene):
    matrix = ras_matrix(rotation_about_z(25.0), (0.8, 1.3, 3.0), (-12.5, 40.0, 7.25))
    return volume_node(scene, np.full(SHAPE_ZYX, 40, dtype=np.int16), matrix, "CT")


def _segmentation_on(ct_node, folder: Path, labels_zyx: np.ndarray) -> SegmentationResult:
    image = sitk.ReadImage(str(write_volume(ct_node, folder / "ct.nrrd")))
    labels = sitk.GetImageFromArray(labels_zyx)
    labels.CopyInformation(image)
    uncertainty = sitk.GetImageFromArray(np.where(labels_zyx == 2, 60, 0).astype(np.uint8))
    uncertainty.CopyInformation(image)
    result = SegmentationResult(labels, [GTVP, GTVN], "seg", "1.0", uncertainty=uncertainty)
    result.measurements = measure_lesions(labels, [1, 2], image, None, uncertainty)
    result.qc_flags = [QCFlag("nodes-vs-n-stage", "Nodes were segmented while the clinical record says N0.")]
    return result


def _two_nodes() -> np.ndarray:
    labels = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    labels[2:5, 3:7, 4:9] = GTVP.label
    labels[6:8, 2:4, 9:12] = GTVN.label
    labels[6:8, 8:10, 2:4] = GTVN.label  # a second, separate node
    return labels


def test_measurement_table_holds_each_segment_and_each_node_with_ras_centroids(mrml_scene, tmp_path):
    ct = _ct_node(mrml_scene)
    result = _segmentation_on(ct, tmp_path, _two_nodes())
    record = result_record(StudyResult(inputs={}, segmentation=result))

    table = import_measurements(record, ct)
    rows = table_rows(table)
    assert [row["Segment"] for row in rows] == ["GTVp", "GTVn", "GTVn 1", "GTVn 2"]
    voxel_ml = 0.8 * 1.3 * 3.0 / 1000
    assert math.isclose(rows[0]["Volume"], 3 * 4 * 5 * voxel_ml) and math.isclose(rows[0]["HU mean"], 40)
    assert all(math.isnan(row["SUVmax"]) and math.isnan(row["TLG"]) for row in rows)  # no PET: absent
    assert rows[1]["Uncertainty"] == 60 and rows[0]["Uncertainty"] == 0
    lps = record["segmentation"]["segments"][0]["centroid_lps"]
    assert [rows[0][f"Centroid {a}"] for a in "RAS"] == [-lps[0], -lps[1], lps[2]]
    # The centroid is where the CT node's own IJK-to-RAS puts the GTVp box's centre.
    centre = ijk_to_ras_of(ct) @ np.array([6.0, 4.5, 3.0, 1.0])
    np.testing.assert_allclose([rows[0][f"Centroid {a}"] for a in "RAS"], centre[:3], atol=1e-6)
    assert table is import_measurements(record, ct)  # a re-run refills the same node
    assert "QC: Nodes were segmented while the clinical record says N0." in result_lines(record)
    assert measurement_rows({"segmentation": None}) == []


def test_uncertainty_map_lands_on_the_ct_grid_and_a_rerun_replaces_it(mrml_scene, tmp_path):
    ct = _ct_node(mrml_scene)
    result = _segmentation_on(ct, tmp_path, _two_nodes())
    write_uncertainty_map(result, tmp_path / "uncertainty.nii.gz")

    node = import_uncertainty(tmp_path, ct)
    assert node.GetAttribute(ROLE_ATTRIBUTE) == ROLE_UNCERTAINTY
    np.testing.assert_allclose(ijk_to_ras_of(node), ijk_to_ras_of(ct), atol=1e-5)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), np.where(_two_nodes() == 2, 60, 0))
    assert (node.GetDisplayNode().GetWindowLevelMin(), node.GetDisplayNode().GetWindowLevelMax()) == (0, 100)
    count = mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    assert import_uncertainty(tmp_path, ct) is node
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == count
    assert import_uncertainty(tmp_path / "absent", ct) is None


def _dicom_ct(scene, folder: Path):
    """A CT node loaded 'from DICOM': its DICOM.instanceUIDs and a database that finds their files."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python_core" / "tests"))
    folder.mkdir()
    from ct_series import write_ct_series

    direction = np.array(sitk.VersorTransform((0.3, -0.2, 1.0), 0.4).GetMatrix()).reshape(3, 3)
    paths, image = write_ct_series(
        folder, size_xyz=(20, 18, 8), spacing_xyz=(1.0, 1.0, 2.0), origin_lps=(0, 0, 0), direction=direction
    )
    node = volume_node(scene, sitk.GetArrayFromImage(image).astype(np.int16), _ijk_to_ras(image), "CT")
    files = {pydicom.dcmread(p).SOPInstanceUID: str(p) for p in paths}
    node.SetAttribute("DICOM.instanceUIDs", " ".join(files))
    return node, type("Database", (), {"fileForInstance": lambda self, uid: files.get(uid, "")})()


def _ijk_to_ras(image: sitk.Image) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ np.array(image.GetDirection()).reshape(3, 3)
    matrix[:3, :3] = matrix[:3, :3] @ np.diag(image.GetSpacing())
    matrix[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ np.array(image.GetOrigin())
    return matrix


def _segmentation_node(scene, ct_node):
    labels = np.zeros(slicer.util.arrayFromVolume(ct_node).shape, dtype=np.uint8)
    labels[2:6, 4:12, 5:14] = 1
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    slicer.util.updateVolumeFromArray(label_node, labels)
    label_node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_of(ct_node)))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(label_node, segmentation)
    segmentation.GetSegmentation().GetNthSegment(0).SetName("GTVp")
    return segmentation


def test_rtstruct_export_without_slicer_rt_goes_through_the_core(mrml_scene, tmp_path):
    ct, database = _dicom_ct(mrml_scene, tmp_path / "dicom")
    segmentation = _segmentation_node(mrml_scene, ct)
    out = export_rtstruct(segmentation, ct, tmp_path / "export", database=database, python=sys.executable)
    rtstruct = pydicom.dcmread(out)
    assert [roi.ROIName for roi in rtstruct.StructureSetROISequence] == ["GTVp"]
    assert rtstruct.StructureSetROISequence[0].ROIGenerationAlgorithm == "SEMIAUTOMATIC"
    slices = {
        item.ContourImageSequence[0].ReferencedSOPInstanceUID
        for item in rtstruct.ROIContourSequence[0].ContourSequence
    }
    assert len(slices) == 4  # the four labelled slices, each citing its own CT instance
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["segmentation.rtstruct.dcm"]


def test_rtstruct_export_uses_slicer_rt_when_it_is_installed(mrml_scene, tmp_path):
    class RecordingPlugin:
        def __init__(self):
            self.exported = None

        def examineForExport(self, item):
            return [type("Exportable", (), {"item": item, "directory": ""})()]

        def export(self, exportables):
            self.exported = exportables
            return ""

    ct, _ = _dicom_ct(mrml_scene, tmp_path / "dicom")
    segmentation = _segmentation_node(mrml_scene, ct)
    plugin = RecordingPlugin()
    export_rtstruct(segmentation, ct, tmp_path / "rt", slicer_rt_plugin=plugin)
    hierarchy = mrml_scene.GetSubjectHierarchyNode()
    assert [e.item for e in plugin.exported] == [hierarchy.GetItemByDataNode(segmentation)]
    assert plugin.exported[0].directory == str(tmp_path / "rt")


def test_the_logic_exports_through_slicer_rt_when_its_plugin_is_registered(
    mafm3_slicer, mrml_scene, tmp_path, monkeypatch
):
    exported = []

    class PluginClass:  # what SlicerRT registers under slicer.modules.dicomPlugins
        def examineForExport(self, item):
            return [type("Exportable", (), {"item": item, "directory": ""})()]

        def export(self, exportables):
            exported.extend(exportables)
            return ""

    ct, _ = _dicom_ct(mrml_scene, tmp_path / "dicom")
    segmentation = _segmentation_node(mrml_scene, ct)
    monkeypatch.setattr(
        slicer.modules, "dicomPlugins", {"DicomRtImportExportPlugin": PluginClass}, raising=False
    )
    mafm3_slicer.MAFM3SlicerLogic().exportRtstruct(segmentation, ct, tmp_path / "rt")  # the Lib's logic
    assert [e.directory for e in exported] == [str(tmp_path / "rt")]


def test_rtstruct_export_of_a_ct_not_from_dicom_says_what_to_do_and_leaves_nothing(mrml_scene, tmp_path):
    import pytest

    from MAFM3SlicerLib.errors import PanelError

    ct, database = _dicom_ct(mrml_scene, tmp_path / "dicom")
    segmentation = _segmentation_node(mrml_scene, ct)
    with pytest.raises(PanelError, match="load it through the DICOM module"):
        export_rtstruct(segmentation, ct, tmp_path / "rt", database=None)  # no DICOM database in Slicer
    ct.RemoveAttribute("DICOM.instanceUIDs")
    with pytest.raises(PanelError, match="load it through the DICOM module"):
        export_rtstruct(segmentation, ct, tmp_path / "rt", database=database)  # not loaded from DICOM
    assert list((tmp_path / "rt").iterdir()) == []
