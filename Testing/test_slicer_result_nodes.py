"""MAFM3SlicerLib.result_nodes: a run's output folder -> segmentation, prognosis table, survival plot nodes.

Each output folder here is written the way a run writes it: the CT node goes to a file (volume_files), the
core reads that file with SimpleITK, and the core's own writers (mafm3.outputs) write the segments on that
grid, labels.nii.gz, prognosis.json and result.json. Expected voxels come from labels.nii.gz or from the
label arrays the test wrote; expected numbers from the PrognosisResult the writer was given.
"""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from synthetic_volumes import ras_matrix, rotation_about_z, volume_node

import mafm3.outputs
from mafm3.outputs.json_io import write_prognosis_json, write_result_json
from mafm3.outputs.segmentation import write_label_map, write_seg_nrrd
from mafm3.results import GTVN, GTVP, PrognosisResult, SegmentationResult, StudyResult
from MAFM3SlicerLib import result_nodes
from MAFM3SlicerLib.geometry import ijk_to_ras_of
from MAFM3SlicerLib.result_nodes import (
    TAG_FINGERPRINT,
    TAG_OUTPUT,
    TAG_SKILL,
    import_results,
    is_edited,
    segment_tag,
    segment_volumes_ml,
    table_rows,
)
from MAFM3SlicerLib.volume_files import write_volume

SHAPE_ZYX = (10, 12, 14)
SKILL = ("seg-petct", "1.2.0")


def first_labels() -> np.ndarray:
    labels = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    labels[2:5, 3:7, 4:9] = GTVP.label
    labels[6:8, 2:4, 9:12] = GTVN.label
    return labels


def second_labels() -> np.ndarray:
    """Another result: both segments moved and grown."""
    labels = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    labels[3:6, 4:9, 4:9] = GTVP.label
    labels[6:9, 2:5, 8:12] = GTVN.label
    return labels


def prognosis_result(skill_id: str = "rfs-ct", risk: float = 1.3) -> PrognosisResult:
    return PrognosisResult(
        risk=risk,
        risk_group="high",
        times_days=[200.0, 500.0, 1000.0, 1500.0],
        survival=[0.92, 0.81, 0.64, 0.55],
        survival_at_years={1: 0.85, 2: 0.72, 3: 0.58, 5: float("nan")},  # 5 y: beyond the last time bin
        skill_id=skill_id,
        skill_version="0.3.0",
    )


@pytest.fixture(params=["right-handed", "left-handed"])
def ct(request, mrml_scene):
    """An oblique, anisotropic CT node; its IJK axes form a left-handed frame in the second case."""
    mirror = np.diag([1.0, 1.0, -1.0]) if request.param == "left-handed" else np.eye(3)
    matrix = ras_matrix(rotation_about_z(25.0) @ mirror, (0.8, 1.3, 3.0), (-12.5, 40.0, 7.25))
    return volume_node(mrml_scene, np.full(SHAPE_ZYX, -1000, dtype=np.int16), matrix, "CT")


def write_run(ct_node, folder: Path, labels=None, prognosis=None, skill=SKILL, demo=False) -> Path:
    """The output folder of a run on `ct_node` that found `labels` ((z, y, x) on the CT's voxels)."""
    folder.mkdir(parents=True)
    image = sitk.ReadImage(str(write_volume(ct_node, folder / "ct.nrrd")))
    out = folder / "out"
    out.mkdir()
    segmentation = None
    if labels is not None:
        label_image = sitk.GetImageFromArray(labels)
        label_image.CopyInformation(image)
        segmentation = SegmentationResult(label_image, [GTVP, GTVN], *skill)
        write_seg_nrrd(segmentation, out / "segmentation.seg.nrrd")
        write_label_map(segmentation, out / "labels.nii.gz")
    if prognosis is not None:
        write_prognosis_json(prognosis, out / "prognosis.json", demo=demo)
    study = StudyResult(inputs={}, segmentation=segmentation, prognosis=prognosis, demo=demo)
    write_result_json(study, out / "result.json", [path.name for path in out.iterdir()])
    return out


def mask(segmentation_node, segment_id, ct_node) -> np.ndarray:
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, ct_node) > 0


def segment_ids(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def id_of(segmentation_node, name: str) -> str:
    return segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)


def names(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


# --- segments -----------------------------------------------------------------------------------------------


def test_segments_come_named_coloured_and_coded_and_match_the_label_map_voxel_for_voxel(ct, tmp_path):
    out = write_run(ct, tmp_path / "run", first_labels())

    segmentation_node = import_results(out, ct).segmentation

    assert segment_ids(segmentation_node) == ["GTVp", "GTVn"]
    assert names(segmentation_node) == ["GTVp", "GTVn"]
    for spec in (GTVP, GTVN):
        segment = segmentation_node.GetSegmentation().GetSegment(spec.name)
        np.testing.assert_allclose(segment.GetColor(), spec.color, atol=1e-6)
        terminology = segment_tag(segment, segment.GetTerminologyEntryTagName())
        assert f"SCT^{spec.category.value}^{spec.category.meaning}" in terminology
        assert f"SCT^{spec.type.value}^{spec.type.meaning}" in terminology
        assert (segment_tag(segment, TAG_SKILL), segment_tag(segment, TAG_OUTPUT)) == (SKILL[0], spec.name)
    reference_role = segmentation_node.GetReferenceImageGeometryReferenceRole()
    assert segmentation_node.GetNodeReference(reference_role) is ct
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))
    assert written.any()
    for spec in (GTVP, GTVN):
        np.testing.assert_array_equal(mask(segmentation_node, spec.name, ct), written == spec.label)


def test_segment_volumes_are_the_volumes_the_core_reported(ct, tmp_path):
    out = write_run(ct, tmp_path / "run", first_labels())
    imported = import_results(out, ct)

    reported = imported.record["segmentation"]["volumes_ml"]  # SimpleITK's label statistics, in the core
    volumes = {name: ml for _id, name, ml in segment_volumes_ml(imported.segmentation)}
    assert volumes == pytest.approx(reported, rel=1e-9)
    assert volumes["GTVp"] == pytest.approx(3 * 4 * 5 * 0.8 * 1.3 * 3.0 / 1000, rel=1e-9)


def test_results_go_under_the_cts_study_in_the_subject_hierarchy(ct, tmp_path):
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(ct.GetScene())
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient 1")
    study = hierarchy.CreateStudyItem(patient, "PET/CT 2024")
    hierarchy.CreateItem(study, ct)
    out = write_run(ct, tmp_path / "run", first_labels(), prognosis_result())

    imported = import_results(out, ct)

    for node in (imported.segmentation, imported.prognosis.table, imported.prognosis.chart):
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study


# --- the re-run rule ----------------------------------------------------------------------------------------


def test_a_rerun_replaces_untouched_skill_segments_and_keeps_edited_and_annotator_segments(ct, tmp_path):
    segmentation_node = import_results(write_run(ct, tmp_path / "first", first_labels()), ct).segmentation
    # The annotator draws a segment of their own and corrects GTVp; GTVn stays as the skill left it.
    annotator_id = segmentation_node.GetSegmentation().AddEmptySegment("Level II node", "Level II node")
    annotator_mask = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    annotator_mask[0:2, 8:11, 0:3] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(annotator_mask, segmentation_node, annotator_id, ct)
    corrected = first_labels() == GTVP.label
    corrected[2:5, 3:7, 9:11] = True
    slicer.util.updateSegmentBinaryLabelmapFromArray(
        corrected.astype(np.uint8), segmentation_node, "GTVp", ct
    )
    assert is_edited(segmentation_node, "GTVp") and not is_edited(segmentation_node, "GTVn")

    import_results(write_run(ct, tmp_path / "second", second_labels()), ct, segmentation_node)

    assert segment_ids(segmentation_node)[:3] == ["GTVp", "GTVn", annotator_id]  # IDs and order kept
    assert names(segmentation_node) == ["GTVp", "GTVn", "Level II node", f"GTVp ({SKILL[0]})"]
    np.testing.assert_array_equal(mask(segmentation_node, "GTVp", ct), corrected)  # the correction stays
    np.testing.assert_array_equal(mask(segmentation_node, annotator_id, ct), annotator_mask > 0)
    np.testing.assert_array_equal(mask(segmentation_node, "GTVn", ct), second_labels() == GTVN.label)
    new_gtvp = id_of(segmentation_node, f"GTVp ({SKILL[0]})")
    np.testing.assert_array_equal(mask(segmentation_node, new_gtvp, ct), second_labels() == GTVP.label)


def test_replacing_edited_segments_when_asked_overwrites_the_correction_but_not_the_annotators_segment(
    ct, tmp_path
):
    segmentation_node = import_results(write_run(ct, tmp_path / "first", first_labels()), ct).segmentation
    annotator_id = segmentation_node.GetSegmentation().AddEmptySegment("Level II node", "Level II node")
    slicer.util.updateSegmentBinaryLabelmapFromArray(
        np.ones(SHAPE_ZYX, dtype=np.uint8), segmentation_node, annotator_id, ct
    )
    slicer.util.updateSegmentBinaryLabelmapFromArray(
        np.zeros(SHAPE_ZYX, dtype=np.uint8), segmentation_node, "GTVp", ct
    )

    import_results(write_run(ct, tmp_path / "second", second_labels()), ct, segmentation_node, False)

    assert segment_ids(segmentation_node) == ["GTVp", "GTVn", annotator_id]
    np.testing.assert_array_equal(mask(segmentation_node, "GTVp", ct), second_labels() == GTVP.label)
    assert mask(segmentation_node, annotator_id, ct).all()
    assert not is_edited(segmentation_node, "GTVp")


def test_sharing_a_labelmap_layer_and_painting_another_segment_in_it_is_not_an_edit(ct, tmp_path):
    segmentation_node = import_results(write_run(ct, tmp_path / "run", first_labels()), ct).segmentation
    segmentation = segmentation_node.GetSegmentation()
    fingerprint = segment_tag(segmentation.GetSegment("GTVn"), TAG_FINGERPRINT)
    own_layer = slicer.util.arrayFromSegmentInternalBinaryLabelmap(segmentation_node, "GTVn").shape

    segmentation.CollapseBinaryLabelmaps(False)  # as the Segment Editor does: one labelmap for both segments
    assert segmentation.GetLayerIndex("GTVp") == segmentation.GetLayerIndex("GTVn")
    corners = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    corners[0, 0, 0] = corners[-1, -1, -1] = 1
    painted = ct.GetScene().AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    slicer.util.updateVolumeFromArray(painted, corners)
    painted.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_of(ct)))
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    logic.SetBinaryLabelmapToSegment(
        logic.CreateOrientedImageDataFromVolumeNode(painted), segmentation_node, "GTVp", logic.MODE_MERGE_MAX
    )

    shared_layer = slicer.util.arrayFromSegmentInternalBinaryLabelmap(segmentation_node, "GTVn")
    assert shared_layer.shape == SHAPE_ZYX != own_layer  # grown to GTVp's new corners
    assert set(np.unique(shared_layer)) == {0, GTVP.label, GTVN.label}
    assert is_edited(segmentation_node, "GTVp")
    assert not is_edited(segmentation_node, "GTVn")
    assert result_nodes.segment_fingerprint(segmentation_node, "GTVn") == fingerprint


def test_segments_of_another_skill_and_an_untagged_gtvp_are_left_alone(ct, tmp_path):
    segmentation_node = import_results(
        write_run(ct, tmp_path / "ct-skill", first_labels(), skill=("seg-ct", "1.0.0")), ct
    ).segmentation

    import_results(write_run(ct, tmp_path / "petct-skill", second_labels()), ct, segmentation_node)

    assert names(segmentation_node) == ["GTVp", "GTVn", f"GTVp ({SKILL[0]})", f"GTVn ({SKILL[0]})"]
    np.testing.assert_array_equal(mask(segmentation_node, "GTVp", ct), first_labels() == GTVP.label)
    new_gtvn = id_of(segmentation_node, f"GTVn ({SKILL[0]})")
    np.testing.assert_array_equal(mask(segmentation_node, new_gtvn, ct), second_labels() == GTVN.label)


def test_a_gtvp_the_annotator_drew_is_kept_beside_the_skills(ct, tmp_path):
    segmentation_node = ct.GetScene().AddNewNodeByClass("vtkMRMLSegmentationNode", "Contours")
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    segmentation_node.GetSegmentation().AddEmptySegment("GTVp", "GTVp")

    import_results(write_run(ct, tmp_path / "run", first_labels()), ct, segmentation_node)

    assert segment_ids(segmentation_node)[0] == "GTVp" and not mask(segmentation_node, "GTVp", ct).any()
    assert names(segmentation_node) == ["GTVp", f"GTVp ({SKILL[0]})", "GTVn"]


# --- prognosis ----------------------------------------------------------------------------------------------


def test_the_prognosis_table_and_survival_curve_hold_the_numbers_of_prognosis_json(ct, tmp_path):
    prognosis = prognosis_result()
    imported = import_results(write_run(ct, tmp_path / "run", prognosis=prognosis, demo=True), ct)

    (row,) = table_rows(imported.prognosis.table)
    assert {key: value for key, value in row.items() if key != "S(5 y)"} == {
        "Skill": "rfs-ct",
        "Version": "0.3.0",
        "Risk score": 1.3,
        "Risk group": "high",
        "S(1 y)": 0.85,
        "S(2 y)": 0.72,
        "S(3 y)": 0.58,
        "Demo": "yes",
    }
    assert np.isnan(row["S(5 y)"])
    curve = table_rows(imported.prognosis.curve_table)
    np.testing.assert_allclose(
        [point["Time"] for point in curve], [0, 200 / 365.25, 500 / 365.25, 1000 / 365.25, 1500 / 365.25]
    )
    np.testing.assert_allclose([point["S(t)"] for point in curve], [1.0, *prognosis.survival])
    series, chart = imported.prognosis.series, imported.prognosis.chart
    assert series.GetTableNode() is imported.prognosis.curve_table
    assert (series.GetXColumnName(), series.GetYColumnName()) == ("Time", "S(t)")
    assert chart.GetNumberOfPlotSeriesNodes() == 1 and chart.GetNthPlotSeriesNode(0) is series
    assert imported.segmentation is None


def test_rerunning_a_prognosis_updates_its_nodes_and_another_skill_adds_a_row_and_a_curve(ct, tmp_path):
    first = import_results(write_run(ct, tmp_path / "a", prognosis=prognosis_result(risk=1.0)), ct).prognosis
    nodes_before = ct.GetScene().GetNumberOfNodes()

    again = import_results(write_run(ct, tmp_path / "b", prognosis=prognosis_result(risk=2.0)), ct).prognosis
    assert ct.GetScene().GetNumberOfNodes() == nodes_before
    assert (again.table, again.curve_table, again.series, again.chart) == (
        first.table,
        first.curve_table,
        first.series,
        first.chart,
    )
    assert [row["Risk score"] for row in table_rows(again.table)] == [2.0]

    other = import_results(write_run(ct, tmp_path / "c", prognosis=prognosis_result("rfs-petct", 0.5)), ct)
    assert other.prognosis.table is first.table and other.prognosis.chart is first.chart
    assert other.prognosis.series is not first.series
    assert [(row["Skill"], row["Risk score"]) for row in table_rows(first.table)] == [
        ("rfs-ct", 2.0),
        ("rfs-petct", 0.5),
    ]
    assert first.chart.GetNumberOfPlotSeriesNodes() == 2


def test_the_file_names_read_are_the_ones_the_core_writes():
    assert result_nodes.SEGMENTATION_FILE == mafm3.outputs.SEG_NRRD
    assert result_nodes.PROGNOSIS_FILE == mafm3.outputs.PROGNOSIS_JSON
    assert result_nodes.RESULT_FILE == mafm3.outputs.RESULT_JSON
    assert result_nodes.LABEL_MAP_FILE == mafm3.outputs.LABEL_MAP
