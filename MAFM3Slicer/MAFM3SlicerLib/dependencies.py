"""What Slicer's Python needs before a skill can run, and the commands that install it (Qt-free).

Two things are needed, both in Slicer's own Python (the worker runs there):

- torch, at least the version the core asks for, installed with light-the-torch as the PyTorch extension
  does (it picks the CUDA build that fits the NVIDIA driver; pip alone would pick a CPU or a mismatched CUDA
  build). A torch that this process already imported is never replaced: Slicer must restart first.
- the `mafm3` core the extension ships, with every one of its requirements met.

The check reads package metadata only (the GUI process never imports torch, not even to look at it) and is
complete: each requirement of the core is checked against what is installed, and the installed core's files
against the shipped ones (the hashes in its RECORD), so a half-finished install, or a core whose content
changed under the same version number, is offered again instead of reported ready.

Installing never changes what Slicer ships. Slicer 5.10 bundles numpy 2.0.2, pydicom 2.4.4, SimpleITK,
scipy, pillow, requests and more; replacing any of them under Slicer's loaded modules breaks Slicer (a
pip-installed SimpleITK breaks its image IO: Slicer/Slicer#6711, #7661). So every pip call is constrained to
the version of *every* distribution already installed in Slicer's Python (`pinned_constraints`): pip picks
versions of the new packages that fit them, or fails with the conflict, and never up- or downgrades one.
The steps run in this order: torch (if needed), the core's requirements, then the core itself (built from a
copy in a temporary folder, never inside the extension's install folder, and reinstalled even when only its
content changed). An interruption anywhere leaves the status "not ready" and the panel offers the install
again.

The core ships inside the extension (CMake copies `python_core` next to the module, as `MAFM3SlicerCore/`),
so it installs from that folder; no index is needed for the core itself.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

from MAFM3SlicerLib.commands import pip_install_command, python_module_command

CORE_DISTRIBUTION = "mafm3"
CORE_PACKAGE = "mafm3"  # the import package inside the core's src/ folder
TORCH_INSTALLER = "light-the-torch>=0.5"  # what the PyTorch extension installs torch with
SKIPPED_REQUIREMENTS = (
    "SimpleITK",
    "torch",
)  # Slicer's own SimpleITK; torch comes through light-the-torch, as in the PyTorch extension
BUNDLED_CORE_FOLDER = "MAFM3SlicerCore"  # installed by MAFM3Slicer/CMakeLists.txt next to MAFM3Slicer.py
# The shipped core's package files (pyproject's package-data plus the sources): what the installed core's
# RECORD must hash the same for the core to count as current.
CORE_FILE_SUFFIXES = (".py", ".json", ".safetensors", ".html")

_NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")
_RELEASE = re.compile(r"\s*v?(\d+(?:\.\d+)*)")
_MINIMUM = re.compile(r">=\s*([0-9][0-9A-Za-z.+!-]*)")


def canonical_name(name: str) -> str:
    """A distribution name as pip compares it (PEP 503): case and runs of "-", "_", "." do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The distribution name at the start of a PEP 508 requirement ("monai>=1.4" -> "monai")."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"{requirement!r} is not a requirement.")
    return match.group(1)


def release_tuple(version: str) -> tuple[int, ...]:
    """The numeric release of a version, for comparing with a minimum: "2.13.0+cu128" -> (2, 13, 0).

    Written out because `packaging` is not guaranteed in Slicer's Python; minimums here are plain releases.
    """
    match = _RELEASE.match(version)
    if match is None:
        raise ValueError(f"{version!r} is not a version.")
    release = [int(part) for part in match.group(1).split(".")]
    while len(release) > 1 and release[-1] == 0:  # 2.2 == 2.2.0
        release.pop()
    return tuple(release)


def at_least(version: str | None, minimum: str | None) -> bool:
    """Whether an installed `version` (None: not installed) satisfies `minimum` (None: any version)."""
    if version is None:
        return False
    return minimum is None or release_tuple(version) >= release_tuple(minimum)


def minimum_version(requirements: Iterable[str], name: str) -> str | None:
    """The `>=` bound that `requirements` put on distribution `name`, if any."""
    for requirement in requirements:
        if canonical_name(requirement_name(requirement)) == canonical_name(name):
            match = _MINIMUM.search(requirement.split(";")[0])
            return match.group(1) if match else None
    return None


def requirements_to_install(
    requirements: Iterable[str], skip: Iterable[str] = SKIPPED_REQUIREMENTS
) -> list[str]:
    """The core's requirements that pip should install: without `skip` and without optional extras."""
    skipped = {canonical_name(name) for name in skip}
    kept = []
    for requirement in requirements:
        marker = requirement.partition(";")[2]
        if canonical_name(requirement_name(requirement)) in skipped or re.search(r"\bextra\s*==", marker):
            continue
        kept.append(requirement.strip())
    return kept


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, from its metadata (nothing is imported), or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def installed_distributions() -> dict[str, str]:
    """{name: version} of every distribution installed in this Python (metadata only)."""
    found = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name and canonical_name(name) not in found:
            found[canonical_name(name)] = distribution.version
    return found


def pinned_constraints(installed: Mapping[str, str], leave_free: Iterable[str] = (CORE_DISTRIBUTION,)) -> str:
    """A pip constraints file holding every installed distribution at its installed version, except those
    of `leave_free` (the core itself; torch when it is the one being installed)."""
    free = {canonical_name(name) for name in leave_free}
    lines = [
        f"{name}=={version}"
        for name, version in sorted(installed.items())
        if canonical_name(name) not in free
    ]
    return "".join(line + "\n" for line in lines)


def unmet_requirements(requirements: Iterable[str], installed: Mapping[str, str]) -> list[str]:
    """The requirements (PEP 508) that `installed` ({canonical name: version}) does not satisfy; those whose
    marker does not apply here (e.g. an extra, another platform) are left out."""
    environment = {**default_environment(), "extra": ""}
    unmet = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        version = installed.get(canonical_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            unmet.append(text)
    return unmet


def _record_hash(path: Path) -> str:
    """A file's hash as a wheel RECORD writes it: sha256, urlsafe base64 without padding."""
    digest = hashlib.sha256(path.read_bytes()).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@functools.lru_cache(maxsize=4)
def shipped_core_hashes(source_folder: Path) -> dict[str, str]:
    """{path inside site-packages: RECORD hash} of the shipped core's package files (computed once)."""
    package = source_folder / "src" / CORE_PACKAGE
    return {
        path.relative_to(package.parent).as_posix(): _record_hash(path)
        for path in sorted(package.rglob("*"))
        if path.is_file() and path.suffix in CORE_FILE_SUFFIXES and "__pycache__" not in path.parts
    }


def installed_core_matches(source_folder: Path, distribution: metadata.Distribution | None = None) -> bool:
    """Whether the installed core (`distribution`, default: this Python's) holds exactly the shipped core's
    package files, by the hashes in its RECORD.

    An editable install (a developer's checkout, `pip install -e`) has no file hashes and counts as current.
    """
    if distribution is None:
        try:
            distribution = metadata.distribution(CORE_DISTRIBUTION)
        except metadata.PackageNotFoundError:
            return False
    direct_url = distribution.read_text("direct_url.json")
    if direct_url and json.loads(direct_url).get("dir_info", {}).get("editable"):
        return True
    recorded = {
        file.as_posix(): f"{file.hash.mode}={file.hash.value}"
        for file in distribution.files or ()
        if file.hash is not None
    }
    return all(recorded.get(path) == digest for path, digest in shipped_core_hashes(source_folder).items())


@dataclass(frozen=True)
class CoreSource:
    """The `mafm3` core shipped with the extension: its folder (pip-installable), version and requirements."""

    folder: Path
    version: str
    requirements: tuple[str, ...]


def read_core_source(folder: str | Path) -> CoreSource:
    """The core source at `folder`, read from its pyproject.toml.

    Raises:
        ValueError: the folder holds no pyproject.toml of the `mafm3` distribution.
    """
    import tomllib  # Python 3.11+ (Slicer 5.10+ ships 3.12); only needed when the core is installed

    folder = Path(folder)
    pyproject = folder / "pyproject.toml"
    if not pyproject.is_file():
        raise ValueError(f"{folder} holds no pyproject.toml.")
    project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    if canonical_name(project.get("name", "")) != CORE_DISTRIBUTION:
        raise ValueError(f"{pyproject} is not the {CORE_DISTRIBUTION} project.")
    return CoreSource(folder, str(project["version"]), tuple(project.get("dependencies", ())))


def find_bundled_core(module_dir: str | Path) -> CoreSource | None:
    """The core shipped with the module: next to it once the extension is installed
    (`<module dir>/MAFM3SlicerCore/python_core`), or beside the module folder in a source checkout
    (`<repository>/python_core`). None when neither exists.
    """
    module_dir = Path(module_dir)
    for folder in (module_dir / BUNDLED_CORE_FOLDER / "python_core", module_dir.parent / "python_core"):
        if (folder / "pyproject.toml").is_file():
            return read_core_source(folder)
    return None


@dataclass(frozen=True)
class DependencyStatus:
    """What is installed in this Python, against what the shipped core needs."""

    torch_version: str | None
    torch_minimum: str | None
    core_version: str | None
    core_source: CoreSource | None  # None: the extension ships no core (then any installed core is taken)
    unmet: tuple[str, ...] = ()  # the core's requirements (but torch) that are not met
    core_current: bool = True  # the installed core's files are the shipped ones
    torch_loaded: bool = False  # this process imported torch already (so it cannot be replaced now)

    @property
    def torch_ok(self) -> bool:
        return at_least(self.torch_version, self.torch_minimum)

    @property
    def core_ok(self) -> bool:
        wanted = self.core_source.version if self.core_source is not None else None
        return at_least(self.core_version, wanted) and self.core_current

    @property
    def ready(self) -> bool:
        return self.torch_ok and self.core_ok and not self.unmet

    @property
    def torch_requirement(self) -> str:
        """The version requirement torch is installed with (e.g. ">=2.2"), or ""."""
        return f">={self.torch_minimum}" if self.torch_minimum else ""

    def missing(self) -> list[str]:
        """One line per thing to install, for the confirmation dialog (empty when ready)."""
        lines = []
        if not self.torch_ok:
            have = f" (found {self.torch_version})" if self.torch_version else ""
            lines.append(
                f"PyTorch {self.torch_requirement}{have}, with light-the-torch as in the PyTorch extension"
            )
        if self.unmet:
            lines.append(f"{len(self.unmet)} Python packages the core needs: " + ", ".join(self.unmet))
        if not self.core_ok:
            if self.core_source is None:
                have = f" (found {self.core_version})" if self.core_version else ""
                lines.append(f"the mafm3 core{have}, which this extension does not ship")
            else:
                have = (
                    f" (found {self.core_version}, {'older' if self.core_current else 'other content'})"
                    if self.core_version
                    else ""
                )
                lines.append(f"the mafm3 core {self.core_source.version}{have}")
        return lines

    def refusal(self) -> str | None:
        """Why installing cannot go on in this session, in one sentence; None when it can."""
        if not self.torch_ok and self.torch_loaded:
            return (
                f"PyTorch {self.torch_version} is already loaded in Slicer and cannot be replaced while it "
                f"runs; restart Slicer, then press Apply again to install PyTorch {self.torch_requirement}."
            )
        if not self.core_ok and self.core_source is None:
            return (
                "This extension does not ship the mafm3 core; install it with `PythonSlicer -m pip install "
                "<MAFM3Slicer repository>/python_core`."
            )
        return None


def dependency_status(
    module_dir: str | Path,
    installed: Mapping[str, str] | None = None,
    loaded_modules: Mapping[str, object] | None = None,
) -> DependencyStatus:
    """Check torch, every requirement of the core and the core itself against the core shipped with the
    module in `module_dir`. `installed` ({canonical name: version}) defaults to this Python's distributions;
    `loaded_modules` (default: none) tells whether torch is imported in this process already."""
    installed = installed_distributions() if installed is None else installed
    source = find_bundled_core(module_dir)
    core_version = installed.get(CORE_DISTRIBUTION)
    if source is not None:
        requirements: Iterable[str] = source.requirements
    elif core_version is not None:
        requirements = metadata.requires(CORE_DISTRIBUTION) or ()
    else:
        requirements = ()
    requirements = list(requirements)
    return DependencyStatus(
        torch_version=installed.get("torch"),
        torch_minimum=minimum_version(requirements, "torch"),
        core_version=core_version,
        core_source=source,
        unmet=tuple(unmet_requirements(requirements_to_install(requirements, skip=("torch",)), installed)),
        core_current=source is None or core_version is None or installed_core_matches(source.folder),
        torch_loaded="torch" in (loaded_modules or {}),
    )


@dataclass(frozen=True)
class InstallStep:
    """One command of an install, with what the panel says while it runs."""

    label: str
    command: list[str]


def install_steps(
    python, status: DependencyStatus, work_dir: str | Path, installed: Mapping[str, str]
) -> list[InstallStep]:
    """The steps that make `status` ready, in order: torch, the core's requirements, the core.

    Writes into `work_dir` (a new temporary folder the caller deletes afterwards) the constraints file that
    holds every installed distribution at its version, and a copy of the shipped core to build from (so no
    `build/` or `*.egg-info` is left in the extension's install folder).
    """
    work_dir = Path(work_dir)
    constraints = work_dir / "slicer-constraints.txt"
    constraints.write_text(pinned_constraints(installed), encoding="utf-8")
    steps = []
    if not status.torch_ok:
        torch_constraints = work_dir / "slicer-constraints-but-torch.txt"
        torch_constraints.write_text(
            pinned_constraints(installed, leave_free=(CORE_DISTRIBUTION, "torch")), encoding="utf-8"
        )
        steps.append(
            InstallStep(
                "Installing light-the-torch",
                pip_install_command(python, ["--constraint", constraints, TORCH_INSTALLER]),
            )
        )
        steps.append(
            InstallStep(
                f"Installing PyTorch {status.torch_requirement}".strip(),
                python_module_command(
                    python,
                    "light_the_torch",
                    "install",
                    f"torch{status.torch_requirement}",
                    "--constraint",
                    torch_constraints,
                ),
            )
        )
    if status.core_source is not None:
        requirements = requirements_to_install(status.core_source.requirements)
        if requirements:
            steps.append(
                InstallStep(
                    "Installing the core's requirements",
                    pip_install_command(python, ["--constraint", constraints, *requirements]),
                )
            )
        if not status.core_ok or status.unmet:
            core_copy = work_dir / "python_core"
            shutil.copytree(
                status.core_source.folder,
                core_copy,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "tests"),
            )
            steps.append(
                InstallStep(
                    f"Installing the mafm3 core {status.core_source.version}",
                    pip_install_command(python, ["--no-deps", "--force-reinstall", core_copy]),
                )
            )
    return steps


def restart_needed(loaded_modules: Mapping[str, object], core_was_installed: bool) -> bool:
    """Whether Slicer must restart after installing: only when this process already imported an older
    `mafm3` (its skill listing). The worker is a new process and picks up whatever was installed.
    """
    return core_was_installed and CORE_DISTRIBUTION in loaded_modules
