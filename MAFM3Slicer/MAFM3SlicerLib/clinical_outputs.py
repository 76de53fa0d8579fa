"""What a run measured, its uncertainty and its QC flags as MRML nodes, and RTSTRUCT export (Qt-free).

- Measurements: `result.json`'s `segmentation.segments` -> one table node per CT (role "measurements"), a
  row per segment and, for a segment of several connected components, a row per component ("GTVn 2"), with
  volume, SUVmax/mean/peak, MTV, TLG, HU mean, mean uncertainty and the centroid in RAS (Slicer's space;
  the core writes LPS). SUV columns are NaN without a PET (absent, not zero).
- Uncertainty: `uncertainty.nii.gz` (normalised entropy in percent on the CT grid) -> one scalar volume per
  CT (role "uncertainty"), coloured 0-100 %, replaced on a re-run; the Widget shows it as the foreground.
- QC flags: `segmentation.qc_flags`, one sentence each, go under Results with the warnings (`result_text`).
- RTSTRUCT: through SlicerRT's DICOM RT exporter when SlicerRT is installed, else through the core
  (`mafm3 rtstruct`, run as a child process), which needs the CT's own DICOM files from Slicer's database.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from MAFM3SlicerLib.commands import mafm3_command, run_command, worker_python
from MAFM3SlicerLib.errors import PanelError
from MAFM3SlicerLib.result_nodes import fill_table, result_node
from MAFM3SlicerLib.training_case import write_label_map
from MAFM3SlicerLib.volume_files import read_volume

UNCERTAINTY_FILE = "uncertainty.nii.gz"  # `mafm3.outputs.UNCERTAINTY_MAP`
ROLE_MEASUREMENTS = "measurements"
ROLE_UNCERTAINTY = "uncertainty"
UNCERTAINTY_COLOR_NODE = (
    "vtkMRMLColorTableNodeFileInferno.txt"  # a Slicer colour table; falls back to default
)
MEASUREMENT_FIELDS = (  # (column, result.json field, unit)
    ("Volume", "volume_ml", "ml"),
    ("SUVmax", "suv_max", "SUVbw"),
    ("SUVmean", "suv_mean", "SUVbw"),
    ("SUVpeak", "suv_peak", "SUVbw"),
    ("MTV", "mtv_ml", "ml"),
    ("TLG", "tlg", "g"),
    ("HU mean", "hu_mean", "HU"),
    ("Uncertainty", "uncertainty_percent", "%"),
)
MEASUREMENT_COLUMNS = (
    ("Segment", str),
    *((column, float) for column, _, _ in MEASUREMENT_FIELDS),
    *((f"Centroid {axis}", float) for axis in "RAS"),
)


def measurement_rows(record: Mapping) -> list[dict]:
    """Table rows from a result.json record: each segment, then its components when it has several."""
    rows = []
    for segment in (record.get("segmentation") or {}).get("segments", []):
        rows.append(_row(segment["name"], segment))
        components = segment.get("components") or []
        if len(components) > 1:
            rows += [_row(f"{segment['name']} {n}", c) for n, c in enumerate(components, start=1)]
    return rows


def _row(name: str, values: Mapping) -> dict:
    row = {"Segment": name}
    row |= {column: _number(values.get(field)) for column, field, _ in MEASUREMENT_FIELDS}
    centroid_lps = values.get("centroid_lps") or [math.nan] * 3
    ras = (-centroid_lps[0], -centroid_lps[1], centroid_lps[2])  # LPS -> RAS
    row |= {f"Centroid {axis}": float(v) for axis, v in zip("RAS", ras, strict=True)}
    return row


def _number(value) -> float:
    return math.nan if value is None else float(value)


def import_measurements(record: Mapping, ct_node):
    """The CT's measurement table node, filled from `record` (None when the run segmented nothing)."""
    if record.get("segmentation") is None:
        return None
    table = result_node(
        ct_node.GetScene(),
        "vtkMRMLTableNode",
        ROLE_MEASUREMENTS,
        ct_node,
        None,
        f"{ct_node.GetName()} lesions",
    )
    fill_table(table, MEASUREMENT_COLUMNS, measurement_rows(record))
    for column, _, unit in MEASUREMENT_FIELDS:
        table.SetColumnUnitLabel(column, unit)
    table.SetColumnDescription("SUVpeak", "mean SUV in the 1 ml sphere with the highest mean (PERCIST)")
    table.SetColumnDescription("TLG", "total lesion glycolysis = SUVmean x MTV")
    table.SetColumnDescription("Uncertainty", "mean normalised entropy of the class probabilities")
    return table


def import_uncertainty(out_dir: str | Path, ct_node):
    """The CT's uncertainty volume node, read from the run's uncertainty.nii.gz (None when absent)."""
    path = Path(out_dir) / UNCERTAINTY_FILE
    if not path.is_file():
        return None
    scene = ct_node.GetScene()
    fresh = read_volume(path, scene, f"{ct_node.GetName()} uncertainty")
    node = result_node(scene, "vtkMRMLScalarVolumeNode", ROLE_UNCERTAINTY, ct_node, None, fresh.GetName())
    if node is not fresh:
        node.SetAndObserveImageData(fresh.GetImageData())
        node.CopyOrientation(fresh)
        scene.RemoveNode(fresh)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if scene.GetNodeByID(UNCERTAINTY_COLOR_NODE) is not None:
        display.SetAndObserveColorNodeID(UNCERTAINTY_COLOR_NODE)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 100.0)
    display.SetLowerThreshold(1.0)  # certain voxels (0 %) stay transparent over the CT
    display.ApplyThresholdOn()
    return node


# --- RTSTRUCT -----------------------------------------------------------------------------------------------


def ct_dicom_files(ct_node, database) -> list[str]:
    """The DICOM files the CT node was loaded from, through Slicer's DICOM database (`fileForInstance`).

    Raises:
        PanelError: the CT was not loaded from DICOM, or its files are no longer in the database.
    """
    uids = (ct_node.GetAttribute("DICOM.instanceUIDs") or "").split()
    files = [database.fileForInstance(uid) for uid in uids] if database is not None else []
    if not uids or not files or not all(files):
        raise PanelError(
            "RTSTRUCT needs the CT as a DICOM series: load it through the DICOM module, then export again."
        )
    return files


def rtstruct_command(python, ct_folder: str | Path, labels: str | Path, out: str | Path) -> list[str]:
    """`mafm3 rtstruct`: the label map (1 GTVp, 2 GTVn on the CT grid) as an RTSTRUCT citing the CT series."""
    return mafm3_command(python, "rtstruct", "--ct", ct_folder, "--labels", labels, "--out", out)


def export_rtstruct_with_slicer_rt(segmentation_node, out_dir: str | Path, plugin) -> Path:
    """Export through SlicerRT's DICOM RT plugin (`DicomRtImportExportPluginClass`): the segmentation's
    subject hierarchy item becomes an RTSTRUCT in `out_dir`, with its CT, as SlicerRT writes it."""
    hierarchy = segmentation_node.GetScene().GetSubjectHierarchyNode()
    exportables = plugin.examineForExport(hierarchy.GetItemByDataNode(segmentation_node))
    if not exportables:
        raise PanelError("SlicerRT cannot export this segmentation: place it under the CT's study and retry.")
    for exportable in exportables:
        exportable.directory = str(out_dir)
    error = plugin.export(exportables)
    if error:
        raise PanelError(f"SlicerRT could not write the RTSTRUCT ({error}).")
    return Path(out_dir)


def export_rtstruct(
    segmentation_node,
    ct_node,
    out_dir: str | Path,
    *,
    slicer_rt_plugin=None,
    database=None,
    python=None,
    write_labels: Callable = write_label_map,
    run: Callable = run_command,
) -> Path:
    """RTSTRUCT of the segmentation's GTVp and GTVn into `out_dir`: through SlicerRT when its plugin is given
    (installed), else through the core with the CT's DICOM files. Returns the folder or the file written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if slicer_rt_plugin is not None:
        return export_rtstruct_with_slicer_rt(segmentation_node, out_dir, slicer_rt_plugin)
    files = ct_dicom_files(ct_node, database)
    ct_folder = out_dir / "ct"  # the CT's files alone: the database folder holds other series too
    labels = out_dir / "labels.nrrd"
    try:
        ct_folder.mkdir(exist_ok=True)
        for number, file in enumerate(files):
            shutil.copyfile(file, ct_folder / f"{number:05d}.dcm")
        write_labels(segmentation_node, ct_node, labels)
        out = out_dir / "segmentation.rtstruct.dcm"
        run(rtstruct_command(python or worker_python(), ct_folder, labels, out))
    finally:  # only the RTSTRUCT stays
        shutil.rmtree(ct_folder, ignore_errors=True)
        labels.unlink(missing_ok=True)
    return out
