"""A torchvision ImageFolder on local disk: `root/train` + `root/val`, or one folder split by the seed.

Unlabeled (`labels: false`): every image under the root, at any depth, with no class folders; the
model is then judged against the original (agreement, cosine). `class_index: indices`: class folder
names are the model's own class indices, so a 1000-class model can be scored on a few classes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from modelshrink.data.bundle import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    UNLABELED,
    DataBundle,
    image_bundle,
    normalization,
    stratified_split,
)
from modelshrink.errors import UserError
from modelshrink.recipe.schema import ImageFolderData, ModelSpec
from modelshrink.registry import register


def _to_rgb(image):  # module-level (not a lambda) so DataLoader workers can pickle the transform
    return image.convert("RGB")


def _load_image(path: str):  # module-level for DataLoader workers, like _to_rgb
    """torchvision's loader, with a file it cannot decode named in one line instead of a PIL traceback."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, ValueError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise UserError(f"data.path: cannot read image {path} ({type(exc).__name__}); remove or replace it") from None


class ImageFiles(Dataset):
    """Every image under a folder, at any depth, as `(image, UNLABELED)`."""

    def __init__(self, root: Path, transform: Callable[[Any], torch.Tensor]):
        from torchvision.datasets.folder import IMG_EXTENSIONS

        self.files = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(_load_image(self.files[index])), UNLABELED


@register(ImageFolderData)
def build(spec: ImageFolderData, seed: int, model: ModelSpec | None = None) -> DataBundle:
    root = spec.path
    if not root.is_dir():
        raise UserError(f"data.path: {root} is not a directory")
    transform = _transform(spec)
    if not spec.labels:
        return _unlabeled(spec, seed, transform)
    return _labeled(spec, seed, transform)


def _transform(spec: ImageFolderData) -> Callable[[Any], torch.Tensor]:
    from torchvision import transforms

    default = (IMAGENET_MEAN, IMAGENET_STD) if spec.channels == 3 else ((0.5,), (0.5,))
    mean, std = normalization(spec.mean, spec.std, spec.channels, default=default)
    return transforms.Compose(
        [
            transforms.Grayscale(1) if spec.channels == 1 else transforms.Lambda(_to_rgb),
            transforms.Resize(spec.image_size),
            transforms.CenterCrop(spec.image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean.flatten().tolist(), std.flatten().tolist()),
        ]
    )


def _unlabeled(spec: ImageFolderData, seed: int, transform: Callable[[Any], torch.Tensor]) -> DataBundle:
    def files(path: Path) -> ImageFiles:
        found = ImageFiles(path, transform)
        if len(found) == 0:
            raise UserError(f"data.path: no images under {path}")
        return found

    root = spec.path
    train: Dataset
    val: Dataset
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, val = files(root / "train"), files(root / "val")
    else:
        every = files(root)
        if len(every) < 2:
            raise UserError(f"data.path: {root} holds 1 image; need at least 2 to split off validation")
        train_idx, val_idx = stratified_split([0] * len(every), spec.val_fraction, seed)
        train, val = Subset(every, train_idx), Subset(every, val_idx)
    return image_bundle(spec, seed, train, val, num_classes=0, labeled=False)


def _labeled(spec: ImageFolderData, seed: int, transform: Callable[[Any], torch.Tensor]) -> DataBundle:
    from torchvision import datasets

    root = spec.path

    def folder(path: Path) -> datasets.ImageFolder:
        try:
            return datasets.ImageFolder(str(path), transform=transform, loader=_load_image)
        except (FileNotFoundError, RuntimeError) as exc:
            raise UserError(f"data.path: {path}: {exc}") from None

    train: Dataset
    val: Dataset
    if (root / "train").is_dir() and (root / "val").is_dir():
        train_set, val_set = folder(root / "train"), folder(root / "val")
        if train_set.classes != val_set.classes:
            raise UserError(f"data.path: {root}/train and {root}/val have different class folders")
        classes, train, val = train_set.classes, train_set, val_set
    else:
        full = folder(root)
        train_idx, val_idx = stratified_split(full.targets, spec.val_fraction, seed)
        classes, train, val = full.classes, Subset(full, train_idx), Subset(full, val_idx)
    if spec.class_index == "indices":  # the model's own classes: one folder of them is a fair test
        return _by_index(spec, seed, classes, train, val)
    if len(classes) < 2:  # every prediction would be "right": accuracy 1.0 that means nothing
        raise UserError(f"data.path: {root} has {len(classes)} class folder(s); labeled data needs at least 2")
    return image_bundle(spec, seed, train, val, num_classes=len(classes), class_names=classes)


class ClassIndexTargets(Dataset):
    """An ImageFolder's items with each folder's own name as the target (`207/` -> class 207)."""

    def __init__(self, dataset: Dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, local = self.dataset[index]
        return image, self.indices[local]


def _by_index(spec: ImageFolderData, seed: int, classes: list[str], train: Dataset, val: Dataset) -> DataBundle:
    bad = [name for name in classes if not name.isdigit()]
    if bad:
        raise UserError(f"data.path: class_index: indices, but folder {bad[0]!r} is not a class index (0, 1, ...)")
    indices = [int(name) for name in classes]
    names = [str(i) for i in range(max(indices) + 1)]
    return image_bundle(
        spec,
        seed,
        ClassIndexTargets(train, indices),
        ClassIndexTargets(val, indices),
        num_classes=max(indices) + 1,
        class_names=names,
        exact_classes=False,
    )
