"""Mutation fuzz over every shipped recipe (found by glob, so new recipes join automatically).

Each recipe is mutated key by key: keys deleted, values replaced by wrong types, by
out-of-range values, by non-finite numbers (``.inf``, ``-.inf``, ``.nan``) and by huge ones
(``1e18``, and ``10**18`` where the value is an integer), unknown keys added, the run's
name replaced by paths (``../x``, ``/abs``, ...), and, in the YAML text itself, every key
given twice.  Every mutation must give either one clean :class:`ConfigError` line that
names the mutated key, or — only where the key has a documented default (a pydantic field
that is not required), or is ``optimizer.lr``, whose only bound is finiteness — a valid
recipe.  Validation runs in-process (``parse_recipe``, or ``loads_recipe`` for the YAML
text, plus the trainer's step-unit position check and the step schedules its controller
builds), so the tens of thousands of
mutations take seconds; tests/test_cli_train.py proves through launch/train.py that such
errors reach the user as one line.
"""
import copy
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Type

import pytest
import yaml
from pydantic import BaseModel

from dstrain import ConfigError, parse_recipe
from dstrain.models import ARCH_OPTIONS
from dstrain.recipe import (
    ACDCSchedule,
    ConstantSchedule,
    DenseSchedule,
    DistillationSpec,
    GradualSchedule,
    LRScheduleSpec,
    OneShotSchedule,
    OptimizerSpec,
    PruningSpec,
    Recipe,
    TrainingSpec,
    check_schedule_positions,
    loads_recipe,
)
from dstrain.recipe.yaml_loader import load_yaml
from dstrain.schedules.factory import build_lr_schedule, build_sparsity_schedule
from dstrain.sparsity.criterion import criterion_class

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
SECTIONS: Dict[str, Type[BaseModel]] = {"training": TrainingSpec, "optimizer": OptimizerSpec,
                                        "lr_schedule": LRScheduleSpec, "pruning": PruningSpec,
                                        "distillation": DistillationSpec}
SCHEDULES = {"dense": DenseSchedule, "constant": ConstantSchedule, "oneshot": OneShotSchedule,
             "gmp": GradualSchedule, "acdc": ACDCSchedule}
#: Fields whose valid range lies inside [0, 1] (or (0, 1]): 1.5 is out of range for each.
FRACTIONS = {"final_sparsity", "initial_sparsity", "sparsity", "momentum", "dampening", "betas", "alpha",
             "label_smoothing", "warmup_start_factor", "gamma", "weight_decay"}
#: Schedule positions: 10 million epochs or steps is after the end of any shipped recipe.
POSITIONS = {"at", "start", "end", "warmup", "final", "last_decompressed", "milestones"}
#: Fields that must be positive: 0 is out of range.
POSITIVE = {"epochs", "batch_size", "eval_every", "lr", "eps", "temperature", "image_size", "max_length",
            "synthetic_size", "width", "frequency", "compressed", "decompressed", "num_classes", "depth"}
STEPS_PER_EPOCH = 50  # for the trainer's step-unit position check
NON_FINITE = [math.inf, -math.inf, math.nan]
#: Numeric fields a huge (finite) value is valid for, and why.
HUGE_ALLOWED = {"lr": "only finite and > 0: the trainer's divergence guard stops a run whose LR is absurd"}
#: Names that are not one safe path component (the run is written to OUTPUT_DIR/<name>).
BAD_NAMES = ["../x", "/abs", "..", "", "a/b", "x\x00y"]


def _schema(data: Dict[str, Any], path: Tuple[str, ...]) -> Optional[Type[BaseModel]]:
    """The pydantic model that owns the mapping at ``path`` of the (unmutated) recipe."""
    from dstrain.tasks import _config_class

    if path == ():
        return Recipe
    if path == ("task",):
        return _config_class(data["task"]["name"], "task")
    if path == ("task", "arch_options"):
        return ARCH_OPTIONS[data["task"].get("arch", "small_resnet")]
    if path == ("pruning", "schedule"):
        return SCHEDULES[data["pruning"]["schedule"]["kind"]]
    if len(path) == 2 and path[0] == "pruning" and path[1] == data["pruning"].get("criterion"):
        return criterion_class(path[1]).Settings  # the criterion's own section
    return SECTIONS.get(path[0]) if len(path) == 1 else None


def _is_criterion_section(data: Dict[str, Any], key: Tuple[str, ...]) -> bool:
    """``pruning.<criterion>``: left out or null, the criterion's settings take their documented defaults."""
    return len(key) == 2 and key[0] == "pruning" and key[1] == data["pruning"].get("criterion")


def _has_default(data: Dict[str, Any], key: Tuple[str, ...]) -> bool:
    if _is_criterion_section(data, key):
        return True
    schema = _schema(data, key[:-1])
    field = schema.model_fields.get(key[-1]) if schema else None
    return field is not None and not field.is_required()


def _default_is_none(data: Dict[str, Any], key: Tuple[str, ...]) -> bool:
    if _is_criterion_section(data, key):
        return True
    schema = _schema(data, key[:-1])
    field = schema.model_fields.get(key[-1]) if schema else None
    return field is not None and not field.is_required() and field.default is None


def _leaves(node: Any, path: Tuple[str, ...] = ()) -> Iterator[Tuple[Tuple[str, ...], Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*path, k), v
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if not isinstance(v, (dict, list)):
                yield (*path, str(i)), v


def _set(data: Dict[str, Any], key: Tuple[str, ...], value: Any, delete: bool = False) -> None:
    node: Any = data
    for part in key[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if delete:
        del node[key[-1]]
    elif isinstance(node, list):
        node[int(key[-1])] = value
    else:
        node[key[-1]] = value


def _is_int_field(data: Dict[str, Any], key: Tuple[str, ...]) -> bool:
    schema = _schema(data, key[:-1]) if not key[-1].isdigit() else None
    field = schema.model_fields.get(key[-1]) if schema else None
    return field is not None and field.annotation in (int, Optional[int])


def _wrong_types(value: Any, int_field: bool) -> List[Any]:
    candidates = ["not-a-number", True, 0.5, 7, [1], {"k": 1}, None]
    same = {bool: (bool,), int: (int,) if int_field else (float, int), float: (float, int), str: (str,),
            list: (list,), dict: (dict,)}
    keep = same.get(type(value), (type(value),))
    # an int is a valid float, 0.5 is no wrong type for a float, a number no wrong type for a number
    return [c for c in candidates if not isinstance(c, keep) or (isinstance(c, bool) and bool not in keep)]


def _out_of_range(key: Tuple[str, ...], value: Any) -> List[Any]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return []
    name = key[-2] if key[-1].isdigit() else key[-1]
    out = [-1]  # no numeric recipe field is meaningful below 0
    if name in FRACTIONS:
        out.append(1.5)
    if name in POSITIONS:
        out.append(10_000_000)
    if name in POSITIVE:
        out.append(0)
    if name == "seed":
        out.append(2**32)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mutations(data: Dict[str, Any]) -> Iterator[Tuple[str, Tuple[str, ...], Any]]:
    for key, value in list(_leaves(data)):
        if not key[-1].isdigit():
            yield "delete", key, None
        for wrong in _wrong_types(value, _is_int_field(data, key)):
            yield "type", key, wrong
        for bad in _out_of_range(key, value):
            yield "range", key, bad
        if _is_number(value):
            for bad in NON_FINITE:
                yield "non-finite", key, bad
            yield "huge", key, 1e18
            if isinstance(value, int):
                yield "huge", key, 10**18
    for path in [()] + [k for k, v in _leaves(data) if isinstance(v, dict)]:
        yield "unknown", (*path, "bogus_key"), 1
    for name in BAD_NAMES:
        yield "name", ("name",), name


def _other(value: Any) -> Any:
    """Another value of the same kind: given first, it is what a last-one-wins reader would drop."""
    if isinstance(value, bool):
        return not value
    if _is_number(value):
        return value + 1
    if isinstance(value, str):
        return value + "_other"
    return [] if isinstance(value, list) else {} if isinstance(value, dict) else 0


def _yaml_text(data: Dict[str, Any], twice: Optional[Tuple[str, ...]] = None, path: Tuple[str, ...] = (),
               indent: int = 0) -> str:
    """``data`` as block YAML (values in JSON's flow style, which YAML reads), the key at ``twice``
    written twice: first with :func:`_other`'s value, then with its own."""
    lines = []
    for key, value in data.items():
        here = (*path, key)
        for v in ([_other(value), value] if here == twice else [value]):
            if isinstance(v, dict) and v:
                lines.append(f"{' ' * indent}{key}:\n" + _yaml_text(v, twice, here, indent + 2))
            else:
                lines.append(f"{' ' * indent}{key}: {json.dumps(v)}\n")
    return "".join(lines)


def _mapping_keys(node: Any, path: Tuple[str, ...] = ()) -> Iterator[Tuple[str, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, key)
            yield from _mapping_keys(value, (*path, key))


def _names(text: str, key: Tuple[str, ...]) -> bool:
    dotted, parent, leaf = ".".join(key), ".".join(key[:-1]), key[-1]
    if leaf.isdigit():  # a list element: naming the list is enough
        dotted, parent, leaf = parent, ".".join(key[:-2]), key[-2]
    return dotted in text or ((not parent or parent in text) and leaf in text)


def _validate(data: Any, source: str) -> None:
    recipe = parse_recipe(data, source) if isinstance(data, dict) else loads_recipe(data, source)
    check_schedule_positions(recipe, source, steps_per_epoch=STEPS_PER_EPOCH)  # what the trainer adds
    # and what the trainer's controller builds next: an accepted value must not overflow or hang there
    build_lr_schedule(recipe, STEPS_PER_EPOCH, build_sparsity_schedule(recipe, STEPS_PER_EPOCH))


def fuzz(paths: List[Path]) -> Tuple[Counter, List[str]]:
    counts: Counter = Counter()
    problems: List[str] = []
    for path in paths:
        original = load_yaml(path.read_text())
        _validate(original, str(path))  # the unmutated recipe is valid
        assert load_yaml(_yaml_text(original)) == original, f"{path}: the fuzz's YAML writer changed it"
        mutations = [(kind, key, value, None) for kind, key, value in _mutations(original)]
        mutations += [("duplicate", key, None, _yaml_text(original, twice=key)) for key in _mapping_keys(original)]
        for kind, key, value, text in mutations:
            data: Any = text
            if text is None:
                data = copy.deepcopy(original)
                _set(data, key, value, delete=kind == "delete")
            what = f"{path.relative_to(REPO)}: {kind} {'.'.join(key)}" + ("" if text else f" = {value!r}")
            counts["mutations"] += 1
            counts[kind] += 1
            try:
                _validate(data, str(path))
            except ConfigError as err:
                counts["clean errors"] += 1
                text = str(err)
                if "\n" in text or not _names(text, key):
                    problems.append(f"{what}: error does not name the key in one line: {text}")
                continue
            except Exception as err:  # noqa: BLE001 - a traceback would reach the user
                counts["tracebacks"] += 1
                problems.append(f"{what}: {type(err).__name__}: {err}")
                continue
            # accepted: only a documented default may make that right
            if kind == "delete" and _has_default(original, key):
                counts["accepted: documented default"] += 1
            elif kind == "type" and value is None and _default_is_none(original, key):
                counts["accepted: documented default"] += 1
            elif kind == "huge" and key[-1] in HUGE_ALLOWED:
                counts["accepted: huge lr (no bound beyond finite)"] += 1
            else:
                counts[f"accepted {kind}"] += 1
                problems.append(f"{what}: accepted")
    return counts, problems


def test_shipped_recipes_are_found():
    assert len(RECIPES) >= 40 and any("bert" in str(p) for p in RECIPES) and any("resnet50" in str(p) for p in RECIPES)


def test_every_mutation_of_every_shipped_recipe_is_a_clean_error_or_a_documented_default(capsys):
    start = time.perf_counter()
    counts, problems = fuzz(RECIPES)
    with capsys.disabled():
        print(f"\nrecipe fuzz: {len(RECIPES)} recipes in {time.perf_counter() - start:.1f} s, "
              + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    accepted_bad = {k: v for k, v in counts.items()
                    if k in ("accepted range", "accepted non-finite", "accepted huge", "accepted name",
                             "accepted duplicate")}
    assert counts["tracebacks"] == 0 and not accepted_bad, (accepted_bad, problems[:20])
    assert problems == [], f"{len(problems)} problems, e.g. " + "\n".join(problems[:20])
    assert counts["mutations"] > 1000 and counts["clean errors"] > 0.9 * counts["mutations"]
    for kind in ("non-finite", "huge", "name", "duplicate"):
        assert counts[kind] >= len(RECIPES), (kind, counts[kind])


@pytest.mark.parametrize("mutate", ["positions unchecked", "a traceback", "duplicates unchecked", "names unchecked"])
def test_the_fuzz_harness_can_fail(monkeypatch, mutate):
    """The fuzzer reports accepted out-of-range values, repeated keys and path names, and non-ConfigError
    exceptions (it cannot pass vacuously)."""
    import re

    import dstrain.recipe.io as recipe_module
    import dstrain.recipe.spec as spec_module
    from dstrain.recipe.yaml_loader import RecipeLoader

    if mutate == "duplicates unchecked":  # as if the loader let the last of two equal keys win, as PyYAML does
        monkeypatch.setattr(RecipeLoader, "compose_mapping_node", yaml.SafeLoader.compose_mapping_node)
    elif mutate == "names unchecked":  # as if any string were a run folder name
        monkeypatch.setattr(spec_module, "NAME_PATTERN", re.compile(".*", re.S))
    elif mutate == "positions unchecked":  # as if schedule positions were not checked against the training length
        monkeypatch.setattr(recipe_module, "check_cross_fields", lambda recipe, source: None)
        monkeypatch.setitem(globals(), "check_schedule_positions", lambda *a, **k: None)
    else:
        monkeypatch.setattr(recipe_module, "check_cross_fields",
                            lambda recipe, source: 1 / 0 if "seed" not in recipe.training.model_fields_set else None)
    counts, problems = fuzz([REPO / "recipes" / "digits_gmp90.yaml"])
    if mutate == "a traceback":
        assert counts["tracebacks"] >= 1 and any("ZeroDivisionError" in p for p in problems)
    elif mutate == "duplicates unchecked":
        assert counts["accepted duplicate"] >= 1 and any("duplicate training.epochs: accepted" in p for p in problems)
    elif mutate == "names unchecked":
        assert counts["accepted name"] == len(BAD_NAMES) and any("name = '../x': accepted" in p for p in problems)
    else:
        assert counts["accepted range"] >= 1 and any("= 10000000: accepted" in p for p in problems)
