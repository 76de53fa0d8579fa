"""The annotator's case -> the files `mafm3 dataset add-case` takes, and the prediction it corrects (Qt-free).

A training dataset holds one label map per case, on the CT grid: 0 background, 1 GTVp, 2 GTVn (HECKTOR 2022).
The label map is made from the segments named exactly "GTVp" and "GTVn", wherever they came from (a skill,
then corrected, or drawn by hand); other segments are not part of the dataset. Each segment is resampled onto
the CT grid by Slicer (`slicer.util.arrayFromSegmentBinaryLabelmap`, which exports it with the CT as reference
geometry). A voxel cannot be both, so overlapping GTVp and GTVn are refused rather than guessed.

A case saved from segments a skill predicted carries its correction record: the module remembers, per
segmentation, the run whose result was imported into it and when (`Prediction`); saving passes that run's
output folder and the seconds since the import to `add-case` (`--prediction`, `--editing-seconds`), and the
core compares the prediction with the saved label map.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer

from MAFM3SlicerLib.errors import PanelError
from MAFM3SlicerLib.geometry import ijk_to_ras_of
from MAFM3SlicerLib.volume_files import write_volume

DATASET_LABELS = (("GTVp", 1), ("GTVn", 2))  # segment name -> label value in the dataset


@dataclass(frozen=True)
class CaseFiles:
    """One case written for `mafm3 dataset add-case`."""

    ct: Path
    label: Path
    pet: Path | None = None
    clinical: Path | None = None


@dataclass(frozen=True)
class Prediction:
    """A run's result as it was imported into a segmentation node, for the correction record.

    folder: the run's job folder (kept while the prediction may still be saved); out_dir: its output folder
    (labels, result.json: skill id, version, weights and series of the prediction); ct_id: the CT node it
    was computed on; imported_at: `time.monotonic()` when it was imported (editing starts then).
    """

    folder: Path
    out_dir: Path
    ct_id: str
    imported_at: float


def default_case_id(name: str) -> str:
    """A case id from a node name: letters, digits, '.', '_' and '-' only (what the dataset accepts)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "case"


def label_map_voxels(segmentation_node, ct_node) -> np.ndarray:
    """The dataset's label map of the segmentation on the CT's grid, (z, y, x) uint8.

    Raises:
        PanelError: no segment is named GTVp or GTVn, a name is used twice, or GTVp and GTVn overlap.
    """
    segmentation = segmentation_node.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    labels = np.zeros(slicer.util.arrayFromVolume(ct_node).shape, dtype=np.uint8)
    found = []
    for name, value in DATASET_LABELS:
        indices = [i for i, segment_name in enumerate(names) if segment_name == name]
        if len(indices) > 1:
            raise PanelError(
                f"{len(indices)} segments are named {name}; rename or delete all but the one to save."
            )
        if not indices:
            continue
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(
            segmentation_node, segmentation.GetNthSegmentID(indices[0]), ct_node
        ).astype(bool)
        overlap = int(np.count_nonzero(mask & (labels > 0)))
        if overlap:
            raise PanelError(
                f"GTVp and GTVn overlap in {overlap} voxels; remove the overlap in the Segment Editor first."
            )
        labels[mask] = value
        found.append(name)
    if not found:
        raise PanelError(
            f"No segment of '{segmentation_node.GetName()}' is named GTVp or GTVn; name the tumour segments "
            "so (1 = GTVp, 2 = GTVn in the dataset)."
        )
    return labels


def write_label_map(segmentation_node, ct_node, path: str | Path) -> Path:
    """`label_map_voxels` written as a label map file on the CT's grid (exact geometry)."""
    labels = label_map_voxels(segmentation_node, ct_node)
    scene = slicer.vtkMRMLScene()  # private: the user's scene never sees this temporary node
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")
    slicer.util.updateVolumeFromArray(label_node, labels)
    label_node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_of(ct_node)))
    return write_volume(label_node, path)


def write_case_files(
    ct_node, pet_node, segmentation_node, clinical: Mapping | None, folder: str | Path
) -> CaseFiles:
    """Write CT, PET, the label map (on the CT grid, exact geometry) and the clinical record into `folder`."""
    folder = Path(folder)
    label = write_label_map(segmentation_node, ct_node, folder / "label.nrrd")
    clinical_path = None
    if clinical:
        clinical_path = folder / "clinical.json"
        clinical_path.write_text(json.dumps(dict(clinical), indent=2), encoding="utf-8")
    return CaseFiles(
        ct=write_volume(ct_node, folder / "ct.nrrd"),
        label=label,
        pet=None if pet_node is None else write_volume(pet_node, folder / "pet.nrrd"),
        clinical=clinical_path,
    )
