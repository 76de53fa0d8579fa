"""The warm worker: the JSON-lines protocol of `mafm3.worker`, in-process and as the real process.

In-process tests run `serve()` on a thread, with a pipe for stdin and a queue collecting the event lines; the
engine is `fake_engine.FakeEngine`, whose skills are the demo packs shipped with mafm3 (MAFM3_HOME is empty).
Every wait has a timeout, so a hang fails instead of blocking.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import fake_engine as fake
import numpy as np
import pytest
import SimpleITK as sitk
import torch

import mafm3
import mafm3.config
from mafm3.worker import ENGINE_ENV, serve

TESTS_DIR = Path(__file__).resolve().parent
TIMEOUT_S = 30.0
TERMINAL = {"result", "error", "cancelled"}
SPACING_MM = (2.0, 2.0, 2.0)
SKILLS = ["demo-seg-ct", "demo-prognosis"]  # shipped with mafm3
# The fake's blocks on a 20^3 grid: GTVp 20 // 5 = 4 voxels a side, GTVn half that; voxels of 8 mm3.
GTVP_ML, GTVN_ML = 4**3 * 8 / 1000, 2**3 * 8 / 1000


@pytest.fixture(autouse=True)
def empty_home(tmp_path, monkeypatch):
    """No installed packs: the fake engine (in this process or a worker's) offers the shipped demo packs."""
    monkeypatch.setenv("MAFM3_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def ct_path(tmp_path_factory) -> Path:
    """A 20^3 CT at 2 mm: air and a soft-tissue body at 20 HU."""
    hu = np.full((20, 20, 20), -1000.0, dtype=np.float32)
    hu[2:18, 2:18, 2:18] = 20.0
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(SPACING_MM)
    image.SetOrigin((-20.0, 7.5, 100.0))
    path = tmp_path_factory.mktemp("study") / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    return path


class _Lines:
    """A text stream whose written lines land in a queue (what the worker writes on its stdout)."""

    def __init__(self):
        self.lines: queue.Queue[str] = queue.Queue()
        self._partial = ""

    def write(self, text: str) -> int:
        *complete, self._partial = (self._partial + text).split("\n")
        for line in complete:
            self.lines.put(line)
        return len(text)

    def flush(self) -> None:
        pass


class Session:
    """`serve()` running on a thread: send requests, read events."""

    def __init__(self, engine_factory):
        read_fd, write_fd = os.pipe()
        self._stdin = os.fdopen(write_fd, "w", encoding="utf-8", buffering=1)
        self._worker_stdin = os.fdopen(read_fd, encoding="utf-8")
        self._output = _Lines()
        self.thread = threading.Thread(
            target=serve, args=(self._worker_stdin, self._output, engine_factory), daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        """End the input (if a test has not), wait for `serve()` to return, close the pipe."""
        if not self._stdin.closed:
            self._stdin.close()
        self.thread.join(TIMEOUT_S)
        self._worker_stdin.close()

    def send(self, request: dict | str) -> None:
        self._stdin.write((request if isinstance(request, str) else json.dumps(request)) + "\n")

    def close_input(self) -> None:
        self._stdin.close()

    def event(self) -> dict:
        return json.loads(self._output.lines.get(timeout=TIMEOUT_S))

    def events_until_end_of(self, job_id: str) -> list[dict]:
        """Events up to and including the job's last one (result, error or cancelled)."""
        events = [self.event()]
        while not (events[-1]["id"] == job_id and events[-1]["event"] in TERMINAL):
            events.append(self.event())
        return events

    def run(self, job_id: str, **params) -> list[dict]:
        """A run of `params` (of the demo skills unless `skills` is given); its events up to the last."""
        self.send({"id": job_id, "op": "run", "params": {"skills": SKILLS, **params}})
        return self.events_until_end_of(job_id)

    def start_slow_run(self, job_id: str, **params) -> None:
        """Start a run of the fake "slow" skill and wait until it reports progress (it is running)."""
        self.send({"id": job_id, "op": "run", "params": {**params, "skills": ["slow"]}})
        assert self.event()["event"] == "progress"


@pytest.fixture
def built():
    """How many engines the worker built: calls of the factory handed to `serve()`."""
    return []


@pytest.fixture
def session(built):
    def factory():
        built.append(fake.FakeEngine())
        return built[-1]

    running = Session(factory)
    yield running
    running.close()


def test_hello_reports_the_version_process_and_the_device_auto_would_use(session):
    session.send({"id": "h", "op": "hello"})
    ready = session.event()

    assert ready["id"] == "h" and ready["event"] == "ready"
    assert ready["version"] == mafm3.__version__
    assert ready["pid"] == os.getpid()
    assert ready["torch"]["version"] == torch.__version__
    assert ready["device"] in {"cuda", "mps", "cpu"}
    assert (ready["device"] == "cuda") == torch.cuda.is_available()


def test_list_skills_lists_the_skills_the_engine_chooses_from_with_their_manifests(session):
    session.send({"id": "s", "op": "list_skills"})
    answer = session.event()

    assert (answer["id"], answer["event"]) == ("s", "skills")
    shipped = sorted(mafm3.config.bundled_skills_dir().glob("*/manifest.json"))
    assert shipped  # the demo packs
    listed = {skill["path"]: skill for skill in answer["skills"]}
    assert set(listed) == {str(manifest.parent) for manifest in shipped}
    for manifest in shipped:
        written = json.loads(manifest.read_text())
        assert {key: listed[str(manifest.parent)][key] for key in written} == written


def test_a_run_streams_progress_then_a_result_describing_the_written_outputs(session, ct_path, tmp_path):
    out = tmp_path / "out"
    events = session.run("r1", ct=str(ct_path), out=str(out))

    progress, result = events[:-1], events[-1]
    assert result["event"] == "result", result
    assert all(e["event"] == "progress" and e["id"] == "r1" for e in progress)
    assert [(e["stage"], e["fraction"], e["message"]) for e in progress] == fake.PROGRESS
    record = result["result"]
    assert record["out"] == str(out.absolute())
    assert record["outputs"][-1] == "result.json"
    assert all((out / name).is_file() for name in record["outputs"])
    assert json.loads((out / "result.json").read_text())["outputs"] == record["outputs"]
    assert record["segmentation"]["volumes_ml"] == pytest.approx({"GTVp": GTVP_ML, "GTVn": GTVN_ML})
    assert record["prognosis"]["risk_group"] == fake.PROGNOSIS.risk_group
    expected = {f"{years}y": p for years, p in fake.PROGNOSIS.survival_at_years.items()}
    assert record["prognosis"]["survival_probability"] == expected
    assert record["warnings"] == []  # the list is always there, for the Slicer panel to show


def test_the_engine_is_built_once_and_kept_warm_between_runs(session, built, ct_path, tmp_path):
    first = session.run("r1", ct=str(ct_path), out=str(tmp_path / "a"))[-1]
    second = session.run("r2", ct=str(ct_path), out=str(tmp_path / "b"))[-1]

    assert len(built) == 1
    assert first["result"]["backbone"]["runs_of_this_engine"] == 1
    assert second["result"]["backbone"]["runs_of_this_engine"] == 2


def test_a_user_error_is_its_one_sentence_and_the_worker_answers_the_next_request(session, ct_path, tmp_path):
    out = tmp_path / "out"
    error = session.run("r1", ct=str(ct_path), out=str(out), skills=["user-error"])[-1]

    assert error == {"id": "r1", "event": "error", "kind": "user", "message": fake.USER_ERROR}
    assert session.run("r2", ct=str(ct_path), out=str(out))[-1]["event"] == "result"


def test_a_bug_is_an_internal_error_naming_the_exception_without_its_traceback(session, ct_path, tmp_path):
    error = session.run("r1", ct=str(ct_path), out=str(tmp_path / "out"), skills=["bug"])[-1]

    assert (error["event"], error["kind"]) == ("error", "internal")
    assert "ZeroDivisionError" in error["message"] and "Traceback" not in error["message"]
    assert "\n" not in error["message"]
    session.send({"id": "h", "op": "hello"})
    assert session.event()["event"] == "ready"


def test_cancel_stops_a_long_run_and_the_next_run_is_accepted(session, ct_path, tmp_path):
    session.start_slow_run("slow", ct=str(ct_path), out=str(tmp_path / "a"))

    session.send({"id": "c", "op": "cancel", "target": "slow"})
    assert session.events_until_end_of("slow")[-1] == {"id": "slow", "event": "cancelled"}
    assert not (tmp_path / "a").exists()
    assert session.run("next", ct=str(ct_path), out=str(tmp_path / "b"))[-1]["event"] == "result"


def test_a_second_run_while_one_runs_is_refused_and_the_first_goes_on(session, ct_path, tmp_path):
    session.start_slow_run("first", ct=str(ct_path), out=str(tmp_path / "a"))

    params = {"ct": str(ct_path), "out": str(tmp_path / "b"), "skills": ["slow"]}
    session.send({"id": "second", "op": "run", "params": params})
    events = session.events_until_end_of("second")
    assert (events[-1]["event"], events[-1]["kind"]) == ("error", "user")
    assert "already in progress" in events[-1]["message"]
    assert {e["id"] for e in events[:-1]} <= {"first"}

    session.send({"id": "c", "op": "cancel", "target": "first"})
    assert session.events_until_end_of("first")[-1]["event"] == "cancelled"


def test_shutdown_cancels_the_running_job_then_says_bye_and_returns(session, ct_path, tmp_path):
    session.start_slow_run("slow", ct=str(ct_path), out=str(tmp_path / "a"))

    session.send({"id": "bye", "op": "shutdown"})
    assert session.events_until_end_of("slow")[-1]["event"] == "cancelled"
    assert session.event() == {"id": "bye", "event": "bye"}
    session.thread.join(TIMEOUT_S)
    assert not session.thread.is_alive()


def test_end_of_input_cancels_the_running_job_and_returns(session, ct_path, tmp_path):
    session.start_slow_run("slow", ct=str(ct_path), out=str(tmp_path / "a"))

    session.close_input()
    assert session.events_until_end_of("slow")[-1]["event"] == "cancelled"
    session.thread.join(TIMEOUT_S)
    assert not session.thread.is_alive()


@pytest.mark.parametrize(
    ("line", "answer_id", "words"),
    [
        ("this is not json", None, "not a JSON object"),
        ('["a list"]', None, "not a JSON object"),
        ('{"id": "x", "op": "frobnicate"}', "x", "Unknown op 'frobnicate'"),
        ('{"id": "x", "op": "run", "params": {"ct": "ct.nrrd"}}', "x", "params.out"),
        ('{"id": "x", "op": "run", "params": {"ct": "ct.nrrd", "out": "o", "speed": 9}}', "x", "['speed']"),
    ],
)
def test_a_malformed_request_gets_an_internal_error_and_the_worker_stays_up(session, line, answer_id, words):
    session.send(line)
    error = session.event()

    assert (error["id"], error["event"], error["kind"]) == (answer_id, "error", "internal")
    assert words in error["message"]
    session.send({"id": "h", "op": "hello"})
    assert session.event()["event"] == "ready"


class WorkerProcess:
    """The real `python -m mafm3.worker` with the fake engine; a thread queues its stdout lines."""

    def __init__(self):
        python_path = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, ENGINE_ENV: "fake_engine:FakeEngine", "PYTHONPATH": python_path}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mafm3.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in iter(self.process.stdout.readline, ""):
            self.lines.put(line)

    def ask(self, request: dict) -> dict:
        """Send `request`, return its answer (its last event); every stdout line on the way must parse."""
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        while True:
            event = json.loads(self.lines.get(timeout=TIMEOUT_S))
            if event["id"] == request["id"] and event["event"] != "progress":
                return event

    def finish(self, timeout: float = TIMEOUT_S) -> tuple[int, str]:
        """Close stdin, wait for the exit; returns (exit code, stderr)."""
        self.process.stdin.close()
        try:
            self.process.wait(timeout)
        finally:
            self.process.kill()
        stderr = self.process.stderr.read()
        self.process.stdout.close()
        self.process.stderr.close()
        return self.process.returncode, stderr


def test_the_worker_process_writes_only_protocol_lines_on_stdout_and_exits_after_shutdown(ct_path, tmp_path):
    worker = WorkerProcess()

    ready = worker.ask({"id": "h", "op": "hello"})
    result = worker.ask(
        {
            "id": "r",
            "op": "run",
            "params": {"ct": str(ct_path), "out": str(tmp_path / "out"), "skills": SKILLS},
        }
    )
    bye = worker.ask({"id": "bye", "op": "shutdown"})
    returncode, stderr = worker.finish()

    assert ready["event"] == "ready" and ready["pid"] == worker.process.pid
    assert result["event"] == "result"
    assert bye["event"] == "bye"
    assert returncode == 0
    assert worker.lines.empty()
    assert fake.STDOUT_NOISE in stderr
    assert f"{fake.STDOUT_NOISE} (file descriptor 1)" in stderr


def test_the_worker_process_exits_cleanly_at_end_of_input():
    worker = WorkerProcess()
    returncode, _ = worker.finish()

    assert returncode == 0
    assert worker.lines.empty()


def _installed_copy(skill_id: str, of: str = "demo-seg-ct") -> None:
    """A manifest-only pack `skill_id` 1.0.0 in MAFM3_HOME (the fake engine reads manifests only)."""
    source = json.loads((mafm3.config.bundled_skills_dir() / f"{of}-1.0.0" / "manifest.json").read_text())
    folder = mafm3.config.skills_dir() / f"{skill_id}-1.0.0"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({**source, "id": skill_id}))


def _listed_versions(session: Session, skill_id: str) -> dict[str, bool]:
    session.send({"id": "l", "op": "list_skills"})
    return {s["version"]: s["active"] for s in session.event()["skills"] if s["id"] == skill_id}


def test_improve_streams_train_and_evaluate_progress_then_the_comparison_and_the_new_active_version(
    session, tmp_path
):
    _installed_copy("fake-seg")
    out = tmp_path / "improved"
    params = {"skill": "fake-seg", "dataset": str(tmp_path), "out": str(out), "install": True}
    session.send({"id": "i1", "op": "improve", "params": params})
    events = session.events_until_end_of("i1")

    assert [(e["stage"], e["fraction"], e["message"]) for e in events[:-1]] == fake.IMPROVE_PROGRESS
    result = events[-1]["result"]
    assert (result["installed"], result["pack"]) == (True, str(out.resolve()))
    comparison = json.loads((out / "comparison.json").read_text())
    assert result["comparison"] == comparison
    assert comparison["versions"]["current"]["version"] == "1.0.0"
    assert comparison["versions"]["new"]["version"] == "1.1.0"
    assert comparison["metrics"]["new"]["classes"]["GTVp"]["dice_mean"] == fake.FAKE_DICE["new"]["GTVp"]
    assert _listed_versions(session, "fake-seg") == {"1.0.0": False, "1.1.0": True}

    session.send({"id": "u", "op": "use_skill", "skill": "fake-seg@1.0.0"})
    used = session.event()
    assert used == {
        "id": "u",
        "event": "skill_used",
        "skill": "fake-seg",
        "version": "1.0.0",
        "previous": "1.1.0",
    }
    assert _listed_versions(session, "fake-seg") == {"1.0.0": True, "1.1.0": False}


def test_an_improve_the_gate_refuses_installs_nothing_and_says_why(session, tmp_path):
    _installed_copy("fake-worse-seg")
    params = {
        "skill": "fake-worse-seg",
        "dataset": str(tmp_path),
        "out": str(tmp_path / "o"),
        "install": True,
    }
    session.send({"id": "i1", "op": "improve", "params": params})
    result = session.events_until_end_of("i1")[-1]["result"]

    assert result["installed"] is False and "1.0.0 stays" in result["message"]
    assert _listed_versions(session, "fake-worse-seg") == {"1.0.0": True}


def test_cancel_stops_an_improve_and_leaves_out_and_the_skills_as_they_were(session, tmp_path):
    _installed_copy("slow-seg")
    out = tmp_path / "improved"
    params = {"skill": "slow-seg", "dataset": str(tmp_path), "out": str(out), "install": True}
    session.send({"id": "i1", "op": "improve", "params": params})
    assert session.event()["event"] == "progress"

    session.send({"id": "c", "op": "cancel", "target": "i1"})
    assert session.events_until_end_of("i1")[-1] == {"id": "i1", "event": "cancelled"}
    assert not out.exists()
    assert _listed_versions(session, "slow-seg") == {"1.0.0": True}


def test_use_skill_of_a_version_that_is_not_there_is_a_user_error_naming_the_versions(session):
    session.send({"id": "u", "op": "use_skill", "skill": "demo-seg-ct@9.9.9"})
    error = session.event()

    assert (error["event"], error["kind"]) == ("error", "user")
    assert "9.9.9 is not installed" in error["message"] and "1.0.0" in error["message"]


def test_the_real_improve_path_refuses_a_request_without_its_dataset_in_one_sentence(tmp_path):
    class EngineWithoutImprove(fake.FakeEngine):
        improve = None  # as `mafm3.engine.Engine`: the worker runs `mafm3.training.improve`

    running = Session(EngineWithoutImprove)
    try:
        running.send(
            {"id": "i", "op": "improve", "params": {"skill": "demo-seg-ct", "out": str(tmp_path / "o")}}
        )
        error = running.events_until_end_of("i")[-1]
    finally:
        running.close()
    assert (error["event"], error["kind"]) == ("error", "user")
    assert "dataset" in error["message"]
