"""Imported backbones (mafm3.skills.backbone) and `mafm3 backbone import|info`: round trips of synthetic
CT-CLIP checkpoints with the real key names, the conformance fixture through an import, and refusals."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch
from numeric_precision import assert_close_in_precision
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_models import FIXTURES, FULL, SMALL, ctclip_state_dict

from mafm3.cli import main
from mafm3.errors import MAFM3Error
from mafm3.model.ctvit import load_ctclip_image_encoder
from mafm3.skills.backbone import (
    import_ctclip_checkpoint,
    load_backbone,
    load_text_weights,
    read_manifest,
)

SMALL_PATCHES = {"patch_size": 8, "temporal_patch_size": 4}


@pytest.fixture
def checkpoint(tmp_path):
    """A small CT-CLIP_v2.pt: CT-ViT, CLIP projections, a one-layer BERT and every unused key."""
    path = tmp_path / "CT-CLIP_v2.pt"
    torch.save(ctclip_state_dict(**SMALL, text_hidden=8), path)
    return path


def test_import_round_trip_keeps_the_used_tensors_and_reports_the_ignored_ones(checkpoint, tmp_path):
    out = tmp_path / "backbone"
    manifest = import_ctclip_checkpoint(checkpoint, out, **SMALL_PATCHES)
    original = torch.load(checkpoint, weights_only=True)

    assert manifest == read_manifest(out)
    assert manifest["id"] == "ct-clip-v2" and manifest["has_text"] and manifest["has_latent"]
    assert manifest["sha256"] == hashlib.sha256((out / "weights.safetensors").read_bytes()).hexdigest()
    assert manifest["config"]["dim"] == 64 and manifest["config"]["patch_size"] == 8
    stored = load_file(out / "weights.safetensors")
    assert sorted(stored) == sorted(manifest["used_keys"])
    assert all(torch.equal(stored[key], original[key]) for key in stored)
    assert set(manifest["used_keys"]) | set(manifest["ignored_keys"]) == set(original)
    assert manifest["ignored_keys"]["text_transformer.embeddings.position_ids"].startswith("legacy buffer")
    assert (
        "single-frame patch embedding"
        in manifest["ignored_keys"]["visual_transformer.to_patch_emb_first_frame.2.weight"]
    )
    assert "text_transformer.embeddings.position_ids" not in stored

    x = torch.rand(2, 1, 8, 32, 32)
    direct = load_ctclip_image_encoder(checkpoint, **SMALL_PATCHES)
    imported = load_backbone(out)
    assert all(torch.equal(tensor, direct.state_dict()[key]) for key, tensor in imported.state_dict().items())
    # float32; two modules holding the same bytes in different memory may take different CPU kernels
    with torch.inference_mode():
        assert_close_in_precision(imported.forward_features(x)[0], direct.forward_features(x)[0], None)
        assert_close_in_precision(imported.image_latent(x), direct.image_latent(x), None)


def test_text_side_is_kept_for_the_text_skills(checkpoint, tmp_path):
    out = tmp_path / "backbone"
    tokenizer = tmp_path / "cxr-bert-tokenizer"
    tokenizer.mkdir()
    (tokenizer / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nlung\n")
    (tokenizer / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    import_ctclip_checkpoint(checkpoint, out, tokenizer_dir=tokenizer, **SMALL_PATCHES)
    original = torch.load(checkpoint, weights_only=True)

    text = load_text_weights(out)
    assert set(text.bert) == {
        key.removeprefix("text_transformer.")
        for key in original
        if key.startswith("text_transformer.") and not key.endswith("position_ids")
    }
    assert torch.equal(text.bert["pooler.dense.weight"], original["text_transformer.pooler.dense.weight"])
    assert torch.equal(text.to_text_latent, original["to_text_latent.weight"])
    assert torch.equal(text.temperature, original["temperature"])
    assert (text.tokenizer_dir / "vocab.txt").read_text() == (tokenizer / "vocab.txt").read_text()
    assert (text.tokenizer_dir / "tokenizer_config.json").is_file()


def test_backbone_without_text_refuses_text_weights(tmp_path):
    path = tmp_path / "vision_only.safetensors"
    save_file(ctclip_state_dict(**SMALL), path)
    manifest = import_ctclip_checkpoint(path, tmp_path / "vision", **SMALL_PATCHES)
    assert not manifest["has_text"]
    with pytest.raises(MAFM3Error, match="Backbone vision-only has no text encoder"):
        load_text_weights(tmp_path / "vision")


def test_the_conformance_fixture_survives_an_import(tmp_path):
    import_ctclip_checkpoint(
        FIXTURES / "ctvit_small_state_dict.safetensors", tmp_path / "golden", **SMALL_PATCHES
    )
    encoder, io = load_backbone(tmp_path / "golden"), load_file(FIXTURES / "ctvit_small_io.safetensors")
    tokens, hidden = encoder.forward_features(io["x_extra"])
    torch.testing.assert_close(tokens, io["tokens_extra"], atol=1e-5, rtol=0)
    torch.testing.assert_close(hidden[2], io["hidden_2_extra"], atol=2e-5, rtol=0)
    torch.testing.assert_close(
        encoder.image_latent(io["x_extra"]), io["image_latent_extra"], atol=1e-5, rtol=0
    )


def test_default_folder_is_under_the_mafm3_home(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("MAFM3_HOME", str(tmp_path / "home"))
    manifest = import_ctclip_checkpoint(checkpoint, backbone_id="ctclip-small", **SMALL_PATCHES)
    assert read_manifest(tmp_path / "home" / "backbones" / "ctclip-small") == manifest


def test_existing_folder_is_refused_and_left_as_it_was(checkpoint, tmp_path):
    out = tmp_path / "backbone"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(MAFM3Error, match="already exists and is not empty; choose another --out folder"):
        import_ctclip_checkpoint(checkpoint, out, **SMALL_PATCHES)
    assert [path.name for path in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00" * 64, "cannot be read as a PyTorch or safetensors checkpoint"),
        (None, "no `visual_transformer.*` tensors, so it is not a CT-CLIP checkpoint"),
    ],
)
def test_bad_checkpoint_leaves_nothing_behind(tmp_path, content, message):
    path = tmp_path / "model.pt"
    if content is None:
        torch.save({"text_transformer.pooler.dense.weight": torch.zeros(2, 2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(MAFM3Error, match=message.replace("*", r"\*")):
        import_ctclip_checkpoint(path, tmp_path / "backbone")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_backbone_id_that_is_not_a_plain_name_is_refused(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("MAFM3_HOME", str(tmp_path / "home"))
    with pytest.raises(MAFM3Error, match=r"Backbone id '\.\./escape' is not valid; use lower-case letters"):
        import_ctclip_checkpoint(checkpoint, backbone_id="../escape", **SMALL_PATCHES)
    assert not (tmp_path / "home").exists()


def test_tokenizer_folder_without_vocabulary_is_refused_before_reading(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MAFM3Error, match=r"is not a HF tokenizer folder \(no vocab.txt or tokenizer.json\)"):
        import_ctclip_checkpoint(checkpoint, tmp_path / "backbone", tokenizer_dir=tmp_path / "empty")
    assert not (tmp_path / "backbone").exists()


def test_cli_imports_then_describes_a_backbone(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MAFM3_HOME", str(tmp_path / "home"))
    code = main(["backbone", "import", str(checkpoint), "--patch-size", "8", "--temporal-patch-size", "4"])
    printed = capsys.readouterr()
    assert code == 0
    assert "id           ct-clip-v2" in printed.out and "ignored: legacy buffer" in printed.out
    assert main(["backbone", "info", "ct-clip-v2", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described == read_manifest(tmp_path / "home" / "backbones" / "ct-clip-v2")
    assert main(["backbone", "info", str(tmp_path / "home" / "backbones" / "ct-clip-v2")]) == 0
    assert f"sha256 {described['sha256']}" in capsys.readouterr().out


def test_cli_refusal_is_one_line_exit_code_1_and_no_traceback(tmp_path):
    bad = tmp_path / "CT-CLIP_v2.pt"
    torch.save({"weight": torch.zeros(1), "meta": {"lr": 0.1}}, bad)
    result = subprocess.run(
        [sys.executable, "-m", "mafm3", "backbone", "import", str(bad), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "import: reading CT-CLIP_v2.pt",
        "mafm3 backbone: error: CT-CLIP_v2.pt is not a flat state dict: entry 'meta' is a dict, not a "
        "tensor; CT-CLIP_v2.pt from the CT-RATE release is a flat state dict.",
    ]


def test_info_on_a_folder_that_is_not_a_backbone_is_refused(tmp_path, capsys):
    assert main(["backbone", "info", str(tmp_path)]) == 1
    assert "is not an imported backbone (no manifest.json)" in capsys.readouterr().err


def test_reading_a_manifest_does_not_import_torch():
    code = "import sys, mafm3.skills.backbone, mafm3.commands.backbone; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.slow
def test_full_size_checkpoint_round_trip_reports_the_ignored_keys(tmp_path):
    """CT-CLIP's real visual sizes, the full 512 x 294,912 image projection, a one-layer BERT (~1.3 GB)."""
    path = tmp_path / "CT-CLIP_v2.pt"
    torch.save(ctclip_state_dict(**FULL, text_hidden=16), path)
    manifest = import_ctclip_checkpoint(path, tmp_path / "backbone")
    ignored = manifest["ignored_keys"]
    assert len(ignored) == 6 + 4 + 2 * 8 + 8 + 2 + 2 + 1  # first frame, pixels, context norms, null kv, ...
    assert {reason for reason in ignored.values()} == {
        "single-frame patch embedding; its code path is disabled",
        "VQ-GAN pixel decoder head; the encoder never decodes",
        "cross-attention norm; CT-ViT attention has no context input",
        "zero null key/value slots (an empty tensor): no effect",
        "EMA statistic for codebook training; unused in eval",
        "k-means initialisation flag; the stored codebook is used",
        "duplicate CLIP projection that CT-CLIP never calls",
        "legacy buffer that transformers >= 4.31 no longer expects",
    }
    assert manifest["config"] | {"latent_dim": None, "latent_in_features": None} == {
        "dim": 512,
        "heads": 8,
        "dim_head": 32,
        "spatial_depth": 4,
        "temporal_depth": 4,
        "channels": 1,
        "patch_size": 20,
        "temporal_patch_size": 10,
        "ff_inner_dim": 1365,
        "codebook_size": 8192,
        "latent_dim": None,
        "latent_in_features": None,
    }
    assert (manifest["config"]["latent_dim"], manifest["config"]["latent_in_features"]) == (512, 294912)
    with safe_open(tmp_path / "backbone" / "weights.safetensors", framework="pt") as weights:
        assert weights.get_slice("to_visual_latent.weight").get_shape() == [512, 294912]
    encoder = load_backbone(tmp_path / "backbone")
    tokens, hidden = encoder.forward_features(torch.rand(1, 1, 20, 40, 40))
    assert tokens.shape == (1, 2, 2, 2, 512) and len(hidden) == 4
