"""The geometry of a DICOM series from its slices' own positions, checked and, where it is safe, repaired.

GDCM (through SimpleITK) reads a series as if its slices were evenly spaced along the slice normal: it sorts
them by position and imposes one spacing. A series with duplicated slices, missing slices, uneven spacing
or a gantry tilt (slices shifted in-plane: a sheared stack) is then read with every slice at a wrong
height, silently. Here each slice's ImagePositionPatient is projected on the slice normal (the cross product
of the ImageOrientationPatient row and column directions), as DICOM defines the stacking, independent of
file order or InstanceNumber, and:

| what the positions show | what happens |
|---|---|
| evenly spaced along the normal (steps within 1 %, in-plane shifts under 0.05 mm) | read as it is |
| a slice repeated at one position with identical pixels | the copy is dropped, with a warning |
| slices at one position with different pixels (two acquisitions mixed) | refused |
| up to `MAX_MISSING_SLICES` missing in a row, uneven spacing, gantry tilt | resampled (below), warned |
| a longer gap (a step over 3 typical steps), slices with different orientations | refused |

A repaired stack is resampled onto a regular grid from the slices' true positions: linear along the normal,
each slice shifted in-plane by its own offset. The regular grid keeps the series' row and column directions
and pixel spacing, takes the slice normal as its third axis and the typical (median) slice step as its spacing
(the smallest one, at least half the median, when steps are uneven), and covers every slice's in-plane
footprint. This is what Slicer's acquisition-geometry regularisation does. What libraries offer was not
enough: ITK only warns ("Non uniform sampling or missing slices detected") and imposes one spacing;
highdicom's `get_volume_positions` says regular or not but neither why nor how to repair, and it is an
optional dependency here (it needs pydicom 3, Slicer 5.10 bundles pydicom 2.4); SimpleITK has no resampler for
an irregular stack. So the diagnosis is a few lines of numpy on the positions, and the interpolation uses
scipy (`ndimage.shift` for in-plane offsets).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pydicom
import SimpleITK as sitk
from scipy import ndimage

from mafm3.errors import MAFM3Error

MAX_MISSING_SLICES = 2  # a gap of up to 2 missing slices is interpolated; a longer one is refused
SAME_POSITION_MM = 0.01  # slices closer than this along the normal share a position
REGULAR_SPACING_RTOL = 0.01  # steps within 1 % of the typical one are regular (highdicom's default too)
IN_PLANE_TOLERANCE_MM = 0.05  # slices shifted in-plane by more than this: a gantry tilt
_HEADER_TAGS = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"]


@dataclass
class SeriesGeometry:
    """The slices of a series in stacking order and what their positions say.

    files: the files to read, sorted along the slice normal, duplicates removed.
    regular: True when the slices are evenly spaced along the normal (no resampling needed).
    warnings: one sentence per problem found and repaired.
    record: JSON-serialisable description for result.json (`sources.<image>.geometry`).
    """

    files: list[str]
    regular: bool
    warnings: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict)
    normal_mm: np.ndarray | None = None  # (N,) slice positions along the normal, for the files
    in_plane_mm: np.ndarray | None = None  # (N, 2) offsets along the row and column directions
    orientation: np.ndarray | None = None  # (6,) ImageOrientationPatient
    pixel_spacing: tuple[float, float] = (1.0, 1.0)  # (column step x, row step y) in mm
    first_position: np.ndarray | None = None  # (3,) ImagePositionPatient of the first file


def check_series_geometry(files: list[str], name: str) -> SeriesGeometry:
    """Sort `files` along their slice normal, drop exact duplicates and diagnose the spacing.

    name: how the user knows the series ("The CT series").
    Raises `MAFM3Error` for conflicting duplicates, a gap longer than `MAX_MISSING_SLICES` slices, or slices
    with different orientations. Files without ImagePositionPatient (e.g. one multi-frame file) are left to
    GDCM as they are.
    """
    headers = [pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS) for path in files]
    positioned = all("ImagePositionPatient" in h and "ImageOrientationPatient" in h for h in headers)
    if len(files) < 2 or not positioned:
        return SeriesGeometry(list(files), regular=True)
    orientations = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        raise MAFM3Error(
            f"{name} mixes slices of different orientations (ImageOrientationPatient): it is not one volume; "
            f"export the series again or pick another one."
        )
    row, column = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(row, column)
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    order = np.argsort(positions @ normal, kind="stable")
    files, positions = [files[i] for i in order], positions[order]
    geometry = SeriesGeometry(
        files,
        regular=True,
        orientation=orientations[0],
        pixel_spacing=_pixel_spacing(headers[order[0]]),
    )
    files, positions = _drop_duplicates(files, positions, normal, name, geometry)
    geometry.files = files
    if len(files) > 1:
        _diagnose(geometry, positions, row, column, normal, name)
    return geometry


def _pixel_spacing(header: pydicom.Dataset) -> tuple[float, float]:
    """(x, y) in mm: DICOM's PixelSpacing is (row step, column step) = (y, x)."""
    spacing = header.get("PixelSpacing") or [1.0, 1.0]
    return float(spacing[1]), float(spacing[0])


def _drop_duplicates(
    files: list[str], positions: np.ndarray, normal: np.ndarray, name: str, geometry: SeriesGeometry
) -> tuple[list[str], np.ndarray]:
    """Drop slices repeating a position with identical pixels; refuse ones with different pixels."""
    heights = positions @ normal
    keep = [0]
    dropped = []
    for index in range(1, len(files)):
        same = abs(heights[index] - heights[keep[-1]]) < SAME_POSITION_MM
        if not same:
            keep.append(index)
            continue
        if not np.array_equal(_pixels(files[index]), _pixels(files[keep[-1]])):
            raise MAFM3Error(
                f"{name} holds two different slices at the same position ({heights[index]:.2f} mm along the "
                f"slice normal): it mixes two acquisitions; export one series, or choose one with "
                f"--ct-series / --pet-series."
            )
        dropped.append(files[index])
    if dropped:
        geometry.warnings.append(
            f"{name} held {len(dropped)} duplicated slice(s) (same position, identical pixels); "
            f"the copies were ignored."
        )
        geometry.record["duplicates_dropped"] = len(dropped)
    return [files[i] for i in keep], positions[keep]


def _pixels(path: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def _diagnose(
    geometry: SeriesGeometry,
    positions: np.ndarray,
    row: np.ndarray,
    column: np.ndarray,
    normal: np.ndarray,
    name: str,
) -> None:
    """Find missing slices, uneven steps and a tilt, and for an irregular stack choose its regular spacing;
    refuse a gap too long to interpolate. A regular stack leaves `geometry` as it is."""
    offsets = positions - positions[0]
    heights = offsets @ normal
    in_plane = np.stack([offsets @ row, offsets @ column], axis=1)
    steps = np.diff(heights)
    typical = float(np.median(steps))
    multiples = steps / typical
    off_lattice = np.abs(multiples - np.rint(multiples)) > REGULAR_SPACING_RTOL * np.rint(multiples).clip(1)
    uneven = off_lattice | (multiples < 1 - REGULAR_SPACING_RTOL)
    missing = np.where(uneven, 0, np.rint(multiples).astype(int) - 1)
    # Missing slices keep the typical step; uneven steps are sampled at the finest one (at least half the
    # typical step, so that one odd pair of positions cannot blow the grid up).
    spacing = float(max(steps.min(), 0.5 * typical)) if uneven.any() else typical
    tilt_deg = float(np.degrees(np.arctan2(np.linalg.norm(in_plane[-1]), heights[-1])))
    if steps.max() > (MAX_MISSING_SLICES + 1 + REGULAR_SPACING_RTOL) * typical:
        where = int(steps.argmax())
        missing_there = round(multiples[where]) - 1
        raise MAFM3Error(
            f"{name} has a gap of {steps[where]:.1f} mm between two slices (about {missing_there} "
            f"missing slices of {typical:.2f} mm, at {heights[where]:.1f} mm from its first slice): anatomy "
            f"there cannot be recovered; export the complete series."
        )
    problems = []
    if missing.max() > 0:
        problems.append(f"{int(missing.sum())} missing slice(s)")
    if uneven.any():
        problems.append(f"uneven slice spacing ({steps.min():.2f}-{steps.max():.2f} mm)")
    if np.abs(in_plane).max() > IN_PLANE_TOLERANCE_MM:
        problems.append(f"a gantry tilt of {tilt_deg:.1f} degrees (slices shifted in-plane)")
    if not problems:
        return
    geometry.regular = False
    geometry.normal_mm = heights
    geometry.in_plane_mm = in_plane
    geometry.first_position = positions[0]
    description = ", ".join(problems)
    geometry.warnings.append(
        f"{name} has {description}: it was resampled onto a regular {spacing:.2f} mm grid from the slices' "
        f"true positions, and the results lie on that grid."
    )
    geometry.record.update(
        {
            "regularised": True,
            "problems": problems,
            "slice_spacing_mm": spacing,
            "slice_steps_mm": [round(float(s), 4) for s in steps],
            "tilt_degrees": round(tilt_deg, 3),
        }
    )


def regularise(stack: sitk.Image, geometry: SeriesGeometry) -> sitk.Image:
    """The slices of `stack` (read in `geometry.files` order) on a regular grid along the slice normal.

    stack: (x, y, N) image whose slice k holds file k's pixels (its geometry is ignored).
    Returns: float32 image, direction (row, column, normal), spacing (pixel x, pixel y, the chosen step),
    covering every slice's in-plane footprint; voxels outside every slice get the stack's minimum (air or
    zero uptake). Each output slice interpolates linearly between the two input slices around its height,
    each shifted by its own in-plane offset.
    """
    values = sitk.GetArrayViewFromImage(stack).astype(np.float32)  # (N, rows, columns)
    outside = float(values.min())
    spacing_z = geometry.record["slice_spacing_mm"]
    step_x, step_y = geometry.pixel_spacing
    heights, in_plane = geometry.normal_mm, geometry.in_plane_mm
    low = in_plane.min(axis=0)  # the regular grid's in-plane origin, as offsets along row and column
    extra = np.ceil((in_plane.max(axis=0) - low) / (step_x, step_y) - 1e-6).astype(int)
    rows, columns = values.shape[1] + extra[1], values.shape[2] + extra[0]
    n_slices = int(np.floor(heights[-1] / spacing_z + 1e-6)) + 1
    out = np.full((n_slices, rows, columns), outside, np.float32)
    for index in range(n_slices):
        height = index * spacing_z
        above = int(np.clip(np.searchsorted(heights, height, side="right"), 1, len(heights) - 1))
        below = above - 1
        weight = (height - heights[below]) / (heights[above] - heights[below])
        shift_below, shift_above = ((in_plane[k] - low) / (step_x, step_y) for k in (below, above))
        out[index] = (1 - weight) * _placed(values[below], shift_below, out.shape[1:], outside)
        if weight > 0:
            out[index] += weight * _placed(values[above], shift_above, out.shape[1:], outside)
    image = sitk.GetImageFromArray(out)
    row, column = geometry.orientation[:3], geometry.orientation[3:]
    image.SetSpacing((step_x, step_y, spacing_z))
    image.SetOrigin(tuple(float(v) for v in geometry.first_position + low[0] * row + low[1] * column))
    direction = np.stack([row, column, np.cross(row, column)], axis=1)  # columns: the x, y, z axes
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    return image


def _placed(slice_yx: np.ndarray, shift_xy: np.ndarray, shape: tuple[int, int], outside: float) -> np.ndarray:
    """One slice placed on the regular grid's in-plane lattice, shifted by `shift_xy` (x, y) in pixels."""
    placed = np.full(shape, outside, np.float32)
    placed[: slice_yx.shape[0], : slice_yx.shape[1]] = slice_yx
    if not np.any(shift_xy):
        return placed
    return ndimage.shift(placed, (shift_xy[1], shift_xy[0]), order=1, mode="constant", cval=outside)
