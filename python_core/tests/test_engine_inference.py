"""Sliding-window inference (`mafm3.engine.inference`) against oracles that need no model.

Oracles: a voxel-wise network (class logits from the voxel's own value) blended over any windows must give the
voxel's class back exactly, wherever the window boundaries fall: a missed or misplaced window, a wrong channel
or a crop that is not cropped back changes labels of an `arange` volume. `window_count` is checked against the
windows the network is actually given, and against the window arithmetic worked by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mafm3.engine.inference import sliding_window_labels, window_count
from mafm3.errors import MAFM3Error

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
