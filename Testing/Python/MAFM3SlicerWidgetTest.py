"""Widget tests that need the Slicer application: the .ui bound to the parameter node, in both directions.

The headless pytest suite cannot test this (there is no Qt under slicer-core). ctest runs this file in Slicer
(Testing/Python/CMakeLists.txt); by hand, from the repository root:

    Slicer --no-main-window --additional-module-paths MAFM3Slicer --python-code "import slicer.testing; \
        slicer.testing.runUnitTest(['Testing/Python'], 'MAFM3SlicerWidgetTest')"
"""

import unittest

import numpy as np
import slicer

from MAFM3Slicer import DEVICE_CHOICES


class MAFM3SlicerWidgetTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()
        slicer.util.selectModule("MAFM3Slicer")
        self.widget = slicer.util.getModuleWidget("MAFM3Slicer")
        self.parameters = self.widget.logic.getParameterNode()

    def test_a_ct_set_in_the_parameter_node_shows_in_the_ct_selector(self):
        ct = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        self.parameters.inputCT = ct
        self.assertEqual(self.widget.ui.inputCTSelector.currentNodeID, ct.GetID())

    def test_the_device_selector_offers_the_choices_and_writes_the_parameter(self):
        selector = self.widget.ui.deviceComboBox
        self.assertEqual([selector.itemText(i) for i in range(selector.count)], list(DEVICE_CHOICES))
        selector.currentIndex = DEVICE_CHOICES.index("cpu")
        self.assertEqual(self.parameters.device, "cpu")

    def test_apply_is_enabled_only_while_a_ct_is_selected(self):
        self.parameters.inputCT = None
        self.assertFalse(self.widget.ui.applyButton.enabled)
        self.parameters.inputCT = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        self.assertTrue(self.widget.ui.applyButton.enabled)

    def test_apply_on_a_single_slice_reports_it_in_the_results(self):
        self.parameters.inputCT = slicer.util.addVolumeFromArray(
            np.full((1, 8, 8), -1000, np.int16), name="Slice"
        )
        self.widget.ui.applyButton.click()
        self.assertIn("'Slice' is 2-D", self.widget.ui.resultsBrowser.toPlainText())
