"""Which skill runs: chosen from the task and the images at hand, or named explicitly (method-spec §2.7).

There is no learned router. For a task, the skills whose required modalities are all available are
candidates; the one that uses the most of them wins (the PET/CT skill when PET is given, else the CT skill),
then a real skill over a demo one, then ours over one of the `-authors` presets (those reproduce the paper
when named), then the active version of its id (`skills.store`: the one chosen with
`mafm3 skill use`, else the highest), then the highest version. Anything that does not fit is refused with one
sentence naming what would fit. No torch here: the Slicer GUI calls this too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from mafm3 import config
from mafm3.config import skills_dir
from mafm3.errors import MAFM3Error
from mafm3.skills.manifest import MANIFEST_FILE, SkillManifest
from mafm3.skills.store import active_version, split_reference

ZERO_SHOT_ID = "ctclip-zeroshot"
ZERO_SHOT_IDS = (ZERO_SHOT_ID, "ctclip-zeroshot-authors")  # built in: ours (body-centred crop), CT-CLIP's


@dataclass(frozen=True)
class AvailableSkill:
    """A skill that can be loaded: its manifest and pack folder (None: built in, without weights); active:
    whether it is the active version of its id (`skills.store`), the one chosen when the id is asked for."""

    manifest: SkillManifest
    folder: Path | None
    active: bool = True


def available_skills(backbone: dict | None = None, root: Path | None = None) -> list[AvailableSkill]:
    """Installed packs (unreadable ones skipped) plus the built-in zero-shot skill.

    backbone: an imported backbone's manifest; when given, only packs trained on it are listed, and the
    built-in zero-shot skills (`ZERO_SHOT_IDS`) are added if it has CT-CLIP's text side.
    """
    root = skills_dir() if root is None else Path(root)
    skills = []
    for path in sorted(root.glob(f"*/{MANIFEST_FILE}")) if root.is_dir() else []:
        try:
            manifest = SkillManifest.read(path.parent)
        except MAFM3Error:
            continue  # `mafm3 skill list` shows the broken pack and why
        if backbone is None or manifest.backbone["sha256"] == backbone["sha256"]:
            skills.append(AvailableSkill(manifest, path.parent))
    if backbone is not None and backbone.get("has_text") and backbone.get("has_latent"):
        skills += [AvailableSkill(zero_shot_manifest(backbone, name), None) for name in ZERO_SHOT_IDS]
    return skills


def installed_and_shipped_skills(roots: list[Path] | None = None) -> list[AvailableSkill]:
    """The packs installed under MAFM3_HOME, then those shipped with mafm3 (the demo skills); an installed
    id and version hides a shipped one. `roots` replaces the two folders (tests, cohort runs)."""
    roots = [config.skills_dir(), config.bundled_skills_dir()] if roots is None else roots
    found: dict[tuple[str, str], AvailableSkill] = {}
    for root in roots:
        for skill in available_skills(root=Path(root)):
            found.setdefault((skill.manifest.id, skill.manifest.version), skill)
    versions: dict[str, set[str]] = {}
    for skill_id, version in found:
        versions.setdefault(skill_id, set()).add(version)
    active = {skill_id: active_version(skill_id, of_id) for skill_id, of_id in versions.items()}
    return [
        replace(skill, active=active[skill.manifest.id] == skill.manifest.version) for skill in found.values()
    ]


def is_shipped(skill: AvailableSkill) -> bool:
    """Whether the skill's pack lies inside the mafm3 package (rather than under MAFM3_HOME)."""
    return skill.folder is not None and config.bundled_skills_dir() in skill.folder.parents


def zero_shot_manifest(backbone: dict, preset_name: str = ZERO_SHOT_ID) -> SkillManifest:
    """The manifest of CT-CLIP's zero-shot classification on `backbone` (preprocessed as the preset of one of
    `ZERO_SHOT_IDS` says): a skill without own weights."""
    from mafm3 import __version__
    from mafm3.skills.presets import get_preset

    preset = get_preset(preset_name)
    return SkillManifest(
        id=preset_name,
        version=__version__,
        task=preset.config.task,
        modalities=list(preset.modalities),
        description=preset.description,
        config=preset.config.to_dict(),
        preprocessing=preset.preprocessing,
        inference=preset.inference,
        outputs=preset.outputs,
        backbone={"id": backbone["id"], "sha256": backbone["sha256"]},
        weights={"file": "weights.safetensors", "sha256": "0" * 64},  # none: nothing is read
        trainable_parameters=0,
        preset=preset_name,
        training={"source": "CT-CLIP pre-training on CT-RATE (no MAFM3 training)"},
    )


def is_authors_recipe(manifest: SkillManifest) -> bool:
    """Whether the skill was made with one of the `-authors` presets (README "Reproducing the paper")."""
    return str(manifest.preset or "").endswith("-authors")


def choose_skill(
    task: str, modalities: Iterable[str], skills: list[AvailableSkill], skill_id: str | None = None
) -> AvailableSkill:
    """The skill to run for `task` given the available `modalities` (e.g. {"CT", "PET"}), or the one named.

    skill_id: an id (its active version) or `ID@VERSION`. Raises MAFM3Error when nothing fits, naming the
    missing modality or the skill that would fit.
    """
    available = {m.upper() for m in modalities}
    of_task = [s for s in skills if s.manifest.task == task]
    if skill_id is not None:
        skill_id, version = split_reference(skill_id)
        named = [s for s in skills if s.manifest.id == skill_id and version in (None, s.manifest.version)]
        if not named:
            which = f"{skill_id} {version}" if version else repr(skill_id)
            raise MAFM3Error(
                f"Skill {which} is not installed; `mafm3 skill list` shows the installed skills."
            )
        if named[0].manifest.task != task:
            raise MAFM3Error(
                f"Skill {skill_id!r} does a {named[0].manifest.task} task, not {task}; choose a {task} skill."
            )
        candidates = named
    else:
        if not of_task:
            raise MAFM3Error(f"No {task} skill is installed; install one with `mafm3 skill install PACK`.")
        candidates = of_task
    fitting = [s for s in candidates if set(s.manifest.modalities) <= available]
    if not fitting:
        needed = min(candidates, key=lambda s: len(s.manifest.modalities)).manifest
        missing = sorted(set(needed.modalities) - available)
        alternatives = [s.manifest.id for s in of_task if set(s.manifest.modalities) <= available]
        alternative = f", or run the {alternatives[0]} skill" if alternatives else ""
        raise MAFM3Error(
            f"Skill {needed.id!r} needs a {' and '.join(missing)} volume and none was given; "
            f"add the {' and '.join(missing)} volume{alternative}."
        )
    return max(
        fitting,
        key=lambda s: (
            len(s.manifest.modalities),
            not s.manifest.demo,
            not is_authors_recipe(s.manifest),
            s.active,
            version_key(s.manifest.version),
        ),
    )


def version_key(version: str) -> tuple:
    """'1.10.0' > '1.9.2': numeric parts compare as numbers, others as text after them."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[.+-]", version)
    )
