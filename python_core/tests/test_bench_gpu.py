"""What the GPU path must keep: the CPU's answers (segmentation labels, CT-ViT tokens) within stated bounds.

Run on a machine with CUDA (`pytest -m gpu`, `scripts/gpu_checks.sh`); skipped elsewhere. Oracles: the same
network on the CPU in float32, and SimpleITK for the resampler. Bounds: labels may differ only where the CPU's
top-two logit margin is below twice the largest logit difference (an argmax cannot flip elsewhere); bf16
autocast keeps the CT-ViT tokens within 3 % (relative L2) of float32, the error bf16's 8-bit mantissa allows
over four pre-norm layers.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from imaging_phantoms import phantom_ct
from tiny_models import small_backbone, trained_skill

from mafm3.bench.sections import torch_resample
from mafm3.engine import Engine, RunRequest
from mafm3.imaging.preprocess import PreprocessingConfig, model_grid, to_model_array
from mafm3.imaging.study import study_from_images
from mafm3.model.attention import reference_attention
from mafm3.model.ctvit import CTViT, CTViTConfig
from mafm3.skills.presets import PRESETS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")


def skill_logits(skill, x: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    skill.backbone.to(device)
    skill.to(device)
    skill.backbone.autocast_dtype = dtype
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        return skill(x.to(device)).float().cpu()


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_segmentation_labels_on_cuda_are_the_cpus_wherever_the_margin_allows(dtype):
    skill = trained_skill(small_backbone(seed=3), "gpu-check", seed=4)
    skill.activate(merged=True)
    x = torch.randn((2, 1, 32, 64, 64), generator=torch.Generator().manual_seed(5))
    on_cpu = skill_logits(skill, x, torch.device("cpu"), None)
    on_cuda = skill_logits(skill, x, CUDA, dtype)
    difference = (on_cuda - on_cpu).abs().max()
    scale = on_cpu.abs().max()
    assert difference <= (1e-2 if dtype is None else 5e-2) * scale  # TF32 convolutions / bf16 autocast
    top2 = on_cpu.topk(2, dim=1).values
    decisive = (top2[:, 0] - top2[:, 1]) > 2 * difference
    assert decisive.float().mean() > 0.5  # the check below is about most voxels, not a vacuous few
    labels_cpu, labels_cuda = on_cpu.argmax(dim=1), on_cuda.argmax(dim=1)
    assert torch.equal(labels_cpu[decisive], labels_cuda[decisive])


def test_the_engine_on_cuda_writes_the_cpus_segmentation(installed_skills, study_files):
    ct, ct_path, _ = study_files
    request = RunRequest(ct=str(ct_path), skills=["tiny-seg-ct"], precision="fp32")
    on_cpu, _ = Engine("cpu").run(request)
    on_cuda, _ = Engine("cuda").run(request)
    labels_cpu = sitk.GetArrayFromImage(on_cpu.segmentation.labels)
    labels_cuda = sitk.GetArrayFromImage(on_cuda.segmentation.labels)
    assert on_cuda.device.startswith("cuda") and on_cuda.segmentation.labels.GetSize() == ct.GetSize()
    assert (labels_cpu == labels_cuda).mean() >= 0.99  # near-ties of the untrained skill may flip (TF32)


def test_bf16_autocast_keeps_the_ctvit_tokens_within_three_percent():
    encoder = CTViT(CTViTConfig()).to(CUDA).eval().requires_grad_(False)
    x = torch.randn((1, 1, 40, 480, 480), generator=torch.Generator().manual_seed(6)).to(CUDA)
    with torch.inference_mode():
        with reference_attention():
            reference = encoder.forward_features(x)[0].float()
        fused_fp32 = encoder.forward_features(x)[0].float()
        encoder.autocast_dtype = torch.bfloat16
        fused_bf16 = encoder.forward_features(x)[0].float()

    def relative(found: torch.Tensor) -> float:
        return float((found - reference).norm() / reference.norm())

    assert relative(fused_fp32) < 1e-4
    assert relative(fused_bf16) < 3e-2


def test_the_torch_resampler_on_cuda_samples_what_simpleitk_samples():
    ct = phantom_ct()
    noisy = sitk.GetArrayFromImage(ct) + np.random.default_rng(0).normal(0, 30, (16, 40, 48)).astype(
        np.float32
    )
    image = sitk.GetImageFromArray(noisy)
    image.CopyInformation(ct)
    study = study_from_images(image)
    config = PreprocessingConfig.from_dict(
        PRESETS["hecktor-seg-ct"].preprocessing
    )  # 0.75 mm, 480 x 480 x 240
    grid, _ = model_grid(study, config)
    expected = to_model_array(study.ct, grid, config.axis_order, "linear", -1024.0)
    found = torch_resample(study.ct, grid, config.axis_order, -1024.0, CUDA).cpu().numpy()
    inside_both = (expected != -1024.0) & (found != -1024.0)
    assert np.abs(found - expected)[inside_both].max() < 0.05
    assert ((expected != -1024.0) != (found != -1024.0)).mean() < 0.01  # points on the box's edge only
