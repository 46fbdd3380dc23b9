"""The recipe's sections as pydantic models: what a recipe may say, checked field by field.

A recipe says how long to train, with which optimizer and LR schedule, when and how
much to prune, and whether to distil from a dense teacher.  These models describe; the
step schedules are built from them by :mod:`dstrain.schedules.factory`, the masks and
criteria by :mod:`dstrain.sparsity`.  Loading and error messages: :mod:`dstrain.recipe.io`.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from dstrain.messages import shown
from dstrain.sparsity.criterion import CRITERIA, criterion_class
from dstrain.sparsity.nm import NMPattern, parse_pattern, pattern_sparsity

Unit = Literal["epoch", "step"]


#: Longest run: 100,000 epochs is far beyond any published schedule, and the bound keeps every
#: step count (epochs x steps per epoch) and every loop over epochs finite and reachable.
MAX_EPOCHS = 100_000
#: Largest global batch (2^24): beyond any hardware, and every per-rank split of it stays an int32.
MAX_BATCH_SIZE = 2**24
#: Most LR milestones: one per epoch of the longest run would already be absurd.
MAX_MILESTONES = 1000
#: Run folder name: one path component of safe characters (the run is written to OUTPUT_DIR/<name>).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class _Strict(BaseModel):
    """Unknown keys are errors, and types are strict: ``epochs: true`` or ``lr: "0.1"`` is refused
    instead of becoming 1 or 0.1 (an int is still a valid float).  Every number is finite:
    ``.inf`` or ``.nan`` in any field is refused (an infinite epoch count overflows the step
    arithmetic; an infinite AdamW eps silently stops training)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


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


class PruningSpec(_Strict):
    """What to prune, when, and by which criterion.

    The criterion's own settings are the section named after it (``obert: {...}``), typed
    by the criterion class (:mod:`dstrain.sparsity.criterion`); they are held here as
    :attr:`criterion_settings` and written back under that name.
    """

    criterion: str = Field(default="magnitude", description="a name of dstrain.sparsity.criterion.CRITERIA")
    criterion_settings: Optional[Any] = Field(default=None, exclude=True, repr=False)
    scope: Literal["global", "layerwise"] = "global"
    include: List[str] = Field(default_factory=list)
    exclude: List[str] = Field(default_factory=list)
    exclude_first_conv: bool = True
    exclude_classifier: bool = True
    unit: Unit = "epoch"
    schedule: ScheduleSpec = Field(default_factory=DenseSchedule, discriminator="kind")
    pattern: str = Field(default="unstructured", description='"unstructured" or "N:M" (e.g. "2:4"): N kept '
                         "in every M consecutive weights along the reduction dimension (see dstrain/sparsity/nm.py)")

    @field_validator("pattern", mode="before")
    @classmethod
    def _check_pattern(cls, value: Any) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # dstrain reads an unquoted 2:4 as text; YAML 1.1 tools read it as the base-60 number 124
            raise ValueError(f"{shown(value)} is a number, not a pattern (YAML 1.1 tools read an unquoted 2:4 "
                             "as 124); write unstructured or N:M, e.g. pattern: 2:4, and quote it (\"2:4\") "
                             "if other YAML tools read the file")
        if not isinstance(value, str):
            raise ValueError(f"{shown(value)} must be 'unstructured' or an N:M string (e.g. pattern: 2:4)")
        if len(value) > 40:  # parse_pattern's message would echo it whole
            raise ValueError(f"{shown(value)} is neither 'unstructured' nor 'N:M' (e.g. pattern: 2:4)")
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
        if not criterion_class(self.criterion).supports_nm:
            raise ValueError(f"criterion {self.criterion!r} does not choose N:M masks (pattern {self.pattern!r}); "
                             "use criterion: magnitude")
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

    @model_validator(mode="before")
    @classmethod
    def _take_criterion_section(cls, data: Any) -> Any:
        """Move the section named after the criterion into ``criterion_settings``; another criterion's is an error."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        name = data.get("criterion", "magnitude")
        for other in CRITERIA:
            if other in data and other != name:
                raise ValueError(f"{other} settings are given but criterion is not {other}; set criterion: {other} "
                                 f"or remove the {other} section")
        if isinstance(name, str) and name in data:
            data["criterion_settings"] = data.pop(name)
        return data

    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, value: str) -> str:
        criterion_class(value)  # ValueError naming the known ones
        return value

    @model_validator(mode="after")
    def _check_criterion_settings(self):
        settings_cls = criterion_class(self.criterion).Settings
        given = self.criterion_settings
        if settings_cls is None:
            if given is not None:
                raise ValueError(f"criterion {self.criterion} takes no settings; remove the {self.criterion} section")
            return self
        if not isinstance(given, settings_cls):
            if given is not None and not isinstance(given, dict):
                raise ValueError(f"{self.criterion} must be a mapping of settings, got {shown(given)}")
            try:
                self.__dict__["criterion_settings"] = settings_cls.model_validate(given or {})
            except ValidationError as err:  # reported against pruning.<criterion>.<field> (recipe.io)
                first = err.errors()[0]
                raise PydanticCustomError("criterion_settings", "{msg}", {
                    "loc": (self.criterion, *first["loc"]), "type": first["type"], "msg": first["msg"],
                    "input": first.get("input")}) from None
        return self

    @model_serializer(mode="wrap")
    def _write_criterion_section(self, handler: Any) -> Dict[str, Any]:
        data = handler(self)
        settings = self.criterion_settings
        if settings is None:
            return data
        out: Dict[str, Any] = {}
        for key, value in data.items():
            out[key] = value
            if key == "criterion":
                out[self.criterion] = settings.model_dump()
        return out

class OptimizerSpec(_Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1, description="momentum >= 1 diverges")
    dampening: float = Field(default=0.0, ge=0, le=1)
    nesterov: bool = False
    weight_decay: float = Field(default=0.0, ge=0, lt=1)
    betas: Annotated[Tuple[Beta, Beta], BeforeValidator(_list_to_tuple)] = (0.9, 0.999)
    # eps is added to sqrt(v): at 1 or more it swamps every gradient's scale (AdamW then barely moves)
    eps: float = Field(default=1e-8, gt=0, lt=1)
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
    milestones: List[Annotated[float, Field(ge=0)]] = Field(default_factory=list, max_length=MAX_MILESTONES)
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


class GuardSpec(_Strict):
    """``training.guard``: when a diverged run is stopped (:mod:`dstrain.run.guard`).

    Defaults are this project's choice: a check (one device synchronisation) every 10
    optimizer steps keeps its cost out of the step time and stops a diverged run within 10
    steps; more than a quarter of the steps skipped for overflowing gradients, over at least
    20 steps, is not a run that is training.
    """

    check_every: int = Field(default=10, ge=0, le=10**6, description="optimizer steps between checks of the loss "
                             "and the weights; 0: only before evaluations and checkpoints")
    max_skipped_fraction: float = Field(default=0.25, ge=0, le=1, description="stop when DeepSpeed skipped more than "
                                        "this fraction of the optimizer steps (gradient overflow)")
    min_steps: int = Field(default=20, ge=1, le=10**6, description="attempted steps before the skipped fraction counts")


class TrainingSpec(_Strict):
    epochs: float = Field(gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(gt=0, le=MAX_BATCH_SIZE)
    seed: int = Field(default=0, ge=0, lt=2**32, description="numpy accepts seeds in [0, 2**32)")
    eval_every: int = Field(default=1, gt=0, le=MAX_EPOCHS, description="epochs between evaluations")
    # a norm above 1e6 never clips a trainable model's gradients: write null for no clipping
    grad_clip: Optional[float] = Field(default=None, gt=0, le=1e6, description=(
        "clip the global gradient norm to this value; none: no clipping.  The recipe owns it so "
        "that every ds_config trains the same way (DeepSpeed clips at 1.0 when its config omits "
        "gradient_clipping)"))
    guard: GuardSpec = Field(default_factory=GuardSpec)


class DistillationSpec(_Strict):
    teacher: str
    alpha: float = Field(default=0.5, ge=0, le=1)
    # the KD loss is scaled by T^2 and the softened logits flatten to uniform: above 100 it is noise
    temperature: float = Field(default=2.0, gt=0, le=100)
    squarehead: float = Field(default=0.0, ge=0, le=1e6, description="weight of SquareHead feature distillation "
                              "(dstrain/distill.py; tasks with per-layer features, e.g. causal_lm); 0: off")


class Recipe(_Strict):
    name: str = Field(default="recipe", description="the run folder's name: OUTPUT_DIR/<name>")
    description: str = ""
    task: Dict[str, Any] = Field(description="required, with no default: a recipe that forgot it must not "
                                             "silently train on some default data; validated per task by "
                                             "dstrain.tasks")
    training: TrainingSpec
    optimizer: OptimizerSpec
    lr_schedule: LRScheduleSpec = Field(default_factory=LRScheduleSpec)
    pruning: PruningSpec = Field(default_factory=PruningSpec)
    distillation: Optional[DistillationSpec] = None

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, value: str) -> str:
        """The run is written to OUTPUT_DIR/<name>: ``../x``, ``/abs``, ``..`` or ``""`` would write elsewhere."""
        if not NAME_PATTERN.fullmatch(value):
            raise ValueError(f"{shown(value)} is not one folder name (the run is written to OUTPUT_DIR/<name>)")
        return value

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the whole run, once the loader's steps per epoch are known."""
        return max(1, int(round(self.training.epochs * steps_per_epoch)))
