"""Random images whose labels are learnable (one noisy prototype per class), for smoke tests."""

from __future__ import annotations

import torch

from modelshrink.data.bundle import DataBundle, make_bundle, normalization, stratified_split
from modelshrink.data.tensors import ImageTensorDataset
from modelshrink.recipe.schema import SyntheticData


def build(spec: SyntheticData, seed: int) -> DataBundle:
    generator = torch.Generator().manual_seed(seed)
    shape = (spec.channels, spec.image_size, spec.image_size)
    prototypes = torch.rand(spec.num_classes, *shape, generator=generator)
    labels = torch.arange(spec.num_samples) % spec.num_classes
    noise = 0.15 * torch.randn(spec.num_samples, *shape, generator=generator)
    images = (prototypes[labels] + noise).clamp(0, 1)
    mean, std = normalization(spec.mean, spec.std, spec.channels, default=((0.5,), (0.5,)))
    train_idx, val_idx = stratified_split(labels.tolist(), spec.val_fraction, seed)

    def subset(idx: list[int]) -> ImageTensorDataset:
        return ImageTensorDataset(images[idx], labels[idx], spec.image_size, spec.channels, mean, std)

    return make_bundle(
        subset(train_idx),
        subset(val_idx),
        batch_size=spec.batch_size,
        num_workers=spec.num_workers,
        seed=seed,
        num_classes=spec.num_classes,
        input_shape=shape,
    )
