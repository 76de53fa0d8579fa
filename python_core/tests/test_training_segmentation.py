"""The compact segmentation case cache (`training.segmentation.model_space_case`, `model_space_input`):
the body box only, CT as int16 HU, PET as float16 SUV; the image rebuilt from it is what `prepare_input`
gives.

Oracles: `prepare_input` on the same case (the inference path), cropped to the cached box; tolerances from the
storage types (CT rounded to whole HU: 0.5 HU over the channel's z-score spread; PET float16: 2^-11
relative); every label voxel counted on the whole ROI box.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from mafm3.demo.writers import write_cohort
from mafm3.imaging.io import read_image
from mafm3.imaging.preprocess import PreprocessingConfig, prepare_input, to_model_array
from mafm3.skills.presets import PRESETS
from mafm3.training.datasets import load_cohort
from mafm3.training.model_space import case_study
from mafm3.training.segmentation import model_space_case, model_space_input

WINDOW = (32, 32, 32)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A tiny synthetic case whose label also marks a 2³ node in the air of the CT's corner (as a label drawn
    on a PET/CT that moved between scans could), far from the body and without uptake."""
    folder = tmp_path_factory.mktemp("cohort")
    write_cohort(1, 3, folder / "cohort", "tiny")
    case = list(load_cohort(folder / "cohort").labelled())[0]
    label = read_image(case.label)[0]
    array = sitk.GetArrayFromImage(label)
    assert (sitk.GetArrayFromImage(read_image(case.ct)[0])[:2, :2, :2] < -900).all()  # air there
    array[:2, :2, :2] = 2
    marked = sitk.GetImageFromArray(array)
    marked.CopyInformation(label)
    sitk.WriteImage(marked, str(case.label))
    return case


@pytest.fixture(scope="module")
def config() -> PreprocessingConfig:
    """The demo PET/CT preprocessing (z-scored CT and PET) in a 4 mm box three times the head's width."""
    values = {**PRESETS["demo-seg-petct"].preprocessing, "spacing": [4.0, 4.0, 4.0]}
    return PreprocessingConfig.from_dict({**values, "roi": {"method": "pet", "size_mm": [640, 640, 480]}})


def test_the_cached_box_rebuilds_the_inference_input_within_the_storage_rounding(case, config):
    arrays = model_space_case(case, config, WINDOW)
    prepared = prepare_input(case_study(case), config)
    image, occupied = model_space_input(arrays)
    box = tuple(slice(int(s), int(s) + n) for s, n in zip(arrays["box_start"], image.shape[1:], strict=True))
    assert arrays["ct_hu"].dtype == np.int16 and arrays["pet_suv"].dtype == np.float16
    assert "image" not in arrays and arrays["label"].dtype == np.uint8  # no float32 volume is stored
    assert all(n >= w for n, w in zip(image.shape[1:], WINDOW, strict=True))
    assert image.size < prepared.array.size / 2  # the box around the body, not the whole ROI
    expected = prepared.array[(slice(None), *box)]
    ct_tolerance = 0.5 * (arrays["normalisation"][0][1]) + 1e-5
    np.testing.assert_allclose(image[0], expected[0], atol=ct_tolerance, rtol=0)
    pet_suv = arrays["pet_suv"].astype(np.float32)
    pet_tolerance = (np.abs(pet_suv) * 2.0**-11 + 1e-6) * arrays["normalisation"][1][1] + 1e-5
    assert (np.abs(image[1] - expected[1]) <= pet_tolerance).all()
    assert np.array_equal(occupied, prepared.occupied[box])
    assert occupied.sum() == prepared.occupied.sum()  # nothing with body or uptake is left out


def test_every_label_voxel_is_in_the_cached_box(case, config):
    arrays = model_space_case(case, config, WINDOW)
    grid_label = to_model_array(
        read_image(case.label)[0], prepare_input(case_study(case), config).grid, config.axis_order, "nearest"
    )
    assert (grid_label > 0).sum() > 0
    for value in (1, 2):
        assert (arrays["label"] == value).sum() == (grid_label == value).sum()


def test_background_crop_centres_lie_in_the_body_not_in_the_air_around_it(case, config):
    arrays = model_space_case(case, config, WINDOW)
    assert all(n >= w for n, w in zip(arrays["ct_hu"].shape, WINDOW, strict=True))  # the crops pad nothing,
    ct, label = arrays["ct_hu"].ravel(), arrays["label"][0].ravel()  # so centres index the box itself
    assert np.mean(ct[label == 0] < -900) > 0.3  # much of the box's background is air (about -1000 HU)
    centres = arrays["bg"]
    assert centres.size > 1000 and (label[centres] == 0).all()
    assert (ct[centres] > -900).all()


def test_the_authors_background_centres_are_where_their_normalised_ct_is_positive(case, config):
    """`image_threshold=0` on the authors' CT-only normalisation, [-1024, 1024] HU -> [-1, 1]: HU > 0."""
    values = {
        **config.to_dict(),
        "channels": ["ct"],
        "ct_normalisation": "window",
        "ct_window": [-1024, 1024],
    }
    arrays = model_space_case(case, PreprocessingConfig.from_dict(values), WINDOW)
    ct, label = arrays["ct_hu"].ravel(), arrays["label"][0].ravel()
    centres = arrays["bg_authors"]
    assert centres.size > 100 and (label[centres] == 0).all()
    assert (ct[centres] >= 0).all()  # HU > 0, rounded to whole HU in the cache
    candidates = np.flatnonzero((label == 0) & (ct >= 1))  # surely above 0 HU before rounding
    assert np.isin(candidates, centres).all() or centres.size == 20_000  # all of them, unless sampled
