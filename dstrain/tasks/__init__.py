"""Task factory: the recipe's ``task`` section names one of these."""
from __future__ import annotations

from typing import Any, Dict, Type

from pydantic import BaseModel, ValidationError

from dstrain.errors import ConfigError
from dstrain.messages import clip, pydantic_fix, pydantic_problem, shown
from dstrain.tasks.base import Task

IMAGE_TASKS = ("digits", "imagefolder", "synthetic", "fashion_mnist")
TASKS = IMAGE_TASKS + ("glue", "causal_lm")


def _config_class(name: Any, field: str) -> Type[BaseModel]:
    if name in IMAGE_TASKS:
        from dstrain.tasks.image import ImageTaskConfig

        return ImageTaskConfig
    if name == "glue":
        from dstrain.tasks.glue import GlueTaskConfig

        return GlueTaskConfig
    if name == "causal_lm":
        from dstrain.tasks.causal_lm import CausalLMTaskConfig

        return CausalLMTaskConfig
    if name is None:
        raise ConfigError(f"{field}.name", "is missing", f"name the task: one of {', '.join(TASKS)}")
    raise ConfigError(f"{field}.name", f"unknown task {shown(name)}", f"use one of {', '.join(TASKS)}")


def validate_task_config(config: Any, field: str = "task") -> BaseModel:
    """The task section as its task's pydantic config (unknown keys, types, ranges, arch_options).

    Recipes call this at load time so a bad ``task`` fails before any data or model is built.
    """
    if not isinstance(config, dict):
        raise ConfigError(field, f"{shown(config)} is not a mapping", "write e.g. task: {name: digits}")
    cls = _config_class(config.get("name"), field)
    try:
        validated = cls.model_validate(config)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(clip(str(p), 80) for p in first["loc"] if not str(p).startswith("function-"))
        msg = ("unknown key" if first["type"] == "extra_forbidden"
               else pydantic_problem(first) or clip(first["msg"].removeprefix("Value error, "), 400))
        fix = ("remove it or check its spelling against docs/recipes.md (Recipe format)" if first["type"] == "extra_forbidden"
               else pydantic_fix(first) or f"got {shown(first.get('input'))}; see docs/recipes.md (Recipe format)")
        raise ConfigError(f"{field}.{loc}", msg, fix) from None
    check_options = getattr(validated, "check_options", None)
    if check_options is not None:
        check_options(field)
    return validated


def check_task_config(config: Any, field: str = "task") -> None:
    validate_task_config(config, field)


def build_task(config: Dict[str, Any], field: str = "task") -> Task:
    validated = validate_task_config(config, field)
    if config.get("name") in IMAGE_TASKS:
        from dstrain.tasks.image import ImageClassificationTask

        return ImageClassificationTask(validated)
    if config.get("name") == "causal_lm":
        from dstrain.tasks.causal_lm import CausalLMTask

        return CausalLMTask(validated)
    from dstrain.tasks.glue import GlueTask

    return GlueTask(validated)


__all__ = ["Task", "build_task", "check_task_config", "validate_task_config"]
