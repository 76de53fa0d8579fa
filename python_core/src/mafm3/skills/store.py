"""The installed skill packs under `MAFM3_HOME/skills` (read-only view; installing lives with the packs)."""

from __future__ import annotations

import json
from pathlib import Path

from mafm3.config import bundled_skills_dir, skills_dir


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
    """The installed packs' manifests, then those of the packs shipped with mafm3, marked `shipped`."""
    shipped = [{**manifest, "shipped": True} for manifest in installed_manifests(bundled_skills_dir())]
    return installed_manifests() + shipped
