"""Named skill configurations: the paper's three (exact trainable-parameter budgets), zero-shot, and demos.

| preset | trainable on CT-CLIP (D 512) | what |
|---|---|---|
| `hecktor-seg-ct` | 6,236,667 | 16³ CT embedding, LoRA r 8 (spatial), position copies, UNETR decoder |
| `hecktor-seg-petct` | 8,349,371 | the same with a 2-channel (CT, PET) embedding and a PET skip encoder |
| `hecktor-prognosis` | 1,816,716 | LoRA r 2 (spatial + temporal), report encoder, adapters, MTLR 12 bins |
| `hecktor-prognosis-authors` | 1,816,716 | the same, as the authors: own reports, 512-token mean, KM bins |
| `ctclip-zeroshot` | 0 | CT-CLIP's own zero-shot classification over the 18 CT-RATE abnormalities |
| `ctclip-zeroshot-authors` | 0 | the same on CT-CLIP's symmetric centre crop, not our body-centred one |
| `hecktor-seg-ct-authors`, `hecktor-seg-petct-authors` | as without `-authors` | the authors' preprocessing |

The `-authors` segmentation presets reproduce the authors' preprocessing where it is a preset field
(README "Reproducing the paper"): arrays in MONAI `Orientationd(axcodes="PLS")` order, i.e. T runs
anterior -> posterior, H right -> left, W inferior -> superior ("yxz" of the LPS-oriented grid, method-spec
G8), and CT/PET resampled with B-splines. Their ROI (PET uptake, 360 mm), windows and normalisations are
already those of the presets without `-authors`; the fixes of G9 (PET and mask resampled onto the CT's box,
air outside the CT) are kept. What is not a preset field is `mafm3 train --recipe authors`.

`hecktor-prognosis-authors` reads each patient's own report (`--reports`), padded to 512 tokens and averaged
with the padding, cuts its MTLR bins and scores risk as pycox and torchmtlr do (`mafm3.model.mtlr`), and
resamples the CT with B-splines as their ROI files were; its axes (zxy) are already the authors' prognosis
loader's.

`hecktor-prognosis` puts LoRA on the temporal attention too, as the authors' `main_lora.py` does (20,480
of its parameters); the MAFM³ feature path never runs the temporal stage, so those adapters stay at B = 0
and have no effect (method-spec G11). They are kept so the budget matches the paper; a new prognosis skill
can drop them with `LoraSpec(stages=("spatial",))`.

Demo presets are the same architectures at toy sizes, for `DEMO_BACKBONE` (the fixture-sized CT-ViT, D 64).
Preprocessing sections follow `mafm3.imaging.preprocess.PreprocessingConfig.from_dict`; axis order "zxy" is
CT-CLIP's pre-training layout (T = axial slices).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mafm3.errors import MAFM3Error
from mafm3.model.classification import CT_RATE_ABNORMALITIES
from mafm3.model.ctvit import CTViT, CTViTConfig
from mafm3.model.decoders import UnetrDecoderConfig
from mafm3.model.lora import LoraSpec
from mafm3.model.prognosis import PrognosisConfig
from mafm3.model.skill_model import PatchEmbeddingSpec, SkillConfig, SkillModel, build_skill_model
from mafm3.results import GTVN, GTVP

CXR_BERT_HIDDEN = 768  # width of CT-CLIP's text tower, what the report encoder's adapter takes
DEMO_BACKBONE = CTViTConfig(
    dim=64, heads=4, dim_head=16, patch_size=8, temporal_patch_size=4, ff_inner_dim=170, codebook_size=64
)

_ROI = {"method": "auto", "size_mm": [360.0, 360.0, 360.0]}
_CT = {
    "spacing": [0.75, 0.75, 1.5],
    "orientation": "LPS",
    "axis_order": "zxy",
    "channels": ["ct"],
    "ct_window": [-1024.0, 1024.0],
    "ct_normalisation": "window",
    "roi": _ROI,
}
_PET_CT = {**_CT, "channels": ["ct", "pet"], "ct_normalisation": "zscore", "pet_normalisation": "zscore"}
_PET_CT["roi"] = {**_ROI, "method": "pet"}
_CTCLIP = {**_CT, "ct_window": [-1000.0, 1000.0]}  # CT-CLIP pre-training: clip +-1000 HU, / 1000
_AUTHORS_SEGMENTATION = {"axis_order": "yxz", "interpolator": "bspline"}  # PLS arrays, B-spline resampling
# The demo skills see the whole synthetic head & neck at 2 mm: a 192 x 192 x 224 mm box (96 x 96 x 112 voxels,
# multiples of the 16-voxel patches) placed by the authors' PET-uptake heuristic (CT body without PET). The
# box is long enough along S that the heuristic's pull towards the brain still leaves the neck inside it.
_DEMO_ROI = {"size_mm": [192.0, 192.0, 224.0]}
# The demo backbone's pre-training input (and the prognosis skill's). The CT-only segmentation skill sees a
# soft-tissue window instead (W400/L40 to [-1, 1]), which spreads fat, muscle and tumour over the input range
# rather than 0.2 of it. (The synthetic tumours stay a few HU from their surroundings all the same, so that
# skill finds almost nothing: the demo's point is what PET adds.)
DEMO_CT = {**_CT, "spacing": [2.0, 2.0, 2.0], "roi": {"method": "auto", **_DEMO_ROI}}
_DEMO_SOFT_TISSUE_CT = {**DEMO_CT, "ct_window": [-160.0, 240.0]}
_DEMO_PET_CT = {**_PET_CT, "spacing": [2.0, 2.0, 2.0], "roi": {"method": "pet", **_DEMO_ROI}}

_SEGMENTS = [GTVP.to_dict(), GTVN.to_dict()]
_PROGNOSIS_OUTPUTS = [
    {
        "name": "risk",
        "description": "sum of the cumulative hazard over the time bins; higher = earlier recurrence",
    },
    {"name": "risk_group", "description": "low / intermediate / high by the training-risk tertiles"},
    {
        "name": "survival_curve",
        "description": "recurrence-free survival S(t) at the time-bin boundaries (days)",
    },
    {"name": "survival_probability", "description": "S at 1, 2, 3 and 5 years"},
]


@dataclass(frozen=True)
class Preset:
    """A named skill configuration with what its manifest needs besides weights and provenance."""

    name: str
    description: str
    config: SkillConfig
    modalities: tuple[str, ...]
    preprocessing: dict
    inference: dict  # window / input size in model voxels (T, H, W)
    outputs: list = field(default_factory=list)
    backbone: CTViTConfig = CTViTConfig()  # the encoder this preset is sized for
    demo: bool = False
    postprocessing: dict = field(default_factory=dict)  # the manifest's `postprocessing` (segmentation)


def _segmentation(channels: int, feature_size: int, rank: int) -> SkillConfig:
    return SkillConfig(
        task="segmentation",
        lora=LoraSpec(rank=rank, alpha=32.0, dropout=0.2),
        patch_embedding=PatchEmbeddingSpec(channels=channels),
        position_copies=True,
        decoder=UnetrDecoderConfig(feature_size=feature_size, pet_skip=channels == 2),
    )


_SEG_WINDOW = {"window_voxels": [96, 96, 96], "overlap": 0.25}
_DEMO_SEG_WINDOW = {"window_voxels": [48, 48, 48], "overlap": 0.25}

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "hecktor-seg-ct",
            "Head & neck tumour segmentation (GTVp, GTVn) on CT, MAFM3 configuration",
            _segmentation(channels=1, feature_size=16, rank=8),
            ("CT",),
            _CT,
            _SEG_WINDOW,
            _SEGMENTS,
        ),
        Preset(
            "hecktor-seg-petct",
            "Head & neck tumour segmentation (GTVp, GTVn) on PET/CT, MAFM3 configuration",
            _segmentation(channels=2, feature_size=16, rank=8),
            ("CT", "PET"),
            _PET_CT,
            _SEG_WINDOW,
            _SEGMENTS,
        ),
        Preset(
            "hecktor-seg-ct-authors",
            "Head & neck tumour segmentation (GTVp, GTVn) on CT, the authors' preprocessing (PLS axes, "
            "B-spline)",
            _segmentation(channels=1, feature_size=16, rank=8),
            ("CT",),
            {**_CT, **_AUTHORS_SEGMENTATION},
            _SEG_WINDOW,
            _SEGMENTS,
        ),
        Preset(
            "hecktor-seg-petct-authors",
            "Head & neck tumour segmentation (GTVp, GTVn) on PET/CT, the authors' preprocessing (PLS axes, "
            "B-spline)",
            _segmentation(channels=2, feature_size=16, rank=8),
            ("CT", "PET"),
            {**_PET_CT, **_AUTHORS_SEGMENTATION},
            _SEG_WINDOW,
            _SEGMENTS,
        ),
        Preset(
            "hecktor-prognosis",
            "Recurrence-free survival from CT and the clinical record (report encoder), MAFM3 configuration",
            SkillConfig(
                task="prognosis",
                lora=LoraSpec(rank=2, alpha=32.0, dropout=0.2, stages=("spatial", "temporal")),
                prognosis=PrognosisConfig(clinical_encoder="report"),
            ),
            ("CT",),
            _CT,
            {"input_voxels": [240, 480, 480]},
            _PROGNOSIS_OUTPUTS,
        ),
        Preset(
            "hecktor-prognosis-authors",
            "Recurrence-free survival from CT and each patient's own report, the authors' configuration "
            "(train with --recipe authors --reports CSV)",
            SkillConfig(
                task="prognosis",
                lora=LoraSpec(rank=2, alpha=32.0, dropout=0.2, stages=("spatial", "temporal")),
                prognosis=PrognosisConfig(
                    clinical_encoder="report",
                    report_source="supplied",
                    text_pooling="mean_with_padding",
                    bin_scheme="km_quantiles",
                    risk_score="cumulative_hazard",
                ),
            ),
            ("CT",),
            {**_CT, "interpolator": "bspline"},  # their ROI files were B-spline resampled; axes zxy as ours
            {"input_voxels": [240, 480, 480]},
            _PROGNOSIS_OUTPUTS,
        ),
        Preset(
            "ctclip-zeroshot",
            "CT-CLIP zero-shot detection of the 18 CT-RATE chest abnormalities (no trained weights)",
            SkillConfig(task="classification", labels=CT_RATE_ABNORMALITIES),
            ("CT",),
            _CTCLIP,
            {"input_voxels": [240, 480, 480]},
            [{"name": label} for label in CT_RATE_ABNORMALITIES],
        ),
        Preset(
            "ctclip-zeroshot-authors",
            "CT-CLIP zero-shot detection as CT-CLIP's own scripts crop: symmetric about the volume's centre",
            SkillConfig(task="classification", labels=CT_RATE_ABNORMALITIES),
            ("CT",),
            {**_CTCLIP, "roi": {**_ROI, "method": "centre"}},
            {"input_voxels": [240, 480, 480]},
            [{"name": label} for label in CT_RATE_ABNORMALITIES],
        ),
        Preset(
            "demo-seg-ct",
            "DEMO ONLY - toy CT tumour segmentation for the synthetic demo backbone",
            _segmentation(channels=1, feature_size=8, rank=4),
            ("CT",),
            _DEMO_SOFT_TISSUE_CT,
            _DEMO_SEG_WINDOW,
            _SEGMENTS,
            DEMO_BACKBONE,
            demo=True,
        ),
        Preset(
            "demo-seg-petct",
            "DEMO ONLY - toy PET/CT tumour segmentation for the synthetic demo backbone",
            _segmentation(channels=2, feature_size=8, rank=4),
            ("CT", "PET"),
            _DEMO_PET_CT,
            _DEMO_SEG_WINDOW,
            _SEGMENTS,
            DEMO_BACKBONE,
            demo=True,
            # Components under 0.1 ml (a 6 mm sphere, about the PET's resolution) are fragments no reader
            # can call; measured held out before/after in the README.
            postprocessing={"min_component_ml": 0.1},
        ),
        Preset(
            "demo-prognosis",
            "DEMO ONLY - toy survival model from CT and tabular clinical data, synthetic demo backbone",
            SkillConfig(
                task="prognosis",
                lora=LoraSpec(rank=2, alpha=8.0, dropout=0.0),
                prognosis=PrognosisConfig(
                    clinical_encoder="tabular",
                    image_dim=DEMO_BACKBONE.dim,
                    adapter_dim=32,
                    fusion_hidden=32,
                    fusion_out=16,
                    num_time_bins=6,
                ),
            ),
            ("CT",),
            DEMO_CT,
            {"input_voxels": [112, 96, 96]},  # (T, H, W) = (z, x, y) of the demo box
            _PROGNOSIS_OUTPUTS,
            DEMO_BACKBONE,
            demo=True,
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called `name`; MAFM3Error naming the known ones otherwise."""
    if name not in PRESETS:
        raise MAFM3Error(f"There is no skill preset {name!r}; use one of {', '.join(PRESETS)}.")
    return PRESETS[name]


def build_on_meta(preset: Preset) -> SkillModel:
    """The preset's skill on a weightless (meta-device) backbone of `preset.backbone`, for counting
    parameters without memory or a checkpoint. Not for classification (it has no modules to count)."""
    with torch.device("meta"):
        backbone = CTViT(preset.backbone)
    config = preset.config.for_backbone(preset.backbone.dim, text_dim=CXR_BERT_HIDDEN)
    return build_skill_model(config, backbone, preset.name)


def parameter_counts(preset: Preset) -> dict[str, int]:
    """Trainable parameters of the preset by part (see `SkillModel.parameter_counts`); {} for zero-shot."""
    return {} if preset.config.task == "classification" else build_on_meta(preset).parameter_counts()
