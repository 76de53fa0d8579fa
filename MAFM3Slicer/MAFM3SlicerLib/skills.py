"""The skills the panel offers: installed and shipped skill packs, filtered by the inputs at hand (Qt-free).

The list comes from the packs' manifests through the core's registry (`mafm3.skills.registry`: JSON only, no
torch), imported when first needed so that the module loads before the core is installed. Like the engine,
the panel lists the packs installed under MAFM3_HOME first and then those shipped with mafm3 (the demo
skills); an installed id and version hides a shipped one. Where the core cannot be imported in this process,
the worker's `list_skills` answer (manifest dicts) is read instead (`skills_from_manifests`).

Several versions of one skill may be installed side by side (an improved version beside the one it was
fine-tuned from). One of them is *active*: the version a run of that id uses (`mafm3.skills.store`: the one
chosen with `mafm3 skill use ID@VERSION`, else the highest). The panel lists the active version of each id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from MAFM3SlicerLib.errors import PanelError

TASKS = ("segmentation", "prognosis", "classification")  # the order the panel lists them in
MANIFEST_FILE = "manifest.json"  # `mafm3.skills.manifest.MANIFEST_FILE`


@dataclass(frozen=True)
class SkillInfo:
    """One skill as the panel shows it."""

    id: str
    version: str
    task: str
    modalities: tuple[str, ...]  # required inputs, e.g. ("CT",) or ("CT", "PET")
    description: str
    demo: bool
    folder: str | None  # the pack folder
    bundled: bool = False  # shipped inside the mafm3 package rather than installed under MAFM3_HOME
    active: bool = True  # the version of its id that runs (see the module docstring)

    @classmethod
    def from_manifest(cls, manifest: Mapping, folder=None, bundled: bool = False, active=None) -> SkillInfo:
        """`active` None: as the manifest dict says (`mafm3 skill list --json` marks it), else true."""
        return cls(
            id=str(manifest["id"]),
            version=str(manifest.get("version", "")),
            task=str(manifest.get("task", "")),
            modalities=tuple(manifest.get("modalities", ("CT",))),
            description=str(manifest.get("description", "")),
            demo=bool(manifest.get("demo", False)),
            folder=None if folder is None else str(folder),
            bundled=bundled,
            active=bool(manifest.get("active", True)) if active is None else bool(active),
        )

    @property
    def label(self) -> str:
        """List entry: id and version, and "[demo]" for packs trained on synthetic data."""
        return f"{self.id} {self.version}" + ("  [demo]" if self.demo else "")

    @property
    def details(self) -> str:
        """Tooltip: task, inputs, description, and where the pack comes from."""
        origin = "shipped with mafm3" if self.bundled else f"installed in {self.folder}"
        demo = " Demo skill: synthetic data, not for clinical use." if self.demo else ""
        return f"{self.task} on {' + '.join(self.modalities)}: {self.description} ({origin}).{demo}"

    def runs_on(self, has_pet: bool) -> bool:
        """Whether the inputs at hand (a CT, and a PET if `has_pet`) are all the skill needs."""
        return set(self.modalities) <= ({"CT", "PET"} if has_pet else {"CT"})


def version_order(version: str) -> tuple:
    """'1.10.0' after '1.9.2': the order of `mafm3.skills.registry.version_key`, which the worker uses to pick
    the version of a skill id. Repeated here because the core need not be importable in this process."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[.+-]", version)
    )


def _order(skill: SkillInfo) -> tuple:
    task = TASKS.index(skill.task) if skill.task in TASKS else len(TASKS)
    return (task, skill.id, version_order(skill.version))


def available_skills() -> list[SkillInfo]:
    """Installed packs (MAFM3_HOME), then the packs shipped with mafm3; by task, then id and version.

    Raises:
        ModuleNotFoundError: the `mafm3` core is not installed in this Python.
    """
    from mafm3.skills.registry import installed_and_shipped_skills, is_shipped

    skills = [
        SkillInfo.from_manifest(skill.manifest.to_dict(), skill.folder, is_shipped(skill), skill.active)
        for skill in installed_and_shipped_skills()
    ]
    return sorted(skills, key=_order)


def skills_from_manifests(manifests: Iterable[Mapping]) -> list[SkillInfo]:
    """Skills from manifest dicts (the worker's `skills` event); broken packs (an `error` entry) left out."""
    skills = [SkillInfo.from_manifest(m, m.get("path")) for m in manifests if "error" not in m and "id" in m]
    return sorted(skills, key=_order)


def active_skills(skills: Iterable[SkillInfo]) -> list[SkillInfo]:
    """One skill per id: its active version, the one the worker runs for that id (the highest version when
    none is marked active); in `_order`."""
    chosen: dict[str, SkillInfo] = {}
    for skill in skills:
        known = chosen.get(skill.id)
        if known is None or (skill.active, version_order(skill.version)) > (
            known.active,
            version_order(known.version),
        ):
            chosen[skill.id] = skill
    return sorted(chosen.values(), key=_order)


def runnable_skills(skills: Iterable[SkillInfo], has_pet: bool) -> list[SkillInfo]:
    """The active skills (`active_skills`) whose inputs are all present (CT-only skills, and PET/CT skills
    when a PET is selected)."""
    return [skill for skill in active_skills(skills) if skill.runs_on(has_pet)]


def skill_versions(skills: Iterable[SkillInfo], skill_id: str) -> list[SkillInfo]:
    """Every installed or shipped version of one skill id, oldest first."""
    return sorted((skill for skill in skills if skill.id == skill_id), key=_order)


def parse_skill_ids(text: str) -> list[str]:
    """The skill ids stored in the parameter node (comma-separated, in selection order)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def format_skill_ids(ids: Iterable[str]) -> str:
    """The parameter node's text for a list of skill ids (each once, order kept)."""
    return ",".join(dict.fromkeys(ids))


def selected_skills(skills: Iterable[SkillInfo], ids: Iterable[str]) -> list[SkillInfo]:
    """The skills of `skills` whose id is in `ids`, in list order; ids not listed (uninstalled, or not
    runnable on the inputs at hand) are left out."""
    wanted = set(ids)
    return [skill for skill in skills if skill.id in wanted]


def check_selection(selected: list[SkillInfo]) -> None:
    """Refuse a selection the worker cannot run: nothing, or two skills for the same task (a run produces
    one segmentation, one prognosis and one classification at most).

    Raises:
        PanelError: with the sentence for the panel.
    """
    if not selected:
        raise PanelError("Select a skill to run; only skills whose inputs are selected are listed.")
    by_task: dict[str, SkillInfo] = {}
    for skill in selected:
        other = by_task.setdefault(skill.task, skill)
        if other is not skill:
            raise PanelError(
                f"Skills {other.id} and {skill.id} both do {skill.task}; select only one of them per run."
            )


def pack_path(selected_path: str | Path) -> Path:
    """The pack to install from what the file dialog returned: a .zip, or a pack folder's manifest.json
    (choosing the manifest is how a folder is picked in the same dialog)."""
    path = Path(selected_path)
    return path.parent if path.name == MANIFEST_FILE else path
