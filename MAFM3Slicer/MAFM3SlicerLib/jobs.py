"""One job in the warm worker, as the panel sees it (Qt-free): a skill run, or improving a skill.

`prepare_job` writes a run's inputs into a new job folder (CT and PET as NRRD with their exact geometry, the
clinical record as JSON) and returns the worker's run parameters; `prepare_improvement` makes the folder and
parameters of an `improve` job (a skill fine-tuned on a dataset's saved cases). `JobRunner` sends either
through a `WorkerClient`, keeps the one job in flight and turns the worker's events into `JobUpdate`s for the
panel. The Widget calls `poll()` from a qt.QTimer, so Slicer stays responsive while the worker computes;
scripts and tests call it in a loop.

A run's folder holds `ct.nrrd`, `pet.nrrd`, `clinical.json` and the worker's output folder `out/`; an
improve job's holds the new pack in `out/`. A job folder is deleted when the job fails or is cancelled; after
a result, the caller uses `out/` and decides when to delete it (the module keeps the last run's, whose
report.html the panel links to, and the runs whose predictions an annotator may still save as corrections,
without their inputs: `delete_inputs`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from MAFM3SlicerLib.errors import PanelError
from MAFM3SlicerLib.hierarchy import dicom_series_uid
from MAFM3SlicerLib.volume_files import write_volume
from MAFM3SlicerLib.worker_client import WorkerClient

CT_FILE = "ct.nrrd"
PET_FILE = "pet.nrrd"
CLINICAL_FILE = "clinical.json"
OUTPUT_FOLDER = "out"


def prepare_job(
    ct_node,
    pet_node,
    clinical: Mapping | None,
    skill_ids: Sequence[str],
    device: str = "auto",
    overlap: float | None = None,
    parent_dir: str | Path | None = None,
) -> tuple[dict, Path]:
    """Write a job's inputs into a new folder under `parent_dir` (default: the system's temporary folder).

    ct_node, pet_node: scalar volume nodes (the PET may be None); written as NRRD, which keeps geometry
        exactly (volume_files). The PET must be in SUV (study_check): a NRRD carries no DICOM header to
        convert it from, so the worker is told so (`pet_units` "suv").
    clinical: the clinical record (core field names; `clinical.clinical_record`), or None / {} for none.
    skill_ids: the skills to run, one per task. device: "auto", "cuda" or "cpu". overlap: sliding-window
        overlap, None for each skill's own.
    Returns the worker's `run` parameters (fields of `mafm3.engine.RunRequest` plus `out`) and the folder.
    A volume loaded from DICOM passes its SeriesInstanceUID (`ct_series_uid`, `pet_series_uid`): the engine
    reads the NRRD as it is and records the UIDs in result.json, whence a saved correction cites its series.
    """
    if not skill_ids:
        raise ValueError("`skill_ids` must name at least one skill.")
    folder = Path(tempfile.mkdtemp(prefix="mafm3-job-", dir=parent_dir))
    try:
        params: dict = {
            "ct": str(write_volume(ct_node, folder / CT_FILE)),
            "skills": list(skill_ids),
            "device": device,
            "out": str(folder / OUTPUT_FOLDER),
        }
        if pet_node is not None:
            params["pet"] = str(write_volume(pet_node, folder / PET_FILE))
            params["pet_units"] = "suv"
        if clinical:
            (folder / CLINICAL_FILE).write_text(json.dumps(dict(clinical), indent=2), encoding="utf-8")
            params["clinical"] = str(folder / CLINICAL_FILE)
        if overlap is not None:
            params["overlap"] = float(overlap)
        for key, node in (("ct_series_uid", ct_node), ("pet_series_uid", pet_node)):
            uid = dicom_series_uid(node) if node is not None else None
            if uid is not None:
                params[key] = uid
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return params, folder


def delete_inputs(folder: str | Path) -> None:
    """Delete a run's copies of its inputs (CT, PET, clinical record) once its results are in the scene: only
    `out/` is used afterwards (the report, a correction record), and a kept CT copy can weigh 100 MB."""
    for name in (CT_FILE, PET_FILE, CLINICAL_FILE):
        (Path(folder) / name).unlink(missing_ok=True)


def prepare_improvement(
    skill_id: str,
    version: str,
    dataset: str | Path,
    iterations: int | None = None,
    holdout: float | None = None,
    device: str = "auto",
    parent_dir: str | Path | None = None,
) -> tuple[dict, Path]:
    """The folder and the worker's `improve` parameters for fine-tuning skill `skill_id` at `version` (the
    active one) on the saved cases of `dataset`. The new pack is written to the folder's `out/` and not
    installed (`install` false): the panel asks the annotator first (`improvement`).

    iterations, holdout: None for the core's defaults. device: "auto", "cuda" or "cpu", as for runs.
    Raises:
        PanelError: the dataset folder does not exist.
    """
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise PanelError(
            f"The dataset folder {dataset} does not exist; choose the folder the cases were saved to."
        )
    folder = Path(tempfile.mkdtemp(prefix="mafm3-improve-", dir=parent_dir))
    params: dict = {
        "skill": f"{skill_id}@{version}",
        "dataset": str(dataset),
        "out": str(folder / OUTPUT_FOLDER),
        "install": False,
        "device": device,
    }
    if iterations is not None:
        params["iterations"] = int(iterations)
    if holdout is not None:
        params["holdout"] = float(holdout)
    return params, folder


@dataclass
class Job:
    """The run in flight: the worker's run id, its folder, and what the caller needs to use its results
    (`context`: e.g. the IDs of the CT and segmentation nodes; emptied when the scene closes)."""

    run_id: str
    folder: Path
    context: dict = field(default_factory=dict)
    cancel_requested: bool = False
    op: str = "run"  # the worker's op: "run" (a study) or "improve" (a skill from saved cases)

    @property
    def out_dir(self) -> Path:
        return self.folder / OUTPUT_FOLDER


@dataclass(frozen=True)
class JobUpdate:
    """Something the panel shows.

    kind: "ready" (a worker started; `record` is its hello: device, torch, hints), "skills" (`record` holds
    the worker's `skills` list), "progress" (`stage`, `fraction` in [0, 1], `message`), and the four ends of a
    job:
    "result" (`record` is the worker's result record: result.json plus `out`), "error" (`message` is one
    sentence; `detail` the worker's log for a bug), "cancelled", "crashed" (`detail`: the worker's last log
    lines). A worker that crashes while idle gives a "crashed" update without a job. `imported` is for the
    caller that loads a result's nodes (the module's Logic) to attach them.
    """

    kind: str
    job: Job | None = None
    stage: str = ""
    fraction: float = 0.0
    message: str = ""
    detail: str = ""
    record: dict | None = None
    imported: object = None


JOB_END_KINDS = frozenset({"result", "error", "cancelled", "crashed"})


class JobRunner:
    """One job at a time through one warm worker (restarted by the client after a crash or forced cancel)."""

    def __init__(self, client: WorkerClient):
        self.client = client
        self.job: Job | None = None

    @property
    def running(self) -> bool:
        return self.job is not None

    def submit(self, params: dict, folder: Path, context: Mapping | None = None, op: str = "run") -> Job:
        """Send a prepared job (`op`: "run" or "improve") to the worker, started if needed; never waits."""
        if self.job is not None:
            raise RuntimeError("A job is already running; cancel it or wait for its end first.")
        self.job = Job(self.client.submit(op, params), Path(folder), dict(context or {}), op=op)
        return self.job

    def cancel(self) -> None:
        """Ask the worker to stop the job; it ends with a "cancelled" update (forced after a grace time)."""
        if self.job is not None and not self.job.cancel_requested:
            self.job.cancel_requested = True
            self.client.cancel(self.job.run_id)

    def forget_nodes(self) -> None:
        """Drop the context of the job in flight (its scene is closing): its results will not be imported."""
        if self.job is not None:
            self.job.context = {}

    def list_skills(self) -> None:
        """Ask the worker for its skill packs (starting it if needed); they come as a "skills" update."""
        self.client.list_skills()

    def poll(self, timeout_s: float = 0.0) -> list[JobUpdate]:
        """The updates since the last call (waiting up to `timeout_s` for the first event)."""
        updates = []
        for event in self.client.poll(timeout_s):
            update = self._update(event)
            if update is not None:
                updates.append(update)
        return updates

    def stop(self) -> None:
        """Shut the worker down (a job in flight is cancelled)."""
        self.cancel()
        self.client.stop()
        self.poll()

    def _update(self, event: dict) -> JobUpdate | None:
        kind = event.get("event")
        if kind == "ready":
            return JobUpdate("ready", record=event)
        if kind == "skills":
            return JobUpdate("skills", record=event)
        job = self.job
        if kind == "crashed" and event.get("id") is None:
            return JobUpdate("crashed", message=_crash_message(event), detail=event.get("stderr_tail", ""))
        if job is None or event.get("id") != job.run_id:
            return None  # the answer to a request nobody waits for any more (e.g. `bye`)
        if kind == "progress":
            fraction = min(max(float(event.get("fraction", 0.0)), 0.0), 1.0)
            return JobUpdate("progress", job, event.get("stage", ""), fraction, event.get("message", ""))
        if kind not in JOB_END_KINDS:
            return None
        self.job = None
        if kind == "result":
            return JobUpdate("result", job, record=event.get("result") or {})
        shutil.rmtree(job.folder, ignore_errors=True)
        if kind == "error":
            detail = self.client.stderr_tail() if event.get("kind") != "user" else ""
            return JobUpdate("error", job, message=event.get("message", ""), detail=detail)
        if kind == "cancelled":
            message = (
                "Cancelled; the worker did not stop in time and was restarted."
                if event.get("forced")
                else "Cancelled."
            )
            return JobUpdate("cancelled", job, message=message)
        return JobUpdate("crashed", job, message=_crash_message(event), detail=event.get("stderr_tail", ""))


def _crash_message(event: dict) -> str:
    return (
        f"The mafm3 worker stopped unexpectedly (exit code {event.get('returncode')}); it starts again with "
        "the next run. Its last log lines are under Results."
    )


def describe_worker(ready: Mapping) -> str:
    """One line for the panel about where "auto" runs, from the worker's `ready` event."""
    torch_info = ready.get("torch") or {}
    if not torch_info.get("installed", False):
        return "PyTorch is not installed in Slicer's Python."
    device = ready.get("device", "cpu")
    torch_text = f"torch {torch_info.get('version', '?')}, {torch_info.get('build', '?')} build"
    gpus = torch_info.get("devices") or []
    if device == "cuda" and gpus:
        names = ", ".join(f"{gpu['name']} ({gpu['memory_gb']:g} GB)" for gpu in gpus)
        text = f"GPU: {names}; {torch_text}"
    elif device == "mps":
        text = f"Apple GPU (MPS); {torch_text}"
    else:
        text = f"CPU ({torch_info.get('cpu_threads', '?')} threads); {torch_text}"
    hints = ready.get("hints") or []
    return text + (f". {hints[0]}" if hints else "")
