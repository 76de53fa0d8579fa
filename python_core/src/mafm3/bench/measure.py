"""Clocks and memory gauges for the benchmark: wall time with CUDA synchronised, peak RSS, CUDA peak.

Peak RSS is sampled by a background thread (every 10 ms) while a block runs, so each measurement reports the
peak of that block rather than of the whole process (`resource.getrusage` only knows the process's lifetime
peak). A spike shorter than the sampling interval can be missed; CUDA memory is exact
(`torch.cuda.max_memory_allocated`).
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import torch

GB = 1024**3
SAMPLING_S = 0.01


class _RssSampler(threading.Thread):
    """Polls this process's resident set size until stopped; `peak` is the largest value seen (bytes)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._process = psutil.Process()
        self._stopping = threading.Event()
        self.start_rss = self.peak = self._process.memory_info().rss

    def run(self) -> None:
        while not self._stopping.wait(SAMPLING_S):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> None:
        self._stopping.set()
        self.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def measured(device: torch.device) -> Iterator[dict]:
    """Measure the block: fills the yielded dict with seconds, peak_rss_gb, rss_start_gb and, on CUDA,
    cuda_max_allocated_gb (the block's own peak: the counter is reset on entry)."""
    record: dict = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronise(device)
    sampler = _RssSampler()
    sampler.start()
    started = time.perf_counter()
    try:
        yield record
    finally:
        synchronise(device)
        record["seconds"] = round(time.perf_counter() - started, 4)
        sampler.stop()
        record["peak_rss_gb"] = round(sampler.peak / GB, 3)
        record["rss_start_gb"] = round(sampler.start_rss / GB, 3)
        if device.type == "cuda":
            record["cuda_max_allocated_gb"] = round(torch.cuda.max_memory_allocated(device) / GB, 3)


def best_of(functions: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict:
    """Each function's fastest of `repeats` runs, with every run's seconds. The functions take turns
    (a, b, a, b, ...) so that a change in the machine's load falls on all of them alike."""
    runs: dict[str, list[dict]] = {name: [] for name in functions}
    for _ in range(max(repeats, 1)):
        for name, function in functions.items():
            with measured(device) as record:
                function()
            runs[name].append(record)
    return {
        name: {**min(found, key=lambda run: run["seconds"]), "runs_s": [run["seconds"] for run in found]}
        for name, found in runs.items()
    }


def run_child(command: list[str], env: dict[str, str]) -> dict:
    """Run a command as a child process: its wall seconds, exit code, peak RSS (its own, from wait4) and
    the end of its error output."""
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {
        "seconds": round(time.perf_counter() - started, 4),
        "exit_code": child.returncode,
        "peak_rss_gb": round(usage.ru_maxrss * scale / GB, 3),
        "stderr_tail": stderr[-2000:],
    }


def process_peak_rss_gb() -> float:
    """This process's lifetime peak RSS (GB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (GB if sys.platform == "darwin" else 1024**2), 3)


def machine_record(device: torch.device) -> dict:
    """What the figures were measured on: date, host, CPU, memory, library versions, accelerator."""
    import monai

    from mafm3 import __version__
    from mafm3.engine.device import cpu_has_native_bf16

    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_native_bf16": cpu_has_native_bf16(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "memory_gb": round(psutil.virtual_memory().total / GB, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "monai": monai.__version__,
        "mafm3": __version__,
        "device": str(device),
        "device_name": _device_name(device),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        record |= {
            "cuda": torch.version.cuda,
            "gpu_memory_gb": round(properties.total_memory / GB, 1),
            "gpu_bf16": torch.cuda.is_bf16_supported(),
        }
    return record


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
