"""ImageNet-layout image folders: ``DATA_DIR/train/<class>/*`` and ``DATA_DIR/val/<class>/*``.

:func:`build_imagefolder_datasets` returns torchvision ``ImageFolder`` datasets with the
standard ResNet/ImageNet transforms (Inception-style random-resized crops and flips for
training; resize to 256/224 of the crop size and a centre crop for validation).  Every
problem with the folder is reported up front as a :class:`~dstrain.errors.ConfigError`
on ``task.data_dir``, not as a torchvision traceback halfway through set-up.

:func:`make_tiny_imagefolder` writes a small, learnable folder of real JPEG/PNG files in
that layout, for tests and for trying the pipeline without ImageNet.
"""
from __future__ import annotations

import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from torch.utils.data import default_collate

from dstrain.data.layout import class_dirs

from dstrain import distributed as dstdist
from dstrain.errors import ConfigError

FIELD = "task.data_dir"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Extensions torchvision's default loader accepts (lower case; matched case-insensitively).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LAYOUT = "DATA_DIR/train/<class>/<image> and DATA_DIR/val/<class>/<image>"


def train_transform(image_size: int = 224) -> Callable:
    from torchvision import transforms as T

    return T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def val_transform(image_size: int = 224) -> Callable:
    """Resize the short side to image_size·256/224 (256 for 224), then centre-crop image_size."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _has_image(class_dir: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in class_dir.rglob("*"))


def _describe(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_imagefolder(data_dir: Union[str, Path, None]) -> Tuple[Path, List[str]]:
    """Validate the layout; returns (root, class names).  Raises ConfigError naming task.data_dir."""
    if data_dir is None or str(data_dir).strip() == "":
        raise ConfigError(FIELD, "is not set; the imagefolder task reads images from a folder",
                          f"set task.data_dir to a folder laid out as {LAYOUT}")
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise ConfigError(FIELD, f"{root} does not exist", f"point it at a folder laid out as {LAYOUT}")
    if not root.is_dir():
        raise ConfigError(FIELD, f"{root} is a file, not a folder", f"point it at a folder laid out as {LAYOUT}")
    classes = {}
    for split in ("train", "val"):
        split_dir = root / split
        if not split_dir.is_dir():
            hint = (" (ImageNet's validation images must first be sorted into one folder per class)"
                    if split == "val" else "")
            raise ConfigError(FIELD, f"{root} has no {split}/ subfolder",
                              f"lay the data out as {LAYOUT}{hint}")
        names = class_dirs(split_dir)
        if not names:
            raise ConfigError(FIELD, f"{split_dir} has no class subfolders (found no images to label)",
                              f"put each class's images in its own folder: {LAYOUT}")
        empty = [n for n in names if not _has_image(split_dir / n)]
        if empty:
            raise ConfigError(FIELD, f"{split_dir} has class folder(s) without images: {_describe(empty)}",
                              f"add images ({', '.join(IMAGE_EXTENSIONS)}) or remove the empty folders")
        classes[split] = names
    if classes["train"] != classes["val"]:
        missing = sorted(set(classes["train"]) - set(classes["val"]))
        extra = sorted(set(classes["val"]) - set(classes["train"]))
        parts = []
        if missing:
            parts.append(f"val/ lacks {_describe(missing)}")
        if extra:
            parts.append(f"val/ has {_describe(extra)} not in train/")
        raise ConfigError(FIELD, f"the classes of {root}/val differ from those of {root}/train "
                                 f"({'; '.join(parts)})",
                          "use the same class folder names in train/ and val/ (labels are assigned by sorted name)")
    if len(classes["train"]) < 2:  # every label would be 0: training "succeeds" by always answering it
        raise ConfigError(FIELD, f"{root}/train has a single class folder ({classes['train'][0]!r}); "
                                 "a classifier needs at least 2 classes",
                          "put each class's images in its own folder, in both train/ and val/")
    return root, classes["train"]


def build_imagefolder_datasets(data_dir: Union[str, Path, None], image_size: int = 224,
                               train_tf: Optional[Callable] = None, val_tf: Optional[Callable] = None):
    """(train, val) ``torchvision.datasets.ImageFolder`` datasets over ``data_dir``.

    ``train_tf``/``val_tf`` replace the standard transforms.  Both datasets use the same
    class-to-index map (classes sorted by folder name).
    """
    from dstrain.data.visible_folder import VisibleImageFolder

    if int(image_size) <= 0:
        raise ConfigError("task.image_size", f"{image_size} must be positive", "e.g. 224 for ImageNet")
    root, _ = check_imagefolder(data_dir)
    train_tf = train_tf or train_transform(image_size)
    val_tf = val_tf or val_transform(image_size)
    try:
        train = VisibleImageFolder(str(root / "train"), transform=train_tf)
        val = VisibleImageFolder(str(root / "val"), transform=val_tf)
    except FileNotFoundError as err:  # e.g. a race with files being removed
        raise ConfigError(FIELD, f"torchvision could not read {root}: {err}", f"lay the data out as {LAYOUT}") from None
    return train, val


#: What a broken image raises in PIL: truncated data (OSError), unknown format
#: (UnidentifiedImageError, an OSError), bad PNG chunks (SyntaxError), short reads (EOFError),
#: a declared size over twice ``Image.MAX_IMAGE_PIXELS`` (DecompressionBombError, not an OSError)
#: and -- where it is turned into an error -- a size over the limit itself (DecompressionBombWarning).
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
                Image.DecompressionBombWarning)
BAD_IMAGE_FIX = ("remove or replace it; or set task.bad_images: skip (skip and count unreadable training "
                 "images; --set task.bad_images=skip)")


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _bomb_warning(image: Image.Image) -> Optional[Image.DecompressionBombWarning]:
    """PIL's DecompressionBombWarning for ``image`` (same text), or None if its size is within the limit.

    Why not a warnings filter: filters are process-wide, and the scan decodes in threads.
    An image PIL only warns about is refused like one it raises on: either way its
    declared size is over the limit, and decoding it can take gigabytes.
    """
    limit = Image.MAX_IMAGE_PIXELS
    pixels = max(1, image.width) * max(1, image.height)
    if limit is None or pixels <= limit:
        return None
    return Image.DecompressionBombWarning(f"Image size ({pixels} pixels) exceeds limit of {limit} pixels, "
                                          "could be decompression bomb DOS attack.")


def _read_error(path: str) -> Optional[str]:
    """Why ``path`` cannot be decoded into an RGB image, or None if it can (full decode, as training does)."""
    try:
        with Image.open(path) as image:
            bomb = _bomb_warning(image)
            if bomb is not None:
                return _reason(bomb)
            image.convert("RGB")
        return None
    except IMAGE_ERRORS as err:
        return _reason(err)


def scan_images(paths: Sequence[str], rank: int = 0, world: int = 1,
                threads: Optional[int] = None) -> List[Tuple[str, str]]:
    """(path, reason) of every unreadable image among this rank's share (``paths[rank::world]``).

    Decoding runs in a thread pool (Pillow releases the GIL while decoding); by default
    this process's share of the node's CPUs (split between the ranks on the node), at most 16.
    """

    share = list(paths)[rank::world]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = threads or max(1, min(16, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))))
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=threads) as pool:
        # _read_error reports these images itself; PIL's own warning would only repeat it on stderr
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        reasons = list(pool.map(_read_error, share, chunksize=64))
    return [(p, reason) for p, reason in zip(share, reasons) if reason is not None]


def prescan(datasets: Dict[str, Any], field: str = FIELD) -> None:
    """Decode every image of ``datasets`` (split name -> ImageFolder) before training; ranks split the work.

    Stops with one line naming the first unreadable file and the reason, so a run
    never dies mid-epoch (or after a whole epoch, at validation) on a broken file.
    """

    for split, dataset in datasets.items():
        bad = scan_images([path for path, _ in dataset.samples], dstdist.rank(), dstdist.world_size())
        bad = sorted(b for part in dstdist.all_gather_objects(bad) for b in part)
        if bad:
            more = f" ({len(bad)} unreadable {split} images in all)" if len(bad) > 1 else ""
            raise ConfigError(field, f"unreadable {split} image {bad[0][0]}: {bad[0][1]}{more}",
                              BAD_IMAGE_FIX if split == "train" else "remove or replace it (validation "
                              "images are always checked before training)")


class SkippingImageFolder:
    """Wraps a training ImageFolder: an unreadable image yields None (named once on stderr) instead of
    raising; :func:`collate_skipping` drops it and counts it, so the trainer can report the count."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.classes = dataset.classes
        self.samples = dataset.samples

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            # a size PIL only warns about is skipped like one it refuses (see _bomb_warning); the filter
            # is process-wide, which is safe here: a loader worker (or the main process) reads one item at a time
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                return self.dataset[index]
        except IMAGE_ERRORS as err:
            print(f"[dstrain] skipped unreadable image {self.dataset.samples[index][0]}: {_reason(err)}",
                  file=sys.stderr, flush=True)
            return None


def collate_skipping(items: List[Any]) -> Tuple[Any, Any, int]:
    """(images, labels, number skipped) from a list that may hold None for skipped images."""

    kept = [x for x in items if x is not None]
    skipped = len(items) - len(kept)
    if not kept:  # a whole micro-batch unreadable: a batch of size 0 would give a NaN loss
        raise ConfigError(FIELD, f"all {len(items)} images of a training batch are unreadable (names above)",
                          "fix the data set; skipping is meant for a few broken files")
    images, labels = default_collate(kept)
    return images, labels, torch.tensor(skipped)


__all__ = ["build_imagefolder_datasets", "check_imagefolder", "class_dirs", "train_transform",
           "prescan", "scan_images", "SkippingImageFolder", "collate_skipping",
           "val_transform", "IMAGENET_MEAN", "IMAGENET_STD"]
