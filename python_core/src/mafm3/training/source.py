"""Where a trained skill comes from: a registered preset, a preset file, or a pack to fine-tune
(`--init`), with the id and version the new pack gets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mafm3.errors import MAFM3Error
from mafm3.imaging.preprocess import PreprocessingConfig
from mafm3.skills.manifest import ID_PATTERN, VERSION_PATTERN, SkillManifest
from mafm3.skills.presets import Preset, get_preset
from mafm3.training.options import DEFAULT_PRESETS, DEFAULT_VERSION, TrainOptions


@dataclass
class SkillSource:
    """Where the skill comes from: a preset, or a pack to fine-tune (then `init` is its folder)."""

    preset: Preset
    config: object  # SkillConfig
    skill_id: str
    version: str
    init: Path | None = None
    init_manifest: SkillManifest | None = None

    @property
    def init_record(self) -> dict | None:
        if self.init_manifest is None:
            return None
        manifest = self.init_manifest
        return {"id": manifest.id, "version": manifest.version, "weights_sha256": manifest.weights["sha256"]}


def resolve_source(options: TrainOptions) -> SkillSource:
    """The preset (registered or from a file) or pack to fine-tune that `options` name, with the new pack's id
    and version; refuses a task, modalities, id or version that do not fit."""
    from mafm3.model.skill_model import SkillConfig
    from mafm3.skills.packs import resolve_pack, verify_pack

    modalities = tuple(m.upper() for m in options.modalities) if options.modalities else None
    if options.baseline not in (None, "unetr"):
        raise MAFM3Error(f"Unknown baseline {options.baseline!r}; the baseline is `unetr`.")
    if options.baseline and (options.task != "segmentation" or options.init):
        raise MAFM3Error("The UNETR baseline is a segmentation model trained from scratch; drop --init.")
    if options.init:
        folder = resolve_pack(options.init)
        manifest = verify_pack(folder)
        if manifest.task != options.task:
            raise MAFM3Error(
                f"{options.init} is a {manifest.task} skill; train it with `mafm3 train {manifest.task}`."
            )
        preset = Preset(
            manifest.preset or manifest.id,
            manifest.description,
            SkillConfig.from_dict(manifest.config),
            tuple(manifest.modalities),
            manifest.preprocessing,
            manifest.inference,
            manifest.outputs,
            demo=manifest.demo,
        )
        if options.skill_id not in (None, manifest.id):
            raise MAFM3Error("A fine-tuned skill keeps the id of the pack it starts from; drop --id.")
        version = options.version or next_version(manifest.version)
        source = SkillSource(preset, preset.config, manifest.id, version, folder, manifest)
    else:
        name = options.preset or DEFAULT_PRESETS.get((options.task, modalities or ("CT",)))
        if name is None:
            raise MAFM3Error(
                f"There is no default {options.task} preset for {modalities}; name one with --preset."
            )
        preset = preset_from_file(Path(name)) if name.endswith(".json") else get_preset(name)
        if preset.config.task != options.task:
            raise MAFM3Error(
                f"Preset {name} is a {preset.config.task} skill, not {options.task}; choose another."
            )
        default_id = f"{preset.name}-unetr-baseline" if options.baseline else preset.name
        source = SkillSource(
            preset, preset.config, options.skill_id or default_id, options.version or DEFAULT_VERSION
        )
    if modalities and tuple(source.preset.modalities) != modalities:
        raise MAFM3Error(
            f"The skill takes {'+'.join(source.preset.modalities)}, not {'+'.join(modalities)}; "
            "choose a preset for those modalities."
        )
    if not ID_PATTERN.fullmatch(source.skill_id) or not VERSION_PATTERN.fullmatch(source.version):
        raise MAFM3Error(
            f"Skill id {source.skill_id!r} or version {source.version!r} is not valid; use lowercase "
            "letters, digits and '-' for the id and e.g. 1.0.0 for the version."
        )
    return source


def preset_from_file(path: Path) -> Preset:
    """A preset described in a JSON file, for a skill of one's own sizes: the fields of `Preset` (name,
    description, config as `SkillConfig.to_dict()`, modalities, preprocessing, inference, outputs, demo)."""
    from mafm3.model.skill_model import SkillConfig

    try:
        values = json.loads(Path(path).read_text())
        PreprocessingConfig.from_dict(values["preprocessing"])
        return Preset(
            name=values["name"],
            description=values["description"],
            config=SkillConfig.from_dict(values["config"]),
            modalities=tuple(values["modalities"]),
            preprocessing=values["preprocessing"],
            inference=values["inference"],
            outputs=values["outputs"],
            demo=bool(values.get("demo", False)),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MAFM3Error(
            f"Cannot read the preset file {path} ({error}); give the fields of a preset (name, description, "
            "config, modalities, preprocessing, inference, outputs)."
        ) from error


def next_version(version: str) -> str:
    """The version a fine-tuned pack gets: the minor number up, the patch reset ('1.2.3' -> '1.3.0')."""
    parts = version.split(".")
    if len(parts) < 2 or not all(part.isdigit() for part in parts[:2]):
        raise MAFM3Error(f"Cannot derive a new version from {version!r}; give one with --version.")
    return ".".join([parts[0], str(int(parts[1]) + 1), *(["0"] if len(parts) > 2 else [])])
