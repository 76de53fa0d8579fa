"""Sliding-window inference (`mafm3.engine.inference`) against oracles that need no model.

Oracles: a voxel-wise network (class logits from the voxel's own value) blended over any windows must give the
voxel's class back exactly, wherever the window boundaries fall: a missed or misplaced window, a wrong channel
or a crop that is not cropped back changes labels of an `arange` volume. `window_count` is checked against the
windows the network is actually given, and against the window arithmetic worked by hand. The uncertainty map
against entropy worked by hand for known logits; mirror test-time augmentation against a law of mirroring: a
decoder whose logits weigh the input by a ramp along the patient's x axis, averaged with its mirror image,
weighs it by the ramp's mean, so mirrored inference must equal plain inference with that constant weight.
The skipping blend against MONAI's `sliding_window_inference` (a second implementation of the same blend,
within 1e-5 in float32), the predictor x + 1 on an arange volume (output = input + 1 wherever a window
reached), and the occupied windows enumerated by brute force.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from mafm3.engine.inference import (
    StageClock,
    blend_windows,
    body_box,
    decoded_windows,
    labels_and_uncertainty,
    segment,
    sliding_window_labels,
    sliding_window_logits,
    window_count,
)
from mafm3.errors import MAFM3Error
from mafm3.imaging.preprocess import PreparedInput, occupied_voxels
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


# -- windows left out where there is nothing to find ---------------------------------------------------

CPU = torch.device("cpu")
WINDOW = (8, 8, 8)


def smooth_network(seed: int = 0) -> torch.nn.Module:
    """A small random 3-D conv net (2 channels in, 3 classes out): its output depends on the neighbourhood,
    so a misplaced or missing window changes the blend."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, 3, 3, padding=1)
    ).eval()


def all_starts(shape, window, overlap):
    """Window starts per axis by MONAI's rule, enumerated independently: stride int(w (1 - overlap)), the last
    window pushed back inside the image."""
    per_axis = []
    for size, length in zip(shape, window, strict=True):
        stride = length if size == length else max(int(length * (1 - overlap)), 1)
        starts, start = [], 0
        while True:
            starts.append(min(start, size - length))
            if start + length >= size:
                break
            start += stride
        per_axis.append(starts)
    return list(itertools.product(*per_axis))


@pytest.mark.parametrize("blend", ["gaussian", "constant"])  # ours, and the authors' (MONAI's default)
@pytest.mark.parametrize("shape", [(20, 17, 12), (8, 30, 6)])  # the second is thinner than the window
def test_with_every_window_decoded_the_blend_equals_monai(shape, blend):
    network = smooth_network()
    volume = torch.randn((2, *shape), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours, covered = blend_windows(network, volume, WINDOW, overlap=0.25, sw_batch_size=3, blend=blend)
        reference = sliding_window_inference(volume[None], WINDOW, 3, network, overlap=0.25, mode=blend)
    assert covered.all()
    torch.testing.assert_close(ours, reference[0], atol=1e-5, rtol=1e-5)


def test_the_plus_one_predictor_gives_input_plus_one_wherever_a_window_reached():
    shape = (19, 23, 17)
    volume = torch.arange(np.prod(shape), dtype=torch.float32).reshape(1, *shape)
    occupied = torch.zeros(shape, dtype=torch.bool)
    occupied[2:5, 3:6, 1:3] = True
    occupied[15:, 20:, 14:] = True
    with torch.inference_mode():
        blended, covered = blend_windows(
            lambda crops: crops + 1, volume, WINDOW, overlap=0.5, sw_batch_size=2, occupied=occupied
        )
    assert covered.any() and not covered.all()  # some windows were left out
    torch.testing.assert_close(blended[0][covered], volume[0][covered] + 1, atol=1e-3, rtol=1e-6)
    assert (blended[0][~covered] == 0).all()


def test_the_windows_decoded_are_exactly_those_holding_an_occupied_voxel():
    shape, overlap = (30, 26, 21), 0.25
    occupied = np.zeros(shape, dtype=bool)
    occupied[3, 4, 5] = occupied[25, 20, 18] = occupied[12, 12, 10] = True
    seen = []

    def recording(crops):
        seen.extend(crops[:, 0].amax(dim=(1, 2, 3)).tolist())  # channel 0 holds each window's start code
        return torch.zeros(crops.shape[0], 3, *crops.shape[2:])

    # Encode every voxel's index so a crop tells where it was taken from: its largest value is its far corner.
    codes = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    image = np.stack([codes, codes]).astype(np.float64)
    with torch.inference_mode():
        blend_windows(
            recording,
            torch.from_numpy(image),
            WINDOW,
            overlap=overlap,
            sw_batch_size=4,
            occupied=torch.from_numpy(occupied),
        )
    expected = set()
    for start in all_starts(shape, WINDOW, overlap):
        box = tuple(slice(s, s + w) for s, w in zip(start, WINDOW, strict=True))
        if occupied[box].any():
            expected.add(codes[tuple(s + w - 1 for s, w in zip(start, WINDOW, strict=True))])
    assert sorted(seen) == sorted(expected)
    assert len(expected) < len(all_starts(shape, WINDOW, overlap))
    assert decoded_windows(occupied, shape, WINDOW, overlap, fit_box=False) == len(expected)
    assert window_count(shape, WINDOW, overlap) == len(all_starts(shape, WINDOW, overlap))


def lesion_study(shape=(24, 40, 40)):
    """A model-space image (2, T, H, W): air everywhere but a small body in one corner with a hot lesion, and
    the occupied mask from HU / SUV as `prepare_input` derives it."""
    ct = np.full(shape, -1000.0, dtype=np.float32)
    pet = np.zeros(shape, dtype=np.float32)
    ct[-9:, -10:, -10:] = 40.0  # soft tissue in the far corner
    pet[-6:-2, -6:-2, -6:-2] = 8.0  # the lesion
    image = np.stack([ct / 1000.0, pet / 4.0]).astype(np.float32)
    return image, occupied_voxels({"ct": ct, "pet": pet})


def lesion_network(crops: torch.Tensor) -> torch.Tensor:
    """Class 1 where PET (channel 1) is hot; class 2 in air (so a decoded window of air would show it)."""
    background = torch.full_like(crops[:, :1], 0.5)
    return torch.cat([background, crops[:, 1:2], -crops[:, :1] - 0.2], dim=1)


@pytest.mark.parametrize("fit_box", [False, True])
def test_a_lesion_in_a_corner_is_kept_and_everything_skipped_is_background(fit_box):
    image, occupied = lesion_study()
    kwargs = dict(overlap=0.25, sw_batch_size=2, device=CPU, dtype=None)
    dense = sliding_window_labels(lesion_network, image, WINDOW, **kwargs)
    fast = sliding_window_labels(lesion_network, image, WINDOW, occupied=occupied, fit_box=fit_box, **kwargs)
    lesion = image[1] > 1.0
    assert (fast[lesion] == 1).all()  # the lesion is kept
    assert (fast[occupied] == dense[occupied]).all()  # inside the body nothing changes
    assert (dense[~occupied] == 2).any()  # the dense path decodes air (class 2 there) ...
    far = np.ones_like(occupied)
    far[-9 - 8 :, -10 - 8 :, -10 - 8 :] = False  # ... and beyond a window's reach of the body
    assert (fast[far] == 0).all()  # ... the fast path leaves background
    assert decoded_windows(occupied, occupied.shape, WINDOW, 0.25, fit_box) < window_count(
        occupied.shape, WINDOW, 0.25
    )


def test_nothing_occupied_gives_background_without_decoding():
    image = np.zeros((2, 12, 12, 12), dtype=np.float32)

    def refuse(crops):
        raise AssertionError("no window should be decoded")

    labels = sliding_window_labels(
        refuse,
        image,
        WINDOW,
        overlap=0.25,
        sw_batch_size=2,
        device=CPU,
        dtype=None,
        occupied=np.zeros((12, 12, 12), dtype=bool),
    )
    assert labels.shape == (12, 12, 12) and not labels.any()


def test_the_body_box_holds_every_occupied_voxel_and_at_least_a_window():
    occupied = np.zeros((30, 40, 50), dtype=bool)
    occupied[10, 38, 3] = occupied[12, 39, 20] = True
    box = body_box(occupied, WINDOW)
    assert occupied[box].sum() == occupied.sum()
    assert all(s.stop - s.start >= w for s, w in zip(box, WINDOW, strict=True))
    assert all(0 <= s.start and s.stop <= n for s, n in zip(box, occupied.shape, strict=True))
    assert box[2] == slice(3, 21)  # the extent along W is wider than a window: kept as it is


def test_occupied_voxels_are_tissue_above_minus_500_hu_or_uptake_above_1_suv():
    ct = np.array([-1024.0, -600.0, -400.0, -1000.0, 60.0])
    pet = np.array([0.0, 0.9, 0.0, 2.5, 0.0])
    assert occupied_voxels({"ct": ct, "pet": pet}).tolist() == [False, False, True, True, True]
    assert occupied_voxels({"ct": ct}).tolist() == [False, False, True, False, True]


def test_what_no_decoded_window_reaches_is_background_with_zero_uncertainty():
    image, occupied = lesion_study()
    logits = sliding_window_logits(
        lesion_network,
        image,
        WINDOW,
        overlap=0.25,
        sw_batch_size=2,
        device=CPU,
        dtype=None,
        occupied=occupied,
    )
    labels, uncertainty = labels_and_uncertainty(logits)
    far = np.ones_like(occupied)
    far[-9 - 8 :, -10 - 8 :, -10 - 8 :] = False  # beyond a window's reach of the body
    assert (labels[far] == 0).all() and (uncertainty[far] == 0).all()
    assert (uncertainty[~far] > 0).any()  # decoded voxels keep their entropy
