"""Training skills (`mafm3.training.trainer`, `.pipeline`, `.segmentation`, `.prognosis`): loss goes down, the
pack is valid and installable with its provenance, resume reproduces an uninterrupted run, fine-tuning makes a
new version, only the skill trains, and the backbone and other packs stay byte-identical.

Oracles: file hashes before and after; the weights of an uninterrupted run (for resume); time-bin quantiles
recomputed from the endpoint CSV of the training cases; set algebra on split ids; the parameters' own
`requires_grad` flags. Everything runs on a synthetic 8-case cohort (`mafm3.demo`, tiny size), a random
CT-ViT of width 32 and skills with a few thousand parameters, on one CPU thread.

Precision: float32 training (`--precision fp32`). A resumed run is compared bit for bit with an uninterrupted
one: the same CPU kernels take the same steps on the bytes the checkpoint restored.
"""

from __future__ import annotations

import csv
import hashlib
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_lab import (
    N_CASES,
    NUM_TIME_BINS,
    SEGMENTATION_WINDOW,
    preset_file,
    preset_values,
    read_log,
    train_options,
)

from mafm3 import __version__
from mafm3.cli import main
from mafm3.config import skills_dir
from mafm3.errors import MAFM3Error
from mafm3.imaging.preprocess import PreprocessingConfig
from mafm3.model.skill_model import SkillConfig, build_skill_model
from mafm3.skills.backbone import load_backbone
from mafm3.skills.packs import export_pack, install_pack, verify_pack
from mafm3.skills.presets import PRESETS
from mafm3.training import segmentation
from mafm3.training.build import check_only_skill_trains
from mafm3.training.datasets import CaseCache, load_cohort
from mafm3.training.model_space import CachedCases
from mafm3.training.pipeline import TrainOptions, train
from mafm3.training.source import preset_from_file
from mafm3.training.splits import kfold_split
from mafm3.training.trainer import Network, Ranks, batch_indices, steps_per_epoch


def hashes(*folders: Path) -> dict[str, str]:
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_training_lowers_the_loss_and_writes_an_installable_pack_with_its_provenance(lab, tmp_path):
    backbone = load_backbone(lab.backbone["path"])
    other = build_skill_model(
        SkillConfig.from_dict(preset_values("segmentation")["config"]), backbone, "other"
    )
    export_pack(
        other,
        tmp_path / "other",
        preset=PRESETS["demo-seg-ct"],
        version="1.0.0",
        backbone_id="tiny",
        backbone_sha256=lab.backbone["sha256"],
    )
    install_pack(tmp_path / "other")
    before = hashes(lab.backbone["path"], skills_dir())

    out = tmp_path / "seg"
    result = train(train_options(lab, "segmentation", out, fold=0, folds=4, iterations=24, val_every=8))

    losses = result.fit.losses
    assert len(losses) == 24 and np.mean(losses[-4:]) < np.mean(losses[:4])
    manifest = verify_pack(out)
    training = manifest.training
    fold = training["split"]["folds"][0]
    assert training["fold"] == 0 and set(fold["test_ids"]).isdisjoint(fold["train_ids"] + fold["val_ids"])
    assert len(fold["test_ids"]) == N_CASES // 4 and fold["val_ids"]
    assert training["backbone"] == {"id": "tiny", "sha256": lab.backbone["sha256"]}
    assert training["code_version"] == __version__ and training["seed"] == 42
    assert (
        training["dataset"]["path"] == str(lab.cohort.resolve()) and training["dataset"]["n_cases"] == N_CASES
    )
    assert len(training["dataset"]["case_list_sha256"]) == 64
    assert training["recipe"] == "ours"
    cohort = load_cohort(lab.cohort)
    seen = cohort.select(fold["train_ids"] + fold["val_ids"])
    assert training["case_content_sha256"] == {case.case_id: case.content_sha256() for case in seen}
    assert training["hyperparameters"]["lr"] == 1e-3 and training["hyperparameters"]["optimizer"] == "AdamW"
    assert training["iterations"] == 24 and training["selected_iteration"] in (8, 16, 24)
    validations = [entry["validation"] for entry in read_log(result.work) if "validation" in entry]
    assert len(validations) == 3 and all(v["values"]["n_cases"] == len(fold["val_ids"]) for v in validations)
    assert manifest.metrics["validation"]["metric"] == "dice_mean_over_classes"
    assert manifest.backbone == training["backbone"] and manifest.demo

    installed, target = install_pack(out)
    assert target == skills_dir() / "tiny-segm-1.0.0" and installed.weights == manifest.weights
    after = hashes(lab.backbone["path"], skills_dir())
    assert {path: digest for path, digest in after.items() if path in before} == before


@pytest.mark.parametrize("task", ["segmentation", "prognosis"])
def test_the_authors_protocol_folds_csv_test_fold_selection_and_recipe_is_recorded(lab, tmp_path, task):
    ids = sorted(case.case_id for case in load_cohort(lab.cohort))
    folds = {case_id: 7 + index % 2 for index, case_id in enumerate(ids)}  # fold values 7 and 8
    with open(tmp_path / "folds.csv", "w", newline="") as file:
        file.write("case_id,fold\n" + "".join(f"{i},{f}\n" for i, f in folds.items()))
    options = train_options(
        lab,
        task,
        tmp_path / "pack",
        fold=1,
        folds_file=tmp_path / "folds.csv",
        select_on_test_fold=True,
        iterations=2,
        val_every=2,
        recipe="authors",
    )
    result = train(options)
    manifest = verify_pack(tmp_path / "pack")
    training = manifest.training
    assert training["recipe"] == "authors"
    if task == "segmentation":  # validation and later inference blend windows as the authors' did
        assert manifest.inference["blend"] == "constant"
        assert training["hyperparameters"]["segmentation_recipe"]["background_key"] == "bg_authors"
    test_ids = [case_id for case_id, value in folds.items() if value == 8]  # fold 1: the larger value
    assert training["split"]["folds"][1]["test_ids"] == test_ids and training["fold"] == 1
    assert training["selection_on_test_fold"] is True and "the test fold" in training["selection"]
    assert training["n_val"] == len(test_ids) and training["n_train"] == len(ids) - len(test_ids)
    assert result.fit.best.values["n_cases"] == len(test_ids)


def test_resume_continues_to_the_weights_of_an_uninterrupted_run(lab, tmp_path):
    straight = train(train_options(lab, "segmentation", tmp_path / "straight", iterations=6, val_every=3))

    options = train_options(lab, "segmentation", tmp_path / "resumed", iterations=6, val_every=3)
    stopped = train(TrainOptions(**{**options.__dict__, "stop_after": 4}))
    assert stopped.out is None and stopped.fit.step == 4 and not (tmp_path / "resumed").exists()
    with pytest.raises(MAFM3Error, match="pass --resume"):
        train(options)
    resumed = train(TrainOptions(**{**options.__dict__, "resume": True}))

    assert resumed.fit.step == 6 and len(resumed.fit.losses) == 2
    assert resumed.fit.losses == straight.fit.losses[4:]
    assert resumed.fit.best_step == straight.fit.best_step
    straight_weights = load_file(tmp_path / "straight" / "weights.safetensors")
    resumed_weights = load_file(tmp_path / "resumed" / "weights.safetensors")
    assert straight_weights.keys() == resumed_weights.keys()
    assert all(torch.equal(straight_weights[key], resumed_weights[key]) for key in straight_weights)
    with pytest.raises(MAFM3Error, match="never overwritten"):
        train(options)


def test_fine_tuning_writes_a_new_version_and_leaves_the_old_pack_as_it_was(lab, tmp_path):
    train(train_options(lab, "segmentation", tmp_path / "old", iterations=2))
    old = hashes(tmp_path / "old")

    result = train(
        train_options(lab, "segmentation", tmp_path / "new", init=str(tmp_path / "old"), preset=None)
    )

    assert hashes(tmp_path / "old") == old
    manifest = verify_pack(tmp_path / "new")
    previous = verify_pack(tmp_path / "old")
    assert (manifest.id, manifest.version) == (previous.id, "1.1.0")
    assert result.manifest["training"]["init"] == {
        "id": previous.id,
        "version": "1.0.0",
        "weights_sha256": previous.weights["sha256"],
    }
    assert manifest.weights["sha256"] != previous.weights["sha256"]
    assert manifest.preprocessing == previous.preprocessing and manifest.inference == previous.inference


def test_prognosis_time_bins_come_from_the_training_cases_alone(lab, tmp_path):
    with open(next(lab.cohort.glob("*endpoint*.csv")), newline="") as file:
        rows = {row["PatientID"]: row for row in csv.DictReader(file)}
    cases = list(load_cohort(lab.cohort).with_endpoints())
    # A fold with an event among its test cases, so bins fitted on every case would differ. The cohort has
    # two events: with no validation share, the fold that tests one trains on the other.
    splits = kfold_split(cases, k=4, seed=42, val_fraction=0)
    fold = next(f for f in splits if any(rows[i]["Relapse"] == "1" for i in f.test_ids))
    out = tmp_path / "prognosis"
    options = dict(fold=fold.index, folds=4, val_fraction=0.0, iterations=None, epochs=3, batch_size=2)
    result = train(train_options(lab, "prognosis", out, **options))

    manifest = verify_pack(out)
    recorded = manifest.training["split"]["folds"][fold.index]
    assert recorded["train_ids"] == list(fold.train_ids)
    event_times = [float(rows[i]["RFS"]) for i in fold.train_ids if rows[i]["Relapse"] == "1"]
    expected = np.unique(np.quantile(event_times, np.linspace(0, 1, NUM_TIME_BINS)))
    everyone = np.unique(np.quantile([float(r["RFS"]) for r in rows.values() if r["Relapse"] == "1"], [0, 1]))
    assert len(expected) != len(everyone) or not np.allclose(expected, everyone)
    np.testing.assert_allclose(manifest.training["time_bins_days"], expected, rtol=1e-6)
    assert manifest.config["prognosis"]["num_time_bins"] == len(expected)
    weights = load_file(out / "weights.safetensors")
    np.testing.assert_allclose(weights["head.time_bins_days"].numpy(), expected, rtol=1e-6)
    assert torch.isfinite(weights["head.risk_thresholds"]).all()
    per_epoch = steps_per_epoch(len(fold.train_ids), 2, 1)
    assert result.fit.step == 3 * per_epoch and manifest.training["hyperparameters"]["val_every"] == per_epoch
    assert manifest.metrics == {} and "no inner validation cases" in manifest.training["selection"]


def test_the_authors_recipe_cuts_bins_at_observed_follow_up_times_and_scores_cumulative_hazard(lab, tmp_path):
    with open(next(lab.cohort.glob("*endpoint*.csv")), newline="") as file:
        rfs = {row["PatientID"]: float(row["RFS"]) for row in csv.DictReader(file)}
    out = tmp_path / "authors"
    options = dict(val_fraction=0.0, iterations=None, epochs=1, batch_size=2, recipe="authors")
    train(train_options(lab, "prognosis", out, **options))
    manifest = verify_pack(out)
    head = manifest.config["prognosis"]
    assert (head["bin_scheme"], head["risk_score"]) == ("km_quantiles", "cumulative_hazard")
    assert manifest.training["recipe"] == "authors"
    train_times = {rfs[case_id] for case_id in manifest.training["split"]["folds"][0]["train_ids"]}
    bins = manifest.training["time_bins_days"]
    # pycox's rule: every cut is an observed follow-up time (censorings too), the last the longest one.
    assert set(bins) <= train_times and bins[-1] == max(train_times) and bins == sorted(bins)
    assert head["num_time_bins"] == len(bins) <= NUM_TIME_BINS - 1


def test_reports_are_refused_for_a_tabular_skill_and_for_segmentation(lab, tmp_path):
    reports = tmp_path / "reports.csv"
    reports.write_text("PatientID,text\nX,report\n")
    with pytest.raises(MAFM3Error, match="--reports feeds the report encoder, and .* reads tabular clinical"):
        train(train_options(lab, "prognosis", tmp_path / "p", reports=reports))
    with pytest.raises(MAFM3Error, match="--reports gives prognosis skills their report text; drop it"):
        train_options(lab, "segmentation", tmp_path / "s", reports=reports)


def test_only_the_skills_own_parameters_reach_the_optimiser(lab):
    backbone = load_backbone(lab.backbone["path"])
    config = SkillConfig.from_dict(preset_values("segmentation")["config"])
    bystander = build_skill_model(config, backbone, "bystander")
    skill = build_skill_model(config, backbone, "learner")
    network = Network.of_skill(skill)
    assert {id(p) for p in network.parameters} == {id(p) for p in skill.trainable_parameters()}
    check_only_skill_trains(skill, backbone, network.parameters)

    with pytest.raises(RuntimeError, match="frozen"):
        check_only_skill_trains(skill, backbone, network.parameters[:-1])
    bystander.activate(trainable=True)  # another skill's adapter: now it would train too
    with pytest.raises(RuntimeError, match="frozen"):
        check_only_skill_trains(skill, backbone, network.parameters)
    skill.activate(trainable=True)
    backbone.to_patch_emb.requires_grad_(True)
    with pytest.raises(RuntimeError, match="frozen"):
        check_only_skill_trains(skill, backbone, network.parameters)


def test_two_ranks_of_batch_one_compute_the_gradient_of_one_process_of_batch_two(lab):
    preset = preset_from_file(preset_file(lab.root, "segmentation", dropout=0.0))
    preprocessing = PreprocessingConfig.from_dict(preset.preprocessing)
    window = tuple(SEGMENTATION_WINDOW)
    key = segmentation.cache_key(preprocessing, window)
    model_space = partial(segmentation.model_space_case, config=preprocessing, window=window)
    data = CachedCases(
        list(load_cohort(lab.cohort).labelled()), CaseCache(lab.root / "cache"), key, model_space
    )
    backbone = load_backbone(lab.backbone["path"])
    network = Network.of_skill(build_skill_model(preset.config.for_backbone(32), backbone, "sharded"))

    def gradients(rank: int, world_size: int, batch_size: int) -> list[torch.Tensor]:
        task = segmentation.SegmentationTask(
            network,
            data,
            None,
            window=window,
            overlap=0.25,
            spacing=(6.0, 6.0, 6.0),
            batch_size=batch_size,
            crops_per_case=2,
            ranks=Ranks(rank, world_size, torch.device("cpu")),
            dtype=None,
            seed=3,
        )
        network.module.train()
        for parameter in network.parameters:
            parameter.grad = None
        task.loss(step=2).backward()
        return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in network.parameters]

    alone = gradients(0, 1, batch_size=2)
    shared = [(a + b) / 2 for a, b in zip(gradients(0, 2, 1), gradients(1, 2, 1), strict=True)]
    scale = max(float(g.abs().max()) for g in alone)
    for one, two in zip(alone, shared, strict=True):
        torch.testing.assert_close(one, two, rtol=1e-4, atol=1e-5 * scale)
    assert not torch.allclose(gradients(0, 2, 1)[-1], gradients(1, 2, 1)[-1])  # the ranks see other cases


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_epoch_gives_every_case_to_exactly_one_rank(world_size):
    n_cases, batch = 7, 2
    per_epoch = steps_per_epoch(n_cases, batch, world_size)
    for epoch in range(2):
        steps = range(epoch * per_epoch + 1, (epoch + 1) * per_epoch + 1)
        drawn = [
            index
            for step in steps
            for rank in range(world_size)
            for index in batch_indices(n_cases, batch, step, rank, world_size, seed=5)
        ]
        assert set(drawn) == set(range(n_cases))  # every case; shards are padded by repeating a few
        assert len(drawn) == world_size * -(-n_cases // world_size)
    assert batch_indices(n_cases, batch, 3, 0, world_size, 5) == batch_indices(
        n_cases, batch, 3, 0, world_size, 5
    )


def test_the_command_refuses_to_overwrite_and_to_resume_nothing(lab, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    common = ["--dataset", str(lab.cohort), "--preset", str(lab.presets["segmentation"]), "--quiet"]
    assert main(["train", "segmentation", *common, "--out", str(tmp_path / "taken")]) == 1
    assert "never overwritten" in capsys.readouterr().err
    assert main(["train", "segmentation", *common, "--out", str(tmp_path / "new"), "--resume"]) == 1
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["train", "prognosis", *common, "--out", str(tmp_path / "new")]) == 1
    assert "is a segmentation skill" in capsys.readouterr().err
