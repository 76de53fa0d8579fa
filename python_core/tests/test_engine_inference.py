"""Sliding-window segmentation: the uncertainty map and the mirror test-time augmentation (float32 on CPU).

Oracles: entropy by hand for known logits; and a law of mirroring: a decoder whose logits weigh the input by
a ramp along the patient's x axis, averaged with its mirror image, weighs it by the ramp's mean, so mirrored
inference must equal plain inference with that constant weight.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch

from mafm3.engine.inference import StageClock, labels_and_uncertainty, segment
from mafm3.imaging.preprocess import PreparedInput
from mafm3.imaging.resample import Grid


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
