"""Quality-control flags of a segmentation: findings a reader should check, one sentence each.

| code | raised when |
|---|---|
| `no-lesion` | no voxel of any segment was found |
| `roi-border` | a segment reaches the edge of the region the model analysed (ROI box or the CT's own edge) |
| `nodes-vs-n-stage` | nodes were segmented while the clinical record says N0, or none while it says N1-N3 |
| `pet-ct-misregistered` | the input check (`imaging.validation.registration_check`) found PET and CT apart |
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from mafm3.clinical import ClinicalRecord
from mafm3.imaging.measurements import bounding_region
from mafm3.imaging.resample import Grid
from mafm3.results import QCFlag, SegmentationResult

NODE_SEGMENT = "GTVn"


def labels_on_box_edge(labels: sitk.Image, box: Grid) -> set[int]:
    """Label values with a voxel whose nearest voxel of `box` lies on the box's faces, or that lies on the
    edge of `labels`' own grid (the lesion may continue beyond what was analysed)."""
    region = bounding_region(labels, (0, 0, 0))
    if region is None:
        return set()
    start, size = region
    crop_zyx = sitk.GetArrayFromImage(sitk.RegionOfInterest(labels, size=size, index=start))
    grid = Grid.of(labels)
    touching = set()
    for value in np.unique(crop_zyx[crop_zyx > 0]).tolist():
        index_xyz = np.argwhere(crop_zyx == value)[:, ::-1] + np.asarray(start)  # (N, 3)
        points = np.asarray(grid.origin) + (index_xyz * np.asarray(grid.spacing)) @ grid.matrix.T
        in_box = (points - np.asarray(box.origin)) @ box.matrix / np.asarray(box.spacing)
        on_box_face = (in_box < 0.5) | (in_box >= np.asarray(box.size) - 1.5)
        on_ct_edge = (index_xyz == 0) | (index_xyz == np.asarray(grid.size) - 1)
        if on_box_face.any() or on_ct_edge.any():
            touching.add(value)
    return touching


def qc_flags(
    segmentation: SegmentationResult,
    box: Grid,
    clinical: ClinicalRecord | None,
    registration: dict | None = None,
) -> list[QCFlag]:
    """The flags of a segmentation result with its measurements (see the module table); `registration` is
    the study's `checks["pet_ct_registration"]` record, None without a PET."""
    flags = []
    if registration is not None and registration.get("misregistered"):
        flags.append(
            QCFlag(
                "pet-ct-misregistered",
                "PET and CT look misregistered (see the warnings): check the registration before trusting "
                "the PET-guided contours and the SUV numbers.",
            )
        )
    present = {spec.name: spec for spec in segmentation.segments if segmentation.measurements.get(spec.label)}
    if not present:
        flags.append(
            QCFlag(
                "no-lesion",
                "No lesion was found: check the images, and that the tumour lies inside the analysed region.",
            )
        )
    on_edge = labels_on_box_edge(segmentation.labels, box)
    for spec in segmentation.segments:
        if spec.label in on_edge:
            flags.append(
                QCFlag(
                    "roi-border",
                    f"{spec.name} reaches the edge of the region the model analysed and may extend beyond "
                    "it: check its extent.",
                )
            )
    n_stage = clinical.n_stage if clinical is not None else None
    has_nodes_segment = any(spec.name == NODE_SEGMENT for spec in segmentation.segments)
    if n_stage and has_nodes_segment:
        if n_stage.upper() == "N0" and NODE_SEGMENT in present:
            flags.append(
                QCFlag(
                    "nodes-vs-n-stage",
                    "Nodes were segmented while the clinical record says N0: check them, or the N stage.",
                )
            )
        elif n_stage.upper().startswith(("N1", "N2", "N3")) and NODE_SEGMENT not in present:
            flags.append(
                QCFlag(
                    "nodes-vs-n-stage",
                    f"No node was segmented while the clinical record says {n_stage}: look for the nodes.",
                )
            )
    return flags
