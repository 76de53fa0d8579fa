"""Where segmentation training crops are centred (`mafm3.training.segmentation.crop_transform`) and the
polynomial learning-rate decay (`--poly-lr`).

Oracles: the label under a crop's centre voxel (MONAI puts the chosen centre at index size // 2 of the crop;
flips and quarter turns are switched off so it stays there), counted against the odds a law of sampling gives:
uniform tumour voxels pick a class in proportion to its volume, class ratios pick it with the given odds.
The learning rate logged at each step against lr · (1 - step / iterations)^0.9.

Precision: float32 training (`--precision fp32`); label counts against the sampling odds, learning rates
within float rounding.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from training_lab import read_log, train_options

from mafm3.errors import MAFM3Error
from mafm3.training import segmentation
from mafm3.training.pipeline import TrainOptions, train

WINDOW = (8, 8, 8)
N_CROPS = 300


@pytest.fixture
def case_arrays() -> dict[str, np.ndarray]:
    """A 32³ case with a 10³ GTVp (1000 voxels) and a 2³ GTVn (8 voxels), as `model_space_case` caches it."""
    label = np.zeros((1, 32, 32, 32), dtype=np.uint8)
    label[0, 8:18, 8:18, 8:18] = 1  # both lesions keep 4 voxels from the border, where MONAI shifts a
    # crop centre inwards to keep the crop inside the image (a background centre there could land on a lesion)
    label[0, 22:24, 22:24, 22:24] = 2
    flat = label[0].ravel()
    arrays = {
        "image": np.random.default_rng(0).normal(size=(1, 32, 32, 32)).astype(np.float32),
        "label": label,
        "fg": np.flatnonzero(flat > 0),
        "bg": np.flatnonzero(flat == 0),
        "class_1": np.flatnonzero(flat == 1),
        "class_2": np.flatnonzero(flat == 2),
    }
    arrays["class_indices"] = [arrays[key] for key in ("bg", "class_1", "class_2")]
    return arrays


# Flips and quarter turns off, so that the chosen centre stays at the crop's centre voxel.
STILL = replace(segmentation.RECIPES["ours"], flip_probability=0.0, rotate_probability=0.0)


def centre_classes(arrays: dict, class_ratios) -> np.ndarray:
    centre = tuple(size // 2 for size in WINDOW)
    transform = segmentation.crop_transform(WINDOW, N_CROPS, seed=7, class_ratios=class_ratios, recipe=STILL)
    crops = transform(arrays)
    return np.array([int(np.asarray(crop["label"])[0][centre]) for crop in crops])


def test_tumour_or_background_crops_almost_never_centre_on_a_small_node(case_arrays):
    classes = centre_classes(case_arrays, None)
    assert set(classes) <= {0, 1, 2}
    assert 0.4 < np.mean(classes == 0) < 0.6  # pos : neg = 1 : 1
    assert np.mean(classes == 2) < 0.03  # 8 of 1008 tumour voxels: 0.4 % of the crops expected


def test_class_ratios_centre_crops_on_each_class_with_the_given_odds(case_arrays):
    classes = centre_classes(case_arrays, (1, 1, 1))
    for value in (0, 1, 2):
        assert 0.2 < np.mean(classes == value) < 0.47  # 1/3 each; +-5 binomial standard deviations

    without_primary = centre_classes(case_arrays, (1, 0, 3))
    assert not np.any(without_primary == 1)
    assert 0.6 < np.mean(without_primary == 2) < 0.9  # 3/4


def test_a_case_without_nodes_takes_its_crops_from_the_other_classes(case_arrays):
    no_node = {**case_arrays, "label": np.where(case_arrays["label"] == 2, 0, case_arrays["label"])}
    no_node["class_indices"] = [case_arrays["bg"], case_arrays["class_1"], np.array([], dtype=np.int64)]
    classes = centre_classes(no_node, (1, 1, 1))
    assert not np.any(classes == 2) and 0.35 < np.mean(classes == 1) < 0.65


def test_the_authors_recipe_flips_and_turns_in_the_axial_plane_and_never_shifts_intensity(case_arrays):
    """hector_ours.py: RandFlipd p 0.2 per axis, RandRotate90d p 0.2 (max_k 3, MONAI's default axes (0, 1),
    axial on their PLS arrays), no RandShiftIntensityd. Every crop of theirs holds only voxel values of the
    image; ours shift about half of them."""
    assert segmentation.axial_axes("yxz") == (0, 1) and segmentation.axial_axes("zxy") == (1, 2)
    authors = segmentation.RECIPES["authors"]
    assert (authors.flip_probability, authors.rotate_probability, authors.shift_probability) == (0.2, 0.2, 0)
    values = set(case_arrays["image"].ravel().tolist())
    shifted = []
    for recipe in (authors, segmentation.RECIPES["ours"]):
        transform = segmentation.crop_transform(WINDOW, 40, seed=3, recipe=recipe, rotate_axes=(0, 1))
        crops = [np.asarray(crop["image"]) for crop in transform(case_arrays)]
        shifted.append(sum(not set(crop.ravel().tolist()) <= values for crop in crops))
    assert shifted[0] == 0 and 10 < shifted[1] < 30  # p 0.5 of 40 crops


@pytest.mark.parametrize("ratios", [(0, 1, 1), (1, -1, 1), (1, 1)])
def test_class_ratios_need_three_non_negative_odds_with_some_background(ratios, tmp_path):
    with pytest.raises(MAFM3Error, match="--class-ratios"):
        TrainOptions(task="segmentation", dataset=tmp_path, out=tmp_path / "out", class_ratios=ratios)


def test_class_ratios_are_refused_for_prognosis(tmp_path):
    with pytest.raises(MAFM3Error, match="segmentation crops"):
        TrainOptions(task="prognosis", dataset=tmp_path, out=tmp_path / "out", class_ratios=(1, 1, 1))


def test_poly_lr_decays_to_zero_by_the_power_law(lab, tmp_path):  # noqa: F811 (the fixture)
    result = train(
        train_options(
            lab,
            "segmentation",
            tmp_path / "poly",
            iterations=4,
            val_every=1,
            poly_lr=True,
            class_ratios=(1, 1, 1),
        )
    )
    logged = [entry["lr"] for entry in read_log(result.work) if "lr" in entry]
    expected = [1e-3 * (1 - step / 4) ** 0.9 for step in range(1, 5)]  # the rate for the step after each
    np.testing.assert_allclose(logged, expected, rtol=1e-9, atol=1e-15)
    assert result.hyperparameters["crop_centres"].endswith("1:1:1")
