"""The harness itself: the stand-ins do what slicer_standins.py says, and no more."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import slicer

TESTING_DIR = Path(__file__).resolve().parent
MODULE_DIR = TESTING_DIR.parent / "MAFM3Slicer"


def test_segments_can_be_added_because_the_converter_rules_are_registered(mrml_scene):
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Tumour")
    segment_id = segmentation.GetSegmentation().AddEmptySegment("GTVp", "GTVp", (0.85, 0.16, 0.16))
    assert segment_id == "GTVp"


def test_slicer_util_segment_helpers_reach_the_segmentations_logic_through_slicer_modules(mrml_scene):
    reference = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    slicer.util.updateVolumeFromArray(reference, np.zeros((4, 5, 6), dtype=np.int16))
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Tumour")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("GTVp")
    mask = np.zeros((4, 5, 6), dtype=np.uint8)
    mask[1:3, 2:4, 1:5] = 1

    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, reference)

    np.testing.assert_array_equal(
        slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, reference), mask
    )


def test_the_parameter_node_stand_in_refuses_to_pretend_it_stores_values(mafm3_slicer, mrml_scene):
    parameters = mafm3_slicer.MAFM3SlicerLogic().getParameterNode()
    assert parameters.parameterNode.GetAttribute("ModuleName") == "MAFM3Slicer"
    with pytest.raises(AttributeError, match="stand-in does not store `device`"):
        parameters.device  # noqa: B018


def test_module_and_lib_import_without_qt_torch_or_the_core_and_load_simpleitk_only_when_used():
    code = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{str(MODULE_DIR)!r}, {str(TESTING_DIR)!r}]
        import importlib, pkgutil, MAFM3SlicerLib
        for lib_module in pkgutil.iter_modules(MAFM3SlicerLib.__path__):
            importlib.import_module("MAFM3SlicerLib." + lib_module.name)
        import slicer_standins
        with slicer_standins.installed():
            import MAFM3Slicer
        roots = {{name.split(".")[0] for name in sys.modules}}
        print(sorted(roots & {{"qt", "ctk", "torch", "monai", "mafm3", "SimpleITK"}}))
        try:
            import qt
        except ModuleNotFoundError as error:
            print(error)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.splitlines() == ["[]", "No module named 'qt'"]
