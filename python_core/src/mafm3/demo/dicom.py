"""DICOM CT and PET series of a synthetic study, with the headers a scanner writes (pydicom).

Both series share StudyInstanceUID and FrameOfReferenceUID; each slice carries ImagePositionPatient,
ImageOrientationPatient (axial, identity), PixelSpacing (row, column) and SliceThickness of the study's grids,
so SimpleITK's GDCM series reader returns the NIfTI geometry (DS values are written with up to 16 characters).

CT: int16 stored values, RescaleSlope 1, RescaleIntercept -1024 (HU = stored - 1024).
PET: activity concentration in Bq/ml (Units BQML, DecayCorrection START: decay-corrected to SeriesTime),
uint16 stored values with a per-slice RescaleSlope. Body-weight SUV is recovered with the standard formula

    SUVbw = value[Bq/ml] * PatientWeight[kg] * 1000 / decayed_dose[Bq]
    decayed_dose = RadionuclideTotalDose * 2 ** (-(SeriesTime - RadiopharmaceuticalStartTime)[s]
                                                 / RadionuclideHalfLife[s])

and equals the study's SUV up to the 16-bit quantisation (half a RescaleSlope).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)
from pydicom.valuerep import DSfloat

from mafm3.demo.constants import DEMO_NOTICE
from mafm3.demo.study import SyntheticStudy
from mafm3.imaging.io import write_dicom_file


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


def _uid(study: SyntheticStudy, *parts) -> str:
    """A UID derived from the study seed, so the same seed writes byte-identical files."""
    return generate_uid(entropy_srcs=["mafm3-demo", str(study.patient.seed), *map(str, parts)])


def _date(moment: datetime.datetime) -> str:
    return moment.strftime("%Y%m%d")


def _time(moment: datetime.datetime) -> str:
    return moment.strftime("%H%M%S")


def _common(study: SyntheticStudy, modality: str, series_number: int) -> Dataset:
    """Patient, study, series, frame-of-reference and equipment modules shared by all slices of a series."""
    acquisition, clinical = study.acquisition, study.patient.clinical
    ds = Dataset()
    ds.PatientName = f"Demo^{study.study_id}"
    ds.PatientID = study.study_id
    ds.PatientSex = clinical.sex or "O"
    ds.PatientAge = f"{int(clinical.age or 0):03d}Y"
    ds.PatientWeight = _ds(acquisition.weight_kg)
    ds.PatientIdentityRemoved = "YES"
    ds.StudyInstanceUID = _uid(study, "study")
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _date(acquisition.scan_start)
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _time(acquisition.scan_start)
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "PET/CT head & neck (synthetic demo)"
    ds.Modality = modality
    ds.SeriesInstanceUID = _uid(study, "series", modality)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"{DEMO_NOTICE} ({modality})"
    ds.BodyPartExamined = "HEADNECK"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = _uid(study, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "mafm3 demo generator"
    ds.ImageComments = DEMO_NOTICE
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def _slice(common: Dataset, image: sitk.Image, index: int, sop_class: str, sop_instance: str) -> Dataset:
    ds = Dataset()
    ds.update(common)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_instance
    ds.InstanceNumber = index + 1
    position = image.TransformIndexToPhysicalPoint((0, 0, index))
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in (1, 0, 0, 0, 1, 0)]
    ds.SliceLocation = _ds(position[2])
    spacing_x, spacing_y, spacing_z = image.GetSpacing()
    ds.PixelSpacing = [_ds(spacing_y), _ds(spacing_x)]
    ds.SliceThickness = _ds(spacing_z)
    ds.Columns, ds.Rows = image.GetSize()[:2]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, sop_instance
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def write_ct_series(study: SyntheticStudy, folder: Path) -> list[Path]:
    """One CT Image Storage file per axial slice: `folder/CT_0001.dcm`, ... (inferior to superior)."""
    folder.mkdir(parents=True, exist_ok=True)
    common = _common(study, "CT", 2)
    common.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    common.PixelRepresentation = 1
    common.RescaleIntercept, common.RescaleSlope, common.RescaleType = _ds(-1024), _ds(1), "HU"
    common.WindowCenter, common.WindowWidth = _ds(40), _ds(400)
    common.KVP = _ds(120)
    common.AcquisitionNumber = 1
    hu = sitk.GetArrayViewFromImage(study.ct)
    paths = []
    for index in range(hu.shape[0]):
        ds = _slice(common, study.ct, index, CTImageStorage, _uid(study, "CT", index))
        ds.PixelData = (hu[index].astype(np.int16) + np.int16(1024)).tobytes()
        paths.append(folder / f"CT_{index + 1:04d}.dcm")
        write_dicom_file(ds, paths[-1])
    return paths


def _radiopharmaceutical(study: SyntheticStudy) -> Dataset:
    acquisition = study.acquisition
    nuclide = Dataset()
    nuclide.CodeValue, nuclide.CodingSchemeDesignator, nuclide.CodeMeaning = "C-111A1", "SRT", "^18^Fluorine"
    drug = Dataset()
    drug.Radiopharmaceutical = "Fluorodeoxyglucose"
    drug.RadiopharmaceuticalStartTime = _time(acquisition.injection_time)
    drug.RadiopharmaceuticalStartDateTime = acquisition.injection_time.strftime("%Y%m%d%H%M%S")
    drug.RadionuclideTotalDose = _ds(acquisition.injected_dose_bq)
    drug.RadionuclideHalfLife = _ds(acquisition.half_life_s)
    drug.RadionuclidePositronFraction = _ds(0.9673)
    drug.RadionuclideCodeSequence = Sequence([nuclide])
    return drug


def write_pet_series(study: SyntheticStudy, folder: Path) -> list[Path]:
    """One PET Image Storage file per axial slice, in Bq/ml: `folder/PT_0001.dcm`, ... (inferior first)."""
    folder.mkdir(parents=True, exist_ok=True)
    common = _common(study, "PT", 3)
    common.ImageType = ["ORIGINAL", "PRIMARY"]
    common.PixelRepresentation = 0
    common.Units, common.DecayCorrection, common.CountsSource = "BQML", "START", "EMISSION"
    common.SeriesType = ["STATIC", "IMAGE"]
    common.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
    common.RandomsCorrectionMethod, common.AttenuationCorrectionMethod = "DLYD", "CT-based"
    common.ReconstructionMethod = "synthetic: Gaussian PSF and Poisson noise"
    common.RadiopharmaceuticalInformationSequence = Sequence([_radiopharmaceutical(study)])
    common.NumberOfSlices = study.pet.GetSize()[2]
    common.FrameReferenceTime, common.ActualFrameDuration, common.DecayFactor = _ds(0), 180000, _ds(1)
    common.RescaleIntercept, common.RescaleType = _ds(0), "BQML"
    bq_per_ml = (
        sitk.GetArrayViewFromImage(study.pet).astype(np.float64) * study.acquisition.bq_per_ml_per_suv()
    )
    paths = []
    for index in range(bq_per_ml.shape[0]):
        ds = _slice(
            common, study.pet, index, PositronEmissionTomographyImageStorage, _uid(study, "PT", index)
        )
        ds.ImageIndex = index + 1
        peak = float(bq_per_ml[index].max())
        ds.RescaleSlope = _ds(peak / 65535 if peak > 0 else 1.0)
        stored = np.rint(bq_per_ml[index] / float(ds.RescaleSlope))
        ds.PixelData = np.clip(stored, 0, 65535).astype(np.uint16).tobytes()
        paths.append(folder / f"PT_{index + 1:04d}.dcm")
        write_dicom_file(ds, paths[-1])
    return paths
