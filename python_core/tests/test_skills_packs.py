"""Skill packs (`mafm3.skills.packs`, `mafm3 skill ...`): export, verify, install, load, remove.

Oracles: outputs before export (a round trip must reproduce the skill's tensors bit for bit and its float32
outputs within float32's tolerance, after checking that training changed them); sha256 of files on disk before
and after (the backbone and other packs must not change); a tampered byte, a foreign backbone, a backbone
tensor or a `..` entry is refused, leaving nothing installed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from numeric_precision import assert_close_in_precision
from safetensors.torch import load_file, save_file
from tiny_models import export, tiny_preset, trained_skill

from mafm3.cli import main
from mafm3.config import bundled_skills_dir, skills_dir
from mafm3.errors import MAFM3Error
from mafm3.model.skill_model import build_skill_model
from mafm3.skills.backbone import load_backbone
from mafm3.skills.manifest import WEIGHTS_FILE
from mafm3.skills.packs import install_pack, load_skill, remove_pack, zip_pack

CROP = (1, 1, 16, 32, 32)  # (B, C, T, H, W): a 1 x 2 x 2 token grid with 16³ patches


def run(skill, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return skill(torch.randn(*CROP, generator=torch.Generator().manual_seed(seed)))


def folder_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def installed() -> list[str]:
    return sorted(p.name for p in skills_dir().iterdir()) if skills_dir().is_dir() else []


def test_pack_round_trip_reproduces_the_skill_outputs(backbone_manifest, tmp_path):
    backbone = load_backbone(backbone_manifest["path"])
    fresh = run(build_skill_model(tiny_preset().config, backbone, "fresh").eval())
    skill = trained_skill(backbone, "tiny-seg", seed=1)
    expected, saved_tensors = run(skill), skill.skill_state_dict()
    assert not torch.allclose(expected, fresh)  # the trained skill really differs from a fresh one
    manifest = export(
        skill, tmp_path / "pack", backbone_manifest, training={"epochs": 0}, metrics={"dice": 0.5}
    )
    assert manifest.trainable_parameters == sum(p.numel() for p in skill.trainable_parameters())
    skill.release()
    manifest, target = install_pack(tmp_path / "pack")
    assert target == skills_dir() / "tiny-seg-1.0.0" and manifest.metrics == {"dice": 0.5}
    loaded = load_skill(target, backbone, backbone_manifest["sha256"])
    assert loaded.manifest.segments()[0].name == "GTVp" and not loaded.model.training
    loaded_tensors = loaded.model.skill_state_dict()
    assert loaded_tensors.keys() == saved_tensors.keys()
    assert all(torch.equal(loaded_tensors[key], saved_tensors[key]) for key in saved_tensors)
    # float32; another module holding the same bytes elsewhere in memory may take other CPU kernels
    assert_close_in_precision(run(loaded.model), expected, None)


def test_a_pack_holds_only_skill_tensors(backbone_manifest, tmp_path):
    backbone = load_backbone(backbone_manifest["path"])
    export(trained_skill(backbone, "tiny-seg", seed=1), tmp_path / "pack", backbone_manifest)
    keys = load_file(tmp_path / "pack" / WEIGHTS_FILE).keys()
    backbone_keys = set(load_file(backbone_manifest["path"] / "weights.safetensors"))
    assert not {key.removeprefix("lora.") for key in keys} & {
        k.removeprefix("visual_transformer.") for k in backbone_keys
    }
    assert all(key.endswith(("lora_A.weight", "lora_B.weight")) for key in keys if key.startswith("lora."))
    assert any(key.startswith("position_bias.") for key in keys) and any(
        key.startswith("pegs.3.") for key in keys
    )


def test_installing_and_training_a_new_skill_changes_neither_the_backbone_nor_another_pack(
    backbone_manifest, tmp_path
):
    backbone = load_backbone(backbone_manifest["path"])
    exported = trained_skill(backbone, "first", seed=1)
    export(exported, tmp_path / "first", backbone_manifest)
    exported.release()
    first_pack = install_pack(tmp_path / "first")[1]
    backbone_bytes, first_bytes = folder_hashes(backbone_manifest["path"]), folder_hashes(first_pack)
    first = load_skill(first_pack, backbone, backbone_manifest["sha256"]).model
    first_before = run(first)
    base_weights = {key: value.clone() for key, value in backbone.state_dict().items() if "lora_" not in key}

    second = build_skill_model(tiny_preset().config, backbone, "second")
    second.activate(trainable=True)
    second.train()
    optimiser = torch.optim.AdamW(second.trainable_parameters(), lr=1e-2)
    for step in range(3):
        optimiser.zero_grad()
        second(torch.randn(*CROP, generator=torch.Generator().manual_seed(step))).square().mean().backward()
        optimiser.step()
    export(second.eval(), tmp_path / "second", backbone_manifest)
    install_pack(tmp_path / "second")

    assert installed() == ["first-1.0.0", "second-1.0.0"]
    assert folder_hashes(backbone_manifest["path"]) == backbone_bytes
    assert folder_hashes(first_pack) == first_bytes
    for key, value in backbone.state_dict().items():
        if "lora_" not in key:
            assert torch.equal(value, base_weights[key]), key
    assert torch.equal(run(first), first_before)


def test_tampered_weights_are_refused_and_nothing_is_installed(backbone_manifest, tmp_path):
    backbone = load_backbone(backbone_manifest["path"])
    export(trained_skill(backbone, "tiny-seg", seed=1), tmp_path / "pack", backbone_manifest)
    weights = tmp_path / "pack" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(MAFM3Error, match="do not match the sha256 in its manifest"):
        install_pack(tmp_path / "pack")
    assert installed() == []
    with pytest.raises(MAFM3Error, match="do not match the sha256"):
        load_skill(tmp_path / "pack", backbone, backbone_manifest["sha256"])


def test_a_pack_for_another_backbone_is_refused_at_install_and_at_load(backbone_manifest, tmp_path):
    backbone = load_backbone(backbone_manifest["path"])
    skill = trained_skill(backbone, "tiny-seg", seed=1)
    export(skill, tmp_path / "pack", backbone_manifest, sha256="ab" * 32)
    skill.release()
    with pytest.raises(MAFM3Error, match="was trained on backbone 'tiny' .* which is not imported here"):
        install_pack(tmp_path / "pack")
    assert installed() == []
    with pytest.raises(MAFM3Error, match="not on the loaded one"):
        load_skill(tmp_path / "pack", backbone, backbone_manifest["sha256"])


def test_a_pack_carrying_a_backbone_tensor_is_refused(backbone_manifest, tmp_path):
    backbone = load_backbone(backbone_manifest["path"])
    export(trained_skill(backbone, "tiny-seg", seed=1), tmp_path / "pack", backbone_manifest)
    weights = tmp_path / "pack" / WEIGHTS_FILE
    tensors = load_file(weights)
    tensors["enc_spatial_transformer.layers.0.1.to_q.weight"] = torch.zeros(32, 32)
    save_file(tensors, weights)
    manifest = json.loads((tmp_path / "pack" / "manifest.json").read_text())
    manifest["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (tmp_path / "pack" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MAFM3Error, match="must never carry backbone weights"):
        install_pack(tmp_path / "pack")
    assert installed() == []


def test_zipped_packs_install_and_unsafe_zips_are_refused(backbone_manifest, tmp_path):
    backbone = load_backbone(backbone_manifest["path"])
    export(trained_skill(backbone, "tiny-seg", seed=1), tmp_path / "pack", backbone_manifest)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.write(tmp_path / "pack" / "manifest.json", "manifest.json")
        archive.write(tmp_path / "pack" / WEIGHTS_FILE, "../" + WEIGHTS_FILE)
    with pytest.raises(MAFM3Error, match=r"unsafe entry '\.\./weights\.safetensors'"):
        install_pack(evil)
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as archive:
        for name in ("manifest.json", WEIGHTS_FILE):
            archive.write(tmp_path / "pack" / name, f"tiny-seg-1.0.0/{name}")
    assert installed() == []
    assert install_pack(nested)[1].name == "tiny-seg-1.0.0"
    remove_pack("tiny-seg")
    assert install_pack(zip_pack(tmp_path / "pack", tmp_path / "flat.zip"))[1].name == "tiny-seg-1.0.0"
    assert not (tmp_path.parent / WEIGHTS_FILE).exists()


def test_remove_needs_a_version_when_several_are_installed(backbone_manifest, tmp_path):
    backbone = load_backbone(backbone_manifest["path"])
    skill = trained_skill(backbone, "tiny-seg", seed=1)
    for version in ("1.0.0", "1.1.0"):
        export(skill, tmp_path / version, backbone_manifest, version=version)
        install_pack(tmp_path / version)
    with pytest.raises(MAFM3Error, match="installed in versions 1.0.0, 1.1.0; choose one with --version"):
        remove_pack("tiny-seg")
    remove_pack("tiny-seg", "1.0.0")
    assert installed() == ["tiny-seg-1.1.0"]
    with pytest.raises(MAFM3Error, match="Skill tiny-seg 1.0.0 is not installed"):
        remove_pack("tiny-seg", "1.0.0")
    with pytest.raises(MAFM3Error, match="already installed"):
        install_pack(tmp_path / "1.1.0")


def test_export_refuses_a_non_empty_folder(backbone_manifest, tmp_path):
    backbone = load_backbone(backbone_manifest["path"])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep")
    with pytest.raises(MAFM3Error, match="already exists and is not empty"):
        export(trained_skill(backbone, "tiny-seg", seed=1), tmp_path / "busy", backbone_manifest)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_skill_commands_install_list_describe_and_remove(backbone_manifest, tmp_path, capsys):
    backbone = load_backbone(backbone_manifest["path"])
    export(trained_skill(backbone, "tiny-seg", seed=1), tmp_path / "pack", backbone_manifest)
    assert main(["skill", "install", str(zip_pack(tmp_path / "pack", tmp_path / "pack.zip"))]) == 0
    assert "installed tiny-seg 1.0.0 (segmentation)" in capsys.readouterr().out
    assert main(["skill", "list"]) == 0
    assert "tiny-seg" in capsys.readouterr().out
    assert main(["skill", "info", "tiny-seg", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (
        info["task"] == "segmentation" and info["modalities"] == ["CT"] and info["trainable_parameters"] > 0
    )
    assert main(["skill", "install", str(tmp_path / "pack")]) == 1
    assert "already installed" in capsys.readouterr().err
    assert main(["skill", "remove", "tiny-seg"]) == 0
    assert installed() == []


def test_a_zip_with_an_empty_member_name_is_refused_in_one_sentence(home, tmp_path):
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("manifest.json", "{}")
        archive.writestr(zipfile.ZipInfo(""), b"x")
    with pytest.raises(
        MAFM3Error, match=r"^broken\.zip contains the unsafe entry ''; it is not a valid skill pack\.$"
    ):
        install_pack(broken)
    assert installed() == []


def test_shipped_packs_are_already_available_and_packs_for_the_shipped_backbone_install(
    home, tmp_path, capsys
):
    shipped = bundled_skills_dir() / "demo-seg-petct-1.0.0"
    for given in (str(zip_pack(shipped, tmp_path / "demo.zip")), "demo-seg-petct"):
        assert main(["skill", "install", given]) == 0
        assert "demo-seg-petct 1.0.0 is shipped with mafm3 and already available" in capsys.readouterr().out
    assert installed() == []
    newer = tmp_path / "newer"  # a new version trained on the shipped demo backbone
    shutil.copytree(shipped, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "version": "1.0.1"}))
    assert main(["skill", "install", str(newer)]) == 0
    assert "installed demo-seg-petct 1.0.1" in capsys.readouterr().out and installed() == [
        "demo-seg-petct-1.0.1"
    ]
    assert main(["skill", "info", "demo-seg-ct", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "demo-seg-ct"
    assert main(["skill", "remove", "demo-seg-ct"]) == 1
    assert "shipped with mafm3, not installed, so it cannot be removed" in capsys.readouterr().err
