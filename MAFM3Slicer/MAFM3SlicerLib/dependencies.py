"""What Slicer's Python needs before a skill can run, and the commands that install it (Qt-free).

Two things are needed, both in Slicer's own Python (the worker runs there):

- torch, at least the version the core asks for. It is installed through the PyTorch extension
  (`PyTorchUtils`), which picks the CUDA build that fits the NVIDIA driver; pip would pick a CPU or a
  mismatched CUDA build.
- the `mafm3` core, at least the version the extension ships, with its requirements.

The check reads package metadata only: the GUI process never imports torch, not even to look at it.

Slicer's own SimpleITK must never be replaced: a pip-installed SimpleITK breaks Slicer's image IO
(Slicer/Slicer#6711, #7661). So the core is installed without its dependencies (`--no-deps`), then its
requirements except SimpleITK and torch are installed in one pip call constrained to the SimpleITK and torch
already installed: pip may pick older versions of other packages to fit them, and fails with a clear conflict
rather than replace either.

The core ships inside the extension (CMake copies `python_core` next to the module, as `MAFM3SlicerCore/`),
so it installs with `pip install <folder>`, no index needed for the core itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from MAFM3SlicerLib.commands import pip_install_command

CORE_DISTRIBUTION = "mafm3"
SKIPPED_REQUIREMENTS = (
    "SimpleITK",
    "torch",
)  # Slicer's own SimpleITK; torch comes from the PyTorch extension
BUNDLED_CORE_FOLDER = "MAFM3SlicerCore"  # installed by MAFM3Slicer/CMakeLists.txt next to MAFM3Slicer.py

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


def pinned_constraints(
    names: Iterable[str] = SKIPPED_REQUIREMENTS, installed: Callable[[str], str | None] = installed_version
) -> str:
    """A pip constraints file that holds each installed package of `names` at its installed version."""
    lines = [f"{name}=={version}" for name in names if (version := installed(name)) is not None]
    return "".join(line + "\n" for line in lines)


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

    @property
    def torch_ok(self) -> bool:
        return at_least(self.torch_version, self.torch_minimum)

    @property
    def core_ok(self) -> bool:
        wanted = self.core_source.version if self.core_source is not None else None
        return at_least(self.core_version, wanted)

    @property
    def ready(self) -> bool:
        return self.torch_ok and self.core_ok

    @property
    def torch_requirement(self) -> str:
        """The version requirement to hand to `PyTorchUtils.installTorch` (e.g. ">=2.2"), or ""."""
        return f">={self.torch_minimum}" if self.torch_minimum else ""

    def missing(self) -> list[str]:
        """One line per thing to install, for the confirmation dialog (empty when ready)."""
        lines = []
        if not self.torch_ok:
            have = f" (found {self.torch_version})" if self.torch_version else ""
            lines.append(
                f"PyTorch {self.torch_requirement or ''}{have}, through the PyTorch extension".strip()
            )
        if not self.core_ok:
            have = f" (found {self.core_version})" if self.core_version else ""
            if self.core_source is None:
                lines.append(f"the mafm3 core{have}, which this extension does not ship")
            else:
                lines.append(
                    f"the mafm3 core {self.core_source.version}{have} and its requirements, with pip "
                    "(Slicer's SimpleITK and PyTorch are kept)"
                )
        return lines


def dependency_status(
    module_dir: str | Path, installed: Callable[[str], str | None] = installed_version
) -> DependencyStatus:
    """Check torch and the core against the core shipped with the module in `module_dir`."""
    source = find_bundled_core(module_dir)
    if source is not None:
        requirements: Iterable[str] = source.requirements
    elif installed(CORE_DISTRIBUTION) is not None:
        requirements = metadata.requires(CORE_DISTRIBUTION) or ()
    else:
        requirements = ()
    return DependencyStatus(
        torch_version=installed("torch"),
        torch_minimum=minimum_version(requirements, "torch"),
        core_version=installed(CORE_DISTRIBUTION),
        core_source=source,
    )


def core_install_commands(python, source: CoreSource, constraints_file: str | Path) -> list[list[str]]:
    """The pip commands that install the shipped core and its requirements into `python`, in order.

    `constraints_file` must hold `pinned_constraints()` (written by the caller, e.g. in a temporary folder).
    """
    requirements = requirements_to_install(source.requirements)
    return [
        pip_install_command(python, ["--no-deps", source.folder]),
        pip_install_command(python, ["--constraint", constraints_file, *requirements]),
    ]


def restart_needed(loaded_modules: Mapping[str, object], core_was_installed: bool) -> bool:
    """Whether Slicer must restart after installing: only when this process already imported an older
    `mafm3` (its skill listing). The worker is a new process and picks up whatever was installed.
    """
    return core_was_installed and CORE_DISTRIBUTION in loaded_modules
