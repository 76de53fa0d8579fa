"""Images the core tests build: oblique, flipped and permuted grids, CT and PET phantoms, masks, DICOM series
written with pydicom, and the engine's small oblique CT study. Not tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mafm3.imaging.io import write_dicom_file

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"


def rotation(z_degrees: float = 0.0, x_degrees: float = 0.0) -> np.ndarray:
    """A right-handed (3, 3) direction matrix: a turn about S, then about L."""
    a, b = np.radians(z_degrees), np.radians(x_degrees)
    about_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return about_x @ about_z


OBLIQUE = rotation(20.0, 10.0)

FLIPPED = np.diag([-1.0, 1.0, -1.0])  # x towards R, z towards I: right-handed, so DICOM can store it too

LEFT_HANDED = np.diag([1.0, -1.0, 1.0])  # only NIfTI/NRRD/MHA can store this one

PERMUTED = np.array(
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
)  # x -> P, y -> S, z -> L (sagittal stack)


def make_image(array_zyx: np.ndarray, spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection(np.asarray(direction, float).ravel().tolist())
    return image


def voxel_points(image: sitk.Image) -> np.ndarray:
    """(z, y, x, 3) LPS coordinates (mm) of every voxel centre: origin + D (spacing * index)."""
    size_x, size_y, size_z = image.GetSize()
    z, y, x = np.meshgrid(np.arange(size_z), np.arange(size_y), np.arange(size_x), indexing="ij")
    index = np.stack([x, y, z], axis=-1) * np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + index @ direction.T


def origin_for_centre(size, spacing, direction, centre_lps=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The origin that puts the middle of a grid at `centre_lps`."""
    half_extent = np.asarray(spacing, float) * (np.asarray(size) - 1) / 2
    return np.asarray(centre_lps, float) - np.asarray(direction, float).reshape(3, 3) @ half_extent


def grid_image(size, spacing, origin, direction, pixel_type=sitk.sitkFloat32) -> sitk.Image:
    image = sitk.Image([int(n) for n in size], pixel_type)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection(np.asarray(direction, float).ravel().tolist())
    return image


def ct_phantom(
    size, spacing, origin, direction, axis_lp, radius_mm=20.0, s_range=(-np.inf, np.inf)
) -> sitk.Image:
    """Air (-1000 HU) around a soft-tissue (40 HU) cylinder along S through (L, P) = axis_lp, from
    S = s_range[0] to s_range[1] (mm)."""
    image = grid_image(size, spacing, origin, direction)
    points = voxel_points(image)
    inside = np.hypot(points[..., 0] - axis_lp[0], points[..., 1] - axis_lp[1]) <= radius_mm
    inside &= (points[..., 2] >= s_range[0]) & (points[..., 2] <= s_range[1])
    return make_image(np.where(inside, 40.0, -1000.0).astype(np.float32), spacing, origin, direction)


def sphere_mask(reference: sitk.Image, centre_lps, radius_mm: float, label: int = 1) -> sitk.Image:
    """uint8 mask on `reference`'s grid: `label` inside a physical sphere."""
    inside = np.linalg.norm(voxel_points(reference) - np.asarray(centre_lps), axis=-1) <= radius_mm
    mask = sitk.GetImageFromArray((inside * label).astype(np.uint8))
    mask.CopyInformation(reference)
    return mask


def pet_phantom(
    size, spacing, origin, direction, hot_lps, hot_suv=12.0, sigma_mm=6.0, seed=0, distractor_lps=None
):
    """Background of 1 +- 0.2 SUV with a Gaussian hot spot (peak `hot_suv`) at `hot_lps`, and optionally a
    twice as hot one at `distractor_lps` (a bladder, a brain)."""
    image = grid_image(size, spacing, origin, direction)
    points = voxel_points(image)
    values = np.random.default_rng(seed).uniform(0.8, 1.2, image.GetSize()[::-1])
    for centre, peak in ((hot_lps, hot_suv), (distractor_lps, 2 * hot_suv)):
        if centre is not None:
            distance_sq = np.sum((points - np.asarray(centre)) ** 2, axis=-1)
            values += peak * np.exp(-distance_sq / (2 * sigma_mm**2))
    return make_image(values.astype(np.float32), spacing, origin, direction)


def write_dicom_series(
    folder: Path,
    values_zyx: np.ndarray,
    spacing,
    origin,
    direction,
    modality: str,
    *,
    study_uid: str | None = None,
    slopes=None,
    intercept: float = 0.0,
    headers: dict | None = None,
    slice_headers: list[dict] | None = None,
) -> list[Path]:
    """Write a CT or PT series, one file per z slice, with exact geometry (IPP/IOP from origin and direction).

    values_zyx: physical values (HU, Bq/ml), stored as int16 (CT) or uint16 (PT) (value - intercept) / slope.
    slopes: one RescaleSlope per slice (default 1). headers: extra tags for every slice; slice_headers: for
    each slice.
    Returns the files in slice order. The direction must be right-handed (DICOM derives z from x cross y).
    """
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(direction, float).reshape(3, 3)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    sop_class = PET_IMAGE_STORAGE if modality == "PT" else CT_IMAGE_STORAGE
    files = []
    for k, plane in enumerate(values_zyx):
        slope = 1.0 if slopes is None else float(slopes[k])
        stored = np.round((plane - intercept) / slope)
        dataset = Dataset()
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.file_meta.MediaStorageSOPClassUID = sop_class
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.SOPClassUID = sop_class
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
        dataset.FrameOfReferenceUID = frame_uid
        dataset.Modality, dataset.PatientID, dataset.PatientName = modality, "SYNTH", "Synthetic^Patient"
        dataset.InstanceNumber = k + 1
        position = np.asarray(origin, float) + k * spacing[2] * direction[:, 2]
        dataset.ImagePositionPatient = [f"{v:.6f}" for v in position]
        dataset.ImageOrientationPatient = [f"{v:.8f}" for v in (*direction[:, 0], *direction[:, 1])]
        dataset.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[0]:g}"]  # (row spacing = y, column spacing = x)
        dataset.SliceThickness = f"{spacing[2]:g}"
        dataset.Rows, dataset.Columns = plane.shape
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
        dataset.PixelRepresentation = 1 if modality == "CT" else 0
        dataset.RescaleSlope, dataset.RescaleIntercept = f"{slope:.10g}", f"{intercept:g}"
        for key, value in {**(headers or {}), **(slice_headers[k] if slice_headers else {})}.items():
            setattr(dataset, key, value)
        dataset.PixelData = stored.astype(np.int16 if modality == "CT" else np.uint16).tobytes()
        path = folder / f"{modality}_{k:03d}.dcm"
        write_dicom_file(dataset, path)
        files.append(path)
    return files


def pet_headers(
    dose_bq=370e6,
    half_life_s=6586.2,
    injection_time="090000",
    injection_datetime=None,
    series_time="100000",
    weight_kg=70.0,
    units="BQML",
    decay_correction="START",
) -> dict:
    """PET tags for `write_dicom_series(headers=...)`; a None value leaves that tag out."""
    drug = Dataset()
    for key, value in (
        ("RadionuclideTotalDose", dose_bq),
        ("RadionuclideHalfLife", half_life_s),
        ("RadiopharmaceuticalStartTime", injection_time),
        ("RadiopharmaceuticalStartDateTime", injection_datetime),
    ):
        if value is not None:
            setattr(drug, key, value)
    tags = {
        "RadiopharmaceuticalInformationSequence": pydicom.Sequence([drug]),
        "Units": units,
        "DecayCorrection": decay_correction,
        "PatientWeight": weight_kg,
        "SeriesDate": "20240301",
        "SeriesTime": series_time,
        "AcquisitionDate": "20240301",
        "AcquisitionTime": series_time,
    }
    return {key: value for key, value in tags.items() if value is not None}


OBLIQUE_ABOUT_S = (0.96, -0.28, 0.0, 0.28, 0.96, 0.0, 0.0, 0.0, 1.0)  # 16° about S


def phantom_ct(size=(48, 40, 16), spacing=(3.0, 3.0, 6.0), direction=OBLIQUE_ABOUT_S) -> sitk.Image:
    """Air with a water-like body ellipse and a slightly denser 'tumour', on an oblique, off-origin grid.

    The whole volume (144 x 120 x 96 mm) fits in the demo skills' 192 x 192 x 96 mm box, so nothing is cut.
    """
    x, y = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing="xy")
    body = ((x - size[0] / 2) / (size[0] / 2.6)) ** 2 + ((y - size[1] / 2) / (size[1] / 2.8)) ** 2 < 1
    array = np.full((size[2], size[1], size[0]), -1000.0, np.float32)
    array[:, body] = 40.0
    array[5:9, 18:24, 20:27] = 70.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-71.5, 33.25, -412.0))
    image.SetDirection(direction)
    return image


def tumour_mask(ct: sitk.Image) -> sitk.Image:
    array = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    array[5:9, 18:24, 20:27] = 1
    array[10:12, 8:12, 30:34] = 2
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(ct)
    return mask


def differs_only_on_label_boundaries(actual_zyx: np.ndarray, expected_zyx: np.ndarray) -> bool:
    """Whether `actual` equals `expected` except at voxels within one voxel of a label's boundary there
    (what resampling labels through a rotated grid may move)."""
    from scipy import ndimage

    boundary = np.zeros(expected_zyx.shape, bool)
    for label in np.unique(expected_zyx[expected_zyx > 0]):
        region = expected_zyx == label
        boundary |= ndimage.binary_dilation(region) & ~ndimage.binary_erosion(region)
    return not ((actual_zyx != expected_zyx) & ~boundary).any()
