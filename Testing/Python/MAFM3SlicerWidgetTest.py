"""Widget tests that need the Slicer application: the .ui bound to the parameter node, in both directions.

The headless pytest suite cannot test this (there is no Qt under slicer-core). ctest runs this file in Slicer
(Testing/Python/CMakeLists.txt); by hand, from the repository root:

    Slicer --no-main-window --additional-module-paths MAFM3Slicer --python-code "import slicer.testing; \
        slicer.testing.runUnitTest(['Testing/Python'], 'MAFM3SlicerWidgetTest')"
"""

import json
import unittest

import numpy as np
import qt
import slicer

from MAFM3Slicer import DEVICE_CHOICES
from MAFM3SlicerLib.demo_study import CLINICAL_ATTRIBUTE
from MAFM3SlicerLib.skills import SkillInfo

SKILLS = [
    SkillInfo("test-seg-ct", "1.0.0", "segmentation", ("CT",), "CT segmentation", False, None),
    SkillInfo("test-seg-petct", "1.0.0", "segmentation", ("CT", "PET"), "PET/CT segmentation", True, None),
    SkillInfo("test-rfs", "1.0.0", "prognosis", ("CT",), "prognosis", False, None),
]


class MAFM3SlicerWidgetTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()
        slicer.util.selectModule("MAFM3Slicer")
        self.widget = slicer.util.getModuleWidget("MAFM3Slicer")
        self.widget._skills = list(SKILLS)  # the panel's skill list, without depending on installed packs
        self.parameters = self.widget.logic.getParameterNode()
        self.parameters.skillIds = ""
        self.widget._onParameterNodeModified()

    def listed(self):
        skillList = self.widget.ui.skillList
        return [skillList.item(row).data(qt.Qt.UserRole) for row in range(skillList.count)]

    def test_a_ct_set_in_the_parameter_node_shows_in_the_ct_selector(self):
        ct = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        self.parameters.inputCT = ct
        self.assertEqual(self.widget.ui.inputCTSelector.currentNodeID, ct.GetID())

    def test_the_device_selector_offers_the_choices_and_writes_the_parameter(self):
        selector = self.widget.ui.deviceComboBox
        self.assertEqual([selector.itemText(i) for i in range(selector.count)], list(DEVICE_CHOICES))
        selector.currentIndex = DEVICE_CHOICES.index("cpu")
        self.assertEqual(self.parameters.device, "cpu")

    def test_pet_ct_skills_are_listed_only_while_a_pet_is_selected(self):
        self.parameters.inputPET = None
        self.assertEqual(self.listed(), ["test-seg-ct", "test-rfs"])
        self.parameters.inputPET = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "PET")
        self.assertEqual(self.listed(), ["test-seg-ct", "test-seg-petct", "test-rfs"])

    def test_checking_skills_writes_their_ids_and_apply_needs_a_ct_and_a_skill(self):
        self.parameters.inputCT = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        self.assertFalse(self.widget.ui.applyButton.enabled)
        skillList = self.widget.ui.skillList
        skillList.item(self.listed().index("test-rfs")).setCheckState(qt.Qt.Checked)
        skillList.item(self.listed().index("test-seg-ct")).setCheckState(qt.Qt.Checked)
        self.assertEqual(self.parameters.skillIds, "test-rfs,test-seg-ct")
        self.assertTrue(self.widget.ui.applyButton.enabled)
        self.parameters.inputCT = None
        self.assertFalse(self.widget.ui.applyButton.enabled)

    def test_a_ct_with_a_clinical_record_fills_the_clinical_fields(self):
        ct = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "DEMO-0 CT")
        record = {"age": 67.0, "sex": "M", "hpv": False, "t_stage": "T2"}
        ct.SetAttribute(CLINICAL_ATTRIBUTE, json.dumps(record))
        self.parameters.inputCT = ct
        self.assertEqual(
            (self.parameters.age, self.parameters.sex, self.parameters.hpv, self.parameters.tStage),
            (67.0, "M", "no", "T2"),
        )
        self.assertEqual(self.widget.ui.sexComboBox.currentText, "M")

    def test_a_clinical_number_out_of_the_panels_range_is_left_unknown_and_reported(self):
        ct = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Old CT")
        ct.SetAttribute(CLINICAL_ATTRIBUTE, json.dumps({"age": 150.0, "sex": "F"}))
        self.parameters.inputCT = ct  # must not raise inside the parameter node's observer
        self.assertEqual((self.parameters.age, self.parameters.sex), (0.0, "F"))
        self.assertIn("age (150.0) is outside 0-120", self.widget.ui.statusLabel.text)

    def test_the_demo_study_loads_by_name_from_sample_data_before_anything_is_installed(self):
        import SampleData

        ct = SampleData.downloadSample("MAFM3 demo PET/CT")
        self.assertEqual(ct.GetName(), "MAFM3 demo CT")
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("MAFM3 demo PET"))
        self.parameters.inputCT = ct
        self.assertNotEqual(self.parameters.sex, "unknown")  # the shipped study's clinical record

    def test_apply_on_a_single_slice_reports_it_in_the_results(self):
        if not self.widget.logic.dependencyStatus().ready:
            self.skipTest("torch and the mafm3 core are not installed in this Slicer")
        self.parameters.inputCT = slicer.util.addVolumeFromArray(
            np.full((1, 8, 8), -1000, np.int16), name="Slice"
        )
        self.parameters.skillIds = "test-seg-ct"
        self.widget.ui.applyButton.click()
        self.assertIn("'Slice' is 2-D", self.widget.ui.resultsBrowser.toPlainText())
        self.assertEqual(self.widget.ui.applyButton.text, "Apply")  # nothing was started
