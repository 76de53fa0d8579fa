"""The training tests' lab: a tiny backbone, an 8-case synthetic cohort and preset files sized for a CPU.
Not tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tiny_models import SMALL_BACKBONE

from mafm3.model.decoders import UnetrDecoderConfig
from mafm3.model.lora import LoraSpec
from mafm3.model.prognosis import PrognosisConfig
from mafm3.model.skill_model import PatchEmbeddingSpec, SkillConfig
from mafm3.skills.presets import PRESETS
from mafm3.training.pipeline import TrainOptions

N_CASES = 8

SEGMENTATION_WINDOW = [16, 32, 32]  # (T, H, W): 1 x 2 x 2 tokens of 16³

PROGNOSIS_INPUT = [16, 32, 32]  # 6 mm voxels over 96 x 192 x 192 mm: 4 x 4 x 4 backbone tokens

NUM_TIME_BINS = 4


def preset_values(task: str, *, dropout: float = 0.1) -> dict:
    """A preset file's fields for a tiny skill on the width-32 test backbone, 6 mm voxels."""
    if task == "segmentation":
        config = SkillConfig(
            task="segmentation",
            lora=LoraSpec(rank=2, alpha=4.0, dropout=dropout),
            patch_embedding=PatchEmbeddingSpec(channels=1),
            position_copies=True,
            decoder=UnetrDecoderConfig(hidden_size=SMALL_BACKBONE["dim"], feature_size=4),
        )
        demo, roi = PRESETS["demo-seg-ct"], [240.0, 240.0, 144.0]
        inference = {"window_voxels": SEGMENTATION_WINDOW, "overlap": 0.25}
    else:
        config = SkillConfig(
            task="prognosis",
            lora=LoraSpec(rank=2, alpha=4.0, dropout=dropout),
            prognosis=PrognosisConfig(
                clinical_encoder="tabular",
                image_dim=SMALL_BACKBONE["dim"],
                adapter_dim=16,
                fusion_hidden=16,
                fusion_out=8,
                num_time_bins=NUM_TIME_BINS,
            ),
        )
        demo, roi = PRESETS["demo-prognosis"], [192.0, 192.0, 96.0]
        inference = {"input_voxels": PROGNOSIS_INPUT}
    preprocessing = {
        **demo.preprocessing,
        "spacing": [6.0, 6.0, 6.0],
        "roi": {"method": "auto", "size_mm": roi},
    }
    return {
        "name": f"tiny-{task[:4]}",
        "description": f"tiny {task} test skill",
        "config": config.to_dict(),
        "modalities": ["CT"],
        "preprocessing": preprocessing,
        "inference": inference,
        "outputs": demo.outputs,
        "demo": True,
    }


def preset_file(folder: Path, task: str, **changes) -> Path:
    path = folder / f"tiny-{task}-{'-'.join(f'{k}{v}' for k, v in changes.items()) or 'default'}.json"
    path.write_text(json.dumps(preset_values(task, **changes)))
    return path


@dataclass
class Lab:
    """A MAFM3_HOME with the tiny backbone imported, a synthetic cohort, and the tiny presets as files."""

    root: Path
    home: Path
    cohort: Path
    backbone: dict
    presets: dict[str, Path]


def train_options(lab: Lab, task: str, out: Path, **changes) -> TrainOptions:
    values = dict(
        task=task,
        dataset=lab.cohort,
        out=out,
        preset=str(lab.presets[task]),
        iterations=4,
        crops_per_case=2,
        lr=1e-3,
        precision="fp32",
        device="cpu",
    )
    return TrainOptions(**{**values, **changes})


def read_log(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
