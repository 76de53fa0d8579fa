"""Where nodes go in Slicer's subject hierarchy (Data module): results beside their CT, under its study.

In Slicer, a subject hierarchy plugin gives every data node an item as soon as it is added to the scene.
Where none has (a scene without the plugins, e.g. headless), the item is created here, so the same code works
in both.
"""

from __future__ import annotations

import slicer


def _hierarchy(scene):
    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def place_under(node, parent_item: int) -> int:
    """Make `node`'s item a child of `parent_item`; returns the node's item."""
    hierarchy = _hierarchy(node.GetScene())
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent_item)
        return item
    return hierarchy.CreateItem(parent_item, node)


def place_beside(node, reference_node) -> int:
    """Give `node` the parent of `reference_node` (the study of a CT loaded from DICOM, or the scene)."""
    hierarchy = _hierarchy(node.GetScene())
    reference_item = hierarchy.GetItemByDataNode(reference_node)
    parent = hierarchy.GetItemParent(reference_item) if reference_item else hierarchy.GetSceneItemID()
    return place_under(node, parent)


def new_study_item(scene, patient_name: str, study_name: str) -> int:
    """A new patient item with one study item under it (as the DICOM module makes them); the study's item."""
    hierarchy = _hierarchy(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), patient_name)
    return hierarchy.CreateStudyItem(patient, study_name)


def dicom_series_uid(node) -> str | None:
    """The SeriesInstanceUID of a volume that Slicer's DICOM module loaded (its item's "DICOM" UID), else None
    (a volume read from a file, or made in Slicer)."""
    hierarchy = _hierarchy(node.GetScene())
    item = hierarchy.GetItemByDataNode(node)
    uid = (
        hierarchy.GetItemUID(item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMUIDName()) if item else ""
    )
    return uid or None
