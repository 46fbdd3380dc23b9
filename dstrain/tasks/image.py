"""Image classification: the embedded digits set, Fashion-MNIST IDX files, and ImageNet-layout folders."""
from __future__ import annotations

from typing import Any, Dict, Literal, Optional, Tuple

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.utils.data import Dataset

from dstrain.errors import ConfigError
from dstrain.models import build_vision_model, check_arch_options
from dstrain.tasks.base import Task


class ImageTaskConfig(BaseModel):
    """The recipe's ``task`` section for image classification; numbers finite and in ranges a run can reach."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    name: Literal["digits", "imagefolder", "synthetic", "fashion_mnist"] = "digits"
    arch: str = "small_resnet"
    arch_options: Dict[str, Any] = Field(default_factory=dict)
    data_dir: Optional[str] = Field(default=None, description="imagefolder: the ImageNet-layout root; "
                                    "fashion_mnist: the IDX folder (default /usr/share/datasets/fashion-mnist)")
    # a million classes is ten times the largest public label sets; more only overflows the classifier
    num_classes: Optional[int] = Field(default=None, ge=2, le=1_000_000, description="default: the data's class count")
    # 8192 x 8192 is beyond any classification data set; larger sizes overflow the first batch's tensor
    image_size: int = Field(default=224, gt=0, le=8192)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    channels_last: bool = False
    compile: bool = Field(default=False, description="torch.compile the model through DeepSpeed's engine.compile()")
    # data-loader processes per rank: more than any machine's cores
    num_workers: int = Field(default=0, ge=0, le=256)
    pin_memory: Optional[bool] = Field(default=None, description="page-locked batches; default: on with CUDA")
    # a billion synthetic images per epoch is beyond any throughput benchmark
    synthetic_size: int = Field(default=10_000, gt=0, le=10**9, description="examples per epoch for name: synthetic")
    bad_images: Literal["prescan", "skip"] = Field(
        default="prescan", description="imagefolder: 'prescan' decodes every image before training and stops "
        "on the first unreadable one (safe; minutes for ImageNet); 'skip' skips and counts unreadable "
        "training images (metrics: skipped_images per epoch). Validation images are always pre-scanned.")

    def check_options(self, field: str = "task") -> None:
        """``arch_options`` against the chosen architecture's own schema (they go to its constructor)."""
        check_arch_options(self.arch, self.arch_options, field)


class ImageClassificationTask(Task):
    primary_metric = "accuracy"

    def __init__(self, config: ImageTaskConfig) -> None:
        self.config = config
        self.name = config.name
        self._datasets: Optional[Tuple[Dataset, Dataset]] = None
        self._num_classes = config.num_classes
        self._in_channels = 3

    def build_datasets(self) -> Tuple[Dataset, Dataset]:
        if self._datasets is None:
            if self.config.name == "synthetic":
                from dstrain.data.synthetic import SyntheticImages

                classes = self._num_classes or 1000
                size = self.config.image_size
                self._datasets = (SyntheticImages(self.config.synthetic_size, size, classes, seed=0),
                                  SyntheticImages(max(self.config.synthetic_size // 10, 1), size, classes, seed=1))
                self._num_classes = classes
            elif self.config.name == "digits":
                from dstrain.data.digits import load_digits_split

                self._datasets = load_digits_split()
                self._num_classes, self._in_channels = 10, 1
            elif self.config.name == "fashion_mnist":
                from dstrain.data.idx import load_fashion_mnist

                self._datasets = load_fashion_mnist(self.config.data_dir)
                self._num_classes, self._in_channels = 10, 1
            else:
                from dstrain.data.imagefolder import (
                    SkippingImageFolder,
                    build_imagefolder_datasets,
                    collate_skipping,
                    prescan,
                )

                train, val = build_imagefolder_datasets(self.config.data_dir, self.config.image_size)
                if self.config.bad_images == "prescan":
                    prescan({"train": train, "val": val})
                else:
                    prescan({"val": val})  # validation data is checked before the first training step
                    train = SkippingImageFolder(train)
                    self.train_collate_fn = collate_skipping
                self._datasets = (train, val)
                if self._num_classes is not None and self._num_classes < len(train.classes):
                    raise ConfigError("task.num_classes", f"{self._num_classes} is fewer than the "
                                      f"{len(train.classes)} class folders of {self.config.data_dir}/train",
                                      "remove num_classes (the folders decide) or raise it")
                self._num_classes = self._num_classes or len(train.classes)
        return self._datasets

    def build_model(self) -> nn.Module:
        self.build_datasets()
        # Built contiguous even with channels_last: the trainer converts the weights after
        # deepspeed.initialize (see SparseTrainer._apply_memory_format for why).
        return build_vision_model(self.config.arch, self._num_classes, self._in_channels,
                                  **self.config.arch_options)

    @property
    def channels_last(self) -> bool:
        return self.config.channels_last

    def skipped_in_batch(self, batch: Any) -> Optional[Tensor]:
        """Unreadable images dropped from this batch (bad_images: skip), else None."""
        return batch[2] if self.config.bad_images == "skip" and len(batch) == 3 else None

    def forward(self, model: nn.Module, batch: Any, device: torch.device) -> Tuple[Tensor, Tensor]:
        images, labels = batch[0], batch[1]
        dtype = next(model.parameters()).dtype
        memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        images = images.to(device, dtype=dtype, non_blocking=True).contiguous(memory_format=memory_format)
        return model(images), labels.to(device, non_blocking=True)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return nn.functional.cross_entropy(logits.float(), labels, label_smoothing=self.config.label_smoothing)

    def metrics(self, logits: Tensor, labels: Tensor) -> Dict[str, float]:
        pred = logits.argmax(dim=-1)
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        return {"accuracy": float((pred == labels).float().mean()),
                "top5": float((top5 == labels[:, None]).any(-1).float().mean())}
