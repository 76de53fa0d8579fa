"""The primary tumour (GTVp) and metastatic nodes (GTVn), placed once on the CT grid and drawn on any grid.

GTVp is the part of an irregular shape that grows into soft tissue beside the airway (never into air,
bone, the spinal canal, brain or skin; it may swallow a vessel): the level set
`rho(p) - 0.35 * field(p) <= threshold`, where rho is the normalised radius of an ellipsoid and `field` a
smooth random field (SD 1) that makes the surface lobulated.
The threshold is chosen on the CT grid so that the largest connected part holds exactly the patient's volume;
the same threshold draws the tumour on the PET's fine grid. Uptake rises from the rim to the core.

Nodes are near-spherical ellipsoids of the patient's diameter (equal-volume sphere). The centre is drawn
uniformly from the places where the node fits in soft tissue, at least a voxel away from the other lesions:
near the jugular vein at the node's level (II: 22 to 52 mm above the glottis, III: -2 to 24 mm, IV: -38 to
-2 mm) if possible, else anywhere near the vein, else anywhere on that side of the neck. Large nodes may have
a necrotic core.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from mafm3.demo.anatomy import JUGULAR, Anatomy, Tissue, airway, spine_y
from mafm3.demo.grid import Grid, Vector, sample_field, smooth_field
from mafm3.demo.patients import Node, Patient

_FIELD_AMPLITUDE = 0.35
_LEVEL_HEIGHTS_MM = {"II": (22.0, 52.0), "III": (-2.0, 24.0), "IV": (-38.0, -2.0)}
_LESION_TISSUES = (Tissue.TUMOUR, Tissue.NODE, Tissue.NECROSIS)
# Tissues a lesion may replace (indexed by `Tissue`); it stays out of everything else.
LESION_HOSTS = np.isin(
    np.arange(len(Tissue)),
    [
        Tissue.FAT,
        Tissue.MUSCLE,
        Tissue.PAROTID,
        Tissue.SUBMANDIBULAR,
        Tissue.TONSIL,
        Tissue.THYROID,
        Tissue.VESSEL,
    ],
)
# Where nodes are searched for on the left side of the neck (patient frame, mm); mirrored for the right.
_NODE_SEARCH_BOX = ((10.0, -45.0, -55.0), (75.0, 50.0, 70.0))


@dataclass(frozen=True)
class TumourShape:
    centre_mm: Vector  # patient frame
    semi_mm: Vector
    field: sitk.Image  # lobulation field in physical space
    threshold: float  # level enclosing the tumour
    core_level: float  # lowest level inside the tumour on the CT grid (the hottest point)
    suv_max: float


@dataclass(frozen=True)
class NodeShape:
    node: Node
    centre_mm: Vector  # patient frame
    semi_mm: Vector


@dataclass(frozen=True)
class Lesions:
    tumour: TumourShape
    nodes: tuple[NodeShape, ...]


def _tumour_level(tumour_centre, semi, field: sitk.Image, block: Grid, x, y, z) -> np.ndarray:
    rho = np.sqrt(sum(((c - tc) / s) ** 2 for c, tc, s in zip((x, y, z), tumour_centre, semi, strict=True)))
    return rho - _FIELD_AMPLITUDE * sample_field(field, block)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    components = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8))))
    return sitk.GetArrayViewFromImage(components) == 1


def _tumour_box(centre, semi) -> tuple[Vector, Vector]:
    reach = 2.2 * max(semi)
    return tuple(c - reach for c in centre), tuple(c + reach for c in centre)


def _place_tumour(
    patient: Patient, anatomy: Anatomy, grid: Grid, tissue: np.ndarray, generator: np.random.Generator
) -> TumourShape:
    radius = (3 * patient.tumour_volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)
    stretch = generator.uniform(0.85, 1.2, 3) * (0.8, 1.1, 1.2)  # spreads along the mucosa more than across
    semi = tuple(float(s) for s in radius * stretch / np.prod(stretch) ** (1 / 3))
    if patient.site == "oropharynx":
        height = generator.uniform(30.0, 48.0)
        direction = (
            np.array([patient.side, -1.0]) if generator.random() < 0.3 else np.array([patient.side, 0.2])
        )
    else:
        height = generator.uniform(-12.0, 10.0)
        direction = np.array([patient.side, -0.4])
    centre_y, half_width, half_depth = (float(v) for v in airway(np.float32(height)))
    direction = direction / np.linalg.norm(direction)
    wall = 1 / np.sqrt((direction[0] / half_width) ** 2 + (direction[1] / half_depth) ** 2)
    offset = wall + 0.3 * radius
    centre = (float(direction[0] * offset), centre_y + float(direction[1] * offset), float(height))
    low, high = _tumour_box(centre, semi)
    physical = [
        tuple(v + f for v, f in zip(corner, anatomy.frame_origin_mm, strict=True)) for corner in (low, high)
    ]
    field = smooth_field(generator, *physical, sigma_mm=max(3.0, 0.35 * radius))
    slices, block = grid.block(anatomy.frame_origin_mm, low, high)
    level = _tumour_level(centre, semi, field, block, *block.axes(anatomy.frame_origin_mm))
    allowed = LESION_HOSTS[tissue[slices]]
    target = round(patient.tumour_volume_ml / grid.voxel_volume_ml)
    wanted = target
    for _ in range(6):  # grow the threshold until the largest connected part holds the target volume
        levels = np.sort(level[allowed])
        wanted = min(wanted, levels.size - 1)
        threshold = float((levels[wanted - 1] + levels[wanted]) / 2)
        inside = _largest_component(allowed & (level <= threshold))
        missing = target - int(inside.sum())
        if missing <= 0:
            break
        wanted += missing
    return TumourShape(centre, semi, field, threshold, float(level[inside].min()), patient.tumour_suv_max)


def _node_semi(node: Node, generator: np.random.Generator) -> Vector:
    stretch = generator.uniform(0.9, 1.12, 3) * (1.0, 1.0, 1.1)
    return tuple(float(s) for s in node.diameter_mm / 2 * stretch / np.prod(stretch) ** (1 / 3))


def _ellipsoid_rho2(x, y, z, centre, semi) -> np.ndarray:
    return sum(((c - cc) / s) ** 2 for c, cc, s in zip((x, y, z), centre, semi, strict=True))


def _distance_mm(obstacle: np.ndarray, block: Grid) -> np.ndarray:
    """Distance (mm) from each voxel centre to the nearest `obstacle` voxel centre (0 on obstacles)."""
    image = block.image(obstacle.astype(np.uint8))
    distance = sitk.SignedMaurerDistanceMap(
        image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return np.maximum(sitk.GetArrayFromImage(distance), 0)


def _place_node(
    node: Node, anatomy: Anatomy, grid: Grid, occupied: np.ndarray, generator: np.random.Generator
) -> NodeShape:
    """Draw the node's centre among the voxels where it fits (see the module docstring)."""
    semi = _node_semi(node, generator)
    low, high = _NODE_SEARCH_BOX
    low, high = (node.side * low[0], low[1], low[2]), (node.side * high[0], high[1], high[2])
    slices, block = grid.block(
        anatomy.frame_origin_mm, tuple(map(min, low, high)), tuple(map(max, low, high))
    )
    region = occupied[slices]
    obstacle, lesion = ~LESION_HOSTS[region], np.isin(region, _LESION_TISSUES)
    for axis in range(3):  # the edge of the search box is an obstacle too: nodes stay inside the box
        np.moveaxis(obstacle, axis, 0)[[0, -1]] = True
    gap = 1.0 + float(np.linalg.norm(grid.spacing_mm))  # no two lesion voxels are neighbours
    fits = (_distance_mm(obstacle, block) >= max(semi)) & (_distance_mm(lesion, block) >= max(semi) + gap)
    x, y, z = block.axes(anatomy.frame_origin_mm)
    vein = np.hypot(x - node.side * JUGULAR[0], y - spine_y(z) - JUGULAR[1]) <= JUGULAR[2] + max(semi) + 6.0
    level_low, level_high = _LEVEL_HEIGHTS_MM[node.level]
    at_level = (z >= level_low) & (z <= level_high)
    for candidates in (fits & vein & at_level, fits & vein, fits):
        flat = np.flatnonzero(candidates)
        if flat.size:
            k, j, i = np.unravel_index(generator.choice(flat), candidates.shape)
            return NodeShape(node, (float(x[0, 0, i]), float(y[0, j, 0]), float(z[k, 0, 0])), semi)
    raise RuntimeError(f"no room for a {node.diameter_mm:.0f} mm node on that side of the neck")


def place_lesions(
    patient: Patient, anatomy: Anatomy, grid: Grid, tissue: np.ndarray, generator: np.random.Generator
) -> Lesions:
    """Place the patient's tumour and nodes, using the CT grid and its tissue map (without lesions)."""
    tumour = _place_tumour(patient, anatomy, grid, tissue, generator)
    occupied = tissue.copy()
    draw_tumour(occupied, tumour, anatomy, grid)
    nodes = []
    for node in patient.nodes:
        nodes.append(_place_node(node, anatomy, grid, occupied, generator))
        draw_nodes(occupied, nodes[-1:], anatomy, grid)
    return Lesions(tumour, tuple(nodes))


Uptake = list[
    tuple[tuple[slice, slice, slice], np.ndarray]
]  # (slices, SUV block): lesion voxels, 0 elsewhere


def draw_lesions(tissue: np.ndarray, lesions: Lesions, anatomy: Anatomy, grid: Grid) -> Uptake:
    """Paint TUMOUR, NODE and NECROSIS into `tissue` (in place) and return the viable lesions' SUV blocks."""
    return draw_tumour(tissue, lesions.tumour, anatomy, grid) + draw_nodes(
        tissue, lesions.nodes, anatomy, grid
    )


def draw_tumour(tissue: np.ndarray, tumour: TumourShape, anatomy: Anatomy, grid: Grid) -> Uptake:
    found = grid.block(anatomy.frame_origin_mm, *_tumour_box(tumour.centre_mm, tumour.semi_mm))
    if found is None:
        return []
    slices, block = found
    axes = block.axes(anatomy.frame_origin_mm)
    level = _tumour_level(tumour.centre_mm, tumour.semi_mm, tumour.field, block, *axes)
    view = tissue[slices]
    inside = _largest_component(LESION_HOSTS[view] & (level <= tumour.threshold))
    view[inside] = Tissue.TUMOUR
    depth = np.clip((tumour.threshold - level) / (tumour.threshold - tumour.core_level), 0, 1)
    suv = tumour.suv_max * (0.45 + 0.55 * depth**0.6)
    return [(slices, np.where(inside, suv, 0).astype(np.float32))]


def draw_nodes(tissue: np.ndarray, nodes, anatomy: Anatomy, grid: Grid) -> Uptake:
    uptake = []
    for shape in nodes:
        low = tuple(c - s for c, s in zip(shape.centre_mm, shape.semi_mm, strict=True))
        high = tuple(c + s for c, s in zip(shape.centre_mm, shape.semi_mm, strict=True))
        found = grid.block(anatomy.frame_origin_mm, low, high)
        if found is None:
            continue
        slices, block = found
        rho2 = _ellipsoid_rho2(*block.axes(anatomy.frame_origin_mm), shape.centre_mm, shape.semi_mm)
        view = tissue[slices]
        inside = (rho2 <= 1) & LESION_HOSTS[view]
        core = inside & (rho2 <= 0.25) if shape.node.necrotic else np.zeros_like(inside)
        view[inside] = Tissue.NODE
        view[core] = Tissue.NECROSIS
        suv = shape.node.suv_max * (0.7 + 0.3 * (1 - rho2))
        uptake.append((slices, np.where(inside & ~core, suv, 0).astype(np.float32)))
    return uptake
