"""DICOM RT Structure Set (RTSTRUCT) of the label map, for radiotherapy planning systems.

Each non-empty segment becomes one ROI (name, colour, GTV type, automatic generation) whose contours are
closed planar polygons in patient coordinates (LPS, mm) on the planes of the CT slices it was computed
on; each contour references its CT slice (SOP instance) and the ROI the CT's frame of reference. Holes and
separate islands are separate contours on the same plane, to be read with the even-odd rule, as planning
systems do.

Contours are traced by marching squares (contourpy, matplotlib's contouring library) at level 0.5 on each
slice's mask: the polygon passes halfway between every set voxel centre and its unset neighbours, so a
voxel centre lies inside the polygons exactly when its voxel is set, and mask -> RTSTRUCT -> mask gives the
same voxels back on any grid, oblique or flipped (each point is mapped with the slice's own geometry).

Written with pydicom rather than rt-utils or DicomRTTool: rt-utils (last release 2023) traces with OpenCV
at pixel corners and is known to mishandle holes; DicomRTTool pulls in ITK and OpenCV for what is here
about 150 lines, and neither documents oblique or flipped series. highdicom writes SEG and SR, not RTSTRUCT.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import contourpy
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from mafm3 import __version__
from mafm3.errors import MAFM3Error
from mafm3.imaging.io import write_dicom_file
from mafm3.outputs.dicom_seg import TYPE2_COPIED_ATTRIBUTES, ct_slices_on_grid
from mafm3.outputs.segmentation import ijk_to_lps, label_statistics
from mafm3.results import SegmentationResult

RTSTRUCT_SERIES_NUMBER = 9200
COPIED_ATTRIBUTES = (*TYPE2_COPIED_ATTRIBUTES, "StudyInstanceUID")


def slice_contours(mask_yx: np.ndarray) -> list[np.ndarray]:
    """Closed contours (N, 2) in continuous pixel index (i = column, j = row) around the set pixels of a 2-D
    mask (rows, columns): outer boundaries and holes alike, each without its repeated closing point."""
    padded = np.pad(mask_yx.astype(np.float64), 1)  # closes contours that reach the image's edge
    generator = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
    contours = []
    for line in generator.lines(0.5):
        points = line[:-1] if len(line) > 1 and np.array_equal(line[0], line[-1]) else line
        if len(points) >= 3:
            contours.append(points - 1.0)  # undo the padding
    return contours


def _roi_contours(
    mask_zyx: np.ndarray, labels: sitk.Image, ct_slices: list[pydicom.Dataset]
) -> list[Dataset]:
    """ContourSequence items of one segment: every contour of every slice, in patient coordinates."""
    matrix = ijk_to_lps(labels)
    items = []
    for k in np.flatnonzero(mask_zyx.reshape(mask_zyx.shape[0], -1).any(axis=1)):
        for contour in slice_contours(mask_zyx[k]):
            index = np.column_stack([contour, np.full(len(contour), k), np.ones(len(contour))])
            points = (index @ matrix.T)[:, :3]
            item = Dataset()
            image = Dataset()
            image.ReferencedSOPClassUID = ct_slices[k].SOPClassUID
            image.ReferencedSOPInstanceUID = ct_slices[k].SOPInstanceUID
            item.ContourImageSequence = DicomSequence([image])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourNumber = len(items) + 1
            item.ContourData = [f"{v:.3f}" for v in points.ravel()]  # 0.001 mm, within a DS's 16 characters
            items.append(item)
    return items


def _referenced_frame(ct_slices: list[pydicom.Dataset]) -> Dataset:
    first = ct_slices[0]
    images = []
    for dataset in ct_slices:
        image = Dataset()
        image.ReferencedSOPClassUID = dataset.SOPClassUID
        image.ReferencedSOPInstanceUID = dataset.SOPInstanceUID
        images.append(image)
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = DicomSequence(images)
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management, as the standard says
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = DicomSequence([study])
    return frame


def write_rtstruct(
    result: SegmentationResult,
    ct_dicom_paths: Sequence[str | Path] | None,
    path: str | Path,
    *,
    series_number: int = RTSTRUCT_SERIES_NUMBER,
    generation: str = "AUTOMATIC",
) -> Path:
    """Write an RTSTRUCT with one ROI per non-empty segment, referencing the CT series (see the module
    docstring). `generation`: the ROIs' generation algorithm, AUTOMATIC (a skill's output) or SEMIAUTOMATIC
    (reviewed or edited by a person).

    Raises:
        MAFM3Error: the CT was not read from DICOM, or `ct_dicom_paths` is not the CT's series.
    """
    if not ct_dicom_paths:
        raise MAFM3Error(
            "RTSTRUCT needs a DICOM CT input; the CT was not read from a DICOM series, so load the CT from "
            "its DICOM folder or drop --rtstruct."
        )
    path = Path(path)
    statistics = label_statistics(result)
    ct_slices = ct_slices_on_grid(ct_dicom_paths, result.labels)
    first = ct_slices[0]
    if "FrameOfReferenceUID" not in first:
        raise MAFM3Error(
            "The CT series has no Frame of Reference UID, which RTSTRUCT needs; re-export the CT."
        )
    labels_zyx = sitk.GetArrayViewFromImage(result.labels)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    now = datetime.now()
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.SOPClassUID, dataset.SOPInstanceUID = RTStructureSetStorage, meta.MediaStorageSOPInstanceUID
    for keyword in COPIED_ATTRIBUTES:
        setattr(dataset, keyword, getattr(first, keyword, ""))
    dataset.Modality = "RTSTRUCT"
    dataset.SeriesInstanceUID = generate_uid()
    dataset.SeriesNumber = series_number
    dataset.SeriesDescription = f"MAFM3 {result.skill_id} structures"
    dataset.OperatorsName = ""
    dataset.Manufacturer = "MAFM3"
    dataset.ManufacturerModelName = f"MAFM3 {result.skill_id}"
    dataset.SoftwareVersions = __version__
    dataset.InstanceNumber = 1
    dataset.StructureSetLabel = "MAFM3"
    dataset.StructureSetName = f"{result.skill_id} {result.skill_version}"[:64]
    dataset.StructureSetDate, dataset.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    dataset.ReferencedFrameOfReferenceSequence = DicomSequence([_referenced_frame(ct_slices)])

    rois, contours, observations = [], [], []
    present = [
        spec for spec in sorted(result.segments, key=lambda s: s.label) if statistics.HasLabel(spec.label)
    ]
    for number, spec in enumerate(present, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        roi.ROIName = spec.name
        roi.ROIDescription = spec.description
        roi.ROIGenerationAlgorithm = generation
        roi.ROIGenerationDescription = f"MAFM3 {result.skill_id} {result.skill_version}"[:64]
        rois.append(roi)
        contour = Dataset()
        contour.ReferencedROINumber = number
        contour.ROIDisplayColor = [round(255 * c) for c in spec.color]
        contour.ContourSequence = DicomSequence(
            _roi_contours(labels_zyx == spec.label, result.labels, ct_slices)
        )
        contours.append(contour)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = "GTV" if spec.name.upper().startswith("GTV") else ""
        observation.ROIInterpreter = ""
        observations.append(observation)
    dataset.StructureSetROISequence = DicomSequence(rois)
    dataset.ROIContourSequence = DicomSequence(contours)
    dataset.RTROIObservationsSequence = DicomSequence(observations)
    return write_dicom_file(dataset, path)
