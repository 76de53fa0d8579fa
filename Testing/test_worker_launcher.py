"""The worker behind an application launcher, as inside Slicer (`PythonSlicer -m mafm3.worker`).

`launcher_standin.py` plays PythonSlicer: it starts the real Python as a child with the same pipes and waits
for it, and a kill of the launcher alone leaves that child running. These tests check that Cancel and Stop end
the process that does the work (not only the launcher), that no `poll()` waits on a process or a pipe, and
that a worker whose client was killed (Slicer killed) exits by itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MAFM3SlicerLib.worker_client import WorkerClient

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the launcher stand-in is a POSIX shell script")

TESTING_DIR = Path(__file__).resolve().parent
MODULE_DIR = TESTING_DIR.parent / "MAFM3Slicer"
FAKE_ENGINE_DIR = TESTING_DIR.parent / "python_core" / "tests"
START_TIMEOUT_S = 120.0  # a fresh worker imports torch before it answers
GONE_WITHIN_S = 5.0  # "within a few seconds"
# An orphan first has to notice the end of its stdin, cancel its run and shut its interpreter down (torch
# loaded) by itself: seconds, more on a loaded machine.
ORPHAN_GONE_WITHIN_S = 30.0
LONGEST_POLL_S = 0.3  # "a fraction of a second": poll(0) may wait for nothing but the GIL


@pytest.fixture
def python_slicer(tmp_path) -> Path:
    """An executable that behaves like PythonSlicer: `python_slicer -m mafm3.worker` runs the launcher
    stand-in, which runs this Python as its child."""
    launcher = tmp_path / "PythonSlicer"
    stand_in = TESTING_DIR / "launcher_standin.py"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{stand_in}" "{sys.executable}" "$@"\n')
    launcher.chmod(0o755)
    return launcher


@pytest.fixture
def worker_env(tmp_path) -> dict:
    """The fake engine of `python_core/tests/fake_engine.py`: a skill id containing "slow" reports progress
    for 20 s."""
    python_path = os.pathsep.join(filter(None, [str(FAKE_ENGINE_DIR), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "MAFM3_WORKER_ENGINE": "fake_engine:FakeEngine",
        "MAFM3_HOME": str(tmp_path / "home"),
        "PYTHONPATH": python_path,
    }


@pytest.fixture
def ct_path(tmp_path) -> Path:
    image = sitk.GetImageFromArray(np.zeros((8, 8, 8), dtype=np.int16))
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    return path


def is_gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie waiting for its new parent to reap it counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return "\nState:\tZ" in status


def wait_until_gone(pid: int, timeout_s: float = GONE_WITHIN_S) -> float:
    """Seconds until `pid` ended; fails the test after `timeout_s`."""
    start = time.monotonic()
    while not is_gone(pid):
        if time.monotonic() - start > timeout_s:
            os.kill(pid, signal.SIGKILL)  # leave nothing behind, then fail
            pytest.fail(f"The worker (pid {pid}) was still running {timeout_s:g} s later.")
        time.sleep(0.05)
    return time.monotonic() - start


def timed_polls(client: WorkerClient, until, timeout_s: float = 60.0) -> tuple[list[dict], float]:
    """poll(0) every 20 ms, as the panel's timer does, until `until(events)`; the events and the longest
    single poll in seconds."""
    events: list[dict] = []
    longest = 0.0
    deadline = time.monotonic() + timeout_s
    while not until(events):
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out; events so far: {events}")
        start = time.monotonic()
        events += client.poll(0.0)
        longest = max(longest, time.monotonic() - start)
        time.sleep(0.02)
    return events, longest


def started_slow_run(client: WorkerClient, ct_path: Path, out: Path) -> tuple[str, int]:
    """A run that reports progress for 20 s, once it is running; its id and the pid of the worker process."""
    worker_pid = client.start()["pid"]
    run_id = client.submit_run({"ct": str(ct_path), "out": str(out), "skills": ["slow"]})
    timed_polls(client, lambda events: any(e.get("event") == "progress" for e in events))
    return run_id, worker_pid


def test_the_stand_in_runs_the_worker_as_the_launchers_child(python_slicer, worker_env):
    client = WorkerClient(python_slicer, env=worker_env, start_timeout_s=START_TIMEOUT_S)
    try:
        ready = client.start()
        launcher_pid = client._process.popen.pid
        assert ready["pid"] != launcher_pid  # what a kill of the launcher alone would leave running
        assert Path(f"/proc/{ready['pid']}/status").read_text().count(f"PPid:\t{launcher_pid}\n") == 1
    finally:
        client.stop()


def test_a_forced_cancel_ends_the_worker_itself_without_blocking_a_poll(
    python_slicer, worker_env, ct_path, tmp_path
):
    client = WorkerClient(python_slicer, env=worker_env, start_timeout_s=START_TIMEOUT_S, cancel_grace_s=0.0)
    try:
        run_id, worker_pid = started_slow_run(client, ct_path, tmp_path / "out")

        client.cancel(run_id)  # a grace of 0 s: the next poll kills
        events, longest_poll = timed_polls(client, lambda events: any(e.get("id") == run_id for e in events))

        assert [e for e in events if e.get("id") == run_id][-1] == {
            "id": run_id,
            "event": "cancelled",
            "forced": True,
        }
        assert longest_poll < LONGEST_POLL_S
        wait_until_gone(worker_pid)
    finally:
        client.stop()


def test_stop_during_a_run_ends_the_worker_itself(python_slicer, worker_env, ct_path, tmp_path):
    client = WorkerClient(python_slicer, env=worker_env, start_timeout_s=START_TIMEOUT_S)
    _run_id, worker_pid = started_slow_run(client, ct_path, tmp_path / "out")

    client.stop(timeout_s=2.0)

    assert not client.is_alive()
    wait_until_gone(worker_pid)


def test_stop_of_a_worker_that_ignores_shutdown_kills_it_within_the_timeout(
    python_slicer, worker_env, ct_path, tmp_path
):
    client = WorkerClient(python_slicer, env=worker_env, start_timeout_s=START_TIMEOUT_S)
    _run_id, worker_pid = started_slow_run(client, ct_path, tmp_path / "out")
    os.kill(worker_pid, signal.SIGSTOP)  # frozen: it reads no shutdown, and its launcher waits on

    start = time.monotonic()
    client.stop(timeout_s=1.0)

    assert time.monotonic() - start < 1.0 + LONGEST_POLL_S
    wait_until_gone(worker_pid)


def test_a_worker_whose_client_was_killed_exits_by_itself(python_slicer, worker_env, ct_path, tmp_path):
    """Slicer killed (crash, kill -9) while a run is in flight: nobody sends shutdown or kills the worker."""
    client_code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(MODULE_DIR)!r})
        from MAFM3SlicerLib.worker_client import WorkerClient
        client = WorkerClient({str(python_slicer)!r}, start_timeout_s={START_TIMEOUT_S})
        pid = client.start()["pid"]
        client.submit_run({{"ct": {str(ct_path)!r}, "out": {str(tmp_path / "out")!r}, "skills": ["slow"]}})
        while not any(e.get("event") == "progress" for e in client.poll(1.0)):
            pass
        print(pid, flush=True)
        time.sleep(120)
        """
    )
    slicer_process = subprocess.Popen(
        [sys.executable, "-c", client_code], env=worker_env, stdout=subprocess.PIPE, text=True
    )
    try:
        worker_pid = int(slicer_process.stdout.readline())
    finally:
        slicer_process.kill()
        slicer_process.wait()

    wait_until_gone(worker_pid, ORPHAN_GONE_WITHIN_S)
