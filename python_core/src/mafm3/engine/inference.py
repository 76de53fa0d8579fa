"""Running one activated skill on one prepared input: sliding windows for segmentation, one pass otherwise.

Everything runs under `torch.inference_mode` with optional autocast; segmentation is argmaxed on the device
and comes back as uint8 labels in model space (T, H, W) with the normalised entropy of the blended class
probabilities as its uncertainty map, never as float class maps.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from mafm3.clinical import ClinicalRecord
from mafm3.errors import MAFM3Error
from mafm3.imaging.preprocess import PreparedInput
from mafm3.model.skill_model import ClassificationSkill, PrognosisSkill, SegmentationSkill
from mafm3.progress import ProgressCallback

SW_BATCH_SIZE = 4  # windows per forward pass, unless a run asks for another


class Cancelled(Exception):
    """The user cancelled the run."""


class StageClock:
    """Accumulates seconds per stage; synchronises CUDA so asynchronous kernels are charged correctly."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    def timed(self, stage: str, function: Callable, *args, **kwargs):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        value = function(*args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start
        return value


def window_count(shape: tuple[int, ...], window: tuple[int, ...], overlap: float) -> int:
    """How many windows MONAI's sliding window visits (stride = int(window · (1 - overlap)) per axis)."""
    count = 1
    for size, length in zip(shape, window, strict=True):
        stride = max(int(length * (1 - overlap)), 1)
        count *= 1 if size <= length else math.ceil((size - length) / stride) + 1
    return count


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def sliding_window_logits(
    network: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    window: tuple[int, ...],
    *,
    overlap: float,
    sw_batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """Blended class logits (1, classes, T, H, W) float32 on `device` of a model-space image (C, T, H, W):
    Gaussian-blended sliding windows of `network` (crops (N, C, *window) -> logits (N, classes, *window))."""
    if not 0 <= overlap < 1:
        raise MAFM3Error(f"The window overlap must be at least 0 and below 1, got {overlap}.")
    volume = torch.from_numpy(np.ascontiguousarray(image)).unsqueeze(0).to(device)
    with torch.inference_mode(), autocast(device, dtype):
        return sliding_window_inference(
            volume,
            list(window),
            sw_batch_size,
            lambda crops: network(crops).float(),
            overlap=overlap,
            mode="gaussian",
        )


def sliding_window_labels(
    network: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    window: tuple[int, ...],
    *,
    overlap: float,
    sw_batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None,
) -> np.ndarray:
    """Labels (T, H, W) uint8: the argmax on the device of `sliding_window_logits` (same arguments)."""
    logits = sliding_window_logits(
        network, image, window, overlap=overlap, sw_batch_size=sw_batch_size, device=device, dtype=dtype
    )
    return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


def labels_and_uncertainty(logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Labels (T, H, W) uint8 and the normalised entropy of the class probabilities (T, H, W) float32 in
    [0, 1] (0: one class is certain, 1: all equally likely) of blended logits (1, classes, T, H, W)."""
    with torch.inference_mode():
        # entr(p) = -p log p, 0 where p = 0 (a class ruled out): no NaN from 0 * log 0
        entropy = torch.special.entr(torch.softmax(logits[0], dim=0)).sum(dim=0) / math.log(logits.shape[1])
        labels = logits[0].argmax(dim=0).to(torch.uint8)
        return labels.cpu().numpy(), entropy.clamp_(0.0, 1.0).cpu().numpy()


def segment(
    skill: SegmentationSkill,
    prepared: PreparedInput,
    window: tuple[int, int, int],
    *,
    overlap: float,
    sw_batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None,
    clock: StageClock,
    progress: ProgressCallback,
    cancel: threading.Event | None,
    mirror: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """`labels_and_uncertainty` of a skill's `sliding_window_logits`, with the backbone and the decoder timed
    apart, progress per window batch, and a check for cancellation before each batch.

    mirror: test-time augmentation: each window's logits are averaged with those of its left-right mirror
        image (mirrored back), which doubles the work.
    Returns labels (T, H, W) uint8 and uncertainty (T, H, W) float32 in [0, 1]."""
    total = math.ceil(window_count(prepared.shape, window, overlap) / sw_batch_size)
    done = 0
    left_right = 2 + prepared.axis_order.index("x")  # the patient's x axis (L) in crops (N, C, T, H, W)

    def decode(crops: torch.Tensor) -> torch.Tensor:
        _, hidden = clock.timed("backbone", skill.features, crops)
        return clock.timed("head", skill.decoder, crops, hidden)

    def predictor(crops: torch.Tensor) -> torch.Tensor:
        nonlocal done
        if cancel is not None and cancel.is_set():
            raise Cancelled
        logits = decode(crops)
        if mirror:
            logits = (logits + decode(crops.flip(left_right)).flip(left_right)) / 2
        done += 1
        progress("inference", min(done / total, 1.0), f"{skill.name}: window batch {done} of {total}")
        return logits

    logits = sliding_window_logits(
        predictor,
        prepared.array,
        window,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        device=device,
        dtype=dtype,
    )
    return labels_and_uncertainty(logits)


def prognose(
    skill: PrognosisSkill,
    prepared: PreparedInput,
    record: ClinicalRecord | None,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    clock: StageClock,
) -> dict:
    """`PrognosisHead.outcome` for one study (batch of one), tensors moved to the CPU."""
    volume = torch.from_numpy(prepared.array).unsqueeze(0).to(device)
    with torch.inference_mode(), autocast(device, dtype):
        clinical = skill.encode_clinical([record or ClinicalRecord()])
        tokens, _ = clock.timed("backbone", skill.features, volume)
        logits = clock.timed("head", skill.head, tokens.mean(dim=(1, 2, 3)).float(), clinical)
        return skill.head.outcome(logits.float())


def classify(
    skill: ClassificationSkill,
    prepared: PreparedInput,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    clock: StageClock,
) -> dict[str, float]:
    """P(abnormality present) for each label of the zero-shot skill."""
    volume = torch.from_numpy(prepared.array).unsqueeze(0).to(device)
    with torch.inference_mode(), autocast(device, dtype):
        probabilities = clock.timed("backbone", skill, volume)[0].float().cpu()
    return {label: float(p) for label, p in zip(skill.config.labels, probabilities, strict=True)}
