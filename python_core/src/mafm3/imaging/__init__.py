"""Images in and out, with exact LPS geometry: reading (DICOM, NIfTI, NRRD, MHA), PET to SUV, validation,
resampling, ROI localisation and per-skill preprocessing.

The only project modules imported here are the leaves `mafm3.errors`, `mafm3.clinical` and `mafm3.progress`.
Conventions follow SimpleITK: sizes, spacings and origins are (x, y, z) in mm (LPS); numpy arrays from images
are (z, y, x); model arrays are (C, T, H, W) with (T, H, W) chosen by a skill's `axis_order`.
"""

from mafm3.imaging.io import read_image, write_image
from mafm3.imaging.preprocess import PreparedInput, PreprocessingConfig, labels_to_ct_grid, prepare_input
from mafm3.imaging.resample import Grid, resample_onto, resample_to_spacing
from mafm3.imaging.study import Study, load_study, study_from_images
from mafm3.imaging.suv import pet_to_suv
from mafm3.imaging.validation import require_pet

__all__ = [
    "Grid",
    "PreparedInput",
    "PreprocessingConfig",
    "Study",
    "labels_to_ct_grid",
    "load_study",
    "pet_to_suv",
    "prepare_input",
    "read_image",
    "require_pet",
    "resample_onto",
    "resample_to_spacing",
    "study_from_images",
    "write_image",
]
