"""Preprocessing and back: a mask drawn on the CT returns unchanged onto its grid, whatever its geometry.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from imaging_phantoms import (
    FLIPPED,
    LEFT_HANDED,
    OBLIQUE,
    PERMUTED,
    ct_phantom,
    differs_only_on_label_boundaries,
    origin_for_centre,
    pet_phantom,
    sphere_mask,
)

from mafm3.errors import MAFM3Error
from mafm3.imaging.preprocess import (
    PreprocessingConfig,
    labels_to_ct_grid,
    normalise,
    prepare_input,
    to_model_array,
)
from mafm3.imaging.study import Study

TUMOUR_LPS = np.array([31.5, -17.25, 612.0])  # far from the origin on purpose
NODE_LPS = TUMOUR_LPS + (9.0, 6.0, -10.0)

CASES = {  # direction, size (x, y, z), spacing (mm)
    "oblique": (OBLIQUE, (40, 36, 24), (2.0, 2.0, 3.0)),
    "flipped": (FLIPPED, (48, 40, 20), (1.5, 2.0, 4.0)),
    "permuted": (PERMUTED, (36, 20, 44), (2.0, 4.0, 1.6)),
    "anisotropic": (np.eye(3), (96, 90, 18), (0.8, 0.8, 5.0)),
    "left-handed": (LEFT_HANDED, (36, 36, 30), (2.0, 2.0, 2.0)),
}


def _study(direction, size, spacing, with_pet=True) -> tuple[Study, sitk.Image]:
    """CT centred a little off the tumour, its tumour (1) and node (2) mask, and a PET on its own coarser grid
    whose hot spot is the tumour, in the PET's superior quarter."""
    ct_centre = TUMOUR_LPS + (3.0, -2.0, 4.0)
    origin = origin_for_centre(size, spacing, direction, ct_centre)
    ct = ct_phantom(size, spacing, origin, direction, axis_lp=ct_centre[:2], radius_mm=30.0)
    mask = sphere_mask(ct, TUMOUR_LPS, 8.0, label=1)
    mask = sitk.Maximum(mask, sphere_mask(ct, NODE_LPS, 5.0, label=2))
    pet = None
    if with_pet:
        pet_size, pet_spacing = (22, 24, 30), (4.0, 3.7, 3.3)
        pet_origin = origin_for_centre(pet_size, pet_spacing, np.eye(3), TUMOUR_LPS + (1.3, -0.7, -35.0))
        pet = pet_phantom(pet_size, pet_spacing, pet_origin, np.eye(3), TUMOUR_LPS, sigma_mm=5.0)
    return Study(ct=ct, pet=pet), mask


def _half_of_oriented_spacing(ct: sitk.Image) -> tuple[float, float, float]:
    """A model spacing dividing the CT's along its LPS-oriented axes (2 model voxels per CT voxel)."""
    return tuple(s / 2 for s in sitk.DICOMOrient(ct, "LPS").GetSpacing())


def _round_trip(study, mask, config):
    prepared = prepare_input(study, config)
    labels_model = to_model_array(
        mask, prepared.grid, prepared.axis_order, "nearest"
    )  # the pass-through skill
    return prepared, labels_model, labels_to_ct_grid(labels_model, prepared, study.ct)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("axis_order", ["zyx", "yxz"])
def test_a_mask_drawn_on_the_ct_comes_back_on_its_grid_identical_or_oblique_up_to_its_boundary(
    name, axis_order
):
    study, mask = _study(*CASES[name])
    config = PreprocessingConfig(
        spacing_mm=_half_of_oriented_spacing(study.ct),
        axis_order=axis_order,
        channels=("ct", "pet"),
        roi_method="pet",
        roi_size_mm=(44.0, 40.0, 180.0),  # crops in-plane, pads along S
    )
    prepared, labels_model, back = _round_trip(study, mask, config)

    # Something happened on the way: 2 x 2 x 2 model voxels per CT voxel, in another array order.
    mask_array = sitk.GetArrayFromImage(mask)
    assert set(np.unique(mask_array)) == {0, 1, 2}
    assert prepared.array.shape == (2, *labels_model.shape) and labels_model.shape != mask_array.shape
    assert np.count_nonzero(labels_model == 1) > 6 * np.count_nonzero(mask_array == 1)
    # ... and it comes back on the CT's exact grid, voxel for voxel; an oblique CT went through the patient's
    # axes (a rotated grid), so there only voxels on a label's boundary may change.
    assert back.GetPixelID() == sitk.sitkUInt8
    assert back.GetSize() == study.ct.GetSize() and back.GetSpacing() == study.ct.GetSpacing()
    assert back.GetOrigin() == study.ct.GetOrigin() and back.GetDirection() == study.ct.GetDirection()
    back_array = sitk.GetArrayFromImage(back)
    if name != "oblique":
        np.testing.assert_array_equal(back_array, mask_array)
        return
    assert differs_only_on_label_boundaries(back_array, mask_array)
    for label in (1, 2):
        shared = np.count_nonzero((back_array == label) & (mask_array == label))
        assert (
            2 * shared / (np.count_nonzero(back_array == label) + np.count_nonzero(mask_array == label))
            > 0.85
        )


@pytest.mark.parametrize("name", ["oblique", "flipped"])
def test_pet_channel_lies_on_the_ct_channel_in_model_space(name):
    study, mask = _study(*CASES[name])
    config = PreprocessingConfig(
        spacing_mm=_half_of_oriented_spacing(study.ct),
        channels=("ct", "pet"),
        roi_size_mm=(44.0, 40.0, 180.0),
    )
    prepared, labels_model, _ = _round_trip(study, mask, config)
    assert prepared.roi["method"] == "pet"
    np.testing.assert_allclose(prepared.roi["centre_lps"], TUMOUR_LPS, atol=2.0)
    pet_peak = np.unravel_index(prepared.array[1].argmax(), prepared.shape)
    tumour_centre = np.argwhere(labels_model == 1).mean(axis=0)
    spacing_thw = [prepared.grid.spacing["xyz".index(axis)] for axis in prepared.axis_order]
    # The resampled peak is at most half a PET voxel diagonal (3.2 mm) from the true peak; G9's misaligned
    # crops were off by the PET/CT origin difference (here about 40 mm).
    assert np.linalg.norm((np.asarray(pet_peak) - tumour_centre) * spacing_thw) < 3.5  # mm


def test_ct_outside_the_scan_is_air_and_window_maps_to_minus_one():
    study, _ = _study(*CASES["oblique"])
    config = PreprocessingConfig(spacing_mm=(1.0, 1.0, 1.5), roi_size_mm=(44.0, 40.0, 180.0))
    prepared = prepare_input(study, config)
    ct = prepared.array[0]
    assert prepared.array.shape[0] == 1
    # The 72 mm CT lies in a 180 mm box: whole axial slices are padding, at the value of -1024 HU.
    padded_slices = [t for t in range(ct.shape[0]) if (ct[t] == -1.0).all()]
    assert len(padded_slices) > ct.shape[0] / 3
    assert ct.max() == pytest.approx((40 + 1024) / 1024 - 1)  # soft tissue, 40 HU


def test_the_ct_clip_crop_pads_the_same_number_of_air_slices_at_both_ends():
    """roi "centre" (CT-CLIP's crop, the `-authors` zero-shot skill): a CT of 24 slices of 3 mm in a 144 mm
    box of 3 mm slices (48) lies in its middle 24 slices, 12 slices of air on each side (the CT's own lattice,
    so no slice is partly inside)."""
    study, _ = _study(np.eye(3), (40, 36, 24), (2.0, 2.0, 3.0))
    config = PreprocessingConfig(
        spacing_mm=(2.0, 2.0, 3.0), roi_method="centre", roi_size_mm=(80.0, 72.0, 144.0)
    )
    ct = prepare_input(study, config).array[0]  # (T = z, H = y, W = x) in the default "zyx" order
    air = [t for t in range(ct.shape[0]) if (ct[t] == -1.0).all()]
    assert ct.shape == (48, 36, 40) and air == list(range(12)) + list(range(36, 48))


@pytest.mark.parametrize("storage", ["RAS", "SAL", "IRP"])
def test_the_same_ct_stored_in_another_axis_order_gives_the_same_arrays(storage):
    study, _ = _study(*CASES["oblique"])
    twin = Study(ct=sitk.DICOMOrient(study.ct, storage), pet=study.pet)  # same voxels, other array order
    assert twin.ct.GetDirection() != study.ct.GetDirection()
    # A spacing that puts no model voxel exactly on the CT's outer edge, where rounding decides in or out.
    config = PreprocessingConfig(spacing_mm=(0.7, 0.9, 1.3), channels=("ct", "pet"), roi_size_mm=(44, 40, 90))
    expected, actual = prepare_input(study, config), prepare_input(twin, config)
    assert actual.grid.size == expected.grid.size and actual.grid.direction == expected.grid.direction
    np.testing.assert_allclose(actual.grid.origin, expected.grid.origin, atol=1e-9)
    np.testing.assert_allclose(actual.array, expected.array, atol=1e-5)


def test_a_non_dividing_spacing_gives_the_mask_back_up_to_its_boundary():
    study, mask = _study(np.eye(3), (60, 60, 40), (0.9, 0.9, 0.9), with_pet=False)
    config = PreprocessingConfig(spacing_mm=(0.75, 0.75, 1.5), roi_method="ct", roi_size_mm=(40, 40, 40))
    prepared, _, back = _round_trip(study, mask, config)
    assert prepared.roi["method"] == "ct"
    original, returned = sitk.GetArrayViewFromImage(mask) == 1, sitk.GetArrayViewFromImage(back) == 1
    dice = 2 * (original & returned).sum() / (original.sum() + returned.sum())
    assert 0.9 < dice < 1.0


def test_a_pet_channel_without_pet_is_refused():
    study, _ = _study(*CASES["oblique"], with_pet=False)
    with pytest.raises(MAFM3Error, match="Skill 'seg-petct' needs a PET volume and none was given"):
        prepare_input(study, PreprocessingConfig(channels=("ct", "pet")), skill_name="seg-petct")


def test_window_and_zscore_normalisation_by_hand():
    hu = np.array([-2000.0, -1024.0, 0.0, 512.0, 1024.0, 3000.0])
    np.testing.assert_allclose(normalise(hu, "window", (-1024, 1024)), [-1, -1, 0, 0.5, 1, 1])
    np.testing.assert_allclose(
        normalise(np.array([1.0, 2.0, 3.0]), "zscore", (0, 1)), [-1.2247449, 0, 1.2247449]
    )
    assert normalise(hu, "window", (-1024, 1024)).dtype == np.float32


def test_config_reads_the_manifest_section_and_writes_it_back():
    section = {
        "spacing": [0.75, 0.75, 1.5],
        "orientation": "LPS",
        "axis_order": "zxy",
        "channels": ["ct", "pet"],
        "ct_window": [-1000, 1000],
        "pet_normalisation": "zscore",
        "roi": {"method": "pet", "size_mm": [360, 360, 360]},
    }
    config = PreprocessingConfig.from_dict(section)
    assert (
        config.axis_order == "zxy"
        and config.channels == ("ct", "pet")
        and config.ct_window_hu == (-1000, 1000)
    )
    assert PreprocessingConfig.from_dict(config.to_dict()) == config
    assert {key: config.to_dict()[key] for key in section} == section


@pytest.mark.parametrize(
    "section, message",
    [
        ({"spacing": [0.75, 0.75]}, "`spacing` must be 3 positive numbers"),
        ({"axis_order": "zzx"}, "`axis_order` must be a permutation of 'xyz'"),
        ({"orientation": "LPA"}, "`orientation` must name one of L/R, A/P and I/S each"),
        ({"channels": ["pet"]}, "`channels` must be"),
        ({"roi": {"method": "brain"}}, "`roi.method` must be one of"),
        ({"roi": {"centre": [0, 0, 0]}}, "unknown `roi` key"),
        ({"ct_window": [100, -100]}, "`ct_window_hu` must be"),
        ({"colour": "red"}, "unknown preprocessing key `colour`"),
    ],
)
def test_bad_manifest_sections_are_refused(section, message):
    with pytest.raises(ValueError, match=message):
        PreprocessingConfig.from_dict(section)
