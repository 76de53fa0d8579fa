"""False-positive removal: components judged one by one against volumes and uptakes set in the test."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from mafm3.errors import MAFM3Error
from mafm3.imaging.postprocess import remove_false_positives
from mafm3.skills.manifest import PostprocessingConfig

VOXEL_ML = 2.0 * 2.0 * 2.0 / 1000  # 2 mm voxels: 0.008 ml


def _image(array_zyx, spacing=(2.0, 2.0, 2.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing)
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return image


@pytest.fixture
def study():
    """GTVn: a 4x4x4 node (0.512 ml, hot) and a 2x2x2 speck (0.064 ml, hot), a 5x5x5 cold node (1 ml)."""
    labels = np.zeros((20, 20, 30), dtype=np.uint8)
    labels[2:6, 2:6, 2:6] = 2
    labels[10:12, 10:12, 10:12] = 2
    labels[12:17, 12:17, 20:25] = 2
    labels[2:5, 14:17, 14:17] = 1  # GTVp 27 voxels = 0.216 ml, hot
    suv = np.full(labels.shape, 1.0, dtype=np.float32)
    suv[labels > 0] = 6.0
    suv[12:17, 12:17, 20:25] = 1.5  # the cold node
    return _image(labels), _image(suv)


def test_small_components_go_and_the_rest_stays(study):
    labels, _ = study
    cleaned, removed = remove_false_positives(labels, min_component_ml=0.1)
    array = sitk.GetArrayViewFromImage(cleaned)
    assert not array[10:12, 10:12, 10:12].any()
    assert (array[2:6, 2:6, 2:6] == 2).all() and (array[12:17, 12:17, 20:25] == 2).all()
    assert (array[2:5, 14:17, 14:17] == 1).all()  # 0.216 ml >= 0.1 ml
    assert [(r.label, r.reason) for r in removed] == [(2, "smaller than min_component_ml")]
    assert removed[0].volume_ml == pytest.approx(8 * VOXEL_ML)
    assert cleaned.GetDirection() == labels.GetDirection() and cleaned.GetOrigin() == labels.GetOrigin()


def test_components_without_uptake_go_only_when_a_pet_is_given(study):
    labels, suv = study
    cleaned, removed = remove_false_positives(labels, min_component_suv_max=2.5, suv=suv)
    array = sitk.GetArrayViewFromImage(cleaned)
    assert not array[12:17, 12:17, 20:25].any()
    assert (sitk.GetArrayViewFromImage(labels) > 0).sum() - (array > 0).sum() == 125
    assert [(r.label, r.reason) for r in removed] == [(2, "SUVmax below min_component_suv_max")]
    unchanged, none_removed = remove_false_positives(labels, min_component_suv_max=2.5, suv=None)
    assert unchanged is labels and none_removed == []


def test_manifest_section_is_checked():
    assert PostprocessingConfig.from_dict({}) == PostprocessingConfig()
    assert PostprocessingConfig.from_dict({"min_component_ml": 0.5}).to_dict() == {"min_component_ml": 0.5}
    with pytest.raises(ValueError, match="unknown postprocessing key"):
        PostprocessingConfig.from_dict({"min_volume": 1})
    with pytest.raises(ValueError, match="`min_component_ml` must be >= 0"):
        PostprocessingConfig(min_component_ml=-1)


def test_a_manifest_with_a_bad_postprocessing_section_is_refused():
    from mafm3.skills.manifest import SkillManifest

    values = {
        "id": "x",
        "version": "1.0.0",
        "task": "segmentation",
        "modalities": ["CT"],
        "description": "",
        "config": {},
        "preprocessing": {},
        "inference": {},
        "outputs": [],
        "backbone": {"sha256": "0" * 64},
        "weights": {"file": "weights.safetensors", "sha256": "0" * 64},
        "trainable_parameters": 0,
        "postprocessing": {"min_component_ml": "big"},
    }
    with pytest.raises(MAFM3Error, match="invalid `postprocessing` section"):
        SkillManifest.from_dict(values)
