"""The YAML dialect of recipes and ``--set`` values: plain YAML without YAML 1.1's surprises.

Why not ``yaml.safe_load``: PyYAML reads YAML 1.1, in which ``yes``/``no``/``on``/``off``
are booleans, ``0100`` is the octal number 64, ``2:4`` is the base-60 number 124, a
repeated key silently replaces the first, and nothing bounds the nesting depth (deep
input ends in ``RecursionError``) or the expansion of aliases (a small file can stand
for 10^9 elements).  :class:`RecipeLoader` is a ``yaml.SafeLoader`` with these rules:

* booleans are only ``true``/``false`` (any case style YAML 1.2 allows); ``yes``, ``no``,
  ``on``, ``off``, ``y``, ``n`` are strings, so the strict schema refuses them where a
  bool is expected;
* an integer with a leading zero (``0100``, ``09``) is refused, naming where it is;
* ``2:4`` and ``1:30:00`` are strings (no base-60 numbers), and so are dates;
* ``1e-5`` is a float, as in YAML 1.2 and JSON (YAML 1.1 wants ``1.0e-5``);
* a key given twice in one mapping is refused, naming the key and both lines;
* at most :data:`MAX_DEPTH` levels of nesting, :data:`MAX_ALIASES` alias uses,
  :data:`MAX_NODES` values with aliases expanded, and no alias inside its own anchor.

Violations raise :class:`YamlRuleError` (a ``yaml.YAMLError``) carrying where, what and
the fix, which :mod:`dstrain.recipe.io` and the CLI turn into one ``ConfigError`` line.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Set

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from dstrain.messages import clip

#: Nesting levels: a recipe needs four or five; deeper input is a mistake or an attack.
MAX_DEPTH = 64
#: Alias uses (``*name``) per document: recipes use a handful to share a section.
MAX_ALIASES = 100
#: Values (scalars, lists, mappings) per document with every alias expanded: a recipe has a
#: few hundred; the bound keeps a small file from standing for a huge one.
MAX_NODES = 100_000
#: Characters of one number: no recipe value needs more, and Python refuses ints of 4300+ digits.
MAX_NUMBER_CHARS = 100


class YamlRuleError(yaml.YAMLError):
    """A rule of the recipe dialect was broken: where (the dotted key, the line, or both), what, and the fix."""

    def __init__(self, path: Optional[str], line: Optional[int], problem: str, fix: str) -> None:
        self.path = clip(path) if path else None
        self.line, self.problem, self.fix = line, problem, fix
        super().__init__(f"{self.where}: {problem} — {fix}")

    @property
    def where(self) -> str:
        """``training.epochs (at line 5)``, ``training.epochs`` or ``line 5``."""
        if self.path and self.line:
            return f"{self.path} (at line {self.line})"
        return self.path or f"line {self.line}"


def _line(mark: Any) -> int:
    return mark.line + 1


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the rules of the module docstring (one instance per document)."""

    yaml_implicit_resolvers: Dict[Any, List[Any]] = {}

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._aliases = 0
        self._sizes: Dict[str, int] = {}  # anchor -> values it stands for, aliases inside expanded
        self._open: Set[str] = set()  # anchors whose node is still being composed
        self._path: List[str] = []

    # -- composing: depth, aliases, size, duplicate keys --------------------------------

    def _count(self, n: int, node_mark: Any) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise YamlRuleError(".".join(self._path), _line(node_mark),
                                f"the document stands for more than {MAX_NODES:,} values (aliases expanded)",
                                "a recipe has a few hundred; write the values out, or share fewer sections by alias")

    def compose_node(self, parent: Optional[Node], index: Any) -> Node:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlRuleError(".".join(self._path), _line(event.start_mark),
                                    f"more than {MAX_ALIASES} alias uses (*name)",
                                    "write the values out; a recipe needs only a few aliases")
            if event.anchor in self._open:
                raise YamlRuleError(".".join(self._path), _line(event.start_mark),
                                    f"alias *{clip(event.anchor, 60)} is used inside its own anchor "
                                    f"&{clip(event.anchor, 60)} (a value that contains itself)",
                                    "refer to an anchor only after its value is complete")
            node = super().compose_node(parent, index)  # an undefined alias is PyYAML's ComposerError
            self._count(self._sizes.get(event.anchor, 1), event.start_mark)
            return node
        event = self.peek_event()
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise YamlRuleError(None, _line(event.start_mark), f"nesting deeper than {MAX_DEPTH} levels",
                                "a recipe is a few levels deep; look for unclosed brackets or runaway indentation")
        part = None
        if isinstance(parent, MappingNode) and isinstance(index, ScalarNode):
            part = index.value
        elif isinstance(parent, SequenceNode) and isinstance(index, int):
            part = str(index)
        if part is not None:
            self._path.append(part)
        self._count(1, event.start_mark)
        before = self._nodes
        anchor = event.anchor
        if anchor is not None:
            self._open.add(anchor)
        node = super().compose_node(parent, index)
        if anchor is not None:
            self._open.discard(anchor)
            self._sizes[anchor] = self._nodes - before + 1
        node.recipe_path = ".".join(self._path)  # type: ignore[attr-defined]  # for errors at construction
        if part is not None:
            self._path.pop()
        self._depth -= 1
        return node

    def compose_mapping_node(self, anchor: Optional[str]) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        first: Dict[Any, ScalarNode] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode):
                continue
            seen = first.setdefault((key.tag, key.value), key)
            if seen is not key:
                dotted = ".".join([*self._path, key.value])
                a, b = seen.start_mark.line + 1, key.start_mark.line + 1
                lines = f"at lines {a} and {b}" if a != b else f"twice on line {a}"
                raise YamlRuleError(dotted, None, f"is given {lines} (YAML would silently keep the last)",
                                    "keep one of them")
        return node

    # -- constructing: numbers ----------------------------------------------------------

    def construct_yaml_int(self, node: ScalarNode) -> int:
        text = self.construct_scalar(node)
        path = getattr(node, "recipe_path", None)
        if len(text) > MAX_NUMBER_CHARS:
            raise YamlRuleError(path, _line(node.start_mark), f"a number of {len(text)} characters",
                                "no recipe value needs more than a few digits")
        digits = text.replace("_", "").lstrip("+-")
        if len(digits) > 1 and digits[0] == "0" and digits[1] not in "bx":
            octal = (f"YAML 1.1 reads it as the octal number {int(digits, 8)}"
                     if set(digits) <= set("01234567") else "YAML 1.1 does not read it as a decimal number")
            raise YamlRuleError(path, _line(node.start_mark), f"{clip(text, 40)} has a leading zero ({octal})",
                                f"write {digits.lstrip('0') or '0'} without the zero, or quote it if you mean text")
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: ScalarNode) -> float:
        text = self.construct_scalar(node)
        if len(text) > MAX_NUMBER_CHARS:
            raise YamlRuleError(getattr(node, "recipe_path", None), _line(node.start_mark),
                                f"a number of {len(text)} characters", "no recipe value needs more than a few digits")
        return super().construct_yaml_float(node)


RecipeLoader.add_constructor("tag:yaml.org,2002:int", RecipeLoader.construct_yaml_int)
RecipeLoader.add_constructor("tag:yaml.org,2002:float", RecipeLoader.construct_yaml_float)

RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?[0-9][0-9_]*\.(?:[eE][-+]?[0-9]+)?
                  |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))
# Leading zeros resolve as ints so that construct_yaml_int can refuse them by name.
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0b[01_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*)$"),
    list("-+0123456789"))
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])


def load_yaml(text: str) -> Any:
    """One YAML document in the recipe dialect (``None`` for an empty one).

    Raises :class:`YamlRuleError` for a broken rule, another ``yaml.YAMLError`` for a syntax error.
    """
    loader = RecipeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
