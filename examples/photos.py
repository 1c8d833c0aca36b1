"""A folder of unlabeled photos, as a user would point `data.kind: imagefolder, labels: false` at:
crops of scikit-learn's bundled sample photos, in nested folders (any tree of images will do).

    .venv/bin/python -m examples.photos runs/photos
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def write_photos(folder: str | Path, count: int = 48, size: int = 160, seed: int = 0) -> list[Path]:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    written = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(size, min(photo.shape[:2])))
        top, left = (int(rng.integers(0, photo.shape[d] - side + 1)) for d in (0, 1))
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size))
        path = Path(folder) / f"batch{i % 3}" / f"photo{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.save(path, quality=90)
        written.append(path)
    return written


if __name__ == "__main__":
    print(f"wrote {len(write_photos(sys.argv[1] if len(sys.argv) > 1 else 'runs/photos'))} photos")
