"""CT-ViT (mafm3.model.ctvit) against CT-CLIP's reference outputs in fixtures/ctclip (README tolerances), the
plausible mistakes those fixtures must catch, the fast paths, skill overrides and the LoRA loading order.

Precision: float32 (the fixture tolerances), and bf16 autocast where a test asks for it by name.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange
from numeric_precision import assert_close_in_precision, relative_tolerance
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import load_file
from tiny_models import FIXTURES, FULL, SMALL, ctclip_state_dict

from mafm3.errors import MAFM3Error
from mafm3.model import position
from mafm3.model.attention import GEGLU, reference_attention
from mafm3.model.checkpoint import split_ctclip_state_dict
from mafm3.model.ctvit import CTViT, CTViTConfig, load_ctclip_image_encoder
from mafm3.model.patch_embedding import PatchEmbedding
from mafm3.model.position import PEG, ContinuousPositionBias

STATE_DICT = FIXTURES / "ctvit_small_state_dict.safetensors"
TOLERANCE = {  # fixtures/ctclip/README.md §5, float32 on CPU
    "patch_tokens": 1e-5,
    "spatial_attn_bias": 1e-5,
    "tokens": 1e-5,
    **{f"hidden_{k}": 2e-5 for k in range(4)},
    "temporal_tokens": 2e-5,
    "vq_tokens": 1e-6,
    "image_embed": 1e-6,
    "image_latent": 1e-5,
}
CASES = ["", "_extra"]  # main input (1, 1, 16, 32, 32) and x_extra (2, 1, 8, 32, 32), a non-cubic grid


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "ctvit_small_io.safetensors")


def _encoder() -> CTViT:
    return load_ctclip_image_encoder(STATE_DICT, patch_size=8, temporal_patch_size=4)


@pytest.fixture(scope="module")
def encoder() -> CTViT:
    return _encoder()


def _outputs(encoder: CTViT, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every fixture quantity for input x, each from the encoder's public methods."""
    with torch.inference_mode():
        tokens, hidden = encoder.forward_features(x)
        temporal = encoder.temporal_tokens(tokens)
        vq_tokens, vq_indices = encoder.quantize(temporal)
        outputs = {
            "patch_tokens": encoder.patch_tokens(x),
            "spatial_attn_bias": encoder.spatial_attn_bias(*tokens.shape[2:4]),
            "tokens": tokens,
            **{f"hidden_{k}": state for k, state in enumerate(hidden)},
            "temporal_tokens": temporal,
            "vq_tokens": vq_tokens,
            "vq_indices": vq_indices,
            "image_embed": encoder.image_embedding(vq_tokens),
            "image_latent": encoder.image_latent(x),
        }
    return outputs


def _errors(outputs: dict[str, torch.Tensor], io: dict[str, torch.Tensor], case: str) -> dict[str, float]:
    """Max abs error per fixture tensor, as a multiple of its tolerance (indices: number changed, x 1e9)."""
    errors = {}
    for name, value in outputs.items():
        if name + case not in io:  # patch_tokens and spatial_attn_bias exist for the main case only
            continue
        expected = io[name + case]
        assert value.shape == expected.shape, name
        if name == "vq_indices":
            errors[name] = float((value != expected).sum()) * 1e9
        else:
            errors[name] = float((value.float() - expected).abs().max()) / TOLERANCE[name]
    return errors


@pytest.mark.parametrize("case", CASES)
def test_every_fixture_tensor_is_reproduced_within_the_readme_tolerances(encoder, io, case):
    errors = _errors(_outputs(encoder, io["x" + case]), io, case)
    assert len(errors) == (12 if case == "" else 10)
    assert errors == {name: pytest.approx(0.0, abs=1.0) for name in errors}, errors


@pytest.mark.parametrize("case", CASES)
def test_each_classification_stage_reproduces_the_fixture_from_the_previous_fixture_tensor(encoder, io, case):
    with torch.inference_mode():
        temporal = encoder.temporal_tokens(io["tokens" + case])
        vq_tokens, vq_indices = encoder.quantize(io["temporal_tokens" + case])
        image_embed = encoder.image_embedding(io["vq_tokens" + case])
        image_latent = encoder.project_latent(io["image_embed" + case])
    torch.testing.assert_close(temporal, io["temporal_tokens" + case], atol=2e-5, rtol=0)
    assert torch.equal(vq_indices, io["vq_indices" + case])
    torch.testing.assert_close(vq_tokens, io["vq_tokens" + case], atol=1e-6, rtol=0)
    torch.testing.assert_close(image_embed, io["image_embed" + case], atol=1e-6, rtol=0)
    torch.testing.assert_close(image_latent, io["image_latent" + case], atol=1e-5, rtol=0)


def _set(encoder: CTViT, suffix: str, value: float) -> None:
    with torch.no_grad():
        for name, parameter in encoder.named_parameters():
            if name.endswith(suffix):
                parameter.fill_(value)


def _temporal_peg(
    layout: str, peg: PEG, x: torch.Tensor, grid_shape: tuple[int, int, int, int]
) -> torch.Tensor:
    b, _, h, w = grid_shape
    grid = rearrange(x, f"(b h w) t d -> {layout}", b=b, h=h, w=w)
    return rearrange(peg.convolve(grid), f"{layout} -> (b h w) t d")


def _wrong_temporal_pegs(layout: str):
    def mutate(encoder, monkeypatch):
        for layer in encoder.enc_temporal_transformer.layers:
            monkeypatch.setattr(layer[0], "forward", functools.partial(_temporal_peg, layout, layer[0]))

    return mutate


def _kv_from_normalised_input(encoder, monkeypatch):
    for stage in (encoder.enc_spatial_transformer, encoder.enc_temporal_transformer):
        for layer in stage.layers:
            to_kv, norm = layer[1].to_kv, layer[1].norm
            monkeypatch.setattr(
                to_kv, "forward", lambda x, forward=to_kv.forward, norm=norm: forward(norm(x))
            )


def _patch_flattened(pattern: str):
    def mutate(encoder, monkeypatch):
        encoder.to_patch_emb[0] = Rearrange(
            f"b c (t pt) (h p1) (w p2) -> b t h w ({pattern})", pt=4, p1=8, p2=8
        )

    return mutate


# fixtures/ctclip/README.md §5: every plausible mistake fails by orders of magnitude (case "" or "_extra").
MISTAKES = {
    "peg_omitted": lambda e, mp: mp.setattr(PEG, "forward", lambda self, x, grid_shape: torch.zeros_like(x)),
    "peg_padded_symmetrically_along_t": lambda e, mp: mp.setattr(PEG, "causal_padding", (1, 1)),
    "causal_padding_after_instead_of_before": lambda e, mp: mp.setattr(PEG, "causal_padding", (0, 2)),
    "no_position_bias": lambda e, mp: (_set(e, "net.2.weight", 0.0), _set(e, "net.2.bias", 0.0)),
    "cpb_without_log_distance": lambda e, mp: mp.setattr(position, "signed_log", lambda x: x),
    "keys_and_values_from_normalised_input": _kv_from_normalised_input,
    "q_scale_and_k_scale_ignored": lambda e, mp: (_set(e, "q_scale", 1.0), _set(e, "k_scale", 1.0)),
    "attention_norm_gamma_ignored": lambda e, mp: _set(e, "1.norm.gamma", 1.0),
    "norm_out_gamma_ignored": lambda e, mp: _set(e, "norm_out.gamma", 1.0),
    "geglu_halves_swapped": lambda e, mp: mp.setattr(
        GEGLU, "forward", lambda self, x: x.chunk(2, dim=-1)[1] * F.gelu(x.chunk(2, dim=-1)[0])
    ),
    "tanh_approximated_gelu": lambda e, mp: mp.setattr(
        GEGLU,
        "forward",
        lambda self, x: x.chunk(2, dim=-1)[0] * F.gelu(x.chunk(2, dim=-1)[1], approximate="tanh"),
    ),
    "patch_flattened_p1_p2_pt_c": _patch_flattened("p1 p2 pt c"),
    "temporal_peg_properly_permuted": _wrong_temporal_pegs("b t h w d"),
    "temporal_peg_on_h_w_t_layout_causal_on_h": _wrong_temporal_pegs("b h w t d"),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_conformance_check_catches_each_plausible_mistake(io, monkeypatch, mistake):
    encoder = _encoder()
    MISTAKES[mistake](encoder, monkeypatch)
    worst = max(max(_errors(_outputs(encoder, io["x" + case]), io, case).values()) for case in CASES)
    assert worst > 10.0  # at least 10x over a tolerance: the conformance test above would fail


def test_fused_attention_agrees_with_the_reference_path(encoder, io):
    fused = _outputs(encoder, io["x_extra"])
    with reference_attention():
        plain = _outputs(encoder, io["x_extra"])
    for name in ("tokens", "hidden_3", "temporal_tokens"):
        torch.testing.assert_close(fused[name], plain[name], atol=1e-5, rtol=0)


def test_bf16_autocast_error_is_bounded(io):
    """bf16 autocast against float32, both asked for explicitly (not the policy)."""
    encoder = _encoder()
    x = io["x_extra"]
    with torch.inference_mode():
        reference, reference_hidden = encoder.forward_features(x)
        encoder.autocast_dtype = torch.bfloat16
        tokens, hidden = encoder.forward_features(x)
    assert tokens.dtype == torch.float32  # the residual stream stays float32
    for value, expected in zip([tokens, *hidden], [reference, *reference_hidden], strict=True):
        relative = float((value - expected).norm() / expected.norm())
        # bf16 really ran (beyond float32's error), and stayed within 2 bf16 ulps of the float32 result
        assert relative_tolerance(None) < relative < relative_tolerance(torch.bfloat16)


def test_pt_and_safetensors_checkpoints_give_identical_encoders(encoder, io, tmp_path):
    """float32. The two files load bit-identical tensors (that much the maths guarantees); two modules holding
    them in different memory may take different CPU kernels, so their outputs agree to float32's tolerance."""
    torch.save(load_file(STATE_DICT), tmp_path / "ctclip.pt")
    from_pt = load_ctclip_image_encoder(tmp_path / "ctclip.pt", patch_size=8, temporal_patch_size=4)
    expected = encoder.state_dict()
    found = from_pt.state_dict()
    assert found.keys() == expected.keys()
    assert all(torch.equal(found[key], expected[key]) for key in expected)
    x = io["x"]
    with torch.inference_mode():
        assert_close_in_precision(from_pt.forward_features(x)[0], encoder.forward_features(x)[0], None)
        assert_close_in_precision(from_pt.image_latent(x), encoder.image_latent(x), None)


def test_loaded_encoder_is_frozen_in_eval_mode_with_the_checkpoint_sizes(encoder):
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert encoder.config == CTViTConfig(
        dim=64,
        heads=4,
        dim_head=16,
        channels=1,
        patch_size=8,
        temporal_patch_size=4,
        ff_inner_dim=170,
        codebook_size=64,
        latent_dim=32,
        latent_in_features=1024,
    )


def test_skill_copies_of_the_position_modules_replace_the_encoders_own(encoder, io):
    x = io["x_extra"]
    tokens, _ = encoder.forward_features(x)
    pegs = [copy.deepcopy(layer[0]) for layer in encoder.enc_spatial_transformer.layers]
    position_bias = copy.deepcopy(encoder.spatial_rel_pos_bias)
    same, _ = encoder.forward_features(
        x, patch_embedding=copy.deepcopy(encoder.to_patch_emb), position_bias=position_bias, pegs=pegs
    )
    assert torch.equal(same, tokens)  # untrained copies change nothing
    with torch.no_grad():
        pegs[0].dsconv.bias.add_(0.5)
    changed, _ = encoder.forward_features(x, pegs=pegs)
    assert not torch.allclose(changed, tokens, atol=1e-3)
    assert torch.equal(encoder.forward_features(x)[0], tokens)  # the encoder's own PEG is untouched


def test_a_skill_trains_its_own_embedding_and_position_copies_through_the_frozen_encoder(encoder):
    embedding = PatchEmbedding(dim=64, channels=2, patch_size=4, temporal_patch_size=4)  # CT+PET, 4³ patches
    position_bias = ContinuousPositionBias(dim=64, heads=4).train()
    pegs = [PEG(64) for _ in range(4)]
    x = torch.randn(2, 2, 8, 12, 16)
    tokens, hidden = encoder.forward_features(
        x, patch_embedding=embedding, position_bias=position_bias, pegs=pegs
    )
    assert tokens.shape == (2, 2, 3, 4, 64) and [h.shape for h in hidden] == [(2, 2, 3, 4, 64)] * 4
    tokens.square().mean().backward()
    skill_parameters = [*embedding.parameters(), *position_bias.parameters(), *pegs[0].parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in skill_parameters)
    assert all(p.grad is None for p in encoder.parameters())


def test_image_latent_refuses_a_grid_the_clip_projection_was_not_trained_on(encoder):
    with pytest.raises(MAFM3Error, match=r"takes 1024 features \(h·w·D\), but the volume gave 256"):
        encoder.image_latent(torch.zeros(1, 1, 8, 16, 16))


def test_image_latent_needs_the_clip_projection():
    split = split_ctclip_state_dict(ctclip_state_dict(**SMALL | {"latent": None}))
    encoder = CTViT.from_state_dict(
        CTViTConfig.from_state_dict(split.visual, patch_size=8, temporal_patch_size=4), split.visual
    )
    with pytest.raises(
        MAFM3Error, match=r"no `to_visual_latent.weight`, so it cannot compute CLIP image latents"
    ):
        encoder.image_latent(torch.zeros(1, 1, 16, 32, 32))


def test_inconsistent_or_unknown_ct_vit_tensors_are_refused():
    state = ctclip_state_dict(**SMALL)
    state["visual_transformer.enc_spatial_transformer.layers.2.1.to_q.weight"] = torch.zeros(32, 64)
    state["visual_transformer.enc_spatial_transformer.layers.2.1.to_q.bias"] = torch.zeros(64)
    split = split_ctclip_state_dict(state)
    config = CTViTConfig.from_state_dict(split.visual, patch_size=8, temporal_patch_size=4)
    with pytest.raises(
        MAFM3Error, match=r"shapes are inconsistent \(size mismatch for .*layers\.2\.1\.to_q\.weight"
    ):
        CTViT.from_state_dict(config, split.visual)
    del split.visual["enc_spatial_transformer.layers.2.1.to_q.weight"]
    with pytest.raises(
        MAFM3Error, match=r"missing `visual_transformer\.enc_spatial.*unexpected `visual_trans"
    ):
        CTViT.from_state_dict(config, split.visual)


def test_lora_injected_after_loading_keeps_every_pretrained_projection(io):
    """The authors' bug G1: LoRA injected before loading leaves every attention projection random."""
    checkpoint = load_file(STATE_DICT)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["to_q", "to_kv", "to_out"])
    encoder = inject_adapter_in_model(config, _encoder())
    projections = {
        name: module
        for name, module in encoder.named_modules()
        if name.rsplit(".", 1)[-1] in ("to_q", "to_kv", "to_out")
    }
    assert len(projections) == 3 * (4 + 4)
    for name, module in projections.items():
        assert torch.equal(module.base_layer.weight, checkpoint[f"visual_transformer.{name}.weight"]), name
    assert torch.equal(encoder.forward_features(io["x"])[0], _encoder().forward_features(io["x"])[0])  # B = 0

    # the literal order of the authors' scripts, for contrast: inject first, then load non-strictly
    split = split_ctclip_state_dict(checkpoint)
    wrong = inject_adapter_in_model(
        config, CTViT(CTViTConfig.from_state_dict(split.visual, patch_size=8, temporal_patch_size=4))
    )
    wrong.load_state_dict(split.visual, strict=False)
    to_q = wrong.enc_spatial_transformer.layers[0][1].to_q.base_layer.weight
    assert not torch.equal(
        to_q, checkpoint["visual_transformer.enc_spatial_transformer.layers.0.1.to_q.weight"]
    )


@pytest.mark.slow
def test_full_size_encoder_loads_and_runs_the_feature_path_on_a_ct_clip_volume(tmp_path):
    """512-dim CT-ViT with CT-CLIP's real key layout (8 x 32 heads, FF 1365, codebook 8192, depth 4/4) on a
    (1, 1, 240, 480, 480) volume. About 5-10 s and 1.5 GB on 2 CPU cores."""
    from safetensors.torch import save_file

    save_file(ctclip_state_dict(**FULL | {"latent": None}), tmp_path / "ctclip.safetensors")
    encoder = load_ctclip_image_encoder(tmp_path / "ctclip.safetensors")
    assert encoder.config == CTViTConfig()
    x = torch.rand(1, 1, 240, 480, 480, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        tokens, hidden = encoder.forward_features(x)
    assert tokens.shape == (1, 24, 24, 24, 512) and [h.shape for h in hidden] == [(1, 24, 24, 24, 512)] * 4
    assert all(torch.isfinite(h).all() for h in hidden)
    # norm_out with gamma 1 and beta 0 (as in the synthetic checkpoint): every token has mean 0, variance 1
    torch.testing.assert_close(tokens.mean(dim=-1), torch.zeros(1, 24, 24, 24), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        tokens.var(dim=-1, unbiased=False), torch.ones(1, 24, 24, 24), atol=1e-3, rtol=0
    )
