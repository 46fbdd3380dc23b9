"""Declarative sparse-training recipes: YAML in, validated objects and step schedules out.

A recipe says how long to train, with which optimizer and LR schedule, when and how
much to prune, and whether to distil from a dense teacher.  Validation happens
once, at load: every mistake is reported as a :class:`~dstrain.errors.ConfigError`
naming the field (``pruning.schedule.end``) and what to do about it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Dict, Iterable, List, Literal, Optional, Tuple, Union

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError,
                      field_validator, model_validator)

from .errors import ConfigError
from .masks import PrunableSelection
from .nm import NMPattern, parse_pattern, pattern_sparsity
from .schedules import ACDC, Constant, Dense, Gradual, LRSchedule, OneShot, SparsitySchedule

Unit = Literal["epoch", "step"]


class _Strict(BaseModel):
    """Unknown keys are errors, and types are strict: ``epochs: true`` or ``lr: "0.1"`` is refused
    instead of becoming 1 or 0.1 (an int is still a valid float)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


def _list_to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value  # YAML/JSON have lists, not tuples


def _check_beta(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{value} must be in [0, 1) (e.g. 0.9, 0.999)")
    return value


Beta = Annotated[float, AfterValidator(_check_beta)]


def _check_sparsity(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{value} must be in [0, 1) (e.g. 0.9 for 90% zeros)")
    return value


Sparsity = Annotated[float, AfterValidator(_check_sparsity)]
SCHEDULE_KINDS = ("dense", "constant", "oneshot", "gmp", "acdc")
NM_SCHEDULE_KINDS = ("constant", "oneshot", "acdc")  # the ones whose masks are all at one sparsity


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


class ObertSpec(_Strict):
    """Settings of ``criterion: obert`` (defaults: the oBERT MNLI/QQP recipes, see README)."""

    num_grads: int = Field(default=1024, ge=1, description="mini-batch gradients per mask update (m)")
    block_size: int = Field(default=50, ge=1, description="weights per diagonal Fisher block (B)")
    damping: float = Field(default=1e-7, gt=0, description="lambda in F = lambda I + (1/m) sum g g^T")
    weight_update: bool = Field(default=True, description="apply the OBS correction to the surviving weights")
    grad_batch_size: Optional[int] = Field(default=None, ge=1, description="samples per gradient over all "
                                           "ranks; default training.batch_size")


class PruningSpec(_Strict):
    criterion: Literal["magnitude", "obert"] = "magnitude"
    obert: Optional[ObertSpec] = None
    scope: Literal["global", "layerwise"] = "global"
    include: List[str] = Field(default_factory=list)
    exclude: List[str] = Field(default_factory=list)
    exclude_first_conv: bool = True
    exclude_classifier: bool = True
    unit: Unit = "epoch"
    schedule: ScheduleSpec = Field(default_factory=DenseSchedule, discriminator="kind")
    pattern: str = Field(default="unstructured", description='"unstructured" or "N:M" (e.g. "2:4"): N kept '
                         "in every M consecutive weights along the reduction dimension (see dstrain/nm.py)")

    @field_validator("pattern", mode="before")
    @classmethod
    def _check_pattern(cls, value: Any) -> str:
        if isinstance(value, int):  # YAML 1.1 reads an unquoted 2:4 as the base-60 number 124
            raise ValueError(f"{value} is a number: YAML reads an unquoted N:M as base 60; quote it, "
                             'e.g. pattern: "2:4" (or --set pruning.pattern=\'"2:4"\')')
        if not isinstance(value, str):
            raise ValueError(f"{value!r} must be 'unstructured' or a quoted \"N:M\" string")
        parse_pattern(value)
        return value

    @property
    def nm(self) -> Optional[NMPattern]:
        """(N, M) for an N:M pattern, None for unstructured."""
        return parse_pattern(self.pattern)

    @model_validator(mode="after")
    def _check_nm_schedule(self):
        nm = self.nm
        if nm is None:
            return self
        if self.criterion != "magnitude":  # N:M groups are ranked by |w| (dstrain/nm.py takes other scores, unwired)
            raise ValueError(f"pattern {self.pattern!r} ranks weights by magnitude; criterion {self.criterion!r} "
                             "is not wired to N:M masks; use criterion: magnitude")
        kind = self.schedule.kind
        if kind not in NM_SCHEDULE_KINDS:
            why = ("a dense schedule never prunes" if kind == "dense" else
                   "a cubic sparsity ramp has no N:M mask at its intermediate levels")
            raise ValueError(f"pattern {self.pattern!r} cannot run schedule kind {kind!r} ({why}); "
                             f"use kind {', '.join(NM_SCHEDULE_KINDS)}")
        want = pattern_sparsity(nm)
        if abs(self.schedule.sparsity - want) > 1e-9:
            raise ValueError(f"schedule.sparsity {self.schedule.sparsity:g} does not match pattern "
                             f"{self.pattern!r}, which zeroes {want:g} of every layer it prunes; "
                             f"set pruning.schedule.sparsity={want:g}")
        return self

    @model_validator(mode="after")
    def _check_obert(self):
        if self.obert is not None and self.criterion != "obert":
            raise ValueError("obert settings are given but criterion is not obert; set criterion: obert "
                             "or remove the obert section")
        if self.criterion == "obert" and self.obert is None:
            self.__dict__["obert"] = ObertSpec()  # the defaults (no re-validation loop)
        return self

    def selection(self) -> PrunableSelection:
        return PrunableSelection(tuple(self.include), tuple(self.exclude),
                                 self.exclude_first_conv, self.exclude_classifier)


class OptimizerSpec(_Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1, description="momentum >= 1 diverges")
    dampening: float = Field(default=0.0, ge=0, le=1)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0, lt=1)
    betas: Annotated[Tuple[Beta, Beta], BeforeValidator(_list_to_tuple)] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    backend: Literal["auto", "torch", "triton", "cpu"] = "auto"
    no_weight_decay: List[str] = Field(default_factory=list,
                                       description="regexes over parameter names trained without weight decay "
                                                   "(e.g. bias, LayerNorm.weight for BERT)")


class LRScheduleSpec(_Strict):
    shape: Literal["cosine", "linear", "step", "constant"] = "cosine"
    unit: Unit = "epoch"
    warmup: float = Field(default=0, ge=0)
    warmup_start_factor: float = Field(default=0.0, ge=0, le=1)
    min_lr: float = Field(default=0.0, ge=0)
    milestones: List[Annotated[float, Field(ge=0)]] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0, le=1, description="LR factor at each milestone")
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
    seed: int = Field(default=0, ge=0, lt=2**32, description="numpy accepts seeds in [0, 2**32)")
    eval_every: int = Field(default=1, gt=0, description="epochs between evaluations")
    grad_clip: Optional[float] = Field(default=None, gt=0, description=(
        "clip the global gradient norm to this value; none: no clipping.  The recipe owns it so "
        "that every ds_config trains the same way (DeepSpeed clips at 1.0 when its config omits "
        "gradient_clipping)"))


class DistillationSpec(_Strict):
    teacher: str
    alpha: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=2.0, gt=0)


class Recipe(_Strict):
    name: str = "recipe"
    description: str = ""
    task: Dict[str, Any] = Field(description="required: no silent default (a recipe without it used to "
                                             "train on digits); validated per task by dstrain.tasks")
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


def write_recipe_grid(folder: Union[str, Path], header: str,
                      grid: Iterable[Tuple[str, Dict[str, Any], str]]) -> List[Path]:
    """Write a generator's recipes (stem, data, note) into ``folder`` with :func:`write_recipe`.

    One writer for every recipes/*/generate.py, so each shipped recipe is proved to
    round-trip and validate in the same way; returns the written paths.
    """
    written = []
    for stem, data, note in grid:
        path = Path(folder) / f"{stem}.yaml"
        write_recipe(path, data, header + "\n" + note + "\n")
        written.append(path)
    return written


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
        fix = "add it (e.g. task: {name: digits}; there is no default task)" if loc == "task" else "add it"
        msg = "required field is missing"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        fix = "set kind to one of dense, constant, oneshot, gmp, acdc"
    else:
        fix = f"got {first.get('input')!r}" if not isinstance(first.get("input"), dict) else ""
    extra = f" ({len(err.errors()) - 1} more error(s) after fixing this)" if len(err.errors()) > 1 else ""
    return ConfigError(f"{source}: {loc or '<top level>'}", msg + extra, fix)


def schedule_positions(recipe: "Recipe") -> List[Tuple[str, float, str, bool]]:
    """(field, position, unit, must_be_before_end) of every scheduled event of the recipe.

    An event at or after the end never happens (a one-shot prune at step 100000 of a
    44-step run left the model dense with exit 0), so starts, one-shot points, LR
    warm-up and milestones must lie strictly inside training; ends may equal it.
    """
    s, unit = recipe.pruning.schedule, recipe.pruning.unit
    out: List[Tuple[str, float, str, bool]] = []
    if s.kind == "oneshot":
        out.append(("pruning.schedule.at", s.at, unit, True))
    elif s.kind == "gmp":
        out += [("pruning.schedule.start", s.start, unit, True), ("pruning.schedule.end", s.end, unit, False)]
    elif s.kind == "acdc":
        out.append(("pruning.schedule", s.warmup + s.last_decompressed + s.final, unit, False))
    lr = recipe.lr_schedule
    if lr.warmup:
        out.append(("lr_schedule.warmup", lr.warmup, lr.unit, True))
    out += [(f"lr_schedule.milestones.{i}", m, lr.unit, True) for i, m in enumerate(lr.milestones)]
    return out


def check_schedule_positions(recipe: "Recipe", source: str = "recipe",
                             steps_per_epoch: Optional[int] = None) -> None:
    """Every event inside the training, in both units: epoch units at load time, step units once
    the trainer knows the steps per epoch (``steps_per_epoch``)."""
    epochs = recipe.training.epochs
    for field, pos, unit, before_end in schedule_positions(recipe):
        if unit == "epoch":
            limit, end = epochs, f"training.epochs ({epochs:g})"
        elif steps_per_epoch:
            limit = recipe.total_steps(steps_per_epoch)
            end = f"the end of training ({limit} steps: training.epochs {epochs:g} x {steps_per_epoch} steps per epoch)"
        else:
            continue
        if pos < limit or (pos == limit and not before_end):
            continue
        if field == "pruning.schedule":
            problem = f"warmup + last_decompressed + final ({pos:g} {unit}s) exceed {end}"
        elif field == "lr_schedule.warmup" and unit == "epoch":
            problem = f"{pos:g} epochs is not shorter than {end}"
        else:
            problem = f"{unit} {pos:g} is {'at or ' if before_end and pos == limit else ''}after {end}"
        raise ConfigError(f"{source}: {field}", problem,
                          "shorten the schedule or train longer" + (" (pruning.unit / lr_schedule.unit: "
                                                                    "step counts optimizer steps)" if unit == "step" else ""))


def _check_cross_fields(recipe: "Recipe", source: str) -> None:
    """Checks across sections, reported against the field to change."""
    check_schedule_positions(recipe, source)
    if recipe.lr_schedule.min_lr > recipe.optimizer.lr:
        raise ConfigError(f"{source}: lr_schedule.min_lr", f"{recipe.lr_schedule.min_lr:g} is above optimizer.lr "
                          f"({recipe.optimizer.lr:g}): the LR would rise during training",
                          "set min_lr <= lr (e.g. lr / 10, or 0)")
    from .tasks import check_task_config  # the task section is validated by its task's own schema

    check_task_config(recipe.task, f"{source}: task")


def parse_recipe(data: Dict[str, Any], source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(source, "recipe must be a YAML mapping at top level", "see recipes/ for examples")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise _format_validation_error(err, source) from None
    _check_cross_fields(recipe, source)
    return recipe


def load_recipe(path: Union[str, Path], overrides: Optional[Dict[str, Any]] = None) -> Recipe:
    """Read and validate a YAML recipe; ``overrides`` maps dotted keys to values (CLI --set)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--recipe", f"{path} does not exist", "pass a YAML file, e.g. recipes/digits_gmp90.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("--recipe", f"{path} is not a text file (not UTF-8)",
                          "pass a YAML recipe, e.g. recipes/digits_gmp90.yaml") from None
    except yaml.YAMLError as err:
        problem = " ".join(str(err).split())  # one line
        raise ConfigError(str(path), f"is not valid YAML ({problem})", "fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), f"is {'empty' if data is None else 'a YAML ' + type(data).__name__}, "
                          "not a recipe mapping", "see recipes/ for examples")
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
