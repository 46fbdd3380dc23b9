"""The recipes and DeepSpeed configs that ship with dstrain, found by name or by path.

Why a package: the repository keeps them at the top level (``recipes/``, ``launch/``),
where people read and edit them, and setup.py maps those folders into the installed
package as ``dstrain.shipped.recipes`` and ``dstrain.shipped.launch``.  So an installed
dstrain (editable or not) can run ``dstrain train --recipe digits_gmp90`` from any
folder; a source checkout on ``sys.path`` without an install reads the folders directly.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List, Union

from dstrain.errors import ConfigError

_CHECKOUT = Path(__file__).resolve().parents[2]
DEFAULT_RECIPES = ("digits_dense", "digits_gmp90")
"""The embedded default run: the same small ResNet on digits, dense and pruned to 90 %."""
DEFAULT_DS_CONFIG = "ds_config"


def _root(package: str, folder: str) -> Path:
    """The installed data folder (a namespace package: no __init__.py), else the checkout's own folder."""
    try:
        spec = importlib.util.find_spec(f"dstrain.shipped.{package}")
    except ModuleNotFoundError:
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else _CHECKOUT / folder  # a source checkout on sys.path


def recipes_dir() -> Path:
    return _root("recipes", "recipes")


def launch_dir() -> Path:
    return _root("launch", "launch")


def shipped_recipe_names() -> List[str]:
    """Every shipped recipe as the name ``--recipe`` takes: ``digits_gmp90``, ``bert/mnli_dense_3ep``."""
    root = recipes_dir()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def _by_name(name: str, root: Path, suffix: str, what: str, flag: str) -> Path:
    exact = root / f"{name}{suffix}"
    if exact.is_file():
        return exact
    matches = sorted(root.rglob(f"{Path(name).name}{suffix}"))
    if len(matches) == 1 and "/" not in name:
        return matches[0]
    if matches:
        listed = ", ".join(p.relative_to(root).with_suffix("").as_posix() for p in matches)
        raise ConfigError(flag, f"{name!r} names several shipped {what}s ({listed})", "name one with its folder")
    raise ConfigError(flag, f"{name!r} is neither a file nor a shipped {what}",
                      "pass a path, or one of the names `dstrain train --list` prints")


def _shipped_copy(path: Path, folder: str, root: Path) -> Path:
    """``recipes/x.yaml`` (as the docs write it) from any folder: the shipped file if no such file is here."""
    if not path.exists() and not path.is_absolute() and path.parts[:1] == (folder,):
        shipped = root.joinpath(*path.parts[1:])
        if shipped.is_file():
            return shipped
    return path


def resolve_recipe(value: Union[str, Path]) -> Path:
    """A recipe path as given, else a shipped recipe by name (``digits_gmp90``, ``bert/mnli_dense_3ep``)."""
    path = Path(value)
    if path.exists() or path.suffix in (".yaml", ".yml") or str(value).startswith((".", "/", "~")):
        return _shipped_copy(path, "recipes", recipes_dir())  # a path: load_recipe says what is wrong with it
    return _by_name(str(value), recipes_dir(), ".yaml", "recipe", "--recipe")


def resolve_ds_config(value: Union[str, Path]) -> Path:
    """A ds_config path as given, else a shipped config by name (``ds_config``, ``configs/cpu_gloo``)."""
    path = Path(value)
    if path.exists() or path.suffix == ".json" or str(value).startswith((".", "/", "~")):
        return _shipped_copy(path, "launch", launch_dir())
    return _by_name(str(value), launch_dir(), ".json", "DeepSpeed config", "--deepspeed_config")
