"""The installed skill packs under `MAFM3_HOME/skills` and which version of each skill is active.

Several versions of one skill may be installed side by side (a fine-tuned `mafm3 improve` version beside
the one it started from). The *active* version of a skill id is the one the engine runs and `resolve_pack`
gives for a bare id: the version recorded by `use_version` (`mafm3 skill use ID@VERSION`) in
`<MAFM3_HOME>/skills/active.json` ({id: version}), else the highest installed or shipped version. No torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from mafm3.config import bundled_skills_dir, skills_dir
from mafm3.errors import MAFM3Error
from mafm3.files import atomic_write_text

ACTIVE_FILE = "active.json"


def installed_manifests(root: Path | None = None) -> list[dict]:
    """Manifests of the packs installed under `root` (default: the skills folder), sorted by id and version.

    A folder whose `manifest.json` cannot be parsed is listed with an `error` entry instead of being hidden.
    """
    root = skills_dir() if root is None else root
    manifests = []
    for manifest_path in sorted(root.glob("*/manifest.json")) if root.is_dir() else []:
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            manifest = {"id": manifest_path.parent.name, "error": f"unreadable manifest: {error}"}
        manifest["path"] = str(manifest_path.parent)
        manifests.append(manifest)
    return sorted(manifests, key=lambda m: (str(m.get("id")), str(m.get("version", ""))))


def installed_and_shipped_manifests() -> list[dict]:
    """The installed packs' manifests, then those of the packs shipped with mafm3, marked `shipped`; each
    readable one marked `active` (true for the active version of its id, see the module docstring)."""
    shipped = [{**manifest, "shipped": True} for manifest in installed_manifests(bundled_skills_dir())]
    manifests = installed_manifests() + shipped
    versions: dict[str, set[str]] = {}
    for manifest in manifests:
        if "error" not in manifest:
            versions.setdefault(str(manifest["id"]), set()).add(str(manifest.get("version")))
    active = {skill_id: active_version(skill_id, found) for skill_id, found in versions.items()}
    for manifest in manifests:
        if "error" not in manifest:
            manifest["active"] = active[str(manifest["id"])] == manifest.get("version")
    return manifests


def recorded_active_versions() -> dict[str, str]:
    """The versions chosen with `use_version`, {skill id: version} (empty when none was chosen)."""
    path = skills_dir() / ACTIVE_FILE
    try:
        values = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as error:
        raise MAFM3Error(
            f"{path} cannot be read ({error}); delete it and choose versions again with `mafm3 skill use`."
        ) from error
    return {str(key): str(value) for key, value in values.items()} if isinstance(values, dict) else {}


def active_version(skill_id: str, versions: set[str] | list[str]) -> str | None:
    """The active one of a skill's available `versions`: the recorded choice if it is among them, else the
    highest (None when there is none)."""
    from mafm3.skills.registry import version_key

    if not versions:
        return None
    chosen = recorded_active_versions().get(skill_id)
    return chosen if chosen in versions else max(versions, key=version_key)


def use_version(skill_id: str, version: str) -> str | None:
    """Make `version` the active version of `skill_id` (it must be installed or shipped); returns the version
    that was active before. Raises `MAFM3Error` naming the versions there are."""
    versions = {
        str(manifest.get("version"))
        for manifest in installed_and_shipped_manifests()
        if manifest.get("id") == skill_id and "error" not in manifest
    }
    if version not in versions:
        there = ", ".join(sorted(versions)) or "none"
        raise MAFM3Error(
            f"Skill {skill_id} {version} is not installed (versions here: {there}); install it first or "
            "choose one of those."
        )
    previous = active_version(skill_id, versions)
    _record({**recorded_active_versions(), skill_id: version})
    return previous


def forget_version(skill_id: str, version: str) -> None:
    """Drop the choice of `version` (it was removed): the highest version left is active again."""
    chosen = recorded_active_versions()
    if chosen.get(skill_id) == version:
        del chosen[skill_id]
        _record(chosen)


def _record(chosen: dict[str, str]) -> None:
    skills_dir().mkdir(parents=True, exist_ok=True)
    atomic_write_text(skills_dir() / ACTIVE_FILE, json.dumps(chosen, indent=2, sort_keys=True) + "\n")


def split_reference(reference: str) -> tuple[str, str | None]:
    """`ID@VERSION` -> (id, version); a bare id -> (id, None)."""
    skill_id, _, version = str(reference).partition("@")
    if "@" in str(reference) and not version:
        raise MAFM3Error(
            f"{reference!r} names no version after '@'; write ID@VERSION, e.g. demo-seg-ct@1.1.0."
        )
    return skill_id, version or None
