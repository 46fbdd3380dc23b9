"""Task factory: the recipe's ``task`` section names one of these."""
from __future__ import annotations

from typing import Any, Dict

from pydantic import ValidationError

from ..errors import ConfigError
from .base import Task

IMAGE_TASKS = ("digits", "imagefolder", "synthetic")


def build_task(config: Dict[str, Any], field: str = "task") -> Task:
    name = config.get("name")
    try:
        if name in IMAGE_TASKS:
            from .image import ImageClassificationTask, ImageTaskConfig

            return ImageClassificationTask(ImageTaskConfig.model_validate(config))
        if name == "glue":
            from .glue import GlueTask, GlueTaskConfig

            return GlueTask(GlueTaskConfig.model_validate(config))
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{field}.{loc}", first["msg"], "see README.md 'Recipe format'") from None
    raise ConfigError(f"{field}.name", f"unknown task {name!r}", f"use one of {IMAGE_TASKS + ('glue',)}")


__all__ = ["Task", "build_task"]
