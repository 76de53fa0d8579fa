"""False-positive removal on the CT grid, as a skill's manifest declares it (`postprocessing`, read by
`skills.manifest.PostprocessingConfig`), e.g. {"min_component_ml": 0.5, "min_component_suv_max": 2.5}.

Each segment's 26-connected components are kept or removed on their own:
- `min_component_ml`: a component smaller than this volume (ml) is removed;
- `min_component_suv_max`: with a PET, a component whose highest SUV (PET resampled linearly onto the CT
  grid) is below this is removed; without a PET this rule does not apply.
An empty section (or none) changes nothing. What was removed is reported, so a user sees it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

from mafm3.imaging.measurements import MM3_PER_ML, bounding_region, suv_on_grid


@dataclass(frozen=True)
class RemovedComponent:
    """A component taken out by postprocessing, and why."""

    label: int
    volume_ml: float
    suv_max: float | None
    reason: str  # "smaller than min_component_ml" | "SUVmax below min_component_suv_max"

    def to_dict(self) -> dict:
        return asdict(self)


def remove_false_positives(
    labels: sitk.Image,
    *,
    min_component_ml: float = 0.0,
    min_component_suv_max: float | None = None,
    suv: sitk.Image | None = None,
) -> tuple[sitk.Image, list[RemovedComponent]]:
    """`labels` (uint8, CT grid) without the components the two rules reject, and the list of those removed.

    suv: the PET in SUV on its own grid, or None. Returns `labels` itself when nothing is removed.
    """
    if min_component_ml <= 0 and (min_component_suv_max is None or suv is None):
        return labels, []
    region = bounding_region(labels, (0, 0, 0))
    if region is None:
        return labels, []
    index, size = region
    crop = sitk.RegionOfInterest(labels, size=size, index=index)
    pet = suv_on_grid(suv, crop) if suv is not None and min_component_suv_max is not None else None
    crop_zyx = sitk.GetArrayFromImage(crop)
    removed: list[RemovedComponent] = []
    for value in np.unique(crop_zyx[crop_zyx > 0]).tolist():
        components = sitk.ConnectedComponent(crop == value, True)
        shape = sitk.LabelShapeStatisticsImageFilter()
        shape.Execute(components)
        uptake = None
        if pet is not None:
            uptake = sitk.LabelIntensityStatisticsImageFilter()
            uptake.Execute(components, pet)
        dropped = []
        for component in shape.GetLabels():
            volume_ml = shape.GetPhysicalSize(component) / MM3_PER_ML
            suv_max = uptake.GetMaximum(component) if uptake is not None else None
            reason = None
            if volume_ml < min_component_ml:
                reason = "smaller than min_component_ml"
            elif suv_max is not None and suv_max < min_component_suv_max:
                reason = "SUVmax below min_component_suv_max"
            if reason is not None:
                dropped.append(component)
                removed.append(RemovedComponent(value, volume_ml, suv_max, reason))
        if dropped:
            component_zyx = sitk.GetArrayViewFromImage(components)
            crop_zyx[np.isin(component_zyx, dropped)] = 0
    if not removed:
        return labels, []
    cleaned = sitk.Paste(labels, _like(crop_zyx, crop), crop.GetSize(), [0, 0, 0], index)
    return cleaned, removed


def _like(array_zyx: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.CopyInformation(reference)
    return image
