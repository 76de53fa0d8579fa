"""`mafm3 improve` end to end, the annotator's loop on a synthetic cohort (fp32, CPU).

A deliberately under-trained PET/CT skill (10 iterations on the shipped demo backbone) segments a dozen
synthetic studies with `mafm3 run`; each study is saved with `mafm3 dataset add-case --prediction`, the
ground truth standing in for the annotator's correction (the command the Slicer panel runs). `mafm3 improve`
then fine-tunes it on those cases. Oracles: the ground truth of the held-out cases (the held-out Dice must
rise and the gate install the new version), the bytes of the backbone and every other skill (unchanged), and
a second run on corrupted corrections (labels shifted 25 mm), which the gate must refuse with nothing in the
skill store changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from mafm3.cli import main
from mafm3.config import bundled_backbones_dir, bundled_skills_dir
from mafm3.demo.writers import write_cohort
from mafm3.skills.packs import install_pack
from mafm3.skills.presets import PRESETS
from mafm3.training.datasets import load_cohort
from mafm3.training.pipeline import TrainOptions, train

pytestmark = pytest.mark.slow

N_CASES = 12
SKILL = "tiny-seg-petct"
FP32 = ["--device", "cpu", "--precision", "fp32"]
IMPROVE = [*FP32, "--iterations", "60", "--bootstrap", "200", "--quiet"]
SHIFT_VOXELS = 10  # 25 mm at the tiny studies' 2.5 mm: beyond most lesions' radius


def tree_sha256(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def tiny_petct_preset(folder: Path) -> Path:
    """The demo PET/CT skill's design at 4 mm with 16 x 32 x 32 windows: learns in tens of CPU iterations."""
    demo = PRESETS["demo-seg-petct"]
    values = {
        "name": SKILL,
        "description": "tiny PET/CT test skill",
        "config": demo.config.to_dict(),
        "modalities": ["CT", "PET"],
        "preprocessing": {**demo.preprocessing, "spacing": [4.0, 4.0, 4.0]},
        "inference": {"window_voxels": [16, 32, 32], "overlap": 0.25},
        "outputs": demo.outputs,
        "demo": True,
    }
    path = folder / "tiny-seg-petct.json"
    path.write_text(json.dumps(values))
    return path


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """MAFM3_HOME with the under-trained skill installed, and the dataset of its corrected predictions."""
    root = tmp_path_factory.mktemp("loop")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAFM3_HOME", str(root / "home"))
        write_cohort(N_CASES, 5, root / "truth", "tiny")
        base = root / "base"
        train(
            TrainOptions(
                task="segmentation",
                dataset=root / "truth",
                out=base,
                preset=str(tiny_petct_preset(root)),
                backbone=str(bundled_backbones_dir() / "mafm3-demo-backbone"),
                iterations=10,
                lr=1e-3,
                poly_lr=True,
                class_ratios=(1, 1, 1),
                val_fraction=0,
                precision="fp32",
                device="cpu",
                seed=0,
            )
        )
        install_pack(base)
        for case in load_cohort(root / "truth").cases:
            images = ["--ct", str(case.ct), "--pet", str(case.pet)]
            run = root / "runs" / case.case_id
            command = ["run", *images, "--pet-units", "suv", "--skill", SKILL, "--out", str(run), *FP32]
            assert main([*command, "--quiet"]) == 0
            saving = [
                "dataset",
                "add-case",
                "--dataset",
                str(root / "corrected"),
                *images,
                "--id",
                case.case_id,
            ]
            saving += ["--label", str(case.label), "--prediction", str(run), "--editing-seconds", "42"]
            assert main(saving) == 0
        yield root
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def improved(loop):
    """The first improve, on the true corrections, with --install; its comparison."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAFM3_HOME", str(loop / "home"))
        protected = {
            "backbone": tree_sha256(bundled_backbones_dir()),
            "shipped skills": tree_sha256(bundled_skills_dir()),
            "current version": tree_sha256(loop / "home" / "skills" / f"{SKILL}-1.0.0"),
        }
        command = ["improve", "--skill", SKILL, "--dataset", str(loop / "corrected")]
        assert main([*command, "--out", str(loop / "v1.1"), "--install", *IMPROVE]) == 0
        after = {
            "backbone": tree_sha256(bundled_backbones_dir()),
            "shipped skills": tree_sha256(bundled_skills_dir()),
            "current version": tree_sha256(loop / "home" / "skills" / f"{SKILL}-1.0.0"),
        }
    return json.loads((loop / "v1.1" / "comparison.json").read_text()), protected, after


def test_improve_raises_the_held_out_dice_and_the_gate_installs_the_new_version(loop, improved, capsys):
    comparison, _, _ = improved
    held_out = comparison["held_out_case_ids"]
    cases = {case.case_id: case for case in load_cohort(loop / "corrected").cases}

    assert comparison["scheme"] == "holdout" and len(held_out) == N_CASES // 4
    assert [row["case_id"] for row in comparison["per_case"]["new"]] == held_out
    manifest = json.loads((loop / "v1.1" / "manifest.json").read_text())
    improve_record = manifest["training"]["improve"]
    trained_on = set(manifest["training"]["split"]["folds"][0]["train_ids"])
    assert trained_on == set(cases) - set(held_out)  # the held-out cases were never trained on
    assert improve_record["base"]["version"] == "1.0.0" and manifest["version"] == "1.1.0"
    assert {case["case_id"] for case in improve_record["cases"]} == set(cases)
    base = json.loads((loop / "home" / "skills" / f"{SKILL}-1.0.0" / "manifest.json").read_text())
    record = json.loads((loop / "corrected" / "corrections" / f"{held_out[0]}.json").read_text())
    assert record["skill"] == {"id": SKILL, "version": "1.0.0", "weights_sha256": base["weights"]["sha256"]}
    assert record["editing_seconds"] == 42.0 and record["prediction"]["folder"] == str(
        loop / "runs" / held_out[0]
    )

    # The oracle: each held-out case's ground truth, scored with numpy against the new version's own run.
    current, new = (
        comparison["metrics"][name]["classes"]["GTVp"]["dice_mean"] for name in ("current", "new")
    )
    assert new > current + 0.1, comparison["metrics"]
    case = cases[held_out[0]]
    out = loop / "rerun"
    images = ["--ct", str(case.ct), "--pet", str(case.pet), "--pet-units", "suv"]
    assert main(["run", *images, "--skill", f"{SKILL}@1.1.0", "--out", str(out), *FP32, "--quiet"]) == 0
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz"))) == 1
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label))) == 1
    dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
    assert comparison["per_case"]["new"][0]["GTVp_dice"] == pytest.approx(dice, abs=1e-9)

    assert comparison["gate"]["passed"] and comparison["installed"]
    capsys.readouterr()
    assert main(["skill", "list", "--json"]) == 0
    listed = {m["version"]: m["active"] for m in json.loads(capsys.readouterr().out) if m["id"] == SKILL}
    assert listed == {"1.0.0": False, "1.1.0": True}


def test_improving_leaves_the_backbone_and_every_other_skill_byte_identical(improved):
    _, before, after = improved
    assert after == before


def test_corrupted_corrections_are_refused_by_the_gate_and_the_skill_store_stays_byte_identical(
    loop, improved, tmp_path, monkeypatch
):
    monkeypatch.setenv("MAFM3_HOME", str(loop / "home"))
    comparison, _, _ = improved
    corrupted = tmp_path / "corrupted"
    shutil_copy = __import__("shutil").copytree
    shutil_copy(loop / "corrected", corrupted)
    for case in load_cohort(corrupted).cases:
        if case.case_id not in comparison["held_out_case_ids"]:  # the training cases' corrections go wrong
            label = sitk.ReadImage(str(case.label))
            shifted = sitk.GetImageFromArray(np.roll(sitk.GetArrayFromImage(label), SHIFT_VOXELS, axis=2))
            shifted.CopyInformation(label)
            sitk.WriteImage(shifted, str(case.label))
    store = tree_sha256(loop / "home" / "skills")

    command = ["improve", "--skill", SKILL, "--dataset", str(corrupted), "--out", str(tmp_path / "bad")]
    assert main([*command, "--install", *IMPROVE]) == 0

    refused = json.loads((tmp_path / "bad" / "comparison.json").read_text())
    assert (
        refused["versions"]["current"]["version"] == "1.1.0"
        and refused["versions"]["new"]["version"] == "1.2.0"
    )
    assert refused["held_out_case_ids"] == comparison["held_out_case_ids"]
    assert not refused["gate"]["passed"] and not refused["installed"], refused["metrics"]
    assert "1.1.0 stays" in refused["message"]
    assert tree_sha256(loop / "home" / "skills") == store
