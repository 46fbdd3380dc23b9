"""Reading and writing recipes: YAML in, a validated :class:`~dstrain.recipe.spec.Recipe` out, and back.

Validation happens once, at load: every mistake is reported as a
:class:`~dstrain.errors.ConfigError` naming the field (``pruning.schedule.end``) and
what to do about it.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import yaml
from pydantic import ValidationError

from dstrain.errors import ConfigError
from dstrain.messages import clip, pydantic_fix, pydantic_problem, shown
from dstrain.recipe.checks import check_cross_fields
from dstrain.recipe.spec import SCHEDULE_KINDS, Recipe
from dstrain.recipe.yaml_loader import YamlRuleError, load_yaml

#: Largest recipe file: a recipe is a few kilobytes, and it is copied into every checkpoint.
MAX_RECIPE_BYTES = 1 << 20


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
    if load_yaml(path.read_text()) != json.loads(json.dumps(data)):  # tuples come back as lists
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


def _format_validation_error(err: ValidationError, source: str) -> ConfigError:
    first = err.errors()[0]
    if first["type"] == "criterion_settings":  # an error inside pruning.<criterion>: report it at its own place
        inner = first["ctx"]
        first = {**inner, "loc": (*first["loc"], *inner["loc"])}
    parts = [clip(str(p), 80) for p in first["loc"] if not str(p).startswith(("function-", "tagged-union"))]
    # pydantic puts the union tag (e.g. "gmp") into the path; users never write it
    parts = [p for i, p in enumerate(parts) if not (p in SCHEDULE_KINDS and i and parts[i - 1] == "schedule")]
    loc = ".".join(parts)
    msg = clip(first["msg"].removeprefix("Value error, "), 400)
    kind = first["type"]
    if kind == "extra_forbidden":
        fix = "remove it or check its spelling against the recipe format in docs/recipes.md"
        msg = "unknown key"
    elif kind == "missing":
        fix = "add it (e.g. task: {name: digits}; there is no default task)" if loc == "task" else "add it"
        msg = "required field is missing"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        fix = "set kind to one of dense, constant, oneshot, gmp, acdc"
    elif loc == "name" and kind == "value_error":
        fix = "use letters, digits, '.', '_' and '-' (at most 128, the first a letter or digit), e.g. name: my_run"
    else:
        msg = pydantic_problem(first) or msg
        value = shown(first.get("input"))
        said = kind == "value_error" and value in msg  # the check's own message already names the value
        fix = pydantic_fix(first) or ("" if said or isinstance(first.get("input"), dict) else f"got {value}")
    extra = f" ({len(err.errors()) - 1} more error(s) after fixing this)" if len(err.errors()) > 1 else ""
    return ConfigError(f"{source}: {loc or '<top level>'}", msg + extra, fix)


def parse_recipe(data: Dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a recipe given as Python data (what the YAML holds); ConfigError naming the field otherwise."""
    if not isinstance(data, dict):
        raise ConfigError(source, "recipe must be a YAML mapping at top level", "see recipes/ for examples")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise _format_validation_error(err, source) from None
    check_cross_fields(recipe, source)
    return recipe


def _read_recipe_bytes(path: Path) -> bytes:
    """The bytes of a recipe file, refusing anything that is not a regular file of at most 1 MiB.

    Why so careful: ``open()`` on a FIFO blocks until a writer comes, ``/dev/zero`` never
    ends, and a recipe is copied into every checkpoint.  The file is opened without
    blocking and checked on the open descriptor, so a path swapped after the first look
    is still caught.
    """
    show = clip(str(path))
    example = "pass a YAML file, e.g. recipes/digits_gmp90.yaml"
    if "\x00" in str(path):
        raise ConfigError("--recipe", f"{shown(str(path))} contains a null byte", example)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError("--recipe", f"{show} does not exist", example) from None
    except IsADirectoryError:
        raise ConfigError("--recipe", f"{show} is a folder, not a recipe file", example) from None
    except PermissionError:
        raise ConfigError("--recipe", f"{show} cannot be read (permission denied)",
                          "make it readable, or pass a copy you can read") from None
    except (OSError, ValueError) as err:
        raise ConfigError("--recipe", f"{show} cannot be opened ({clip(getattr(err, 'strerror', None) or str(err))})",
                          example) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError("--recipe", f"{show} is a folder, not a recipe file", example)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError("--recipe", f"{show} is not a regular file (a device, FIFO or socket)", example)
        if info.st_size > MAX_RECIPE_BYTES:
            raise ConfigError("--recipe", f"{show} is {info.st_size:,} bytes, more than a recipe may be "
                              f"({MAX_RECIPE_BYTES:,}: it is copied into every checkpoint)",
                              "pass the recipe itself, not a data file")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)
    except PermissionError:
        raise ConfigError("--recipe", f"{show} cannot be read (permission denied)",
                          "make it readable, or pass a copy you can read") from None
    except OSError as err:
        raise ConfigError("--recipe", f"{show} cannot be read ({clip(err.strerror or str(err))})", example) from None
    finally:
        os.close(fd)
    if len(data) > MAX_RECIPE_BYTES:  # grew since fstat
        raise ConfigError("--recipe", f"{show} is more than {MAX_RECIPE_BYTES:,} bytes, more than a recipe may be",
                          "pass the recipe itself, not a data file")
    return data


def loads_recipe(text: str, source: str = "recipe", overrides: Optional[Dict[str, Any]] = None) -> Recipe:
    """Validate a recipe given as YAML text (the dialect of :mod:`dstrain.recipe.yaml_loader`)."""
    try:
        data = load_yaml(text)
    except YamlRuleError as err:
        raise ConfigError(f"{source}: {err.where}", err.problem, err.fix) from None
    except yaml.YAMLError as err:
        problem = clip(" ".join(str(err).split()), 400)  # one line
        raise ConfigError(source, f"is not valid YAML ({problem})", "fix the syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(source, f"is {'empty' if data is None else 'a YAML ' + type(data).__name__}, "
                          "not a recipe mapping", "see recipes/ for examples")
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    return parse_recipe(data, source)


def load_recipe(path: Union[str, Path], overrides: Optional[Dict[str, Any]] = None) -> Recipe:
    """Read and validate a YAML recipe; ``overrides`` maps dotted keys to values (CLI --set)."""
    path = Path(path)
    raw = _read_recipe_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("--recipe", f"{clip(str(path))} is not a text file (not UTF-8)",
                          "pass a YAML recipe, e.g. recipes/digits_gmp90.yaml") from None
    return loads_recipe(text, clip(str(path)), overrides)


def _set_dotted(data: Dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {clip(key)}", f"{clip(part)} is not a section", "override a leaf key")
    node[parts[-1]] = value
