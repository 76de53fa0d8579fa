"""The worker's output folder -> MRML nodes (Qt-free): one segmentation, a prognosis table, a survival plot,
and (`clinical_outputs`) the lesion measurement table and the uncertainty volume.

Read, as `mafm3.outputs` writes them: `segmentation.seg.nrrd` (one segment per output, with ID, name, colour
and SNOMED terminology, on the CT grid), `prognosis.json` and `result.json`.

Segmentation. The segments go into one segmentation node (a new one, or the one the user chose) whose
reference geometry is the CT, placed beside the CT in the subject hierarchy (under its study). Each imported
segment is tagged: `MAFM3.skill` (skill id), `MAFM3.skillVersion`, `MAFM3.output` (the output's name, e.g.
GTVp) and `MAFM3.labelmapSha256` (a fingerprint of its voxels when it was imported).

Re-running a skill into a segmentation someone has worked on follows one rule:
- a segment the same skill imported before (same `MAFM3.skill` and `MAFM3.output`) whose voxels still match
  its fingerprint is replaced in place: same segment ID and position in the list;
- a segment the skill imported but that was edited since (fingerprint differs, or cannot be computed) is kept
  as it is, and the new result is added beside it, named "<output> (<skill id>)", to compare the two;
- every other segment (drawn by the annotator, or made by another skill) is never touched;
- with `replace_owned_only=False` (the panel's "Replace edited segments"), every segment that carries the
  output's name or tags is replaced, edited or not.
The fingerprint covers the segment's own voxels at their physical positions (cropped to the voxels set), so
growing or shrinking the shared labelmap around it, as the Segment Editor does while other segments are
painted, is not an edit; painting, erasing, smoothing or resampling this segment is.

Prognosis. One table node per CT, one row per prognosis skill (replaced when that skill runs again): skill,
version, risk score, risk group, S(1 y), S(2 y), S(3 y), S(5 y), demo. Each skill's survival curve S(t) goes
into its own table node (time in years, S), drawn as a line by a plot series node in one plot chart node per
CT. The line joins the curve's points because the core reads S(1 y) ... S(5 y) off the curve by linear
interpolation, so the line passes through them. These nodes are found again by their attributes
(`MAFM3.role`, `MAFM3.skill`) and their `MAFM3.ct` node reference: a re-run updates them. Showing the chart
in a plot view is the Widget's job.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk

from MAFM3SlicerLib.hierarchy import place_beside

# Output file names, as `mafm3.outputs` defines them (SEG_NRRD, PROGNOSIS_JSON, RESULT_JSON, LABEL_MAP); the
# GUI process does not import the writers (they import SimpleITK, highdicom, matplotlib).
SEGMENTATION_FILE = "segmentation.seg.nrrd"
PROGNOSIS_FILE = "prognosis.json"
RESULT_FILE = "result.json"
LABEL_MAP_FILE = "labels.nii.gz"
REPORT_FILE = "report.html"

TAG_SKILL = "MAFM3.skill"
TAG_SKILL_VERSION = "MAFM3.skillVersion"
TAG_OUTPUT = "MAFM3.output"
TAG_FINGERPRINT = "MAFM3.labelmapSha256"

ROLE_ATTRIBUTE = "MAFM3.role"  # what a result node holds: one of the ROLE_* values
SKILL_ATTRIBUTE = "MAFM3.skill"
CT_REFERENCE_ROLE = "MAFM3.ct"  # node reference from a result node to the CT it was computed on
ROLE_PROGNOSIS = "prognosis"
ROLE_SURVIVAL_CURVE = "survivalCurve"
ROLE_SURVIVAL_SERIES = "survivalSeries"
ROLE_SURVIVAL_CHART = "survivalChart"

BINARY_LABELMAP = "Binary labelmap"  # vtkSegmentationConverter's binary labelmap representation name
SURVIVAL_YEARS = (1, 2, 3, 5)
DAYS_PER_YEAR = 365.25  # the core's report draws S(t) against days / 365.25 too
PROGNOSIS_COLUMNS = (
    ("Skill", str),
    ("Version", str),
    ("Risk score", float),
    ("Risk group", str),
    *((f"S({years} y)", float) for years in SURVIVAL_YEARS),
    ("Demo", str),
)
TIME_COLUMN, SURVIVAL_COLUMN = "Time", "S(t)"
CURVE_COLUMNS = ((TIME_COLUMN, float), (SURVIVAL_COLUMN, float))


@dataclass
class PrognosisNodes:
    """The nodes one prognosis fills: the CT's prognosis table and chart, the skill's curve and series."""

    table: object  # vtkMRMLTableNode
    curve_table: object  # vtkMRMLTableNode
    series: object  # vtkMRMLPlotSeriesNode
    chart: object  # vtkMRMLPlotChartNode


@dataclass
class ImportedResults:
    """What one run put into the scene; `record` is its result.json."""

    record: dict
    segmentation: object | None = None  # vtkMRMLSegmentationNode
    prognosis: PrognosisNodes | None = None
    measurements: object | None = None  # vtkMRMLTableNode (clinical_outputs)
    uncertainty: object | None = None  # vtkMRMLScalarVolumeNode (clinical_outputs)


def import_results(
    out_dir: str | Path, ct_node, segmentation_node=None, replace_owned_only: bool = True
) -> ImportedResults:
    """Load a run's output folder into the CT's scene: segments into `segmentation_node` (a new node when
    None) following the re-run rule above, the prognosis into the CT's table and chart.
    """
    out_dir = Path(out_dir)
    record = json.loads((out_dir / RESULT_FILE).read_text(encoding="utf-8"))
    imported = ImportedResults(record)
    segmentation = record.get("segmentation")
    if segmentation is not None:
        imported.segmentation = import_segmentation(
            out_dir / SEGMENTATION_FILE,
            ct_node,
            segmentation_node,
            skill_id=segmentation["skill"]["id"],
            skill_version=segmentation["skill"]["version"],
            replace_owned_only=replace_owned_only,
        )
    if record.get("prognosis") is not None:
        prognosis = json.loads((out_dir / PROGNOSIS_FILE).read_text(encoding="utf-8"))
        imported.prognosis = import_prognosis(prognosis, ct_node)
    # Imported here: clinical_outputs builds its nodes with this module's table and node helpers.
    from MAFM3SlicerLib.clinical_outputs import import_measurements, import_uncertainty

    imported.measurements = import_measurements(record, ct_node)
    imported.uncertainty = import_uncertainty(out_dir, ct_node) if segmentation is not None else None
    return imported


# --- segmentation -------------------------------------------------------------------------------------------


def import_segmentation(
    path: str | Path,
    ct_node,
    segmentation_node=None,
    *,
    skill_id: str,
    skill_version: str = "",
    replace_owned_only: bool = True,
):
    """Import every segment of a .seg.nrrd (written on the CT's grid) into a segmentation node of the CT's
    scene; returns the node. See the module docstring for which existing segments are replaced.
    """
    scene = ct_node.GetScene()
    if segmentation_node is None:
        segmentation_node = scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", f"{ct_node.GetName()} tumour segmentation"
        )
        segmentation_node.CreateDefaultDisplayNodes()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(ct_node)
    # Read into a node of a private scene: the user's scene sees only the segments copied over.
    private_scene = slicer.vtkMRMLScene()
    source_node = private_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(source_node):
        raise OSError(f"Could not read {path} as a segmentation.")
    source = source_node.GetSegmentation()
    for index in range(source.GetNumberOfSegments()):
        _import_segment(
            source,
            source.GetNthSegmentID(index),
            segmentation_node,
            skill_id,
            skill_version,
            replace_owned_only,
        )
    place_beside(segmentation_node, ct_node)
    return segmentation_node


def _import_segment(source, output: str, segmentation_node, skill_id, skill_version, replace_owned_only):
    """Copy the source segment `output` (its ID is the output's name) into the segmentation node."""
    target = segmentation_node.GetSegmentation()
    matches = [
        segment_id
        for segment_id in _segment_ids(target)
        if segment_tag(target.GetSegment(segment_id), TAG_SKILL) == skill_id
        and segment_tag(target.GetSegment(segment_id), TAG_OUTPUT) == output
    ]
    if not replace_owned_only:
        matches += [
            segment_id
            for segment_id in _segment_ids(target)
            if target.GetSegment(segment_id).GetName() == output and segment_id not in matches
        ]
        replaceable = matches
    else:
        replaceable = [segment_id for segment_id in matches if not is_edited(segmentation_node, segment_id)]

    if replaceable:
        segment_id = replaceable[0]
        for other in replaceable[1:]:
            target.RemoveSegment(other)
        position = target.GetSegmentIndex(segment_id)
        target.RemoveSegment(segment_id)
        before = target.GetNthSegmentID(position) if position < target.GetNumberOfSegments() else ""
    else:
        segment_id = output if target.GetSegment(output) is None else target.GenerateUniqueSegmentID(output)
        before = ""

    # A one-segment copy first: in the source, all segments share one labelmap layer, and a deep copy of a
    # segment taken from there would carry the other segments' voxels along.
    single = slicer.vtkSegmentation()
    single.CopySegmentFromSegmentation(source, output, False)
    segment = slicer.vtkSegment()
    segment.DeepCopy(single.GetSegment(output))
    name_taken = any(target.GetSegment(i).GetName() == output for i in _segment_ids(target))
    segment.SetName(f"{output} ({skill_id})" if name_taken else output)
    segment.SetTag(TAG_SKILL, skill_id)
    segment.SetTag(TAG_SKILL_VERSION, skill_version)
    segment.SetTag(TAG_OUTPUT, output)
    target.AddSegment(segment, segment_id, before)
    target.GetSegment(segment_id).SetTag(TAG_FINGERPRINT, segment_fingerprint(segmentation_node, segment_id))


def _segment_ids(segmentation) -> list[str]:
    return [segmentation.GetNthSegmentID(index) for index in range(segmentation.GetNumberOfSegments())]


def segment_tag(segment, name: str) -> str | None:
    """A segment's tag value, or None when it has no such tag."""
    value = vtk.mutable("")
    return str(value) if segment.GetTag(name, value) else None


def _segment_voxels(segmentation_node, segment_id):
    """The segment's mask on its internal labelmap, (k, j, i), and that labelmap; None when it has no
    binary labelmap (e.g. the user made closed surfaces the source representation)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    labelmap = segment.GetRepresentation(BINARY_LABELMAP)
    if labelmap is None:
        return None, None
    voxels = slicer.util.arrayFromSegmentInternalBinaryLabelmap(segmentation_node, segment_id)
    return voxels == segment.GetLabelValue(), labelmap


def _image_to_world(labelmap) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def segment_fingerprint(segmentation_node, segment_id: str) -> str | None:
    """SHA-256 of the segment's voxels cropped to those set, with the physical position of the crop's first
    voxel and the voxel axes (rounded to 1e-4 mm and 1e-6); None without a binary labelmap.

    Independent of the labelmap's extent and of the other segments sharing its layer.
    """
    mask, labelmap = _segment_voxels(segmentation_node, segment_id)
    if mask is None:
        return None
    digest = hashlib.sha256()
    if mask.any():
        set_voxels = np.nonzero(mask)  # (k, j, i)
        low = [int(axis.min()) for axis in set_voxels]
        high = [int(axis.max()) + 1 for axis in set_voxels]
        crop = mask[low[0] : high[0], low[1] : high[1], low[2] : high[2]]
        i0, _, j0, _, k0, _ = labelmap.GetExtent()
        matrix = _image_to_world(labelmap)
        first = matrix @ np.array([i0 + low[2], j0 + low[1], k0 + low[0], 1.0])
        axes = np.round(matrix[:3, :3], 6) + 0.0  # + 0.0 turns -0.0 into 0.0
        digest.update(np.asarray(crop.shape, dtype=np.int64).tobytes())
        digest.update(np.packbits(crop).tobytes())
        digest.update(f"{axes.tolist()}|{(np.round(first[:3], 4) + 0.0).tolist()}".encode())
    return digest.hexdigest()


def is_edited(segmentation_node, segment_id: str) -> bool:
    """Whether the segment's voxels differ from when MAFM3 imported it (True when it cannot tell)."""
    stored = segment_tag(segmentation_node.GetSegmentation().GetSegment(segment_id), TAG_FINGERPRINT)
    current = segment_fingerprint(segmentation_node, segment_id)
    return stored is None or current is None or stored != current


def segment_volumes_ml(segmentation_node) -> list[tuple[str, str, float]]:
    """(segment ID, name, volume in ml) of every segment, counted on its binary labelmap (NaN for a segment
    without one)."""
    volumes = []
    segmentation = segmentation_node.GetSegmentation()
    for segment_id in _segment_ids(segmentation):
        mask, labelmap = _segment_voxels(segmentation_node, segment_id)
        if mask is None:
            volume = math.nan
        else:
            voxel_mm3 = abs(np.linalg.det(_image_to_world(labelmap)[:3, :3]))
            volume = float(mask.sum()) * voxel_mm3 / 1000.0
        volumes.append((segment_id, segmentation.GetSegment(segment_id).GetName(), volume))
    return volumes


# --- prognosis ----------------------------------------------------------------------------------------------


def import_prognosis(prognosis: Mapping, ct_node) -> PrognosisNodes:
    """Put one prognosis (prognosis.json) into the CT's prognosis table and survival chart."""
    scene = ct_node.GetScene()
    skill_id, version = prognosis["skill"]["id"], prognosis["skill"]["version"]
    probabilities = prognosis.get("survival_probability", {})
    row = {
        "Skill": skill_id,
        "Version": version,
        "Risk score": float(prognosis["risk"]),
        "Risk group": str(prognosis["risk_group"]),
        **{f"S({years} y)": _number(probabilities.get(f"{years}y")) for years in SURVIVAL_YEARS},
        "Demo": "yes" if prognosis.get("demo") else "no",
    }
    ct_name = ct_node.GetName()
    table = result_node(scene, "vtkMRMLTableNode", ROLE_PROGNOSIS, ct_node, None, f"{ct_name} prognosis")
    rows = [old for old in table_rows(table) if old.get("Skill") != skill_id] + [row]
    fill_table(table, PROGNOSIS_COLUMNS, rows)
    table.SetColumnDescription("Risk score", "higher means recurrence is expected earlier")
    for years in SURVIVAL_YEARS:
        table.SetColumnDescription(f"S({years} y)", f"probability of no recurrence {years} year(s) after")

    curve = prognosis["survival_curve"]
    years = [float(days) / DAYS_PER_YEAR for days in curve["times_days"]]
    survival = [float(value) for value in curve["survival"]]
    if years and years[0] > 0:  # S(0) = 1 by definition
        years, survival = [0.0, *years], [1.0, *survival]
    curve_table = result_node(
        scene, "vtkMRMLTableNode", ROLE_SURVIVAL_CURVE, ct_node, skill_id, f"{ct_name} S(t) {skill_id}"
    )
    fill_table(
        curve_table,
        CURVE_COLUMNS,
        [{TIME_COLUMN: t, SURVIVAL_COLUMN: s} for t, s in zip(years, survival, strict=True)],
    )
    curve_table.SetColumnUnitLabel(TIME_COLUMN, "year")
    curve_table.SetColumnDescription(SURVIVAL_COLUMN, "probability of no recurrence by that time")

    series = result_node(
        scene, "vtkMRMLPlotSeriesNode", ROLE_SURVIVAL_SERIES, ct_node, skill_id, f"S(t) {skill_id}"
    )
    series.SetAndObserveTableNodeID(curve_table.GetID())
    series.SetXColumnName(TIME_COLUMN)
    series.SetYColumnName(SURVIVAL_COLUMN)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)

    chart = result_node(
        scene,
        "vtkMRMLPlotChartNode",
        ROLE_SURVIVAL_CHART,
        ct_node,
        None,
        f"{ct_name} recurrence-free survival",
    )
    chart.SetTitle(f"Recurrence-free survival, {ct_name}")
    chart.SetXAxisTitle("Time (years)")
    chart.SetYAxisTitle("Probability free of recurrence")
    chart.SetYAxisRangeAuto(False)
    chart.SetYAxisRange(0.0, 1.0)
    if not chart.HasPlotSeriesNodeID(series.GetID()):
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    for node in (table, curve_table, series, chart):
        place_beside(node, ct_node)
    return PrognosisNodes(table, curve_table, series, chart)


def _number(value) -> float:
    """A probability from JSON; NaN when absent or null (the core writes NaN beyond its last time bin)."""
    return math.nan if value is None else float(value)


def result_node(scene, class_name: str, role: str, ct_node, skill_id: str | None, name: str):
    """The scene's result node with this role for this CT (and skill), or a new one."""
    nodes = scene.GetNodesByClass(class_name)
    for index in range(nodes.GetNumberOfItems()):
        node = nodes.GetItemAsObject(index)
        if (
            node.GetAttribute(ROLE_ATTRIBUTE) == role
            and node.GetNodeReferenceID(CT_REFERENCE_ROLE) == ct_node.GetID()
            and node.GetAttribute(SKILL_ATTRIBUTE) == skill_id
        ):
            return node
    node = scene.AddNewNodeByClass(class_name, name)
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    if skill_id is not None:
        node.SetAttribute(SKILL_ATTRIBUTE, skill_id)
    node.SetNodeReferenceID(CT_REFERENCE_ROLE, ct_node.GetID())
    return node


def fill_table(table_node, columns, rows: list[Mapping]) -> None:
    """Replace a table node's contents: one column per (name, type) of `columns`, one row per mapping."""
    table = vtk.vtkTable()
    for name, kind in columns:
        array = vtk.vtkDoubleArray() if kind is float else vtk.vtkStringArray()
        array.SetName(name)
        for row in rows:
            array.InsertNextValue(row[name])
        table.AddColumn(array)
    table_node.SetAndObserveTable(table)


def table_rows(table_node) -> list[dict]:
    """A table node's rows as {column name: value} (floats from numeric columns, text otherwise)."""
    table = table_node.GetTable()
    columns = [table.GetColumn(index) for index in range(table.GetNumberOfColumns())]
    return [
        {column.GetName(): column.GetValue(row) for column in columns}
        for row in range(table.GetNumberOfRows())
    ]
