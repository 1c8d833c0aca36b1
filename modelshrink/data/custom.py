"""Data from the user's own code (`kind: python`) or tensors in a file (`kind: tensors`).

Both hand the engine map-style Datasets whose items are `(input, target)`; an unlabeled item is
wrapped as `(input, UNLABELED)` so every loop has one shape. What the targets are is read from the
first item: class indices (an int, or an integer tensor of one element) enable accuracy, top-5 and
cross-entropy; anything else (boxes, regression values) is left to the user's loss and metrics.
Probing inputs (latency, MACs, export) are real validation inputs, never random ones: a multi-input
or token-id model takes nothing else.
"""

from __future__ import annotations

from collections.abc import Sized
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from modelshrink.data.bundle import UNLABELED, DataBundle, dataset_labels, make_bundle, stratified_split
from modelshrink.errors import UserError, first_line
from modelshrink.recipe.schema import ModelSpec, PythonData, TensorFileData
from modelshrink.registry import register
from modelshrink.user_code import resolve, run_user_code

EXAMPLES = 8  # validation inputs kept for probing; `example_inputs` cycles through them


class Unlabeled(Dataset):
    """Items that are the input alone, as `(input, UNLABELED)`."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.dataset[index], UNLABELED


@register(PythonData)
def build_python(spec: PythonData, seed: int, model: ModelSpec | None = None) -> DataBundle:
    fn = resolve(spec.factory, "data.factory")
    result = run_user_code(fn, f"{spec.factory}(**kwargs)", "data.factory", **spec.kwargs)
    splits = _splits(result, spec.factory)
    for name, dataset in splits.items():
        _check_dataset(name, dataset, spec.labeled)
    if not spec.labeled:
        splits = {name: Unlabeled(dataset) for name, dataset in splits.items()}
    return _bundle(splits, spec.batch_size, spec.num_workers, seed, spec.labeled)


def _splits(result: Any, factory: str) -> dict[str, Dataset]:
    if isinstance(result, dict):
        unknown = sorted(set(result) - {"train", "val", "calibration"})
        missing = sorted({"train", "val"} - set(result))
        if unknown or missing:
            problem = f"unknown key {unknown[0]!r}" if unknown else f"no {missing[0]!r}"
            raise UserError(f"data.factory: {factory} returned a dict with {problem}; keys: train, val, calibration")
        return dict(result)
    if isinstance(result, tuple | list) and len(result) == 2:
        return {"train": result[0], "val": result[1]}
    raise UserError(
        f"data.factory: {factory} returned {type(result).__name__}; return (train, val) Datasets "
        "or {'train': ..., 'val': ..., 'calibration': ...}"
    )


def _check_dataset(name: str, dataset: Any, labeled: bool) -> None:
    where = f"data.factory: the {name} split"
    if isinstance(dataset, IterableDataset) or not (isinstance(dataset, Sized) and hasattr(dataset, "__getitem__")):
        raise UserError(f"{where} is {type(dataset).__name__}, not a map-style Dataset (len and indexing)")
    if len(dataset) == 0:
        raise UserError(f"{where} is empty")
    item = dataset[0]
    if labeled and not (isinstance(item, tuple | list) and len(item) == 2):
        raise UserError(
            f"{where}: an item is {type(item).__name__}, not an (input, target) pair; "
            "set data.labeled: false for items that are the input alone"
        )


@register(TensorFileData)
def build_tensors(spec: TensorFileData, seed: int, model: ModelSpec | None = None) -> DataBundle:
    tensors = _read_tensor_file(spec.path)
    inputs = _tensor(tensors, spec.inputs, spec.path)
    targets = _tensor(tensors, spec.targets, spec.path) if spec.targets else None
    if targets is not None and len(targets) != len(inputs):
        raise UserError(f"data.path: {spec.path}: {len(inputs)} inputs but {len(targets)} targets")
    if len(inputs) < 2:
        raise UserError(f"data.path: {spec.path} holds {len(inputs)} sample(s); need at least 2")
    classes = targets is not None and targets.dim() == 1 and not targets.is_floating_point()
    train_idx, val_idx = stratified_split(targets.tolist() if classes else [0] * len(inputs), spec.val_fraction, seed)
    labels = targets if targets is not None else torch.full((len(inputs),), UNLABELED)
    splits = {
        "train": TensorDataset(inputs[train_idx], labels[train_idx]),
        "val": TensorDataset(inputs[val_idx], labels[val_idx]),
    }
    return _bundle(splits, spec.batch_size, spec.num_workers, seed, targets is not None)


def _read_tensor_file(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as archive:  # no pickled objects: no code from the file
                return {key: torch.from_numpy(archive[key]) for key in archive.files}
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or hostile file: many exception types, one line
        raise UserError(f"data.path: cannot read {path} ({type(exc).__name__}: {first_line(exc)[:200]})") from None
    if not isinstance(loaded, dict):
        raise UserError(f"data.path: {path} holds {type(loaded).__name__}, not a dict of named tensors")
    return loaded


def _tensor(tensors: dict[str, Any], key: str, path: Path) -> torch.Tensor:
    value = tensors.get(key)
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        keys = ", ".join(sorted(map(str, tensors))) or "none"
        raise UserError(f"data.path: {path} has no tensor {key!r} with a sample dimension (keys: {keys})")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise UserError(f"data.path: {path}: {key!r} holds NaN or Inf")
    return value


def _bundle(splits: dict[str, Dataset], batch_size: int, num_workers: int, seed: int, labeled: bool) -> DataBundle:
    first_input, first_target = splits["val"][0]
    class_targets = labeled and _is_class_index(first_target)
    known = dataset_labels(splits["val"]) if class_targets else None
    num_classes = max(known) + 1 if known else 0  # 0: not read (it would load every input), not checked
    examples = next(iter(DataLoader(splits["val"], batch_size=min(EXAMPLES, len(splits["val"])))))[0]  # type: ignore[arg-type]
    return make_bundle(
        splits["train"],
        splits["val"],
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        num_classes=num_classes,
        input_shape=tuple(first_input.shape) if isinstance(first_input, torch.Tensor) else (),
        labeled=labeled,
        examples=examples,
        class_targets=class_targets,
        exact_classes=False,  # targets are the model's class indices; it may have more classes
        calibration=splits.get("calibration"),
    )


def _is_class_index(target: Any) -> bool:
    if isinstance(target, torch.Tensor):
        return target.numel() == 1 and not target.is_floating_point() and target.dtype != torch.bool
    return isinstance(target, int) and not isinstance(target, bool)
