"""What the benchmark runs on: a synthetic PET/CT study written as NIfTI, and the demo skills.

Skills: the demo backbone and demo packs shipped with mafm3 when they are there; otherwise a demo-sized
backbone (one pre-training step) and untrained `demo-seg-petct` / `demo-prognosis` packs are built into a
temporary MAFM3_HOME. What the networks cost does not depend on what their weights learnt, only on their
shapes; what writing the outputs costs does (see UNTRAINED_NOTE).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mafm3.config import bundled_skills_dir, skills_dir
from mafm3.engine.runner import Engine
from mafm3.errors import MAFM3Error
from mafm3.imaging.io import write_image
from mafm3.skills.registry import AvailableSkill

SEGMENTATION_PRESET = "demo-seg-petct"
PROGNOSIS_PRESET = "demo-prognosis"
BENCH_VERSION = "0.0.0+bench"  # the version of packs built here, never a real release
BUILT = "built (untrained)"
UNTRAINED_NOTE = (
    "untrained skills segment noise: the postprocess and write stages (label statistics, compression, "
    "figures of many small components) cost more than with trained skills"
)


@dataclass(frozen=True)
class StudyFiles:
    """One study on disk: CT and PET (SUV) as NIfTI, the clinical record as JSON, and what it is."""

    ct: Path
    pet: Path
    clinical: Path
    record: dict  # size name, seed, CT and PET voxels, file sizes


def write_demo_study(seed: int, size: str, folder: Path) -> StudyFiles:
    """Generate the synthetic study `seed` at `size` and write its CT, PET and clinical record to `folder`
    (the NIfTI part of `demo.writers.write_study`, without the DICOM series the benchmark does not read)."""
    from mafm3.demo.study import generate_study

    study = generate_study(seed, size)
    folder.mkdir(parents=True, exist_ok=True)
    files = StudyFiles(folder / "ct.nii.gz", folder / "pet.nii.gz", folder / "clinical.json", {})
    write_image(study.ct, files.ct)
    write_image(study.pet, files.pet)
    files.clinical.write_text(json.dumps(study.patient.clinical.to_dict()))
    files.record.update(
        size=size,
        seed=seed,
        ct_voxels=list(study.ct.GetSize()),
        ct_spacing_mm=[round(s, 4) for s in study.ct.GetSpacing()],
        pet_voxels=list(study.pet.GetSize()),
        ct_file_mb=round(files.ct.stat().st_size / 1e6, 1),
        pet_file_mb=round(files.pet.stat().st_size / 1e6, 1),
    )
    return files


@dataclass(frozen=True)
class BenchSkills:
    """The two skills the benchmark runs and where they came from ("bundled" or "built (untrained)")."""

    source: str
    roots: list[Path]
    segmentation: AvailableSkill
    prognosis: AvailableSkill

    def engine(self, device: str) -> Engine:
        """A fresh engine that sees exactly these skills' packs."""
        return Engine(device, skill_roots=self.roots)

    def ids(self) -> list[str]:
        return [self.segmentation.manifest.id, self.prognosis.manifest.id]

    def record(self) -> dict:
        record = {
            "source": self.source,
            "segmentation": f"{self.segmentation.manifest.id} {self.segmentation.manifest.version}",
            "prognosis": f"{self.prognosis.manifest.id} {self.prognosis.manifest.version}",
            "backbone": self.segmentation.manifest.backbone["id"],
        }
        if self.source == BUILT:
            record["note"] = UNTRAINED_NOTE
        return record


def bundled_skills() -> BenchSkills | None:
    """The shipped demo packs, when both are there and their backbone is found; else None."""
    from mafm3.engine.backbones import find_backbone

    roots = [bundled_skills_dir()]
    found = _by_preset(Engine("cpu", skill_roots=roots).available())
    if not {SEGMENTATION_PRESET, PROGNOSIS_PRESET} <= set(found):
        return None
    try:
        for skill in found.values():
            find_backbone(skill.manifest.backbone["sha256"], skill.manifest.backbone["id"])
    except MAFM3Error:
        return None
    return BenchSkills("bundled", roots, found[SEGMENTATION_PRESET], found[PROGNOSIS_PRESET])


def build_demo_skills() -> BenchSkills:
    """A demo backbone (one pre-training step) and untrained demo packs, installed under MAFM3_HOME."""
    import tempfile

    import torch

    from mafm3.config import backbones_dir
    from mafm3.demo.backbone import DEMO_BACKBONE_ID, make_demo_backbone
    from mafm3.model.mtlr import fit_time_bins
    from mafm3.model.skill_model import build_skill_model
    from mafm3.skills.backbone import load_backbone
    from mafm3.skills.packs import export_pack, install_pack
    from mafm3.skills.presets import PRESETS

    folder = backbones_dir() / DEMO_BACKBONE_ID
    backbone_manifest = make_demo_backbone(folder, n_studies=1, steps=1)
    backbone = load_backbone(folder)
    with tempfile.TemporaryDirectory(prefix="mafm3-bench-packs-") as scratch:
        for name in (SEGMENTATION_PRESET, PROGNOSIS_PRESET):
            preset = PRESETS[name]
            skill = build_skill_model(preset.config.for_backbone(backbone.config.dim), backbone, name)
            if preset.config.task == "prognosis":  # bins so the head can read out a survival curve
                times = torch.linspace(100.0, 2000.0, 20)
                skill.head.set_time_bins(
                    fit_time_bins(times, torch.ones(20), preset.config.prognosis.num_time_bins)
                )
            export_pack(
                skill,
                Path(scratch) / name,
                preset=preset,
                version=BENCH_VERSION,
                backbone_id=backbone_manifest["id"],
                backbone_sha256=backbone_manifest["sha256"],
                training={"note": "untrained: built by `mafm3 bench` for timing only"},
            )
            install_pack(Path(scratch) / name)
    roots = [skills_dir()]
    found = _by_preset(Engine("cpu", skill_roots=roots).available())
    return BenchSkills(BUILT, roots, found[SEGMENTATION_PRESET], found[PROGNOSIS_PRESET])


def _by_preset(skills: list[AvailableSkill]) -> dict[str, AvailableSkill]:
    """Available packs keyed by the demo preset they were made from (or carry the id of)."""
    found = {}
    for skill in skills:
        name = skill.manifest.preset or skill.manifest.id
        if name in (SEGMENTATION_PRESET, PROGNOSIS_PRESET):
            found[name] = skill
    return found


@contextmanager
def mafm3_home(path: Path) -> Iterator[Path]:
    """MAFM3_HOME set to `path` inside the block (child processes inherit it), restored afterwards."""
    previous = os.environ.get("MAFM3_HOME")
    os.environ["MAFM3_HOME"] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("MAFM3_HOME", None)
        else:
            os.environ["MAFM3_HOME"] = previous
