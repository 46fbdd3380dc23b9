"""The DeepSpeed JSON config: checked at the boundary for the keys dstrain reads, then resolved against the recipe.

DeepSpeed validates lazily: ``train_batch_size: "abc"`` or ``zero_optimization: 2``
surface as a ``ValueError``/``AttributeError`` (or ``ZeroDivisionError`` for an
accumulation of 0) somewhere inside ``deepspeed.initialize``.  The keys dstrain itself
reads — batch sizes, ZeRO stage, precision switches, gradient clipping — are typed
here with pydantic, one :class:`~dstrain.errors.ConfigError` line per mistake; every
other key passes through to DeepSpeed unchanged.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Annotated, Any, Dict, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
)

from dstrain.errors import ConfigError

Auto = Literal["auto"]
Count = Optional[Union[Auto, Annotated[StrictInt, Field(gt=0)]]]

FIXES = {
    "train_batch_size": '"auto" (the recipe\'s training.batch_size decides) or a positive integer',
    "train_micro_batch_size_per_gpu": '"auto" or a positive integer',
    "gradient_accumulation_steps": '"auto" or a positive integer',
    "zero_optimization": 'an object such as {"stage": 2}',
    "zero_optimization.stage": "0, 1, 2 or 3 (an integer)",
    "bf16": 'an object such as {"enabled": true}',
    "fp16": 'an object such as {"enabled": false}',
    "bf16.enabled": "true or false",
    "fp16.enabled": "true or false",
    "gradient_clipping": "a number >= 0 (0 disables clipping)",
}


class _Open(BaseModel):
    """Typed keys dstrain reads; any other key is DeepSpeed's business and kept."""

    model_config = ConfigDict(extra="allow")


class ZeroSection(_Open):
    stage: Literal[0, 1, 2, 3] = 0


class PrecisionSection(_Open):
    enabled: Union[StrictBool, Auto] = False


class DSConfig(_Open):
    train_batch_size: Count = "auto"
    train_micro_batch_size_per_gpu: Count = "auto"
    gradient_accumulation_steps: Count = "auto"
    zero_optimization: ZeroSection = Field(default_factory=ZeroSection)
    bf16: PrecisionSection = Field(default_factory=PrecisionSection)
    fp16: PrecisionSection = Field(default_factory=PrecisionSection)
    gradient_clipping: Annotated[Union[StrictInt, StrictFloat], Field(ge=0)] = 1.0


def validate_ds_config(cfg: Any, path: Optional[Path] = None) -> Dict[str, Any]:
    """Check the keys dstrain reads; returns ``cfg`` unchanged (DeepSpeed fills its own defaults)."""
    where = f" in {path}" if path else ""
    if not isinstance(cfg, dict):
        raise ConfigError("ds_config", f"must be a JSON object, got a {type(cfg).__name__}{where}",
                          'write {"train_batch_size": "auto", ...} as in launch/ds_config.json')
    try:
        DSConfig.model_validate(cfg)
    except ValidationError as err:
        first = err.errors()[0]
        # drop pydantic's union branch labels (e.g. "literal['auto']", "int") from the location
        parts = [str(p) for p in first["loc"] if isinstance(p, int) or str(p) in _FIELD_NAMES]
        loc = ".".join(parts)
        value = first.get("input")
        for key in (loc, loc.split(".")[0]):
            if key in FIXES:
                fix = f"use {FIXES[key]}"
                break
        else:
            fix = "see launch/ds_config.json"
        raise ConfigError(f"ds_config.{loc}", f"{value!r}{where} is not valid", fix) from None
    return cfg


_FIELD_NAMES = {k.split(".")[-1] for k in FIXES}


def load_ds_config(path: Union[str, Path], flag: str = "--deepspeed_config") -> Dict[str, Any]:
    """Read and validate a DeepSpeed JSON file; every problem is one line naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(flag, f"{p} does not exist" if not p.exists() else f"{p} is not a file",
                          "pass a JSON file such as launch/ds_config.json")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(flag, f"{p} is not a text file (not UTF-8)", "pass a JSON file such as "
                          "launch/ds_config.json") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(str(p), f"is not valid JSON ({err})", "fix the syntax") from None
    return validate_ds_config(data, p)


def resolve_ds_config(ds_config: Dict[str, Any], recipe: Any, world: int, device_type: str = "cpu") -> Dict[str, Any]:
    """Fill batch sizes from the recipe; refuse combinations DeepSpeed would reject later, obscurely."""
    cfg = copy.deepcopy(validate_ds_config(ds_config))
    global_batch = recipe.training.batch_size
    given = cfg.get("train_batch_size", "auto")
    if given not in ("auto", None) and int(given) != global_batch:
        raise ConfigError("ds_config.train_batch_size",
                          f"{given} differs from the recipe's training.batch_size ({global_batch})",
                          'set it to "auto" (the recipe decides) or make them equal')
    cfg["train_batch_size"] = global_batch
    gas = cfg.get("gradient_accumulation_steps", "auto")
    micro = cfg.get("train_micro_batch_size_per_gpu", "auto")
    if gas in ("auto", None):
        gas = 1 if micro in ("auto", None) else max(1, global_batch // (int(micro) * world))
    if micro in ("auto", None):
        micro = global_batch // (int(gas) * world)
    if int(micro) * int(gas) * world != global_batch or int(micro) < 1:
        raise ConfigError("ds_config.train_micro_batch_size_per_gpu",
                          f"micro batch {micro} x accumulation {gas} x {world} processes != batch_size {global_batch}",
                          "pick a batch_size divisible by the number of processes, or set both to auto")
    cfg["gradient_accumulation_steps"] = int(gas)
    cfg["train_micro_batch_size_per_gpu"] = int(micro)
    stage = zero_stage(cfg)
    if stage == 3:
        # A persistent parameter keeps a full copy beside its partition, which a mask update (made on the
        # partitions) cannot reach before the next step: dstrain's default makes none persistent, and a
        # config that does is checked against the prunable weights (dstrain/sparsity/zero3.py).
        cfg["zero_optimization"].setdefault("stage3_param_persistence_threshold", 0)
    if "optimizer" in cfg or "scheduler" in cfg:
        raise ConfigError("ds_config.optimizer", "the optimizer and LR schedule come from the recipe",
                          "remove 'optimizer' and 'scheduler' from ds_config.json")
    if device_type == "cpu" and cfg.get("fp16", {}).get("enabled", False):
        raise ConfigError("ds_config.fp16.enabled", "DeepSpeed's fp16 path does not train on CPU "
                          "(loss stays at chance even for a dense model in our checks)",
                          'use "bf16": {"enabled": true} on CPU; fp16 with loss scaling is for GPUs')
    cfg["gradient_clipping"] = _gradient_clipping(cfg, recipe)
    if stage in (1, 2, 3):
        cfg.setdefault("zero_allow_untested_optimizer", True)
    cfg.setdefault("steps_per_print", 10**9)
    return cfg


def precision(cfg: Dict[str, Any]) -> str:
    """"bf16", "fp16" or "fp32": the master weights and optimizer state a checkpoint holds depend on it."""
    for name in ("bf16", "fp16"):
        if cfg.get(name, {}).get("enabled", False) is True:
            return name
    return "fp32"


def zero_stage(cfg: Dict[str, Any]) -> int:
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def _gradient_clipping(cfg: Dict[str, Any], recipe: Any) -> float:
    """The recipe's ``training.grad_clip`` as DeepSpeed's ``gradient_clipping`` (0.0 = off).

    Written explicitly because DeepSpeed clips at 1.0 when the key is absent: a config
    that merely omits it would otherwise train differently from one that sets 0.0.
    A config that sets another value is refused rather than silently overridden.
    """
    want = float(recipe.training.grad_clip or 0.0)
    given = cfg.get("gradient_clipping")
    if given is not None and float(given) != want:
        recipe_value = "none" if recipe.training.grad_clip is None else f"{want:g}"
        raise ConfigError("ds_config.gradient_clipping",
                          f"{given} differs from the recipe's training.grad_clip ({recipe_value})",
                          "remove gradient_clipping from the ds_config (the recipe decides) or set "
                          "training.grad_clip in the recipe to match")
    return want
