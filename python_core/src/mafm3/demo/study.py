"""`generate_study(seed)`: one synthetic head & neck PET/CT study, the same arrays for the same seed.

CT (int16 HU, LPS, identity direction, a non-trivial origin): each tissue gets a per-patient mean HU
(`_HU_RANGES`) plus a smooth texture (`_HU_TEXTURE`); GTVp is 8-25 HU above the patient's muscle and nodes
0-18 HU above it. One Gaussian blur (sigma half a voxel) then gives partial-volume edges and correlates the
stationary Gaussian noise, whose SD after the blur is the centre's (16-26 HU).

PET (float32 SUVbw) lives on its own grid: the centre's voxel size (3.6-4.1 mm), a field of view 10-30 mm
wider than the CT in-plane and 3-12 mm longer, and its own origin. Uptake (`_SUV_RANGES`; GTVp rises from
0.45 x SUVmax at the rim to SUVmax in the core, viable node tissue is 0.7-1 x the node's SUVmax) is drawn on
a grid twice as fine (anatomy and lesions drawn again), blurred by the centre's point-spread function
(Gaussian, FWHM 5.5-7 mm), averaged over each PET voxel, then given Poisson noise (`pet_counts_per_suv`
counts per unit SUV), so it is never negative.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from mafm3.demo.anatomy import Anatomy, Tissue, sample_anatomy, tissue_map
from mafm3.demo.constants import DEMO_NOTICE, SIZES, StudySize
from mafm3.demo.grid import Grid, sample_field
from mafm3.demo.lesions import Lesions, draw_lesions, place_lesions
from mafm3.demo.patients import Patient, Stream, rng, sample_patient
from mafm3.results import GTVN, GTVP

F18_HALF_LIFE_S = 6586.2
LABEL_OF_TISSUE = np.zeros(len(Tissue), np.uint8)  # the label map: necrotic node cores belong to GTVn
LABEL_OF_TISSUE[Tissue.TUMOUR] = GTVP.label
LABEL_OF_TISSUE[[Tissue.NODE, Tissue.NECROSIS]] = GTVN.label

# Per-patient mean HU, uniform in [low, high] (tumour and nodes are set relative to muscle in `_ct`).
_HU_RANGES = {
    Tissue.OUTSIDE: (-1000, -1000),
    Tissue.SKIN: (25, 35),
    Tissue.FAT: (-110, -90),
    Tissue.MUSCLE: (40, 50),
    Tissue.AIRWAY: (-1000, -990),
    Tissue.CORTICAL_BONE: (700, 1200),
    Tissue.CANCELLOUS_BONE: (220, 280),
    Tissue.DISC: (70, 90),
    Tissue.SPINAL_CANAL: (20, 30),
    Tissue.PAROTID: (10, 30),
    Tissue.SUBMANDIBULAR: (35, 45),
    Tissue.TONSIL: (45, 55),
    Tissue.THYROID: (90, 110),
    Tissue.VESSEL: (35, 45),  # blood without contrast
    Tissue.BRAIN: (30, 36),
    Tissue.EYE: (5, 15),
    Tissue.LUNG: (-870, -830),
    Tissue.NECROSIS: (10, 20),
}
# Amplitude (HU per SD) of the smooth texture field inside each tissue.
_HU_TEXTURE = {
    Tissue.SKIN: 5, Tissue.FAT: 10, Tissue.MUSCLE: 6, Tissue.CORTICAL_BONE: 80, Tissue.CANCELLOUS_BONE: 60,
    Tissue.DISC: 5, Tissue.PAROTID: 8, Tissue.SUBMANDIBULAR: 5, Tissue.TONSIL: 4, Tissue.THYROID: 8,
    Tissue.BRAIN: 4, Tissue.LUNG: 30, Tissue.TUMOUR: 8, Tissue.NODE: 5, Tissue.NECROSIS: 5,
}  # fmt: skip
# Per-patient physiological SUV, uniform in [low, high]; lesions get their own uptake (`draw_lesions`).
_SUV_RANGES = {
    Tissue.SKIN: (0.6, 0.8),
    Tissue.FAT: (0.3, 0.4),
    Tissue.MUSCLE: (0.7, 1.1),
    Tissue.CORTICAL_BONE: (0.25, 0.35),
    Tissue.CANCELLOUS_BONE: (1.1, 1.5),  # marrow
    Tissue.DISC: (0.5, 0.7),
    Tissue.SPINAL_CANAL: (0.9, 1.2),
    Tissue.PAROTID: (1.5, 3.0),
    Tissue.SUBMANDIBULAR: (1.8, 3.2),
    Tissue.TONSIL: (2.5, 5.5),
    Tissue.THYROID: (1.2, 2.5),
    Tissue.VESSEL: (1.3, 1.8),  # blood pool
    Tissue.BRAIN: (6.0, 10.0),
    Tissue.EYE: (0.5, 0.7),
    Tissue.LUNG: (0.3, 0.5),
    Tissue.NECROSIS: (0.8, 1.5),
}
# Relative amplitude of the texture field in the uptake of each tissue.
_SUV_TEXTURE = {
    Tissue.MUSCLE: 0.15,
    Tissue.BRAIN: 0.2,
    Tissue.PAROTID: 0.15,
    Tissue.TONSIL: 0.15,
    Tissue.FAT: 0.1,
}


@dataclass(frozen=True)
class PetAcquisition:
    """What the PET DICOM header needs to convert Bq/ml to SUVbw."""

    weight_kg: float
    injected_dose_bq: float
    injection_time: datetime.datetime
    scan_start: datetime.datetime  # series time; images are decay-corrected to it (DecayCorrection START)
    half_life_s: float = F18_HALF_LIFE_S

    def bq_per_ml_per_suv(self) -> float:
        """SUVbw = C[Bq/ml] * weight[g] / (dose[Bq] * 2**(-(scan_start - injection)/half_life)), inverted."""
        elapsed = (self.scan_start - self.injection_time).total_seconds()
        return self.injected_dose_bq * 2 ** (-elapsed / self.half_life_s) / (self.weight_kg * 1000.0)


@dataclass
class SyntheticStudy:
    """One generated study: images with exact geometry, the patient behind them, ground truth in `meta`."""

    patient: Patient
    ct: sitk.Image  # int16 HU
    pet: sitk.Image  # float32 SUVbw on the PET grid
    labels: sitk.Image  # uint8 on the CT grid: 0 background, 1 GTVp, 2 GTVn
    tissues: sitk.Image  # uint8 `Tissue` on the CT grid: the anatomy's ground truth
    acquisition: PetAcquisition
    meta: dict = field(default_factory=dict)

    @property
    def study_id(self) -> str:
        return f"DEMO-{self.patient.seed}"


def _grids(size: StudySize, g: np.random.Generator, pet_spacing_mm) -> tuple[tuple[float, ...], Grid, Grid]:
    """Patient-frame origin (physical), CT grid and PET grid of one study."""
    frame_origin = (g.uniform(-20, 20), g.uniform(-40, 40), g.uniform(-650, -350))
    extent = [n * s for n, s in zip(size.ct_size, size.ct_spacing_mm, strict=True)]
    low = (
        -extent[0] / 2 + g.uniform(-8, 8),
        -extent[1] / 2 + 10 + g.uniform(-8, 8),
        size.lowest_slice_mm + g.uniform(-6, 6),
    )
    ct_origin = tuple(f + l + s / 2 for f, l, s in zip(frame_origin, low, size.ct_spacing_mm, strict=True))
    ct = Grid(ct_origin, size.ct_spacing_mm, size.ct_size)
    margins = (g.uniform(10, 30), g.uniform(10, 30), g.uniform(3, 12))
    pet_size = tuple(
        int(np.ceil((e + 2 * m) / s)) for e, m, s in zip(extent, margins, pet_spacing_mm, strict=True)
    )
    pet_origin = tuple(
        o - s / 2 + e / 2 - (n - 1) / 2 * p + g.uniform(-p / 2, p / 2)
        for o, s, e, n, p in zip(ct_origin, size.ct_spacing_mm, extent, pet_size, pet_spacing_mm, strict=True)
    )
    return frame_origin, ct, Grid(pet_origin, tuple(pet_spacing_mm), pet_size)


def _table(values: dict) -> np.ndarray:
    """A lookup table indexed by `Tissue` (0 for tissues not in `values`)."""
    table = np.zeros(len(Tissue), np.float32)
    for tissue, value in values.items():
        table[tissue] = value
    return table


def _draw(ranges: dict, g: np.random.Generator) -> dict:
    return {tissue: g.uniform(low, high) for tissue, (low, high) in ranges.items()}


def _ct(
    tissue: np.ndarray, texture: np.ndarray, grid: Grid, patient: Patient, g: np.random.Generator
) -> np.ndarray:
    """CT in HU (int16, shape (Z, Y, X)) from the tissue map and texture on the CT grid."""
    hu_of = _draw(_HU_RANGES, g)
    hu_of[Tissue.TUMOUR] = hu_of[Tissue.MUSCLE] + g.uniform(8, 25)
    hu_of[Tissue.NODE] = hu_of[Tissue.MUSCLE] + g.uniform(0, 18)
    # One blur (sigma half a voxel) makes both the partial-volume edges and the noise correlation; the white
    # noise is scaled up by the blur's noise gain so the blurred noise has exactly the centre's SD.
    sigma_mm = [s / 2 for s in grid.spacing_mm]
    hu = rng(patient.seed, Stream.CT_NOISE).standard_normal(grid.shape_zyx, dtype=np.float32)
    hu *= np.float32(patient.centre.ct_noise_hu / _noise_gain(sigma_mm, grid.spacing_mm))
    hu += _table(hu_of)[tissue]
    hu += _table(_HU_TEXTURE)[tissue] * texture
    hu = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(grid.image(hu), sigma_mm))
    return np.clip(np.rint(hu, out=hu), -1024, 3071, out=hu).astype(np.int16)


def _noise_gain(sigma_mm: list[float], spacing_mm) -> float:
    """SD of unit white noise after `SmoothingRecursiveGaussian(sigma_mm)`: the root sum of squares of the
    filter's impulse response."""
    impulse = np.zeros((33, 33, 33), np.float32)
    impulse[16, 16, 16] = 1
    image = sitk.GetImageFromArray(impulse)
    image.SetSpacing(tuple(spacing_mm))
    response = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, sigma_mm))
    return float(np.sqrt(np.square(response, dtype=np.float64).sum()))


def _pet(
    anatomy: Anatomy, lesions: Lesions, grid: Grid, patient: Patient, g: np.random.Generator
) -> np.ndarray:
    """PET in SUVbw (float32, shape (Z, Y, X)) on the PET grid."""
    fine = grid.subdivided(2)
    texture = sample_field(anatomy.texture, fine)
    tissue = tissue_map(anatomy, fine, texture)
    lesion_uptake = draw_lesions(tissue, lesions, anatomy, fine)
    suv = _table(_draw(_SUV_RANGES, g))[tissue] * (1 + _table(_SUV_TEXTURE)[tissue] * texture)
    for slices, block in lesion_uptake:
        suv[slices] = np.where(block > 0, block, suv[slices])
    sigma_mm = patient.centre.pet_fwhm_mm / (2 * np.sqrt(2 * np.log(2)))
    blurred = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(fine.image(suv), sigma_mm))
    z, y, x = grid.shape_zyx
    voxel_mean = np.clip(blurred.reshape(z, 2, y, 2, x, 2).mean(axis=(1, 3, 5)), 0, None)
    counts = rng(patient.seed, Stream.PET_NOISE).poisson(voxel_mean * patient.centre.pet_counts_per_suv)
    return (counts / patient.centre.pet_counts_per_suv).astype(np.float32)


def _acquisition(patient: Patient, g: np.random.Generator) -> PetAcquisition:
    day = datetime.datetime(2015, 1, 5) + datetime.timedelta(days=int(g.integers(0, 3000)))
    injection = day + datetime.timedelta(seconds=int(g.integers(8 * 3600, 14 * 3600)))
    scan_start = injection + datetime.timedelta(seconds=int(g.integers(55 * 60, 75 * 60)))
    dose = round(patient.weight_kg * patient.centre.injected_mbq_per_kg * g.uniform(0.9, 1.1), 1) * 1e6
    return PetAcquisition(patient.weight_kg, dose, injection, scan_start)


def generate_study(seed: int, size: str = "small") -> SyntheticStudy:
    """The synthetic study of case `seed`; `size` is a key of `SIZES` ("tiny" for tests, "small", ...)."""
    if size not in SIZES:
        raise ValueError(f"`size` must be one of {', '.join(SIZES)}, got {size!r}")
    patient = sample_patient(seed)
    g = rng(seed, Stream.ANATOMY)
    frame_origin, ct_grid, pet_grid = _grids(SIZES[size], g, patient.centre.pet_spacing_mm)
    fine = pet_grid.subdivided(2)
    box_low = tuple(o - s for o, s in zip(fine.origin_mm, fine.spacing_mm, strict=True))
    box_high = tuple(o + n * s for o, n, s in zip(fine.origin_mm, fine.size, fine.spacing_mm, strict=True))
    anatomy = sample_anatomy(g, patient.weight_kg, frame_origin, box_low, box_high)
    texture = sample_field(anatomy.texture, ct_grid)
    tissue = tissue_map(anatomy, ct_grid, texture)
    lesions = place_lesions(patient, anatomy, ct_grid, tissue, rng(seed, Stream.LESIONS))
    draw_lesions(tissue, lesions, anatomy, ct_grid)
    labels = LABEL_OF_TISSUE[tissue]
    ct = _ct(tissue, texture, ct_grid, patient, g)
    pet = _pet(anatomy, lesions, pet_grid, patient, g)
    acquisition = _acquisition(patient, rng(seed, Stream.ACQUISITION))
    meta = {
        "notice": DEMO_NOTICE,
        "seed": seed,
        "size": size,
        "centre": patient.centre.code,
        "site": patient.site,
        "gtvp_volume_ml": float((labels == GTVP.label).sum() * ct_grid.voxel_volume_ml),
        "gtvp_suv_max_true": patient.tumour_suv_max,
        "nodes": [
            {
                "diameter_mm": s.node.diameter_mm,
                "level": s.node.level,
                "side": s.node.side,
                "suv_max_true": s.node.suv_max,
                "necrotic": s.node.necrotic,
                "centre_frame_mm": s.centre_mm,
            }
            for s in lesions.nodes
        ],
        "patient_frame_origin_mm": frame_origin,
        "true_log_hazard": patient.survival.log_hazard,
    }
    images = [ct_grid.image(ct), pet_grid.image(pet), ct_grid.image(labels), ct_grid.image(tissue)]
    for image in images:
        image.SetMetaData("ITK_FileNotes", DEMO_NOTICE)  # NIfTI `descrip`
    return SyntheticStudy(patient, *images, acquisition, meta)
