"""DICOM Segmentation (SEG) of the label map, referencing the CT series it was computed from (highdicom).

The label map lies on the CT grid as SimpleITK read it from the DICOM files, so each CT slice is label slice k
for the k where its ImagePositionPatient falls; frame k of the SEG is written against that slice.

highdicom is optional (the `dicom-seg` extra) and imported only here, when a SEG is written: its versions that
work with numpy 2 (0.23 and later) need pydicom 3, and 3D Slicer 5.10 bundles pydicom 2.4.4, which the Slicer
module never replaces. Inside such a Slicer the core runs without it and refuses `--dicom-seg` in one
sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from mafm3 import __version__
from mafm3.errors import MAFM3Error
from mafm3.outputs.segmentation import label_statistics
from mafm3.results import CodedConcept, SegmentationResult

if TYPE_CHECKING:
    import highdicom as hd

SEG_SERIES_NUMBER = 9100
# Tolerances of the slice match: positions are decimal strings of at most 16 characters in DICOM.
_POSITION_TOLERANCE_VOXELS = 1e-2
_COSINE_TOLERANCE = 1e-4
HIGHDICOM_MINIMUM = (0, 23)  # the first highdicom that works with numpy 2 (and needs pydicom 3)


def import_highdicom():
    """highdicom, imported now.

    Raises:
        MAFM3Error: it is not installed, or too old for this numpy (e.g. inside 3D Slicer 5.10, whose
            pydicom 2.4.4 allows only highdicom 0.22).
    """
    try:
        version = metadata.version("highdicom")
    except metadata.PackageNotFoundError:
        version = None
    if version is None or tuple(int(part) for part in version.split(".")[:2]) < HIGHDICOM_MINIMUM:
        found = f"highdicom {version}" if version else "no highdicom"
        raise MAFM3Error(
            "DICOM SEG export needs highdicom 0.23 or newer, which needs pydicom 3, and this Python has "
            f"{found} with pydicom {pydicom.__version__} (3D Slicer 5.10 bundles pydicom 2.4.4); write "
            "segmentation.seg.nrrd instead (in Slicer, export it with the DICOM module), or install "
            "'mafm3[dicom-seg]' in a Python of its own."
        )
    import highdicom

    return highdicom


def _coded(hd, concept: CodedConcept) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(concept.value, concept.scheme, concept.meaning)


def ct_slices_on_grid(ct_dicom_paths: Sequence[str | Path], grid: sitk.Image) -> list[pydicom.Dataset]:
    """The CT slice headers (no pixel data), ordered so that item k is slice k of `grid` (its z index).

    Each slice must have the grid's row/column directions, pixel spacing and size, and its
    ImagePositionPatient must fall on voxel (0, 0, k); every k must be covered exactly once.

    Raises:
        MAFM3Error: the DICOM files are not the series the grid was read from.
    """
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    size_x, size_y, size_z = grid.GetSize()
    spacing_x, spacing_y, _ = grid.GetSpacing()
    slices: dict[int, pydicom.Dataset] = {}
    for path in ct_dicom_paths:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        position = [float(v) for v in dataset.ImagePositionPatient]
        index = np.array(grid.TransformPhysicalPointToContinuousIndex(position))
        k = int(round(index[2]))
        on_grid = (
            (dataset.Rows, dataset.Columns) == (size_y, size_x)
            and np.allclose([float(v) for v in dataset.PixelSpacing], (spacing_y, spacing_x), rtol=1e-4)
            and np.allclose(
                [float(v) for v in dataset.ImageOrientationPatient],
                direction[:, :2].T.ravel(),
                atol=_COSINE_TOLERANCE,
            )
            and np.allclose(index, (0, 0, k), atol=_POSITION_TOLERANCE_VOXELS)
            and 0 <= k < size_z
            and k not in slices
        )
        if not on_grid:
            raise MAFM3Error(
                f"The DICOM file {Path(path).name} is not a slice of the CT the segmentation was made on; "
                "pass exactly the DICOM series the CT was read from."
            )
        slices[k] = dataset
    if len(slices) != size_z:
        raise MAFM3Error(
            f"The DICOM series has {len(slices)} slices but the CT has {size_z}; "
            "pass exactly the DICOM series the CT was read from."
        )
    return [slices[k] for k in range(size_z)]


# Patient and study attributes a SEG copies from its source. They are type 2 (present, possibly empty) in a
# CT, but scanners and anonymisers often drop them, and highdicom then fails on the missing attribute.
TYPE2_COPIED_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def with_type2_attributes(dataset: pydicom.Dataset) -> pydicom.Dataset:
    """`dataset` with each missing type-2 attribute the SEG copies set empty, as the standard allows."""
    for keyword in TYPE2_COPIED_ATTRIBUTES:
        if keyword not in dataset:
            setattr(dataset, keyword, "")
    return dataset


def write_dicom_seg(
    result: SegmentationResult,
    ct_dicom_paths: Sequence[str | Path] | None,
    path: str | Path,
    *,
    series_number: int = SEG_SERIES_NUMBER,
) -> Path:
    """Write a BINARY DICOM SEG, one segment per `SegmentSpec`, derived from the CT series' slices.

    Segment numbers are 1..N in label order (DICOM needs them consecutive); labels, SNOMED category/type,
    colours and the algorithm ("MAFM3 <skill id>", version <skill version>) come from the result.
    Patient and study attributes are copied from the CT by highdicom.

    Raises:
        MAFM3Error: the CT was not read from DICOM, or `ct_dicom_paths` is not the CT's series.
    """
    hd = import_highdicom()
    if not ct_dicom_paths:
        raise MAFM3Error(
            "DICOM SEG needs a DICOM CT input; the CT was not read from a DICOM series, so use "
            "segmentation.seg.nrrd or labels.nii.gz instead of --dicom-seg."
        )
    path = Path(path)
    label_statistics(result)
    source_images = [
        with_type2_attributes(dataset) for dataset in ct_slices_on_grid(ct_dicom_paths, result.labels)
    ]
    segments = sorted(result.segments, key=lambda spec: spec.label)
    segment_number = np.zeros(256, dtype=np.uint8)  # label value -> segment number
    for number, spec in enumerate(segments, start=1):
        segment_number[spec.label] = number
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"MAFM3 {result.skill_id}",
        version=result.skill_version,
        family=codes.cid7162.ArtificialIntelligence,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.name,
            segmented_property_category=_coded(hd, spec.category),
            segmented_property_type=_coded(hd, spec.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=spec.name,
            display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in spec.color)),
        )
        for number, spec in enumerate(segments, start=1)
    ]
    frames = segment_number[sitk.GetArrayViewFromImage(result.labels)]  # (z, y, x): frame k <-> slice k
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MAFM3",
        manufacturer_model_name=f"MAFM3 {result.skill_id}",
        software_versions=__version__,
        device_serial_number="0",
        series_description=f"MAFM3 {result.skill_id} segmentation",
        content_label="MAFM3",
        content_description="Automatic segmentation by MAFM3",
    )
    seg.save_as(path)
    return path
