"""scikit-learn's bundled handwritten digits: 1797 real 8x8 images in 10 classes, shipped with the package."""

from __future__ import annotations

import torch

from modelshrink.data.bundle import DataBundle, make_bundle, normalization, stratified_split
from modelshrink.data.tensors import ImageTensorDataset
from modelshrink.recipe.schema import DigitsData


def build(spec: DigitsData, seed: int) -> DataBundle:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
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
        num_classes=10,
        input_shape=(spec.channels, spec.image_size, spec.image_size),
    )
