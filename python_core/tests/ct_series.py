"""A CT series written as single-frame DICOM files on any grid (oblique, flipped), for the DICOM writers.

The grid is given as SimpleITK would read it back: origin = the first slice's position, direction columns =
(row direction, column direction, slice step direction). A slice step against row x column makes the
"flipped" (left-handed) series that scanners write when slices run feet to head against the normal.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from mafm3.imaging.io import write_dicom_file


def write_ct_series(
    folder: Path,
    *,
    size_xyz: tuple[int, int, int],
    spacing_xyz: tuple[float, float, float],
    origin_lps,
    direction: np.ndarray,
) -> tuple[list[Path], sitk.Image]:
    """Write the series in shuffled file order; returns the paths and the CT as SimpleITK reads it."""
    columns, rows, slices = size_xyz
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    order = list(range(slices))
    random.Random(7).shuffle(order)
    paths = []
    for k in order:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{generate_uid()}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.Manufacturer = "CT", "test"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            "Test^Patient",
            "P1",
            "19600101",
            "F",
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", "A1"
        ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 2, k + 1
        position = np.asarray(origin_lps) + k * spacing_xyz[2] * direction[:, 2]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [spacing_xyz[1], spacing_xyz[0]]  # (between rows, between columns)
        ds.SliceThickness = spacing_xyz[2]
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = (
            rows,
            columns,
            1,
            "MONOCHROME2",
        )
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = np.full((rows, columns), 1000 + k, dtype=np.int16).tobytes()
        write_dicom_file(ds, path)
        paths.append(path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return paths, reader.Execute()


def slice_pixel_points_lps(dataset: pydicom.Dataset) -> np.ndarray:
    """Physical point of every pixel (rows, columns, 3) of one slice, from its own header."""
    position = np.array([float(v) for v in dataset.ImagePositionPatient])
    orientation = np.array([float(v) for v in dataset.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
    r, c = np.meshgrid(np.arange(dataset.Rows), np.arange(dataset.Columns), indexing="ij")
    return (
        position
        + c[..., None] * column_spacing * orientation[:3]
        + r[..., None] * row_spacing * orientation[3:]
    )
