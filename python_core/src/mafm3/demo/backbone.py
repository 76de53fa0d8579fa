"""The demo backbone: the reduced CT-ViT of the demo presets, pre-trained on synthetic anatomy only.

CT-CLIP's real encoder was pre-trained contrastively on 50,188 chest CTs; nothing like it can be shipped
here. The demo stands in with the same code at a reduced size (`skills.presets.DEMO_BACKBONE`) and a
self-contained pre-training that gives the frozen encoder a real notion of head & neck anatomy, so the demo
skills adapt a foundation model rather than a random one:

- data: synthetic studies (`generate_study`) from seeds the demo skills never see, CT only, preprocessed as
  the demo skills preprocess (2 mm, HU window [-1024, 1024] -> [-1, 1], axis order z, x, y);
- task: for every token, the share of each anatomical tissue inside its patch (skin, fat, muscle, airway,
  bone, glands, vessels, brain, ...; soft cross-entropy through a linear probe that is thrown away);
  tumour and node voxels count as muscle, so the backbone never learns the skills' targets;
- what trains: the feature path (patch embedding, position bias, PEGs, attention, feed-forward, norm); the
  temporal stage and the codebook keep their random initialisation (no demo skill uses them).

The result is written as a CT-CLIP-style flat checkpoint and imported with `import_ctclip_checkpoint`, so the
demo backbone goes through exactly the path a user's `CT-CLIP_v2.pt` does.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mafm3.demo.anatomy import Tissue
from mafm3.demo.constants import DEMO_NOTICE
from mafm3.demo.study import generate_study
from mafm3.imaging.preprocess import PreprocessingConfig, normalise, to_model_array
from mafm3.imaging.resample import Grid
from mafm3.model.checkpoint import checkpoint_visual_key
from mafm3.model.ctvit import CTViT
from mafm3.progress import ProgressCallback, silent_progress
from mafm3.skills.backbone import import_ctclip_checkpoint
from mafm3.skills.presets import DEMO_BACKBONE, DEMO_CT

DEMO_BACKBONE_ID = "mafm3-demo-backbone"
PRETRAINING_SEED_OFFSET = 900_000_000  # study seeds far from any cohort seed the skills train on
CROP_VOXELS = (32, 64, 64)  # (T, H, W) crops: 8 x 8 x 8 tokens with the demo 4 x 8 x 8 patches
TARGET_TISSUES = {Tissue.TUMOUR: Tissue.MUSCLE, Tissue.NODE: Tissue.MUSCLE, Tissue.NECROSIS: Tissue.MUSCLE}


def anatomy_volumes(
    n_studies: int, seed: int, progress: ProgressCallback
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(CT (T, H, W) in [-1, 1], tissues (T, H, W)) of `n_studies` synthetic studies on the demo grid."""
    config = PreprocessingConfig.from_dict(DEMO_CT)
    merge = np.arange(len(Tissue), dtype=np.uint8)
    for source, target in TARGET_TISSUES.items():
        merge[source] = target
    volumes = []
    for number in range(n_studies):
        progress("anatomy", number / n_studies, f"synthetic study {number + 1} of {n_studies}")
        study = generate_study(PRETRAINING_SEED_OFFSET + seed * 1000 + number, size="small")
        grid = Grid.of(study.ct).oriented(config.orientation).with_spacing(config.spacing_mm)
        ct = to_model_array(study.ct, grid, config.axis_order, "linear", -1024.0)
        tissues = to_model_array(study.tissues, grid, config.axis_order, "nearest")
        volumes.append((normalise(ct, "window", config.ct_window_hu), merge[tissues]))
    return volumes


def patch_tissue_shares(tissues: torch.Tensor, encoder: CTViT) -> torch.Tensor:
    """Tissue labels (B, T, H, W) -> the share of each tissue in each patch (B, t, h, w, n_tissues)."""
    pt, p = encoder.config.temporal_patch_size, encoder.config.patch_size
    one_hot = F.one_hot(tissues.long(), len(Tissue)).permute(0, 4, 1, 2, 3).float()
    return F.avg_pool3d(one_hot, (pt, p, p)).permute(0, 2, 3, 4, 1)


def pretrain_encoder(
    volumes: list[tuple[np.ndarray, np.ndarray]],
    *,
    steps: int,
    batch_size: int = 4,
    seed: int = 0,
    progress: ProgressCallback = silent_progress,
) -> tuple[CTViT, dict]:
    """A demo-sized CT-ViT whose feature path learnt the tissue shares of random crops, and a record."""
    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    encoder = CTViT(DEMO_BACKBONE).train()
    probe = nn.Linear(DEMO_BACKBONE.dim, len(Tissue))
    trained = [p for name, p in encoder.named_parameters() if not name.startswith(("enc_temporal", "vq"))]
    optimiser = torch.optim.AdamW([*trained, *probe.parameters()], lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-3, total_steps=steps)
    losses = []
    for step in range(steps):
        crops, targets = zip(*(_random_crop(volumes, generator) for _ in range(batch_size)), strict=True)
        x = torch.from_numpy(np.stack(crops)).unsqueeze(1)
        shares = patch_tissue_shares(torch.from_numpy(np.stack(targets)), encoder)
        tokens, _ = encoder.forward_features(x)
        loss = -(shares * F.log_softmax(probe(tokens), dim=-1)).sum(-1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        progress(
            "pretrain", (step + 1) / steps, f"step {step + 1} of {steps}, loss {np.mean(losses[-20:]):.3f}"
        )
    window = max(1, steps // 10)
    record = {
        "task": "per-token tissue shares of synthetic head & neck anatomy (tumours counted as muscle)",
        "studies": len(volumes),
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "loss_first": round(float(np.mean(losses[:window])), 4),
        "loss_last": round(float(np.mean(losses[-window:])), 4),
    }
    return encoder.eval(), record


def _random_crop(volumes, generator: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ct, tissues = volumes[generator.integers(len(volumes))]
    start = [
        generator.integers(0, max(size - crop, 0) + 1)
        for size, crop in zip(ct.shape, CROP_VOXELS, strict=True)
    ]
    window = tuple(slice(s, s + c) for s, c in zip(start, CROP_VOXELS, strict=True))
    return ct[window].astype(np.float32), tissues[window]


def make_demo_backbone(
    out_dir: str | Path,
    *,
    n_studies: int = 12,
    steps: int = 300,
    seed: int = 0,
    progress: ProgressCallback = silent_progress,
) -> dict:
    """Pre-train the demo backbone and import it into `out_dir` (new or empty); returns its manifest."""
    from safetensors.torch import save_file

    volumes = anatomy_volumes(n_studies, seed, progress)
    encoder, record = pretrain_encoder(volumes, steps=steps, seed=seed, progress=progress)
    checkpoint = {
        checkpoint_visual_key(name): t.detach().contiguous() for name, t in encoder.state_dict().items()
    }
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / f"{DEMO_BACKBONE_ID}.safetensors"
        save_file(checkpoint, path)
        manifest = import_ctclip_checkpoint(
            path,
            out_dir,
            backbone_id=DEMO_BACKBONE_ID,
            patch_size=DEMO_BACKBONE.patch_size,
            temporal_patch_size=DEMO_BACKBONE.temporal_patch_size,
        )
    manifest["demo"] = True
    manifest["notice"] = DEMO_NOTICE
    manifest["pretraining"] = record
    (Path(out_dir) / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
