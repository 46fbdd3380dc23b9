"""The class folders of an ImageNet-layout split: one rule for the layout check and for the datasets.

Why a module of its own: :mod:`dstrain.data.imagefolder` (the check) and
:mod:`dstrain.data.visible_folder` (the dataset class spawned loader workers unpickle) must
agree on which folders are classes, and neither may import the other.
"""
from __future__ import annotations

from pathlib import Path
from typing import List


def class_dirs(split_dir: Path) -> List[str]:
    """The class folder names of one split, sorted (label i is the i-th name).

    Hidden folders (``.ipynb_checkpoints``, ``.cache``) are not classes.  torchvision's own
    ImageFolder counts them, which shifts every label of the split they are in; the
    datasets are therefore built with :class:`dstrain.data.visible_folder.VisibleImageFolder`,
    which uses this same rule.
    """
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
