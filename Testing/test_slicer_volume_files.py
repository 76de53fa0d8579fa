"""MAFM3SlicerLib.volume_files: volume nodes <-> files through Slicer's storage nodes, and how they fail."""

import numpy as np
import pytest
import slicer
from synthetic_volumes import ras_matrix, rotation_about_z, volume_node

from MAFM3SlicerLib.geometry import ijk_to_ras_of
from MAFM3SlicerLib.volume_files import read_volume, volume_suffix, write_volume


@pytest.fixture
def oblique_ct(mrml_scene):
    voxels = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 1000
    return volume_node(
        mrml_scene, voxels, ras_matrix(rotation_about_z(30.0), (0.7, 0.9, 2.5), (5.0, -3.0, 8.0)), "CT"
    )


def test_nrrd_round_trip_gives_identical_voxels_and_geometry(mrml_scene, oblique_ct, tmp_path):
    loaded = read_volume(write_volume(oblique_ct, tmp_path / "ct.nrrd"), mrml_scene)

    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(loaded), slicer.util.arrayFromVolume(oblique_ct)
    )
    np.testing.assert_allclose(ijk_to_ras_of(loaded), ijk_to_ras_of(oblique_ct), rtol=0, atol=1e-12)


def test_nifti_round_trip_keeps_voxels_and_geometry_to_float32_precision(mrml_scene, oblique_ct, tmp_path):
    loaded = read_volume(write_volume(oblique_ct, tmp_path / "ct.nii.gz", compress=True), mrml_scene)

    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(loaded), slicer.util.arrayFromVolume(oblique_ct)
    )
    np.testing.assert_allclose(ijk_to_ras_of(loaded), ijk_to_ras_of(oblique_ct), rtol=0, atol=1e-6)


def test_a_read_volume_is_named_after_its_file_and_can_be_shown(mrml_scene, oblique_ct, tmp_path):
    loaded = read_volume(write_volume(oblique_ct, tmp_path / "planning ct.nii.gz"), mrml_scene)

    assert loaded.GetName() == "planning ct"
    assert loaded.GetDisplayNode() is not None
    assert loaded.GetStorageNode() is None  # not tied to the transient exchange file
    assert read_volume(tmp_path / "planning ct.nii.gz", mrml_scene, name="CT copy").GetName() == "CT copy"


def test_volume_suffix_counts_nii_gz_as_one_suffix():
    assert [volume_suffix(name) for name in ("a.nii.gz", "b.NRRD", "c.d.nii", "e")] == [
        ".nii.gz",
        ".nrrd",
        ".nii",
        "",
    ]


def test_writing_to_an_unknown_format_is_refused_and_writes_nothing(oblique_ct, tmp_path):
    with pytest.raises(ValueError, match=r"must end in one of \.nrrd.*got 'ct\.png'"):
        write_volume(oblique_ct, tmp_path / "ct.png")
    assert list(tmp_path.iterdir()) == []


def test_reading_a_missing_file_says_so_and_adds_nothing(mrml_scene, tmp_path):
    nodes_before = mrml_scene.GetNumberOfNodes()
    with pytest.raises(FileNotFoundError, match="There is no volume file at"):
        read_volume(tmp_path / "missing.nrrd", mrml_scene)
    assert mrml_scene.GetNumberOfNodes() == nodes_before


def test_reading_a_file_that_is_no_image_fails_and_leaves_the_scene_as_it_was(mrml_scene, tmp_path):
    (tmp_path / "notes.nrrd").write_text("not an image")
    nodes_before = mrml_scene.GetNumberOfNodes()
    with pytest.raises(OSError, match="not an image file Slicer can open"):
        read_volume(tmp_path / "notes.nrrd", mrml_scene)
    assert mrml_scene.GetNumberOfNodes() == nodes_before
