"""The warm worker: one long-lived process that owns torch and the engine, driven by JSON lines.

`python -m mafm3.worker` is what the Slicer module starts (with Slicer's Python): the engine and its backbone
stay loaded between studies, so a radiologist clicking through studies pays for inference only, the GUI
process never imports torch, and Cancel can kill a process instead of Slicer. `MAFM3SlicerLib.worker_client`
is its client; this docstring is the one description of the protocol.

Protocol. The client writes one JSON object per line (a *request*) on the worker's stdin; the worker answers
with one JSON object per line (an *event*) on its stdout. Stdout carries protocol lines only: whatever Python
code or C libraries print goes to stderr, which is the worker's log. Every event carries the `id` of the
request it answers (`null` when the request had none or was not valid JSON).

Requests and the events that answer them:

- `{"id", "op": "hello"}` -> `{"id", "event": "ready", "version", "pid", "python", "device", "torch",
  "hints"}`: `version` of mafm3, `python` {version, executable}, `device` (what "auto" picks: cuda, mps or
  cpu), `torch` (`mafm3.environment.torch_report`: build, CUDA, usable GPUs), `hints` (why a GPU is unused).
- `{"id", "op": "list_skills"}` -> `{"id", "event": "skills", "skills": [...]}`: the skills the engine
  chooses from (`Engine.available`: installed packs, then those shipped with mafm3, such as the demo skills),
  each its manifest (`SkillManifest.to_dict`) plus `path`, the pack folder (null for a built-in skill), and
  `active`: whether it is the active version of its id (several versions of an id may be listed; runs use
  the active one, see `use_skill`).
  Answered once the engine is built (its imports take seconds right after the worker starts).
- `{"id", "op": "run", "params": {...}}` -> any number of `{"id", "event": "progress", "stage", "fraction",
  "message"}`, then exactly one of `result`, `error` or `cancelled`. `params` are the fields of
  `mafm3.engine.RunRequest` (e.g. `ct`, `pet`, `clinical`: paths; `skills`, `tasks`, `overlap`,
  `pet_units`, `device`) plus `out` (required: the output folder), `overwrite`, `dicom_seg`, `rtstruct` and
  `sr` (default false), as for `mafm3 run`. `stage` names the step (e.g. "read", "inference", "write"),
  `fraction` is in [0, 1] within it. One run at a time: a run sent while another runs gets a user error.
- `{"id", "op": "improve", "params": {"skill", "dataset", "out", "iterations", "holdout", "install"}}` ->
  progress events as for `run` (stages "preprocess", "train", "evaluate"), then exactly one of
  `result`, `error` or `cancelled`. `params` are the fields of `mafm3.training.improve.ImproveOptions`, as
  for `mafm3 improve`: `skill` ("ID" for its active version, or "ID@VERSION"), `dataset` (a HECKTOR-layout
  folder of saved cases), `out` (the new pack folder, must not exist), optional `iterations`, `holdout`
  (share of cases held out, default 0.25), `install` (default false), `device`, `precision`. The result is
  `{"id", "event": "result", "result": {"comparison": the content of <out>/comparison.json, "pack": the
  absolute path of <out>, "installed": whether the new version was installed and made active, "message":
  one sentence saying what happened (installed, or why not)}}`. It shares the one job slot with `run`, and
  is cancelled the same way: training checks the cancel event between iterations, evaluation between
  cases; a cancelled improve leaves `out` and the installed skills as they were.
- `{"id", "op": "use_skill", "skill": "ID@VERSION"}` -> `{"id", "event": "skill_used", "skill": ID,
  "version": VERSION, "previous": the version that was active before}`: makes that installed (or shipped)
  version the active one (`mafm3 skill use`), which every later run of the id uses; a version that is not
  there is a user error. Answered at once, also while a job runs (that job keeps the version it loaded).
- `{"id", "op": "cancel", "target": job id}` -> no event of its own: the target run or improve ends with
  `{"id": target, "event": "cancelled"}`, or with its result or error if it finished first. An unknown
  target is ignored.
- `{"id", "op": "shutdown"}` -> the running job (if any) is cancelled and sends its last event, then
  `{"id", "event": "bye"}`, and the worker exits 0. End of input (the client closed stdin or died) does the
  same without `bye`.

- `result`: `{"id", "event": "result", "result": record}`; record is what `result.json` holds
  (`mafm3.outputs.json_io.result_record`: skills, device, timings_s, segmentation {segments, volumes_ml},
  prognosis, classification, `outputs`: file names) plus `out`, the absolute output folder.
- `error`: `{"id", "event": "error", "kind", "message"}`. kind "user": a `MAFM3Error`, and `message` is its
  one sentence, to show as it is. kind "internal": anything else (a bug); `message` names the exception and
  the traceback goes to stderr only. Either way the worker stays up for the next request.

The engine (`mafm3.engine.Engine`) is built once, on a background thread as soon as the worker starts, and
kept for every run; a run calls its `run_and_write`, as `mafm3 run` does. Cancel sets the run's cancel event:
the engine checks it between windows and stages, and the worker's progress callback checks it too, both
raising `mafm3.engine.Cancelled`.

Testing hook: `MAFM3_WORKER_ENGINE=module:callable` makes the worker build its engine with that callable
instead of `mafm3.engine.Engine`, so tests can drive the real process with a fake engine (any
`WorkerEngine`: what the worker calls of an engine). An engine that also has a method
`improve(params, progress, cancel) -> result dict` (the tests' fake engine does) answers the `improve` op
itself; otherwise the worker runs `mafm3.training.improve.improve`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import platform
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

from mafm3 import __version__
from mafm3.errors import MAFM3Error
from mafm3.progress import ProgressCallback

log = logging.getLogger(__name__)

ENGINE_ENV = "MAFM3_WORKER_ENGINE"
OUTPUT_OPTIONS = (
    "out",
    "overwrite",
    "dicom_seg",
    "rtstruct",
    "sr",
)  # run params about the output folder, not the RunRequest
SHUTDOWN_WAIT_S = 30.0  # how long shutdown or end of input waits for a cancelled job to stop


class WorkerEngine(Protocol):
    """What the worker calls of an engine: `mafm3.engine.Engine` is one, the tests' fake engine another."""

    def available(self) -> list:
        """The skills a run may choose from (`AvailableSkill`s), for `list_skills`."""

    def run_and_write(
        self,
        request,
        out_dir: str | Path,
        *,
        overwrite: bool = False,
        dicom_seg: bool = False,
        rtstruct: bool = False,
        sr: bool = False,
        progress: ProgressCallback,
        cancel: threading.Event | None = None,
    ) -> tuple:
        """Run `request` (a `RunRequest`), write its outputs into `out_dir`: (StudyResult, written paths)."""


def default_engine_factory() -> WorkerEngine:
    """The real engine (imported here: the engine pulls in torch)."""
    from mafm3.engine import Engine

    return Engine()


def engine_factory_from_env() -> Callable[[], WorkerEngine]:
    """The factory named by `MAFM3_WORKER_ENGINE` ("module:callable", a testing hook), else the engine's."""
    spec = os.environ.get(ENGINE_ENV)
    if not spec:
        return default_engine_factory
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"`{ENGINE_ENV}` must look like 'module:callable', got '{spec}'.")
    return getattr(importlib.import_module(module_name), attribute)


def hello_report() -> dict:
    """The `ready` event's fields: what `mafm3 doctor` says first (torch build, usable devices, hints)."""
    from mafm3.environment import gpu_hints, preferred_device, torch_report

    torch_info = torch_report()
    return {
        "version": __version__,
        "pid": os.getpid(),
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "device": preferred_device(torch_info),
        "torch": torch_info,
        "hints": gpu_hints(torch_info),
    }


def improve_skill(engine, params: dict, progress: ProgressCallback, cancel: threading.Event) -> dict:
    """One `improve` request: `mafm3 improve` with the params as options (or the engine's own `improve`,
    the testing hook); returns the result record (comparison, pack, installed, message)."""
    own = getattr(engine, "improve", None)
    if own is not None:
        return own(params, progress, cancel)
    from mafm3.training.improve import ImproveOptions, improve

    unknown = sorted(set(params) - {field.name for field in dataclasses.fields(ImproveOptions)})
    if unknown:
        raise ValueError(f"Unknown improve parameters {unknown}.")
    missing = [name for name in ("skill", "dataset", "out") if name not in params]
    if missing:
        raise MAFM3Error(f"An improve request needs {', '.join(missing)}; give the skill, dataset and out.")
    return improve(ImproveOptions(**params), progress, cancel).record()


def use_skill(reference: str) -> dict:
    """One `use_skill` request: make ID@VERSION the active version; the `skill_used` event's fields."""
    from mafm3.skills.store import split_reference, use_version

    skill_id, version = split_reference(str(reference or ""))
    if version is None:
        raise MAFM3Error(f"Name the version to use as ID@VERSION, e.g. {skill_id or 'demo-seg-ct'}@1.0.0.")
    previous = use_version(skill_id, version)
    return {"skill": skill_id, "version": version, "previous": previous}


def run_study(engine, params: dict, progress: ProgressCallback, cancel: threading.Event) -> dict:
    """One `run` request: the engine runs and writes the outputs, as for `mafm3 run`; returns the record."""
    from mafm3.engine import RunRequest
    from mafm3.outputs.json_io import result_record

    if "out" not in params:
        raise ValueError("A run request needs `params.out`, the output folder.")
    request_fields = {key: value for key, value in params.items() if key not in OUTPUT_OPTIONS}
    unknown = sorted(set(request_fields) - {field.name for field in dataclasses.fields(RunRequest)})
    if unknown:
        raise ValueError(f"Unknown run parameters {unknown}.")
    result, written = engine.run_and_write(
        RunRequest(**request_fields),
        params["out"],
        overwrite=bool(params.get("overwrite", False)),
        dicom_seg=bool(params.get("dicom_seg", False)),
        rtstruct=bool(params.get("rtstruct", False)),
        sr=bool(params.get("sr", False)),
        progress=progress,
        cancel=cancel,
    )
    written = [Path(path) for path in written]
    return {"out": str(written[-1].parent), **result_record(result, [path.name for path in written])}


@dataclasses.dataclass
class _Job:
    id: str
    cancel: threading.Event
    thread: threading.Thread


class Worker:
    """Answers requests (on the caller's thread) and runs one job at a time on its own thread.

    output: where events go, one JSON line each (written under a lock: the job thread writes too).
    engine_factory: builds the engine (at `warm_up` or the first run); it is then kept for every later run.
    """

    def __init__(self, output: IO[str], engine_factory: Callable[[], WorkerEngine] = default_engine_factory):
        self._output = output
        self._output_lock = threading.Lock()
        self._engine_factory = engine_factory
        self._engine = None
        self._engine_lock = threading.Lock()
        # The running job; cleared in the same step as its last event is sent, so that a client that has
        # seen the result may start the next run at once, and `bye` always follows the job's last event.
        self._job: _Job | None = None
        self._job_lock = threading.Lock()

    def send(self, request_id, event: str, **fields) -> None:
        # default=str: result records may hold paths or other plain values (as result.json does).
        line = json.dumps({"id": request_id, "event": event, **fields}, default=str)
        with self._output_lock:
            self._output.write(line + "\n")
            self._output.flush()

    def handle(self, line: str) -> bool:
        """Answer one request line; returns False once the worker should stop (after `shutdown`)."""
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request must be a JSON object")
        except ValueError as error:
            self.send(None, "error", kind="internal", message=f"The request is not a JSON object ({error}).")
            return True
        request_id, op = request.get("id"), request.get("op")
        try:
            if op == "hello":
                self.send(request_id, "ready", **hello_report())
            elif op == "list_skills":
                self.send(request_id, "skills", skills=self._available_skills())
            elif op == "run":
                self._start_job(request_id, run_study, request.get("params") or {})
            elif op == "improve":
                self._start_job(request_id, improve_skill, request.get("params") or {})
            elif op == "use_skill":
                self.send(request_id, "skill_used", **use_skill(request.get("skill")))
            elif op == "cancel":
                with self._job_lock:
                    if self._job is not None and self._job.id == request.get("target"):
                        self._job.cancel.set()
            elif op == "shutdown":
                self.close()
                self.send(request_id, "bye")
                return False
            else:
                raise ValueError(
                    f"Unknown op {op!r}; expected hello, list_skills, run, improve, use_skill, cancel or "
                    "shutdown."
                )
        except Exception as error:
            self._send_error(request_id, error)
        return True

    def warm_up(self) -> None:
        """Build the engine now, on a background thread: importing torch and MONAI takes seconds, which the
        first run then does not wait for. A failure is only logged here; the first run reports it."""
        threading.Thread(target=self._warm_up, name="mafm3-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        try:
            self._built_engine()
        except Exception:
            log.warning("building the engine failed; the first run will report why", exc_info=True)

    def _built_engine(self):
        with self._engine_lock:
            if self._engine is None:
                self._engine = self._engine_factory()
            return self._engine

    def _available_skills(self) -> list[dict]:
        return [
            {
                **skill.manifest.to_dict(),
                "path": None if skill.folder is None else str(skill.folder),
                "active": skill.active,
            }
            for skill in self._built_engine().available()
        ]

    def close(self, timeout: float = SHUTDOWN_WAIT_S) -> None:
        """Cancel the running job and wait (up to `timeout` seconds) until it has sent its last event."""
        with self._job_lock:
            job = self._job
            if job is not None:
                job.cancel.set()
        if job is not None:
            job.thread.join(timeout)
            if job.thread.is_alive():
                log.warning("job %s did not reach a cancellation point within %g s", job.id, timeout)

    def _send_error(self, request_id, error: Exception) -> None:
        """A `MAFM3Error` is the user's sentence; anything else is a bug, with its traceback in the log."""
        if isinstance(error, MAFM3Error):
            self.send(request_id, "error", kind="user", message=str(error))
            return
        log.error("request %s failed", request_id, exc_info=error)
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        name = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
        self.send(request_id, "error", kind="internal", message=f"The worker failed ({name}); see its log.")

    def _start_job(self, request_id, job: Callable, params: dict) -> None:
        """Start `job(engine, params, progress, cancel) -> record` (`run_study`, `improve_skill`)."""
        with self._job_lock:
            if self._job is not None:
                raise MAFM3Error(
                    "A run or improve is already in progress; wait for it to finish or cancel it first."
                )
            cancel = threading.Event()
            thread = threading.Thread(
                target=self._run_job,
                args=(request_id, job, params, cancel),
                name=f"mafm3-job-{request_id}",
                daemon=True,
            )
            self._job = _Job(request_id, cancel, thread)
            thread.start()

    def _run_job(self, request_id, job: Callable, params: dict, cancel: threading.Event) -> None:
        def progress(stage: str, fraction: float, message: str = "") -> None:
            if cancel.is_set():
                from mafm3.engine import Cancelled

                raise Cancelled
            self.send(request_id, "progress", stage=stage, fraction=float(fraction), message=message)

        try:
            record = job(self._built_engine(), params, progress, cancel)
        except Exception as error:
            with self._job_lock:
                self._job = None
                # Once cancel is set, whatever ended the run (`Cancelled`, raised by the engine or by the
                # progress callback above) is the cancellation.
                if cancel.is_set():
                    self.send(request_id, "cancelled")
                else:
                    self._send_error(request_id, error)
            return
        with self._job_lock:
            self._job = None
            self.send(request_id, "result", result=record)


def serve(
    stdin: IO[str], stdout: IO[str], engine_factory: Callable[[], WorkerEngine] = default_engine_factory
) -> None:
    """Answer requests from `stdin` on `stdout` until `shutdown` or end of input."""
    worker = Worker(stdout, engine_factory)
    worker.warm_up()
    for line in iter(stdin.readline, ""):
        if line.strip() and not worker.handle(line):
            return
    worker.close()


def main() -> int:
    """`python -m mafm3.worker`: keep file descriptor 1 for protocol lines, send everything else to stderr."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="mafm3.worker %(levelname)s %(name)s: %(message)s"
    )
    sys.stdout.flush()
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # C-level writes to fd 1 now land in the log ...
    sys.stdout = sys.stderr  # ... and so do Python prints
    serve(sys.stdin, protocol, engine_factory_from_env())
    return 0


if __name__ == "__main__":
    sys.exit(main())
