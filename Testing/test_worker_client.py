"""`WorkerClient` against the real `python -m mafm3.worker`, run with the fake engine of python_core/tests.

One client (one warm worker) serves the whole module, as one serves Slicer; the tests that kill or crash the
worker check that the next run starts a new one by itself. Every wait has a timeout, so a hang fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MAFM3SlicerLib.worker_client import WorkerClient, WorkerStartError

REPOSITORY_DIR = Path(__file__).resolve().parent.parent
FAKE_ENGINE_DIR = REPOSITORY_DIR / "python_core" / "tests"
SHIPPED_SKILLS = REPOSITORY_DIR / "python_core" / "src" / "mafm3" / "demo" / "assets" / "skills"
sys.path.insert(0, str(FAKE_ENGINE_DIR))
import fake_engine as fake  # noqa: E402  (importable only after the path set-up above)

TIMEOUT_S = 120.0  # the first run of a fresh worker imports torch and MONAI
SKILLS = ["demo-seg-ct", "demo-prognosis"]  # shipped with mafm3: the fake's skills (MAFM3_HOME is empty)
# The fake's blocks on a 20^3 grid: GTVp 20 // 5 = 4 voxels a side, GTVn half that; voxels of 8 mm3.
GTVP_ML, GTVN_ML = 4**3 * 8 / 1000, 2**3 * 8 / 1000


def _worker_env(home: Path, engine: str = "fake_engine:FakeEngine") -> dict:
    python_path = os.pathsep.join(filter(None, [str(FAKE_ENGINE_DIR), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "MAFM3_WORKER_ENGINE": engine, "PYTHONPATH": python_path, "MAFM3_HOME": str(home)}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    env = _worker_env(tmp_path_factory.mktemp("mafm3_home"))
    worker = WorkerClient(sys.executable, env=env, start_timeout_s=TIMEOUT_S, cancel_grace_s=10.0)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def ct_path(tmp_path_factory) -> Path:
    """A 20^3 CT at 2 mm: air and a body at 20 HU."""
    hu = np.full((20, 20, 20), -1000.0, dtype=np.float32)
    hu[2:18, 2:18, 2:18] = 20.0
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((2.0, 2.0, 2.0))
    path = tmp_path_factory.mktemp("study") / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def _events_of(run_id: str, events: list[dict]) -> list[dict]:
    return [event for event in events if event.get("id") == run_id]


def _first_progress(client: WorkerClient, run_id: str) -> None:
    """Poll until the run has reported progress (so it is running in the worker)."""
    for _ in range(int(TIMEOUT_S)):
        if any(e["event"] == "progress" for e in _events_of(run_id, client.poll(1.0))):
            return
    raise TimeoutError(f"Run {run_id} reported no progress.")


def test_the_client_module_imports_neither_torch_nor_mafm3():
    code = (
        "import sys; import MAFM3SlicerLib.worker_client; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mafm3', 'qt')))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY_DIR / "MAFM3Slicer")}
    loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)

    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"


def test_start_waits_for_the_workers_ready_report(client):
    ready = client.start()

    assert ready["event"] == "ready"
    assert client.is_alive()
    assert client.ready == ready
    assert ready["device"] in {"cuda", "mps", "cpu"}
    assert ready["python"]["executable"] == sys.executable


def test_a_run_streams_progress_and_ends_with_its_result(client, ct_path, tmp_path):
    out = tmp_path / "out"
    run_id = client.submit_run({"ct": str(ct_path), "out": str(out), "skills": SKILLS})
    events = _events_of(run_id, client.wait(run_id, TIMEOUT_S))

    assert [(e["stage"], e["fraction"], e["message"]) for e in events[:-1]] == fake.PROGRESS
    assert events[-1]["event"] == "result"
    record = events[-1]["result"]
    assert record["out"] == str(out)
    assert sorted(record["outputs"]) == sorted(p.name for p in out.iterdir())
    assert record["segmentation"]["volumes_ml"] == pytest.approx({"GTVp": GTVP_ML, "GTVn": GTVN_ML})


def test_list_skills_brings_the_skills_the_worker_can_run(client):
    request_id = client.list_skills()
    answers = []
    for _ in range(int(TIMEOUT_S)):
        answers += _events_of(request_id, client.poll(1.0))
        if answers:
            break

    assert answers[0]["event"] == "skills"
    shipped = {json.loads(path.read_text())["id"] for path in SHIPPED_SKILLS.glob("*/manifest.json")}
    assert shipped and {skill["id"] for skill in answers[0]["skills"]} == shipped


def test_a_user_error_comes_back_as_its_sentence(client, ct_path, tmp_path):
    run_id = client.submit_run({"ct": str(ct_path), "out": str(tmp_path / "out"), "skills": ["user-error"]})
    end = client.wait(run_id, TIMEOUT_S)[-1]

    assert end == {"id": run_id, "event": "error", "kind": "user", "message": fake.USER_ERROR}
    assert client.is_alive()


def test_cancel_ends_a_run_as_cancelled_and_keeps_the_warm_worker(client, ct_path, tmp_path):
    pid = client.start()["pid"]
    run_id = client.submit_run({"ct": str(ct_path), "out": str(tmp_path / "out"), "skills": ["slow"]})
    _first_progress(client, run_id)

    client.cancel(run_id)
    end = _events_of(run_id, client.wait(run_id, TIMEOUT_S))[-1]

    assert end == {"id": run_id, "event": "cancelled"}
    assert not (tmp_path / "out").exists()
    assert client.is_alive() and client.start()["pid"] == pid


def test_a_run_that_ignores_cancel_is_killed_and_the_next_run_starts_a_new_worker(
    client, ct_path, tmp_path, monkeypatch
):
    monkeypatch.setattr(client, "cancel_grace_s", 0.5)
    pid = client.start()["pid"]
    hung = client.submit_run({"ct": str(ct_path), "out": str(tmp_path / "a"), "skills": ["hang"]})

    client.cancel(hung)
    end = _events_of(hung, client.wait(hung, TIMEOUT_S))[-1]

    assert end == {"id": hung, "event": "cancelled", "forced": True}
    assert not client.is_alive()
    next_run = client.submit_run({"ct": str(ct_path), "out": str(tmp_path / "b"), "skills": SKILLS})
    events = client.wait(next_run, TIMEOUT_S)
    assert events[-1]["event"] == "result"
    assert [e["pid"] for e in events if e["event"] == "ready"] == [client.ready["pid"]]
    assert client.ready["pid"] != pid


def test_a_crash_is_reported_with_its_exit_code_and_the_next_run_restarts_the_worker(
    client, ct_path, tmp_path
):
    pid = client.start()["pid"]
    crashing = client.submit_run({"ct": str(ct_path), "out": str(tmp_path / "a"), "skills": ["crash"]})
    end = _events_of(crashing, client.wait(crashing, TIMEOUT_S))[-1]

    assert (end["event"], end["returncode"]) == ("crashed", fake.CRASH_CODE)
    assert fake.STDOUT_NOISE in end["stderr_tail"]  # what the run printed before dying, kept for the report
    assert not client.is_alive()
    next_run = client.submit_run({"ct": str(ct_path), "out": str(tmp_path / "b"), "skills": SKILLS})
    assert client.wait(next_run, TIMEOUT_S)[-1]["event"] == "result"
    assert client.ready["pid"] != pid


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_an_idle_worker_that_dies_is_reported_once(client):
    pid = client.start()["pid"]
    os.kill(pid, signal.SIGKILL)

    events = []
    for _ in range(int(TIMEOUT_S)):
        events += client.poll(1.0)
        if not client.is_alive() and events:
            break

    assert events == [
        {"id": None, "event": "crashed", "returncode": -signal.SIGKILL, "stderr_tail": client.stderr_tail()}
    ]
    assert client.poll() == []


def test_stop_shuts_the_worker_down(client):
    client.start()

    client.stop()

    assert not client.is_alive()
    assert [e["event"] for e in client.poll()] == ["bye"]
    client.stop()  # stopping a stopped client does nothing
    assert client.poll() == []


def test_start_reports_a_worker_that_cannot_start(tmp_path):
    broken = WorkerClient(sys.executable, env=_worker_env(tmp_path, engine="no_such_module:Engine"))

    with pytest.raises(WorkerStartError, match="exited with code 1") as raised:
        broken.start()

    assert "No module named 'no_such_module'" in str(raised.value)
    assert not broken.is_alive()
    assert broken.poll() == []
