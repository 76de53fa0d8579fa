"""What a run produces, independent of how it is written (files, Slicer nodes, JSON lines).

Segment definitions travel with the skill manifest (`outputs`), so writers never hard-code label names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property

import SimpleITK as sitk


@dataclass(frozen=True)
class CodedConcept:
    """A DICOM coded concept, e.g. SNOMED CT ("86049000", "SCT", "Neoplasm, Primary")."""

    value: str
    scheme: str
    meaning: str

    def to_dict(self) -> dict:
        return {"value": self.value, "scheme": self.scheme, "meaning": self.meaning}

    @classmethod
    def from_dict(cls, values: dict) -> CodedConcept:
        return cls(str(values["value"]), str(values["scheme"]), str(values["meaning"]))


MORPHOLOGICALLY_ALTERED_STRUCTURE = CodedConcept("49755003", "SCT", "Morphologically Altered Structure")


@dataclass(frozen=True)
class SegmentSpec:
    """One output class of a segmentation skill: label value, name, display colour (RGB in [0, 1]), codes."""

    label: int
    name: str
    color: tuple[float, float, float]
    category: CodedConcept
    type: CodedConcept
    description: str = ""

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "name": self.name,
            "color": list(self.color),
            "category": self.category.to_dict(),
            "type": self.type.to_dict(),
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, values: dict) -> SegmentSpec:
        return cls(
            label=int(values["label"]),
            name=str(values["name"]),
            color=tuple(float(c) for c in values["color"]),
            category=CodedConcept.from_dict(values["category"]),
            type=CodedConcept.from_dict(values["type"]),
            description=str(values.get("description", "")),
        )


GTVP = SegmentSpec(
    label=1,
    name="GTVp",
    color=(0.85, 0.16, 0.16),
    category=MORPHOLOGICALLY_ALTERED_STRUCTURE,
    type=CodedConcept("86049000", "SCT", "Neoplasm, Primary"),
    description="primary gross tumour volume",
)
GTVN = SegmentSpec(
    label=2,
    name="GTVn",
    color=(0.16, 0.45, 0.85),
    category=MORPHOLOGICALLY_ALTERED_STRUCTURE,
    type=CodedConcept("14799000", "SCT", "Neoplasm, Metastatic"),
    description="nodal gross tumour volume (metastatic lymph nodes)",
)
HEAD_NECK_TUMOUR_SEGMENTS = (GTVP, GTVN)


@dataclass
class LesionMeasurements:
    """The numbers of one segment or one connected component (`imaging.measurements` defines them)."""

    volume_ml: float
    hu_mean: float | None
    suv_max: float | None = None
    suv_mean: float | None = None
    suv_peak: float | None = None
    mtv_ml: float | None = None
    tlg: float | None = None
    uncertainty_percent: float | None = None
    centroid_lps: tuple[float, float, float] | None = None

    def to_dict(self) -> dict:
        record = asdict(self)
        if self.centroid_lps is not None:
            record["centroid_lps"] = list(self.centroid_lps)
        return record


@dataclass
class SegmentMeasurements(LesionMeasurements):
    """A segment's numbers and those of each of its connected components (largest first)."""

    components: list[LesionMeasurements] = field(default_factory=list)

    def to_dict(self) -> dict:
        return super().to_dict() | {"components": [component.to_dict() for component in self.components]}


@dataclass(frozen=True)
class QCFlag:
    """A quality-control finding for the reader: a short code and one sentence that says what to check."""

    code: str  # "no-lesion", "roi-border", "nodes-vs-n-stage", "pet-ct-misregistered"
    message: str

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


@dataclass
class SegmentationResult:
    """A label map on the input CT's own grid (uint8, same size/spacing/origin/direction) and its segments.

    uncertainty: normalised entropy of the blended class probabilities in percent (uint8, 0 = one class
    certain, 100 = all classes equally likely) on the same grid, 0 outside the region the model analysed;
    measurements: per label value (None when the segment is empty); postprocessing: the rules applied;
    removed: components the skill's postprocessing took out (`RemovedComponent.to_dict()`); qc_flags.
    """

    labels: sitk.Image
    segments: list[SegmentSpec]
    skill_id: str
    skill_version: str
    uncertainty: sitk.Image | None = None
    measurements: dict[int, SegmentMeasurements | None] = field(default_factory=dict)
    postprocessing: dict = field(default_factory=dict)
    removed: list[dict] = field(default_factory=list)
    qc_flags: list[QCFlag] = field(default_factory=list)
    skill_weights_sha256: str | None = None  # the sha256 of the pack's weights file, for the record

    @cached_property
    def shape_statistics(self) -> sitk.LabelShapeStatisticsImageFilter:
        """Per-label shape statistics, computed once: every writer needs them, and a pass over a full CT
        grid costs about half a second."""
        statistics = sitk.LabelShapeStatisticsImageFilter()
        statistics.Execute(self.labels)
        return statistics

    def volumes_ml(self) -> dict[str, float]:
        """Volume of each segment in millilitres."""
        stats = self.shape_statistics
        present = set(stats.GetLabels())
        mm3_per_ml = 1000.0
        return {
            s.name: stats.GetPhysicalSize(s.label) / mm3_per_ml if s.label in present else 0.0
            for s in self.segments
        }


@dataclass
class PrognosisResult:
    """Recurrence-free survival: a risk score (higher = earlier recurrence) and a survival curve S(t).

    One function of time: S at `times_days` (0, then the MTLR bin boundaries), linear in between, undefined
    beyond the last; `survival_at_years` are read off it (NaN beyond), and the report and Slicer draw it so.
    """

    risk: float
    risk_group: str
    times_days: list[float]
    survival: list[float]
    survival_at_years: dict[int, float]
    skill_id: str
    skill_version: str
    skill_weights_sha256: str | None = None

    def to_dict(self) -> dict:
        return {
            "skill": {"id": self.skill_id, "version": self.skill_version},
            "risk": self.risk,
            "risk_group": self.risk_group,
            # S between the grid times is linear: the curve drawn and `survival_probability` read it so.
            "survival_curve": {"times_days": self.times_days, "survival": self.survival, "between": "linear"},
            "survival_probability": {f"{years}y": p for years, p in sorted(self.survival_at_years.items())},
        }


@dataclass
class ClassificationResult:
    """CT-CLIP zero-shot: probability that each abnormality is present."""

    probabilities: dict[str, float]
    skill_id: str
    skill_version: str
    skill_weights_sha256: str | None = None


@dataclass
class StudyResult:
    """Everything one `mafm3 run` produced for one study.

    warnings: one sentence each: what was repaired in the inputs or looks doubtful (a PET that seems shifted
    against its CT), for the CLI summary, result.json, the report, the worker's result and the Slicer panel.
    """

    inputs: dict
    segmentation: SegmentationResult | None = None
    prognosis: PrognosisResult | None = None
    classification: ClassificationResult | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    backbone: dict = field(default_factory=dict)
    demo: bool = False
    peak_rss_gb: float | None = None
    warnings: list[str] = field(default_factory=list)
