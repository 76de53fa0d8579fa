"""Broken copies of a demo study, made the way they occur in practice (for `test_input_catalogue.py`).

Each maker takes the intact study folder (`mafm3 demo make-study` layout: `dicom/CT`, `dicom/PT`, NIfTI
files, `clinical.json`) and a new folder, writes a broken copy there, and returns the `mafm3 run` inputs
for it as RunRequest fields (plus `out_parent`, where the output folder goes). Slices written at new
positions hold the intact CT sampled at those positions (SimpleITK, linear), so a correct reader recovers
the intact anatomy in physical space.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

ROTATION_DEGREES = (20.0, 10.0)  # about S, then about L: an oblique acquisition or a tilted head


def _copy_dicom(study: Path, folder: Path) -> Path:
    shutil.copytree(study / "dicom", folder / "dicom")
    return folder / "dicom"


def _ct_files(dicom: Path) -> list[Path]:
    """The CT slices, inferior to superior (the demo writes them in that order, named by index)."""
    files = sorted((dicom / "CT").iterdir())
    heights = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    return [f for _, f in sorted(zip(heights, files, strict=True))]


def _new_instance(dataset: pydicom.Dataset) -> pydicom.Dataset:
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


def dicom_request(dicom: Path, **fields) -> dict:
    return {"ct": str(dicom), **fields}


def intact(study: Path, folder: Path) -> dict:
    return dicom_request(_copy_dicom(study, folder))


def duplicated_slice(study: Path, folder: Path) -> dict:
    """A slice stored twice: the same position and pixels under a new SOP instance UID."""
    dicom = _copy_dicom(study, folder)
    source = _ct_files(dicom)[20]
    _new_instance(pydicom.dcmread(source)).save_as(dicom / "CT" / "copy.dcm")
    return dicom_request(dicom)


def conflicting_slices(study: Path, folder: Path) -> dict:
    """Two different slices at one position (two acquisitions mixed in one series)."""
    dicom = _copy_dicom(study, folder)
    dataset = _new_instance(pydicom.dcmread(_ct_files(dicom)[20]))
    dataset.PixelData = (dataset.pixel_array + 100).astype(dataset.pixel_array.dtype).tobytes()
    dataset.save_as(dicom / "CT" / "other.dcm")
    return dicom_request(dicom)


def missing_slices(count: int):
    def make(study: Path, folder: Path) -> dict:
        dicom = _copy_dicom(study, folder)
        for path in _ct_files(dicom)[30 : 30 + count]:
            path.unlink()
        return dicom_request(dicom)

    make.__name__ = f"missing_{count}_slices"
    return make


def _rewrite_ct(dicom: Path, ct: sitk.Image, positions: np.ndarray) -> None:
    """Replace the CT series by slices at `positions` (N, 3) mm holding `ct` sampled there (axial)."""
    files = _ct_files(dicom)
    template = pydicom.dcmread(files[0])
    for path in files:
        path.unlink()
    size_x, size_y = ct.GetSize()[:2]
    for number, position in enumerate(positions):
        plane = sitk.Resample(
            ct, (size_x, size_y, 1), sitk.Transform(), sitk.sitkLinear, tuple(position),
            (*ct.GetSpacing()[:2], 1.0), ct.GetDirection(), -1024.0, sitk.sitkFloat32,
        )  # fmt: skip
        stored = np.rint(sitk.GetArrayFromImage(plane)[0] - float(template.RescaleIntercept))
        dataset = _new_instance(copy.deepcopy(template))
        dataset.ImagePositionPatient = [f"{v:.4f}" for v in position]
        dataset.InstanceNumber = number + 1
        dataset.PixelData = stored.astype(template.pixel_array.dtype).tobytes()
        dataset.save_as(dicom / "CT" / f"slice{number:04d}.dcm")


def uneven_spacing(study: Path, folder: Path) -> dict:
    """Slices 4 mm apart in the lower half and 6 mm apart above (a protocol change mid-series)."""
    dicom = _copy_dicom(study, folder)
    ct = sitk.ReadImage(str(study / "ct.nii.gz"), sitk.sitkFloat32)
    origin, spacing, size = np.array(ct.GetOrigin()), ct.GetSpacing()[2], ct.GetSize()[2]
    top = (size - 1) * spacing
    heights = np.concatenate([np.arange(0, top / 2, spacing), np.arange(top / 2, top + 1e-6, 1.5 * spacing)])
    _rewrite_ct(dicom, ct, origin + heights[:, None] * (0, 0, 1))
    return dicom_request(dicom)


def gantry_tilt(study: Path, folder: Path, degrees: float = 15.0) -> dict:
    """Axial slices whose positions move posteriorly with height: a stack sheared by a tilted gantry."""
    dicom = _copy_dicom(study, folder)
    ct = sitk.ReadImage(str(study / "ct.nii.gz"), sitk.sitkFloat32)
    origin, spacing, size = np.array(ct.GetOrigin()), ct.GetSpacing()[2], ct.GetSize()[2]
    heights = np.arange(size) * spacing
    shift = np.tan(np.radians(degrees)) * heights
    _rewrite_ct(dicom, ct, origin + np.stack([0 * heights, shift - shift.mean(), heights], axis=1))
    return dicom_request(dicom)


def mr_as_one_file(study: Path, folder: Path) -> dict:
    """An MR series (here: the CT's files relabelled MR) given as one of its files."""
    dicom = _copy_dicom(study, folder)
    series = generate_uid()
    for path in _ct_files(dicom):
        dataset = pydicom.dcmread(path)
        dataset.Modality, dataset.SeriesInstanceUID = "MR", series
        dataset.save_as(path)
    return dicom_request(_ct_files(dicom)[10])


def larger_ct_of_another_study(study: Path, folder: Path) -> dict:
    """Beside the study's CT and PET, a CT of another study with more slices (and its own frame)."""
    dicom = _copy_dicom(study, folder)
    other = dicom / "OTHER"
    other.mkdir()
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    files = _ct_files(dicom)
    step = np.array([0.0, 0.0, float(pydicom.dcmread(files[1]).ImagePositionPatient[2])])
    step -= [0.0, 0.0, float(pydicom.dcmread(files[0]).ImagePositionPatient[2])]
    for number, path in enumerate(files + files[:10]):
        dataset = _new_instance(pydicom.dcmread(path))
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
        dataset.FrameOfReferenceUID = frame_uid
        position = (
            np.array([float(v) for v in pydicom.dcmread(files[0]).ImagePositionPatient]) + number * step
        )
        dataset.ImagePositionPatient = [f"{v:.4f}" for v in position]
        dataset.save_as(other / f"other{number:04d}.dcm")
    return dicom_request(dicom)


def pet_of_another_study(study: Path, folder: Path) -> dict:
    """The PET given separately, from another study and frame of reference."""
    dicom = _copy_dicom(study, folder)
    pet = folder / "pet"
    shutil.move(dicom / "PT", pet)
    study_uid, frame_uid = generate_uid(), generate_uid()
    for path in pet.iterdir():
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID, dataset.FrameOfReferenceUID = study_uid, frame_uid
        dataset.save_as(path)
    return dicom_request(dicom / "CT", pet=str(pet))


def nifti_request(folder: Path, ct: sitk.Image, pet: sitk.Image, **fields) -> dict:
    sitk.WriteImage(ct, str(folder / "ct.nii.gz"))
    sitk.WriteImage(pet, str(folder / "pet.nii.gz"))
    return {"ct": str(folder / "ct.nii.gz"), "pet": str(folder / "pet.nii.gz"), "pet_units": "suv", **fields}


def _images(study: Path) -> tuple[sitk.Image, sitk.Image]:
    ct = sitk.ReadImage(str(study / "ct.nii.gz"), sitk.sitkFloat32)
    return ct, sitk.ReadImage(str(study / "pet.nii.gz"), sitk.sitkFloat32)


def _with_non_finite(image: sitk.Image, fraction: float, seed: int) -> sitk.Image:
    """`image` with NaN and +inf scattered over `fraction` of its voxels."""
    values = sitk.GetArrayFromImage(image)
    chosen = np.random.default_rng(seed).random(values.shape) < fraction
    values[chosen] = np.where(np.arange(chosen.sum()) % 2 == 0, np.nan, np.inf)
    out = sitk.GetImageFromArray(values)
    out.CopyInformation(image)
    return out


def nifti(study: Path, folder: Path) -> dict:
    return nifti_request(folder, *_images(study))


def ct_with_nan(fraction: float):
    def make(study: Path, folder: Path) -> dict:
        ct, pet = _images(study)
        return nifti_request(folder, _with_non_finite(ct, fraction, 1), pet)

    make.__name__ = f"ct_with_nan_{fraction:g}"
    return make


def pet_with_nan(study: Path, folder: Path) -> dict:
    ct, pet = _images(study)
    return nifti_request(folder, ct, _with_non_finite(pet, 0.005, 2))


def pet_shifted(millimetres: float):
    def make(study: Path, folder: Path) -> dict:
        ct, pet = _images(study)
        pet.SetOrigin(tuple(np.array(pet.GetOrigin()) + (0.0, 0.0, millimetres)))
        return nifti_request(folder, ct, pet)

    make.__name__ = f"pet_shifted_{millimetres:g}_mm"
    return make


def rotation_matrix(about_s_degrees: float, about_l_degrees: float) -> np.ndarray:
    """A rotation about S (z), then about L (x), as a 3 x 3 matrix."""
    a, b = np.radians(about_s_degrees), np.radians(about_l_degrees)
    about_s = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_l = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return about_l @ about_s


def oblique_copy(image: sitk.Image, rotation: np.ndarray, interpolator, outside: float) -> sitk.Image:
    """`image` resampled onto a grid of the same size and spacing whose axes are rotated by `rotation`
    about the image's centre: the same patient, acquired obliquely (nothing moves in physical space)."""
    size, spacing = np.array(image.GetSize()), np.array(image.GetSpacing())
    centre = image.TransformContinuousIndexToPhysicalPoint((size - 1) / 2.0)
    direction = rotation @ np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(centre) - direction @ ((size - 1) / 2.0 * spacing)
    return sitk.Resample(
        image, image.GetSize(), sitk.Transform(), interpolator, tuple(origin), image.GetSpacing(),
        tuple(direction.ravel()), outside, image.GetPixelID(),
    )  # fmt: skip


def oblique_ct(study: Path, folder: Path) -> dict:
    ct, pet = _images(study)
    return nifti_request(
        folder, oblique_copy(ct, rotation_matrix(*ROTATION_DEGREES), sitk.sitkLinear, -1024.0), pet
    )


def clinical(values: dict | bytes):
    def make(study: Path, folder: Path) -> dict:
        path = folder / "clinical.json"
        path.write_bytes(values if isinstance(values, bytes) else json.dumps(values).encode())
        return {**dicom_request(_copy_dicom(study, folder)), "clinical": str(path)}

    return make


def request_fields(**fields):
    def make(study: Path, folder: Path) -> dict:
        return {**intact(study, folder), **fields}

    return make


def out_inside_a_file(study: Path, folder: Path) -> dict:
    """`--out` under a file: it can never be created (unlike a read-only folder, even for root)."""
    (folder / "notes.txt").write_text("not a folder")
    return {**intact(study, folder), "out_parent": str(folder / "notes.txt" / "results")}
