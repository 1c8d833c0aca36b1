"""What every data source hands the engine: loaders, the class count and the input shape.

Loaders always yield `(inputs, targets)`: unlabeled data yields placeholder targets (`UNLABELED`), so
every loop over a loader has one shape. Inputs may be a tensor, a tuple or a dict of tensors
(`modelshrink.inputs`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, TensorDataset

from modelshrink.inputs import Inputs, resized

UNLABELED = -1  # the target of an unlabeled item

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
    # Real inputs to probe with where random floats would be meaningless (token ids, several inputs);
    # None: random floats of `input_shape`.
    examples: Inputs | None = None
    # Targets are class indices (top-1, top-5, cross-entropy apply); False for boxes, regression values.
    class_targets: bool = True
    # True: classes are numbered by the data (0..N-1), the model must output exactly N; False: targets
    # are the model's own class indices (`class_index: indices`), it may output more.
    exact_classes: bool = True
    # A separate calibration set; None: calibrate on the first training batches.
    calibration: DataLoader | None = None

    def calibration_inputs(self, batches: int) -> Iterator[Inputs]:
        """Input batches for calibration (activation ranges, importance scores): the calibration set,
        else the first `batches` of the training split; never the validation split that reports quality."""
        source = self.calibration if self.calibration is not None else self.train
        for inputs, _ in itertools.islice(source, batches):
            yield inputs

    def example_inputs(self, batch_size: int, seed: int = 0) -> Inputs:
        """A fixed batch the model takes, for latency, MACs and tracing."""
        if self.examples is not None:
            return resized(self.examples, batch_size)
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
    examples: Inputs | None = None,
    class_targets: bool = True,
    exact_classes: bool = True,
    calibration: Dataset | None = None,
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
        class_targets=class_targets,
        exact_classes=exact_classes,
        calibration=None if calibration is None else DataLoader(calibration, shuffle=False, **common),
    )


def image_bundle(spec: Any, seed: int, train: Dataset, val: Dataset, **details: Any) -> DataBundle:
    """`make_bundle` for an image data spec: its batch size, workers and (C, S, S) input shape."""
    return make_bundle(
        train,
        val,
        batch_size=spec.batch_size,
        num_workers=spec.num_workers,
        seed=seed,
        input_shape=(spec.channels, spec.image_size, spec.image_size),
        **details,
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


def with_evaluation_data(bundle: DataBundle, held_out: DataBundle) -> DataBundle:
    """The held-out set, all of it, as the split that reports quality (`evaluate.data`).

    Calibration, tuning and reporting then use different data: a quality gate is only as good as the
    data it is given, and data a stage chose its settings on flatters the model."""
    every = ConcatDataset([held_out.train.dataset, held_out.val.dataset])
    return replace(
        bundle,
        val=DataLoader(every, batch_size=bundle.val.batch_size, shuffle=False, num_workers=bundle.val.num_workers),
        labeled=bundle.labeled and held_out.labeled,
        class_targets=bundle.class_targets and held_out.class_targets,
        num_classes=max(bundle.num_classes, held_out.num_classes),
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
