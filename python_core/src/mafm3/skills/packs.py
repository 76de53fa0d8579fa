"""Skill packs on disk: export a trained skill, verify, install (offline), remove, and load onto a backbone.

A pack is a folder (or a zip of one) with `manifest.json` and `weights.safetensors`; see `skills.manifest`.
Installing copies it to `<MAFM3_HOME>/skills/<id>-<version>/` after checking the weights' sha256 and that the
backbone it was trained on is imported here; it never touches the backbone or another pack. Loading builds the
skill's modules on an already loaded backbone (attaching its LoRA adapter by name) and fills them from the
weights file: the backbone is not reloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from mafm3.config import backbones_dir, bundled_backbones_dir, bundled_skills_dir, skills_dir
from mafm3.errors import MAFM3Error
from mafm3.files import atomic_folder, file_sha256
from mafm3.skills.backbone import read_manifest
from mafm3.skills.manifest import MANIFEST_FILE, WEIGHTS_FILE, SkillManifest

if TYPE_CHECKING:
    import torch

    from mafm3.model.classification import ClipText
    from mafm3.model.skill_model import SkillModel
    from mafm3.model.text import TextEncoder
    from mafm3.skills.presets import Preset

PACK_FILES = (MANIFEST_FILE, WEIGHTS_FILE)
LORA_KEY_ENDINGS = (".lora_A.weight", ".lora_B.weight")
SKILL_MODULES = ("patch_embedding.", "position_bias.", "pegs.", "decoder.", "head.")  # `SkillModel` children


@dataclass
class LoadedSkill:
    """A skill ready to run on a backbone: its manifest, its model, and its pack folder (None if built in)."""

    manifest: SkillManifest
    model: SkillModel
    folder: Path | None


def export_pack(
    skill: SkillModel,
    folder: str | Path,
    *,
    preset: Preset,
    version: str,
    backbone_id: str,
    backbone_sha256: str,
    training: dict | None = None,
    metrics: dict | None = None,
    description: str | None = None,
    inference: dict | None = None,
) -> SkillManifest:
    """Write `skill` as a pack folder (which must not exist or be empty) and return its manifest.

    preset: where modalities, preprocessing, inference settings, outputs and the demo flag come from (a
    registered preset, or a `Preset` built for a new skill); the config is the skill's own. Only the skill's
    tensors are written (`SkillModel.skill_state_dict`); inference: the preset's, changed by training (e.g.
    the authors' constant window blend). Nothing is left behind on failure.
    """
    from safetensors.torch import save_file

    from mafm3.skills.presets import PRESETS

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise MAFM3Error(f"{folder} already exists and is not empty; export the skill pack to a new folder.")
    tensors = {key: value.detach().cpu().contiguous() for key, value in skill.skill_state_dict().items()}
    with atomic_folder(folder) as partial:
        save_file(tensors, partial / WEIGHTS_FILE, metadata={"format": "pt", "skill": skill.name})
        manifest = SkillManifest(
            id=skill.name,
            version=version,
            task=skill.config.task,
            modalities=list(preset.modalities),
            description=description or preset.description,
            config=skill.config.to_dict(),
            preprocessing=preset.preprocessing,
            inference=inference or preset.inference,
            outputs=list(preset.outputs),
            backbone={"id": backbone_id, "sha256": backbone_sha256},
            weights={"file": WEIGHTS_FILE, "sha256": file_sha256(partial / WEIGHTS_FILE)},
            trainable_parameters=sum(p.numel() for p in skill.trainable_parameters()),
            preset=preset.name if PRESETS.get(preset.name) is preset else None,
            training=training or {},
            metrics=metrics or {},
            demo=preset.demo,
            postprocessing=dict(preset.postprocessing),
        )
        manifest.write(partial)
    return manifest


def zip_pack(folder: str | Path, zip_path: str | Path) -> Path:
    """Zip a pack folder (its two files at the archive root) for distribution."""
    zip_path = Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in PACK_FILES:
            archive.write(Path(folder) / name, arcname=name)
    return zip_path


@contextmanager
def opened_pack(path: str | Path) -> Iterator[Path]:
    """The pack as a folder: `path` itself, or a zip's two files extracted to a temporary folder.

    A zip may hold the files at its root or inside one top folder. Absolute paths, `..`, links and any
    other member are refused before anything is extracted.
    """
    path = Path(path)
    if path.is_dir():
        yield path
        return
    if not zipfile.is_zipfile(path):
        raise MAFM3Error(
            f"{path} is neither a skill pack folder nor a zip of one; give the pack's folder or .zip."
        )
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory(prefix="mafm3-pack-") as scratch:
        members = _pack_members(archive, path.name)
        for name, info in members.items():
            with archive.open(info) as source, open(Path(scratch) / name, "wb") as target:
                shutil.copyfileobj(source, target)
        yield Path(scratch)


def _pack_members(archive: zipfile.ZipFile, zip_name: str) -> dict[str, zipfile.ZipInfo]:
    for info in archive.infolist():
        parts = PurePosixPath(info.filename).parts
        is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
        if (
            not parts  # an empty member name
            or info.filename.startswith(("/", "\\"))
            or "\\" in info.filename
            or ".." in parts
            or ":" in parts[0]
            or is_link
        ):
            raise MAFM3Error(
                f"{zip_name} contains the unsafe entry {info.filename!r}; it is not a valid skill pack."
            )
    files = [info for info in archive.infolist() if not info.is_dir()]  # (is_dir fails on an empty name)
    tops = {PurePosixPath(info.filename).parts[0] for info in files}
    prefix = f"{tops.pop()}/" if len(tops) == 1 and not any(i.filename in PACK_FILES for i in files) else ""
    members = {info.filename.removeprefix(prefix): info for info in files}
    if set(members) != set(PACK_FILES):
        raise MAFM3Error(
            f"{zip_name} must hold exactly {' and '.join(PACK_FILES)} (at its root or in one folder), "
            f"found {sorted(members)[:5]}."
        )
    return members


def verify_pack(folder: str | Path) -> SkillManifest:
    """The pack's manifest, after checking the weights file's sha256 and that it holds only skill tensors."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    manifest = SkillManifest.read(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise MAFM3Error(f"Skill pack {manifest.folder_name} has no {WEIGHTS_FILE}; copy the complete pack.")
    if file_sha256(weights) != manifest.weights["sha256"]:
        raise MAFM3Error(
            f"The weights of skill pack {manifest.folder_name} do not match the sha256 in its manifest; "
            "the pack is damaged or was modified, get an intact copy."
        )
    try:
        with safe_open(weights, framework="pt") as reader:
            keys = list(reader.keys())
    except (SafetensorError, OSError) as error:
        raise MAFM3Error(
            f"The weights of skill pack {manifest.folder_name} are not a safetensors file."
        ) from error
    foreign = [
        key
        for key in keys
        if not (key.startswith("lora.") and key.endswith(LORA_KEY_ENDINGS))
        and not key.startswith(SKILL_MODULES)
    ]
    if foreign:
        raise MAFM3Error(
            f"Skill pack {manifest.folder_name} holds tensors that are not skill parameters "
            f"({foreign[0]}, ...); a pack must never carry backbone weights."
        )
    return manifest


def imported_backbone_sha256s(root: Path | None = None) -> dict[str, str]:
    """sha256 -> id of the backbones imported under `root` (default: the backbones folder)."""
    root = backbones_dir() if root is None else root
    found = {}
    for folder in sorted(path.parent for path in root.glob("*/manifest.json")) if root.is_dir() else []:
        try:
            backbone = read_manifest(folder)
        except MAFM3Error:
            continue  # not a backbone folder: `mafm3 backbone info` reports it
        found[backbone["sha256"]] = backbone["id"]
    return found


def install_pack(
    path: str | Path, *, root: Path | None = None, backbone_sha256s: set[str] | None = None
) -> tuple[SkillManifest, Path]:
    """Copy a verified pack (folder or zip) to `<root>/<id>-<version>` (root default: the skills folder).

    backbone_sha256s: the backbones the pack may target (default: those imported under MAFM3_HOME and those
    shipped with mafm3). The copy is made under a temporary name, verified again and renamed, so a failed
    install leaves nothing behind. A pack shipped with mafm3 (same id, version and weights) is not copied:
    the folder returned is the shipped one (`is_shipped_folder` tells).
    """
    root = skills_dir() if root is None else Path(root)
    with opened_pack(path) as folder:
        manifest = verify_pack(folder)
        shipped = shipped_pack_folder(manifest)
        if shipped is not None:
            return manifest, shipped
        if backbone_sha256s is None:
            allowed = set(imported_backbone_sha256s()) | set(
                imported_backbone_sha256s(bundled_backbones_dir())
            )
        else:
            allowed = set(backbone_sha256s)
        wanted = manifest.backbone["sha256"]
        if wanted not in allowed:
            raise MAFM3Error(
                f"Skill {manifest.folder_name} was trained on backbone {manifest.backbone.get('id')!r} "
                f"(sha256 {wanted[:12]}...), which is not imported here; import that backbone first "
                "(`mafm3 backbone import`)."
            )
        target = root / manifest.folder_name
        if target.exists():
            raise MAFM3Error(
                f"Skill {manifest.id} {manifest.version} is already installed in {target}; remove it first "
                f"(`mafm3 skill remove {manifest.id} --version {manifest.version}`)."
            )
        with atomic_folder(target) as partial:
            for name in PACK_FILES:
                shutil.copyfile(folder / name, partial / name)
            verify_pack(partial)
    return manifest, target


def shipped_pack_folder(manifest: SkillManifest) -> Path | None:
    """The folder of the pack shipped with mafm3 that is this one (same id, version and weights), if any."""
    for folder in installed_pack_folders(manifest.id, manifest.version, bundled_skills_dir()):
        if SkillManifest.read(folder).weights["sha256"] == manifest.weights["sha256"]:
            return folder
    return None


def is_shipped_folder(folder: Path) -> bool:
    """Whether `folder` lies inside the packs shipped with mafm3."""
    return bundled_skills_dir() in Path(folder).parents


def resolve_pack(name_or_path: str | Path) -> Path:
    """A pack folder or zip given as a path, else a skill id's active version (`skills.store`: the one chosen
    with `mafm3 skill use`, else the newest), or `ID@VERSION`, installed or shipped with mafm3 (installed
    first). Raises `MAFM3Error` when it is none of these."""
    from mafm3.skills.store import active_version, split_reference

    path = Path(name_or_path)
    if path.exists():
        return path
    skill_id, version = split_reference(str(name_or_path))
    found = {}  # version -> folder, installed before shipped
    for root in (bundled_skills_dir(), skills_dir()):
        for folder in installed_pack_folders(skill_id, version, root=root):
            found[SkillManifest.read(folder).version] = folder
    if found:
        return found[active_version(skill_id, set(found)) if version is None else version]
    raise MAFM3Error(
        f"{name_or_path} is not a skill pack folder or .zip, nor an installed or shipped skill id; give the "
        "pack's folder or .zip, or an id (or ID@VERSION) that `mafm3 skill list` shows."
    )


def installed_pack_folders(skill_id: str, version: str | None = None, root: Path | None = None) -> list[Path]:
    """Folders of the installed packs with this id (and version), oldest folder name first."""
    root = skills_dir() if root is None else Path(root)
    found = []
    for path in sorted(root.glob(f"*/{MANIFEST_FILE}")) if root.is_dir() else []:
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if values.get("id") == skill_id and version in (None, values.get("version")):
            found.append(path.parent)
    return found


def remove_pack(skill_id: str, version: str | None = None, root: Path | None = None) -> Path:
    """Delete one installed pack; with several versions installed, `version` must say which."""
    folders = installed_pack_folders(skill_id, version, root)
    if not folders and installed_pack_folders(skill_id, version, bundled_skills_dir()):
        raise MAFM3Error(
            f"Skill {skill_id} is shipped with mafm3, not installed, so it cannot be removed; "
            "it stays available."
        )
    if not folders:
        which = f"{skill_id} {version}" if version else skill_id
        raise MAFM3Error(f"Skill {which} is not installed; `mafm3 skill list` shows the installed skills.")
    if len(folders) > 1:
        versions = ", ".join(SkillManifest.read(folder).version for folder in folders)
        raise MAFM3Error(f"Skill {skill_id} is installed in versions {versions}; choose one with --version.")
    from mafm3.skills.store import forget_version

    removed_version = SkillManifest.read(folders[0]).version
    doomed = folders[0].with_name(f".{folders[0].name}.removing-{os.getpid()}")
    folders[0].rename(doomed)  # atomic: the pack disappears at once, then its files are deleted
    shutil.rmtree(doomed)
    forget_version(skill_id, removed_version)  # a version installed again later is not chosen by itself
    return folders[0]


def load_skill(
    pack: str | Path | SkillManifest,
    backbone: torch.nn.Module,
    backbone_sha256: str,
    *,
    text_encoder: TextEncoder | None = None,
    clip_text: ClipText | None = None,
) -> LoadedSkill:
    """Build a pack's skill on a loaded backbone and fill it with the pack's weights; eval mode.

    pack: a pack folder (or zip), or the manifest of a built-in skill without weights
    (`registry.zero_shot_manifest`).
    text_encoder: CT-CLIP's text tower (`skills.text_side.load_text_encoder`), for report-based prognosis;
    clip_text: the whole text side (`load_clip_text`), for zero-shot classification.
    backbone_sha256: the sha256 of the backbone's weights file; a pack trained on another backbone is refused.
    The skill's LoRA adapter is attached to `backbone` under the skill id (one version per id at a time).
    """
    from safetensors.torch import load_file

    from mafm3.model.skill_model import SkillConfig, build_skill_model

    if isinstance(pack, SkillManifest):
        manifest, folder = pack, None
        if manifest.trainable_parameters:
            raise MAFM3Error(f"Skill {manifest.id} has trained weights; load it from its pack folder.")
        tensors: dict = {}
    else:
        with opened_pack(pack) as opened:
            manifest = verify_pack(opened)
            folder = Path(pack) if Path(pack).is_dir() else None
            tensors = load_file(opened / WEIGHTS_FILE)
    if manifest.backbone["sha256"] != backbone_sha256:
        raise MAFM3Error(
            f"Skill {manifest.folder_name} was trained on backbone {manifest.backbone.get('id')!r} "
            f"(sha256 {manifest.backbone['sha256'][:12]}...), not on the loaded one "
            f"({backbone_sha256[:12]}...); load the backbone it was trained on."
        )
    try:
        config = SkillConfig.from_dict(manifest.config)
    except (TypeError, ValueError) as error:
        raise MAFM3Error(
            f"The configuration in the manifest of skill {manifest.folder_name} is invalid ({error}); "
            "export the pack again."
        ) from error
    if config.task == "classification" and clip_text is None:
        raise MAFM3Error(
            f"Skill {manifest.id} needs CT-CLIP's text side (BERT, tokenizer, text projection), which the "
            "loaded backbone lacks; import CT-CLIP_v2.pt with `mafm3 backbone import --tokenizer FOLDER`."
        )
    model = build_skill_model(
        config,
        backbone,
        manifest.id,
        text_encoder=text_encoder,
        clip_text=clip_text,
    )
    try:
        device = next(backbone.parameters()).device
        model.load_skill_state_dict({key: value.to(device) for key, value in tensors.items()})
    except (RuntimeError, ValueError) as error:
        model.release()
        raise MAFM3Error(
            f"The weights of skill {manifest.folder_name} do not fit its manifest's configuration ({error}); "
            "the pack is inconsistent, export it again."
        ) from error
    return LoadedSkill(manifest=manifest, model=model.eval(), folder=folder)
