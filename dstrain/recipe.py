"""Declarative sparse-training recipes: YAML in, validated objects and step schedules out.

A recipe says how long to train, with which optimizer and LR schedule, when and how
much to prune, and whether to distil from a dense teacher.  Validation happens
once, at load: every mistake is reported as a :class:`~dstrain.errors.ConfigError`
naming the field (``pruning.schedule.end``) and what to do about it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError
from .masks import PrunableSelection
from .schedules import ACDC, Constant, Dense, Gradual, LRSchedule, OneShot, SparsitySchedule

Unit = Literal["epoch", "step"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_sparsity(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{value} must be in [0, 1) (e.g. 0.9 for 90% zeros)")
    return value


Sparsity = Annotated[float, AfterValidator(_check_sparsity)]
SCHEDULE_KINDS = ("dense", "constant", "oneshot", "gmp", "acdc")


class DenseSchedule(_Strict):
    kind: Literal["dense"] = "dense"


class ConstantSchedule(_Strict):
    """Prune at initialisation, keep the mask."""

    kind: Literal["constant"]
    sparsity: Sparsity



class OneShotSchedule(_Strict):
    kind: Literal["oneshot"]
    sparsity: Sparsity
    at: float = Field(ge=0)



class GradualSchedule(_Strict):
    """Cubic gradual magnitude pruning (GMP)."""

    kind: Literal["gmp"]
    initial_sparsity: Sparsity = 0.0
    final_sparsity: Sparsity
    start: float = Field(ge=0)
    end: float
    frequency: float = Field(gt=0)

    @model_validator(mode="after")
    def _check(self):
        if self.final_sparsity < self.initial_sparsity:
            raise ValueError(f"final_sparsity ({self.final_sparsity}) is below initial_sparsity "
                             f"({self.initial_sparsity}); GMP only increases sparsity")
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        return self


class ACDCSchedule(_Strict):
    """AC/DC: dense warm-up, alternating compressed/decompressed phases, final compressed phase."""

    kind: Literal["acdc"]
    sparsity: Sparsity
    warmup: float = Field(ge=0)
    compressed: float = Field(gt=0)
    decompressed: float = Field(gt=0)
    final: float = Field(gt=0)
    reset_momentum: bool = Field(default=False, description="zero the optimizer's momentum when a "
                                 "decompressed phase starts (the official AC/DC ImageNet runs do)")
    last_decompressed: float = Field(default=0, ge=0,
                                     description="length of one dense phase right before the final one; "
                                                 "0 = keep alternating up to it")



ScheduleSpec = Union[DenseSchedule, ConstantSchedule, OneShotSchedule, GradualSchedule, ACDCSchedule]


class PruningSpec(_Strict):
    criterion: Literal["magnitude"] = "magnitude"
    scope: Literal["global", "layerwise"] = "global"
    include: List[str] = Field(default_factory=list)
    exclude: List[str] = Field(default_factory=list)
    exclude_first_conv: bool = True
    exclude_classifier: bool = True
    unit: Unit = "epoch"
    schedule: ScheduleSpec = Field(default_factory=DenseSchedule, discriminator="kind")

    def selection(self) -> PrunableSelection:
        return PrunableSelection(tuple(self.include), tuple(self.exclude),
                                 self.exclude_first_conv, self.exclude_classifier)


class OptimizerSpec(_Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(gt=0)
    momentum: float = Field(default=0.9, ge=0)
    dampening: float = Field(default=0.0, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0)
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    backend: Literal["auto", "torch", "triton"] = "auto"
    no_weight_decay: List[str] = Field(default_factory=list,
                                       description="regexes over parameter names trained without weight decay "
                                                   "(e.g. bias, LayerNorm.weight for BERT)")


class LRScheduleSpec(_Strict):
    shape: Literal["cosine", "linear", "step", "constant"] = "cosine"
    unit: Unit = "epoch"
    warmup: float = Field(default=0, ge=0)
    warmup_start_factor: float = Field(default=0.0, ge=0, le=1)
    min_lr: float = Field(default=0.0, ge=0)
    milestones: List[float] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0)
    rewind_at_pruning: bool = Field(default=False, description="restart the LR shape at every mask update")
    cyclic: bool = Field(default=False, description="with rewind_at_pruning: each segment between mask updates "
                                                     "decays to min_lr by its own end (oBERT's cyclic_linear), "
                                                     "instead of by the end of training")

    @model_validator(mode="after")
    def _check(self):
        if self.cyclic and not self.rewind_at_pruning:
            raise ValueError("cyclic: true needs rewind_at_pruning: true (the cycles are the intervals between "
                             "mask updates); set both, or drop cyclic")
        return self


class TrainingSpec(_Strict):
    epochs: float = Field(gt=0)
    batch_size: int = Field(gt=0)
    seed: int = 0
    eval_every: int = Field(default=1, gt=0, description="epochs between evaluations")


class DistillationSpec(_Strict):
    teacher: str
    alpha: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=2.0, gt=0)


class Recipe(_Strict):
    name: str = "recipe"
    description: str = ""
    task: Dict[str, Any] = Field(default_factory=lambda: {"name": "digits"})
    training: TrainingSpec
    optimizer: OptimizerSpec
    lr_schedule: LRScheduleSpec = Field(default_factory=LRScheduleSpec)
    pruning: PruningSpec = Field(default_factory=PruningSpec)
    distillation: Optional[DistillationSpec] = None

    # --- conversion to step schedules -------------------------------------------------
    def total_steps(self, steps_per_epoch: int) -> int:
        return max(1, int(round(self.training.epochs * steps_per_epoch)))

    def sparsity_schedule(self, steps_per_epoch: int) -> SparsitySchedule:
        to_step = _converter(self.pruning.unit, steps_per_epoch)
        s = self.pruning.schedule
        total = self.total_steps(steps_per_epoch)
        if s.kind == "dense":
            return Dense()
        if s.kind == "constant":
            return Constant(s.sparsity)
        if s.kind == "oneshot":
            return OneShot(s.sparsity, to_step(s.at))
        if s.kind == "gmp":
            start, end = to_step(s.start), min(to_step(s.end), total - 1)
            return Gradual(s.initial_sparsity, s.final_sparsity, start, max(end, start + 1),
                           max(1, to_step(s.frequency)))
        return ACDC(s.sparsity, to_step(s.warmup), max(1, to_step(s.compressed)),
                    max(1, to_step(s.decompressed)), max(1, to_step(s.final)), total,
                    to_step(s.last_decompressed))

    def lr_schedule_for(self, steps_per_epoch: int, sparsity: SparsitySchedule) -> LRSchedule:
        spec = self.lr_schedule
        to_step = _converter(spec.unit, steps_per_epoch)
        total = self.total_steps(steps_per_epoch)
        restarts: Tuple[int, ...] = ()
        if spec.rewind_at_pruning:
            restarts = tuple(t for t in sparsity.update_steps(total) if t > 0)
        return LRSchedule(
            base_lr=self.optimizer.lr, total=total, shape=spec.shape, warmup=to_step(spec.warmup),
            warmup_start_factor=spec.warmup_start_factor, min_lr=spec.min_lr,
            milestones=tuple(to_step(m) for m in spec.milestones), gamma=spec.gamma, restarts=restarts,
            cyclic=spec.cyclic)


def _flow(value: Any) -> str:
    """One-line YAML flow style (a scalar alone would get a document-end marker)."""
    text = yaml.safe_dump([value], default_flow_style=True, width=1000, sort_keys=False).strip()
    return text[1:-1]


def dump_recipe(data: Dict[str, Any], comments: str = "") -> str:
    """Recipe dict -> compact, commented YAML (one line per section, pruning key by key).

    The generators in recipes/ use it so that hand-read recipes stay short; the result
    loads back with :func:`load_recipe`.
    """
    lines = []
    for key, value in data.items():
        if key == "pruning" and isinstance(value, dict):
            lines.append("pruning:")
            lines.extend(f"  {k}: {_flow(v)}" for k, v in value.items())
        elif isinstance(value, dict):
            lines.append(f"{key}: {_flow(value)}")
        else:
            lines.append(f"{key}: {value}" if key in ("name", "description") else f"{key}: {_flow(value)}")
    head = comments if not comments or comments.endswith("\n") else comments + "\n"
    return head + "\n".join(lines) + "\n"


def write_recipe(path: Union[str, Path], data: Dict[str, Any], comments: str = "") -> Recipe:
    """Write :func:`dump_recipe` output and prove it: it must read back equal and validate."""
    path = Path(path)
    path.write_text(dump_recipe(data, comments))
    if yaml.safe_load(path.read_text()) != json.loads(json.dumps(data)):  # tuples come back as lists
        raise ValueError(f"{path} does not round-trip through YAML")
    return load_recipe(path)


def _converter(unit: str, steps_per_epoch: int):
    if unit == "step":
        return lambda v: int(v)
    return lambda v: int(round(v * steps_per_epoch))


def _format_validation_error(err: ValidationError, source: str) -> ConfigError:
    first = err.errors()[0]
    parts = [str(p) for p in first["loc"] if not str(p).startswith(("function-", "tagged-union"))]
    # pydantic puts the union tag (e.g. "gmp") into the path; users never write it
    parts = [p for i, p in enumerate(parts) if not (p in SCHEDULE_KINDS and i and parts[i - 1] == "schedule")]
    loc = ".".join(parts)
    msg = first["msg"].removeprefix("Value error, ")
    kind = first["type"]
    if kind == "extra_forbidden":
        fix = "remove it or check its spelling against the recipe format in README.md"
        msg = "unknown key"
    elif kind == "missing":
        fix = "add it"
        msg = "required field is missing"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        fix = "set kind to one of dense, constant, oneshot, gmp, acdc"
    else:
        fix = f"got {first.get('input')!r}" if not isinstance(first.get("input"), dict) else ""
    extra = f" ({len(err.errors()) - 1} more error(s) after fixing this)" if len(err.errors()) > 1 else ""
    return ConfigError(f"{source}: {loc or '<top level>'}", msg + extra, fix)


def _check_lengths(recipe: Recipe, source: str) -> None:
    """Cross-section checks (schedule vs training length), reported against the field to change."""
    sched, epochs = recipe.pruning.schedule, recipe.training.epochs
    if recipe.pruning.unit == "epoch":
        field = {"gmp": "end", "oneshot": "at"}.get(sched.kind)  # the schedule's last event
        if field and getattr(sched, field) > epochs:
            raise ConfigError(f"{source}: pruning.schedule.{field}",
                              f"epoch {getattr(sched, field):g} is after training.epochs ({epochs:g})",
                              "shorten the schedule or train longer")
        if sched.kind == "acdc" and sched.warmup + sched.final + sched.last_decompressed > epochs:
            raise ConfigError(f"{source}: pruning.schedule",
                              f"warmup + last_decompressed + final ({sched.warmup + sched.last_decompressed + sched.final}) "
                              f"exceed training.epochs ({epochs:g})", "shorten the phases or train longer")
    if recipe.lr_schedule.unit == "epoch" and recipe.lr_schedule.warmup >= epochs:
        raise ConfigError(f"{source}: lr_schedule.warmup", f"{recipe.lr_schedule.warmup:g} epochs is not shorter than "
                          f"training.epochs ({epochs:g})", "shorten the warm-up")


def parse_recipe(data: Dict[str, Any], source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(source, "recipe must be a YAML mapping at top level", "see recipes/ for examples")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise _format_validation_error(err, source) from None
    _check_lengths(recipe, source)
    return recipe


def load_recipe(path: Union[str, Path], overrides: Optional[Dict[str, Any]] = None) -> Recipe:
    """Read and validate a YAML recipe; ``overrides`` maps dotted keys to values (CLI --set)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--recipe", f"{path} does not exist", "pass a YAML file, e.g. recipes/digits_gmp90.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(str(path), f"is not valid YAML ({err})", "fix the syntax") from None
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return parse_recipe(data, str(path))


def _set_dotted(data: Dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}", f"{part} is not a section", "override a leaf key")
    node[parts[-1]] = value
