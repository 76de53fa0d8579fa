"""pytest harness for the Slicer extension: real MRML scenes from the `slicer-core` wheel, no Slicer app.

- `MAFM3SlicerLib` imports as it is: it is Qt-free, so it needs no stand-ins at all.
- `MAFM3Slicer.py` imports under the stand-ins of `slicer_standins.py` (fixture `mafm3_slicer`).
- A test that touches MRML gets a fresh scene, set up like Slicer's application scene (fixture `mrml_scene`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTING_DIR = Path(__file__).resolve().parent
REPOSITORY_DIR = TESTING_DIR.parent
MODULE_DIR = REPOSITORY_DIR / "MAFM3Slicer"
FAKE_ENGINE_DIR = REPOSITORY_DIR / "python_core" / "tests"  # `fake_engine`, shared with the core's tests

# Slicer puts a scripted module's folder on sys.path (so `import MAFM3SlicerLib` works); the Testing folder
# holds the harness modules and is added too, whatever pytest import mode is in use, and so is the folder of
# the fake engine.
for folder in (FAKE_ENGINE_DIR, MODULE_DIR, TESTING_DIR):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import slicer_standins  # noqa: E402  (importable only after the path set-up above)


@pytest.fixture(scope="session")
def mafm3_slicer():
    """`MAFM3Slicer.py`, imported under the stand-ins; both are removed again at the end of the session."""
    with slicer_standins.installed():
        import MAFM3Slicer

        yield MAFM3Slicer
        del sys.modules["MAFM3Slicer"]


@pytest.fixture
def mrml_scene():
    """A fresh `vtkMRMLScene`, also set as `slicer.mrmlScene`, with the module logics Slicer would attach."""
    with slicer_standins.application_scene() as scene:
        yield scene


@pytest.fixture
def skills_home(tmp_path, monkeypatch) -> Path:
    """A MAFM3_HOME of this test's own (packs go in `<home>/skills`, no shipped packs), and the fake engine of
    `python_core/tests/fake_engine.py` for every worker the test starts (through the environment the worker
    inherits)."""
    import mafm3.config

    home = tmp_path / "mafm3_home"
    (home / "skills").mkdir(parents=True)
    monkeypatch.setenv("MAFM3_HOME", str(home))
    # The demo packs shipped inside mafm3 would show up beside the test's own; this process does not see them.
    monkeypatch.setattr(mafm3.config, "bundled_skills_dir", lambda: home / "shipped-skills")
    monkeypatch.setenv("MAFM3_WORKER_ENGINE", "fake_engine:FakeEngine")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(FAKE_ENGINE_DIR), os.environ.get("PYTHONPATH")]))
    )
    return home
