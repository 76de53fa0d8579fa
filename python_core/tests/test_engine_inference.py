"""Sliding windows that skip what holds nothing (`engine.inference`): the blend equals MONAI's where every
window is decoded, the windows left out are exactly those without an occupied voxel, and a lesion in a
corner is kept.

Oracles: MONAI's `sliding_window_inference` (a second implementation of the same blend), the predictor x + 1
on an arange volume (output = input + 1 wherever a window reached), and the occupied windows enumerated by
brute force in numpy. All in float32; equalities to MONAI within 1e-5.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from mafm3.engine.inference import (
    blend_windows,
    body_box,
    decoded_windows,
    sliding_window_labels,
    window_count,
)
from mafm3.imaging.preprocess import occupied_voxels

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


@pytest.mark.parametrize("shape", [(20, 17, 12), (8, 30, 6)])  # the second is thinner than the window
def test_with_every_window_decoded_the_blend_equals_monai(shape):
    network = smooth_network()
    volume = torch.randn((2, *shape), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours, covered = blend_windows(network, volume, WINDOW, overlap=0.25, sw_batch_size=3)
        reference = sliding_window_inference(volume[None], WINDOW, 3, network, overlap=0.25, mode="gaussian")
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
