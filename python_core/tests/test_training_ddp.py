"""Data-parallel training under torchrun (`mafm3.train`, `trainer.Ranks`): two CPU processes with gloo.

Oracles: the weight digests each rank reports at every checkpoint (they must agree: without the gradient
all-reduce the ranks, which train on different cases, would drift apart at the first step); the folder
listing (one pack, written once). That 2 ranks of batch 1 compute the gradient of 1 process of batch 2 is
checked in-process in test_training_trainer.py (final weights cannot be compared: AdamW turns the float noise
of exactly-zero gradients into steps of the learning rate's size).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from training_lab import N_CASES, preset_file, read_log, train_options

from mafm3.skills.packs import verify_pack
from mafm3.training.pipeline import train

pytestmark = pytest.mark.slow  # two torchrun processes train: about 30 s on 2 cores (each test)


def test_two_cpu_ranks_stay_identical_and_write_one_pack(
    lab,
    tmp_path,
):
    preset = preset_file(tmp_path, "segmentation")
    arguments = ["segmentation", "--dataset", str(lab.cohort), "--preset", str(preset), "--iterations", "4"]
    arguments += ["--val-every", "2", "--crops-per-case", "2", "--lr", "1e-3", "--precision", "fp32"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "mafm3.train", *arguments, "--device", "cpu", "--out", str(tmp_path / "ddp"), "--quiet"]
    environment = {**os.environ, "MAFM3_HOME": str(lab.home), "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]

    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([preset.name, "ddp", "ddp.work"])
    assert sorted(path.name for path in (tmp_path / "ddp").iterdir()) == [
        "manifest.json",
        "weights.safetensors",
    ]
    manifest = verify_pack(tmp_path / "ddp")
    assert manifest.training["hyperparameters"]["world_size"] == 2
    checkpoints = [entry for entry in read_log(tmp_path / "ddp.work") if "weights_sha256" in entry]
    assert [entry["step"] for entry in checkpoints] == [2, 4]
    assert all(
        len(entry["weights_sha256"]) == 2 == len(set(entry["weights_sha256"])) + 1 for entry in checkpoints
    )


def test_improve_under_torchrun_fine_tunes_on_two_ranks_and_rank_0_compares_and_writes(lab, tmp_path):
    base = tmp_path / "base"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAFM3_HOME", str(lab.home))
        train(train_options(lab, "segmentation", base, iterations=2))
    arguments = ["--skill", str(base), "--dataset", str(lab.cohort), "--iterations", "2", "--bootstrap", "20"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "mafm3.improve", *arguments, "--device", "cpu", "--precision", "fp32"]
    command += ["--out", str(tmp_path / "new"), "--quiet", "--json"]
    environment = {**os.environ, "MAFM3_HOME": str(lab.home), "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]

    assert sorted(path.name for path in tmp_path.iterdir()) == ["base", "base.work", "new"]  # staging gone
    manifest = verify_pack(tmp_path / "new")
    assert manifest.training["hyperparameters"]["world_size"] == 2
    comparison = json.loads((tmp_path / "new" / "comparison.json").read_text())
    assert comparison["scheme"] == "folds"  # 8 cases, holdout 0.25: 4 parts of 2, each held out in turn
    assert len(set(comparison["held_out_case_ids"])) == N_CASES
