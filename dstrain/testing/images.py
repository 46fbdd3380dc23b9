"""A small learnable image folder in ImageNet's layout, written as real JPEG and PNG files.

Why real files: the image-folder path (decoding, corrupt-file handling, class discovery)
is what the tests exercise; tensors in memory would skip it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

# Base colours of the synthetic classes: far apart, so a tiny model separates them in a few steps.
_PALETTE = [(220, 40, 40), (40, 200, 40), (40, 70, 220), (230, 210, 30), (200, 40, 210), (30, 200, 210),
            (240, 140, 20), (120, 120, 120), (250, 250, 250), (20, 20, 20)]


def make_tiny_imagefolder(root: Union[str, Path], classes: Union[int, Sequence[str]] = 3, per_class: int = 8,
                          val_per_class: Optional[int] = None, size: int = 24, seed: int = 0) -> Path:
    """Write a small learnable ImageNet-layout folder of real image files; returns ``root``.

    Each class has its own base colour plus pixel noise and a random bright square, so
    the task is easy but not trivial after random crops.  Files alternate between JPEG
    and PNG (and sizes vary by a few pixels) to exercise the decoding path.

        make_tiny_imagefolder("/tmp/tiny", classes=3, per_class=16, size=32)
        # /tmp/tiny/train/class0/img000.jpg, ..., /tmp/tiny/val/class2/img003.png
    """
    import numpy as np
    from PIL import Image

    root = Path(root)
    names = [f"class{i}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    if not names:
        raise ValueError("classes must be a positive number or a non-empty list of names")
    val_per_class = max(1, per_class // 4) if val_per_class is None else val_per_class
    rng = np.random.RandomState(seed)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            base = np.array(_PALETTE[c % len(_PALETTE)], dtype=np.float32)
            if c >= len(_PALETTE):  # more classes than colours: shift the hue deterministically
                base = np.roll(base, c // len(_PALETTE)) * 0.7
            for i in range(count):
                h, w = size + rng.randint(0, 5), size + rng.randint(0, 5)
                pixels = base + rng.normal(0, 25, size=(h, w, 3))
                s = max(2, size // 4)
                y, x = rng.randint(0, h - s), rng.randint(0, w - s)
                pixels[y:y + s, x:x + s] = 255 - base
                image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
                if i % 2 == 0:
                    image.save(folder / f"img{i:03d}.jpg", quality=90)
                else:
                    image.save(folder / f"img{i:03d}.png")
    return root
