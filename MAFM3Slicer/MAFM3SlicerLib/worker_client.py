"""The Slicer side of the warm worker: start `python -m mafm3.worker`, run, stream progress, cancel, recover.

The protocol (JSON lines over the worker's stdin and stdout) is described once, in the docstring of
`mafm3.worker` (python_core/src/mafm3/worker.py). This module imports neither torch nor `mafm3`: it runs in
Slicer's GUI process, where the core may not even be installed yet. It is Qt-free too: the widget calls
`poll()` from a `qt.QTimer` and updates the panel from the events it returns. Two threads per worker only read
its pipes into a queue and a bounded stderr buffer; every other call (all of `WorkerClient`) belongs to the
caller's thread.

`poll()` returns the worker's own events (`ready`, `skills`, `progress`, `result`, `error`, `cancelled`,
`bye`) and two that the client makes:

- `{"id": run, "event": "cancelled", "forced": true}`: the worker had not stopped `cancel_grace_s` seconds
  after a cancel, so its process was killed (Cancel kills a process, not Slicer).
- `{"id": run, "event": "crashed", "returncode", "stderr_tail"}`: the worker exited unexpectedly; one event
  per run in flight, or one with `"id": null` when it was idle.

After either, the next `submit` starts a new worker by itself, without blocking: the new worker's `ready`
event arrives through `poll()` like any other.

Inside Slicer the worker is started as `PythonSlicer -m mafm3.worker`. PythonSlicer is the CTK application
launcher: it sets up the environment, starts `python-real` as its child with the same pipes, and waits for it.
Killing the launcher alone would leave that child running (with the pipes, the model and its GPU memory), so a
kill here ends the worker itself: on POSIX the launcher starts in a process group of its own and the whole
group is killed; everywhere the worker's own pid (from its `ready` event) is killed too. Nothing on the
caller's thread waits for a process or a pipe: a background reaper waits for the exit, ends the readers and
closes the pipes. A worker whose client died (Slicer killed) sees the end of its stdin and exits by itself.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

JOB_ENDS = frozenset({"result", "error", "cancelled", "crashed"})
_READ_SLICE_S = 0.05  # how long one wait for an event lasts inside a blocking poll
_EXIT_WAIT_S = 5.0  # how long an exited (or killed) worker may take to close its pipes (reader threads)
_POSIX = os.name == "posix"


@dataclass(frozen=True)
class _Exited:
    """Queued by the stdout reader once the worker's stdout closed and its process exited."""

    returncode: int | None
    stderr_tail: str


class WorkerStartError(RuntimeError):
    """The worker exited, or stayed silent, before answering `hello`; the message ends with its stderr."""


class _Process:
    """One worker process: its pipes, a thread queueing its stdout events, one keeping its stderr tail.

    The stdout reader also waits for the exit once stdout closes and queues `_Exited`, so the caller learns of
    an exit (with its code) without ever waiting itself.
    """

    def __init__(self, args: list[str], env: dict | None, stderr_lines: int):
        self.popen = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=env,
            start_new_session=_POSIX,  # its own process group: a kill reaches the launcher's child as well
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),  # no console window on Windows
        )
        self.worker_pid: int | None = None  # the process that runs the worker (the launcher's child)
        self.events: queue.Queue = queue.Queue()
        self.stderr: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._stderr_reader = threading.Thread(
            target=self._read_stderr, name="mafm3-worker-stderr", daemon=True
        )
        self._stdout_reader = threading.Thread(
            target=self._read_stdout, name="mafm3-worker-stdout", daemon=True
        )
        self._stderr_reader.start()
        self._stdout_reader.start()

    def _read_stdout(self) -> None:
        for line in iter(self.popen.stdout.readline, ""):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict):
                self.events.put(event)
            else:  # the worker keeps stdout for protocol lines; anything else is kept as a diagnostic
                self.stderr.append(f"(stdout) {line.rstrip()}")
        returncode = self.popen.wait()
        self._stderr_reader.join(_EXIT_WAIT_S)
        self._close_pipes()
        self.events.put(_Exited(returncode, self.stderr_tail()))

    def _read_stderr(self) -> None:
        for line in iter(self.popen.stderr.readline, ""):
            self.stderr.append(line.rstrip("\n"))

    def send(self, message: dict) -> None:
        """Write one request line; a worker that is gone is noticed by its end of output, not here."""
        try:
            self.popen.stdin.write(json.dumps(message) + "\n")
            self.popen.stdin.flush()
        except (OSError, ValueError):
            pass

    def stderr_tail(self) -> str:
        return "\n".join(self.stderr)

    def kill(self) -> None:
        """Kill the worker and its launcher now, without waiting; a daemon thread reaps them afterwards."""
        if _POSIX:
            with contextlib.suppress(OSError):
                os.killpg(self.popen.pid, signal.SIGKILL)  # the launcher's group: launcher and worker
        if self.worker_pid is not None and self.worker_pid != self.popen.pid:
            with contextlib.suppress(OSError):  # e.g. on Windows, where the launcher's child is not grouped
                os.kill(self.worker_pid, signal.SIGKILL if _POSIX else signal.SIGTERM)
        with contextlib.suppress(OSError):
            self.popen.kill()
        threading.Thread(target=self._reap, name="mafm3-worker-reaper", daemon=True).start()

    def _reap(self) -> None:
        self.popen.wait()
        self._stdout_reader.join(_EXIT_WAIT_S)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            with contextlib.suppress(OSError, ValueError):
                pipe.close()


class WorkerClient:
    """Runs `python_executable -m mafm3.worker` and talks to it; restarts it after a crash or a forced cancel.

    python_executable: Slicer's Python (e.g. `PythonSlicer`), or any Python where `mafm3` is installed.
    env: the worker's environment (default: this process's), e.g. with `CUDA_VISIBLE_DEVICES=""` for CPU only.
    start_timeout_s: how long `start()` waits for `ready` (the worker imports torch before answering).
    cancel_grace_s: how long a cancelled run may take to stop before its worker is killed.
    stderr_lines: how many of the worker's last stderr lines are kept for error reports.
    """

    def __init__(
        self,
        python_executable: str | os.PathLike,
        env: dict | None = None,
        start_timeout_s: float = 120.0,
        cancel_grace_s: float = 10.0,
        stderr_lines: int = 200,
    ):
        self.python_executable = str(python_executable)
        self.env = env
        self.start_timeout_s = start_timeout_s
        self.cancel_grace_s = cancel_grace_s
        self.stderr_lines = stderr_lines
        self.ready: dict | None = None  # the last `ready` event: version, pid, device, torch, hints
        self._process: _Process | None = None
        self._last_returncode: int | None = None
        self._last_stderr = ""
        self._pending: list[dict] = []  # events collected and not yet returned by poll()
        self._runs_in_flight: dict[str, float | None] = {}  # run id -> kill deadline once cancelled
        self._ids = itertools.count(1)
        self._stopping = False

    # -- public API (caller's thread only) -------------------------------------------------------------

    def start(self) -> dict:
        """Start the worker if it is not running and wait for its `ready` event, which is returned.

        Raises:
            WorkerStartError: the worker exited before `ready` (e.g. mafm3 or torch is not installed: the
                message ends with its stderr), or did not answer within `start_timeout_s` (it is killed).
        """
        hello_id = self._launch() if not self.is_alive() else self._send_request("hello")
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            self._collect(_READ_SLICE_S)
            for event in self._pending:
                if event.get("id") == hello_id and event.get("event") == "ready":
                    self._pending.remove(event)
                    return event
            if self._process is None:  # the exception reports the exit; so no idle `crashed` event
                self._pending = [
                    e for e in self._pending if not (e["event"] == "crashed" and e["id"] is None)
                ]
                raise WorkerStartError(
                    f"The mafm3 worker exited with code {self._last_returncode} before it was ready:\n"
                    f"{self._last_stderr}"
                )
        self._kill()
        raise WorkerStartError(
            f"The mafm3 worker did not answer within {self.start_timeout_s:g} s and was stopped:\n"
            f"{self.stderr_tail()}"
        )

    def submit_run(self, params: dict) -> str:
        """Send a `run` request (params as in `mafm3.worker`); returns its id. Starts the worker if needed."""
        return self.submit("run", params)

    def submit(self, op: str, params: dict) -> str:
        """Send a job request: `run` or `improve` (params as in `mafm3.worker`); returns its id. Its events,
        Cancel and a crash are handled alike for every job. Starts the worker if needed."""
        if not self.is_alive():
            self._launch()
        run_id = self._send_request(op, params=params)
        self._runs_in_flight[run_id] = None
        return run_id

    def list_skills(self) -> str:
        """Ask for the installed skill packs; returns the id of the `skills` event `poll()` will bring."""
        if not self.is_alive():
            self._launch()
        return self._send_request("list_skills")

    def cancel(self, run_id: str) -> None:
        """Ask the worker to cancel a run; if it has not ended `cancel_grace_s` seconds later, `poll()` kills
        the worker and reports the run as `cancelled` with `"forced": true`. An ended run is left alone."""
        if run_id not in self._runs_in_flight or self._runs_in_flight[run_id] is not None:
            return
        self._runs_in_flight[run_id] = time.monotonic() + self.cancel_grace_s
        self._send_request("cancel", target=run_id)

    def poll(self, timeout_s: float = 0.0) -> list[dict]:
        """The events that arrived since the last call, in order; waits up to `timeout_s` for the first one.

        Also where overdue cancels are enforced and a dead worker is noticed, so call it regularly.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self._collect(min(_READ_SLICE_S, max(deadline - time.monotonic(), 0.0)))
            if self._pending or self._process is None or time.monotonic() >= deadline:
                break
        events, self._pending = self._pending, []
        return events

    def wait(self, run_id: str, timeout_s: float) -> list[dict]:
        """Poll until the run ends; returns every event polled meanwhile (for scripts and tests, not the GUI).

        Raises:
            TimeoutError: the run did not end within `timeout_s` (it keeps running; cancel it if needed).
        """
        deadline = time.monotonic() + timeout_s
        events: list[dict] = []
        while not any(e.get("id") == run_id and e.get("event") in JOB_ENDS for e in events):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"Run {run_id} did not end within {timeout_s:g} s.")
            events += self.poll(min(remaining, 1.0))
        return events

    def stop(self, timeout_s: float = 5.0) -> None:
        """Shut the worker down (a running job is cancelled first); kill it (launcher and worker) if it has
        not exited after `timeout_s`. The only call here that waits, and never longer than `timeout_s`.

        Events it sent on the way out (the job's `cancelled`, `bye`) are still returned by `poll()`.
        """
        process = self._process
        if process is None:
            return
        self._stopping = True
        process.send({"id": self._new_id("shutdown"), "op": "shutdown"})
        deadline = time.monotonic() + timeout_s
        while self._process is process and time.monotonic() < deadline:
            self._collect(_READ_SLICE_S)
        if self._process is process:
            self._kill()

    def is_alive(self) -> bool:
        """Whether a worker process is running now."""
        return self._process is not None and self._process.popen.poll() is None

    def stderr_tail(self) -> str:
        """The last `stderr_lines` lines the worker (or the last one that ran) wrote to stderr: its log."""
        return self._process.stderr_tail() if self._process is not None else self._last_stderr

    # -- internals -------------------------------------------------------------------------------------

    def _new_id(self, op: str) -> str:
        return f"{op}-{next(self._ids)}"

    def _send_request(self, op: str, **fields) -> str:
        request_id = self._new_id(op)
        self._process.send({"id": request_id, "op": op, **fields})
        return request_id

    def _launch(self) -> str:
        """Start a new worker and send `hello`; returns its id. What the previous one left is collected first;
        one that exited is reported as an exit (a crash, unless it was stopped), one still there is killed."""
        self._collect()
        process = self._process
        if process is not None and process.popen.poll() is not None:
            self._on_exit(process, _Exited(process.popen.returncode, process.stderr_tail()))
        elif process is not None:
            self._kill()
        self._process = _Process([self.python_executable, "-m", "mafm3.worker"], self.env, self.stderr_lines)
        self._stopping = False
        return self._send_request("hello")

    def _collect(self, block_s: float = 0.0) -> None:
        """Move the worker's queued events into `_pending`; notice its exit; enforce cancel deadlines.

        Waits at most `block_s` for the first event, and never for a process or a pipe.
        """
        process = self._process
        if process is None:
            return
        try:
            item = process.events.get(timeout=block_s) if block_s > 0 else process.events.get_nowait()
            while True:
                if isinstance(item, _Exited):
                    self._on_exit(process, item)
                    return
                self._on_event(process, item)
                item = process.events.get_nowait()
        except queue.Empty:
            pass
        now = time.monotonic()
        if any(deadline is not None and now >= deadline for deadline in self._runs_in_flight.values()):
            self._kill()

    def _on_event(self, process: _Process, event: dict) -> None:
        if event.get("event") == "ready":
            self.ready = event
            process.worker_pid = event.get("pid")
        if event.get("event") in JOB_ENDS:
            self._runs_in_flight.pop(event.get("id"), None)
        self._pending.append(event)

    def _on_exit(self, process: _Process, exited: _Exited) -> None:
        """The worker exited. Unless asked to, every run in flight crashed with it."""
        self._process = None
        self._last_returncode, self._last_stderr = exited.returncode, exited.stderr_tail
        if self._stopping:
            ended = [{"id": run_id, "event": "cancelled", "forced": True} for run_id in self._runs_in_flight]
        else:
            crash = {"event": "crashed", "returncode": exited.returncode, "stderr_tail": exited.stderr_tail}
            ended = [{"id": run_id, **crash} for run_id in self._runs_in_flight or [None]]
        self._runs_in_flight.clear()
        self._pending += ended

    def _kill(self) -> None:
        """Kill the worker now: its runs in flight end as `cancelled` (forced), its unread events are lost."""
        process = self._process
        if process is None:
            return
        process.kill()
        self._process = None
        self._last_returncode, self._last_stderr = None, process.stderr_tail()
        self._pending += [
            {"id": run_id, "event": "cancelled", "forced": True} for run_id in self._runs_in_flight
        ]
        self._runs_in_flight.clear()
