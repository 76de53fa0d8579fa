"""Per-skill preprocessing: a `Study` to the model's input array, and the model's labels back onto the CT.

Every step is a statement about physical space, so nothing depends on how the input happens to be stored:

1. orientation: the CT's grid is re-expressed with `sitk.DICOMOrient` axes (default "LPS": x -> L, y -> P,
   z -> S). This only permutes and flips axes, so a flipped, permuted or RAS-stored CT gives the same arrays
   as its LPS twin. An oblique CT (a tilted head, an oblique acquisition) is instead resampled into the
   patient's own axes (`Grid.patient_aligned`), so the model sees anatomy in the orientation it was trained
   in; its labels still come back onto the oblique CT's own grid.
2. spacing: that grid at the skill's `spacing_mm` (x, y, z), same origin and direction, size
   ceil(extent / spacing), as the authors do.
3. ROI: a box of `roi_size_mm` on that lattice around a centre from PET uptake (the authors' heuristic) or,
   without PET, from the CT body (`imaging.roi`).
4. resampling: every channel is sampled once, in physical space, at the box's voxel centres: CT linear with
   -1024 HU (air) outside, PET linear with 0 outside, labels nearest with 0 outside. Resampling PET onto the
   CT-derived box (not cropping PET and CT with the same indices on their own grids) and padding CT with air
   fix the authors' G9.
5. arrays: SimpleITK's (z, y, x) arrays are permuted to the skill's `axis_order` (T, H, W) and stacked as
   (C, T, H, W) float32, then normalised per channel.

Axis order (method-spec G8): the default "zyx" gives T = z (axial slices, S), H = y (P), W = x (L), so the
CT-ViT attends within axial planes as in CT-CLIP pre-training. The authors' prognosis loader used (z, x, y)
("zxy"); their segmentation loader, after MONAI `Orientationd("PLS")`, used (y, x, z) ("yxz"). Set those to
reproduce them (the authors kept the files' own voxel directions, so a flip of x or y may differ; choose
`orientation` to match, e.g. "RAS").

Labels come back with `labels_to_ct_grid`: (T, H, W) -> (z, y, x) on the box -> nearest neighbour (label-
Gaussian interpolation for an oblique CT) onto the original CT's grid. When the skill spacing divides the CT
spacing (e.g. 1 mm for a 2 mm CT) of an axis-aligned CT, every CT voxel centre is a box voxel centre and the
round trip is exact; for an oblique CT it is exact up to the boundary voxels of a mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

from mafm3.imaging.resample import OBLIQUE_TOLERANCE, Grid, resample_onto
from mafm3.imaging.roi import BODY_HU, centred_grid, ct_body_centre, pet_uptake_centre, roi_grid
from mafm3.imaging.study import Study
from mafm3.imaging.validation import require_pet
from mafm3.progress import ProgressCallback, silent_progress

CHANNELS = ("ct", "pet")
NORMALISATIONS = ("window", "zscore", "none")
ROI_METHODS = ("auto", "pet", "ct", "centre", "none")
OUTSIDE_VALUE = {"ct": -1024.0, "pet": 0.0}  # air for CT, no uptake for PET
# Where there is something to find (`PreparedInput.occupied`): tissue denser than lung and air (the body
# threshold of `roi.ct_body_centre`), or PET above background soft tissue (tumours and nodes take up more).
OCCUPIED_ABOVE = {"ct": BODY_HU, "pet": 1.0}  # HU, SUV


@dataclass(frozen=True)
class PreprocessingConfig:
    """How one skill wants its input; the `preprocessing` section of its manifest (see `from_dict`).

    ct_normalisation / pet_normalisation: "window" maps the window linearly to [-1, 1] and clips; "zscore"
    subtracts the channel's mean and divides by its standard deviation over the ROI (the authors' PET/CT
    skill; z-scoring their (HU + 1024) / 2048 equals z-scoring HU); "none" keeps HU / SUV.
    roi_method: "pet" (uptake heuristic, needs PET), "ct" (body fallback), "auto" (PET when there is one),
    "centre" (CT-CLIP's symmetric crop / pad about the volume's centre, `roi.centred_grid`), "none" (the whole
    resampled volume; `roi_size_mm` is ignored).
    """

    spacing_mm: tuple[float, float, float] = (0.75, 0.75, 1.5)  # (x, y, z) after orientation
    orientation: str = "LPS"  # DICOMOrient code of the model grid's axes
    axis_order: str = "zyx"  # which oriented axes become the array's (T, H, W)
    channels: tuple[str, ...] = ("ct",)  # C, CT first
    interpolator: str = "linear"  # for CT and PET ("bspline" as the authors)
    ct_window_hu: tuple[float, float] = (-1024.0, 1024.0)
    ct_normalisation: str = "window"
    pet_window_suv: tuple[float, float] = (0.0, 20.0)
    pet_normalisation: str = "zscore"
    roi_method: str = "auto"
    roi_size_mm: tuple[float, float, float] = (360.0, 360.0, 360.0)  # (x, y, z); 480 x 480 x 240 voxels

    def __post_init__(self):
        if len(self.spacing_mm) != 3 or not all(s > 0 for s in self.spacing_mm):
            raise ValueError(f"`spacing` must be 3 positive numbers (x, y, z) in mm, got {self.spacing_mm}")
        axes = sorted(self.orientation.upper()) if len(self.orientation) == 3 else []
        if [sum(c in pair for c in axes) for pair in ("LR", "AP", "IS")] != [1, 1, 1]:
            raise ValueError(
                f"`orientation` must name one of L/R, A/P and I/S each, e.g. 'LPS', got {self.orientation!r}"
            )
        if sorted(self.axis_order) != ["x", "y", "z"]:
            raise ValueError(f"`axis_order` must be a permutation of 'xyz', got {self.axis_order!r}")
        if not self.channels or self.channels[0] != "ct" or not set(self.channels) <= set(CHANNELS):
            raise ValueError(f"`channels` must be ['ct'] or ['ct', 'pet'], got {list(self.channels)}")
        for name in ("ct_normalisation", "pet_normalisation"):
            if getattr(self, name) not in NORMALISATIONS:
                raise ValueError(f"`{name}` must be one of {NORMALISATIONS}, got {getattr(self, name)!r}")
        for name in ("ct_window_hu", "pet_window_suv"):
            low, high = getattr(self, name)
            if not low < high:
                raise ValueError(f"`{name}` must be [low, high] with low < high, got {[low, high]}")
        if self.roi_method not in ROI_METHODS:
            raise ValueError(f"`roi.method` must be one of {ROI_METHODS}, got {self.roi_method!r}")
        if len(self.roi_size_mm) != 3 or not all(s > 0 for s in self.roi_size_mm):
            raise ValueError(f"`roi.size_mm` must be 3 positive numbers (x, y, z), got {self.roi_size_mm}")
        if self.interpolator not in ("linear", "bspline"):
            raise ValueError(f"`interpolator` must be 'linear' or 'bspline', got {self.interpolator!r}")

    @classmethod
    def from_dict(cls, values: dict) -> PreprocessingConfig:
        """From a manifest's `preprocessing` section, e.g.
        {"spacing": [0.75, 0.75, 1.5], "orientation": "LPS", "axis_order": "zyx", "channels": ["ct", "pet"],
         "ct_window": [-1024, 1024], "ct_normalisation": "window", "pet_normalisation": "zscore",
         "roi": {"method": "auto", "size_mm": [360, 360, 360]}}; missing keys keep their defaults.
        Raises `ValueError` naming an unknown key or a bad value.
        """
        kwargs = {}
        for key, value in values.items():
            if key == "roi":
                unknown = sorted(set(value) - {"method", "size_mm"})
                if unknown:
                    raise ValueError(f"unknown `roi` key(s) {unknown}: use `method` and `size_mm`")
                kwargs.update({f"roi_{name}": v for name, v in value.items()})
            elif key in _MANIFEST_KEYS:
                kwargs[_MANIFEST_KEYS[key]] = value
            else:
                raise ValueError(f"unknown preprocessing key `{key}`: use {sorted([*_MANIFEST_KEYS, 'roi'])}")
        return cls(**{name: tuple(v) if isinstance(v, list) else v for name, v in kwargs.items()})

    def to_dict(self) -> dict:
        """The manifest form (`from_dict(to_dict())` gives the same config)."""
        values = {name: list(v) if isinstance(v, tuple) else v for name, v in asdict(self).items()}
        manifest = {key: values[name] for key, name in _MANIFEST_KEYS.items()}
        manifest["roi"] = {"method": self.roi_method, "size_mm": list(self.roi_size_mm)}
        return manifest


# manifest key -> field name; `roi` is a nested {"method", "size_mm"}.
_MANIFEST_KEYS = {
    "spacing": "spacing_mm",
    "orientation": "orientation",
    "axis_order": "axis_order",
    "channels": "channels",
    "interpolator": "interpolator",
    "ct_window": "ct_window_hu",
    "ct_normalisation": "ct_normalisation",
    "pet_window": "pet_window_suv",
    "pet_normalisation": "pet_normalisation",
}


@dataclass
class PreparedInput:
    """The model's input and what maps its outputs back.

    array: (C, T, H, W) float32, channels in `channels` order, axes in `axis_order`.
    grid: the model grid (post-orientation, post-resampling, post-ROI) in SimpleITK (x, y, z) terms.
    roi: {"method": "pet" | "ct" | "none", "centre_lps": [mm] or None, "start_index": on the resampled grid}.
    occupied: (T, H, W) bool, voxels with something to find: CT above -500 HU or PET above 1 SUV
    (`occupied_voxels`); outside them lie only air, lung and the space around the patient, without uptake.
    """

    array: np.ndarray
    grid: Grid
    axis_order: str
    channels: tuple[str, ...]
    roi: dict
    occupied: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(T, H, W) of the model arrays."""
        return self.array.shape[1:]


def model_grid(study: Study, config: PreprocessingConfig, skill_name: str = "the skill") -> tuple[Grid, dict]:
    """The ROI box on the oriented, resampled CT grid (steps 1-3), and how the ROI was found."""
    grid = Grid.of(study.ct).patient_aligned(config.orientation).with_spacing(config.spacing_mm)
    method = config.roi_method
    if method == "auto":
        method = "pet" if study.pet is not None else "ct"
    if method == "none":
        return grid, {"method": "none", "centre_lps": None, "start_index": [0, 0, 0]}
    if method == "centre":
        box, start = centred_grid(grid, config.roi_size_mm)
        centre = box.index_to_point((np.asarray(box.size) - 1) / 2)
        return box, {"method": method, "centre_lps": [float(v) for v in centre], "start_index": list(start)}
    if method == "pet":
        require_pet(study, skill_name)
        centre = pet_uptake_centre(study.pet)
    else:
        centre = ct_body_centre(study.ct)
    box, start = roi_grid(grid, centre, config.roi_size_mm)
    return box, {"method": method, "centre_lps": [float(v) for v in centre], "start_index": list(start)}


def prepare_input(
    study: Study,
    config: PreprocessingConfig,
    *,
    skill_name: str = "the skill",
    progress: ProgressCallback = silent_progress,
) -> PreparedInput:
    """The model input of one skill for one study (steps 1-5 of the module docstring).

    Raises `MAFM3Error` when the skill needs a PET and the study has none.
    """
    grid, roi, channels = model_channels(study, config, skill_name=skill_name, progress=progress)
    methods = {"ct": config.ct_normalisation, "pet": config.pet_normalisation}
    windows = {"ct": config.ct_window_hu, "pet": config.pet_window_suv}
    arrays = [normalise(array, methods[name], windows[name]) for name, array in channels.items()]
    progress("preprocess", 1.0, "input ready")
    occupied = occupied_voxels(channels)
    return PreparedInput(np.stack(arrays), grid, config.axis_order, tuple(config.channels), roi, occupied)


def model_channels(
    study: Study,
    config: PreprocessingConfig,
    *,
    skill_name: str = "the skill",
    progress: ProgressCallback = silent_progress,
) -> tuple[Grid, dict, dict[str, np.ndarray]]:
    """Steps 1-4: the model grid, how its ROI was found, and each channel on it before normalisation,
    {"ct": (T, H, W) float32 HU, "pet": (T, H, W) float32 SUV} in `config.channels` order."""
    if "pet" in config.channels:
        require_pet(study, skill_name)
    progress("preprocess", 0.0, "placing the region of interest")
    grid, roi = model_grid(study, config, skill_name)
    images = {"ct": study.ct, "pet": study.pet}
    channels = {}
    for number, channel in enumerate(config.channels):
        progress("preprocess", (number + 0.5) / len(config.channels), f"resampling the {channel.upper()}")
        channels[channel] = to_model_array(
            images[channel], grid, config.axis_order, config.interpolator, OUTSIDE_VALUE[channel]
        )
    return grid, roi, channels


def occupied_voxels(channels: dict[str, np.ndarray]) -> np.ndarray:
    """(T, H, W) bool: where any channel (CT in HU, PET in SUV, each (T, H, W)) is above `OCCUPIED_ABOVE`."""
    masks = [array > OCCUPIED_ABOVE[channel] for channel, array in channels.items()]
    return np.logical_or.reduce(masks)


def to_model_array(
    image: sitk.Image,
    grid: Grid,
    axis_order: str = "zyx",
    interpolator: str = "nearest",
    default_value: float = 0.0,
) -> np.ndarray:
    """`image` sampled on the model grid, as a (T, H, W) array in `axis_order` (float32 unless nearest).

    With "nearest" the pixel type is kept, so a label map drawn on the CT comes out as model-space labels.
    """
    resampled = resample_onto(image, grid, interpolator, default_value)
    array = np.ascontiguousarray(sitk.GetArrayFromImage(resampled).transpose(_to_model_axes(axis_order)))
    return array if interpolator == "nearest" else array.astype(np.float32, copy=False)


def labels_to_ct_grid(labels: np.ndarray, prepared: PreparedInput, original_ct: sitk.Image) -> sitk.Image:
    """Model-space labels (T, H, W) back onto the original CT's grid (same size, spacing, origin, direction).

    Nearest neighbour when the model grid's axes are the CT's (exact where the spacings divide); for an
    oblique CT, whose model grid is rotated against it, SimpleITK's label-Gaussian interpolation, which
    avoids nearest neighbour's staircase at rotated boundaries (measured on oblique copies of the held-out
    demo cohort: GTVp Dice 0.796 -> 0.805, GTVn aggregated 0.621 -> 0.640). Voxels outside the ROI box get
    0 (background). Returns a uint8 label image.
    """
    on_box = _on_model_grid(labels.astype(np.uint8, copy=False), prepared)
    ct_grid = Grid.of(original_ct)
    cosines = np.abs(prepared.grid.matrix.T @ ct_grid.matrix)  # 1 where axes coincide
    if cosines.max(axis=0).min() > 1 - OBLIQUE_TOLERANCE:
        return resample_onto(on_box, original_ct, "nearest", 0)
    return _labels_onto_oblique_grid(on_box, sitk.GetArrayViewFromImage(on_box), prepared.grid, ct_grid)


def model_array_to_ct_grid(
    array: np.ndarray,
    prepared: PreparedInput,
    original_ct: sitk.Image,
    interpolator: str,
    default_value: float = 0.0,
) -> sitk.Image:
    """A continuous model-space map (T, H, W), e.g. the uncertainty, back onto the original CT's grid with
    `interpolator` ("linear"), keeping its pixel type; voxels outside the ROI box get `default_value`."""
    return resample_onto(_on_model_grid(array, prepared), original_ct, interpolator, default_value)


def _on_model_grid(array: np.ndarray, prepared: PreparedInput) -> sitk.Image:
    """A model-space array (T, H, W) as an image on the model grid (axes back to SimpleITK's (z, y, x))."""
    if array.shape != prepared.shape:
        raise ValueError(f"`array` has shape {array.shape}, the model arrays are {prepared.shape}")
    array_zyx = np.ascontiguousarray(array.transpose(np.argsort(_to_model_axes(prepared.axis_order))))
    return prepared.grid.image_from_array(array_zyx)


def _labels_onto_oblique_grid(
    on_box: sitk.Image, array_zyx: np.ndarray, box: Grid, ct_grid: Grid
) -> sitk.Image:
    """Label-Gaussian resampling onto the CT's grid, only over the CT voxels around the labels' box (it costs
    about 20 times nearest neighbour per voxel, and most of a CT is background)."""
    out = np.zeros(ct_grid.size[::-1], np.uint8)
    labelled = np.argwhere(array_zyx > 0)[:, ::-1]  # (x, y, z) indices on the box
    if labelled.size:
        low, high = labelled.min(axis=0) - 1, labelled.max(axis=0) + 1
        corners = box.crop(low, high - low + 1).corners()
        ct_indices = np.array([ct_grid.point_to_index(point) for point in corners])
        start = np.clip(np.floor(ct_indices.min(axis=0)).astype(int), 0, None)
        stop = np.minimum(np.ceil(ct_indices.max(axis=0)).astype(int) + 1, ct_grid.size)
        if (stop > start).all():
            part = resample_onto(on_box, ct_grid.crop(start, stop - start), "label", 0)
            out[start[2] : stop[2], start[1] : stop[1], start[0] : stop[0]] = sitk.GetArrayViewFromImage(part)
    return ct_grid.image_from_array(out)


def normalisation(array: np.ndarray, method: str, window: tuple[float, float]) -> tuple[float, float, bool]:
    """The linear map `normalise` applies to `array`: (offset, scale, clip), normalised = (array - offset) ·
    scale, clipped to [-1, 1] when clip. "window" maps the window onto [-1, 1]; "zscore" uses the array's mean
    and standard deviation; "none" is the identity."""
    if method == "window":
        low, high = window
        return (low + high) / 2, 2.0 / (high - low), True
    if method == "zscore":
        spread = float(array.std())
        return float(array.mean()), 1.0 / (spread if spread > 0 else 1.0), False
    return 0.0, 1.0, False


def normalise(
    array: np.ndarray,
    method: str,
    window: tuple[float, float],
    mapping: tuple[float, float, bool] | None = None,
) -> np.ndarray:
    """One channel's intensities: "window" -> [-1, 1] clipped, "zscore", or "none" (float32, any shape).
    mapping: the (offset, scale, clip) of `normalisation` to apply instead of computing it from `array`."""
    array = array.astype(np.float32, copy=False)
    offset, scale, clip = mapping or normalisation(array, method, window)
    result = (array - np.float32(offset)) * np.float32(scale)
    return np.clip(result, -1.0, 1.0, dtype=np.float32) if clip else result.astype(np.float32, copy=False)


def _to_model_axes(axis_order: str) -> tuple[int, int, int]:
    """numpy transpose taking SimpleITK's (z, y, x) array to `axis_order`."""
    return tuple("zyx".index(axis) for axis in axis_order)
