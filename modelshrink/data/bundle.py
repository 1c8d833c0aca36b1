"""What every data source hands the pipeline: loaders, the class count and the input shape."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataBundle:
    train: DataLoader
    val: DataLoader
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str]
    labeled: bool = True
    # Held out of `train` to choose a training stage's best epoch; None when no stage chooses.
    tune: DataLoader | None = None
    # Real inputs to probe with where random floats would be meaningless (token ids); None: random.
    examples: torch.Tensor | None = None

    def example_inputs(self, batch_size: int, seed: int = 0) -> torch.Tensor:
        """A fixed batch of the model's input shape, for latency and MACs."""
        if self.examples is not None:
            repeats = -(-batch_size // len(self.examples))
            return self.examples.repeat(repeats, *[1] * (self.examples.dim() - 1))[:batch_size].clone()
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(batch_size, *self.input_shape, generator=generator)


def make_bundle(
    train: Dataset,
    val: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    num_classes: int,
    input_shape: Sequence[int],
    class_names: Sequence[str] | None = None,
    labeled: bool = True,
    examples: torch.Tensor | None = None,
) -> DataBundle:
    generator = torch.Generator().manual_seed(seed)
    common = {"batch_size": batch_size, "num_workers": num_workers}
    return DataBundle(
        train=DataLoader(train, shuffle=True, generator=generator, **common),
        val=DataLoader(val, shuffle=False, **common),
        num_classes=num_classes,
        input_shape=tuple(input_shape),
        class_names=list(class_names or [str(i) for i in range(num_classes)]),
        labeled=labeled,
        examples=examples,
    )


def with_tuning_split(bundle: DataBundle, fraction: float, seed: int) -> DataBundle:
    """Hold `fraction` of the training split out of training, to choose a training stage's best epoch.

    Taken from the training split, never from validation: the split that reports quality (and gates
    the run) must not be the one that chose the weights, or the reported numbers flatter the model."""
    from modelshrink.errors import UserError

    train = bundle.train.dataset
    if len(train) < 2:
        raise UserError("data: too few training samples to hold out a tuning split; set keep_best: false")
    labels = dataset_labels(train)
    keep, tune = stratified_split(labels if labels is not None else [0] * len(train), fraction, seed)
    common = {"batch_size": bundle.train.batch_size, "num_workers": bundle.train.num_workers}
    return replace(
        bundle,
        train=DataLoader(Subset(train, keep), shuffle=True, generator=bundle.train.generator, **common),
        tune=DataLoader(Subset(train, tune), shuffle=False, **common),
    )


def dataset_labels(dataset: Dataset) -> list[int] | None:
    """The labels of a dataset where they can be read without loading its inputs (for stratifying)."""
    if isinstance(dataset, Subset):
        inner = dataset_labels(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].tolist() if len(dataset.tensors) > 1 else None
    for attribute in ("labels", "targets"):  # ours and torchvision's ImageFolder
        labels = getattr(dataset, attribute, None)
        if labels is not None:
            return [int(label) for label in labels]
    return None


def normalization(
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    channels: int,
    default: tuple[Sequence[float], Sequence[float]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std as (C, 1, 1) tensors; a single value is broadcast to every channel."""
    mean, std = (mean, std) if mean is not None and std is not None else default
    if len(mean) == 1:
        mean, std = list(mean) * channels, list(std) * channels
    if len(mean) != channels or len(std) != channels:
        from modelshrink.errors import UserError

        raise UserError(f"data.mean/std: need 1 or {channels} values, got {len(mean)} and {len(std)}")
    return torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices for a train/val split that keeps class proportions (falls back to random if a class is tiny)."""
    from sklearn.model_selection import train_test_split

    indices = list(range(len(labels)))
    try:
        train, val = train_test_split(indices, test_size=val_fraction, random_state=seed, stratify=list(labels))
    except ValueError:
        train, val = train_test_split(indices, test_size=val_fraction, random_state=seed)
    return sorted(train), sorted(val)
