"""CT-CLIP's text tower: a HuggingFace BERT (CXR-BERT shape) and its WordPiece tokenizer, always frozen.

Shared by the classification skill (CLS token, CLIP's pooling) and the report-based prognosis encoder (mean of
the last hidden states over real tokens; or, as the authors, every text padded to `max_length` tokens and
the mean taken over all positions, [PAD] included: method-spec §6 G10).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

POOLINGS = ("cls", "masked_mean", "mean_with_padding")


class TextEncoder(nn.Module):
    """texts -> pooled last hidden states (B, hidden) of a frozen BERT."""

    def __init__(self, bert: nn.Module, tokenizer, *, max_length: int = 512) -> None:
        super().__init__()
        self.bert = bert.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def hidden_size(self) -> int:
        return self.bert.config.hidden_size

    def train(self, mode: bool = True) -> TextEncoder:
        """The tower stays in eval mode (no dropout): it is part of the frozen backbone."""
        return self

    @torch.no_grad()
    def forward(self, texts: list[str], pooling: str = "masked_mean", dropout: bool = False) -> torch.Tensor:
        """texts: B strings, truncated to `max_length` tokens. Returns (B, hidden) float32.

        pooling "cls": the [CLS] position of the last layer (CT-CLIP's text latent input);
        "masked_mean": the mean over the real (non-padding) tokens; "mean_with_padding" (the authors'):
        padded to `max_length` tokens, the mean over all of them.
        dropout: run BERT in train mode (its dropout on, weights still frozen), as the authors' training did.
        """
        if pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {POOLINGS}, got {pooling!r}")
        device = self.bert.embeddings.word_embeddings.weight.device
        padding = "max_length" if pooling == "mean_with_padding" else "longest"
        batch = self.tokenizer(
            list(texts), padding=padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        self.bert.train(dropout)
        try:
            hidden = self.bert(**batch).last_hidden_state  # (B, L, hidden)
        finally:
            self.bert.eval()
        if pooling == "cls":
            return hidden[:, 0]
        if pooling == "mean_with_padding":
            return hidden.mean(1)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)


def bert_from_state_dict(state: dict[str, torch.Tensor], config_file: Path | None = None) -> nn.Module:
    """A frozen HF `BertModel` holding `state` (checkpoint names without `text_transformer.`), eval mode.

    The config is read from `config_file` (the HF `config.json`) when given; otherwise it is inferred from
    the tensor shapes, with BERT's 64-wide attention heads (CXR-BERT: 768 wide, 12 heads, 12 layers).
    """
    from transformers import BertConfig, BertModel

    if config_file is not None:
        config = BertConfig.from_json_file(str(config_file))
    else:
        vocab_size, hidden_size = state["embeddings.word_embeddings.weight"].shape
        layers = {key.split(".")[2] for key in state if key.startswith("encoder.layer.")}
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=len(layers),
            num_attention_heads=max(1, hidden_size // 64),
            intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
            max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
            type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0],
        )
    bert = BertModel(config, add_pooling_layer="pooler.dense.weight" in state)
    bert.load_state_dict(state, strict=True)
    return bert.eval().requires_grad_(False)


def load_tokenizer(folder: Path):
    """The WordPiece tokenizer saved in `folder` (vocab.txt + tokenizer config), read without network."""
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(folder), local_files_only=True)
