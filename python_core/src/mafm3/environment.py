"""What `mafm3 doctor` reports: the Python and torch build, usable accelerators, library versions, skills.

The question it answers first is the most common one about AI extensions: "why is my GPU not used?".
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version

from mafm3 import __version__
from mafm3.config import home_dir, skills_dir
from mafm3.skills.store import installed_and_shipped_manifests

SKILL_SUMMARY_KEYS = ("id", "version", "task", "modalities", "path", "error", "shipped")
LIBRARIES = ("monai", "SimpleITK", "peft", "numpy", "safetensors", "pydicom", "highdicom", "slicerio")


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def torch_report() -> dict:
    """Torch version, build (CPU/CUDA/ROCm), and which devices are usable, with their names and memory."""
    try:
        import torch
    except ImportError:
        return {"installed": False}
    cuda_built = torch.backends.cuda.is_built()
    report = {
        "installed": True,
        "version": torch.__version__,
        "build": "ROCm" if getattr(torch.version, "hip", None) else ("CUDA" if cuda_built else "CPU"),
        "cuda_version": torch.version.cuda,
        "cuda_available": bool(torch.cuda.is_available()),
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "cpu_threads": torch.get_num_threads(),
        "devices": [],
    }
    if report["cuda_available"]:
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            report["devices"].append(
                {
                    "index": index,
                    "name": properties.name,
                    "memory_gb": round(properties.total_memory / 1024**3, 1),
                    "compute_capability": f"{properties.major}.{properties.minor}",
                    "bf16": bool(torch.cuda.is_bf16_supported()),
                }
            )
    return report


def preferred_device(torch_info: dict) -> str:
    """The device `--device auto` picks: CUDA, then MPS, then CPU."""
    if torch_info.get("cuda_available"):
        return "cuda"
    if torch_info.get("mps_available"):
        return "mps"
    return "cpu"


def auto_precision(torch_info: dict) -> str | None:
    """What `--precision auto` runs on the device `--device auto` picks ("bf16", "fp16" or "fp32"), honouring
    MAFM3_CPU_BF16; None without torch."""
    if not torch_info.get("installed"):
        return None
    from mafm3.engine.device import autocast_dtype, resolve_device

    dtype = autocast_dtype(resolve_device("auto"), "auto")
    return {None: "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}[dtype and str(dtype)]


def gpu_hints(torch_info: dict) -> list[str]:
    """Plain-language advice when a GPU is present but torch cannot use it."""
    hints = []
    has_nvidia_tool = shutil.which("nvidia-smi") is not None
    if not torch_info.get("installed"):
        hints.append("PyTorch is not installed: run `make demo` or install torch before using mafm3.")
    elif torch_info["build"] == "CPU" and has_nvidia_tool:
        hints.append(
            "An NVIDIA driver is present but this torch is a CPU build: install a CUDA build of the same "
            "torch version (see README, 'Using your own torch')."
        )
    elif torch_info["build"] == "CUDA" and not torch_info["cuda_available"]:
        hints.append(
            "This torch is a CUDA build but no GPU is usable: check the NVIDIA driver (`nvidia-smi`) and "
            "CUDA_VISIBLE_DEVICES."
        )
    return hints


def doctor_report() -> dict:
    """Everything `mafm3 doctor` prints, as one JSON-serialisable dict."""
    torch_info = torch_report()
    packs = installed_and_shipped_manifests()
    return {
        "mafm3": __version__,
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "torch": torch_info,
        "device": preferred_device(torch_info),
        "precision": auto_precision(torch_info),
        "libraries": {name: _package_version(name) for name in LIBRARIES},
        "home": {"path": str(home_dir()), "from_env": "MAFM3_HOME" in os.environ},
        "skills_dir": str(skills_dir()),
        "skills": [{key: pack[key] for key in SKILL_SUMMARY_KEYS if key in pack} for pack in packs],
        "hints": gpu_hints(torch_info),
    }
