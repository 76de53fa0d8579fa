"""MAFM3Slicer: one frozen CT foundation model with switchable clinical skills, as a 3D Slicer module.

Thin by design: module metadata, the parameter node, a Widget that binds the .ui to it and shows what the
logic reports, and Slicer's shells of the Logic and the self-test. What the module does lives in the Qt-free
`MAFM3SlicerLib` (`logic.ModuleLogic`, `self_test`), which runs headless under Testing/. Nothing here imports
torch or the `mafm3` model: skills run in the warm `mafm3` worker process (`PythonSlicer -m mafm3.worker`),
so the GUI stays responsive, Cancel ends a job in a process instead of Slicer, and a crash of the model is
reported and recovered from.
"""

from pathlib import Path
from typing import Annotated

import slicer
import vtk
from slicer import (
    vtkMRMLPlotChartNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

from MAFM3SlicerLib.clinical import (
    CLINICAL_FIELDS,
    M_STAGE_CHOICES,
    N_STAGE_CHOICES,
    NUMBER_RANGES,
    PERFORMANCE_STATUS_CHOICES,
    SEX_CHOICES,
    T_STAGE_CHOICES,
    TNM_EDITION_CHOICES,
    TNM_GROUP_CHOICES,
    UNKNOWN,
    YES_NO_CHOICES,
    panel_problems,
    panel_values,
)
from MAFM3SlicerLib.demo_study import SAMPLE_NAME, clinical_record_of, sample_data_source
from MAFM3SlicerLib.errors import PanelError
from MAFM3SlicerLib.improvement import Improvement
from MAFM3SlicerLib.jobs import JobUpdate, describe_worker
from MAFM3SlicerLib.logic import ModuleLogic
from MAFM3SlicerLib.result_nodes import REPORT_FILE, ImportedResults, segment_volumes_ml
from MAFM3SlicerLib.result_text import result_lines
from MAFM3SlicerLib.self_test import (
    check_demo_skills_through_the_worker,
    check_file_round_trip,
    check_study_description,
)
from MAFM3SlicerLib.skills import (
    SkillInfo,
    active_skills,
    check_selection,
    format_skill_ids,
    parse_skill_ids,
    runnable_skills,
    selected_skills,
    skills_from_manifests,
)
from MAFM3SlicerLib.training_case import default_case_id

DEVICE_CHOICES = ("auto", "cuda", "cpu")  # auto = CUDA when the worker's torch can use it, else CPU
MODULE_DIR = Path(__file__).resolve().parent
POLL_INTERVAL_MS = 200  # how often the panel reads the worker's events (and the install's) while they run
DOCUMENTATION_URL = "https://github.com/MAFM3Slicer/SlicerMAFM3#readme"  # EXTENSION_HOMEPAGE
MINIMUM_SLICER = "5.10"  # the first Slicer with Python 3.12 (the module needs 3.11+: tomllib, 3.10+ syntax)


def _inSlicerApplication() -> bool:
    """Whether the Slicer application runs this module (not so when Testing/ imports it under slicer-core)."""
    return hasattr(slicer, "app")


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
            "uses it), pick a skill, and press Apply; the first Apply offers to install PyTorch and the "
            "mafm3 core into Slicer's Python. Needs 3D Slicer {minimum} or later. The skills shipped with "
            "the extension are demo skills: synthetic data, not for clinical use. "
            'Documentation: <a href="{url}">{url}</a>'
        ).format(minimum=MINIMUM_SLICER, url=DOCUMENTATION_URL)
        self.parent.acknowledgementText = _(
            "Implements MAFM3, 'Modular Adaptation of Foundation Models for Multi-Modal Medical AI' (Qazi, "
            "Nwadike, Almakky, Yaqub, Saeed; arXiv 2511.11212), on the CT-ViT image encoder of CT-CLIP "
            "(Hamamci et al.; arXiv 2403.17834). Demo skills: synthetic data, not for clinical use."
        )
        if _inSlicerApplication():
            # SampleData may load after this module: register once every module is there.
            slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Offer the demo PET/CT study shipped with the module in the SampleData module: its files (with their
    checksums) for `SampleData.downloadSample`, and a loader for the button that also files the study in the
    subject hierarchy and shows the PET over the CT. Nothing needs to be installed first."""
    try:
        import SampleData
    except ModuleNotFoundError:
        return  # a Slicer without the SampleData module
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="MAFM3",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=str(MODULE_DIR / "Resources" / "Icons" / "MAFM3Slicer.png"),
        customDownloader=_loadDemoStudyFromSampleData,
        **sample_data_source(MODULE_DIR),
    )


def _loadDemoStudyFromSampleData(source):
    with slicer.util.tryWithErrorDisplay(_("Could not load the demo study."), waitCursor=True):
        study = MAFM3SlicerLogic().loadShippedDemoStudy()
        study.pet.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLPETProceduralColorNodePET-Heat")
        slicer.util.setSliceViewerLayers(
            background=study.ct, foreground=study.pet, foregroundOpacity=0.4, fit=True
        )
        return [study.ct, study.pet]


@parameterNodeWrapper
class MAFM3SlicerParameterNode:
    """The module's state, saved with the scene.

    inputCT - the CT, in Hounsfield units.
    inputPET - the PET of the same study, in SUV; left empty for CT-only skills.
    outputSegmentation - receives the segments of segmentation skills (a new one is made when empty).
    skillIds - the selected skills, comma-separated ids (at most one per task).
    device - where the worker runs the model.
    overlap - sliding-window overlap between neighbouring windows, as a fraction of the window.
    replaceEditedSegments - re-running replaces the skill's segments even where they were edited.
    prognosisTable, survivalChart - the prognosis results of the selected CT.
    age ... tnmGroup - clinical data for prognosis skills; "unknown" (or 0 for numbers) when not known.
    improveIterations - fine-tuning iterations of "Improve skill from saved cases"; 0: the core's default.
    improveHoldout - the share of saved cases held out for the comparison; 0: the core's default.

    The dataset folder is not here: it belongs to the user, not to the scene (the path box keeps its history).
    """

    inputCT: vtkMRMLScalarVolumeNode
    inputPET: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    skillIds: str = ""
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    overlap: Annotated[float, WithinRange(0.0, 0.75)] = 0.25
    replaceEditedSegments: bool = False
    prognosisTable: vtkMRMLTableNode
    survivalChart: vtkMRMLPlotChartNode
    age: Annotated[float, WithinRange(*NUMBER_RANGES["age"])] = 0.0  # years
    sex: Annotated[str, Choice(list(SEX_CHOICES))] = UNKNOWN
    weight: Annotated[float, WithinRange(*NUMBER_RANGES["weight"])] = 0.0  # kg
    tobacco: Annotated[str, Choice(list(YES_NO_CHOICES))] = UNKNOWN
    alcohol: Annotated[str, Choice(list(YES_NO_CHOICES))] = UNKNOWN
    performanceStatus: Annotated[str, Choice(list(PERFORMANCE_STATUS_CHOICES))] = UNKNOWN
    hpv: Annotated[str, Choice(list(YES_NO_CHOICES))] = UNKNOWN
    surgery: Annotated[str, Choice(list(YES_NO_CHOICES))] = UNKNOWN
    chemotherapy: Annotated[str, Choice(list(YES_NO_CHOICES))] = UNKNOWN
    tStage: Annotated[str, Choice(list(T_STAGE_CHOICES))] = UNKNOWN
    nStage: Annotated[str, Choice(list(N_STAGE_CHOICES))] = UNKNOWN
    mStage: Annotated[str, Choice(list(M_STAGE_CHOICES))] = UNKNOWN
    tnmEdition: Annotated[str, Choice(list(TNM_EDITION_CHOICES))] = UNKNOWN
    tnmGroup: Annotated[str, Choice(list(TNM_GROUP_CHOICES))] = UNKNOWN
    improveIterations: Annotated[int, WithinRange(0, 100000)] = 0
    improveHoldout: Annotated[float, WithinRange(0.0, 0.5)] = 0.0


class MAFM3SlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._skills: list[SkillInfo] = []
        self._clinicalFilledFor = None  # the CT whose clinical record last filled the panel
        self._listedSkills = None  # (id, version) of the skill list's items, to rebuild it only on change
        self._shownSegmentation = None  # the segmentation whose segment volumes the table shows
        self._pollTimer = None
        self._installTimer = None
        self._installStatus = None  # the dependency status the running install started from
        self._showingJob = False  # whether the panel shows a running job (Cancel, progress bar)
        self._pendingImprovement = None  # a new version to ask about once the current poll is done
        self._lastSwitchedSkill = None  # the skill whose version the panel switched last (Go back)

    def setup(self) -> None:
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MAFM3Slicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The .ui connects the top widget's mrmlSceneChanged(vtkMRMLScene*) to every MRML widget.
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MAFM3SlicerLogic()
        self.ui.progressBar.hide()  # shown while a job runs in the worker
        self.ui.segmentsTable.setHorizontalHeaderLabels([_("Segment"), _("Volume (ml)")])
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollWorker)
        self._installTimer = qt.QTimer()
        self._installTimer.setInterval(POLL_INTERVAL_MS)
        self._installTimer.connect("timeout()", self.onPollInstall)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.skillList.connect("itemChanged(QListWidgetItem*)", self.onSkillItemChanged)
        self.ui.skillList.connect("currentRowChanged(int)", self.onSkillRowChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.showSurvivalCurveButton.connect("clicked(bool)", self.onShowSurvivalCurve)
        self.ui.importSkillPackButton.connect("clicked(bool)", self.onImportSkillPack)
        self.ui.saveCaseButton.connect("clicked(bool)", self.onSaveCase)
        self.ui.exportRtstructButton.connect("clicked(bool)", self.onExportRtstruct)
        self.ui.improveButton.connect("clicked(bool)", self.onImproveButton)
        self.ui.useVersionButton.connect("clicked(bool)", self.onUseVersion)
        self.ui.goBackButton.connect("clicked(bool)", self.onGoBack)
        self.ui.resultsBrowser.setOpenExternalLinks(True)
        self.loadSkills()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        for timer in (self._pollTimer, self._installTimer):
            if timer is not None:
                timer.stop()
        if self.logic is not None:
            self.logic.cleanup()

    def enter(self) -> None:
        self.initializeParameterNode()
        self._showSegments()  # volumes may have changed in the Segment Editor meanwhile
        if not self.logic.workerStarted and self.logic.dependencyStatus().ready:
            self.logic.startWorker()  # warms up while the user picks inputs; reports the device it found
            self._pollTimer.start()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic.jobRunning and self.logic.runningOp == "run":
            self.logic.cancelJob()
            self.logic.forgetJobNodes()  # its CT is going: the results must not be loaded anywhere
        self.logic.forgetPredictions()  # the segmentations go; an improve job runs on (it needs no node)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self._clinicalFilledFor = None
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

    # -- the panel follows the parameter node -------------------------------------------------------------

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        parameters = self._parameterNode
        self._fillClinicalFromCT(parameters.inputCT)
        self._showSkillList()
        if parameters.outputSegmentation is not self._shownSegmentation:
            self._showSegments()
        self.ui.prognosisTableView.setMRMLTableNode(parameters.prognosisTable)
        self.ui.showSurvivalCurveButton.enabled = parameters.survivalChart is not None
        self._updateApplyButton()

    def _fillClinicalFromCT(self, ctNode) -> None:
        """A CT with a clinical record (the demo study's) fills the clinical fields, once. A number the panel
        cannot hold is left unknown and reported: nothing raises inside this observer."""
        if ctNode is None or ctNode is self._clinicalFilledFor:
            return
        record = clinical_record_of(ctNode, MODULE_DIR)
        if record is None:
            return
        self._clinicalFilledFor = ctNode
        node = self._parameterNode.parameterNode
        wasModifying = node.StartModify()  # one Modified event for all fields
        for name, value in panel_values(record).items():
            setattr(self._parameterNode, name, value)
        node.EndModify(wasModifying)
        problems = panel_problems(record)
        if problems:
            self.ui.statusLabel.text = " ".join(problems)

    def _showSkillList(self) -> None:
        """List the skills whose inputs are selected, checked as the parameter node says. The items are made
        again only when the list changes (never from inside their own itemChanged signal)."""
        import qt

        parameters = self._parameterNode
        runnable = runnable_skills(self._skills, has_pet=parameters.inputPET is not None)
        chosen = set(parse_skill_ids(parameters.skillIds))
        wasBlocked = self.ui.skillList.blockSignals(True)
        listed = [(skill.id, skill.version) for skill in runnable]
        if listed != self._listedSkills:
            self._listedSkills = listed
            self.ui.skillList.clear()
            for skill in runnable:
                item = qt.QListWidgetItem(skill.label)
                item.setData(qt.Qt.UserRole, skill.id)
                item.setToolTip(skill.details)
                item.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsSelectable | qt.Qt.ItemIsUserCheckable)
                self.ui.skillList.addItem(item)
        for row in range(self.ui.skillList.count):
            item = self.ui.skillList.item(row)
            item.setCheckState(qt.Qt.Checked if item.data(qt.Qt.UserRole) in chosen else qt.Qt.Unchecked)
        self.ui.skillList.blockSignals(wasBlocked)
        self.ui.skillDescriptionLabel.text = (
            "" if runnable else _("No installed skill runs on the selected inputs; see Skill packs below.")
        )

    def onSkillItemChanged(self, item) -> None:
        import qt

        chosen = parse_skill_ids(self._parameterNode.skillIds)
        skillId = item.data(qt.Qt.UserRole)
        chosen = [i for i in chosen if i != skillId] + (
            [skillId] if item.checkState() == qt.Qt.Checked else []
        )
        self._parameterNode.skillIds = format_skill_ids(chosen)

    def onSkillRowChanged(self, row: int) -> None:
        item = self.ui.skillList.item(row)
        self.ui.skillDescriptionLabel.text = item.toolTip() if item else ""

    def _selectedSkills(self) -> list[SkillInfo]:
        runnable = runnable_skills(self._skills, has_pet=self._parameterNode.inputPET is not None)
        return selected_skills(runnable, parse_skill_ids(self._parameterNode.skillIds))

    def _showSegments(self) -> None:
        """Segment names and volumes of the output segmentation, as they are now (edits included)."""
        import qt

        segmentation = self._parameterNode.outputSegmentation
        self._shownSegmentation = segmentation
        volumes = segment_volumes_ml(segmentation) if segmentation is not None else []
        self.ui.segmentsTable.setRowCount(len(volumes))
        for row, (_segmentId, name, volume) in enumerate(volumes):
            self.ui.segmentsTable.setItem(row, 0, qt.QTableWidgetItem(name))
            self.ui.segmentsTable.setItem(row, 1, qt.QTableWidgetItem(f"{volume:.2f}"))

    def _updateApplyButton(self) -> None:
        if self._parameterNode is None:
            return  # the module is not shown; enter() updates it
        self._updateImproveButton()
        if self.logic.installing:
            self.ui.applyButton.text = _("Installing...")
            self.ui.applyButton.toolTip = _("Installing PyTorch and the mafm3 core; see the progress below")
            self.ui.applyButton.enabled = False
            return
        if self.logic.jobRunning:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the running job")
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Apply")
        hasCT = self._parameterNode.inputCT is not None
        hasSkill = bool(self._selectedSkills())
        self.ui.applyButton.enabled = hasCT and hasSkill
        if not hasCT:
            self.ui.applyButton.toolTip = _("Select a CT volume")
        elif not hasSkill:
            self.ui.applyButton.toolTip = _("Select a skill")
        else:
            self.ui.applyButton.toolTip = _("Check the study, then run the selected skills")

    def loadSkills(self) -> None:
        """Read the skill packs (installed and shipped) and show them."""
        try:
            self._skills = self.logic.availableSkills()
        except ModuleNotFoundError as error:
            if error.name != "mafm3":
                raise
            self._skills = []  # the worker's list comes once the core is installed and the worker starts
            self.ui.statusLabel.text = _("The mafm3 core is not installed yet; Apply offers to install it.")
        self._showPacks()
        if self._parameterNode:
            self._onParameterNodeModified()

    def _showPacks(self) -> None:
        """Every pack, (active) marking the version of each skill that runs; the skills one can improve."""
        import qt

        self.ui.installedPacksList.clear()
        for skill in self._skills:
            active = _(" (active)") if skill.active else ""
            item = qt.QListWidgetItem(f"{skill.label}{active} - {skill.task}, {'+'.join(skill.modalities)}")
            item.setData(qt.Qt.UserRole, [skill.id, skill.version])
            item.setToolTip(skill.details)
            self.ui.installedPacksList.addItem(item)
        if not self._skills:
            self.ui.installedPacksList.addItem(_("(no skill pack found)"))
        combo = self.ui.improveSkillComboBox
        chosen = combo.currentData  # kept; at first, the segmentation skill selected to run, if any
        if chosen is None and self._parameterNode is not None:
            chosen = next((s.id for s in self._selectedSkills() if s.task == "segmentation"), None)
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        # Corrections are masks: only segmentation skills learn from them.
        for skill in active_skills(self._skills):
            if skill.task == "segmentation":
                combo.addItem(_("{label} (active)").format(label=skill.label), skill.id)
        index = combo.findData(chosen) if chosen else -1
        combo.currentIndex = index if index >= 0 else 0
        combo.blockSignals(wasBlocked)
        previous = self.logic.previousVersions.get(self._lastSwitchedSkill)
        self.ui.goBackButton.enabled = previous is not None
        self.ui.goBackButton.text = (
            _("Go back to {skill} {version}").format(skill=self._lastSwitchedSkill, version=previous)
            if previous
            else _("Go back to the previous version")
        )

    # -- Apply / Cancel -----------------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        if self.logic.jobRunning:
            self.logic.cancelJob()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        ready = False  # stays so when the error display below swallows an exception
        with slicer.util.tryWithErrorDisplay(_("Could not install the dependencies.")):
            ready = self._ensureDependencies()  # asks first; never under a wait cursor
        if not ready:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the skills."), waitCursor=True):
            parameters = self._parameterNode
            description = self.logic.describeStudy(parameters.inputCT, parameters.inputPET)
            self.ui.resultsBrowser.setPlainText("\n".join(list(description.problems) + description.lines()))
            if description.problems:
                self.ui.resultsCollapsibleButton.collapsed = False
                self.ui.statusLabel.text = _("The study has problems; see Results.")
                return
            skills = self._selectedSkills()
            try:
                check_selection(skills)
            except PanelError as error:
                self.ui.statusLabel.text = str(error)
                return
            self.logic.startJob(
                parameters.inputCT,
                parameters.inputPET,
                self.logic.clinicalRecord({name: getattr(parameters, name) for name in CLINICAL_FIELDS}),
                [skill.id for skill in skills],
                device=parameters.device,
                overlap=parameters.overlap,
                segmentationNode=parameters.outputSegmentation,
                replaceEditedSegments=parameters.replaceEditedSegments,
            )
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting the worker...")
            self._pollTimer.start()
        self.onPollWorker()  # outside the wait cursor: what it shows may ask a question

    def _ensureDependencies(self) -> bool:
        """True when skills can run now. Otherwise, after one confirmation, start installing what Slicer's
        Python lacks in the background (onPollInstall follows it) and return False."""
        status = self.logic.dependencyStatus()
        if status.ready:
            return True
        refusal = status.refusal()
        if refusal:
            raise PanelError(refusal)
        question = _(
            "MAFM3 runs its skills in Slicer's Python, which needs:\n\n- {lines}\n\nThis downloads up to a "
            "few GB and takes some minutes; Slicer stays usable meanwhile, and no package Slicer already has "
            "is changed. Install now?"
        ).format(lines="\n- ".join(status.missing()))
        if not slicer.util.confirmOkCancelDisplay(question, windowTitle=_("MAFM3: install dependencies")):
            self.ui.statusLabel.text = _("Skills need their dependencies; press Apply again to install them.")
            return False
        self._installStatus = status
        self.logic.startInstall(status)
        self.ui.progressBar.setRange(0, 0)  # busy: pip reports no overall fraction
        self.ui.progressBar.show()
        self._updateApplyButton()
        self._installTimer.start()
        self.onPollInstall()
        return False

    def onPollInstall(self) -> None:
        """Every POLL_INTERVAL_MS while installing: the step and its last line; at the end, the outcome."""
        progress = self.logic.install.poll()
        self.ui.statusLabel.text = (
            f"{progress.label} ({progress.step}/{progress.steps}): {progress.last_line[-120:]}"
        )
        if not progress.finished:
            return
        self._installTimer.stop()
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.hide()
        self._updateApplyButton()
        if progress.failed:
            self.ui.statusLabel.text = _(
                "The install stopped at: {step}. Its full log is under Results."
            ).format(step=progress.failed)
            self.ui.resultsBrowser.setPlainText(self.logic.install.log)
            self.ui.resultsCollapsibleButton.collapsed = False
            return
        if self.logic.finishInstall(self._installStatus) and slicer.util.confirmYesNoDisplay(
            _("The mafm3 core was updated; Slicer must restart to use it. Restart now?")
        ):
            slicer.util.restart()
            return
        self.loadSkills()
        self.ui.statusLabel.text = _("Installed. Press Apply to run the selected skills.")

    def onPollWorker(self) -> None:
        """Every POLL_INTERVAL_MS while the worker runs: show its news (and notice if it dies while idle);
        after an improve, ask whether to switch to the new version."""
        for update in self.logic.pollJob():
            self._showUpdate(update)
        running = self.logic.jobRunning
        if running != self._showingJob:
            self._showingJob = running
            self.ui.progressBar.visible = running
            self._updateApplyButton()
        if not running and not self.logic.workerStarted:
            self._pollTimer.stop()
        if self._pendingImprovement is not None:
            improvement, self._pendingImprovement = self._pendingImprovement, None
            self._askToSwitch(improvement)

    def _showUpdate(self, update: JobUpdate) -> None:
        if update.kind == "ready":
            self.ui.detectedDeviceLabel.text = describe_worker(update.record)
        elif update.kind == "skills" and not self._skills:
            self._skills = skills_from_manifests(update.record.get("skills", []))
            self._showPacks()
            if self._parameterNode:
                self._onParameterNodeModified()
        elif update.kind == "progress":
            self.ui.progressBar.value = round(100 * update.fraction)
            self.ui.statusLabel.text = f"{update.stage}: {update.message}" if update.message else update.stage
        elif update.kind == "result" and update.job.op == "improve":
            self._showImprovement(update.imported)
        elif update.kind == "result":
            self._showResults(update.imported)
        elif update.kind in ("error", "cancelled", "crashed"):
            self.ui.statusLabel.text = update.message
            if update.detail:
                self.ui.resultsBrowser.setPlainText(update.message + "\n\n" + update.detail)
                self.ui.resultsCollapsibleButton.collapsed = False

    def _showResults(self, imported: ImportedResults) -> None:
        parameters = self._parameterNode
        record = imported.record
        if imported.segmentation is not None and parameters is not None:
            parameters.outputSegmentation = imported.segmentation
            self._showSegments()  # new volumes, even when the node was already selected
        if imported.prognosis is not None and parameters is not None:
            parameters.prognosisTable = imported.prognosis.table
            parameters.survivalChart = imported.prognosis.chart
            slicer.modules.plots.logic().ShowChartInLayout(imported.prognosis.chart)
        if imported.uncertainty is not None:
            slicer.util.setSliceViewerLayers(foreground=imported.uncertainty, foregroundOpacity=0.4)
        if imported.measurements is not None:
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(imported.measurements.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()
        report = Path(record.get("out", "")) / REPORT_FILE
        self.ui.resultsBrowser.setHtml(
            "<br>".join(_(line) for line in result_lines(record))
            + (f'<br><a href="{report.as_uri()}">{_("Open the report")}</a>' if report.is_file() else "")
        )
        self.ui.resultsCollapsibleButton.collapsed = False
        self.ui.statusLabel.text = _("Done.")

    def _showImprovement(self, improvement: Improvement) -> None:
        self.ui.comparisonBrowser.setHtml(improvement.html())
        self.ui.trainingCollapsibleButton.collapsed = False
        self.ui.statusLabel.text = improvement.summary
        if improvement.not_worse:
            self._pendingImprovement = improvement  # asked once this poll is over (onPollWorker)
        else:
            self.logic.declineImprovement()

    def _askToSwitch(self, improvement: Improvement) -> None:
        """Ask first (never under a wait cursor), then install and switch, or keep the current version."""
        if not slicer.util.confirmYesNoDisplay(improvement.question, windowTitle=_("MAFM3: switch version?")):
            self.logic.declineImprovement()
            self.ui.statusLabel.text = _(
                "{skill} stays at {version}; the new version was not installed."
            ).format(skill=improvement.skill_id, version=improvement.current_version)
            return
        with slicer.util.tryWithErrorDisplay(_("The new version was not installed."), waitCursor=True):
            self.ui.statusLabel.text = self.logic.adoptImprovement().strip()
            self._lastSwitchedSkill = improvement.skill_id
            self.loadSkills()

    def onShowSurvivalCurve(self) -> None:
        if self._parameterNode and self._parameterNode.survivalChart:
            slicer.modules.plots.logic().ShowChartInLayout(self._parameterNode.survivalChart)

    # -- skill packs, training data -----------------------------------------------------------------------

    def onImportSkillPack(self) -> None:
        import qt

        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(),
            _("Import skill pack: choose the pack's .zip, or the manifest.json in its folder"),
            "",
            _("Skill pack (*.zip manifest.json)"),
        )
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("The skill pack was not installed."), waitCursor=True):
            self.ui.statusLabel.text = self.logic.installSkillPack(path).strip()
            self.loadSkills()

    def onExportRtstruct(self) -> None:
        import qt

        parameters = self._parameterNode
        if parameters.inputCT is None or parameters.outputSegmentation is None:
            slicer.util.errorDisplay(_("Select the CT and the segmentation to export."))
            return
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Folder for the RTSTRUCT"))
        if folder:
            with slicer.util.tryWithErrorDisplay(_("The RTSTRUCT was not written."), waitCursor=True):
                written = self.logic.exportRtstruct(parameters.outputSegmentation, parameters.inputCT, folder)
                self.ui.statusLabel.text = _("RTSTRUCT written to {path}.").format(path=written)

    def _datasetFolder(self) -> str:
        """The dataset folder of the path box, asked for when it is empty; kept in the box's history (the
        application settings), which restores the most recent one in the next session."""
        import qt

        pathBox = self.ui.datasetPathLineEdit
        if not pathBox.currentPath:
            pathBox.currentPath = qt.QFileDialog.getExistingDirectory(
                slicer.util.mainWindow(), _("Training dataset folder (HECKTOR 2022 layout; created if empty)")
            )
        if pathBox.currentPath:
            pathBox.addCurrentPathToHistory()
        return pathBox.currentPath

    def onSaveCase(self) -> None:
        import qt

        parameters = self._parameterNode
        if parameters.inputCT is None or parameters.outputSegmentation is None:
            slicer.util.errorDisplay(_("Select the CT and the segmentation to save."))
            return
        dataset = self._datasetFolder()
        if not dataset:
            return
        caseId = qt.QInputDialog.getText(
            slicer.util.mainWindow(),
            _("Save case"),
            _("Case id:"),
            qt.QLineEdit.Normal,
            default_case_id(parameters.inputCT.GetName()),
        )
        if not caseId:
            return
        with slicer.util.tryWithErrorDisplay(_("The case was not saved."), waitCursor=True):
            self.ui.statusLabel.text = self.logic.saveCaseToDataset(
                dataset,
                parameters.inputCT,
                parameters.inputPET,
                parameters.outputSegmentation,
                self.logic.clinicalRecord({name: getattr(parameters, name) for name in CLINICAL_FIELDS}),
                caseId,
            ).strip()
            self.ui.datasetEffortLabel.text = "\n".join(self.logic.datasetEffort(dataset))

    # -- improving a skill, its versions -------------------------------------------------------------------

    def _updateImproveButton(self) -> None:
        """Improve becomes Cancel while an improve runs; nothing else starts or switches during a job."""
        running = self.logic.runningOp
        self.ui.useVersionButton.enabled = running is None
        if running == "improve":
            self.ui.improveButton.text = _("Cancel improvement")
            self.ui.improveButton.enabled = True
            return
        self.ui.improveButton.text = _("Improve skill from saved cases...")
        hasSkill = self.ui.improveSkillComboBox.count > 0
        self.ui.improveButton.enabled = running is None and not self.logic.installing and hasSkill

    def onImproveButton(self) -> None:
        if self.logic.runningOp == "improve":
            self.logic.cancelJob()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        ready = False
        with slicer.util.tryWithErrorDisplay(_("Could not install the dependencies.")):
            ready = self._ensureDependencies()  # asks first; never under a wait cursor
        if not ready:
            return
        skillId = self.ui.improveSkillComboBox.currentData
        skill = next((s for s in active_skills(self._skills) if s.id == skillId), None)
        if skill is None:
            self.ui.statusLabel.text = _("Choose the segmentation skill to improve.")
            return
        dataset = self._datasetFolder()
        if not dataset:
            return
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start improving the skill."), waitCursor=True):
            self.ui.datasetEffortLabel.text = "\n".join(self.logic.datasetEffort(dataset))
            self.logic.startImprovement(
                skill.id,
                skill.version,
                dataset,
                iterations=parameters.improveIterations or None,
                holdout=parameters.improveHoldout or None,
                device=parameters.device,
            )
            self.ui.comparisonBrowser.clear()
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Improving {skill} {version} from {dataset}...").format(
                skill=skill.id, version=skill.version, dataset=dataset
            )
            self._pollTimer.start()
        self.onPollWorker()

    def onUseVersion(self) -> None:
        import qt

        item = self.ui.installedPacksList.currentItem()
        chosen = item.data(qt.Qt.UserRole) if item is not None else None
        if not chosen:
            self.ui.statusLabel.text = _("Select the version to use in the list of skill packs.")
            return
        self._switchVersion(*chosen)

    def onGoBack(self) -> None:
        previous = self.logic.previousVersions.get(self._lastSwitchedSkill)
        if previous is not None:
            self._switchVersion(self._lastSwitchedSkill, previous)

    def _switchVersion(self, skillId: str, version: str) -> None:
        with slicer.util.tryWithErrorDisplay(_("The version was not switched."), waitCursor=True):
            self.ui.statusLabel.text = self.logic.useSkillVersion(skillId, version).strip()
            self._lastSwitchedSkill = skillId
            self.loadSkills()


class MAFM3SlicerLogic(ScriptedLoadableModuleLogic, ModuleLogic):
    """Slicer's shell of `MAFM3SlicerLib.logic.ModuleLogic` (every method is there), plus the parameter node.

    Inside Slicer the worker and every `mafm3` command run with Slicer's startup environment (as
    `slicer.util.launchConsoleProcess` does), temporary folders live under `slicer.app.temporaryPath`, and
    the worker is stopped when Slicer quits.
    """

    def __init__(self, pythonExecutable=None, workerEnvironment=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        temporaryDir = None
        if _inSlicerApplication():
            workerEnvironment = workerEnvironment or slicer.util.startupEnvironment()
            temporaryDir = slicer.app.temporaryPath
            slicer.app.connect("aboutToQuit()", self.cleanup)
        ModuleLogic.__init__(self, MODULE_DIR, pythonExecutable, workerEnvironment, temporaryDir)

    def getParameterNode(self):
        return MAFM3SlicerParameterNode(super().getParameterNode())


class MAFM3SlicerTest(ScriptedLoadableModuleTest):
    """Self-test (`MAFM3SlicerLib.self_test`): synthetic volumes, then the demo skills through the worker.

    The inference part is skipped, with the reason, when the core, torch or every skill pack is missing; it
    never passes without having run, and it stops the worker and clears the scene also when it fails.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def tearDown(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (
            self.test_study_check_accepts_a_pet_ct_and_refuses_the_ct_as_pet,
            self.test_file_round_trip_keeps_voxels_and_oblique_geometry,
            self.test_demo_skills_run_through_the_worker_into_nodes,
        ):
            self.setUp()
            try:
                test()
            finally:
                self.tearDown()

    def test_study_check_accepts_a_pet_ct_and_refuses_the_ct_as_pet(self):
        check_study_description(self, MAFM3SlicerLogic())

    def test_file_round_trip_keeps_voxels_and_oblique_geometry(self):
        check_file_round_trip(self, MAFM3SlicerLogic())

    def test_demo_skills_run_through_the_worker_into_nodes(self):
        ran = check_demo_skills_through_the_worker(self, MAFM3SlicerLogic())
        self.delayDisplay("Demo skills ran through the worker: " + ", ".join(ran))
