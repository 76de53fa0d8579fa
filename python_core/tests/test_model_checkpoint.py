"""Reading and splitting CT-CLIP flat state dicts (mafm3.model.checkpoint), and the config inferred from them.

`ctclip_state_dict` builds synthetic checkpoints with CT-CLIP's real key names and shapes, written from the
key table of fixtures/ctclip/README.md §2; a test checks it against the fixture's own key list and shapes.

Precision: float32 on the CPU without autocast (the `--precision` policy is not involved); tensors are
compared bit for bit only where the same module runs on the same input, else within a tolerance.
"""

from __future__ import annotations

import pickle
import random
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import FIXTURES, SMALL, ctclip_state_dict

from mafm3.errors import MAFM3Error
from mafm3.model.checkpoint import read_state_dict, split_ctclip_state_dict
from mafm3.model.ctvit import CTViTConfig


def test_synthetic_checkpoint_has_the_fixture_keys_and_shapes():
    fixture = load_file(FIXTURES / "ctvit_small_state_dict.safetensors")
    synthetic = ctclip_state_dict(**SMALL)
    synthetic.pop("to_visual_latent_extra.weight")  # in the real checkpoint, not in the fixture
    assert {key: tuple(value.shape) for key, value in synthetic.items()} == {
        key: tuple(value.shape) for key, value in fixture.items()
    }


def test_split_reports_every_unused_key_with_its_reason():
    split = split_ctclip_state_dict(ctclip_state_dict(**SMALL, text_hidden=8))
    ignored_names = {re.sub(r"\.\d+(?=\.)", ".i", key) for key in split.ignored}
    assert ignored_names == {
        "visual_transformer.to_patch_emb_first_frame.i.weight",
        "visual_transformer.to_patch_emb_first_frame.i.bias",
        "visual_transformer.to_pixels.i.weight",
        "visual_transformer.to_pixels.i.bias",
        "visual_transformer.to_pixels_first_frame.i.weight",
        "visual_transformer.to_pixels_first_frame.i.bias",
        "visual_transformer.enc_spatial_transformer.layers.i.i.context_norm.gamma",
        "visual_transformer.enc_spatial_transformer.layers.i.i.context_norm.beta",
        "visual_transformer.enc_spatial_transformer.layers.i.i.null_kv",
        "visual_transformer.enc_temporal_transformer.layers.i.i.context_norm.gamma",
        "visual_transformer.enc_temporal_transformer.layers.i.i.context_norm.beta",
        "visual_transformer.enc_temporal_transformer.layers.i.i.null_kv",
        "visual_transformer.vq._codebook.initted",
        "visual_transformer.vq._codebook.cluster_size",
        "to_visual_latent_extra.weight",
        "to_text_latent_extra.weight",
        "text_transformer.embeddings.position_ids",
    }
    assert split.ignored["text_transformer.embeddings.position_ids"].startswith("legacy buffer")
    assert all(reason for reason in split.ignored.values())
    assert "vq.codebook" in split.visual and "to_visual_latent.weight" in split.visual
    assert set(split.text) == {key for key in split.used if not key.startswith("visual_transformer.")} - {
        "to_visual_latent.weight"
    }
    assert "to_text_latent.weight" in split.text and "temperature" in split.text


def test_unknown_top_level_keys_are_ignored_not_dropped_silently():
    state = ctclip_state_dict(**SMALL) | {"optimizer_step": torch.zeros(1)}
    assert "not part of CT-CLIP" in split_ctclip_state_dict(state).ignored["optimizer_step"]


def test_config_is_inferred_from_the_shapes():
    split = split_ctclip_state_dict(ctclip_state_dict(**SMALL | {"depth": 3}, channels=2))
    config = CTViTConfig.from_state_dict(split.visual, patch_size=8, temporal_patch_size=4)
    assert config == CTViTConfig(
        dim=64,
        heads=4,
        dim_head=16,
        spatial_depth=3,
        temporal_depth=3,
        channels=2,
        patch_size=8,
        temporal_patch_size=4,
        ff_inner_dim=170,
        codebook_size=64,
        latent_dim=32,
        latent_in_features=1024,
    )


def test_patch_sizes_that_do_not_divide_the_patch_features_are_refused():
    split = split_ctclip_state_dict(ctclip_state_dict(**SMALL))
    with pytest.raises(MAFM3Error, match=r"256 features per patch.*patch size 20, temporal patch size 10"):
        CTViTConfig.from_state_dict(split.visual, patch_size=20, temporal_patch_size=10)


def test_state_dict_without_visual_keys_is_refused():
    state = {"text_transformer.pooler.dense.weight": torch.zeros(2, 2), "temperature": torch.tensor(1.0)}
    with pytest.raises(
        MAFM3Error, match=r"no `visual_transformer\.\*` tensors, so it is not a CT-CLIP checkpoint"
    ):
        split_ctclip_state_dict(state, source="bert.pt")


def test_null_key_value_slots_are_refused():
    state = ctclip_state_dict(**SMALL)
    state["visual_transformer.enc_spatial_transformer.layers.0.1.null_kv"] = torch.zeros(4, 2, 16)
    with pytest.raises(MAFM3Error, match="2 null key/value slots"):
        split_ctclip_state_dict(state)


def test_incomplete_checkpoint_names_the_missing_key():
    state = ctclip_state_dict(**SMALL)
    del state["visual_transformer.vq._codebook.embed"]
    split = split_ctclip_state_dict(state)
    with pytest.raises(MAFM3Error, match=r"lacks `visual_transformer\.vq\._codebook\.embed`"):
        CTViTConfig.from_state_dict(split.visual, patch_size=8, temporal_patch_size=4)


def test_checkpoint_without_the_temporal_stage_is_refused():
    state = {key: value for key, value in ctclip_state_dict(**SMALL).items() if "enc_temporal" not in key}
    split = split_ctclip_state_dict(state)
    with pytest.raises(MAFM3Error, match=r"lacks `visual_transformer\.enc_temporal_transformer\.\*`"):
        CTViTConfig.from_state_dict(split.visual, patch_size=8, temporal_patch_size=4)


def test_pt_and_safetensors_read_the_same_tensors(tmp_path):
    state = ctclip_state_dict(**SMALL)
    torch.save(state, tmp_path / "ctclip.pt")
    save_file(state, tmp_path / "ctclip.safetensors")
    for name in ("ctclip.pt", "ctclip.safetensors"):
        read = read_state_dict(tmp_path / name)
        assert read.keys() == state.keys()
        assert all(torch.equal(read[key], state[key]) for key in state)


class NotATensor:
    """A class a pickle can only restore by running code."""


def _write_bad_files(folder):
    state = ctclip_state_dict(**SMALL)
    save_file(state, folder / "good.safetensors")
    torch.save(state, folder / "good.pt")
    good_safetensors, good_pt = (folder / "good.safetensors").read_bytes(), (folder / "good.pt").read_bytes()
    noise = random.Random(0)  # fixed bytes: the test must not depend on what a random draw decodes to
    (folder / "random.pt").write_bytes(noise.randbytes(4096))
    (folder / "random.safetensors").write_bytes(noise.randbytes(4096))
    (folder / "truncated.safetensors").write_bytes(good_safetensors[: len(good_safetensors) // 2])
    (folder / "truncated.pt").write_bytes(good_pt[: len(good_pt) // 2])
    torch.save({"weight": torch.zeros(1), "config": NotATensor()}, folder / "custom_class.pt")
    (folder / "plain_pickle.pt").write_bytes(pickle.dumps({"config": NotATensor()}))
    torch.save({"state_dict": state}, folder / "nested.pt")
    torch.save([torch.zeros(1)], folder / "list.pt")


BAD_FILES = {
    "random.pt": "cannot be read as a PyTorch or safetensors checkpoint: it is truncated, corrupt or another",
    "random.safetensors": "cannot be read as a PyTorch or safetensors checkpoint",
    "truncated.safetensors": "cannot be read as a PyTorch or safetensors checkpoint",
    "truncated.pt": "cannot be read as a PyTorch or safetensors checkpoint",
    "custom_class.pt": r"is a pickle that needs Python code to load \(.*NotATensor\), which mafm3 never runs",
    "plain_pickle.pt": "cannot be read as a PyTorch or safetensors checkpoint",
    "nested.pt": r"is not a flat state dict: entry 'state_dict' is a dict, not a tensor",
    "list.pt": "holds a list, not a state dict of named tensors",
    "missing.pt": "is not a file",
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_are_refused_with_one_clear_sentence(tmp_path, name):
    _write_bad_files(tmp_path)
    with pytest.raises(MAFM3Error, match=BAD_FILES[name]) as error:
        read_state_dict(tmp_path / name)
    message = str(error.value)
    assert message.count(". ") == 0 and message.endswith(".") and "\n" not in message
