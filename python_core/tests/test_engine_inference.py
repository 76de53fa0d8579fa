"""Sliding-window inference (`mafm3.engine.inference`) against oracles that need no model.

Oracles: a voxel-wise network (class logits from the voxel's own value) blended over any windows must give the
voxel's class back exactly, wherever the window boundaries fall: a missed or misplaced window, a wrong channel
or a crop that is not cropped back changes labels of an `arange` volume. `window_count` is checked against the
windows the network is actually given, and against the window arithmetic worked by hand. The uncertainty map
against entropy worked by hand for known logits; mirror test-time augmentation against a law of mirroring: a
decoder whose logits weigh the input by a ramp along the patient's x axis, averaged with its mirror image,
weighs it by the ramp's mean, so mirrored inference must equal plain inference with that constant weight.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mafm3.engine.inference import (
    StageClock,
    labels_and_uncertainty,
    segment,
    sliding_window_labels,
    window_count,
)
from mafm3.errors import MAFM3Error
from mafm3.imaging.preprocess import PreparedInput
from mafm3.imaging.resample import Grid

CLASSES = 5


def arange_labels(shape: tuple[int, ...]) -> np.ndarray:
    """(T, H, W) classes 0..CLASSES-1 that change from every voxel to the next along each axis."""
    return (np.arange(np.prod(shape)).reshape(shape) % CLASSES).astype(np.uint8)


class VoxelwiseNetwork:
    """crops (N, C, T, H, W) -> logits (N, CLASSES, T, H, W), each voxel's logits a function of its value in
    channel `channel` alone (peaked at that value), so any blend of windows keeps its argmax; counts crops."""

    def __init__(self, channel: int) -> None:
        self.channel = channel
        self.crops = 0

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        self.crops += crops.shape[0]
        value = crops[:, self.channel : self.channel + 1].float()
        classes = torch.arange(CLASSES, dtype=torch.float32).view(1, CLASSES, 1, 1, 1)
        return -((value - classes) ** 2)


def image_with_labels_in(channel: int, labels: np.ndarray) -> np.ndarray:
    """(2, T, H, W) float32: the labels in `channel`, noise that would give other labels in the other."""
    noise = np.random.default_rng(0).integers(0, CLASSES, labels.shape)
    channels = [noise, noise]
    channels[channel] = labels
    return np.stack(channels).astype(np.float32)


CASES = [  # (volume (T, H, W), window, overlap)
    ((12, 12, 12), (4, 4, 4), 0.0),  # windows tile the volume exactly
    ((13, 11, 9), (4, 6, 5), 0.25),  # odd sizes: the last window is shifted back inside
    ((7, 9, 5), (8, 16, 6), 0.5),  # windows larger than the volume on every axis: padded and cropped back
    ((17, 6, 10), (16, 8, 3), 0.5),  # larger on one axis, smaller on the others
    ((10, 10, 10), (4, 4, 4), 0.75),  # stride 1
    ((9, 9, 9), (3, 3, 3), 0.9),  # int(3 * 0.1) = 0: the stride is held at 1 voxel
]


@pytest.mark.parametrize(("shape", "window", "overlap"), CASES)
@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_voxelwise_network_gives_every_voxel_its_own_label_back(shape, window, overlap, dtype):
    """float32 and bf16 autocast, both asked for explicitly: the logits' argmax is exact in both (the logits
    are minus squares of small integers, exact in bf16)."""
    labels = arange_labels(shape)
    for channel in (0, 1):
        network = VoxelwiseNetwork(channel)
        found = sliding_window_labels(
            network,
            image_with_labels_in(channel, labels),
            window,
            overlap=overlap,
            sw_batch_size=3,
            device=torch.device("cpu"),
            dtype=dtype,
        )
        assert found.dtype == np.uint8 and found.shape == shape
        np.testing.assert_array_equal(found, labels)


@pytest.mark.parametrize(("shape", "window", "overlap"), CASES)
def test_window_count_is_the_number_of_windows_the_network_sees(shape, window, overlap):
    network = VoxelwiseNetwork(0)
    sliding_window_labels(
        network,
        image_with_labels_in(0, arange_labels(shape)),
        window,
        overlap=overlap,
        sw_batch_size=4,
        device=torch.device("cpu"),
        dtype=None,
    )
    assert window_count(shape, window, overlap) == network.crops


@pytest.mark.parametrize(
    ("shape", "window", "overlap", "expected"),
    [
        ((10,), (4,), 0.5, 4),  # stride 2: starts 0, 2, 4, 6
        ((9,), (4,), 0.5, 4),  # starts 0, 2, 4 and the last one shifted back to 5
        ((8,), (4,), 0.0, 2),  # starts 0, 4
        ((3,), (4,), 0.5, 1),  # the window covers the whole axis
        ((4,), (4,), 0.25, 1),  # exactly one window
        ((12, 5, 20), (4, 8, 10), 0.5, 5 * 1 * 3),  # axes multiply: 5 along T, 1 along H, 3 along W
    ],
)
def test_window_count_by_hand(shape, window, overlap, expected):
    assert window_count(shape, window, overlap) == expected


@pytest.mark.parametrize("overlap", [-0.1, 1.0, 1.5])
def test_an_overlap_outside_zero_to_one_is_refused(overlap):
    with pytest.raises(MAFM3Error, match=f"at least 0 and below 1, got {overlap}"):
        sliding_window_labels(
            VoxelwiseNetwork(0),
            np.zeros((1, 4, 4, 4), np.float32),
            (4, 4, 4),
            overlap=overlap,
            sw_batch_size=1,
            device=torch.device("cpu"),
            dtype=None,
        )


def test_uncertainty_is_the_normalised_entropy_of_the_class_probabilities():
    logits = torch.zeros(1, 3, 1, 1, 3)
    logits[0, :, 0, 0, 1] = torch.tensor([0.0, 0.0, -float("inf")])  # two classes at 1/2: log 2 / log 3
    logits[0, :, 0, 0, 2] = torch.tensor([30.0, 0.0, 0.0])  # one class almost certain
    labels, uncertainty = labels_and_uncertainty(logits)
    np.testing.assert_allclose(uncertainty[0, 0], [1.0, math.log(2) / math.log(3), 0.0], atol=1e-6)
    assert labels[0, 0, 2] == 0 and labels.dtype == np.uint8


def _skill(weight: torch.Tensor):
    """A stand-in skill: logits (background 0, tumour = input x weight); weight (T, H, W) of one window."""

    def decoder(crops, hidden):
        tumour = crops[:, :1] * weight
        return torch.cat([torch.zeros_like(tumour), tumour - 0.1], dim=1)

    return SimpleNamespace(name="stand-in", features=lambda crops: (None, None), decoder=decoder)


def test_mirrored_inference_averages_each_window_with_its_left_right_mirror():
    window = (4, 6, 4)
    axis_order = "zxy"  # H is the patient's x axis, as in the demo skills
    ramp = torch.linspace(-1.0, 3.0, window[1]).reshape(1, -1, 1).expand(window)
    rng = np.random.default_rng(0)
    prepared = PreparedInput(
        rng.normal(size=(1, 8, 12, 8)).astype(np.float32),
        Grid((8, 12, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())),
        axis_order,
        ("ct",),
        {},
    )
    options = {
        "overlap": 0.5,
        "sw_batch_size": 2,
        "device": torch.device("cpu"),
        "dtype": None,
        "clock": StageClock(torch.device("cpu")),
        "progress": lambda *_: None,
        "cancel": None,
    }
    mirrored = segment(_skill(ramp), prepared, window, mirror=True, **options)
    constant = segment(_skill(torch.full(window, float(ramp.mean()))), prepared, window, **options)
    plain = segment(_skill(ramp), prepared, window, **options)
    np.testing.assert_array_equal(mirrored[0], constant[0])
    np.testing.assert_allclose(mirrored[1], constant[1], atol=1e-5)
    assert not np.array_equal(plain[0], mirrored[0])  # the ramp does change the answer without mirroring
