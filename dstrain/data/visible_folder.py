"""torchvision's ImageFolder with the class folders :func:`dstrain.data.imagefolder.check_imagefolder` checked.

Why a module of its own: importing torchvision.datasets takes over a second, so
:mod:`dstrain.data.imagefolder` imports it only when datasets are built; and a loader
worker started with ``spawn`` must be able to import this class by name to unpickle a dataset.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple, Union

from torchvision.datasets import ImageFolder

from dstrain.data.layout import class_dirs


class VisibleImageFolder(ImageFolder):
    """ImageFolder whose classes skip hidden folders, as the layout check does.

    torchvision makes ``train/.ipynb_checkpoints`` a class: with images in it, every
    label of that split shifts by one against the other split without a word; without
    images, torchvision refuses a folder the check accepted.
    """

    def find_classes(self, directory: Union[str, Path]) -> Tuple[List[str], Dict[str, int]]:
        classes = class_dirs(Path(directory))
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: index for index, name in enumerate(classes)}
