"""Skill pack manifests for the tests: what the registry, the panel and the fake engine read (no weights)."""

from __future__ import annotations

from pathlib import Path

from mafm3.results import HEAD_NECK_TUMOUR_SEGMENTS
from mafm3.skills.manifest import SkillManifest

# A manifest names its backbone and weights file by sha256; nothing here reads them.
FAKE_SHA256 = "ab" * 32


def write_pack(
    skills_root: Path,
    skill_id: str,
    task: str = "segmentation",
    modalities: tuple[str, ...] = ("CT",),
    *,
    version: str = "1.0.0",
    demo: bool = False,
) -> Path:
    """Write `<skills_root>/<id>-<version>/manifest.json` for a skill; returns the pack folder."""
    manifest = SkillManifest(
        id=skill_id,
        version=version,
        task=task,
        modalities=list(modalities),
        description=f"test {task} skill on {'+'.join(modalities)}",
        config={"task": task},
        preprocessing={},
        inference={},
        outputs=[spec.to_dict() for spec in HEAD_NECK_TUMOUR_SEGMENTS] if task == "segmentation" else [],
        backbone={"id": "test-backbone", "sha256": FAKE_SHA256},
        weights={"file": "weights.safetensors", "sha256": FAKE_SHA256},
        trainable_parameters=1,
        demo=demo,
    )
    folder = Path(skills_root) / manifest.folder_name
    folder.mkdir(parents=True)
    manifest.write(folder)
    return folder
