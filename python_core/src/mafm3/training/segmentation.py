"""Segmentation training: cached model-space cases, class-balanced crops with flips and rot90, DiceCE, and
sliding-window validation with per-class Dice on the inner validation split.

The scheme is the authors' (`hector_ours.py`, itself MONAI's UNETR tutorial): each iteration takes one case
per rank and `crops_per_case` crops of the inference window, centred on a tumour voxel or a background voxel
with equal odds (`RandCropByPosNegLabeld`), then random flips along each axis and a random quarter turn in the
axial plane; the loss is DiceCE on the softmax with a one-hot target, background included (the loss only;
validation scores GTVp and GTVn alone, method-spec G3). Its settings are a `SegmentationRecipe`:

| | ours (default) | the authors' (`--recipe authors`) |
|---|---|---|
| background crop centres | label 0 in the body (CT > -500 HU, `BODY_HU`) | label 0, normalised CT > 0 |
| flips (each axis), quarter turns | p = 0.1, p = 0.1 | p = 0.2, p = 0.2 |
| intensity shift | ±0.1 with p = 0.5 | none |
| validation windows | Gaussian blend | constant blend (MONAI's default) |

("normalised CT > 0" is `RandCropByPosNegLabeld(image_threshold=0)` on their normalised CT.)

A tumour voxel drawn uniformly is almost always a GTVp voxel (a primary holds far more voxels than a node), so
nodes are seldom seen. `class_ratios` (background, GTVp, GTVn) instead centres crops on each class with the
given odds (`RandCropByLabelClassesd`; a class a case lacks is skipped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mafm3.engine.inference import SW_BATCH_SIZE, autocast, body_box, sliding_window_labels
from mafm3.errors import MAFM3Error
from mafm3.imaging.io import read_image
from mafm3.imaging.preprocess import (
    PreprocessingConfig,
    model_channels,
    normalisation,
    normalise,
    occupied_voxels,
    to_model_array,
)
from mafm3.training.datasets import LABEL_VALUES, Case
from mafm3.training.metrics import segmentation_case_metrics, segmentation_summary
from mafm3.training.model_space import CachedCases, case_study
from mafm3.training.trainer import Network, NetworkTask, Ranks, Validation, batch_indices, step_seed

CACHE_KIND = "segmentation-v5"  # v5: background centres in the CT's body, and by the authors' rule
BACKGROUND_CENTRES = 20_000  # background voxels kept as candidate crop centres (a seeded uniform sample)
SHIFT_OFFSET = 0.1


@dataclass(frozen=True)
class SegmentationRecipe:
    """The training settings `--recipe` chooses (module docstring): augmentation odds, which cached background
    centres the crops take, and how validation blends its sliding windows."""

    flip_probability: float
    rotate_probability: float
    shift_probability: float
    background_key: str  # "bg" (inside the body) or "bg_authors" (normalised CT > 0)
    blend: str  # "gaussian" or "constant"

    def class_index_keys(self) -> tuple[str, str, str]:
        """The cached crop centres of background, GTVp, GTVn."""
        return (self.background_key, "class_1", "class_2")


RECIPES = {
    "ours": SegmentationRecipe(0.1, 0.1, 0.5, "bg", "gaussian"),
    "authors": SegmentationRecipe(0.2, 0.2, 0.0, "bg_authors", "constant"),
}
CROP_STREAM = 1  # seed key that tells the crop draws apart from the step's torch seed


def cache_key(config: PreprocessingConfig, window: Sequence[int]) -> dict:
    """What the cached segmentation arrays depend on besides the case's files."""
    return {
        "kind": CACHE_KIND,
        "preprocessing": config.to_dict(),
        "window": list(window),
        "background_centres": BACKGROUND_CENTRES,
    }


def model_space_case(case: Case, config: PreprocessingConfig, window: Sequence[int]) -> dict[str, np.ndarray]:
    """One labelled case in model space, for `CaseCache`, compactly: only the box fitted to the body, the
    lesions and the PET uptake (`inference.body_box`, at least a window), CT as int16 HU (rounded: at most
    0.5 HU off), PET as float16 SUV (relative error at most 2^-11), and what normalises them.

    ct_hu (T, H, W) int16 and pet_suv (T, H, W) float16 on the box; normalisation (C, 3) float64: each
    channel's (offset, scale, clip) from the whole ROI box, as `prepare_input` normalises it; box_start (3,):
    where the box starts on the model grid; occupied_bits: `PreparedInput.occupied` on the box, bit-packed
    (from the values before rounding); label (1, T, H, W) uint8 sampled nearest on the same box; fg / bg:
    flat indices of tumour voxels and of a seeded sample of background voxels inside the body (CT) on
    the label padded to at least the window as the training crops pad it (MONAI's `fg_indices` convention);
    bg_authors: the same sample by the authors' rule (normalised CT > 0); class_1 / class_2: the flat
    indices of GTVp and of GTVn voxels alone, for class-balanced crops. `model_space_input` rebuilds the
    normalised image.
    """
    from monai.transforms import SpatialPad

    grid, _, channels = model_channels(case_study(case), config, skill_name=f"case {case.case_id}")
    label = to_model_array(read_image(case.label)[0], grid, config.axis_order, "nearest")
    values = set(np.unique(label).tolist())
    if not values <= LABEL_VALUES:
        raise MAFM3Error(
            f"The label of case {case.case_id} holds values {sorted(values)}: only 0, 1 (GTVp) and 2 (GTVn) "
            "are allowed; fix the label map."
        )
    methods = {"ct": config.ct_normalisation, "pet": config.pet_normalisation}
    windows = {"ct": config.ct_window_hu, "pet": config.pet_window_suv}
    mapping = [normalisation(array, methods[name], windows[name]) for name, array in channels.items()]
    occupied = occupied_voxels(channels)
    box = body_box(occupied | (label > 0), tuple(window))
    label = label[box].astype(np.uint8)[None]
    pad = SpatialPad(list(window))  # the crops' padding, so that indices are on the padded label
    padded = np.asarray(pad(label))[0]
    # Background crop centres inside the body as the CT shows it (ours; PET uptake blurs beyond the skin).
    body = occupied_voxels({"ct": channels["ct"][box]})
    inside_body = np.asarray(pad(body[None].astype(np.uint8)))[0] > 0
    # The authors': image > 0 on their normalised CT (`image_threshold=0`), i.e. HU above the map's offset.
    ct_above_offset = np.asarray(pad((channels["ct"][box] > mapping[0][0])[None].astype(np.uint8)))[0] > 0
    background = padded == 0
    arrays = {
        "ct_hu": np.clip(np.rint(channels["ct"][box]), -32768, 32767).astype(np.int16),
        "normalisation": np.asarray(mapping, dtype=np.float64),
        "box_start": np.asarray([axis.start for axis in box], dtype=np.int64),
        "occupied_bits": np.packbits(occupied[box]),
        "label": label,
        "fg": np.flatnonzero(padded > 0),
        "bg": _background_sample(background & inside_body),
        "bg_authors": _background_sample(background & ct_above_offset),
        "class_1": np.flatnonzero(padded == 1),
        "class_2": np.flatnonzero(padded == 2),
    }
    if "pet" in channels:
        arrays["pet_suv"] = channels["pet"][box].astype(np.float16)
    return arrays


def _background_sample(candidates: np.ndarray) -> np.ndarray:
    """Flat indices of the `candidates` (bool), at most `BACKGROUND_CENTRES` of them (a seeded uniform
    sample, sorted)."""
    indices = np.flatnonzero(candidates)
    if indices.size > BACKGROUND_CENTRES:
        indices = np.sort(np.random.default_rng(0).choice(indices, BACKGROUND_CENTRES, replace=False))
    return indices


def model_space_input(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The normalised image (C, T, H, W) float32 of a cached case's box (CT, then PET when cached) and its
    occupied voxels (T, H, W) bool, as `prepare_input` gives them (the image within the cache's rounding)."""
    channels = {"ct": arrays["ct_hu"].astype(np.float32)}
    if "pet_suv" in arrays:
        channels["pet"] = arrays["pet_suv"].astype(np.float32)
    image = [
        normalise(array, "none", (0.0, 1.0), (offset, scale, bool(clip)))
        for array, (offset, scale, clip) in zip(channels.values(), arrays["normalisation"], strict=True)
    ]
    shape = arrays["ct_hu"].shape
    occupied = np.unpackbits(arrays["occupied_bits"], count=int(np.prod(shape))).astype(bool).reshape(shape)
    return np.stack(image), occupied


def axial_axes(axis_order: str) -> tuple[int, int]:
    """The two array axes (of T, H, W) of the patient's axial plane (x and y), where quarter turns rotate:
    (1, 2) for "zxy", (0, 1) for the authors' "yxz" (`RandRotate90d`'s default axes on their PLS arrays)."""
    return tuple(sorted(axis_order.index(axis) for axis in "xy"))


def crop_transform(
    window: Sequence[int],
    crops_per_case: int,
    seed: int,
    class_ratios: Sequence[float] | None = None,
    recipe: SegmentationRecipe = RECIPES["ours"],
    rotate_axes: tuple[int, int] = (1, 2),
):
    """The MONAI training transform: pad to the window, pos/neg crops (or class-balanced crops with
    `class_ratios` for background, GTVp, GTVn), flips, quarter turns in `rotate_axes` (when the window is
    square there) and an intensity shift, with the `recipe`'s odds and background centres."""
    from monai.transforms import (
        Compose,
        RandCropByLabelClassesd,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandRotate90d,
        RandShiftIntensityd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    if class_ratios is None:
        crops = [
            RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=list(window),
                pos=1,
                neg=1,
                num_samples=crops_per_case,
                fg_indices_key="fg",
                bg_indices_key=recipe.background_key,
            )
        ]
    else:
        crops = [
            RandCropByLabelClassesd(
                keys,
                label_key="label",
                spatial_size=list(window),
                ratios=list(class_ratios),
                num_classes=3,
                num_samples=crops_per_case,
                indices_key="class_indices",
                warn=False,
            )
        ]
    steps = [
        SpatialPadd(keys, spatial_size=list(window)),
        *crops,
        *(RandFlipd(keys, prob=recipe.flip_probability, spatial_axis=axis) for axis in range(3)),
    ]
    first, second = rotate_axes
    if window[first] == window[second]:  # a quarter turn keeps the crop's shape only when both sides match
        steps.append(RandRotate90d(keys, prob=recipe.rotate_probability, max_k=3, spatial_axes=rotate_axes))
    if recipe.shift_probability:
        steps.append(RandShiftIntensityd("image", offsets=SHIFT_OFFSET, prob=recipe.shift_probability))
    return Compose(steps).set_random_state(seed=seed)


class SegmentationTask(NetworkTask):
    """DiceCE on crops of the training cases; mean tumour Dice (GTVp, GTVn) on the validation cases."""

    def __init__(
        self,
        network: Network,
        train: CachedCases,
        val: CachedCases | None,
        *,
        window: Sequence[int],
        overlap: float,
        spacing: Sequence[float],
        batch_size: int,
        crops_per_case: int,
        class_ratios: Sequence[float] | None = None,
        recipe: SegmentationRecipe = RECIPES["ours"],
        rotate_axes: tuple[int, int] = (1, 2),
        ranks: Ranks,
        dtype: torch.dtype | None,
        seed: int,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from monai.losses import DiceCELoss

        self.network, self.train, self.val = network, train, val
        self.window, self.overlap, self.spacing = tuple(window), overlap, tuple(spacing)
        self.batch_size, self.crops_per_case = batch_size, crops_per_case
        self.class_ratios = None if class_ratios is None else tuple(class_ratios)
        self.recipe, self.rotate_axes = recipe, rotate_axes
        self.ranks, self.dtype, self.seed = ranks, dtype, seed
        self.loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
        # Loading and cropping the next iteration's batch overlaps with this one's forward and backward; a
        # batch depends only on its iteration number, so prefetching changes nothing but the wall time.
        self._loader = ThreadPoolExecutor(max_workers=1)
        self._pending: dict[int, object] = {}

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's crops at `step`: images (N, C, *window) float32, labels (N, 1, *window) uint8."""
        from monai.utils import convert_to_numpy

        indices = batch_indices(
            len(self.train), self.batch_size, step, self.ranks.rank, self.ranks.world_size, self.seed
        )
        images, labels = [], []
        for offset, index in enumerate(indices):
            # Keyed by the case's place in the iteration's global batch, so N ranks with batch b draw the
            # crops one process with batch N·b would (`batch_indices` interleaves the ranks the same way).
            seed = step_seed(self.seed, step, self.ranks.rank + self.ranks.world_size * offset, CROP_STREAM)
            arrays = self.train.arrays(index)
            image, _ = model_space_input(arrays)
            centres = [arrays[key] for key in self.recipe.class_index_keys()]
            arrays = {**arrays, "image": image, "class_indices": centres}
            transform = crop_transform(
                self.window, self.crops_per_case, seed, self.class_ratios, self.recipe, self.rotate_axes
            )
            crops = transform(arrays)
            for crop in crops:
                images.append(convert_to_numpy(crop["image"], dtype=np.float32))
                labels.append(convert_to_numpy(crop["label"], dtype=np.uint8))
        return np.stack(images), np.stack(labels)

    def loss(self, step: int) -> torch.Tensor:
        pending = self._pending.pop(step, None) or self._loader.submit(self.batch, step)
        self._pending[step + 1] = self._loader.submit(self.batch, step + 1)
        images, labels = pending.result()
        images = torch.from_numpy(images).to(self.ranks.device)
        labels = torch.from_numpy(labels).to(self.ranks.device)
        with autocast(self.ranks.device, self.dtype):
            logits = self.network.module(images)
        return self.loss_function(logits.float(), labels)

    def validate(self) -> Validation | None:
        if not self.val:
            return None
        self.set_training(False)
        summary = segmentation_summary(self.validation_rows(), n_resamples=0)
        values = {"dice_mean_over_classes": summary["dice_mean_over_classes"], "n_cases": len(self.val)}
        for name, result in summary["classes"].items():
            for metric in ("dice_mean", "dice_aggregated", "hd95_mm_mean", "n_evaluated"):
                values[f"{name}_{metric}"] = result[metric]
        return Validation("dice_mean_over_classes", summary["dice_mean_over_classes"], values)

    def validation_rows(self) -> list[dict]:
        """`segmentation_case_metrics` of each validation case in model space. Each rank computes its share
        and the rows travel as numbers: a sum over ranks of tables that are zero where another rank owns
        the case."""
        empty = np.zeros((1, 1, 1), dtype=np.uint8)
        keys = list(segmentation_case_metrics(empty, empty, self.spacing))  # the row's fields, in order
        table = torch.zeros(len(self.val), len(keys), dtype=torch.float64)
        for index, _ in self.ranks.shard(self.val.cases):
            arrays = self.val.arrays(index)
            image, occupied = model_space_input(arrays)
            labels = sliding_window_labels(  # the fast path of `mafm3 run`, on the cached body box
                self.network.module,
                image,
                self.window,
                overlap=self.overlap,
                sw_batch_size=SW_BATCH_SIZE,
                device=self.ranks.device,
                dtype=self.dtype,
                occupied=occupied,
                blend=self.recipe.blend,
            )
            row = segmentation_case_metrics(labels, arrays["label"][0], self.spacing)
            table[index] = torch.tensor([float(row[key]) for key in keys], dtype=torch.float64)
        return [dict(zip(keys, values.tolist(), strict=True)) for values in self.ranks.sum(table).cpu()]
