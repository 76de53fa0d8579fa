"""The `manifest.json` of a skill pack: what the skill is, needs, produces, and was made from.

Read without torch (the Slicer GUI lists skills from manifests alone). A pack folder holds exactly
`manifest.json` and `weights.safetensors` (the skill's own tensors, never a backbone tensor).

| key | meaning |
|---|---|
| `format` | "mafm3-skill-v1" |
| `id`, `version` | lowercase id (letters, digits, '-'); version such as "1.0.0" |
| `task` | "segmentation", "prognosis" or "classification" |
| `modalities` | required inputs, CT first: ["CT"] or ["CT", "PET"] |
| `description`, `preset` | one line; the preset the config came from, or null |
| `config` | `SkillConfig.to_dict()`: LoRA, embedding, position copies, decoder / prognosis head, labels |
| `preprocessing` | `PreprocessingConfig` manifest section (spacing, axis order, windows, ROI) |
| `inference` | sliding window: `window_voxels`, `overlap`, `mirror_tta`, `blend`; else `input_voxels` |
| `postprocessing` | segmentation: false-positive removal (`imaging.postprocess`); absent or {} = none |
| `outputs` | segmentation: `SegmentSpec` dicts (label, name, colour, SNOMED codes); else named outputs |
| `backbone` | {"id", "sha256"} of the backbone weights file the skill was trained on |
| `weights` | {"file": "weights.safetensors", "sha256"} |
| `trainable_parameters` | parameters the skill adds (LoRA, embedding, copies, head) |
| `training`, `metrics` | provenance (data, split, epochs, seed, ...) and evaluation results, free-form |
| `demo` | true for toy packs that must never be used clinically |
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path

from mafm3 import __version__
from mafm3.errors import MAFM3Error
from mafm3.results import SegmentSpec
from mafm3.tasks import TASKS

FORMAT = "mafm3-skill-v1"
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.safetensors"
MODALITIES = ("CT", "PET")
ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
VERSION_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z+-]*(\.[0-9A-Za-z+-]+)*")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class PostprocessingConfig:
    """The `postprocessing` section of a segmentation skill's manifest, applied by the engine with
    `imaging.postprocess.remove_false_positives` (which documents the two rules)."""

    min_component_ml: float = 0.0
    min_component_suv_max: float | None = None

    def __post_init__(self) -> None:
        if not self.min_component_ml >= 0:
            raise ValueError(f"`min_component_ml` must be >= 0, got {self.min_component_ml}")
        if self.min_component_suv_max is not None and not self.min_component_suv_max > 0:
            raise ValueError(f"`min_component_suv_max` must be positive, got {self.min_component_suv_max}")

    @classmethod
    def from_dict(cls, values: dict | None) -> PostprocessingConfig:
        """From a manifest section; `ValueError` naming an unknown key."""
        values = values or {}
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"unknown postprocessing key(s) {unknown}: use {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**values)

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value not in (None, 0.0)}


@dataclass
class SkillManifest:
    id: str
    version: str
    task: str
    modalities: list[str]
    description: str
    config: dict
    preprocessing: dict
    inference: dict
    outputs: list[dict]
    backbone: dict
    weights: dict
    trainable_parameters: int
    preset: str | None = None
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    postprocessing: dict = field(default_factory=dict)
    demo: bool = False
    format: str = FORMAT
    mafm3_version: str = __version__

    def __post_init__(self) -> None:
        where = f"skill manifest of {self.id!r}"
        if self.format != FORMAT:
            raise MAFM3Error(
                f"The {where} has format {self.format!r}, not {FORMAT!r}; it is not a mafm3 skill pack."
            )
        if not isinstance(self.id, str) or not ID_PATTERN.fullmatch(self.id):
            raise MAFM3Error(
                f"Skill id {self.id!r} is not valid; use lowercase letters, digits and '-' "
                "(e.g. 'hecktor-seg-ct')."
            )
        if not isinstance(self.version, str) or not VERSION_PATTERN.fullmatch(self.version):
            raise MAFM3Error(f"The {where} has version {self.version!r}; use a version such as '1.0.0'.")
        if self.task not in TASKS:
            raise MAFM3Error(f"The {where} has task {self.task!r}; use one of {', '.join(TASKS)}.")
        if not self.modalities or self.modalities[0] != "CT" or not set(self.modalities) <= set(MODALITIES):
            raise MAFM3Error(f"The {where} requires {self.modalities}; skills take ['CT'] or ['CT', 'PET'].")
        if not isinstance(self.backbone, dict) or not SHA256_PATTERN.fullmatch(
            str(self.backbone.get("sha256"))
        ):
            raise MAFM3Error(f"The {where} has no valid backbone sha256; export the pack again with mafm3.")
        if self.weights.get("file") != WEIGHTS_FILE or not SHA256_PATTERN.fullmatch(
            str(self.weights.get("sha256"))
        ):
            raise MAFM3Error(
                f"The {where} must name {WEIGHTS_FILE} and its sha256 under `weights`; export it again."
            )
        if self.task == "segmentation":
            self.segments()  # refuses malformed segment specs
        try:
            PostprocessingConfig.from_dict(self.postprocessing)
        except (TypeError, ValueError) as error:
            raise MAFM3Error(
                f"The {where} has an invalid `postprocessing` section ({error}); fix it."
            ) from error

    @property
    def folder_name(self) -> str:
        """`<id>-<version>`, the pack's folder under the skills directory."""
        return f"{self.id}-{self.version}"

    def segments(self) -> list[SegmentSpec]:
        """The output segments of a segmentation skill (label, name, colour, codes)."""
        try:
            return [SegmentSpec.from_dict(output) for output in self.outputs]
        except (KeyError, TypeError, ValueError) as error:
            raise MAFM3Error(
                f"The outputs of skill {self.id!r} are not valid segment definitions ({error}); "
                "fix the manifest."
            ) from error

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, folder: Path) -> None:
        (Path(folder) / MANIFEST_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, values: dict) -> SkillManifest:
        """Validate a parsed manifest; MAFM3Error on a missing, unknown or malformed field."""
        if not isinstance(values, dict):
            raise MAFM3Error("A skill manifest must be one JSON object; this pack is not a mafm3 skill pack.")
        known = set(cls.__dataclass_fields__)
        required = {
            name for name, f in cls.__dataclass_fields__.items() if f.default is f.default_factory is MISSING
        }
        unknown, missing = sorted(set(values) - known), sorted(required - set(values))
        if unknown or missing:
            problem = f"unknown field(s) {unknown}" if unknown else f"missing field(s) {missing}"
            raise MAFM3Error(
                f"The skill manifest of {values.get('id')!r} has {problem}; export the pack again."
            )
        return cls(**values)

    @classmethod
    def read(cls, folder: Path) -> SkillManifest:
        path = Path(folder) / MANIFEST_FILE
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError as error:
            raise MAFM3Error(
                f"{folder} is not a skill pack (no {MANIFEST_FILE}); give a pack folder or zip."
            ) from error
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise MAFM3Error(f"{path} cannot be read as JSON ({error}); the pack is damaged.") from error
        return cls.from_dict(values)
