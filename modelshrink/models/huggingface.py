"""Hugging Face text models (a local directory, a `pkg.module:function` that returns one, or a hub id).

Every stage, metric and checkpoint here passes one input tensor to the model, so a transformer is
wrapped as `TextModel`: token ids in (padding marked by the pad id), one vector per text out, either
the sentence embedding (pooled as the directory's sentence-transformers files say) or the logits of
a sequence classifier. Needs the optional extra: `pip install "modelshrink[hf]"`.

The architecture record carries the model's whole config, so a compressed checkpoint rebuilds with
`transformers` alone, without the original directory.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelshrink.errors import UserError, first_line
from modelshrink.plugins import resolve

_ST_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


class TextModel(nn.Module):
    """A transformer as a one-input module. The attention mask is `input_ids != pad_token_id`."""

    def __init__(self, transformer: nn.Module, task: str, pad_token_id: int, pooling: str, normalize: bool) -> None:
        super().__init__()
        self.transformer = transformer
        self.task = task
        self.pad_token_id = pad_token_id
        self.pooling = pooling
        self.normalize = normalize
        # BERT-style models take segment ids; passing explicit zeros also keeps the embedding lookup's
        # indices contiguous, which int8 embedding kernels require (the model's default is a strided view).
        self._segments = "token_type_ids" in inspect.signature(transformer.forward).parameters

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.long()  # probes (MACs, inspect) may pass float zeros of the recorded shape
        mask = ids != self.pad_token_id
        extra = {"token_type_ids": torch.zeros_like(ids)} if self._segments else {}
        out = self.transformer(input_ids=ids, attention_mask=mask.long(), **extra)
        if self.task == "classification":
            return out.logits
        return self._pool(out.last_hidden_state, mask)

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
        else:
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


def architecture(
    source: str, *, task: str, pooling: str | None, normalize: bool | None, num_classes: int | None
) -> dict[str, Any]:
    """The record that rebuilds the model (its config and head), read without loading any weights."""
    transformers = _transformers()
    directory = resolve_source(source)
    kwargs = {"num_labels": num_classes} if num_classes is not None else {}
    try:
        config = transformers.AutoConfig.from_pretrained(directory, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.huggingface: cannot load {directory}: {first_line(exc)}") from None
    default_pooling, default_normalize = sentence_transformers_head(directory)
    return {
        "huggingface": source,
        "task": task,
        "config": config.to_dict(),
        "pooling": pooling or default_pooling,
        "normalize": default_normalize if normalize is None else normalize,
    }


def load_pretrained(source: str, **head: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The pretrained model from `source` (keyword arguments as for `architecture`) and its record."""
    arch = architecture(source, **head)
    transformers = _transformers()
    try:
        transformer = _auto_class(transformers, arch["task"]).from_pretrained(
            resolve_source(source), config=_config(transformers, arch)
        )
    except (OSError, ValueError) as exc:
        raise UserError(f"model.huggingface: cannot load {source}: {first_line(exc)}") from None
    return _wrap(transformer, arch), arch


def build(arch: dict[str, Any]) -> nn.Module:
    """A model with the record's architecture and fresh weights (a checkpoint's state_dict follows)."""
    transformers = _transformers()
    return _wrap(_auto_class(transformers, arch["task"]).from_config(_config(transformers, arch)), arch)


def tokenizer_for(source: str) -> Any:
    transformers = _transformers()
    directory = resolve_source(source)
    try:
        return transformers.AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as exc:
        raise UserError(f"no tokenizer in {directory}: {first_line(exc)}") from None


def resolve_source(source: str) -> Path:
    """A directory as given; `pkg.module:function` called for one; otherwise a hub id (honours HF_HUB_OFFLINE)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or source.startswith((".", "/", "~")):
        raise UserError(f"model.huggingface: {source} is not a model directory")
    if ":" in source:
        return resolve_source(str(resolve(source, "model.huggingface")()))
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source))  # the hub client itself honours HF_HUB_OFFLINE
    except Exception as exc:  # the hub client raises many unrelated types for "not available"
        raise UserError(
            f"model.huggingface: {source!r} is neither a directory nor a hub model available here ({first_line(exc)})"
        ) from None


def sentence_transformers_head(directory: Path) -> tuple[str, bool]:
    """Pooling and normalization from a sentence-transformers layout (mean, no normalization if absent)."""
    pooling = "mean"
    pooling_file = directory / "1_Pooling" / "config.json"
    if pooling_file.is_file():
        config = json.loads(pooling_file.read_text())
        pooling = next((mode for key, mode in _ST_POOLING_KEYS.items() if config.get(key)), "mean")
    modules_file = directory / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
    normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
    return pooling, normalize


def _config(transformers: Any, arch: dict[str, Any]) -> Any:
    config = dict(arch["config"])
    return transformers.AutoConfig.for_model(config.pop("model_type"), **config)


def _auto_class(transformers: Any, task: str) -> Any:
    return transformers.AutoModelForSequenceClassification if task == "classification" else transformers.AutoModel


def _wrap(transformer: nn.Module, arch: dict[str, Any]) -> TextModel:
    pad = transformer.config.pad_token_id
    return TextModel(transformer, arch["task"], 0 if pad is None else pad, arch["pooling"], arch["normalize"]).eval()


def _transformers() -> Any:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import transformers
    except ImportError:
        raise UserError('Hugging Face models need the extra: pip install "modelshrink[hf]"') from None
    transformers.utils.logging.disable_progress_bar()  # rich progress is ours; CI logs stay quiet
    return transformers
