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
from MAFM3SlicerLib.improvement import Improvement
from MAFM3SlicerLib.skills import SkillInfo

SKILLS = [
    SkillInfo("test-seg-ct", "0.9.0", "segmentation", ("CT",), "CT segmentation", False, None, active=False),
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
        self.widget._showPacks()

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

    def test_the_packs_mark_the_active_version_and_only_segmentation_skills_can_be_improved(self):
        packs = self.widget.ui.installedPacksList
        texts = [packs.item(row).text() for row in range(packs.count)]
        self.assertEqual([t.startswith("test-seg-ct 1.0.0 (active)") for t in texts[:2]], [False, True])
        self.assertNotIn("(active)", texts[0])  # 0.9.0 stays installed, not active
        combo = self.widget.ui.improveSkillComboBox
        self.assertEqual([combo.itemData(i) for i in range(combo.count)], ["test-seg-ct", "test-seg-petct"])

    def test_the_improve_settings_write_the_parameter_node(self):
        self.widget.ui.improveIterationsSpinBox.value = 300
        self.widget.ui.improveHoldoutSpinBox.value = 0.2
        self.assertEqual((self.parameters.improveIterations, self.parameters.improveHoldout), (300, 0.2))

    def test_a_not_worse_improvement_is_shown_and_asked_about_before_anything_is_installed(self):
        record = {
            "comparison": {
                "versions": {
                    "current": {"id": "test-seg-ct", "version": "1.0.0"},
                    "new": {"version": "1.1.0"},
                },
                "held_out_case_ids": ["A", "B", "C"],
                "metrics": {
                    name: {"classes": {"GTVp": {"dice_mean": dice}}}
                    for name, dice in (("current", 0.5), ("new", 0.6))
                },
                "gate": {"passed": True, "reasons": []},
            },
            "pack": "/nonexistent/pack",
            "message": "test-seg-ct 1.1.0 is not worse than 1.0.0.",
        }
        asked = []
        original = slicer.util.confirmYesNoDisplay
        slicer.util.confirmYesNoDisplay = lambda text, **kwargs: asked.append(text) or False
        try:
            self.widget._showImprovement(Improvement.from_record(record))
            self.widget.onPollWorker()  # the question comes once the poll that brought the result is over
        finally:
            slicer.util.confirmYesNoDisplay = original
        self.assertIn("0.500", self.widget.ui.comparisonBrowser.toPlainText())
        self.assertEqual(len(asked), 1)
        self.assertIn("switch to it?", asked[0])
        self.assertEqual(
            self.widget.ui.statusLabel.text, "test-seg-ct stays at 1.0.0; the new version was not installed."
        )
