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
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices

from mafm3.clinical import ClinicalRecord
from mafm3.errors import MAFM3Error
from mafm3.imaging.preprocess import PreparedInput
from mafm3.model.skill_model import ClassificationSkill, PrognosisSkill, SegmentationSkill
from mafm3.progress import ProgressCallback

SW_BATCH_SIZE = 4  # windows per forward pass, unless a run asks for another
BLENDS = ("gaussian", "constant")  # how overlapping windows are weighted (a manifest's `inference.blend`)


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
    blend: str = "gaussian",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-blended (or, with `blend="constant"`, averaged) sliding windows of `network` over `volume`
    (C, T, H, W), decoding only the windows that hold an `occupied` (T, H, W) voxel (all windows when None).

    Window placement, padding (constant 0, split evenly, when the volume is smaller than the window) and the
    weights (a Gaussian of sigma 0.125 of the window, or constant) are MONAI's `sliding_window_inference`'s,
    so with every window decoded the blend equals it. Written here because MONAI's cannot leave windows out:
    a skipped window contributes nothing, so a voxel's value is the blend of the decoded windows covering it.

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
    if blend not in BLENDS:
        raise MAFM3Error(
            f"Unknown window blend {blend!r}: the skill's `inference.blend` must be one of {BLENDS}."
        )
    importance = compute_importance_map(window, mode=blend, device=volume.device)
    importance = importance.clamp(min=max(float(importance[importance > 0].min()), 1e-3))  # as MONAI does
    blended: torch.Tensor | None = None
    weight = torch.zeros(padded, dtype=torch.float32, device=volume.device)
    for first in range(0, len(slices), sw_batch_size):
        batch = slices[first : first + sw_batch_size]
        outputs = network(torch.stack([volume[(slice(None), *s)] for s in batch])).float()
        if blended is None:
            blended = torch.zeros((outputs.shape[1], *padded), dtype=torch.float32, device=volume.device)
        for output, s in zip(outputs, batch, strict=True):
            blended[(slice(None), *s)] += output * importance
            weight[s] += importance
    crop = tuple(slice(pad // 2, pad // 2 + size) for pad, size in zip(pads, shape, strict=True))
    weight = weight[crop]
    if blended is None:
        return torch.zeros((0, *shape), device=volume.device), weight > 0
    blended = blended[(slice(None), *crop)]
    covered = weight > 0
    return blended.div_(torch.where(covered, weight, 1.0)), covered  # in place: the blend is the largest


def sliding_window_logits(
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
    blend: str = "gaussian",
) -> torch.Tensor:
    """Blended class logits (1, classes, T, H, W) float32 on `device` of a model-space image (C, T, H, W):
    sliding windows of `network` (crops (N, C, *window) -> logits (N, classes, *window)) blended as `blend`
    says (`blend_windows`).

    occupied: (T, H, W) bool, where there is something to find (body or PET uptake; `PreparedInput.occupied`).
    With it, windows holding no occupied voxel are not decoded and, with `fit_box`, the windows are laid over
    the box fitted to the occupied voxels (`body_box`) instead of the whole image. A voxel no decoded window
    reaches is certain background: logit 0 for background and -inf for every other class (label 0,
    uncertainty 0 in `labels_and_uncertainty`). None decodes every window of the whole image.
    """
    if not 0 <= overlap < 1:
        raise MAFM3Error(f"The window overlap must be at least 0 and below 1, got {overlap}.")
    box = body_box(occupied, window) if occupied is not None and fit_box else (slice(None),) * 3
    volume = torch.from_numpy(np.ascontiguousarray(image[(slice(None), *box)])).to(device)
    mask = None if occupied is None else torch.from_numpy(np.ascontiguousarray(occupied[box])).to(device)
    with torch.inference_mode(), autocast(device, dtype):
        if volume[0].numel():
            blended, covered = blend_windows(
                network,
                volume,
                window,
                overlap=overlap,
                sw_batch_size=sw_batch_size,
                occupied=mask,
                blend=blend,
            )
        else:
            blended, covered = torch.zeros((0,)), None
        classes = blended.shape[0] or 2  # nothing decoded: background and "anything else", ruled out
        logits = torch.full((1, classes, *image.shape[1:]), -math.inf, device=device)
        logits[0, 0] = 0.0
        if blended.shape[0]:
            inside = logits[(0, slice(None), *box)]
            inside.copy_(torch.where(covered, blended, inside))
        return logits


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
    blend: str = "gaussian",
) -> np.ndarray:
    """Labels (T, H, W) uint8: the argmax on the device of `sliding_window_logits` (same arguments)."""
    logits = sliding_window_logits(
        network,
        image,
        window,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        device=device,
        dtype=dtype,
        occupied=occupied,
        fit_box=fit_box,
        blend=blend,
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
    skip_empty: bool = True,
    fit_box: bool = True,
    decoder: Callable | None = None,
    blend: str = "gaussian",
) -> tuple[np.ndarray, np.ndarray]:
    """`labels_and_uncertainty` of a skill's `sliding_window_logits`, with the backbone and the decoder timed
    apart, progress per window batch, and a check for cancellation before each batch.

    mirror: test-time augmentation: each window's logits are averaged with those of its left-right mirror
        image (mirrored back), which doubles the work.
    skip_empty: decode only windows holding `prepared.occupied` voxels; fit_box: lay the windows over the box
        fitted to them (both: `sliding_window_logits`); blend: "gaussian" or "constant" (`blend_windows`).
    decoder: what decodes (crops, hidden states) -> logits, e.g. a `cpu_runtime.RaceDecoder`; default the
        skill's own decoder.
    Returns labels (T, H, W) uint8 and uncertainty (T, H, W) float32 in [0, 1]."""
    occupied = prepared.occupied if skip_empty else None
    windows = decoded_windows(occupied, prepared.shape, window, overlap, fit_box)
    total = max(math.ceil(windows / sw_batch_size), 1)
    decoder = decoder or skill.decoder
    if hasattr(decoder, "plan"):
        decoder.plan(windows * (2 if mirror else 1))  # a mirrored window is decoded twice
    done = 0
    left_right = 2 + prepared.axis_order.index("x")  # the patient's x axis (L) in crops (N, C, T, H, W)

    def decode(crops: torch.Tensor) -> torch.Tensor:
        _, hidden = clock.timed("backbone", skill.features, crops)
        return clock.timed("head", decoder, crops, hidden)

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
        occupied=occupied,
        fit_box=fit_box,
        blend=blend,
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
