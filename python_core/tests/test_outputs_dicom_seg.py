"""DICOM SEG writer: a SEG of an oblique CT series that highdicom reads back slice for slice.

Oracle: the tumour balls are defined in physical LPS space; the expected mask of each CT slice is computed
from that slice's own DICOM header (position, orientation, pixel spacing), independently of the label grid.

Precision: numpy and SimpleITK only (no torch, so no autocast); geometry in float64, tolerances in the units
each assertion names.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from ct_series import slice_pixel_points_lps, write_ct_series
from imaging_phantoms import voxel_points
from pydicom.uid import SegmentationStorage

from mafm3.errors import MAFM3Error
from mafm3.outputs.dicom_seg import write_dicom_seg
from mafm3.results import GTVN, GTVP, SegmentationResult

COLUMNS, ROWS, SLICES = 24, 32, 8
PIXEL_SPACING_MM = (0.9, 0.7)  # (between rows, between columns), as DICOM orders it
SLICE_SPACING_MM = 2.5
ORIGIN_LPS = np.array([-31.5, 12.25, -402.0])
# Oblique: rows run along the first column, columns along the second, slices along the normal.
ORIENTATION = sitk.VersorTransform((0.3, -0.2, 1.0), 0.4).GetMatrix()
TUMOURS_LPS = (
    (GTVP.label, np.array([-25.0, 22.0, -396.0]), 5.0),
    (GTVN.label, np.array([-22.0, 12.0, -390.0]), 3.5),
)


def _expected_labels(points_lps: np.ndarray) -> np.ndarray:
    """Label of each physical point (..., 3): the balls of TUMOURS_LPS, later ones drawn over earlier."""
    labels = np.zeros(points_lps.shape[:-1], dtype=np.uint8)
    for label, centre, radius in TUMOURS_LPS:
        labels[np.linalg.norm(points_lps - centre, axis=-1) <= radius] = label
    return labels


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    """(paths in shuffled order, CT image read by SimpleITK, series UID)."""
    paths, image = write_ct_series(
        tmp_path_factory.mktemp("ct"),
        size_xyz=(COLUMNS, ROWS, SLICES),
        spacing_xyz=(PIXEL_SPACING_MM[1], PIXEL_SPACING_MM[0], SLICE_SPACING_MM),
        origin_lps=ORIGIN_LPS,
        direction=np.array(ORIENTATION).reshape(3, 3),
    )
    return paths, image, pydicom.dcmread(paths[0]).SeriesInstanceUID


def _result_on(ct: sitk.Image) -> SegmentationResult:
    """Label map on the CT grid drawn from the physical balls (points from SimpleITK's index mapping)."""
    labels = sitk.GetImageFromArray(_expected_labels(voxel_points(ct)))
    labels.CopyInformation(ct)
    return SegmentationResult(labels, [GTVP, GTVN], "hecktor-seg-ct", "1.2.0")


def test_ct_fixture_is_the_oblique_grid_it_claims_to_be(ct_series):
    _, ct, _ = ct_series
    assert ct.GetSize() == (COLUMNS, ROWS, SLICES)
    np.testing.assert_allclose(ct.GetDirection(), ORIENTATION, atol=1e-6)
    np.testing.assert_allclose(ct.GetSpacing(), (PIXEL_SPACING_MM[1], PIXEL_SPACING_MM[0], SLICE_SPACING_MM))
    np.testing.assert_allclose(ct.GetOrigin(), ORIGIN_LPS, atol=1e-5)


def test_seg_references_the_ct_series_and_each_frame_reproduces_its_slice(ct_series, tmp_path):
    paths, ct, series_uid = ct_series
    result = _result_on(ct)
    assert {1, 2} <= set(np.unique(sitk.GetArrayFromImage(result.labels)))

    path = write_dicom_seg(result, paths, tmp_path / "segmentation.dcm")

    seg = hd.seg.segread(path)
    assert seg.Modality == "SEG"
    assert seg.SOPClassUID == SegmentationStorage
    assert seg.SegmentationType == "BINARY"
    ct_headers = {
        ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)
    }
    first = next(iter(ct_headers.values()))
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.PatientID == "P1"
    assert [item.SeriesInstanceUID for item in seg.ReferencedSeriesSequence] == [series_uid]
    referenced = {
        item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced <= set(ct_headers)

    uids = list(ct_headers)
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    expected = np.stack([_expected_labels(slice_pixel_points_lps(ct_headers[uid])) for uid in uids])
    assert expected.any()
    np.testing.assert_array_equal(masks, expected)

    # Each stored frame sits where its source slice is (pydicom only, no highdicom).
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(
            [float(v) for v in position],
            [float(v) for v in ct_headers[source].ImagePositionPatient],
            atol=1e-4,
        )


def test_segments_carry_names_codes_colours_and_algorithm(ct_series, tmp_path):
    paths, ct, _ = ct_series
    seg = hd.seg.segread(write_dicom_seg(_result_on(ct), paths, tmp_path / "segmentation.dcm"))

    for item, spec in zip(seg.SegmentSequence, (GTVP, GTVN), strict=True):
        assert item.SegmentLabel == spec.name
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == (spec.category.value, "SCT")
        assert (kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning) == (
            spec.type.value,
            spec.type.scheme,
            spec.type.meaning,
        )
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentAlgorithmName == "MAFM3 hecktor-seg-ct"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("MAFM3 hecktor-seg-ct", "1.2.0")
        rgb = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
        np.testing.assert_allclose(rgb, [255 * c for c in spec.color], atol=2)


def test_non_dicom_input_is_refused_and_nothing_is_written(ct_series, tmp_path):
    _, ct, _ = ct_series
    with pytest.raises(MAFM3Error, match="DICOM SEG needs a DICOM CT input"):
        write_dicom_seg(_result_on(ct), None, tmp_path / "segmentation.dcm")
    assert not (tmp_path / "segmentation.dcm").exists()


def test_a_series_missing_a_slice_is_refused(ct_series, tmp_path):
    paths, ct, _ = ct_series
    with pytest.raises(MAFM3Error, match="has 7 slices but the CT has 8"):
        write_dicom_seg(_result_on(ct), paths[1:], tmp_path / "segmentation.dcm")


def test_a_series_on_another_grid_is_refused(ct_series, tmp_path):
    paths, ct, _ = ct_series
    shifted = sitk.Image(ct)
    shifted.SetOrigin(tuple(np.array(ct.GetOrigin()) + 0.3))
    with pytest.raises(MAFM3Error, match="is not a slice of the CT"):
        write_dicom_seg(_result_on(shifted), paths, tmp_path / "segmentation.dcm")


def test_a_ct_without_its_type2_patient_attributes_still_gets_a_seg(ct_series, tmp_path):
    paths, ct, series_uid = ct_series
    for path in paths:  # as an anonymiser leaves them: birth date and sex removed
        dataset = pydicom.dcmread(path)
        del dataset.PatientBirthDate, dataset.PatientSex
        dataset.save_as(path)
    seg = hd.seg.segread(write_dicom_seg(_result_on(ct), paths, tmp_path / "segmentation.dcm"))
    assert seg.PatientBirthDate == "" and seg.PatientSex == "" and seg.PatientID == "P1"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid


def test_dicom_seg_is_refused_in_one_sentence_where_only_an_old_highdicom_fits(
    ct_series, tmp_path, monkeypatch
):
    """Inside 3D Slicer 5.10 (pydicom 2.4.4) pip can only pick highdicom 0.22, which fails on numpy 2."""
    import mafm3.outputs.dicom_seg as dicom_seg

    real_version = dicom_seg.metadata.version
    monkeypatch.setattr(
        dicom_seg.metadata, "version", lambda name: "0.22.0" if name == "highdicom" else real_version(name)
    )
    paths, ct, _series_uid = ct_series

    with pytest.raises(
        MAFM3Error, match=r"needs highdicom 0\.23 or newer.*this Python has highdicom 0\.22\.0"
    ):
        write_dicom_seg(_result_on(ct), paths, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()
