"""A torchvision ImageFolder on local disk: `root/train` + `root/val`, or one folder split by the seed."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset, Subset

from modelshrink.data.bundle import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataBundle,
    make_bundle,
    normalization,
    stratified_split,
)
from modelshrink.errors import UserError
from modelshrink.recipe.schema import ImageFolderData


def _to_rgb(image):  # module-level (not a lambda) so DataLoader workers can pickle the transform
    return image.convert("RGB")


def _load_image(path: str):  # module-level for DataLoader workers, like _to_rgb
    """torchvision's loader, with a file it cannot decode named in one line instead of a PIL traceback."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, ValueError) as exc:  # PIL.UnidentifiedImageError is an OSError
        raise UserError(f"data.path: cannot read image {path} ({type(exc).__name__}); remove or replace it") from None


def build(spec: ImageFolderData, seed: int) -> DataBundle:
    from torchvision import datasets, transforms

    root = spec.path
    if not root.is_dir():
        raise UserError(f"data.path: {root} is not a directory")
    default = (IMAGENET_MEAN, IMAGENET_STD) if spec.channels == 3 else ((0.5,), (0.5,))
    mean, std = normalization(spec.mean, spec.std, spec.channels, default=default)
    transform = transforms.Compose(
        [
            transforms.Grayscale(1) if spec.channels == 1 else transforms.Lambda(_to_rgb),
            transforms.Resize(spec.image_size),
            transforms.CenterCrop(spec.image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean.flatten().tolist(), std.flatten().tolist()),
        ]
    )

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
    if len(classes) < 2:  # every prediction would be "right": accuracy 1.0 that means nothing
        raise UserError(f"data.path: {root} has {len(classes)} class folder(s); labeled data needs at least 2")
    return make_bundle(
        train,
        val,
        batch_size=spec.batch_size,
        num_workers=spec.num_workers,
        seed=seed,
        num_classes=len(classes),
        input_shape=(spec.channels, spec.image_size, spec.image_size),
        class_names=classes,
    )
