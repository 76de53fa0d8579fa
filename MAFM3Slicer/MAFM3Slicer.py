"""MAFM3Slicer: one frozen CT foundation model with switchable clinical skills, as a 3D Slicer module.

Thin by design: module metadata, a Widget that binds the .ui to the parameter node and shows what the worker
reports, a Logic that calls the Qt-free `MAFM3SlicerLib`, and the self-test. Nothing here imports torch or the
`mafm3` model: skills run in the warm `mafm3` worker process (`python -m mafm3.worker`, Slicer's Python), so
the GUI stays responsive, Cancel ends a job in a process instead of Slicer, and a crash of the model is
reported and recovered from.
"""

import importlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
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
    PERFORMANCE_STATUS_CHOICES,
    SEX_CHOICES,
    T_STAGE_CHOICES,
    UNKNOWN,
    YES_NO_CHOICES,
    clinical_record,
    panel_values,
)
from MAFM3SlicerLib.clinical_outputs import export_rtstruct
from MAFM3SlicerLib.commands import add_case_command, run_command, skill_install_command, worker_python
from MAFM3SlicerLib.demo_study import (
    CLINICAL_ATTRIBUTE,
    SAMPLE_NAME,
    DemoStudy,
    load_demo_study,
    make_demo_study,
)
from MAFM3SlicerLib.dependencies import (
    DependencyStatus,
    core_install_commands,
    dependency_status,
    pinned_constraints,
    restart_needed,
)
from MAFM3SlicerLib.errors import PanelError
from MAFM3SlicerLib.geometry import image_from_volume
from MAFM3SlicerLib.jobs import JobRunner, JobUpdate, describe_worker, prepare_job
from MAFM3SlicerLib.result_nodes import (
    LABEL_MAP_FILE,
    PROGNOSIS_FILE,
    REPORT_FILE,
    ImportedResults,
    import_results,
    segment_tag,
    segment_volumes_ml,
    table_rows,
)
from MAFM3SlicerLib.skills import (
    SkillInfo,
    available_skills,
    check_selection,
    format_skill_ids,
    pack_path,
    parse_skill_ids,
    runnable_skills,
    selected_skills,
    skills_from_manifests,
)
from MAFM3SlicerLib.study_check import StudyDescription, describe_study
from MAFM3SlicerLib.training_case import default_case_id, write_case_files
from MAFM3SlicerLib.volume_files import read_volume, write_volume
from MAFM3SlicerLib.worker_client import WorkerClient

DEVICE_CHOICES = ("auto", "cuda", "cpu")  # auto = CUDA when the worker's torch can use it, else CPU
MODULE_DIR = Path(__file__).resolve().parent
POLL_INTERVAL_MS = 200  # how often the panel reads the worker's events while a job runs


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
            "uses it), pick a skill, and press Apply. The skills shipped with the extension are demo skills: "
            "synthetic data, not for clinical use."
        )
        self.parent.acknowledgementText = _(
            "Implements MAFM3, 'Modular Adaptation of Foundation Models for Multi-Modal Medical AI' (Qazi, "
            "Nwadike, Almakky, Yaqub, Saeed; arXiv 2511.11212), on the CT-ViT image encoder of CT-CLIP "
            "(Hamamci et al.; arXiv 2403.17834). Demo skills: synthetic data, not for clinical use."
        )
        if _inSlicerApplication():
            # SampleData may load after this module: register once every module is there.
            slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Offer the demo PET/CT study in the SampleData module (generated locally: nothing is downloaded)."""
    try:
        import SampleData
    except ModuleNotFoundError:
        return  # a Slicer without the SampleData module
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="MAFM3",
        sampleName=SAMPLE_NAME,
        uris=[],
        fileNames=[],
        nodeNames=[],
        thumbnailFileName=str(MODULE_DIR / "Resources" / "Icons" / "MAFM3Slicer.png"),
        customDownloader=_loadDemoStudyFromSampleData,
    )


def _loadDemoStudyFromSampleData(source):
    with slicer.util.tryWithErrorDisplay(_("Could not make the demo study."), waitCursor=True):
        study = MAFM3SlicerLogic().loadDemoStudy()
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
    age ... mStage - clinical data for prognosis skills; "unknown" (or 0 for numbers) when not known.
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
        self._skills: list[SkillInfo] = []
        self._clinicalFilledFor = None  # the CT whose clinical record last filled the panel
        self._listedSkills = None  # (id, version) of the skill list's items, to rebuild it only on change
        self._shownSegmentation = None  # the segmentation whose segment volumes the table shows
        self._pollTimer = None
        self._showingJob = False  # whether the panel shows a running job (Cancel, progress bar)

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

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.skillList.connect("itemChanged(QListWidgetItem*)", self.onSkillItemChanged)
        self.ui.skillList.connect("currentRowChanged(int)", self.onSkillRowChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.showSurvivalCurveButton.connect("clicked(bool)", self.onShowSurvivalCurve)
        self.ui.importSkillPackButton.connect("clicked(bool)", self.onImportSkillPack)
        self.ui.saveCaseButton.connect("clicked(bool)", self.onSaveCase)
        self.ui.exportRtstructButton.connect("clicked(bool)", self.onExportRtstruct)
        self.ui.resultsBrowser.setOpenExternalLinks(True)
        self.loadSkills()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self._pollTimer is not None:
            self._pollTimer.stop()
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
        if self.logic.jobRunning:
            self.logic.cancelJob()
            self.logic.forgetJobNodes()  # its CT is going: the results must not be loaded anywhere
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
        """A CT that carries its clinical record (the demo study's) fills the clinical fields, once."""
        if ctNode is None or ctNode is self._clinicalFilledFor or not ctNode.GetAttribute(CLINICAL_ATTRIBUTE):
            return
        self._clinicalFilledFor = ctNode
        node = self._parameterNode.parameterNode
        wasModifying = node.StartModify()  # one Modified event for all fields
        for name, value in panel_values(json.loads(ctNode.GetAttribute(CLINICAL_ATTRIBUTE))).items():
            setattr(self._parameterNode, name, value)
        node.EndModify(wasModifying)

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
        self.ui.installedPacksList.clear()
        for skill in self._skills:
            self.ui.installedPacksList.addItem(f"{skill.label} - {skill.task}, {'+'.join(skill.modalities)}")
        if not self._skills:
            self.ui.installedPacksList.addItem(_("(no skill pack found)"))

    # -- Apply / Cancel -----------------------------------------------------------------------------------

    def onApplyButton(self) -> None:
        if self.logic.jobRunning:
            self.logic.cancelJob()
            self.ui.statusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the skills."), waitCursor=True):
            if not self._ensureDependencies():
                return
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
            self.onPollWorker()

    def _ensureDependencies(self) -> bool:
        """Install what Slicer's Python lacks, after one confirmation; True when skills can run now."""
        status = self.logic.dependencyStatus()
        if status.ready:
            return True
        question = _(
            "MAFM3 runs its skills in Slicer's Python, which needs:\n\n- {lines}\n\nThis downloads up to a "
            "few GB and takes some minutes. Install now?"
        ).format(lines="\n- ".join(status.missing()))
        if not slicer.util.confirmOkCancelDisplay(question, windowTitle=_("MAFM3: install dependencies")):
            self.ui.statusLabel.text = _("Skills need their dependencies; press Apply again to install them.")
            return False
        if not status.torch_ok:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise PanelError(
                    _(
                        "The PyTorch extension is missing; install it in the Extensions Manager, restart "
                        "Slicer and press Apply again."
                    )
                ) from None
            # Our dialog was the one confirmation. PyTorchUtils picks the CUDA build for the driver (and, once
            # installed, imports torch in this process: the one place torch enters the GUI process).
            installed = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=status.torch_requirement or None
            )
            if installed is None:
                raise PanelError(_("PyTorch was not installed; see the Python console for why."))
        if not status.core_ok and self.logic.installCore(status):
            if slicer.util.confirmYesNoDisplay(
                _("The mafm3 core was updated; Slicer must restart to use it. Restart now?")
            ):
                slicer.util.restart()
            return False
        self.loadSkills()
        return True

    def onPollWorker(self) -> None:
        """Every POLL_INTERVAL_MS while the worker runs: show its news (and notice if it dies while idle)."""
        for update in self.logic.pollJob():
            self._showUpdate(update)
        running = self.logic.jobRunning
        if running != self._showingJob:
            self._showingJob = running
            self.ui.progressBar.visible = running
            self._updateApplyButton()
        if not running and not self.logic.workerStarted:
            self._pollTimer.stop()

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
        lines = [record.get("disclaimer", "")] if record.get("demo") else []
        if imported.segmentation is not None and parameters is not None:
            parameters.outputSegmentation = imported.segmentation
            self._showSegments()  # new volumes, even when the node was already selected
        if imported.prognosis is not None and parameters is not None:
            parameters.prognosisTable = imported.prognosis.table
            parameters.survivalChart = imported.prognosis.chart
            slicer.modules.plots.logic().ShowChartInLayout(imported.prognosis.chart)
        lines += [_("QC: {flag}").format(flag=flag) for flag in imported.qc_flags]
        if imported.uncertainty is not None:
            slicer.util.setSliceViewerLayers(foreground=imported.uncertainty, foregroundOpacity=0.4)
        if imported.measurements is not None:
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(imported.measurements.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()
        classification = record.get("classification")
        if classification:
            ranked = sorted(classification["probabilities"].items(), key=lambda item: -item[1])
            lines += [_("Zero-shot classification:")] + [f"  {name}: {p:.0%}" for name, p in ranked]
        timings = record.get("timings_s", {})
        lines.append(
            _("Ran on {device} in {seconds:.1f} s.").format(
                device=record.get("device", "?"), seconds=timings.get("total", float("nan"))
            )
        )
        report = Path(record.get("out", "")) / REPORT_FILE
        self.ui.resultsBrowser.setHtml(
            "<br>".join(lines)
            + (f'<br><a href="{report.as_uri()}">{_("Open the report")}</a>' if report.is_file() else "")
        )
        self.ui.resultsCollapsibleButton.collapsed = False
        self.ui.statusLabel.text = _("Done.")

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

    def onSaveCase(self) -> None:
        import qt

        parameters = self._parameterNode
        if parameters.inputCT is None or parameters.outputSegmentation is None:
            slicer.util.errorDisplay(_("Select the CT and the segmentation to save."))
            return
        dataset = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Training dataset folder (HECKTOR 2022 layout; created if empty)")
        )
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


class MAFM3SlicerLogic(ScriptedLoadableModuleLogic):
    """What the module does, callable without the GUI: every method runs headless (see Testing/).

    pythonExecutable: the Python of the worker and of every `mafm3` command (default: Slicer's).
    workerEnvironment: their environment (default: in Slicer, Slicer's startup environment, as for
    `slicer.util.launchConsoleProcess`; elsewhere this process's).
    """

    def __init__(self, pythonExecutable=None, workerEnvironment=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.pythonExecutable = pythonExecutable or worker_python()
        if workerEnvironment is None and _inSlicerApplication():
            workerEnvironment = slicer.util.startupEnvironment()
        self.workerEnvironment = workerEnvironment
        self._runner = None
        self.resultsFolder = None  # the last job folder with results (kept for its report); one at a time

    def getParameterNode(self):
        return MAFM3SlicerParameterNode(super().getParameterNode())

    # -- study, clinical data, skills ---------------------------------------------------------------------

    def describeStudy(self, ctNode, petNode=None) -> StudyDescription:
        """Summaries of the CT and optional PET, and every problem that should stop a skill from running."""
        return describe_study(ctNode, petNode)

    def clinicalRecord(self, panelValues: dict) -> dict:
        """The known clinical values, keyed as the core's clinical record (unknowns left out)."""
        return clinical_record(panelValues)

    def availableSkills(self) -> list[SkillInfo]:
        """The installed and shipped skill packs, from their manifests (no torch).

        Raises ModuleNotFoundError when the core is not installed.
        """
        return available_skills()

    def volumeToFile(self, volumeNode, path):
        """Write a volume (voxels and exact geometry) to .nrrd/.nii.gz, as the worker reads it."""
        return write_volume(volumeNode, path)

    def fileToVolume(self, path, name=None):
        """Load a volume file written by the worker (or by `volumeToFile`) as a new volume node."""
        return read_volume(path, slicer.mrmlScene, name)

    # -- dependencies -------------------------------------------------------------------------------------

    def dependencyStatus(self) -> DependencyStatus:
        """Is torch, and the core shipped with this module, installed in this Python (metadata only)?"""
        return dependency_status(MODULE_DIR)

    def installCore(self, status: DependencyStatus) -> bool:
        """Install the shipped core and its requirements with pip, keeping Slicer's SimpleITK and the
        installed torch; returns whether Slicer must restart to use it."""
        if status.core_source is None:
            raise PanelError(
                "This extension does not ship the mafm3 core; install it with `PythonSlicer -m pip install "
                "<MAFM3Slicer repository>/python_core`."
            )
        with tempfile.TemporaryDirectory(prefix="mafm3-install-") as folder:
            constraints = Path(folder) / "constraints.txt"
            constraints.write_text(pinned_constraints(), encoding="utf-8")
            for command in core_install_commands(self.pythonExecutable, status.core_source, constraints):
                run_command(command, env=self.workerEnvironment, timeout_s=3600)
        importlib.invalidate_caches()
        return restart_needed(sys.modules, core_was_installed=status.core_version is not None)

    # -- jobs in the worker -------------------------------------------------------------------------------

    @property
    def runner(self) -> JobRunner:
        if self._runner is None:
            self._runner = JobRunner(WorkerClient(self.pythonExecutable, env=self.workerEnvironment))
        return self._runner

    @property
    def workerStarted(self) -> bool:
        return self._runner is not None and self._runner.client.is_alive()

    @property
    def jobRunning(self) -> bool:
        return self._runner is not None and self._runner.running

    def startWorker(self) -> None:
        """Start the worker without waiting: its `ready` (device found) and `skills` come through pollJob."""
        self.runner.list_skills()

    def startJob(
        self,
        ctNode,
        petNode,
        clinical: dict,
        skillIds: list[str],
        device: str = "auto",
        overlap: float | None = None,
        segmentationNode=None,
        replaceEditedSegments: bool = False,
    ):
        """Write the inputs and send the job to the worker; follow it with pollJob (or waitForJob)."""
        params, folder = prepare_job(ctNode, petNode, clinical, skillIds, device, overlap)
        context = {
            "ct": ctNode.GetID(),
            "segmentation": segmentationNode.GetID() if segmentationNode is not None else None,
            "replaceOwnedOnly": not replaceEditedSegments,
        }
        try:
            return self.runner.submit(params, folder, context)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def cancelJob(self) -> None:
        if self._runner is not None:
            self._runner.cancel()

    def forgetJobNodes(self) -> None:
        """The scene is closing: the running job's results will not be loaded."""
        if self._runner is not None:
            self._runner.forget_nodes()

    def pollJob(self, timeoutSeconds: float = 0.0) -> list[JobUpdate]:
        """The worker's news; a finished job's results are loaded into the scene here ("result" updates then
        carry them in `imported`)."""
        if self._runner is None:
            return []
        return [self._importResult(u) if u.kind == "result" else u for u in self._runner.poll(timeoutSeconds)]

    def waitForJob(self, timeoutSeconds: float) -> list[JobUpdate]:
        """Poll until the running job ends (for scripts and tests; the panel polls from a timer)."""
        deadline = time.monotonic() + timeoutSeconds
        updates = []
        while self.jobRunning:
            if time.monotonic() > deadline:
                raise TimeoutError(f"The job did not end within {timeoutSeconds:g} s.")
            updates += self.pollJob(0.5)
        return updates + self.pollJob()

    def _importResult(self, update: JobUpdate) -> JobUpdate:
        job = update.job
        scene = slicer.mrmlScene
        ctNode = scene.GetNodeByID(job.context["ct"]) if job.context.get("ct") else None
        if ctNode is None:
            shutil.rmtree(job.folder, ignore_errors=True)
            return replace(
                update,
                kind="error",
                message="The CT of this job left the scene; its results were not loaded.",
            )
        segmentationId = job.context.get("segmentation")
        try:
            imported = self.importResults(
                job.out_dir,
                ctNode,
                scene.GetNodeByID(segmentationId) if segmentationId else None,
                job.context.get("replaceOwnedOnly", True),
            )
        except (OSError, ValueError, KeyError) as error:
            shutil.rmtree(job.folder, ignore_errors=True)
            return replace(update, kind="error", message=f"The results could not be loaded ({error}).")
        self._keepResults(job.folder)
        return replace(update, imported=imported)

    def _keepResults(self, folder) -> None:
        if self.resultsFolder is not None and Path(self.resultsFolder) != Path(folder):
            shutil.rmtree(self.resultsFolder, ignore_errors=True)
        self.resultsFolder = Path(folder)

    def importResults(
        self, outDir, ctNode, segmentationNode=None, replaceOwnedOnly: bool = True
    ) -> ImportedResults:
        """Load a `mafm3 run` output folder as nodes (MAFM3SlicerLib.result_nodes: the re-run rule)."""
        return import_results(outDir, ctNode, segmentationNode, replaceOwnedOnly)

    def segmentVolumes(self, segmentationNode) -> list[tuple[str, str, float]]:
        """(segment ID, name, ml) of each segment."""
        return segment_volumes_ml(segmentationNode)

    def stopWorker(self) -> None:
        if self._runner is not None:
            self._runner.stop()

    def cleanup(self) -> None:
        """Stop the worker and delete the kept results folder (module reload, Slicer exit)."""
        self.stopWorker()
        if self.resultsFolder is not None:
            shutil.rmtree(self.resultsFolder, ignore_errors=True)
            self.resultsFolder = None

    # -- demo study, skill packs, training data -----------------------------------------------------------

    def loadDemoStudy(self, seed: int = 0, size: str = "small") -> DemoStudy:
        """Generate the synthetic demo PET/CT study with the core and load it (CT, PET, clinical record)."""
        with tempfile.TemporaryDirectory(prefix="mafm3-demo-") as folder:
            study = make_demo_study(
                self.pythonExecutable, Path(folder) / "study", seed, size, self.workerEnvironment
            )
            return load_demo_study(study, slicer.mrmlScene)

    def installSkillPack(self, selectedPath) -> str:
        """Install a skill pack (a .zip, or a pack folder's manifest.json); returns the core's message."""
        return run_command(
            skill_install_command(self.pythonExecutable, pack_path(selectedPath)), env=self.workerEnvironment
        )

    def exportRtstruct(self, segmentationNode, ctNode, outDir) -> Path:
        """RTSTRUCT of GTVp/GTVn: through SlicerRT when installed, else the core (`clinical_outputs`)."""
        # SlicerRT registers its DICOM RT plugin class here, as every DICOM plugin does.
        pluginClass = getattr(slicer.modules, "dicomPlugins", {}).get("DicomRtImportExportPlugin")
        return export_rtstruct(
            segmentationNode,
            ctNode,
            outDir,
            slicer_rt_plugin=pluginClass() if pluginClass is not None else None,
            database=getattr(slicer, "dicomDatabase", None),
            python=self.pythonExecutable,
            run=lambda command: run_command(command, env=self.workerEnvironment),
        )

    def saveCaseToDataset(
        self, datasetDir, ctNode, petNode, segmentationNode, clinical: dict, caseId: str, overwrite=False
    ) -> str:
        """Add the case (CT, PET, GTVp/GTVn label map on the CT grid, clinical record) to a HECKTOR-layout
        training dataset through `mafm3 dataset add-case`; returns the core's message."""
        with tempfile.TemporaryDirectory(prefix="mafm3-case-") as folder:
            files = write_case_files(ctNode, petNode, segmentationNode, clinical, folder)
            command = add_case_command(
                self.pythonExecutable,
                datasetDir,
                ct=files.ct,
                label=files.label,
                pet=files.pet,
                clinical=files.clinical,
                case_id=caseId,
                overwrite=overwrite,
            )
            return run_command(command, env=self.workerEnvironment)


class MAFM3SlicerTest(ScriptedLoadableModuleTest):
    """Self-test: synthetic volumes and the demo study; runs in Slicer (ctest) and headless under Testing/.

    The inference part runs the skills available here (the demo skills shipped with the core, or installed
    packs) through the worker, as Apply does. With no skill pack at all it is skipped, with a message.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_study_check_accepts_a_pet_ct_and_refuses_the_ct_as_pet()
        self.setUp()
        self.test_file_round_trip_keeps_voxels_and_oblique_geometry()
        self.setUp()
        self.test_demo_skills_run_through_the_worker_into_nodes()

    def test_study_check_accepts_a_pet_ct_and_refuses_the_ct_as_pet(self):
        ct, pet = _syntheticPetCt()
        logic = MAFM3SlicerLogic()
        self.assertEqual(logic.describeStudy(ct, pet).problems, ())
        problems = logic.describeStudy(ct, ct).problems
        self.assertEqual(len(problems), 1)
        self.assertIn("selected as CT and as PET", problems[0])

    def test_file_round_trip_keeps_voxels_and_oblique_geometry(self):
        import numpy as np

        ct, _pet = _syntheticPetCt()
        logic = MAFM3SlicerLogic()
        with tempfile.TemporaryDirectory() as folder:
            loaded = logic.fileToVolume(logic.volumeToFile(ct, f"{folder}/ct.nrrd"))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(loaded), slicer.util.arrayFromVolume(ct))
        np.testing.assert_allclose(_ijkToRas(loaded), _ijkToRas(ct), atol=1e-9)

    def test_demo_skills_run_through_the_worker_into_nodes(self):
        """Demo study -> one skill per task (the PET/CT one where there is a choice) -> nodes, checked against
        the skills' manifests and the worker's own output files."""
        import numpy as np
        import SimpleITK as sitk

        logic = MAFM3SlicerLogic()
        skills = _oneSkillPerTask(runnable_skills(logic.availableSkills(), has_pet=True))
        if not skills:
            self.delayDisplay(
                "No skill pack is installed or shipped with the mafm3 core: the inference part of the "
                "self-test is skipped. Install a skill pack (Skill packs > Import skill pack...) to run it."
            )
            return
        study = logic.loadDemoStudy(size="tiny")
        try:
            logic.startJob(study.ct, study.pet, study.clinical, [skill.id for skill in skills], device="auto")
            updates = logic.waitForJob(timeoutSeconds=900)
        finally:
            logic.stopWorker()
        ends = [u for u in updates if u.kind in ("result", "error", "cancelled", "crashed")]
        self.assertEqual([u.kind for u in ends], ["result"], [f"{u.message}\n{u.detail}" for u in ends])
        self.assertTrue(any(u.kind == "progress" for u in updates))
        imported, outDir = ends[0].imported, ends[0].job.out_dir
        manifests = {
            skill.id: json.loads((Path(skill.folder) / "manifest.json").read_text()) for skill in skills
        }

        for skill in (s for s in skills if s.task == "segmentation"):
            segmentation = imported.segmentation.GetSegmentation()
            for output in manifests[skill.id]["outputs"]:
                segment = segmentation.GetSegment(output["name"])
                self.assertIsNotNone(segment, f"no segment {output['name']}")
                self.assertEqual(segment.GetName(), output["name"])
                np.testing.assert_allclose(segment.GetColor(), output["color"], atol=1e-6)
                terminology = segment_tag(segment, segment.GetTerminologyEntryTagName())
                self.assertIn(f"SCT^{output['type']['value']}^", terminology)
            reference = imported.segmentation.GetNodeReference(
                imported.segmentation.GetReferenceImageGeometryReferenceRole()
            )
            self.assertIs(reference, study.ct)
            labels = np.zeros(slicer.util.arrayFromVolume(study.ct).shape, dtype=np.uint8)
            for output in manifests[skill.id]["outputs"]:
                mask = slicer.util.arrayFromSegmentBinaryLabelmap(
                    imported.segmentation, output["name"], study.ct
                )
                labels[mask > 0] = output["label"]
            ctGrid = image_from_volume(study.ct)
            written = sitk.Resample(
                sitk.ReadImage(str(outDir / LABEL_MAP_FILE)),
                ctGrid,
                sitk.Transform(),
                sitk.sitkNearestNeighbor,
            )
            np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(written))

        for skill in (s for s in skills if s.task == "prognosis"):
            prognosis = json.loads((outDir / PROGNOSIS_FILE).read_text())
            (row,) = [r for r in table_rows(imported.prognosis.table) if r["Skill"] == skill.id]
            self.assertEqual(row["Risk group"], prognosis["risk_group"])
            self.assertAlmostEqual(row["Risk score"], prognosis["risk"], places=9)
            survival = [row[f"S({years} y)"] for years in (1, 2, 3, 5)]
            known = [s for s in survival if not np.isnan(s)]
            self.assertTrue(known and all(0.0 <= s <= 1.0 for s in known))
            self.assertEqual(known, sorted(known, reverse=True))  # S(t) never rises
            self.assertTrue(imported.prognosis.chart.HasPlotSeriesNodeID(imported.prognosis.series.GetID()))
        logic.cleanup()
        self.delayDisplay("Demo skills ran through the worker: " + ", ".join(s.id for s in skills))


def _oneSkillPerTask(skills: list[SkillInfo]) -> list[SkillInfo]:
    """Per segmentation and prognosis task, the skill that uses the most inputs (demo skills first)."""
    chosen = {}
    for skill in sorted(skills, key=lambda s: (-len(s.modalities), not s.demo)):
        if skill.task in ("segmentation", "prognosis"):
            chosen.setdefault(skill.task, skill)
    return list(chosen.values())


def _ijkToRas(volumeNode):
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


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
