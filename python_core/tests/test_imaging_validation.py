"""Each input the skills cannot handle is refused with its own one-sentence `MAFM3Error`; good inputs pass.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from imaging_phantoms import OBLIQUE, ct_phantom, make_image, origin_for_centre, pet_phantom

from mafm3.errors import MAFM3Error
from mafm3.imaging.study import Study
from mafm3.imaging.validation import (
    registration_check,
    replace_non_finite,
    require_pet,
    validate_ct,
    validate_overlap,
    validate_pet,
    validate_volume,
)

SIZE, SPACING = (24, 24, 20), (2.0, 2.0, 3.0)


IDENTITY = np.eye(3)


def _ct(direction=IDENTITY, centre=(0.0, 0.0, 0.0)):
    origin = origin_for_centre(SIZE, SPACING, direction, centre)
    return ct_phantom(SIZE, SPACING, origin, direction, axis_lp=centre[:2], radius_mm=15.0)


def _pet(centre=(0.0, 0.0, 0.0), direction=IDENTITY):
    size, spacing = (20, 20, 20), (4.0, 4.0, 4.0)
    return pet_phantom(size, spacing, origin_for_centre(size, spacing, direction, centre), direction, centre)


def _one_sentence(message: str) -> bool:
    return message.endswith(".") and ". " not in message.rstrip(".")


def test_a_ct_and_a_pet_of_the_same_region_pass():
    ct, pet = _ct(OBLIQUE), _pet()
    validate_ct(ct)
    validate_pet(pet)
    assert validate_overlap(ct, pet) > 0.9


@pytest.mark.parametrize(
    "image, expected",
    [
        (sitk.Image([32, 32], sitk.sitkFloat32), "The CT is 2-D, but a 3-D volume is needed"),
        (sitk.Image([20, 20, 20, 3], sitk.sitkFloat32), "The CT is 4-D, but a 3-D volume is needed"),
        (sitk.Image([20, 20, 20], sitk.sitkVectorFloat32, 3), "The CT has 3 values per voxel"),
        (
            sitk.Image([512, 512, 8], sitk.sitkInt16),
            r"512 x 512 x 8 voxels, outside the supported 16-2048 per",
        ),
        (sitk.Image([16, 16, 4096], sitk.sitkUInt8), r"16 x 16 x 4096 voxels, outside the supported"),
    ],
    ids=["2-D", "4-D", "vector", "too-few-slices", "too-many-slices"],
)
def test_volumes_of_the_wrong_shape_are_refused(image, expected):
    with pytest.raises(MAFM3Error, match=expected) as caught:
        validate_volume(image, "The CT")
    assert _one_sentence(str(caught.value))


class _Header:
    """What `validate_volume` reads of an image, for sizes that cannot be allocated in a test and spacings
    SimpleITK refuses to set (a file header can still carry them)."""

    def __init__(self, size, spacing):
        self.size, self.spacing = size, spacing

    def GetDimension(self):
        return 3

    def GetNumberOfComponentsPerPixel(self):
        return 1

    def GetSize(self):
        return self.size

    def GetSpacing(self):
        return self.spacing


def test_too_many_voxels_in_total_are_refused():
    with pytest.raises(MAFM3Error, match="has 1,677,721,600 voxels, more than 1,500,000,000: crop it"):
        validate_volume(_Header((2048, 2048, 400), (0.5, 0.5, 0.5)), "The CT")


@pytest.mark.parametrize(
    "spacing, shown",
    [((1.0, 1.0, 25.0), "1 x 1 x 25"), ((0.0, 1.0, 1.0), "0 x 1 x 1"), ((1, -2, 1), "1 x -2 x 1")],
)
def test_absurd_spacing_is_refused(spacing, shown):
    with pytest.raises(MAFM3Error, match=rf"The CT has a voxel spacing of {shown} mm, outside \(0, 20\] mm"):
        validate_volume(_Header((20, 20, 20), spacing), "The CT")


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(0).uniform(0.0, 1.0, (20, 20, 20)),  # normalised to [0, 1]
        np.random.default_rng(0).uniform(-1.0, 1.0, (20, 20, 20)),  # normalised to [-1, 1]
        np.random.default_rng(0).gamma(2.0, 300.0, (20, 20, 20)),  # MR-like: 0 and up
        np.random.default_rng(0).uniform(0.0, 3000.0, (20, 20, 20)),  # CT stored without its -1024 intercept
        np.full((20, 20, 20), -1000.0),  # nothing but air
    ],
    ids=["unit", "symmetric", "mr", "no-intercept", "air"],
)
def test_intensities_that_are_not_hounsfield_units_are_refused(values):
    with pytest.raises(MAFM3Error, match="The CT does not look like Hounsfield units") as caught:
        validate_ct(make_image(values.astype(np.float32), (1, 1, 1), (0, 0, 0), np.eye(3)))
    assert _one_sentence(str(caught.value))


def test_a_ct_given_as_pet_is_refused_as_negative():
    with pytest.raises(MAFM3Error, match=r"The PET has negative values \(1st percentile -1000 SUV\)"):
        validate_pet(_ct())


def test_pet_noise_slightly_below_zero_passes():
    values = np.random.default_rng(0).normal(1.0, 0.3, (20, 20, 20)).astype(np.float32)
    assert values.min() < 0
    validate_pet(make_image(values, (4, 4, 4), (0, 0, 0), np.eye(3)))


def test_pet_and_ct_far_apart_are_refused():
    with pytest.raises(MAFM3Error, match=r"The PET and CT share only 0 % of their physical extent") as caught:
        validate_overlap(_ct(), _pet(centre=(0.0, 0.0, 500.0)))
    assert _one_sentence(str(caught.value))


def test_overlap_uses_physical_space_not_voxel_indices():
    # Same voxel indices, but the PET's flipped direction sends it to the other side of its origin.
    ct = _ct()
    pet = sitk.Image(ct)
    pet.SetDirection(np.diag([1.0, 1.0, -1.0]).ravel().tolist())
    pet.SetOrigin(ct.TransformIndexToPhysicalPoint((0, 0, 0)))
    with pytest.raises(MAFM3Error, match="share only 5 %"):  # the one slice both contain: 3 mm of 60 mm
        validate_overlap(ct, pet)
    pet.SetOrigin(ct.TransformIndexToPhysicalPoint((0, 0, SIZE[2] - 1)))  # now it covers the same box
    assert validate_overlap(ct, pet) == pytest.approx(1.0)


def test_a_pet_ct_skill_without_pet_is_refused_with_the_alternative():
    study = Study(ct=_ct())
    with pytest.raises(
        MAFM3Error,
        match=r"^Skill 'seg-petct' needs a PET volume and none was given; give a PET, "
        r"or run the CT-only skill 'seg-ct'\.$",
    ):
        require_pet(study, "seg-petct", alternative="seg-ct")
    require_pet(Study(ct=study.ct, pet=_pet()), "seg-petct")


@pytest.fixture(scope="module")
def demo_ct_and_pet():
    from mafm3.demo.study import generate_study

    study = generate_study(3, size="tiny")
    return sitk.Cast(study.ct, sitk.sitkFloat32), study.pet


@pytest.mark.parametrize(
    ("shift_mm", "warned"),
    [((0, 0, 0), False), ((0, 0, 20), True), ((0, -20, 0), True), ((15, 0, 0), True)],
)
def test_a_pet_shifted_against_its_ct_is_found_by_its_body_outline(demo_ct_and_pet, shift_mm, warned):
    ct, pet = demo_ct_and_pet
    moved = sitk.Image(pet)
    moved.SetOrigin(tuple(np.add(pet.GetOrigin(), shift_mm)))
    record, warnings = registration_check(ct, moved)
    assert record["overlap_fraction"] > 0.9  # the boxes alone do not tell
    assert record["misregistered"] is warned  # what the segmentation's QC flag reads
    found = np.asarray(record["best_fit_shift_mm"])
    if not warned:
        assert warnings == [] and found.tolist() == [0, 0, 0] and record["body_outline_dice"] > 0.9
        return
    (warning,) = warnings
    assert "seems misregistered" in warning
    # The fit undoes the shift, to within two 4 mm steps of the body-outline grid.
    assert np.abs(found + np.asarray(shift_mm)).max() <= 8.0


def test_non_finite_voxels_are_masked_with_a_count_or_refused_beyond_one_percent():
    values = np.full((20, 20, 20), 40.0, np.float32)
    values[2, 3, 4], values[5, 6, 7] = np.nan, -np.inf
    image = make_image(values, (1.0, 1.0, 1.0), (0, 0, 0), IDENTITY)
    repaired, warning = replace_non_finite(image, "The CT", -1024.0)
    out = sitk.GetArrayViewFromImage(repaired)
    assert out[2, 3, 4] == out[5, 6, 7] == -1024.0 and np.isfinite(out).all()
    assert np.count_nonzero(out != 40.0) == 2 and "2 voxels (0.025 %, slices 2-5)" in warning
    values[:, :, 0] = np.nan  # 5 % of the voxels
    with pytest.raises(MAFM3Error, match=r"The CT has 402 voxels \(5\.0 %\) that are not numbers"):
        replace_non_finite(make_image(values, (1.0, 1.0, 1.0), (0, 0, 0), IDENTITY), "The CT", -1024.0)
