"""What the module does, without the GUI: `ModuleLogic`, the body of the module's Logic (Qt-free).

`MAFM3Slicer.py` keeps only Slicer's binding (`MAFM3SlicerLogic` adds the parameter node to this class). Every
method here takes nodes explicitly and runs headless under slicer-core (Testing/): describing a study, the
skill list, the dependency check and background install, jobs in the warm worker and their results as nodes,
the demo study, skill packs, training cases with their correction records, and improving a skill from them.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import slicer

from MAFM3SlicerLib.clinical import clinical_record
from MAFM3SlicerLib.clinical_outputs import export_rtstruct
from MAFM3SlicerLib.commands import (
    add_case_command,
    dataset_info_command,
    run_command,
    skill_install_command,
    skill_use_command,
    worker_python,
)
from MAFM3SlicerLib.demo_study import DemoStudy, load_demo_study, load_shipped_demo_study, make_demo_study
from MAFM3SlicerLib.dependencies import (
    DependencyStatus,
    dependency_status,
    install_steps,
    installed_distributions,
    restart_needed,
)
from MAFM3SlicerLib.errors import PanelError
from MAFM3SlicerLib.improvement import Improvement, effort_lines
from MAFM3SlicerLib.install import BackgroundInstall
from MAFM3SlicerLib.jobs import JobRunner, JobUpdate, delete_inputs, prepare_improvement, prepare_job
from MAFM3SlicerLib.result_nodes import ImportedResults, import_results, segment_volumes_ml
from MAFM3SlicerLib.skills import SkillInfo, available_skills, pack_path
from MAFM3SlicerLib.study_check import StudyDescription, describe_study
from MAFM3SlicerLib.training_case import Prediction, write_case_files
from MAFM3SlicerLib.volume_files import read_volume, write_volume
from MAFM3SlicerLib.worker_client import WorkerClient


class ModuleLogic:
    """The module's logic.

    module_dir: the module's folder (the shipped core and demo study are found from it).
    pythonExecutable: the Python of the worker and of every `mafm3` command (default: Slicer's PythonSlicer).
    workerEnvironment: their environment (None: this process's; inside Slicer, Slicer's startup environment).
    temporaryDir: where job, install and demo folders are made (None: the system's temporary folder; inside
        Slicer, `slicer.app.temporaryPath`).
    """

    def __init__(self, module_dir, pythonExecutable=None, workerEnvironment=None, temporaryDir=None) -> None:
        self.moduleDir = Path(module_dir)
        self.pythonExecutable = pythonExecutable or worker_python()
        self.workerEnvironment = workerEnvironment
        self.temporaryDir = temporaryDir
        self._runner = None
        self.install = None  # the BackgroundInstall in progress or last finished
        self.resultsFolder = None  # the last job folder with results (kept for its report); one at a time
        # Segmentation node ID -> the run whose result it holds, for the correction record of a saved case.
        self.predictions: dict[str, Prediction] = {}
        self.clock = time.monotonic  # when a result is imported, when its correction is saved
        self.previousVersions: dict[str, str] = {}  # skill id -> the version active before the last switch
        # The last improve's new version until adopted or declined, and its job folder (which holds the pack).
        self.improvement: Improvement | None = None
        self._improvementFolder = None

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
        """Is torch, every requirement of the shipped core, and the core itself installed (metadata only)?"""
        return dependency_status(self.moduleDir, loaded_modules=sys.modules)

    @property
    def installing(self) -> bool:
        return self.install is not None and not self.install.poll().finished

    def startInstall(self, status: DependencyStatus) -> BackgroundInstall:
        """Start installing what `status` lacks, in the background (follow it with `self.install.poll()`).

        Every pip call keeps every distribution already installed in Slicer's Python at its version.

        Raises:
            PanelError: it cannot be done in this session (`DependencyStatus.refusal`), or an install runs.
        """
        refusal = status.refusal()
        if refusal:
            raise PanelError(refusal)
        if self.installing:
            raise PanelError("An install is already running; wait for it to finish.")
        workDir = tempfile.mkdtemp(prefix="mafm3-install-", dir=self.temporaryDir)
        try:
            steps = install_steps(self.pythonExecutable, status, workDir, installed_distributions())
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        self.install = BackgroundInstall(steps, env=self.workerEnvironment, work_dir=workDir).start()
        return self.install

    def finishInstall(self, statusBefore: DependencyStatus) -> bool:
        """After a successful install: whether Slicer must restart to use the new core."""
        importlib.invalidate_caches()
        return restart_needed(sys.modules, core_was_installed=statusBefore.core_version is not None)

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

    @property
    def runningOp(self) -> str | None:
        """The op of the job in the worker: "run", "improve", or None when none runs."""
        return self._runner.job.op if self.jobRunning else None

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
        params, folder = prepare_job(
            ctNode, petNode, clinical, skillIds, device, overlap, parent_dir=self.temporaryDir
        )
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
        """The worker's news. A finished run's results are loaded into the scene here, and a finished
        improve's comparison is read ("result" updates then carry them in `imported`: `ImportedResults`, or
        an `Improvement`)."""
        if self._runner is None:
            return []
        return [self._finishJob(u) if u.kind == "result" else u for u in self._runner.poll(timeoutSeconds)]

    def _finishJob(self, update: JobUpdate) -> JobUpdate:
        return self._readImprovement(update) if update.job.op == "improve" else self._importResult(update)

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
        delete_inputs(job.folder)
        if imported.segmentation is not None:
            self._rememberPrediction(imported.segmentation, ctNode, job)
        self._keepResults(job.folder)
        return replace(update, imported=imported)

    def _keepResults(self, folder) -> None:
        previous, self.resultsFolder = self.resultsFolder, Path(folder)
        self._release(previous)

    def _rememberPrediction(self, segmentationNode, ctNode, job) -> None:
        """The segmentation now holds this run's prediction: keep its folder until it is replaced, or until
        the segmentation leaves the scene (those of deleted segmentations are dropped here)."""
        scene = segmentationNode.GetScene()
        replaced = [segmentationNode.GetID()]
        replaced += [nodeId for nodeId in self.predictions if scene.GetNodeByID(nodeId) is None]
        folders = [self.predictions.pop(nodeId).folder for nodeId in replaced if nodeId in self.predictions]
        self.predictions[segmentationNode.GetID()] = Prediction(
            job.folder, job.out_dir, ctNode.GetID(), self.clock()
        )
        for folder in folders:
            self._release(folder)

    def _release(self, folder) -> None:
        """Delete a job folder once neither the last results nor a remembered prediction need it."""
        needed = {prediction.folder for prediction in self.predictions.values()} | {self.resultsFolder}
        if folder is not None and Path(folder) not in needed:
            shutil.rmtree(folder, ignore_errors=True)

    def predictionFor(self, segmentationNode, ctNode) -> Prediction | None:
        """The run whose result was last imported into this segmentation, on this CT (None: drawn by hand, or
        imported before the scene was closed)."""
        prediction = self.predictions.get(segmentationNode.GetID())
        return prediction if prediction is not None and prediction.ct_id == ctNode.GetID() else None

    def forgetPredictions(self) -> None:
        """The scene is closing: its segmentations go, and node IDs are reused by the next scene."""
        folders = [prediction.folder for prediction in self.predictions.values()]
        self.predictions = {}
        for folder in folders:
            self._release(folder)

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
        """Stop the worker and a running install, delete the kept results folder (module reload, Slicer
        exit): nothing is left running or lying around."""
        self.stopWorker()
        if self.installing:
            self.install.cancel()
        self.forgetPredictions()
        self.declineImprovement()
        folder, self.resultsFolder = self.resultsFolder, None
        self._release(folder)

    # -- demo study, skill packs, training data -----------------------------------------------------------

    def loadShippedDemoStudy(self) -> DemoStudy:
        """Load the demo PET/CT study shipped with the module (works before anything is installed)."""
        return load_shipped_demo_study(self.moduleDir, slicer.mrmlScene)

    def loadDemoStudy(self, seed: int = 0, size: str = "small") -> DemoStudy:
        """Generate a synthetic demo PET/CT study with the core and load it (CT, PET, clinical record)."""
        with tempfile.TemporaryDirectory(prefix="mafm3-demo-", dir=self.temporaryDir) as folder:
            study = make_demo_study(
                self.pythonExecutable, Path(folder) / "study", seed, size, self.workerEnvironment
            )
            return load_demo_study(study, slicer.mrmlScene)

    def installSkillPack(self, selectedPath) -> str:
        """Install a skill pack (a .zip, or a pack folder's manifest.json); returns the core's message."""
        return run_command(
            skill_install_command(self.pythonExecutable, pack_path(selectedPath)), env=self.workerEnvironment
        )

    def saveCaseToDataset(
        self, datasetDir, ctNode, petNode, segmentationNode, clinical: dict, caseId: str, overwrite=False
    ) -> str:
        """Add the case (CT, PET, GTVp/GTVn label map on the CT grid, clinical record) to a HECKTOR-layout
        training dataset through `mafm3 dataset add-case`; returns the core's message.

        When the segmentation holds a skill's prediction on this CT (`predictionFor`), the case carries its
        correction record: the run's output folder and the seconds since its result was imported.
        """
        prediction = self.predictionFor(segmentationNode, ctNode)
        with tempfile.TemporaryDirectory(prefix="mafm3-case-", dir=self.temporaryDir) as folder:
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
                prediction=None if prediction is None else prediction.out_dir,
                editing_seconds=None if prediction is None else self.clock() - prediction.imported_at,
            )
            return run_command(command, env=self.workerEnvironment)

    def datasetEffort(self, datasetDir) -> list[str]:
        """The dataset's cases and, per skill version, the annotators' effort from the correction records
        (`improvement.effort_lines`), as the core's `mafm3 dataset info` counts them."""
        info = run_command(
            dataset_info_command(self.pythonExecutable, datasetDir), env=self.workerEnvironment
        )
        return effort_lines(json.loads(info))

    # -- skill versions, improving a skill ----------------------------------------------------------------

    def startImprovement(
        self,
        skillId: str,
        version: str,
        datasetDir,
        iterations: int | None = None,
        holdout: float | None = None,
        device: str = "auto",
    ):
        """Send an `improve` job to the worker: fine-tune the skill's `version` (its active one) on the saved
        cases of `datasetDir` and compare both versions on held-out cases; nothing is installed (see
        `adoptImprovement`). Follow it with pollJob (or waitForJob); Cancel as for runs."""
        params, folder = prepare_improvement(
            skillId, version, datasetDir, iterations, holdout, device, parent_dir=self.temporaryDir
        )
        try:
            return self.runner.submit(params, folder, {"skill": skillId, "version": version}, op="improve")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _readImprovement(self, update: JobUpdate) -> JobUpdate:
        folder = update.job.folder
        try:
            improvement = Improvement.from_record(update.record)
        except (KeyError, TypeError) as error:
            shutil.rmtree(folder, ignore_errors=True)
            return replace(
                update, kind="error", message=f"The improve result could not be read (missing {error})."
            )
        self.declineImprovement()  # an earlier one left unanswered
        self.improvement, self._improvementFolder = improvement, folder
        return replace(update, imported=improvement)

    def adoptImprovement(self) -> str:
        """Install the last improve's new version beside the current one (checksums verified) and make it the
        active one; returns one sentence about the switch.

        Raises:
            PanelError: there is no new version waiting, or the core's gate found it worse.
        """
        improvement = self.improvement
        if improvement is None:
            raise PanelError("No improved version is waiting; improve the skill first.")
        if not improvement.not_worse:
            raise PanelError(
                f"{improvement.skill_id} {improvement.new_version} is worse on the held-out cases; "
                f"{improvement.current_version} stays."
            )
        self.installSkillPack(improvement.pack)  # the highest version now, which may make it active already
        self.useSkillVersion(
            improvement.skill_id, improvement.new_version, previous=improvement.current_version
        )
        self.declineImprovement()  # installed: its job folder is not needed any more
        return (
            f"{improvement.skill_id} now runs version {improvement.new_version} (was "
            f"{improvement.current_version}); both stay installed, and Go back returns to "
            f"{improvement.current_version}."
        )

    def declineImprovement(self) -> None:
        """Forget the last improve's new version (deleted with its job folder); the current one stays."""
        folder, self._improvementFolder, self.improvement = self._improvementFolder, None, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def useSkillVersion(self, skillId: str, version: str, previous: str | None = None) -> str:
        """Make `version` the active version of a skill (the one runs use; the worker reads it at each run);
        `previous` (default: the version active until now) is remembered for going back. Returns the core's
        message."""
        before = previous or next(
            (s.version for s in self.availableSkills() if s.id == skillId and s.active), None
        )
        message = run_command(
            skill_use_command(self.pythonExecutable, skillId, version), env=self.workerEnvironment
        )
        if before is not None and before != version:
            self.previousVersions[skillId] = before
        return message

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
