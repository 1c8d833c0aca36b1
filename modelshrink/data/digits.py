"""scikit-learn's bundled handwritten digits: 1797 real 8x8 images in 10 classes, shipped with the package."""

from __future__ import annotations

import torch

from modelshrink.data.bundle import DataBundle
from modelshrink.data.tensors import split_in_memory
from modelshrink.recipe.schema import DigitsData, ModelSpec
from modelshrink.registry import register


@register(DigitsData)
def build(spec: DigitsData, seed: int, model: ModelSpec | None = None) -> DataBundle:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    return split_in_memory(images, labels, spec, seed, num_classes=10)
