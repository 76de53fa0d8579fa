"""CT-CLIP's text tower wrapper (`mafm3.model.text`) on a tiny random BERT with a tiny vocabulary.

Oracles: masked mean pooling does not depend on how much padding a batch adds; [CLS] pooling is position 0 of
BERT's own output; a state dict written by BERT loads back into an identical model; the authors' pooling over
all 512 positions, worked by hand on a stand-in BERT whose output at each position is its token id.

Precision: float32 on the CPU without autocast (the `--precision` policy is not involved); tensors are
compared bit for bit only where the same module runs on the same input, else within a tolerance.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tiny_models import tiny_text_tower
from torch import nn

from mafm3.model.text import TextEncoder, bert_from_state_dict, load_tokenizer


class TokenIdEcho(nn.Module):
    """A stand-in BERT: the last hidden state at each position is (token id, attention mask); it records
    whether it ran in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = SimpleNamespace(word_embeddings=nn.Embedding(1, 1))
        self.config = SimpleNamespace(hidden_size=2)
        self.modes: list[bool] = []

    def forward(self, input_ids, attention_mask, **_):
        self.modes.append(self.training)
        return SimpleNamespace(last_hidden_state=torch.stack([input_ids, attention_mask], -1).float())


def test_the_authors_pooling_averages_all_512_positions_padding_included(tmp_path):
    tiny_text_tower(tmp_path / "tok")  # writes the vocabulary
    tokenizer = load_tokenizer(tmp_path / "tok")
    tower = TextEncoder(TokenIdEcho(), tokenizer, max_length=512)
    text = "the patient is a male ."
    ids = tokenizer(text)["input_ids"]  # [CLS] ... [SEP], no padding
    pad = tokenizer.pad_token_id
    # By hand: 512 positions, len(ids) real tokens and 512 - len(ids) [PAD]s, of which 0 are attended to.
    by_hand = [(sum(ids) + pad * (512 - len(ids))) / 512, len(ids) / 512]
    assert tower([text], pooling="mean_with_padding")[0].tolist() == pytest.approx(by_hand, rel=1e-6)
    # Ours: only the real tokens.
    assert tower([text])[0].tolist() == pytest.approx([sum(ids) / len(ids), 1.0], rel=1e-6)


def test_dropout_runs_bert_in_train_mode_for_that_call_only(tmp_path):
    tiny_text_tower(tmp_path / "tok")
    bert = TokenIdEcho()
    tower = TextEncoder(bert, load_tokenizer(tmp_path / "tok"), max_length=512)
    tower(["a"], dropout=True)
    tower(["a"])
    assert bert.modes == [True, False] and not bert.training


def test_masked_mean_ignores_padding_and_cls_is_the_first_position(tmp_path):
    _, tower = tiny_text_tower(tmp_path / "tok", hidden=64)
    short, long = "lung nodule is present .", "the patient is a 61 year old male weighing 80 kg ."
    alone = tower([short])
    padded = tower([short, long])  # the short text is padded to the long one's length
    assert torch.allclose(alone[0], padded[0], atol=1e-5)
    assert not torch.allclose(padded[0], padded[1])
    batch = tower.tokenizer([short], return_tensors="pt")
    with torch.no_grad():
        direct = tower.bert(**batch).last_hidden_state
    assert torch.allclose(tower([short], pooling="cls")[0], direct[0, 0])
    assert torch.allclose(alone[0], direct[0].mean(0), atol=1e-6)


def test_the_tower_stays_frozen_and_in_eval_mode(tmp_path):
    _, tower = tiny_text_tower(tmp_path / "tok")
    tower.train()
    assert not tower.bert.training
    assert not any(p.requires_grad for p in tower.parameters())
    with pytest.raises(ValueError, match="`pooling` must be one of"):
        tower(["a"], pooling="max")


def test_bert_config_is_inferred_from_the_checkpoint_shapes(tmp_path):
    state, tower = tiny_text_tower(tmp_path / "tok", hidden=128)
    config = tower.bert.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (128, 1, 2)
    rebuilt = bert_from_state_dict(state)
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, state[key]), key
