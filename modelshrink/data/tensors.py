"""An in-memory image dataset that resizes and normalises lazily, per item."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from modelshrink.data.bundle import DataBundle, image_bundle, normalization, stratified_split


class ImageTensorDataset(Dataset):
    """Images as a (N, C, H, W) float tensor in [0, 1]; items come out at `size`, `channels`, normalised."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        size: int,
        channels: int,
        mean: torch.Tensor,
        std: torch.Tensor,
    ):
        self.images, self.labels = images, labels
        self.size, self.channels, self.mean, self.std = size, channels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if image.shape[-2:] != (self.size, self.size):
            image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        if image.shape[0] != self.channels:  # grayscale <-> RGB, so any model's stem fits any images
            image = image.mean(0, keepdim=True).expand(self.channels, -1, -1)
        return (image - self.mean) / self.std, int(self.labels[index])


def split_in_memory(
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: Any,
    seed: int,
    num_classes: int,
    class_names: list[str] | None = None,
) -> DataBundle:
    """A seeded, stratified train/val bundle from in-memory images in [0, 1] (digits, synthetic)."""
    mean, std = normalization(spec.mean, spec.std, spec.channels, default=((0.5,), (0.5,)))
    train_idx, val_idx = stratified_split(labels.tolist(), spec.val_fraction, seed)

    def subset(idx: list[int]) -> ImageTensorDataset:
        return ImageTensorDataset(images[idx], labels[idx], spec.image_size, spec.channels, mean, std)

    return image_bundle(
        spec, seed, subset(train_idx), subset(val_idx), num_classes=num_classes, class_names=class_names
    )
