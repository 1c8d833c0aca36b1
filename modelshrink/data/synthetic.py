"""Random images whose labels are learnable (one noisy prototype per class), for smoke tests."""

from __future__ import annotations

import torch

from modelshrink.data.bundle import DataBundle
from modelshrink.data.tensors import split_in_memory
from modelshrink.recipe.schema import ModelSpec, SyntheticData
from modelshrink.registry import register


@register(SyntheticData)
def build(spec: SyntheticData, seed: int, model: ModelSpec | None = None) -> DataBundle:
    generator = torch.Generator().manual_seed(seed)
    shape = (spec.channels, spec.image_size, spec.image_size)
    prototypes = torch.rand(spec.num_classes, *shape, generator=generator)
    labels = torch.arange(spec.num_samples) % spec.num_classes
    noise = 0.15 * torch.randn(spec.num_samples, *shape, generator=generator)
    images = (prototypes[labels] + noise).clamp(0, 1)
    return split_in_memory(images, labels, spec, seed, num_classes=spec.num_classes)
