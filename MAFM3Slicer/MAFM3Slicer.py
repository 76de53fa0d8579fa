"""MAFM3Slicer: one frozen CT foundation model with switchable clinical skills, as a 3D Slicer module.

Thin by design: module metadata, a Widget that binds the .ui to the parameter node, a Logic that calls the
Qt-free `MAFM3SlicerLib`, and the self-test. Nothing here imports torch or the `mafm3` model: skills run in
the `mafm3` worker process, so the GUI stays responsive and Cancel ends a process, not Slicer.
"""

from typing import Annotated

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

from MAFM3SlicerLib.clinical import (
    CLINICAL_FIELDS,
    M_STAGE_CHOICES,
    N_STAGE_CHOICES,
    PERFORMANCE_STATUS_CHOICES,
    SEX_CHOICES,
    T_STAGE_CHOICES,
    UNKNOWN,
    YES_NO_CHOICES,
    clinical_record,
)
from MAFM3SlicerLib.study_check import StudyDescription, describe_study
from MAFM3SlicerLib.volume_files import read_volume, write_volume

DEVICE_CHOICES = ("auto", "cuda", "cpu")  # auto = CUDA when the worker's torch can use it, else CPU


class MAFM3Slicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MAFM3")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["MAFM3Slicer contributors"]
        self.parent.helpText = _(
            "Runs skills of one frozen CT foundation model (CT-CLIP's CT-ViT encoder): head and neck tumour "
            "segmentation (GTVp, GTVn) on CT or PET/CT, recurrence-free survival prognosis from CT and "
            "clinical data, and zero-shot CT classification. Select the CT (and the PET in SUV, if the skill "
            "uses it), pick a skill, and press Apply. The skills shipped with the extension are demo skills: "
            "synthetic data, not for clinical use."
        )
        self.parent.acknowledgementText = _(
            "Implements MAFM3, 'Modular Adaptation of Foundation Models for Multi-Modal Medical AI' (Qazi, "
            "Nwadike, Almakky, Yaqub, Saeed; arXiv 2511.11212), on the CT-ViT image encoder of CT-CLIP "
            "(Hamamci et al.; arXiv 2403.17834). Demo skills: synthetic data, not for clinical use."
        )


@parameterNodeWrapper
class MAFM3SlicerParameterNode:
    """The module's state, saved with the scene.

    inputCT - the CT, in Hounsfield units.
    inputPET - the PET of the same study, in SUV; left empty for CT-only skills.
    outputSegmentation - receives the segments of segmentation skills.
    skillId - id of the selected installed skill pack ("" when none is installed).
    device - where the worker runs the model.
    overlap - sliding-window overlap between neighbouring windows, as a fraction of the window.
    age ... mStage - clinical data for prognosis skills; "unknown" (or 0 for numbers) when not known.
    """

    inputCT: vtkMRMLScalarVolumeNode
    inputPET: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    skillId: str = ""
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    overlap: Annotated[float, WithinRange(0.0, 0.75)] = 0.25
    age: Annotated[float, WithinRange(0.0, 120.0)] = 0.0  # years
    sex: Annotated[str, Choice(list(SEX_CHOICES))] = UNKNOWN
    weight: Annotated[float, WithinRange(0.0, 300.0)] = 0.0  # kg
    tobacco: Annotated[str, Choice(list(YES_NO_CHOICES))] = UNKNOWN
    alcohol: Annotated[str, Choice(list(YES_NO_CHOICES))] = UNKNOWN
    performanceStatus: Annotated[str, Choice(list(PERFORMANCE_STATUS_CHOICES))] = UNKNOWN
    hpv: Annotated[str, Choice(list(YES_NO_CHOICES))] = UNKNOWN
    surgery: Annotated[str, Choice(list(YES_NO_CHOICES))] = UNKNOWN
    chemotherapy: Annotated[str, Choice(list(YES_NO_CHOICES))] = UNKNOWN
    tStage: Annotated[str, Choice(list(T_STAGE_CHOICES))] = UNKNOWN
    nStage: Annotated[str, Choice(list(N_STAGE_CHOICES))] = UNKNOWN
    mStage: Annotated[str, Choice(list(M_STAGE_CHOICES))] = UNKNOWN


class MAFM3SlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MAFM3Slicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The .ui connects the top widget's mrmlSceneChanged(vtkMRMLScene*) to every node selector.
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MAFM3SlicerLogic()
        self.ui.progressBar.hide()  # shown while a skill runs in the worker
        self._listSkills()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.skillSelector.connect("currentIndexChanged(int)", self.onSkillSelected)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputCT:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputCT = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        """Bind the GUI (every widget with a SlicerParameterName) to a parameter node, or unbind with None."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        # The skill list comes from the installed packs, not from a fixed Choice, so it is bound here by hand.
        skillIndex = self.ui.skillSelector.findData(self._parameterNode.skillId)
        wasBlocked = self.ui.skillSelector.blockSignals(True)
        self.ui.skillSelector.currentIndex = skillIndex
        self.ui.skillSelector.blockSignals(wasBlocked)
        hasCT = self._parameterNode.inputCT is not None
        self.ui.applyButton.enabled = hasCT
        self.ui.applyButton.toolTip = (
            _("Check the study, then run the skill") if hasCT else _("Select a CT volume")
        )

    def _listSkills(self) -> None:
        self.ui.skillSelector.clear()
        try:
            manifests = self.logic.installedSkills()
        except ModuleNotFoundError as error:
            if error.name != "mafm3":
                raise
            self.ui.statusLabel.text = _(
                "The mafm3 core is not installed in Slicer's Python; see the README."
            )
            return
        for manifest in manifests:
            if "error" not in manifest:
                self.ui.skillSelector.addItem(
                    f"{manifest['id']} {manifest.get('version', '')}", manifest["id"]
                )
        if self.ui.skillSelector.count == 0:
            self.ui.statusLabel.text = _("No skill pack is installed; `mafm3 doctor` shows where packs go.")

    def onSkillSelected(self, index: int) -> None:
        if self._parameterNode:
            self._parameterNode.skillId = self.ui.skillSelector.itemData(index) or ""

    def onApplyButton(self) -> None:
        """Check the study and show what was found; running the skill goes through the `mafm3` worker."""
        with slicer.util.tryWithErrorDisplay(_("Failed to check the study."), waitCursor=True):
            parameters = self._parameterNode
            description = self.logic.describeStudy(parameters.inputCT, parameters.inputPET)
            clinical = self.logic.clinicalRecord(
                {name: getattr(parameters, name) for name in CLINICAL_FIELDS}
            )
            lines = description.lines() + [
                _("Clinical record: ") + (str(clinical) if clinical else _("none"))
            ]
            self.ui.resultsBrowser.setPlainText("\n".join(list(description.problems) + lines))
            self.ui.resultsCollapsibleButton.collapsed = False
            if description.problems:
                self.ui.statusLabel.text = _("The study has problems; see Results.")
            else:
                self.ui.statusLabel.text = _("The study is fit to run.")


class MAFM3SlicerLogic(ScriptedLoadableModuleLogic):
    """What the module does, callable without the GUI: every method runs headless (see Testing/)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return MAFM3SlicerParameterNode(super().getParameterNode())

    def describeStudy(self, ctNode, petNode=None) -> StudyDescription:
        """Summaries of the CT and optional PET, and every problem that should stop a skill from running."""
        return describe_study(ctNode, petNode)

    def clinicalRecord(self, panelValues: dict) -> dict:
        """The known clinical values, keyed as the core's clinical record (unknowns left out)."""
        return clinical_record(panelValues)

    def installedSkills(self) -> list[dict]:
        """Manifests of the installed skill packs, read by the core's skill store (JSON only: no torch)."""
        from mafm3.skills.store import installed_manifests

        return installed_manifests()

    def volumeToFile(self, volumeNode, path):
        """Write a volume (voxels and exact geometry) to .nrrd/.nii.gz, as the worker reads it."""
        return write_volume(volumeNode, path)

    def fileToVolume(self, path, name=None):
        """Load a volume file written by the worker (or by `volumeToFile`) as a new volume node."""
        return read_volume(path, slicer.mrmlScene, name)


class MAFM3SlicerTest(ScriptedLoadableModuleTest):
    """Self-test on synthetic volumes built here (no download); runs in Slicer and headless under Testing/."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_study_check_accepts_a_pet_ct_and_refuses_the_ct_as_pet()
        self.setUp()
        self.test_file_round_trip_keeps_voxels_and_oblique_geometry()

    def test_study_check_accepts_a_pet_ct_and_refuses_the_ct_as_pet(self):
        ct, pet = _syntheticPetCt()
        logic = MAFM3SlicerLogic()
        self.assertEqual(logic.describeStudy(ct, pet).problems, ())
        problems = logic.describeStudy(ct, ct).problems
        self.assertEqual(len(problems), 1)
        self.assertIn("selected as CT and as PET", problems[0])

    def test_file_round_trip_keeps_voxels_and_oblique_geometry(self):
        import tempfile

        import numpy as np

        ct, _pet = _syntheticPetCt()
        logic = MAFM3SlicerLogic()
        with tempfile.TemporaryDirectory() as folder:
            loaded = logic.fileToVolume(logic.volumeToFile(ct, f"{folder}/ct.nrrd"))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(loaded), slicer.util.arrayFromVolume(ct))
        original, roundTrip = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        ct.GetIJKToRASMatrix(original)
        loaded.GetIJKToRASMatrix(roundTrip)
        np.testing.assert_allclose(
            slicer.util.arrayFromVTKMatrix(roundTrip), slicer.util.arrayFromVTKMatrix(original), atol=1e-9
        )


def _syntheticPetCt():
    """A small oblique, anisotropic CT (air around soft tissue, in HU) and a coarser PET (SUV) over it."""
    import numpy as np

    angle = np.radians(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    ctVoxels = np.full((12, 16, 20), -1000, dtype=np.int16)  # (z, y, x)
    ctVoxels[3:9, 4:12, 5:15] = 40
    ctIjkToRas = np.eye(4)
    ctIjkToRas[:3, :3] = rotation @ np.diag([0.9, 1.1, 2.5])
    ctIjkToRas[:3, 3] = (-9.0, 8.0, -15.0)
    ct = slicer.util.addVolumeFromArray(ctVoxels, ijkToRAS=ctIjkToRas, name="CT")
    petVoxels = np.full((9, 9, 11), 0.5, dtype=np.float32)  # covers the CT with room to spare
    petVoxels[3:5, 3:5, 4:6] = 8.0
    petIjkToRas = np.eye(4)
    petIjkToRas[:3, :3] = rotation @ np.diag([1.8, 2.2, 3.75])
    petIjkToRas[:3, 3] = ctIjkToRas[:3, 3]
    pet = slicer.util.addVolumeFromArray(petVoxels, ijkToRAS=petIjkToRas, name="PET")
    return ct, pet
