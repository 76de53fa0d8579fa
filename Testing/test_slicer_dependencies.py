"""MAFM3SlicerLib.dependencies: what is missing from Slicer's Python, and the commands that install it."""

import base64
import hashlib
import shutil
import sys
from importlib import metadata
from pathlib import Path

import pytest

import mafm3
from MAFM3SlicerLib.dependencies import (
    BUNDLED_CORE_FOLDER,
    at_least,
    canonical_name,
    dependency_status,
    find_bundled_core,
    install_steps,
    installed_core_matches,
    installed_distributions,
    minimum_version,
    pinned_constraints,
    read_core_source,
    release_tuple,
    requirements_to_install,
    restart_needed,
    unmet_requirements,
)
from MAFM3SlicerLib.install import BackgroundInstall, InstallStep

REPOSITORY_DIR = Path(__file__).resolve().parent.parent
MODULE_DIR = REPOSITORY_DIR / "MAFM3Slicer"


def ready_here() -> dict:
    """This venv's distributions: everything the core needs is installed."""
    return installed_distributions()


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
    nothing = dependency_status(MODULE_DIR, installed={})
    assert not nothing.ready and nothing.torch_requirement == ">=2.2"
    lines = nothing.missing()
    assert lines[0] == "PyTorch >=2.2, with light-the-torch as in the PyTorch extension"
    assert lines[1].startswith(f"{len(nothing.unmet)} Python packages the core needs: monai>=")
    assert lines[2] == f"the mafm3 core {core.version}"
    old = dependency_status(MODULE_DIR, installed={**ready_here(), "torch": "2.1.0", "mafm3": "0.0.1"})
    assert old.missing()[0] == "PyTorch >=2.2 (found 2.1.0), with light-the-torch as in the PyTorch extension"
    assert old.missing()[1] == f"the mafm3 core {core.version} (found 0.0.1, older)"
    assert dependency_status(MODULE_DIR, installed=ready_here()).missing() == []


def test_a_missing_or_too_old_requirement_keeps_the_status_not_ready():
    """A half-finished install (the core there, one of its requirements not) is offered again."""
    here = ready_here()
    without_monai = {name: version for name, version in here.items() if name != "monai"}
    status = dependency_status(MODULE_DIR, installed=without_monai)
    assert not status.ready and [canonical_name(r.split(">")[0]) for r in status.unmet] == ["monai"]
    too_old = dependency_status(MODULE_DIR, installed={**here, "peft": "0.1.0"})
    assert not too_old.ready and too_old.unmet == ("peft>=0.13.2",)


def test_requirements_are_checked_with_their_specifiers_and_markers():
    requirements = [
        "monai>=1.4,<2",
        "numpy>=1.24",
        "ray[data]>=2.40; extra == 'cohort'",
        "pywin32; os_name == 'nt'",
    ]
    installed = {"monai": "1.6.1", "numpy": "1.23.5"}
    assert unmet_requirements(requirements, installed) == ["numpy>=1.24"]
    assert unmet_requirements(requirements, {**installed, "monai": "2.0"}) == ["monai>=1.4,<2", "numpy>=1.24"]


def test_a_torch_this_process_imported_is_never_replaced():
    status = dependency_status(
        MODULE_DIR, installed={**ready_here(), "torch": "2.1.0"}, loaded_modules={"torch": object()}
    )
    assert status.refusal() == (
        "PyTorch 2.1.0 is already loaded in Slicer and cannot be replaced while it runs; restart Slicer, "
        "then press Apply again to install PyTorch >=2.2."
    )
    assert dependency_status(MODULE_DIR, installed={**ready_here(), "torch": "2.1.0"}).refusal() is None


def test_this_venv_is_ready():
    assert dependency_status(MODULE_DIR).ready


def _fake_installed_core(site: Path, files: dict[str, bytes]) -> metadata.Distribution:
    """A non-editable installed `mafm3` in `site`, with a RECORD as pip writes it for `files`."""
    dist_info = site / "mafm3-0.1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: mafm3\nVersion: 0.1.0\n")
    lines = []
    for path, content in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
        lines.append(f"{path},sha256={digest},{len(content)}")
    (dist_info / "RECORD").write_text("\n".join(lines) + "\n")
    return metadata.PathDistribution(dist_info)


def test_an_installed_core_with_other_content_under_the_same_version_is_not_current(tmp_path):
    source = tmp_path / "python_core"
    package = source / "src" / "mafm3"
    (package / "demo").mkdir(parents=True)
    shipped = {"mafm3/__init__.py": b"__version__ = '0.1.0'\n", "mafm3/demo/skill.json": b"{}"}
    for path, content in shipped.items():
        (source / "src" / path).write_bytes(content)

    assert installed_core_matches(source, _fake_installed_core(tmp_path / "same", shipped))
    changed = {**shipped, "mafm3/demo/skill.json": b'{"changed": true}'}
    assert not installed_core_matches(source, _fake_installed_core(tmp_path / "changed", changed))
    partial = {"mafm3/__init__.py": shipped["mafm3/__init__.py"]}  # an install cut off half-way
    assert not installed_core_matches(source, _fake_installed_core(tmp_path / "partial", partial))


def test_the_install_keeps_every_installed_package_and_installs_requirements_before_the_core(tmp_path):
    source = find_bundled_core(MODULE_DIR)
    installed = {
        "numpy": "2.0.2",
        "pydicom": "2.4.4",
        "simpleitk": "2.5.2",
        "torch": "2.1.0",
        "mafm3": "0.0.1",
    }
    status = dependency_status(MODULE_DIR, installed=installed)

    steps = install_steps("/slicer/bin/PythonSlicer", status, tmp_path, installed)

    pip = ["/slicer/bin/PythonSlicer", "-m", "pip", "install", "--disable-pip-version-check"]
    constraints = tmp_path / "slicer-constraints.txt"
    but_torch = tmp_path / "slicer-constraints-but-torch.txt"
    assert [step.command for step in steps] == [
        pip + ["--constraint", str(constraints), "light-the-torch>=0.5"],
        [
            "/slicer/bin/PythonSlicer",
            "-m",
            "light_the_torch",
            "install",
            "torch>=2.2",
            "--constraint",
            str(but_torch),
        ],
        pip + ["--constraint", str(constraints), *requirements_to_install(source.requirements)],
        pip + ["--no-deps", "--force-reinstall", str(tmp_path / "python_core")],
    ]
    assert constraints.read_text() == "numpy==2.0.2\npydicom==2.4.4\nsimpleitk==2.5.2\ntorch==2.1.0\n"
    assert but_torch.read_text() == "numpy==2.0.2\npydicom==2.4.4\nsimpleitk==2.5.2\n"
    # The core is built from a copy: nothing is written into the extension's own folder.
    assert (tmp_path / "python_core" / "pyproject.toml").read_bytes() == (
        source.folder / "pyproject.toml"
    ).read_bytes()
    assert not (tmp_path / "python_core" / "tests").exists()


def test_pinned_constraints_hold_every_installed_distribution_but_the_core():
    installed = {"numpy": "2.0.2", "mafm3": "0.0.1", "torch": "2.5.1+cu124"}
    assert pinned_constraints(installed) == "numpy==2.0.2\ntorch==2.5.1+cu124\n"
    assert pinned_constraints(installed, leave_free=("mafm3", "torch")) == "numpy==2.0.2\n"


def _python_step(label: str, code: str) -> InstallStep:
    return InstallStep(label, [sys.executable, "-c", code])


def test_a_background_install_runs_its_steps_in_order_and_keeps_their_whole_log(tmp_path):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    steps = [_python_step("one", "print('first'); print('second')"), _python_step("two", "print('third')")]

    install = BackgroundInstall(steps, work_dir=work_dir).start()
    progress = install.wait(60)

    assert progress.finished and progress.failed is None and (progress.step, progress.steps) == (2, 2)
    assert [line for line in install.log.splitlines() if not line.startswith("==")] == [
        "first",
        "second",
        "third",
    ]
    assert not work_dir.exists()  # the constraints and the core's copy go with it


def test_a_failed_step_stops_the_install_and_its_log_is_there_in_full():
    noisy_failure = "import sys\nfor i in range(300): print('line', i)\nsys.exit(2)"
    install = BackgroundInstall(
        [_python_step("fails", noisy_failure), _python_step("never", "print('not run')")]
    ).start()

    progress = install.wait(60)

    assert progress.failed == "fails (exit code 2)"
    assert "line 0" in install.log and "line 299" in install.log and "not run" not in install.log


def test_a_cancelled_install_stops_at_once():
    install = BackgroundInstall([_python_step("long", "import time; time.sleep(60)")]).start()

    install.cancel()
    progress = install.wait(10)

    assert progress.finished and progress.failed == "long (cancelled)"


def test_a_restart_is_needed_only_when_this_process_holds_an_older_core():
    assert restart_needed({"mafm3": object()}, core_was_installed=True)
    assert not restart_needed({"mafm3": object()}, core_was_installed=False)
    assert not restart_needed({}, core_was_installed=True)
