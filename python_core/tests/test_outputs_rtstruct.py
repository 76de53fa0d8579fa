"""RTSTRUCT writer: mask -> RTSTRUCT -> mask on an oblique, flipped CT series, read back independently.

Oracle: the shapes are defined in physical LPS space and the expected mask of each CT slice comes from that
slice's own DICOM header. The reader below is independent of the writer: it maps each contour into the
referenced slice's pixel coordinates with that slice's header and fills it with matplotlib's point-in-polygon
test under the even-odd rule (holes are contours inside contours), not with contourpy.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from ct_series import slice_pixel_points_lps, write_ct_series
from imaging_phantoms import voxel_points
from matplotlib.path import Path as PolygonPath

from mafm3.errors import MAFM3Error
from mafm3.outputs.rtstruct import write_rtstruct
from mafm3.results import GTVN, GTVP, SegmentationResult

SIZE_XYZ, SPACING_XYZ = (40, 36, 16), (0.8, 0.9, 1.5)
ORIGIN_LPS = np.array([-14.0, -9.0, -410.0])
ROTATION = np.array(sitk.VersorTransform((0.3, -0.2, 1.0), 0.4).GetMatrix()).reshape(3, 3)
# Flipped: rows run to the patient's right and columns posteriorly, so slices step inferiorly (before the
# rotation); then oblique.
ROW, COLUMN = ROTATION @ [-1.0, 0.0, 0.0], ROTATION @ [0.0, 1.0, 0.0]
DIRECTION = np.column_stack([ROW, COLUMN, np.cross(ROW, COLUMN)])
CENTRE = ORIGIN_LPS + DIRECTION @ (np.array(SIZE_XYZ) / 2 * SPACING_XYZ)
NODES = (CENTRE + DIRECTION @ [-9.0, 7.0, 0.0], CENTRE + DIRECTION @ [9.0, 8.0, 3.0])


def expected_labels(points: np.ndarray) -> np.ndarray:
    """GTVp: a shell (radius 9 mm, hollow within 4 mm: a hole on its middle slices); GTVn: two 3 mm nodes."""
    distance = np.linalg.norm(points - CENTRE, axis=-1)
    labels = np.where((distance <= 9.0) & (distance > 4.0), GTVP.label, 0).astype(np.uint8)
    for node in NODES:
        labels[np.linalg.norm(points - node, axis=-1) <= 3.0] = GTVN.label
    return labels


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct")
    return write_ct_series(
        folder, size_xyz=SIZE_XYZ, spacing_xyz=SPACING_XYZ, origin_lps=ORIGIN_LPS, direction=DIRECTION
    )


def _result_on(image: sitk.Image) -> SegmentationResult:
    labels = sitk.GetImageFromArray(expected_labels(voxel_points(image)))
    labels.CopyInformation(image)
    return SegmentationResult(labels, [GTVP, GTVN], "demo-seg-petct", "1.0.0")


def read_masks(path, headers: dict[str, pydicom.Dataset]) -> dict[str, dict[str, np.ndarray]]:
    """{ROI name: {referenced CT SOP instance UID: mask (rows, columns)}}, by the even-odd rule."""
    rtstruct = pydicom.dcmread(path)
    names = {roi.ROINumber: roi.ROIName for roi in rtstruct.StructureSetROISequence}
    masks: dict[str, dict[str, np.ndarray]] = {}
    for roi in rtstruct.ROIContourSequence:
        per_slice = masks.setdefault(names[roi.ReferencedROINumber], {})
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
            header = headers[uid]
            position = np.array([float(v) for v in header.ImagePositionPatient])
            orientation = np.array([float(v) for v in header.ImageOrientationPatient])
            row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
            relative = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3) - position
            normal = np.cross(orientation[:3], orientation[3:])
            assert np.abs(relative @ normal).max() < 1e-2  # the contour lies on its slice's plane
            polygon = np.column_stack(
                [relative @ orientation[:3] / column_spacing, relative @ orientation[3:] / row_spacing]
            )
            r, c = np.meshgrid(np.arange(header.Rows), np.arange(header.Columns), indexing="ij")
            inside = PolygonPath(polygon).contains_points(np.column_stack([c.ravel(), r.ravel()]))
            mask = per_slice.setdefault(uid, np.zeros((header.Rows, header.Columns), dtype=bool))
            mask ^= inside.reshape(mask.shape)
    return masks


def test_mask_survives_rtstruct_round_trip_on_an_oblique_flipped_ct_with_holes(ct, tmp_path):
    paths, image = ct
    result = _result_on(image)
    written = write_rtstruct(result, paths, tmp_path / "segmentation.rtstruct.dcm")
    headers = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in paths)}
    masks = read_masks(written, headers)

    holes_seen = 0
    for spec in (GTVP, GTVN):
        overlap = truth_total = read_total = 0
        for uid, header in headers.items():
            truth = expected_labels(slice_pixel_points_lps(header)) == spec.label
            read = masks[spec.name].get(uid, np.zeros_like(truth))
            overlap += (truth & read).sum()
            truth_total += truth.sum()
            read_total += read.sum()
        assert truth_total > 50
        assert 2 * overlap / (truth_total + read_total) >= 0.99, spec.name
    for uid, header in headers.items():
        points = slice_pixel_points_lps(header)
        inside_hole = np.linalg.norm(points - CENTRE, axis=-1) < 3.0
        if inside_hole.any() and uid in masks[GTVP.name]:
            assert not masks[GTVP.name][uid][inside_hole].any()  # the hole stayed a hole
            holes_seen += 1
    assert holes_seen >= 2


def test_rtstruct_references_the_ct_series_and_names_and_colours_each_roi(ct, tmp_path):
    paths, image = ct
    written = write_rtstruct(_result_on(image), paths, tmp_path / "rt.dcm")
    rtstruct = pydicom.dcmread(written)
    ct_header = pydicom.dcmread(paths[0])
    assert rtstruct.Modality == "RTSTRUCT" and rtstruct.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    assert rtstruct.StudyInstanceUID == ct_header.StudyInstanceUID
    assert rtstruct.PatientID == ct_header.PatientID
    frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == ct_header.FrameOfReferenceUID
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct_header.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in series.ContourImageSequence}
    assert referenced == {pydicom.dcmread(p).SOPInstanceUID for p in paths}
    rois = {roi.ROINumber: roi for roi in rtstruct.StructureSetROISequence}
    assert [roi.ROIName for roi in rois.values()] == ["GTVp", "GTVn"]
    assert all(roi.ReferencedFrameOfReferenceUID == ct_header.FrameOfReferenceUID for roi in rois.values())
    colours = {
        rois[c.ReferencedROINumber].ROIName: list(c.ROIDisplayColor) for c in rtstruct.ROIContourSequence
    }
    assert colours == {"GTVp": [217, 41, 41], "GTVn": [41, 115, 217]}
    assert {o.RTROIInterpretedType for o in rtstruct.RTROIObservationsSequence} == {"GTV"}


def test_rtstruct_without_a_dicom_ct_is_refused_with_what_to_do(ct, tmp_path):
    _, image = ct
    with pytest.raises(MAFM3Error, match="RTSTRUCT needs a DICOM CT input"):
        write_rtstruct(_result_on(image), None, tmp_path / "rt.dcm")
    assert not (tmp_path / "rt.dcm").exists()


def test_mafm3_rtstruct_turns_a_reviewed_label_map_into_an_rtstruct_and_refuses_another_grid(
    ct, tmp_path, capsys
):
    from mafm3.cli import main

    paths, image = ct
    labels_path = tmp_path / "labels.nrrd"
    sitk.WriteImage(_result_on(image).labels, str(labels_path))
    out = tmp_path / "reviewed.dcm"
    assert (
        main(["rtstruct", "--ct", str(paths[0].parent), "--labels", str(labels_path), "--out", str(out)]) == 0
    )
    rtstruct = pydicom.dcmread(out)
    assert [roi.ROIName for roi in rtstruct.StructureSetROISequence] == ["GTVp", "GTVn"]
    assert {roi.ROIGenerationAlgorithm for roi in rtstruct.StructureSetROISequence} == {"SEMIAUTOMATIC"}

    sitk.WriteImage(sitk.Image([5, 5, 5], sitk.sitkUInt8), str(labels_path))
    capsys.readouterr()
    assert (
        main(["rtstruct", "--ct", str(paths[0].parent), "--labels", str(labels_path), "--out", str(out)]) == 1
    )
    assert "export it on the CT grid" in capsys.readouterr().err
