"""Reading and writing images: DICOM series folders, NIfTI, NRRD and MetaImage, all through SimpleITK.

Every image keeps its LPS physical geometry (origin, spacing, direction) exactly as stored. Alongside the
image, `read_image` returns a *source* dict (JSON-serialisable) describing where it came from:

| key | value |
|---|---|
| `path` | the path given |
| `format` | "dicom", "nifti", "nrrd" or "metaimage" |
| `modality` | DICOM Modality (0008,0060), e.g. "CT" or "PT"; `None` for non-DICOM files |
| `series_instance_uid`, `study_instance_uid` | DICOM only |
| `series_description` | DICOM only ("" when absent) |
| `frame_of_reference_uid` | DICOM only ("" when absent) |
| `files` | DICOM only: the series' files along the slice normal, duplicates removed (slice k is `files[k]`) |
| `note` | DICOM only: which series was chosen among the candidates, and why |
| `geometry` | DICOM only, when the slice positions were not a regular stack (`imaging.series`) |
| `warnings` | when something was repaired: one sentence each |
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.misc import is_dicom

from mafm3.errors import MAFM3Error
from mafm3.imaging.series import SeriesGeometry, check_series_geometry, regularise

log = logging.getLogger(__name__)

_FILE_FORMATS = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
}
SUPPORTED = "a DICOM series folder, NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd)"


@dataclass(frozen=True)
class DicomSeries:
    """One image series found in a folder; `files` are in GDCM's slice order."""

    series_instance_uid: str
    study_instance_uid: str
    modality: str
    series_description: str
    files: tuple[str, ...]
    frame_of_reference_uid: str = ""

    def shares_study_with(self, other: DicomSeries) -> bool:
        """Same StudyInstanceUID or same FrameOfReferenceUID (PET and CT of one PET/CT acquisition)."""
        return bool(
            (self.study_instance_uid and self.study_instance_uid == other.study_instance_uid)
            or (self.frame_of_reference_uid and self.frame_of_reference_uid == other.frame_of_reference_uid)
        )

    def source(self, path: str | Path, note: str, geometry: SeriesGeometry | None = None) -> dict:
        """The source dict of this series found under `path` (see the module docstring)."""
        source = {
            "path": str(path),
            "format": "dicom",
            "modality": self.modality,
            "series_instance_uid": self.series_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "series_description": self.series_description,
            "files": list(self.files if geometry is None else geometry.files),
            "note": note,
        }
        if geometry is not None and geometry.record:
            source["geometry"] = geometry.record
        if geometry is not None and geometry.warnings:
            source["warnings"] = list(geometry.warnings)
        return source


NIFTI1_SIZEOF_HDR = 348
NIFTI1_HEADER_BYTES = 352  # the header and the 4-byte extension flag


def list_dicom_series(folder: str | Path) -> list[DicomSeries]:
    """All DICOM image series under `folder` (searched recursively), largest first.

    GDCM (through SimpleITK) groups the files by SeriesInstanceUID and sorts each series along its slice
    normal; pydicom reads each series' modality and UIDs from its first file (headers only).
    """
    folder = Path(folder)
    series_ids: list[str] = []
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM warns on stderr for every folder without DICOM
    try:
        for directory, _, _ in os.walk(folder):
            for series_id in sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory):
                if series_id not in series_ids:
                    series_ids.append(series_id)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    found = []
    for series_id in series_ids:
        # `recursive=True` gathers a series split over several sub-folders into one sorted list.
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id, False, True)
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        found.append(
            DicomSeries(
                series_instance_uid=str(header.get("SeriesInstanceUID", series_id)),
                study_instance_uid=str(header.get("StudyInstanceUID", "")),
                modality=str(header.get("Modality", "")).upper(),
                series_description=str(header.get("SeriesDescription", "")),
                files=tuple(files),
                frame_of_reference_uid=str(header.get("FrameOfReferenceUID", "")),
            )
        )
    return sorted(found, key=lambda series: -len(series.files))


def choose_series(
    series: list[DicomSeries],
    modality: str,
    series_uid: str | None = None,
    where: str = "the folder",
    partners: list[DicomSeries] = (),
) -> tuple[DicomSeries, str, str | None]:
    """The series with `series_uid`, else the largest series of `modality`; returns it, a note why, and a
    warning (one sentence) when it was chosen among several without a SeriesInstanceUID.

    partners: series the chosen one should belong with (the PET of a PET/CT): among several series of
    `modality`, those sharing a study or frame of reference with a partner come first.
    Raises `MAFM3Error` when the requested series or modality is not there, or the series with `series_uid`
    is of another modality.
    """
    option = "--ct-series" if modality == "CT" else "--pet-series"
    if series_uid is not None:
        for candidate in series:
            if candidate.series_instance_uid == series_uid:
                _check_modality(candidate, modality, where)
                return candidate, f"series {series_uid} chosen by its SeriesInstanceUID", None
        raise MAFM3Error(
            f"{where} holds no DICOM series with SeriesInstanceUID {series_uid}: pass one of "
            f"{', '.join(s.series_instance_uid for s in series) or 'none found'} with {option}."
        )
    candidates = [candidate for candidate in series if candidate.modality == modality]
    if not candidates:
        present = ", ".join(sorted({s.modality or "unknown" for s in series}))
        raise MAFM3Error(
            f"{where} holds no {modality} series (found: {present}); "
            f"give a folder with a {modality} series or pass its SeriesInstanceUID with {option}."
        )
    with_partner = [c for c in candidates if any(c.shares_study_with(p) for p in partners)]
    pool = with_partner or candidates
    chosen = pool[0]
    if len(candidates) == 1:
        return chosen, f"the only {modality} series", None
    of_study = " of the PET's study" if with_partner else ""
    if len(pool) == 1:
        note = f"the {modality} series{of_study} ({len(chosen.files)} slices)"
    else:
        note = f"the largest of {len(pool)} {modality} series{of_study} ({len(chosen.files)} slices)"
    warning = (
        f"{where} holds {len(candidates)} {modality} series; {note}, {chosen.series_instance_uid}, was used: "
        f"choose another with {option} UID."
    )
    return chosen, note, warning


def _check_modality(series: DicomSeries, modality: str, where: str) -> None:
    if series.modality != modality:
        wanted = {"CT": "a CT", "PT": "a PET (PT)"}.get(modality, modality)
        raise MAFM3Error(
            f"The DICOM series {series.series_instance_uid} in {where} is "
            f"{series.modality or 'of unknown modality'}, not {wanted}: give {wanted} series."
        )


def read_dicom_series(series: DicomSeries) -> tuple[sitk.Image, SeriesGeometry]:
    """A DICOM series as a float32 image in physical units (HU for CT, the stored units for PET).

    The slices are stacked by their positions along the slice normal (`imaging.series`): duplicates
    dropped, an irregular stack resampled onto a regular grid; the geometry says what was found and done.
    Float32 output matters: GDCM applies each slice's own RescaleSlope/Intercept, and PET series often carry
    a different slope per slice; an integer output type (taken from the first slice) would truncate them.
    """
    name = {"CT": "The CT series", "PT": "The PET series"}.get(series.modality, "The DICOM series")
    geometry = check_series_geometry(list(series.files), name)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(geometry.files)
    reader.SetOutputPixelType(sitk.sitkFloat32)
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    if not geometry.regular:  # ITK warns of the uneven sampling on stderr; it is handled below
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise MAFM3Error(
            f"The DICOM series {series.series_instance_uid} cannot be read ({_short_reason(error)}): "
            f"check that its files are complete image slices."
        ) from error
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    if not geometry.regular:
        image = regularise(image, geometry)
    return image, geometry


def read_image(
    path: str | Path, modality: str = "CT", series_uid: str | None = None
) -> tuple[sitk.Image, dict]:
    """Read one image and describe its source.

    path: a DICOM folder (the series of `modality` — "CT" or "PT" — or the one with `series_uid`; the largest
        when several match), one file of a DICOM series (that whole series is read), or a NIfTI/NRRD/
        MetaImage file.
    Returns: (image, source) — DICOM series come back as float32 with rescale slope/intercept applied; other
        files keep their stored pixel type. See the module docstring for `source`.
    Raises: `MAFM3Error` for a missing path, an unsupported or unreadable file, or a folder without the
        series.
    """
    path = Path(path)
    if not path.exists():
        raise MAFM3Error(f"{path} does not exist: check the path.")
    if path.is_dir():
        return _read_dicom_folder(path, modality, series_uid)
    file_format = _file_format(path)
    if file_format is None:
        if not is_dicom(path):
            raise MAFM3Error(f"{path} is not a supported image: give {SUPPORTED}.")
        uid = series_uid or pydicom.dcmread(path, stop_before_pixels=True).get("SeriesInstanceUID") or None
        return _read_dicom_folder(path.parent, modality, uid)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise MAFM3Error(
            f"{path} cannot be read as {file_format} ({_short_reason(error)}): "
            f"check that the file is complete."
        ) from error
    if path.name.lower().endswith(".nii.gz"):
        _check_gzip_complete(path, image)
    if file_format == "nifti":
        image = _with_stored_non_finite(path, image)
    return image, {"path": str(path), "format": file_format, "modality": None}


NIFTI_FLOAT_TYPES = {16: np.dtype("<f4"), 64: np.dtype("<f8")}  # NIfTI-1 datatype codes


def _with_stored_non_finite(path: Path, image: sitk.Image) -> sitk.Image:
    """`image` with NaN again where the NIfTI file stores NaN or infinity.

    ITK's NIfTI reader turns NaN and infinite voxels into 0 without a word, which in a CT is water and in a
    PET is "no uptake"; the study checks (`validation.replace_non_finite`) then cannot see them. So for float
    files the stored voxels are read once more with numpy (same x-fastest order as SimpleITK's array) and the
    non-finite ones are marked NaN, to be counted and refused or repaired there.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        header = stream.read(NIFTI1_HEADER_BYTES)
        if int.from_bytes(header[:4], "little") != NIFTI1_SIZEOF_HDR:
            return image  # big-endian or NIfTI-2 headers: left to SimpleITK
        dtype = NIFTI_FLOAT_TYPES.get(struct.unpack("<h", header[70:72])[0])
        if dtype is None or image.GetNumberOfComponentsPerPixel() != 1:
            return image  # integer voxels cannot hold NaN
        stream.seek(int(struct.unpack("<f", header[108:112])[0]))
        stored = np.frombuffer(stream.read(image.GetNumberOfPixels() * dtype.itemsize), dtype)
    bad = ~np.isfinite(stored)
    if not bad.any():
        return image
    values = sitk.GetArrayFromImage(image)
    values.reshape(-1)[bad] = np.nan
    marked = sitk.GetImageFromArray(values)
    marked.CopyInformation(image)
    return marked


def _check_gzip_complete(path: Path, image: sitk.Image) -> None:
    """Refuse a cut-off .nii.gz: SimpleITK reads one without error and fills the missing voxels with zeros.

    The gzip trailer stores the uncompressed size (mod 2^32); a complete NIfTI-1 file holds `vox_offset` bytes
    of header and extensions, then the voxels. (No library checks this for us.)
    """
    with gzip.open(path) as stream:
        header = stream.read(NIFTI1_HEADER_BYTES)
    if int.from_bytes(header[:4], "little") != NIFTI1_SIZEOF_HDR:
        return  # big-endian or NIfTI-2 headers: left to SimpleITK
    voxel_offset = int(struct.unpack("<f", header[108:112])[0])
    voxel_bytes = image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel()
    expected = voxel_offset + voxel_bytes * image.GetSizeOfPixelComponent()
    with open(path, "rb") as stream:
        stream.seek(-4, os.SEEK_END)
        stored = int.from_bytes(stream.read(4), "little")
    if stored != expected % 2**32:
        raise MAFM3Error(f"{path} is incomplete (cut off while copying or writing): copy the file again.")


def write_image(image: sitk.Image, path: str | Path) -> Path:
    """Write `image` with its geometry (format from the suffix: .nii.gz, .nrrd, .mha, ...), compressed."""
    path = Path(path)
    if _file_format(path) is None:
        raise MAFM3Error(f"Cannot write {path}: use a .nii.gz, .nii, .nrrd or .mha file name.")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        sitk.WriteImage(image, str(path), useCompression=True)
    except RuntimeError as error:
        raise MAFM3Error(
            f"Cannot write {path} ({_short_reason(error)}): check the folder is writable."
        ) from error
    return path


def write_dicom_file(dataset: pydicom.Dataset, path: str | Path) -> Path:
    """Write `dataset` as a DICOM Part 10 file (preamble, file meta group from `dataset.file_meta`).

    Works with pydicom 3 and with pydicom 2.4, the version 3D Slicer 5.10 bundles (the Slicer module installs
    the core next to it and never replaces it); the two spell the same request differently.
    """
    if int(pydicom.__version__.split(".")[0]) >= 3:
        dataset.save_as(path, enforce_file_format=True)
    else:
        dataset.save_as(path, write_like_original=False)
    return Path(path)


def _read_dicom_folder(folder: Path, modality: str, series_uid: str | None) -> tuple[sitk.Image, dict]:
    chosen, note, warning = choose_series(dicom_series_in(folder), modality, series_uid, where=str(folder))
    return read_series(chosen, folder, note, warning)


def dicom_series_in(folder: Path) -> list[DicomSeries]:
    """`list_dicom_series`, refusing a folder without any."""
    series = list_dicom_series(folder)
    if not series:
        raise MAFM3Error(f"{folder} holds no readable DICOM image series: give {SUPPORTED}.")
    return series


def read_series(
    series: DicomSeries, folder: str | Path, note: str, warning: str | None = None
) -> tuple[sitk.Image, dict]:
    """`read_dicom_series` and its source dict (with the geometry record and warnings, when any); `warning`
    (how the series was chosen) goes first among the warnings."""
    image, geometry = read_dicom_series(series)
    source = series.source(folder, note, geometry)
    if warning is not None:
        source["warnings"] = [warning, *source.get("warnings", [])]
    return image, source


def is_image_file(path: Path) -> bool:
    """Whether `path` is named as a NIfTI, NRRD or MetaImage file."""
    return _file_format(path) is not None


def _file_format(path: Path) -> str | None:
    name = path.name.lower()
    return next((fmt for suffix, fmt in _FILE_FORMATS.items() if name.endswith(suffix)), None)


def _short_reason(error: Exception) -> str:
    """SimpleITK errors span many lines with C++ file names; keep the last meaningful line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1].removeprefix("sitk::ERROR: ") if lines else type(error).__name__
