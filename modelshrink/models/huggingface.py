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
import reprlib
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelshrink.errors import UserError, first_line
from modelshrink.registry import register
from modelshrink.sources import HuggingFaceSource
from modelshrink.user_code import resolve

_ST_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}
_TASKS = ("embedding", "classification")
# Config keys that make transformers import code, fetch it from the hub, or load a quantization library.
_CODE_KEYS = frozenset({"auto_map", "trust_remote_code", "custom_pipelines", "quantization_config", "code_revision"})
# Values allowed for keys whose other values fetch kernels or name arbitrary torch attributes (`getattr(torch, dtype)`).
_ALLOWED_VALUES = {
    "attn_implementation": ("eager", "sdpa", None),
    "attn_implementation_internal": ("eager", "sdpa", None),
    "experts_implementation": ("eager", "grouped_mm", "batched_mm", None),
    "experts_implementation_internal": ("eager", "grouped_mm", "batched_mm", None),
    "dtype": ("float32", "float16", "bfloat16", None),
    "torch_dtype": ("float32", "float16", "bfloat16", None),
}
# Integer sizes: any key ending so, or named so. No real model comes near the limits; a hostile one allocates at once.
_SIZE_SUFFIXES = ("_size", "_layers", "_heads", "_embeddings", "_positions", "_experts", "_labels", "_dim")
_SIZE_KEYS = frozenset({"n_embd", "n_layer", "n_head", "n_inner", "n_positions", "n_ctx", "d_model", "d_ff", "d_kv",
                        "dim", "num_labels"})  # fmt: skip
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "decoder_layers", "num_decoder_layers")
_MLP_KEYS = frozenset({"intermediate_size", "n_inner", "d_ff", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim",
                       "moe_intermediate_size", "hidden_dim"})  # fmt: skip
_CORE_SIZES = frozenset({"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "n_embd", "n_layer",
                         "n_head", "d_model", "max_position_embeddings"})  # fmt: skip
_MAX_SIZE = 2**24
_MAX_LAYERS = 1024
_MAX_PARAMETERS = 20e9


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


@register(HuggingFaceSource)
def build_source(source: HuggingFaceSource, *, from_recipe: bool, where: object) -> nn.Module:
    return build(source.record, where=None if from_recipe else where)


def build(arch: dict[str, Any], where: object = None) -> nn.Module:
    """A model with the record's architecture and fresh weights (a checkpoint's state_dict follows).

    `where` is the file the record came from: its config is data, so it is checked (`check_config`) and
    whatever transformers raises on it is that file's fault. `None` is the recipe's own directory, trusted
    as the recipe is.
    """
    transformers = _transformers()
    if where is not None:
        check_config(arch, transformers.CONFIG_MAPPING, where)
    try:
        return _wrap(_auto_class(transformers, arch["task"]).from_config(_config(transformers, arch)), arch)
    except Exception as exc:  # transformers raises many types for a config it cannot build
        if where is None:
            raise
        raise UserError(
            f"{where}: damaged checkpoint: cannot rebuild its Hugging Face model: {first_line(exc)}"
        ) from None


def check_config(arch: dict[str, Any], known: Collection[str], where: object) -> None:
    """Refuse a file's record unless it rebuilds a known architecture without code from the hub and with bounded sizes.

    transformers acts on several config keys: `auto_map` imports (or asks to import) code, an attention or
    experts implementation may fetch a kernel, `quantization_config` pulls in a quantization library; and
    sizes go straight to `torch.empty`, so one huge number would allocate terabytes before anything fails.
    """
    _check_head(arch, where)
    config = arch["config"]
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in known:
        raise UserError(f"{where}: damaged checkpoint: Hugging Face config model_type {reprlib.repr(model_type)} is "
                        "not an architecture transformers knows")  # fmt: skip
    for key, value in _items(config):
        if isinstance(key, str):  # nested maps such as id2label have integer keys
            _check_item(key, value, where)
    estimate = sum(_parameters(d) for d in _dicts(config))
    if estimate > _MAX_PARAMETERS:
        raise UserError(f"{where}: damaged checkpoint: Hugging Face config sizes (about {estimate:.3g} parameters) "
                        f"are beyond {_MAX_PARAMETERS:.0e}")  # fmt: skip
    needed, memory = estimate * 4, physical_memory()  # built in float32 before the state_dict is loaded
    if needed > memory:
        raise UserError(f"{where}: its Hugging Face model (about {estimate:.3g} parameters) needs about "
                        f"{needed / 2**30:.0f} GiB in float32, more than this machine's "
                        f"{memory / 2**30:.0f} GiB")  # fmt: skip


def physical_memory() -> int:
    """This machine's memory in bytes: a model built bigger than it would be killed, not refused."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


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


def _check_head(arch: dict[str, Any], where: object) -> None:
    """The record's own fields, typed: `TextModel` and the auto class trust them."""
    fields = {"task": _TASKS, "pooling": tuple(_ST_POOLING_KEYS.values()), "normalize": (False, True)}
    for field, allowed in fields.items():
        value = arch.get(field)
        if not isinstance(value, str | bool) or value not in allowed:
            raise UserError(f"{where}: damaged checkpoint: Hugging Face {field} {reprlib.repr(value)} is not one of "
                            f"{', '.join(map(str, allowed))}")  # fmt: skip
    config = arch.get("config")
    if not isinstance(config, dict) or not all(isinstance(key, str) for key in config):
        raise UserError(f"{where}: damaged checkpoint: its Hugging Face config is not a mapping of names to values")


def _check_item(key: str, value: Any, where: object) -> None:
    """One config entry, at any depth (sub-configs such as `text_config` are built the same way)."""
    if key in _CODE_KEYS or key.startswith("__"):
        raise UserError(f"{where}: damaged checkpoint: Hugging Face config {key} would make transformers import or "
                        "fetch code; modelshrink rebuilds only its built-in architectures")  # fmt: skip
    allowed = _ALLOWED_VALUES.get(key.lstrip("_"))
    if allowed is not None and not all(v in allowed for v in (value.values() if isinstance(value, dict) else [value])):
        raise UserError(f"{where}: damaged checkpoint: Hugging Face config {key} = {reprlib.repr(value)} is not one of "
                        f"{', '.join(map(str, allowed))}")  # fmt: skip
    if _is_size(key):
        _check_size(key, value, where)


def _check_size(key: str, value: Any, where: object) -> None:
    """Every number in a size (an int, or a list or map of them per layer or part) is bounded; core sizes must be
    positive numbers. Other sizes may be 0 or -1 (a sentinel in some configs); transformers' own errors cover those."""
    numbers = list(_leaves(value))
    if key in _CORE_SIZES and not all(n is None or (_number(n) and n >= 1) for n in numbers):
        raise UserError(f"{where}: damaged checkpoint: Hugging Face config {key} = {reprlib.repr(value)} is not "
                        "a positive number")  # fmt: skip
    limit = _MAX_LAYERS if "layer" in key else _MAX_SIZE
    for number in numbers:
        if _number(number) and number > limit:
            raise UserError(f"{where}: damaged checkpoint: Hugging Face config {key} = {number} is beyond {limit}")


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        for inner in value:
            yield from _leaves(inner)
    else:
        yield value


def _items(config: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
    """Every (key, value) of a config and of the dicts nested in it."""
    for d in _dicts(config):
        yield from d.items()


def _dicts(value: Any) -> Iterator[dict[Any, Any]]:
    if isinstance(value, dict):
        yield value
        for inner in value.values():
            yield from _dicts(inner)
    elif isinstance(value, list | tuple):
        for inner in value:
            yield from _dicts(inner)


def _is_size(key: Any) -> bool:
    return isinstance(key, str) and (key in _SIZE_KEYS or key.endswith(_SIZE_SUFFIXES))


def _parameters(config: dict[Any, Any]) -> int:
    """A rough upper estimate of one (sub-)config's parameter count: embeddings plus per-layer attention and MLP."""
    hidden = _first(config, "hidden_size", "n_embd", "d_model", "dim", "embed_dim")
    tables = sum(_first(config, key) for key in ("vocab_size", "max_position_embeddings", "n_positions",
                                                   "type_vocab_size", "num_labels"))  # fmt: skip
    layers = sum(_first(config, key) for key in _LAYER_KEYS)
    mlp = max((v for k, v in config.items() if isinstance(k, str) and k in _MLP_KEYS and _int(v)), default=4 * hidden)
    experts = max(1, _first(config, "num_experts", "num_local_experts", "n_routed_experts"))
    attention = max(hidden, _first(config, "num_attention_heads", "n_head") * _first(config, "head_dim"))
    return hidden * tables + layers * (4 * hidden * attention + 2 * hidden * mlp * experts)


def _first(config: dict[Any, Any], *keys: str) -> int:
    return next((config[key] for key in keys if _int(config.get(key))), 0)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
