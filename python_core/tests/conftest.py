"""Shared fixtures of the core tests (tiny backbone and skill packs, the engine's study, the training lab) and
the precision policy every numeric test states; the helpers they use live in `tiny_models`,
`imaging_phantoms`, `cohort_cases`, `training_lab` and `numeric_precision`.

`--precision auto` runs bf16 autocast on a CPU with native bf16 and float32 elsewhere. MAFM3_CPU_BF16=1 (or 0)
makes the policy take the bf16 (or float32) CPU path on any machine, emulating bf16 where the CPU lacks it;
`make test` runs the tests marked `precision` both ways. A test that runs the "auto" policy on the CPU without
the `precision` mark fails here, so no such test can pass on one machine and fail on the next.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch
from imaging_phantoms import phantom_ct
from safetensors.torch import save_file
from tiny_models import (
    SMALL_BACKBONE,
    ctclip_state_dict,
    export,
    tiny_preset,
    tiny_prognosis_preset,
)
from training_lab import N_CASES, Lab, preset_file

import mafm3.engine.device
from mafm3.demo.writers import write_cohort
from mafm3.model.mtlr import fit_time_bins
from mafm3.model.prognosis import PrognosisConfig
from mafm3.model.skill_model import build_skill_model
from mafm3.skills.backbone import import_ctclip_checkpoint, load_backbone
from mafm3.skills.packs import install_pack


@pytest.fixture()
def cpu_autocast() -> torch.dtype | None:
    """The autocast dtype `--precision auto` takes on this CPU (None: float32), or MAFM3_CPU_BF16's."""
    return mafm3.engine.device.autocast_dtype(torch.device("cpu"), "auto")


@pytest.fixture(autouse=True)
def _auto_precision_only_in_precision_tests(request, monkeypatch):
    """Fails a test that lets the "auto" policy choose on the CPU in this process unless it is marked
    `precision` (such a test gives different numbers on CPUs with and without native bf16)."""
    if request.node.get_closest_marker("precision"):
        yield
        return
    consulted = []
    detect = mafm3.engine.device.cpu_has_native_bf16
    monkeypatch.setattr(
        mafm3.engine.device, "cpu_has_native_bf16", lambda: consulted.append(True) or detect()
    )
    yield
    if consulted:
        pytest.fail(
            "this test runs `--precision auto` on the CPU: mark it `@pytest.mark.precision` (`make test` "
            "runs it on both CPU paths; tolerances from `relative_tolerance`), or ask for fp32 or bf16",
            pytrace=False,
        )


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MAFM3_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def backbone_manifest(home, tmp_path) -> dict:
    checkpoint = tmp_path / "tiny-ct-clip.safetensors"
    save_file(ctclip_state_dict(**SMALL_BACKBONE, latent=None), checkpoint)
    manifest = import_ctclip_checkpoint(checkpoint, backbone_id="tiny", patch_size=8, temporal_patch_size=4)
    manifest["path"] = home / "backbones" / "tiny"
    return manifest


@pytest.fixture()
def installed_skills(backbone_manifest, tmp_path):
    """A tiny CT segmentation skill and a tiny prognosis skill with the same preprocessing, installed."""
    backbone = load_backbone(backbone_manifest["path"])
    segmenter = build_skill_model(tiny_preset().config, backbone, "tiny-seg-ct")
    seg = export(segmenter, tmp_path / "pack-seg", backbone_manifest)
    preset = tiny_prognosis_preset()
    prognosis = build_skill_model(preset.config, backbone, "tiny-prognosis")
    assert isinstance(prognosis.config.prognosis, PrognosisConfig)
    prognosis.head.set_time_bins(fit_time_bins(torch.tensor([200.0, 500, 900, 1500]), torch.ones(4), 3))
    prog = export(prognosis, tmp_path / "pack-prognosis", backbone_manifest, preset=preset)
    for folder in (tmp_path / "pack-seg", tmp_path / "pack-prognosis"):
        install_pack(folder)
    return seg, prog


@pytest.fixture()
def study_files(tmp_path):
    ct = phantom_ct()
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    (tmp_path / "clinical.json").write_text(json.dumps({"age": 61, "hpv": True, "t_stage": "T2"}))
    return ct, tmp_path / "ct.nrrd", tmp_path / "clinical.json"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy two-core machine run 10-30 times slower
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAFM3_HOME", str(root / "home"))
        checkpoint = root / "tiny-ct-clip.safetensors"
        save_file(ctclip_state_dict(**SMALL_BACKBONE, latent=None), checkpoint)
        manifest = import_ctclip_checkpoint(
            checkpoint, backbone_id="tiny", patch_size=8, temporal_patch_size=4
        )
        manifest["path"] = root / "home" / "backbones" / "tiny"
        write_cohort(N_CASES, 0, root / "cohort", "tiny")
        presets = {task: preset_file(root, task) for task in ("segmentation", "prognosis")}
        yield Lab(root, root / "home", root / "cohort", manifest, presets)
    torch.set_num_threads(threads)
