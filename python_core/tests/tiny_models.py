"""Small models the core tests share: synthetic CT-CLIP checkpoints, a small CT-ViT, a tiny text tower, tiny
skills and their presets. Not tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from mafm3.model.checkpoint import split_ctclip_state_dict
from mafm3.model.ctvit import CTViT, CTViTConfig
from mafm3.model.decoders import UnetrDecoderConfig
from mafm3.model.lora import LoraSpec, lora_state_dict
from mafm3.model.prognosis import PrognosisConfig
from mafm3.model.skill_model import PatchEmbeddingSpec, SkillConfig, build_skill_model
from mafm3.model.text import TextEncoder, bert_from_state_dict, load_tokenizer
from mafm3.skills.manifest import SkillManifest
from mafm3.skills.packs import export_pack
from mafm3.skills.presets import PRESETS, Preset

# The CT-CLIP conformance fixtures (reference outputs of the authors' implementation, see its README).
FIXTURES = Path(__file__).resolve().parent / "data" / "ctclip"

SMALL = dict(
    dim=64, heads=4, dim_head=16, depth=4, patch=(4, 8), ff_inner=170, codebook=64, latent=32, grid=(4, 4)
)

FULL = dict(
    dim=512,
    heads=8,
    dim_head=32,
    depth=4,
    patch=(10, 20),
    ff_inner=1365,
    codebook=8192,
    latent=512,
    grid=(24, 24),
)


def ctclip_state_dict(
    *,
    dim: int,
    heads: int,
    dim_head: int,
    depth: int,
    patch: tuple[int, int],
    ff_inner: int,
    codebook: int,
    latent: int | None,
    grid: tuple[int, int],
    channels: int = 1,
    text_hidden: int | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A CT-CLIP flat state dict with random values; `latent=None` leaves out the CLIP projection, and
    `text_hidden` adds a one-layer BERT of that width with CT-CLIP's key names (and legacy position_ids)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.05, offset: float = 0.0) -> torch.Tensor:
        return offset + scale * torch.randn(*shape, generator=generator)

    pt, p = patch
    patch_features, frame_features, inner = channels * pt * p * p, channels * p * p, heads * dim_head
    v = "visual_transformer."
    state = {
        f"{v}to_patch_emb.1.weight": rand(patch_features, offset=1.0),
        f"{v}to_patch_emb.1.bias": rand(patch_features),
        f"{v}to_patch_emb.2.weight": rand(dim, patch_features, scale=patch_features**-0.5),
        f"{v}to_patch_emb.2.bias": rand(dim),
        f"{v}to_patch_emb.3.weight": rand(dim, offset=1.0),
        f"{v}to_patch_emb.3.bias": rand(dim),
        f"{v}to_patch_emb_first_frame.1.weight": rand(frame_features, offset=1.0),
        f"{v}to_patch_emb_first_frame.1.bias": rand(frame_features),
        f"{v}to_patch_emb_first_frame.2.weight": rand(dim, frame_features),
        f"{v}to_patch_emb_first_frame.2.bias": rand(dim),
        f"{v}to_patch_emb_first_frame.3.weight": rand(dim, offset=1.0),
        f"{v}to_patch_emb_first_frame.3.bias": rand(dim),
        f"{v}spatial_rel_pos_bias.net.0.0.weight": rand(dim, 2, scale=0.5),
        f"{v}spatial_rel_pos_bias.net.0.0.bias": rand(dim),
        f"{v}spatial_rel_pos_bias.net.1.0.weight": rand(dim, dim, scale=dim**-0.5),
        f"{v}spatial_rel_pos_bias.net.1.0.bias": rand(dim),
        f"{v}spatial_rel_pos_bias.net.2.weight": rand(heads, dim, scale=dim**-0.5),
        f"{v}spatial_rel_pos_bias.net.2.bias": rand(heads),
        f"{v}vq._codebook.initted": torch.ones(1),
        f"{v}vq._codebook.cluster_size": rand(1, codebook, offset=1.0),
        f"{v}vq._codebook.embed": rand(1, codebook, dim, scale=1.0),
        f"{v}to_pixels.0.weight": rand(patch_features, dim),
        f"{v}to_pixels.0.bias": rand(patch_features),
        f"{v}to_pixels_first_frame.0.weight": rand(frame_features, dim),
        f"{v}to_pixels_first_frame.0.bias": rand(frame_features),
        "temperature": torch.tensor(4.6052),
    }
    for stage in ("enc_spatial_transformer", "enc_temporal_transformer"):
        s = f"{v}{stage}."
        state[f"{s}norm_out.gamma"] = torch.ones(dim)
        state[f"{s}norm_out.beta"] = torch.zeros(dim)
        for i in range(depth):
            layer = f"{s}layers.{i}."
            state |= {
                f"{layer}0.dsconv.weight": rand(dim, 1, 3, 3, 3, scale=0.1),
                f"{layer}0.dsconv.bias": rand(dim),
                f"{layer}1.null_kv": torch.zeros(heads, 0, dim_head),
                f"{layer}1.q_scale": rand(dim_head, offset=1.0),
                f"{layer}1.k_scale": rand(dim_head, offset=1.0),
                f"{layer}1.norm.gamma": rand(dim, offset=1.0),
                f"{layer}1.norm.beta": torch.zeros(dim),
                f"{layer}1.context_norm.gamma": rand(dim, offset=1.0),
                f"{layer}1.context_norm.beta": torch.zeros(dim),
                f"{layer}1.to_q.weight": rand(inner, dim, scale=dim**-0.5),
                f"{layer}1.to_kv.weight": rand(2 * inner, dim, scale=dim**-0.5),
                f"{layer}1.to_out.weight": rand(dim, inner, scale=inner**-0.5),
                f"{layer}3.0.weight": rand(dim, offset=1.0),
                f"{layer}3.0.bias": rand(dim),
                f"{layer}3.1.weight": rand(2 * ff_inner, dim, scale=dim**-0.5),
                f"{layer}3.4.weight": rand(dim, ff_inner, scale=ff_inner**-0.5),
            }
    if latent is not None:
        features = grid[0] * grid[1] * dim
        state["to_visual_latent.weight"] = rand(latent, features, scale=features**-0.5)
        state["to_visual_latent_extra.weight"] = rand(latent, features, scale=features**-0.5)
    if text_hidden is not None:
        t = "text_transformer."
        state |= {
            f"{t}embeddings.word_embeddings.weight": rand(30, text_hidden),
            f"{t}embeddings.position_embeddings.weight": rand(16, text_hidden),
            f"{t}embeddings.token_type_embeddings.weight": rand(2, text_hidden),
            f"{t}embeddings.LayerNorm.weight": rand(text_hidden, offset=1.0),
            f"{t}embeddings.LayerNorm.bias": rand(text_hidden),
            f"{t}embeddings.position_ids": torch.arange(16)[None],
            f"{t}encoder.layer.0.attention.self.query.weight": rand(text_hidden, text_hidden),
            f"{t}encoder.layer.0.attention.self.query.bias": rand(text_hidden),
            f"{t}pooler.dense.weight": rand(text_hidden, text_hidden),
            f"{t}pooler.dense.bias": rand(text_hidden),
            "to_text_latent.weight": rand(latent or dim, text_hidden),
            "to_text_latent_extra.weight": rand(latent or dim, text_hidden),
        }
    return state


SMALL_BACKBONE = dict(
    dim=32, heads=2, dim_head=16, depth=4, patch=(4, 8), ff_inner=40, codebook=16, grid=(4, 4)
)


def small_backbone(seed: int = 0, latent: int | None = None, **sizes) -> CTViT:
    """A random CT-ViT in CT-CLIP's layout: D 32, 2 x 16 heads, depth 4 + 4, patches 4 x 8 x 8; frozen."""
    state = ctclip_state_dict(**{**SMALL_BACKBONE, **sizes}, latent=latent, seed=seed)
    visual = split_ctclip_state_dict(state).visual
    return CTViT.from_state_dict(
        CTViTConfig.from_state_dict(visual, patch_size=8, temporal_patch_size=4), visual
    )


def lora_only_config(
    *, position_copies: bool = False, rank: int = 4, stages=("spatial", "temporal")
) -> SkillConfig:
    """A skill that changes only the inside of the backbone (LoRA, maybe position copies)."""
    return SkillConfig(
        task="prognosis",
        lora=LoraSpec(rank=rank, alpha=8.0, dropout=0.0, stages=stages),
        position_copies=position_copies,
        prognosis=PrognosisConfig(
            clinical_encoder="tabular",
            image_dim=32,
            adapter_dim=8,
            fusion_hidden=8,
            fusion_out=4,
            num_time_bins=3,
        ),
    )


def randomise_lora(backbone, adapter: str, seed: int, scale: float = 0.3) -> None:
    """Give an adapter non-zero B (and new A) so that it changes the features."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in lora_state_dict(backbone, adapter).values():
            tensor.copy_(scale * torch.randn(tensor.shape, generator=generator))


WORDS = (
    "is present not . the a patient year old male female weighing kg tobacco alcohol use no status "
    "performance hpv positive negative surgery chemotherapy given performed staging tnm head neck cancer "
    "lung nodule emphysema cardiomegaly medical material"
).split()


def tiny_text_tower(folder, hidden: int = 16, seed: int = 0) -> tuple[dict, TextEncoder]:
    """Writes a WordPiece vocab to `folder` and returns (BERT state dict, TextEncoder) of a 1-layer BERT."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *[f"{d}" for d in range(10)]]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    state = BertModel(config).state_dict()
    return state, TextEncoder(bert_from_state_dict(state), load_tokenizer(folder), max_length=128)


def tiny_preset(name: str = "tiny-seg-ct") -> Preset:
    demo = PRESETS["demo-seg-ct"]
    config = SkillConfig(
        task="segmentation",
        lora=LoraSpec(rank=2, alpha=4.0, dropout=0.0),
        patch_embedding=PatchEmbeddingSpec(channels=1),
        position_copies=True,
        decoder=UnetrDecoderConfig(hidden_size=SMALL_BACKBONE["dim"], feature_size=2),
    )
    return Preset(
        name, "tiny test skill", config, demo.modalities, demo.preprocessing, demo.inference, demo.outputs
    )


def trained_skill(backbone, name: str, seed: int):
    """A skill whose every parameter moved away from its fresh value (stands in for a trained one)."""
    skill = build_skill_model(tiny_preset().config, backbone, name)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in skill.trainable_parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return skill.eval()


def export(
    skill, folder, manifest: dict, version: str = "1.0.0", preset: Preset | None = None, **kwargs
) -> SkillManifest:
    """`export_pack` of a skill on the backbone of `manifest` (the tiny segmentation preset by default)."""
    return export_pack(
        skill,
        folder,
        preset=preset or tiny_preset(),
        version=version,
        backbone_id=manifest["id"],
        backbone_sha256=kwargs.pop("sha256", manifest["sha256"]),
        **kwargs,
    )


def tiny_prognosis_preset() -> Preset:
    demo = PRESETS["demo-prognosis"]
    prognosis = replace(demo.config.prognosis, image_dim=SMALL_BACKBONE["dim"], num_time_bins=3)
    config = SkillConfig(task="prognosis", lora=demo.config.lora, prognosis=prognosis)
    return Preset(
        "tiny-prognosis",
        "tiny test prognosis",
        config,
        demo.modalities,
        tiny_preset().preprocessing,  # the segmentation skill's, so the two can share one pass
        demo.inference,
        demo.outputs,
    )
