"""Texts for Hugging Face models, tokenized once to fixed-length token ids (padding marks the mask).

Fixed length keeps every batch the same shape, so latency is comparable between models and the
`max_length` the recipe names is what gets timed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from modelshrink.data.bundle import UNLABELED, DataBundle, make_bundle, stratified_split
from modelshrink.errors import UserError
from modelshrink.models.huggingface import tokenizer_for
from modelshrink.recipe.schema import ModelSpec, TextData
from modelshrink.registry import register

SAMPLES = Path(__file__).parent / "samples"
SAMPLE_SENTENCES = SAMPLES / "sentences.txt"


@register(TextData)
def build_texts(spec: TextData, seed: int, model: ModelSpec | None = None) -> DataBundle:
    """The tokenizer is the data's own or, without one, the model's Hugging Face source."""
    tokenizer = spec.tokenizer or (model.huggingface.source if model and model.huggingface else None)
    if tokenizer is None:
        raise UserError("data.tokenizer: text data needs a tokenizer (or a model.huggingface source)")
    return build(spec, seed, tokenizer)


def build(spec: TextData, seed: int, tokenizer_source: str) -> DataBundle:
    texts, labels, class_names = read_texts(spec)
    if len(texts) < 2:
        raise UserError(f"data.path: {spec.path} holds {len(texts)} text(s); need at least 2")
    tokenizer = tokenizer_for(tokenizer_source)
    if tokenizer.pad_token_id is None:
        raise UserError(f"data.tokenizer: {tokenizer_source} has no padding token; models here mask by padding")
    ids = tokenizer(texts, padding="max_length", truncation=True, max_length=spec.max_length, return_tensors="pt")[
        "input_ids"
    ]
    classes = labels if labels is not None else [UNLABELED] * len(texts)
    targets = torch.tensor(classes, dtype=torch.long)
    train_idx, val_idx = stratified_split(classes, spec.val_fraction, seed)
    return make_bundle(
        TensorDataset(ids[train_idx], targets[train_idx]),
        TensorDataset(ids[val_idx], targets[val_idx]),
        batch_size=spec.batch_size,
        num_workers=spec.num_workers,
        seed=seed,
        num_classes=len(class_names),
        input_shape=(spec.max_length,),
        class_names=class_names,
        labeled=labels is not None,
        examples=ids[val_idx],
    )


def read_texts(spec: TextData) -> tuple[list[str], list[int] | None, list[str]]:
    """Texts, class indices (None when unlabeled) and class names, from .txt, .jsonl or .csv."""
    path = spec.path or SAMPLES / f"{spec.sample}.txt"
    if not path.is_file():
        raise UserError(f"data.path: {path} is not a file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            numbered = _jsonl_rows(path)
        elif suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                # a record starts on the reader's line after the header; multi-line quoted fields shift it
                reader = csv.DictReader(handle)
                numbered = [(reader.line_num, row) for row in reader]
        else:
            return [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()], None, []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"data.path: {path} is not valid {suffix[1:]} ({exc})") from None
    fields = [spec.text_field] + ([spec.label_field] if spec.label_field else [])
    for line, row in numbered:
        missing = [f for f in fields if not isinstance(row, dict) or row.get(f) in (None, "")]
        if missing:
            raise UserError(f"data.path: {path}:{line}: the record has no {missing[0]!r}")
    rows = [row for _, row in numbered]
    texts = [str(row[spec.text_field]) for row in rows]
    if spec.label_field is None:
        return texts, None, []
    values = [row[spec.label_field] for row in rows]
    class_names = sorted({str(v) for v in values}, key=_natural)
    index = {name: i for i, name in enumerate(class_names)}
    return texts, [index[str(v)] for v in values], class_names


def _jsonl_rows(path: Path) -> list[tuple[int, Any]]:
    """(line number, record) for each non-blank line; a bad line is named by its number in the file."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise UserError(f"data.path: {path}:{number}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    return rows


def _natural(name: str) -> tuple[int, int | str]:
    """Numeric labels in numeric order (2 before 10), then names alphabetically."""
    return (0, int(name)) if name.lstrip("-").isdigit() else (1, name)
