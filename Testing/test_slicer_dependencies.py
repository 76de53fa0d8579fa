"""MAFM3SlicerLib.dependencies: what is missing from Slicer's Python, and the commands that install it."""

import shutil
from pathlib import Path

import pytest

import mafm3
from MAFM3SlicerLib.dependencies import (
    BUNDLED_CORE_FOLDER,
    CoreSource,
    at_least,
    canonical_name,
    core_install_commands,
    dependency_status,
    find_bundled_core,
    minimum_version,
    pinned_constraints,
    read_core_source,
    release_tuple,
    requirements_to_install,
    restart_needed,
)

REPOSITORY_DIR = Path(__file__).resolve().parent.parent
MODULE_DIR = REPOSITORY_DIR / "MAFM3Slicer"


def installed(versions: dict):
    return lambda name: versions.get(name)


def test_versions_compare_by_their_release_numbers():
    assert release_tuple("2.13.0+cu128") == (2, 13)
    assert at_least("2.13.0+cu128", "2.2") and at_least("2.2", "2.2.0") and at_least("0.10.0", "0.9.9")
    assert not at_least("2.1.2", "2.2") and not at_least(None, "2.2") and not at_least(None, None)
    assert at_least("0.0.1", None)


def test_simpleitk_and_torch_are_never_pip_installed_and_neither_are_extras():
    requirements = [
        "torch>=2.2",
        "SimpleITK>=2.3",
        "simpleitk ; python_version>'3'",
        "monai>=1.4",
        "slicerio>=1.1",
        "ray[data]>=2.40; extra == 'cohort'",
        "scikit_survival>=0.22",
    ]
    assert requirements_to_install(requirements) == ["monai>=1.4", "slicerio>=1.1", "scikit_survival>=0.22"]
    assert canonical_name("Scikit_Survival") == canonical_name("scikit-survival") == "scikit-survival"
    assert minimum_version(requirements, "Torch") == "2.2" and minimum_version(requirements, "einops") is None


def test_the_core_of_this_checkout_is_found_beside_the_module_and_read_from_its_pyproject():
    source = find_bundled_core(MODULE_DIR)
    assert source.folder == REPOSITORY_DIR / "python_core"
    assert source.version == mafm3.__version__  # the installed core of this venv is this checkout
    assert "SimpleITK>=2.3" in source.requirements


def test_an_installed_extension_finds_the_core_that_cmake_put_next_to_the_module(tmp_path):
    shipped = tmp_path / "qt-scripted-modules" / BUNDLED_CORE_FOLDER / "python_core"
    shipped.mkdir(parents=True)
    shutil.copy(REPOSITORY_DIR / "python_core" / "pyproject.toml", shipped)
    assert find_bundled_core(tmp_path / "qt-scripted-modules").folder == shipped
    assert find_bundled_core(tmp_path / "elsewhere") is None
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "pyproject.toml").write_text('[project]\nname = "other"\nversion = "1"\n')
    with pytest.raises(ValueError, match="is not the mafm3 project"):
        read_core_source(tmp_path / "other")


def test_the_status_says_what_to_install_and_why():
    core = find_bundled_core(MODULE_DIR)
    nothing = dependency_status(MODULE_DIR, installed({}))
    assert not nothing.ready and nothing.torch_requirement == ">=2.2"
    assert nothing.missing() == [
        "PyTorch >=2.2, through the PyTorch extension",
        f"the mafm3 core {core.version} and its requirements, with pip "
        "(Slicer's SimpleITK and PyTorch are kept)",
    ]
    old = dependency_status(MODULE_DIR, installed({"torch": "2.1.0", "mafm3": "0.0.1"}))
    assert old.missing()[0] == "PyTorch >=2.2 (found 2.1.0), through the PyTorch extension"
    assert "(found 0.0.1)" in old.missing()[1]
    ready = dependency_status(MODULE_DIR, installed({"torch": "2.13.0+cpu", "mafm3": core.version}))
    assert ready.ready and ready.missing() == []


def test_this_venv_is_ready():
    assert dependency_status(MODULE_DIR).ready


def test_the_core_installs_without_its_dependencies_then_its_requirements_pinned_to_the_installed(tmp_path):
    source = CoreSource(tmp_path / "python core", "0.2.0", ("torch>=2.2", "SimpleITK>=2.3", "monai>=1.4"))
    constraints = tmp_path / "constraints.txt"

    commands = core_install_commands("/slicer/bin/PythonSlicer", source, constraints)

    pip = ["/slicer/bin/PythonSlicer", "-m", "pip", "install", "--disable-pip-version-check"]
    assert commands == [
        pip + ["--no-deps", str(tmp_path / "python core")],
        pip + ["--constraint", str(constraints), "monai>=1.4"],
    ]
    versions = installed({"SimpleITK": "2.4.1", "torch": "2.5.1+cu124"})
    assert pinned_constraints(installed=versions) == "SimpleITK==2.4.1\ntorch==2.5.1+cu124\n"
    assert pinned_constraints(installed=installed({"torch": "2.5.1"})) == "torch==2.5.1\n"


def test_a_restart_is_needed_only_when_this_process_holds_an_older_core():
    assert restart_needed({"mafm3": object()}, core_was_installed=True)
    assert not restart_needed({"mafm3": object()}, core_was_installed=False)
    assert not restart_needed({}, core_was_installed=True)
