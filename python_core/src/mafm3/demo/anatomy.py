"""Head & neck anatomy as a tissue label map, drawn on any grid from a few per-patient shape parameters.

The patient frame is in millimetres, LPS-oriented like the images (x to the patient's left, y posterior, z
superior), with its origin at the larynx (glottis) on the midline. Structures are smooth analytic shapes
(ellipsoids, tubes along curves, shells), painted in anatomical order so that later ones win: body (skin,
subcutaneous fat, muscle with intermuscular fat), lungs, sternocleidomastoid muscles, thyroid, salivary
glands, vessels, orbits and brain, bones (skull, mandible, vertebrae, clavicles), airway and sinuses, tonsils.
Lesions are painted on top by `mafm3.demo.lesions`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from mafm3.demo.grid import Grid, Vector, sample_field, smooth_field


class Tissue(enum.IntEnum):
    OUTSIDE = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    AIRWAY = 4
    CORTICAL_BONE = 5
    CANCELLOUS_BONE = 6
    DISC = 7
    SPINAL_CANAL = 8
    PAROTID = 9
    SUBMANDIBULAR = 10
    TONSIL = 11
    THYROID = 12
    VESSEL = 13
    BRAIN = 14
    EYE = 15
    LUNG = 16
    TUMOUR = 17
    NODE = 18
    NECROSIS = 19


# Neck and shoulder outline by height z: half-width (x), half-depth (y) and centre y, before the body scale.
_OUTLINE = np.array(
    [
        (-230, 165, 105, 35),
        (-130, 170, 95, 35),
        (-95, 120, 80, 33),
        (-70, 75, 66, 30),
        (-45, 62, 62, 28),
        (0, 60, 60, 28),
        (30, 63, 66, 20),
        (60, 66, 76, 12),
        (90, 62, 76, 12),
    ],
    dtype=np.float32,
).T
# Airway lumen by height z: centre y, half-width, half-depth (trachea, glottis, hypo-, oro-, nasopharynx).
_AIRWAY = np.array(
    [
        (-230, 2, 9, 8),
        (-60, -12, 8.5, 8),
        (-25, -10, 9, 9),
        (-5, -8, 6, 10),
        (5, -6, 9, 9),
        (18, -2, 13, 7),
        (30, 3, 12, 8),
        (55, 6, 12, 7),
        (65, 9, 11, 7),
        (82, 9, 9, 6),
    ],
    dtype=np.float32,
).T
AIRWAY_TOP_MM = 82.0
# Centre y of the vertebral bodies by height z (cervical lordosis, thoracic kyphosis).
_SPINE = np.array([(-230, 55), (-100, 40), (-30, 30), (0, 28), (40, 27), (72, 26)], dtype=np.float32).T
SPINE_TOP_MM = 72.0
JUGULAR = (28.0, -18.0, 6.0)  # internal jugular vein: |x|, y relative to the spine, radius (mm)
_BRAIN_CENTRE, _BRAIN_SEMI = (0.0, 12.0, 140.0), (62.0, 80.0, 74.0)
VERTEBRA_PERIOD_MM = 18.0


def outline(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neck outline at heights `z` (mm): half-width, half-depth and centre y, before the body scale."""
    return tuple(np.interp(z, _OUTLINE[0], row).astype(np.float32) for row in _OUTLINE[1:])


def airway(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Airway lumen at heights `z` (mm): centre y, half-width and half-depth."""
    return tuple(np.interp(z, _AIRWAY[0], row).astype(np.float32) for row in _AIRWAY[1:])


def spine_y(z: np.ndarray) -> np.ndarray:
    return np.interp(z, _SPINE[0], _SPINE[1]).astype(np.float32)


@dataclass(frozen=True)
class Anatomy:
    """The shape parameters of one patient's anatomy."""

    frame_origin_mm: Vector  # physical (LPS) position of the patient-frame origin
    body_scale: tuple[float, float]  # outline scale: lateral, anterior-posterior
    fat_mm: float  # subcutaneous fat thickness of the neck
    vertebra_phase_mm: float  # where the vertebral bodies start along z
    texture: sitk.Image  # smooth random field (SD 1) in physical space: intermuscular fat, tissue texture


def sample_anatomy(
    generator: np.random.Generator,
    weight_kg: float,
    frame_origin_mm: Vector,
    box_low_mm: Vector,
    box_high_mm: Vector,
) -> Anatomy:
    """Draw a patient's anatomy; the texture field covers the physical box [low, high]."""
    heavy = (weight_kg - 75.0) / 15.0
    scale = tuple(float(np.clip(generator.normal(1.0, 0.03) + 0.03 * heavy, 0.92, 1.15)) for _ in range(2))
    fat = float(np.clip(5.0 + 2.5 * heavy + generator.normal(0, 1.0), 2.5, 14.0))
    texture = smooth_field(generator, box_low_mm, box_high_mm, sigma_mm=5.0)
    return Anatomy(frame_origin_mm, scale, fat, float(generator.uniform(0, VERTEBRA_PERIOD_MM)), texture)


def _ellipsoid(x, y, z, centre, semi) -> np.ndarray:
    return sum(((c - cc) / s) ** 2 for c, cc, s in zip((x, y, z), centre, semi, strict=True)) <= 1


def _depth(offsets: tuple, semi: tuple) -> np.ndarray:
    """Distance (mm) from each point inside an ellipse/ellipsoid to its surface along the ray from the centre.

    Negative outside. Close to the normal distance for the mildly eccentric shapes here; exact on spheres.
    """
    rho2 = sum((d / s) ** 2 for d, s in zip(offsets, semi, strict=True))
    r2 = sum(d**2 for d in offsets)
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = np.sqrt(r2 / rho2)
    radius = np.where(rho2 > 0, radius, min(float(np.min(s)) for s in semi))
    return (1 - np.sqrt(rho2)) * radius


def _segment_distance(x, y, z, start, end) -> np.ndarray:
    """Distance (mm) from each point to the segment start-end."""
    start, end = np.asarray(start, np.float32), np.asarray(end, np.float32)
    axis = end - start
    t = ((x - start[0]) * axis[0] + (y - start[1]) * axis[1] + (z - start[2]) * axis[2]) / float(axis @ axis)
    t = np.clip(t, 0, 1)
    return np.sqrt(
        (x - start[0] - t * axis[0]) ** 2
        + (y - start[1] - t * axis[1]) ** 2
        + (z - start[2] - t * axis[2]) ** 2
    )


class _Painter:
    """Paints tissues into one grid's label map, each structure inside its own bounding box."""

    def __init__(self, anatomy: Anatomy, grid: Grid, inside: np.ndarray, tissue: np.ndarray):
        self.anatomy, self.grid, self.inside, self.tissue = anatomy, grid, inside, tissue

    def region(self, low: Vector, high: Vector):
        """(slices, x, y, z) of the patient-frame box, or None if it misses the grid."""
        found = self.grid.block(self.anatomy.frame_origin_mm, low, high)
        if found is None:
            return None
        slices, block = found
        return (slices, *block.axes(self.anatomy.frame_origin_mm))

    def paint(self, slices, mask: np.ndarray, tissue: Tissue) -> None:
        view = self.tissue[slices]
        view[np.broadcast_to(mask, view.shape) & self.inside[slices]] = tissue

    def ellipsoid(self, tissue: Tissue, centre: Vector, semi: Vector, mirrored: bool = False) -> None:
        """Paint an ellipsoid (and its mirror image across the midline when `mirrored`)."""
        for side in (1, -1) if mirrored else (1,):
            mirror = (side * centre[0], centre[1], centre[2])
            low = tuple(c - r for c, r in zip(mirror, semi, strict=True))
            high = tuple(c + r for c, r in zip(mirror, semi, strict=True))
            self.shape(low, high, tissue, lambda x, y, z, c=mirror: _ellipsoid(x, y, z, c, semi))

    def shape(self, low, high, tissue: Tissue, inside_of) -> None:
        """Paint `tissue` where `inside_of(x, y, z)` is true within the box."""
        found = self.region(low, high)
        if found is not None:
            slices, x, y, z = found
            self.paint(slices, inside_of(x, y, z), tissue)

    def bone(self, low, high, outer, inner) -> None:
        """Cortical bone where `outer` but not `inner`, cancellous bone where `inner`."""
        found = self.region(low, high)
        if found is not None:
            slices, x, y, z = found
            solid, core = outer(x, y, z), inner(x, y, z)
            self.paint(slices, solid & ~core, Tissue.CORTICAL_BONE)
            self.paint(slices, solid & core, Tissue.CANCELLOUS_BONE)


def body_depth(anatomy: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Depth (mm) below the skin: positive inside the body; union of neck column, cranium and face."""
    sx, sy = anatomy.body_scale
    half_width, half_depth, centre_y = outline(z)
    column = _depth((x, y - centre_y), (half_width * sx, half_depth * sy)) - 2.0 * np.maximum(z - 80.0, 0)
    cranium = _depth((x, y - 12.0, z - 140.0), (74.0 * sx, 92.0 * sy, 88.0))
    face = _depth((x, y + 30.0, z - 55.0), (58.0 * sx, 56.0 * sy, 48.0))
    return _smooth_max(_smooth_max(column, cranium), face)


def _smooth_max(a: np.ndarray, b: np.ndarray, softness_mm: float = 4.0) -> np.ndarray:
    """max(a, b) with the crease where two body parts meet filled in (a hyperbola of width `softness_mm`)."""
    return (a + b) / 2 + np.sqrt(((a - b) / 2) ** 2 + softness_mm**2) - softness_mm


def tissue_map(anatomy: Anatomy, grid: Grid, texture: np.ndarray | None = None) -> np.ndarray:
    """The tissue label map (uint8 `Tissue` values, shape (Z, Y, X)) of the anatomy on `grid`, no lesions.

    `texture` is `anatomy.texture` sampled on the grid (computed here when not given).
    """
    texture = sample_field(anatomy.texture, grid) if texture is None else texture
    x, y, z = grid.axes(anatomy.frame_origin_mm)
    inside = np.empty(grid.shape_zyx, bool)
    tissue = np.empty(grid.shape_zyx, np.uint8)
    fat_mm = np.where(z > 75.0, 3.0, anatomy.fat_mm).astype(np.float32)
    for start in range(0, grid.shape_zyx[0], 16):  # slabs keep the temporaries small on large grids
        slab = slice(start, start + 16)
        depth = body_depth(anatomy, x, y, z[slab])
        inside[slab] = depth > 0
        intermuscular_fat = (z[slab] < 75.0) & (depth > 2.0 + fat_mm[slab] + 3.0) & (texture[slab] > 1.2)
        tissue[slab] = np.select(
            [depth <= 0, depth <= 2.0, (depth <= 2.0 + fat_mm[slab]) | intermuscular_fat],
            [np.uint8(Tissue.OUTSIDE), np.uint8(Tissue.SKIN), np.uint8(Tissue.FAT)],
            np.uint8(Tissue.MUSCLE),
        )
    painter = _Painter(anatomy, grid, inside, tissue)
    _soft_tissues(painter)
    _bones(painter)
    _air_and_tonsils(painter)
    return painter.tissue


# Paired soft-tissue organs in painting order: tissue, centre of the left one (+x), semi-axes (mm).
_PAIRED_ORGANS = (
    (Tissue.FAT, (22.0, 15.0, 45.0), (6.0, 10.0, 18.0)),  # parapharyngeal fat
    (Tissue.THYROID, (17.0, -10.0, -35.0), (8.0, 9.0, 16.0)),  # thyroid lobes
    (Tissue.PAROTID, (47.0, 25.0, 68.0), (11.0, 17.0, 20.0)),
    (Tissue.SUBMANDIBULAR, (30.0, -28.0, 24.0), (9.0, 13.0, 9.0)),
    (Tissue.FAT, (32.0, -55.0, 110.0), (16.0, 20.0, 15.0)),  # orbit
)
_MAXILLARY_SINUS = (30.0, -35.0, 88.0)
_CAROTID = (21.0, -10.0, 4.0)  # common/internal carotid artery: |x|, y relative to the spine, radius (mm)


def _soft_tissues(p: _Painter) -> None:
    p.ellipsoid(Tissue.LUNG, (62.0, 30.0, -240.0), (52.0, 65.0, 125.0), mirrored=True)
    for side in (-1.0, 1.0):  # sternocleidomastoid muscle, in a fat sheath, from mastoid to sternum
        mastoid, sternum = (52.0 * side, 38.0, 78.0), (18.0 * side, -38.0, -88.0)
        found = p.region(
            (min(mastoid[0], sternum[0]) - 12, -52.0, -100.0), (max(mastoid[0], sternum[0]) + 12, 52.0, 90.0)
        )
        if found is not None:
            slices, x, y, z = found
            distance = _segment_distance(x, y, z, mastoid, sternum)
            p.paint(slices, distance <= 10.5, Tissue.FAT)
            p.paint(slices, distance <= 8.0, Tissue.MUSCLE)
    for tissue, centre, semi in _PAIRED_ORGANS:
        p.ellipsoid(tissue, centre, semi, mirrored=True)
    for side in (-1.0, 1.0):
        for vessel_x, vessel_dy, radius in (JUGULAR, _CAROTID):
            found = p.region(
                (vessel_x * side - radius - 1, -40, -240), (vessel_x * side + radius + 1, 60, 78)
            )
            if found is not None:
                slices, x, y, z = found
                lumen = (x - vessel_x * side) ** 2 + (y - spine_y(z) - vessel_dy) ** 2 <= radius**2
                p.paint(slices, lumen, Tissue.VESSEL)
    found = p.region((-70, -75, 60), (70, 100, 220))
    if found is not None:
        slices, x, y, z = found
        p.paint(slices, _ellipsoid(x, y, z, _BRAIN_CENTRE, _BRAIN_SEMI) & (z > _brain_floor(y)), Tissue.BRAIN)
    p.ellipsoid(Tissue.EYE, (32.0, -60.0, 110.0), (12.0, 12.0, 12.0), mirrored=True)


def _brain_floor(y: np.ndarray) -> np.ndarray:
    """Height (mm) of the skull base under the brain: high anteriorly, low at the posterior fossa."""
    return 100.0 - 0.45 * y


def _bones(p: _Painter) -> None:
    centre, semi = _BRAIN_CENTRE, _BRAIN_SEMI

    def skull(grow):
        return lambda x, y, z: (
            _ellipsoid(x, y, z, centre, tuple(s + grow for s in semi)) & (z > _brain_floor(y) - 6)
        )

    p.bone(
        (-72, -78, 60),
        (72, 102, 225),
        lambda x, y, z: skull(7.0)(x, y, z) & ~skull(1.0)(x, y, z),
        lambda x, y, z: skull(4.5)(x, y, z) & ~skull(2.5)(x, y, z),
    )
    p.shape(
        (-66, -72, 60),
        (66, 96, 140),
        Tissue.CORTICAL_BONE,  # skull base
        lambda x, y, z: skull(1.0)(x, y, z) & (z <= _brain_floor(y)),
    )
    p.ellipsoid(Tissue.CORTICAL_BONE, _MAXILLARY_SINUS, (14.0, 18.0, 17.0), mirrored=True)  # walls; air later
    p.shape(
        (-26, -66, 61),
        (26, -6, 66),
        Tissue.CORTICAL_BONE,  # hard palate
        lambda x, y, z: ((x / 25.0) ** 2 + ((y + 36.0) / 29.0) ** 2 <= 1) & (z >= 62.0) & (z <= 65.0),
    )
    _mandible(p)
    _vertebrae(p)
    for side in (-1.0, 1.0):
        medial, lateral = (12.0 * side, -40.0, -92.0), (140.0 * side, 15.0, -78.0)
        p.bone(
            (min(medial[0], lateral[0]) - 8, -48, -100),
            (max(medial[0], lateral[0]) + 8, 23, -70),
            lambda x, y, z, a=medial, b=lateral: _segment_distance(x, y, z, a, b) <= 7.0,
            lambda x, y, z, a=medial, b=lateral: _segment_distance(x, y, z, a, b) <= 4.5,
        )


def _mandible(p: _Painter) -> None:
    """A U-shaped body along an elliptic arc (half-width 44 mm, front 70 mm anterior) and two rami."""
    found = p.region((-52, -80, 24), (52, 40, 84))
    if found is None:
        return
    slices, x, y, z = found
    arc = _depth((x, y - 2.0), (44.0, 72.0))  # signed distance to the arc, in the axial plane
    body_z = (z >= 28.0) & (z <= 52.0)
    body = (np.abs(arc) <= 5.0) & (y <= 2.0) & body_z
    body_core = (np.abs(arc) <= 2.5) & (y <= 2.0) & (z >= 30.5) & (z <= 49.5)
    ramus_y = 2.0 + (z - 30.0) * 0.35
    lateral = np.abs(np.abs(x) - 44.0)
    ramus = (lateral <= 4.0) & (np.abs(y - ramus_y) <= 12.0) & (z >= 28.0) & (z <= 80.0) & (y >= -2.0)
    ramus_core = (lateral <= 1.5) & (np.abs(y - ramus_y) <= 9.5) & (z >= 30.5) & (z <= 77.5) & (y >= 0.5)
    p.paint(slices, body | ramus, Tissue.CORTICAL_BONE)
    p.paint(slices, body_core | ramus_core, Tissue.CANCELLOUS_BONE)


def _vertebrae(p: _Painter) -> None:
    """Vertebral bodies every 18 mm with discs between, neural arches, spinous and transverse processes."""
    found = p.region((-32, -5, -240), (32, 110, SPINE_TOP_MM))
    if found is None:
        return
    slices, x, y, z = found
    centre_y = spine_y(z)
    half_x = np.interp(z, (-230.0, -60.0, 72.0), (15.0, 11.0, 10.0)).astype(np.float32)
    half_y = half_x * 0.75
    phase = np.mod(z - p.anatomy.vertebra_phase_mm, VERTEBRA_PERIOD_MM)
    level = phase < 14.0  # bone; the remaining 4 mm of each period are a disc
    body = ((x / half_x) ** 2 + ((y - centre_y) / half_y) ** 2) <= 1
    body_core = ((x / (half_x - 1.8)) ** 2 + ((y - centre_y) / (half_y - 1.8)) ** 2) <= 1
    canal_y = centre_y + half_y + 8.0
    canal = (x / 8.0) ** 2 + ((y - canal_y) / 7.0) ** 2 <= 1
    arch = ((x / 13.0) ** 2 + ((y - canal_y) / 11.0) ** 2 <= 1) & ~canal
    spinous = (x / 3.5) ** 2 + ((y - canal_y - 18.0) / 10.0) ** 2 <= 1
    transverse = ((np.abs(x) - 18.0) / 7.0) ** 2 + ((y - centre_y - 6.0) / 4.0) ** 2 <= 1
    bone = level & (body | arch | spinous | transverse)
    p.paint(slices, bone, Tissue.CORTICAL_BONE)
    p.paint(slices, level & body_core & (phase > 1.5) & (phase < 12.5), Tissue.CANCELLOUS_BONE)
    p.paint(slices, ~level & body, Tissue.DISC)
    p.paint(slices, canal, Tissue.SPINAL_CANAL)


def _air_and_tonsils(p: _Painter) -> None:
    found = p.region((-16, -40, -240), (16, 20, AIRWAY_TOP_MM))
    if found is not None:
        slices, x, y, z = found
        centre_y, half_width, half_depth = airway(z)
        p.paint(slices, (x / half_width) ** 2 + ((y - centre_y) / half_depth) ** 2 <= 1, Tissue.AIRWAY)
    p.ellipsoid(Tissue.AIRWAY, (0.0, -35.0, 87.0), (9.0, 30.0, 22.0))  # nasal cavity
    p.ellipsoid(Tissue.AIRWAY, _MAXILLARY_SINUS, (12.0, 16.0, 15.0), mirrored=True)
    p.ellipsoid(Tissue.TONSIL, (15.0, 6.0, 42.0), (6.0, 8.0, 10.0), mirrored=True)  # palatine tonsils
    p.ellipsoid(Tissue.TONSIL, (0.0, -7.0, 33.0), (13.0, 5.0, 7.0))  # lingual tonsil
