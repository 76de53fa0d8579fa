"""`generate_study`: a deterministic synthetic PET/CT study with plausible anatomy, lesions and uptake.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

import numpy as np
import pytest
import SimpleITK as sitk

from mafm3.demo.anatomy import Tissue
from mafm3.demo.patients import sample_patient
from mafm3.demo.study import generate_study

# Typical unenhanced CT numbers (HU) of each tissue, from radiology textbooks; checked on eroded masks.
HU_RANGES = {
    Tissue.OUTSIDE: (-1024, -950),
    Tissue.AIRWAY: (-1024, -900),
    Tissue.FAT: (-150, -50),
    Tissue.MUSCLE: (30, 60),
    Tissue.BRAIN: (20, 45),
    Tissue.PAROTID: (-20, 40),
    Tissue.SUBMANDIBULAR: (20, 60),
    Tissue.THYROID: (70, 140),
    Tissue.VESSEL: (30, 50),
    Tissue.CANCELLOUS_BONE: (150, 400),
    Tissue.CORTICAL_BONE: (700, 1300),
}


@pytest.fixture(scope="module")
def seed():
    return next(s for s in range(100) if len(sample_patient(s).nodes) >= 2)


@pytest.fixture(scope="module")
def study(seed):
    return generate_study(seed, size="tiny")


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _eroded(mask: sitk.Image, radius=(1, 1, 1)) -> np.ndarray:
    return _array(sitk.BinaryErode(mask, radius)) > 0


def _hu(study, tissue: Tissue) -> np.ndarray:
    return _array(study.ct)[_eroded(study.tissues == int(tissue))].astype(float)


def test_same_seed_gives_identical_arrays_and_another_seed_different_ones(study, seed):
    again, other = generate_study(seed, size="tiny"), generate_study(seed + 1, size="tiny")
    for name in ("ct", "pet", "labels"):
        assert np.array_equal(_array(getattr(again, name)), _array(getattr(study, name)))
        assert getattr(again, name).GetOrigin() == getattr(study, name).GetOrigin()
        assert not np.array_equal(_array(getattr(other, name)), _array(getattr(study, name)))


def test_ct_is_int16_hu_on_an_lps_grid_and_the_label_map_shares_it(study):
    ct, labels = study.ct, study.labels
    assert ct.GetPixelID() == sitk.sitkInt16 and labels.GetPixelID() == sitk.sitkUInt8
    assert ct.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert all(abs(o) > 1 for o in ct.GetOrigin())
    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(labels, get)() == getattr(ct, get)()
    assert set(np.unique(_array(labels))) <= {0, 1, 2}


@pytest.mark.parametrize("tissue", list(HU_RANGES), ids=lambda t: t.name)
def test_each_tissue_has_its_textbook_ct_number(study, tissue):
    low, high = HU_RANGES[tissue]
    assert low <= np.median(_hu(study, tissue)) <= high


def test_ct_noise_is_at_least_15_hu_and_matches_the_centre(study):
    brain = _hu(study, Tissue.BRAIN)  # nearly uniform tissue: the spread is the noise
    assert brain.std() >= 15
    assert brain.std() == pytest.approx(study.patient.centre.ct_noise_hu, rel=0.15)


def test_primary_tumour_has_its_volume_and_only_subtle_ct_contrast(study):
    voxel_ml = np.prod(study.ct.GetSpacing()) / 1000
    gtvp = _array(study.labels) == 1
    volume = gtvp.sum() * voxel_ml
    assert 5 - voxel_ml <= volume <= 60 + voxel_ml
    assert volume == pytest.approx(study.patient.tumour_volume_ml, abs=voxel_ml)
    core = _eroded(study.labels == 1, radius=(1, 1, 0))
    contrast = _array(study.ct)[core].mean() - _hu(study, Tissue.MUSCLE).mean()
    assert 0 < contrast <= 30


def test_primary_tumour_is_one_piece_beside_the_airway(study):
    components = sitk.ConnectedComponentImageFilter()
    components.Execute(study.labels == 1)
    assert components.GetObjectCount() == 1
    near = _array(sitk.BinaryDilate(study.labels == 1, [2, 2, 1])) > 0
    assert (near & (_array(study.tissues) == Tissue.AIRWAY)).any()


def test_nodes_are_separate_and_8_to_25_mm_across(study):
    nodes = sitk.RelabelComponent(sitk.ConnectedComponent(study.labels == 2))
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(nodes)
    assert len(shapes.GetLabels()) == len(study.patient.nodes) >= 2
    for label in shapes.GetLabels():
        assert 8 <= 2 * shapes.GetEquivalentSphericalRadius(label) <= 25


def test_pet_has_its_own_coarser_grid_covering_the_ct(study):
    ct, pet = study.ct, study.pet
    assert pet.GetPixelID() == sitk.sitkFloat32
    spacing_x, spacing_y, spacing_z = pet.GetSpacing()
    assert 3.5 <= spacing_x <= 4.5 and 3.5 <= spacing_y <= 4.5 and 3.0 <= spacing_z <= 4.5  # scanner-like
    assert np.linalg.norm(np.subtract(pet.GetOrigin(), ct.GetOrigin())) > 1
    for image_corner in ((0, 0, 0), tuple(n - 1 for n in ct.GetSize())):
        point = ct.TransformIndexToPhysicalPoint(image_corner)
        index = pet.TransformPhysicalPointToContinuousIndex(point)
        assert all(-0.5 <= i <= n - 0.5 for i, n in zip(index, pet.GetSize(), strict=True))
    assert _array(pet).min() >= 0


def test_pet_uptake_is_high_in_lesions_and_brain_and_low_in_soft_tissue(study):
    suv = _array(sitk.Resample(study.pet, study.ct, sitk.Transform(), sitk.sitkLinear, 0.0))
    labels, tissues = _array(study.labels), _array(study.tissues)
    muscle = np.median(suv[_eroded(study.tissues == int(Tissue.MUSCLE))])
    assert 0.5 <= muscle <= 1.5
    assert suv[labels == 1].max() >= 4 and suv[labels == 1].mean() > 2 * muscle
    assert suv[labels == 2].mean() > 1.5 * muscle
    assert np.median(suv[tissues == Tissue.BRAIN]) > 3 * muscle  # the physiological confounder


def test_unknown_size_is_refused():
    with pytest.raises(ValueError, match="`size` must be one of tiny, small, realistic"):
        generate_study(0, size="huge")
