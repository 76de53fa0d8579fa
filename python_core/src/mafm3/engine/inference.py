"""Running one activated skill on one prepared input: sliding windows for segmentation, one pass otherwise.

Everything runs under `torch.inference_mode` with optional autocast; segmentation is argmaxed on the device
and comes back as uint8 labels in model space (T, H, W), never as float class maps.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices

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


def scan_interval(shape: tuple[int, ...], window: tuple[int, ...], overlap: float) -> tuple[int, ...]:
    """MONAI's sliding-window stride per axis: int(window · (1 - overlap)), at least 1; the window itself
    where it spans the axis."""
    return tuple(
        length if length == size else max(int(length * (1 - overlap)), 1)
        for size, length in zip(shape, window, strict=True)
    )


def window_count(shape: tuple[int, ...], window: tuple[int, ...], overlap: float) -> int:
    """How many windows MONAI's sliding window visits on an image of `shape` (padded to the window)."""
    padded = tuple(max(size, length) for size, length in zip(shape, window, strict=True))
    return len(window_slices(padded, window, overlap))


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def body_box(occupied: np.ndarray, window: tuple[int, ...]) -> tuple[slice, ...]:
    """The box fitted to the body: the bounding box of `occupied` (T, H, W) grown evenly to at least the
    window (within the image) per axis; an empty mask gives an empty box."""
    if not occupied.any():
        return tuple(slice(0, 0) for _ in occupied.shape)
    box = []
    for axis, (size, length) in enumerate(zip(occupied.shape, window, strict=True)):
        other_axes = tuple(a for a in range(occupied.ndim) if a != axis)
        present = np.flatnonzero(occupied.any(axis=other_axes))
        first, last = int(present[0]), int(present[-1]) + 1
        missing = max(length - (last - first), 0)
        first = max(min(first - missing // 2, size - max(length, last - first)), 0)
        box.append(slice(first, min(max(last, first + length), size)))
    return tuple(box)


def window_slices(
    shape: tuple[int, ...], window: tuple[int, ...], overlap: float, occupied=None
) -> list[tuple[slice, ...]]:
    """MONAI's windows on an image of `shape` (at least the window per axis), in MONAI's order; with
    `occupied` (an array or tensor of `shape`), only those holding an occupied voxel."""
    slices = dense_patch_slices(shape, window, scan_interval(shape, window, overlap))
    return slices if occupied is None else [s for s in slices if bool(occupied[s].any())]


def decoded_windows(
    occupied: np.ndarray | None,
    shape: tuple[int, ...],
    window: tuple[int, ...],
    overlap: float,
    fit_box: bool,
) -> int:
    """How many windows `sliding_window_labels` decodes on an image of `shape` (T, H, W)."""
    if occupied is None:
        return window_count(shape, window, overlap)
    box = body_box(occupied, window) if fit_box else (slice(None),) * len(shape)
    inside = occupied[box]
    if inside.size == 0:
        return 0
    pads, _ = _padding(inside.shape, window)
    padded = np.pad(inside, [(pad // 2, pad - pad // 2) for pad in pads])
    return len(window_slices(padded.shape, window, overlap, padded))


def _padding(shape: tuple[int, ...], window: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """Per axis how far an image falls short of the window, and `F.pad`'s argument padding it evenly
    (MONAI's split)."""
    pads = [max(length - size, 0) for size, length in zip(shape, window, strict=True)]
    return pads, [side for pad in reversed(pads) for side in (pad // 2, pad - pad // 2)]


def blend_windows(
    network: Callable[[torch.Tensor], torch.Tensor],
    volume: torch.Tensor,
    window: tuple[int, ...],
    *,
    overlap: float,
    sw_batch_size: int,
    occupied: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-blended sliding windows of `network` over `volume` (C, T, H, W), decoding only the windows
    that hold an `occupied` (T, H, W) voxel (all windows when None).

    Window placement, padding (constant 0, split evenly, when the volume is smaller than the window) and the
    Gaussian (sigma 0.125 of the window) are MONAI's `sliding_window_inference`'s, so with every window
    decoded the blend equals it. Written here because MONAI's cannot leave windows out: a skipped window
    contributes nothing, so a voxel's value is the blend of the decoded windows that cover it.

    network: crops (N, C, *window) -> outputs (N, K, *window). Returns the blend (K, T, H, W) float32,
    zero where no decoded window reaches, and `covered` (T, H, W) bool, where one does.
    """
    shape = tuple(volume.shape[1:])
    pads, padding = _padding(shape, window)
    if any(pads):
        volume = F.pad(volume, padding, value=0.0)
        occupied = None if occupied is None else F.pad(occupied, padding, value=False)
    padded = tuple(volume.shape[1:])
    slices = window_slices(padded, window, overlap, occupied)
    gaussian = compute_importance_map(window, mode="gaussian", device=volume.device)
    gaussian = gaussian.clamp(min=max(float(gaussian[gaussian > 0].min()), 1e-3))  # as MONAI does
    blended: torch.Tensor | None = None
    weight = torch.zeros(padded, dtype=torch.float32, device=volume.device)
    for first in range(0, len(slices), sw_batch_size):
        batch = slices[first : first + sw_batch_size]
        outputs = network(torch.stack([volume[(slice(None), *s)] for s in batch])).float()
        if blended is None:
            blended = torch.zeros((outputs.shape[1], *padded), dtype=torch.float32, device=volume.device)
        for output, s in zip(outputs, batch, strict=True):
            blended[(slice(None), *s)] += output * gaussian
            weight[s] += gaussian
    crop = tuple(slice(pad // 2, pad // 2 + size) for pad, size in zip(pads, shape, strict=True))
    weight = weight[crop]
    if blended is None:
        return torch.zeros((0, *shape), device=volume.device), weight > 0
    blended = blended[(slice(None), *crop)]
    covered = weight > 0
    return blended.div_(torch.where(covered, weight, 1.0)), covered  # in place: the blend is the largest


def sliding_window_labels(
    network: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    window: tuple[int, ...],
    *,
    overlap: float,
    sw_batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None,
    occupied: np.ndarray | None = None,
    fit_box: bool = True,
) -> np.ndarray:
    """Labels (T, H, W) uint8 of a model-space image (C, T, H, W): Gaussian-blended sliding windows of
    `network` (crops (N, C, *window) -> logits (N, classes, *window)), argmax on the device.

    occupied: (T, H, W) bool, where there is something to find (body or PET uptake; `PreparedInput.occupied`).
    With it, windows holding no occupied voxel are not decoded and, with `fit_box`, the windows are laid over
    the box fitted to the occupied voxels (`body_box`) instead of the whole image; everything no decoded
    window reaches is background (0). None decodes every window of the whole image.
    """
    if not 0 <= overlap < 1:
        raise MAFM3Error(f"The window overlap must be at least 0 and below 1, got {overlap}.")
    labels = np.zeros(image.shape[1:], dtype=np.uint8)
    box = body_box(occupied, window) if occupied is not None and fit_box else (slice(None),) * 3
    volume = torch.from_numpy(np.ascontiguousarray(image[(slice(None), *box)])).to(device)
    mask = None if occupied is None else torch.from_numpy(np.ascontiguousarray(occupied[box])).to(device)
    if volume[0].numel() == 0:
        return labels
    with torch.inference_mode(), autocast(device, dtype):
        logits, covered = blend_windows(
            network, volume, window, overlap=overlap, sw_batch_size=sw_batch_size, occupied=mask
        )
        if logits.shape[0]:
            labels[box] = torch.where(covered, logits.argmax(dim=0), 0).to(torch.uint8).cpu().numpy()
    return labels


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
    skip_empty: bool = True,
    fit_box: bool = True,
    decoder: Callable | None = None,
) -> np.ndarray:
    """`sliding_window_labels` of a skill, with the backbone and the decoder timed apart, progress per window
    batch, and a check for cancellation before each batch.

    skip_empty: decode only windows holding `prepared.occupied` voxels; fit_box: lay the windows over the box
    fitted to them (both: `sliding_window_labels`). decoder: what decodes (crops, hidden states) -> logits,
    e.g. a `cpu_runtime.RaceDecoder`; default the skill's own decoder.
    """
    occupied = prepared.occupied if skip_empty else None
    windows = decoded_windows(occupied, prepared.shape, window, overlap, fit_box)
    total = max(math.ceil(windows / sw_batch_size), 1)
    decoder = decoder or skill.decoder
    if hasattr(decoder, "plan"):
        decoder.plan(windows)
    done = 0

    def predictor(crops: torch.Tensor) -> torch.Tensor:
        nonlocal done
        if cancel is not None and cancel.is_set():
            raise Cancelled
        _, hidden = clock.timed("backbone", skill.features, crops)
        logits = clock.timed("head", decoder, crops, hidden)
        done += 1
        progress("inference", min(done / total, 1.0), f"{skill.name}: window batch {done} of {total}")
        return logits

    return sliding_window_labels(
        predictor,
        prepared.array,
        window,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        device=device,
        dtype=dtype,
        occupied=occupied,
        fit_box=fit_box,
    )


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
