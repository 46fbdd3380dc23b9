"""Every command the README and docs/ show parses with today's command line, and names files that exist.

Why: a command in the documentation that no longer parses (a renamed flag, a moved recipe,
a deleted script) fails only the reader who copies it.  Every fenced code block of
README.md, docs/*.md and benchmarks/README.md is read; each ``dstrain <command>`` and
``launch/train.py`` line is parsed by that command's own parser (placeholders such as
``...`` or ``RUN_DIR`` are skipped, not guessed), each recipe and DeepSpeed config it names
must resolve as the command would resolve it, and each ``benchmarks/`` script it runs must
exist.  (The commands themselves run elsewhere: the default run and the tests in CI, every
shipped recipe in tests/test_shipped.py, the benchmarks in the GPU session and its dry run.)
"""
import importlib
import re
import shlex
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from dstrain import shipped
from dstrain.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDERS = re.compile(r"\.\.\.|^[A-Z][A-Z_]+$|^<|\{.*,.*\}|\$")


def _blocks(text: str) -> Iterator[str]:
    for match in re.finditer(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
        yield match.group(1)


def _commands(page: Path) -> Iterator[Tuple[str, List[str]]]:
    for block in _blocks(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            if not line or line.startswith("#"):
                continue
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError:
                continue
            yield line, tokens


def _documented() -> List[Tuple[str, str, List[str]]]:
    found = []
    for page in PAGES:
        for line, tokens in _commands(page):
            if "launch/train.py" in tokens:
                found.append((page.name, "train", tokens[tokens.index("launch/train.py") + 1:]))
            elif tokens[:1] == ["dstrain"] and len(tokens) > 1:
                found.append((page.name, tokens[1], tokens[2:]))
            else:
                for token in tokens:
                    if token.startswith("benchmarks/") and token.endswith((".py", ".sh")):
                        found.append((page.name, "script", [token]))
    return found


DOCUMENTED = _documented()


def test_the_pages_show_commands():
    kinds = {kind for _, kind, _ in DOCUMENTED}
    assert {"train", "verify", "export", "speedcheck", "script"} <= kinds, kinds
    assert len(DOCUMENTED) >= 30


@pytest.mark.parametrize("page, kind, args", DOCUMENTED, ids=[f"{p}:{k}:{' '.join(a)[:50]}" for p, k, a in DOCUMENTED])
def test_documented_command_parses_and_names_existing_files(page, kind, args, monkeypatch):
    monkeypatch.chdir(ROOT)
    if kind == "script":
        assert (ROOT / args[0]).is_file(), f"{page} runs {args[0]}, which does not exist"
        return
    assert kind in COMMANDS, f"{page} shows `dstrain {kind}`, not a dstrain command"
    if any(PLACEHOLDERS.search(a) for a in args):
        return  # a placeholder: the page shows the form, not a runnable line
    parser = importlib.import_module(f"dstrain.cli.{kind}").build_parser()
    parsed = parser.parse_args(args)
    if kind == "train":
        for recipe in parsed.recipe or []:
            assert shipped.resolve_recipe(recipe).is_file(), f"{page}: recipe {recipe}"
        assert shipped.resolve_ds_config(parsed.ds_config).is_file(), f"{page}: config {parsed.ds_config}"


def test_a_moved_recipe_or_an_unknown_flag_is_caught(monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit):
        importlib.import_module("dstrain.cli.train").build_parser().parse_args(["--no_such_flag"])
    assert not shipped.resolve_recipe("recipes/no_such_recipe.yaml").is_file()
