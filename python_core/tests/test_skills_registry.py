"""Skill choice (`mafm3.skills.registry`) and manifest validation (`mafm3.skills.manifest`); no torch needed.

Oracle: the rule of method-spec §2.7 — the PET/CT skill when PET is given, else the CT skill — and one
sentence naming what would fit when nothing does.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mafm3.errors import MAFM3Error
from mafm3.results import GTVN, GTVP
from mafm3.skills.manifest import SkillManifest
from mafm3.skills.registry import AvailableSkill, available_skills, choose_skill

BACKBONE = {"id": "ct-clip-v2", "sha256": "a" * 64, "has_text": True, "has_latent": True}


def manifest(skill_id: str, task: str, modalities=("CT",), version="1.0.0", demo=False, sha="a" * 64) -> dict:
    return {
        "id": skill_id,
        "version": version,
        "task": task,
        "modalities": list(modalities),
        "description": "test",
        "config": {},
        "preprocessing": {},
        "inference": {},
        "outputs": [GTVP.to_dict(), GTVN.to_dict()] if task == "segmentation" else [],
        "backbone": {"id": "ct-clip-v2", "sha256": sha},
        "weights": {"file": "weights.safetensors", "sha256": "b" * 64},
        "trainable_parameters": 10,
        "demo": demo,
    }


def skill(*args, **kwargs) -> AvailableSkill:
    return AvailableSkill(SkillManifest.from_dict(manifest(*args, **kwargs)), None)


SKILLS = [
    skill("seg-ct", "segmentation"),
    skill("seg-petct", "segmentation", ("CT", "PET")),
    skill("prognosis", "prognosis"),
]


def test_pet_ct_skill_is_chosen_when_pet_is_given_else_the_ct_skill():
    assert choose_skill("segmentation", {"CT", "PET"}, SKILLS).manifest.id == "seg-petct"
    assert choose_skill("segmentation", {"ct"}, SKILLS).manifest.id == "seg-ct"
    assert choose_skill("prognosis", {"CT", "PET"}, SKILLS).manifest.id == "prognosis"


def test_an_explicit_skill_is_used_when_its_inputs_are_there():
    assert choose_skill("segmentation", {"CT", "PET"}, SKILLS, skill_id="seg-ct").manifest.id == "seg-ct"


def test_a_named_pet_skill_without_pet_is_refused_naming_the_ct_skill():
    with pytest.raises(
        MAFM3Error, match="'seg-petct' needs a PET volume and none was given; .* run the seg-ct skill"
    ):
        choose_skill("segmentation", {"CT"}, SKILLS, skill_id="seg-petct")


def test_nothing_that_fits_is_refused_with_a_sentence():
    with pytest.raises(MAFM3Error, match="No classification skill is installed"):
        choose_skill("classification", {"CT"}, SKILLS)
    with pytest.raises(MAFM3Error, match="Skill 'seg-mri' is not installed"):
        choose_skill("segmentation", {"CT"}, SKILLS, skill_id="seg-mri")
    with pytest.raises(MAFM3Error, match="'prognosis' does a prognosis task, not segmentation"):
        choose_skill("segmentation", {"CT"}, SKILLS, skill_id="prognosis")
    only_pet = [skill("seg-petct", "segmentation", ("CT", "PET"))]
    with pytest.raises(MAFM3Error, match="needs a PET volume and none was given; add the PET volume\\.$"):
        choose_skill("segmentation", {"CT"}, only_pet)


def test_real_skills_beat_demo_ones_and_newer_versions_beat_older():
    skills = [
        skill("seg-ct", "segmentation", version="1.9.0"),
        skill("seg-ct", "segmentation", version="1.10.0"),
        skill("demo-seg-ct", "segmentation", version="9.0.0", demo=True),
    ]
    chosen = choose_skill("segmentation", {"CT"}, skills).manifest
    assert (chosen.id, chosen.version) == ("seg-ct", "1.10.0")


def test_available_skills_are_those_of_the_backbone_plus_zero_shot(tmp_path):
    for skill_id, sha in (("mine", "a" * 64), ("foreign", "c" * 64)):
        folder = tmp_path / f"{skill_id}-1.0.0"
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps(manifest(skill_id, "segmentation", sha=sha)))
    (tmp_path / "broken-1.0.0").mkdir()
    (tmp_path / "broken-1.0.0" / "manifest.json").write_text("{")
    found = available_skills(BACKBONE, root=tmp_path)
    assert [(s.manifest.id, s.folder is None) for s in found] == [
        ("mine", False),
        ("ctclip-zeroshot", True),
        ("ctclip-zeroshot-authors", True),
    ]
    assert found[1].manifest.trainable_parameters == 0 and found[1].manifest.task == "classification"
    crops = [s.manifest.preprocessing["roi"]["method"] for s in found[1:]]
    assert crops == ["auto", "centre"]  # ours centred on the body, CT-CLIP's on the volume
    # ours unless the paper's is named
    assert choose_skill("classification", {"CT"}, found[::-1]).manifest.id == "ctclip-zeroshot"
    named = choose_skill("classification", {"CT"}, found, "ctclip-zeroshot-authors")
    assert named.manifest.preset == "ctclip-zeroshot-authors"
    without_text = {**BACKBONE, "has_text": False}
    assert [s.manifest.id for s in available_skills(without_text, root=tmp_path)] == ["mine"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "Seg CT"}, "Skill id 'Seg CT' is not valid"),
        ({"task": "detection"}, "has task 'detection'"),
        ({"modalities": ["PET"]}, "skills take \\['CT'\\] or \\['CT', 'PET'\\]"),
        ({"backbone": {"id": "x"}}, "no valid backbone sha256"),
        ({"outputs": [{"name": "GTVp"}]}, "not valid segment definitions"),
        ({"colour": "red"}, "unknown field\\(s\\) \\['colour'\\]"),
    ],
)
def test_malformed_manifests_are_refused_with_one_sentence(change, message):
    values = {**manifest("seg-ct", "segmentation"), **change}
    with pytest.raises(MAFM3Error, match=message):
        SkillManifest.from_dict(values)


def test_registry_and_manifests_do_not_import_torch():
    code = "import sys, mafm3.skills.registry, mafm3.skills.manifest; print('torch' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )
