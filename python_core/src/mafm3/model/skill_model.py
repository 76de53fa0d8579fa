"""A skill's network: the shared frozen CT-ViT, the skill's parts inside it, and the skill's head.

A skill owns (and saves) only what it adds (method-spec §2, §7):

- a LoRA adapter on the CT-ViT attention, named after the skill and attached to the shared encoder;
- optionally a resolution-aware patch embedding (own patch size and channel count, e.g. 16³ on 96³ CT or
  CT+PET crops);
- optionally trainable copies of the position modules (continuous position bias MLP and the spatial PEGs),
  initialised from the backbone's, passed to `CTViT.forward_features` instead of the backbone's own;
- its head: UNETR decoder, prognosis adapters + MTLR, or nothing (zero-shot classification).

The backbone is shared by every loaded skill and is not a submodule: `skill.to()`, `state_dict()` and
`parameters()` cover the skill's own modules only (move the backbone with its own `.to()`; the LoRA tensors
live in it). `skill_state_dict()` adds the skill's LoRA tensors under `lora.` and is what a pack stores.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from mafm3.clinical import ClinicalRecord
from mafm3.errors import MAFM3Error
from mafm3.model.classification import ClipText, zero_shot_probabilities
from mafm3.model.decoders import PATCH_SIZE, UnetrDecoder, UnetrDecoderConfig
from mafm3.model.lora import (
    LoraSpec,
    activate_lora,
    active_lora,
    attach_lora,
    detach_lora,
    load_lora_state_dict,
    lora_state_dict,
)
from mafm3.model.patch_embedding import PatchEmbedding
from mafm3.model.prognosis import PrognosisConfig, PrognosisHead, clinical_report, tabular_features
from mafm3.model.text import TextEncoder
from mafm3.tasks import TASKS

LORA_PREFIX = "lora."


@dataclass(frozen=True)
class PatchEmbeddingSpec:
    """A skill's resolution-aware patch embedding (replaces the backbone's `to_patch_emb`)."""

    channels: int = 1  # 1 = CT, 2 = CT then PET
    patch_size: int = 16  # p1 = p2, in-plane, in voxels
    temporal_patch_size: int = 16  # pt, along the slices, in voxels


@dataclass(frozen=True)
class SkillConfig:
    """Everything needed to rebuild a skill's modules; stored as `config` in the skill manifest.

    `decoder.hidden_size` and `prognosis.image_dim` must equal the backbone's token width D, and
    `prognosis.text_dim` the text tower's width: `for_backbone` sets them.
    """

    task: str
    lora: LoraSpec | None = None
    patch_embedding: PatchEmbeddingSpec | None = None  # None: the backbone's own patch embedding
    position_copies: bool = False  # train copies of the position bias MLP and the spatial PEGs
    decoder: UnetrDecoderConfig | None = None  # segmentation
    prognosis: PrognosisConfig | None = None  # prognosis
    labels: tuple[str, ...] = ()  # classification: the abnormalities to score

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}, got {self.task!r}")
        object.__setattr__(self, "labels", tuple(self.labels))
        required = {"segmentation": "decoder", "prognosis": "prognosis"}.get(self.task)
        for name in ("decoder", "prognosis"):
            if (getattr(self, name) is not None) != (name == required):
                raise ValueError(f"a {self.task} skill {'needs' if name == required else 'has no'} `{name}`")
        if self.task == "classification" and (
            not self.labels or self.lora or self.patch_embedding or self.position_copies
        ):
            raise ValueError(
                "a classification skill has labels and no LoRA, patch embedding or position copies"
            )
        if self.decoder is not None:
            embedding = self.patch_embedding
            if (
                embedding is None
                or (embedding.patch_size, embedding.temporal_patch_size) != (PATCH_SIZE,) * 2
            ):
                raise ValueError(f"a segmentation skill needs its own {PATCH_SIZE}³ patch embedding")
            if self.decoder.pet_skip and embedding.channels < 2:
                raise ValueError("a decoder with a PET skip needs a 2-channel (CT, PET) patch embedding")

    def for_backbone(self, dim: int, text_dim: int | None = None) -> SkillConfig:
        """This config with the widths that depend on the backbone (D) and its text tower set."""
        decoder = self.decoder and replace(self.decoder, hidden_size=dim)
        prognosis = self.prognosis and replace(
            self.prognosis, image_dim=dim, text_dim=text_dim or self.prognosis.text_dim
        )
        return replace(self, decoder=decoder, prognosis=prognosis)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SkillConfig:
        parts = {
            "lora": LoraSpec,
            "patch_embedding": PatchEmbeddingSpec,
            "decoder": UnetrDecoderConfig,
            "prognosis": PrognosisConfig,
        }
        values = dict(values)
        for name, part in parts.items():
            if values.get(name) is not None:
                values[name] = part(**values[name])
        return cls(**values)


class SkillModel(nn.Module):
    """Base of the three task models: the skill's within-model parts and the shared feature path."""

    def __init__(self, config: SkillConfig, backbone: nn.Module, name: str) -> None:
        super().__init__()
        self.config = config
        self.name = name
        object.__setattr__(self, "backbone", backbone)  # shared, deliberately not a submodule
        dim = backbone.config.dim
        embedding = config.patch_embedding
        self.patch_embedding = (
            None
            if embedding is None
            else PatchEmbedding(
                dim=dim,
                channels=embedding.channels,
                patch_size=embedding.patch_size,
                temporal_patch_size=embedding.temporal_patch_size,
            ).to(_device_of(backbone))
        )
        self.position_bias = None
        self.pegs = None
        if config.position_copies:
            self.position_bias = copy.deepcopy(backbone.spatial_rel_pos_bias).requires_grad_(True)
            self.pegs = nn.ModuleList(
                copy.deepcopy(layer[0]) for layer in backbone.enc_spatial_transformer.layers
            ).requires_grad_(True)
        if config.lora is not None:
            attach_lora(backbone, name, config.lora)

    @property
    def lora_name(self) -> str | None:
        """The name of this skill's adapter on the backbone, or None (runs the bare backbone)."""
        return self.name if self.config.lora is not None else None

    def activate(self, trainable: bool = False, merged: bool = False) -> None:
        """Apply this skill's adapter (and no other) on the shared backbone; nothing is reloaded.

        trainable: the adapter's tensors require gradients (for a trainer); otherwise they are frozen.
        merged: inference with the adapter folded into out-of-place copies of the projection weights (the
        base tensors are put back, untouched, by the next activation of any skill or of none).
        """
        activate_lora(self.backbone, self.lora_name, trainable=trainable, merged=merged)

    def release(self) -> None:
        """Remove this skill's adapter from the shared backbone (after which this model is unusable)."""
        if self.lora_name is not None:
            detach_lora(self.backbone, self.lora_name)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The backbone's feature path with this skill's parts. x: (B, C, T, H, W).

        Returns tokens (B, t, h, w, D) after norm_out and the 4 spatial hidden states (B, t, h, w, D).
        """
        if active_lora(self.backbone) != self.lora_name:
            self.activate()
        return self.backbone.forward_features(
            x, patch_embedding=self.patch_embedding, position_bias=self.position_bias, pegs=self.pegs
        )

    def train(self, mode: bool = True) -> SkillModel:
        """Train mode for the skill's modules and its LoRA dropout; the rest of the backbone is left as is."""
        super().train(mode)
        for module_name, module in self.backbone.named_modules():
            if module_name.endswith(f"lora_dropout.{self.lora_name}"):
                module.train(mode)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything a trainer updates: the skill's own modules and its LoRA A/B."""
        lora = [] if self.lora_name is None else list(lora_state_dict(self.backbone, self.lora_name).values())
        return list(self.parameters()) + lora

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters by part: "lora", "patch_embedding", "position_bias", "pegs", and the blocks
        of the decoder or head as "decoder.encoder1", "head.image_adapter", ..."""
        counts = {}
        if self.lora_name is not None:
            counts["lora"] = sum(t.numel() for t in lora_state_dict(self.backbone, self.lora_name).values())
        for name, child in self.named_children():
            parts = child.named_children() if name in ("decoder", "head") else [("", child)]
            for part, module in parts:
                counts[f"{name}.{part}".rstrip(".")] = sum(p.numel() for p in module.parameters())
        return {name: count for name, count in counts.items() if count}

    def skill_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a skill pack stores: own modules (persistent buffers included) + `lora.`-prefixed LoRA.

        Never a backbone tensor: the LoRA keys hold only `lora_A` / `lora_B` of this skill's adapter.
        """
        tensors = {key: value.detach() for key, value in self.state_dict().items()}
        if self.lora_name is not None:
            lora = lora_state_dict(self.backbone, self.lora_name)
            tensors.update({LORA_PREFIX + key: value.detach() for key, value in lora.items()})
        return tensors

    def load_skill_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load what `skill_state_dict` returned; every key must be present and no other."""
        lora = {key.removeprefix(LORA_PREFIX): t for key, t in tensors.items() if key.startswith(LORA_PREFIX)}
        own = {key: t for key, t in tensors.items() if not key.startswith(LORA_PREFIX)}
        self.load_state_dict(own, strict=True)
        if self.lora_name is not None or lora:
            if self.lora_name is None:
                raise ValueError(f"skill {self.name!r} has no LoRA but the tensors hold {sorted(lora)[:3]}")
            load_lora_state_dict(self.backbone, self.lora_name, lora)


class SegmentationSkill(SkillModel):
    """Crop (B, C, T, H, W) -> class logits (B, classes, T, H, W) with T, H, W multiples of 16."""

    def __init__(self, config: SkillConfig, backbone: nn.Module, name: str) -> None:
        super().__init__(config, backbone, name)
        self.decoder = UnetrDecoder(config.decoder).to(_device_of(backbone))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T, H, W), C = the embedding's channels (CT, then PET). Returns logits (B, 3, T, H, W)."""
        _, hidden = self.features(x)
        return self.decoder(x, hidden)


class PrognosisSkill(SkillModel):
    """CT volume + clinical record -> MTLR logits; `predict` adds risk, survival curve and risk group."""

    def __init__(
        self, config: SkillConfig, backbone: nn.Module, name: str, text_encoder: TextEncoder | None = None
    ) -> None:
        super().__init__(config, backbone, name)
        object.__setattr__(self, "text_encoder", text_encoder)  # shared and frozen, not a submodule
        self.head = PrognosisHead(config.prognosis).to(_device_of(backbone))

    def encode_clinical(self, records: list[ClinicalRecord], text_dropout: bool = False) -> torch.Tensor:
        """B clinical records -> (B, F): tabular features, or the BERT embedding of the report (the template
        of the record or its supplied `report`, pooled as the config says). text_dropout: BERT's dropout on
        (the authors' training)."""
        config = self.config.prognosis
        device = self.head.mtlr.linear.weight.device
        if config.clinical_encoder == "tabular":
            return torch.tensor([tabular_features(r) for r in records], dtype=torch.float32, device=device)
        if self.text_encoder is None:
            raise MAFM3Error(
                f"Skill {self.name} reads the clinical record as a report with CT-CLIP's text encoder, which "
                "this backbone lacks; import a CT-CLIP checkpoint with its text side (CT-CLIP_v2.pt has it)."
            )
        texts = [self.report_text(record) for record in records]
        return self.text_encoder(texts, pooling=config.text_pooling, dropout=text_dropout).to(device)

    def report_text(self, record: ClinicalRecord) -> str:
        """The text the "report" encoder reads for `record`: its template, or its supplied report."""
        if self.config.prognosis.report_source == "template":
            return clinical_report(record)
        if not record.report:
            raise MAFM3Error(
                f"Skill {self.name} was trained on each patient's own report text: give it as `report` in "
                "the clinical JSON (or `mafm3 run --report FILE`, `--reports CSV` for train and eval)."
            )
        return record.report

    def forward(self, x: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T, H, W) CT; clinical: (B, F) from `encode_clinical`. Returns logits (B, K + 1)."""
        tokens, _ = self.features(x)
        return self.head(tokens.mean(dim=(1, 2, 3)), clinical)

    def predict(self, x: torch.Tensor, records: list[ClinicalRecord]) -> dict:
        """The prognosis of B studies: `PrognosisHead.outcome` of the logits (risk, survival, groups)."""
        return self.head.outcome(self(x, self.encode_clinical(records)))


class ClassificationSkill(SkillModel):
    """CT-CLIP zero-shot: volume (B, 1, 240, 480, 480) -> P(each abnormality) (B, L). No weights."""

    def __init__(self, config: SkillConfig, backbone: nn.Module, name: str, clip_text: ClipText) -> None:
        super().__init__(config, backbone, name)
        object.__setattr__(self, "clip_text", clip_text)  # the backbone's text side, shared
        self._prompt_latents: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, T, H, W) scaled as in CT-CLIP pre-training. Returns P(present) (B, L) in label order."""
        if active_lora(self.backbone) is not None:
            self.activate()  # the bare backbone: classification uses no adapter
        if self._prompt_latents is None:
            self._prompt_latents = self.clip_text.prompt_latents(self.config.labels)
        image = self.backbone.image_latent(x)
        return zero_shot_probabilities(
            image, self._prompt_latents.to(image.device), self.clip_text.temperature
        )


def build_skill_model(
    config: SkillConfig,
    backbone: nn.Module,
    name: str,
    *,
    text_encoder: TextEncoder | None = None,
    clip_text: ClipText | None = None,
) -> SkillModel:
    """A freshly initialised skill on `backbone` (LoRA B = 0, position copies = the backbone's).

    name: the skill id, used as its LoRA adapter name (no dots). text_encoder: CT-CLIP's text tower, used by
    the report prognosis encoder (without it the skill can be built and counted, not run); clip_text: the
    full text side, needed by classification.
    """
    if config.task == "segmentation":
        return SegmentationSkill(config, backbone, name)
    if config.task == "prognosis":
        return PrognosisSkill(config, backbone, name, text_encoder)
    if clip_text is None:
        raise ValueError("the classification skill needs CT-CLIP's text side (`clip_text`)")
    return ClassificationSkill(config, backbone, name, clip_text)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
