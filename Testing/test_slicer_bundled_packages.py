"""The module's install, run into a Python that holds what 3D Slicer 5.10 bundles, keeps every one of them.

Slicer 5.10 ships these packages in its Python (pins from Slicer's v5.10.0 tag: SuperBuild/
External_python-numpy.cmake, -dicom-requirements.cmake, -scipy.cmake, -pythonqt-requirements.cmake, and
External_SimpleITK.cmake, which builds SimpleITK 2.5.2). The test builds a virtual environment with them (and
torch 2.13.0, standing in for what the PyTorch extension installs), runs the module's own install steps
(`install_steps` + `BackgroundInstall`, exactly what Apply starts), and checks that every distribution that
was there keeps its version and that `python -m mafm3 doctor` works there. A second test interrupts the
install
midway and checks that the dependency check then offers the install again instead of reporting ready.

The environment uses this machine's Python 3.11 (the only Python with a local torch wheel here), not
Slicer's 3.12; the package versions are Slicer's. pip's own cache keeps the downloaded wheels between runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

from MAFM3SlicerLib.dependencies import dependency_status, install_steps
from MAFM3SlicerLib.install import BackgroundInstall

pytestmark = pytest.mark.slow

MODULE_DIR = Path(__file__).resolve().parent.parent / "MAFM3Slicer"
SLICER_5_10_BUNDLED = {
    "numpy": "2.0.2",
    "pydicom": "2.4.4",
    "simpleitk": "2.5.2",
    "scipy": "1.13.1",
    "pillow": "11.2.1",
    "packaging": "25.0",
}
TORCH = "torch==2.13.0"  # what the PyTorch extension would have installed first
INSTALL_TIMEOUT_S = 1800


def _clean_env() -> dict:
    """This process's environment without PYTHONPATH (this checkout's core must not leak into the venv)."""
    return {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _in_venv(python: Path, code: str) -> dict:
    """Run `code` (which prints one JSON value) in the venv, with the module's Lib importable; its value."""
    prelude = f"import sys, json\nsys.path.insert(0, {str(MODULE_DIR)!r})\n"
    completed = subprocess.run(
        [str(python), "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _distributions(python: Path) -> dict[str, str]:
    return _in_venv(
        python,
        "from MAFM3SlicerLib.dependencies import installed_distributions\n"
        "print(json.dumps(installed_distributions()))",
    )


def _status(python: Path) -> dict:
    return _in_venv(
        python,
        f"""
        from MAFM3SlicerLib.dependencies import dependency_status
        status = dependency_status({str(MODULE_DIR)!r})
        print(json.dumps({{"ready": status.ready, "missing": status.missing(), "refusal": status.refusal()}}))
        """,
    )


@pytest.fixture(scope="module")
def slicer_python(tmp_path_factory) -> Path:
    """A venv holding Slicer 5.10's bundled packages (and torch), nothing of mafm3."""
    folder = tmp_path_factory.mktemp("slicer-5.10-python")
    venv.EnvBuilder(with_pip=True).create(folder)
    python = folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    pins = [f"{name}=={version}" for name, version in SLICER_5_10_BUNDLED.items()]
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", TORCH, *pins],
        check=True,
        env=_clean_env(),
        timeout=INSTALL_TIMEOUT_S,
    )
    return python


def _build_litter(core_folder: Path) -> list[str]:
    """What a build inside the core's folder would leave there (`build/`, `*.egg-info`)."""
    return sorted(str(path) for path in [*core_folder.glob("build"), *core_folder.rglob("*.egg-info")])


def _start_install(python: Path, tmp_path: Path) -> BackgroundInstall:
    """What Apply starts in the venv's Slicer: the steps for its status, in the background."""
    installed = _distributions(python)
    status = dependency_status(MODULE_DIR, installed=installed)
    work_dir = tmp_path / "install"
    work_dir.mkdir()
    return BackgroundInstall(
        install_steps(python, status, work_dir, installed), env=_clean_env(), work_dir=work_dir
    )


def test_an_install_interrupted_midway_is_offered_again(slicer_python, tmp_path):
    install = _start_install(slicer_python, tmp_path).start()
    labels = [step.label for step in install.steps]
    requirements_step = labels.index("Installing the core's requirements") + 1
    for _ in range(INSTALL_TIMEOUT_S * 10):  # until pip is at work on the requirements
        progress = install.poll()
        if progress.finished or (progress.step == requirements_step and "Collecting" in install.log):
            break
        install.wait(0.1)

    install.cancel()
    progress = install.wait(60)

    assert progress.failed == "Installing the core's requirements (cancelled)"
    status = _status(slicer_python)
    assert not status["ready"] and status["refusal"] is None
    assert any(line.startswith("the mafm3 core") for line in status["missing"])


def test_the_install_keeps_every_package_slicer_bundles_and_the_core_works_there(slicer_python, tmp_path):
    before = _distributions(slicer_python)
    assert {name: before.get(name) for name in SLICER_5_10_BUNDLED} == SLICER_5_10_BUNDLED
    shipped_core = MODULE_DIR.parent / "python_core"
    litter_before = _build_litter(shipped_core)

    install = _start_install(slicer_python, tmp_path).start()
    progress = install.wait(INSTALL_TIMEOUT_S)

    assert progress.finished and progress.failed is None, install.log
    after = _distributions(slicer_python)
    changed = {
        name: (version, after.get(name)) for name, version in before.items() if after.get(name) != version
    }
    assert changed == {}  # nothing Slicer had was up- or downgraded (or removed)
    assert "mafm3" in after and "monai" in after
    assert _build_litter(shipped_core) == litter_before  # built from a copy: nothing left beside the module
    assert _status(slicer_python) == {"ready": True, "missing": [], "refusal": None}
    doctor = subprocess.run(
        [str(slicer_python), "-m", "mafm3", "doctor"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=300,
    )
    assert doctor.returncode == 0, doctor.stderr
    assert [line.split() for line in doctor.stdout.splitlines() if line.startswith(("pydicom", "numpy"))] == [
        ["numpy", "2.0.2"],
        ["pydicom", "2.4.4"],
    ]
