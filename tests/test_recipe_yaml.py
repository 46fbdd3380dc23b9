"""The recipe's YAML dialect and the recipe file itself: every surprise is one bounded line, never a
traceback, a hang or a silent reinterpretation (dstrain/recipe/yaml_loader.py, dstrain/recipe/io.py)."""
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from dstrain import ConfigError, load_recipe
from dstrain.recipe import loads_recipe
from dstrain.recipe.io import MAX_RECIPE_BYTES
from dstrain.recipe.yaml_loader import MAX_ALIASES, MAX_DEPTH, YamlRuleError, load_yaml

REPO = Path(__file__).resolve().parent.parent

RECIPE = """\
name: t
task: {name: digits, arch: small_resnet, arch_options: {depth: 8, width: 8}}
training: {epochs: 3, batch_size: 32}
optimizer:
  name: sgd
  lr: 0.1
  nesterov: true
pruning:
  schedule: {kind: gmp, final_sparsity: 0.9, start: 0, end: 2, frequency: 1}
"""


@contextlib.contextmanager
def _within(seconds: int):
    """Fail instead of hanging (the FIFO case would block a plain open())."""
    def _timeout(signum, frame):
        raise AssertionError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _error(text: str) -> str:
    with _within(30), pytest.raises(ConfigError) as info:
        loads_recipe(text, "r.yaml")
    message = str(info.value)
    assert "\n" not in message and len(message) < 1000, message[:2000]
    return message


def test_the_example_loads():
    recipe = loads_recipe(RECIPE, "r.yaml")
    assert recipe.training.epochs == 3 and recipe.optimizer.nesterov is True


# --- YAML 1.1's surprises -----------------------------------------------------------------


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "y", "n", "Yes", "OFF"])
def test_yaml_1_1_booleans_are_strings_and_a_bool_field_says_true_or_false(word):
    assert load_yaml(f"a: {word}") == {"a": word}
    message = _error(RECIPE.replace("nesterov: true", f"nesterov: {word}"))
    assert message.startswith("r.yaml: optimizer.nesterov: ") and f"got '{word}'; use true or false" in message


def test_true_false_and_null_keep_their_meaning():
    assert load_yaml("a: [true, True, FALSE, null, ~, '']") == {"a": [True, True, False, None, None, ""]}


@pytest.mark.parametrize("text, octal", [("0100", "the octal number 64"), ("09", "does not read it as a decimal"),
                                         ("-007", "the octal number 7")])
def test_integers_with_a_leading_zero_are_refused(text, octal):
    message = _error(RECIPE.replace("batch_size: 32", f"batch_size: {text}"))
    assert message.startswith("r.yaml: training.batch_size (at line 3): ") and "leading zero" in message
    assert octal in message and "quote it" in message


def test_zero_hex_binary_underscores_and_exponents_are_numbers():
    assert load_yaml("a: [0, -0, 0x1F, 0b101, 1_000, 1e-5, 1.0e-5, 2E3, .5, 1.]") == {
        "a": [0, 0, 31, 5, 1000, 1e-5, 1e-5, 2000.0, 0.5, 1.0]}
    assert load_yaml("a: '0100'") == {"a": "0100"}  # quoted: the text


def test_sexagesimal_and_dates_are_strings_so_an_unquoted_pattern_works():
    assert load_yaml("a: [2:4, 1:30:00, 2024-01-01, 190:20:30.15]") == {
        "a": ["2:4", "1:30:00", "2024-01-01", "190:20:30.15"]}
    text = (REPO / "recipes" / "digits_nm24.yaml").read_text()
    assert 'pattern: "2:4"' in text or "pattern: '2:4'" in text
    recipe = loads_recipe(text.replace('"2:4"', "2:4").replace("'2:4'", "2:4"), "nm.yaml")
    assert recipe.pruning.nm == (2, 4)


def test_a_number_pattern_is_refused_sensibly():
    message = _error(RECIPE + "  pattern: 124\n")
    assert "pruning.pattern: 124 is a number, not a pattern" in message and "pattern: 2:4" in message


def test_duplicate_keys_name_the_key_and_both_lines():
    text = RECIPE + "optimizer:\n  lr: 0.5\n"
    message = _error(text)
    assert message.startswith("r.yaml: optimizer: is given at lines 4 and 10"), message
    text = RECIPE.replace("  nesterov: true\n", "  nesterov: true\n  lr: 0.5\n")
    assert _error(text).startswith("r.yaml: optimizer.lr: is given at lines 6 and 8 (YAML would silently keep "
                                   "the last)")
    flow = RECIPE.replace("epochs: 3,", "epochs: 3, epochs: 4,")
    assert _error(flow).startswith("r.yaml: training.epochs: is given twice on line 3")
    quoted = RECIPE.replace("  lr: 0.1\n", "  lr: 0.1\n  'lr': 0.2\n")
    assert "optimizer.lr: is given at lines 6 and 7" in _error(quoted)


def test_merge_keys_still_override():
    text = "base: &b {epochs: 3, batch_size: 8}\ntraining:\n  <<: *b\n  epochs: 5\n"
    assert load_yaml(text)["training"] == {"epochs": 5, "batch_size": 8}


# --- resource limits ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a: " + "[" * 100_000 + "]" * 100_000, "a: " + "{b: " * 5000 + "1" + "}" * 5000,
                                  "".join(f"{' ' * i}k:\n" for i in range(2000)) + " " * 2000 + "v\n"])
def test_deep_nesting_is_refused_without_recursion_error(text):
    message = _error(text)
    assert f"nesting deeper than {MAX_DEPTH} levels" in message


def test_nesting_up_to_the_limit_loads():
    depth = MAX_DEPTH - 1
    assert load_yaml("[" * depth + "]" * depth) is not None


def test_alias_bomb_is_refused_quickly_with_a_short_message():
    lines = ["a0: &a0 [" + ", ".join(["x"] * 10) + "]"]
    for i in range(1, 8):  # 10^8 elements, expanded
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    start = time.perf_counter()
    message = _error("\n".join(lines) + "\n")
    assert time.perf_counter() - start < 5
    assert "more than 100,000 values (aliases expanded)" in message


def test_too_many_aliases_and_self_reference():
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n"
    assert f"more than {MAX_ALIASES} alias uses" in _error(text)
    assert load_yaml("a: &a 1\nb: [" + ", ".join(["*a"] * MAX_ALIASES) + "]\n")["b"] == [1] * MAX_ALIASES
    assert "used inside its own anchor" in _error("a: &x [1, *x]\n")
    assert "undefined alias" in _error("a: *nothing\n")


def test_huge_numbers_in_the_text():
    assert "a number of 5001 characters" in _error(RECIPE.replace("batch_size: 32", "batch_size: " + "9" * 5001))
    message = _error(RECIPE.replace("epochs: 3", "epochs: 1e999"))  # overflows to inf
    assert "training.epochs: inf is not a finite number" in message


@pytest.mark.parametrize("field, value", [("training.epochs", ".inf"), ("training.epochs", "-.inf"),
                                          ("training.epochs", ".nan"), ("optimizer.lr", ".inf")])
def test_non_finite_yaml_numbers_name_the_field(field, value):
    key = field.split(".")[1]
    text = RECIPE.replace("epochs: 3", f"epochs: {value}") if key == "epochs" else RECIPE.replace("lr: 0.1",
                                                                                                    f"lr: {value}")
    shown = {".inf": "inf", "-.inf": "-inf", ".nan": "nan"}[value]
    assert _error(text).startswith(f"r.yaml: {field}: {shown} is not a finite number — ")


def test_echoed_values_are_bounded():
    long_key = "k" * 1000  # YAML allows at most 1024 characters in a plain key
    assert "unknown key" in _error(RECIPE.replace("nesterov: true", f"{long_key}: 1"))
    message = _error(RECIPE.replace("name: t", "name: " + "x" * 100_000))
    assert message.startswith("r.yaml: name: 'xxx") and "..." in message and len(message) < 500
    many = "[" + ", ".join(["1"] * 5000) + "]"
    _error(RECIPE.replace("name: sgd", f"name: {many}"))
    _error(RECIPE.replace("{name: digits,", f"{{name: {many},"))
    _error(RECIPE.replace("depth: 8,", f"depth: {many},"))
    _error(RECIPE.replace("final_sparsity: 0.9", f"final_sparsity: {many}"))


def test_python_values_in_errors_are_bounded():
    from dstrain import parse_recipe

    data = load_yaml(RECIPE)
    for section, key, value in [("training", "batch_size", 10**5000), ("training", "epochs", 10**5000),
                                ("optimizer", "name", ["x"] * 10**6), ("task", "depth", 10**5000)]:
        bad = load_yaml(RECIPE)
        (bad[section] if section != "task" else bad["task"]["arch_options"])[key] = value
        with pytest.raises(ConfigError) as info:
            parse_recipe(bad, "r")
        assert len(str(info.value)) < 1000 and "\n" not in str(info.value)
    assert parse_recipe(data, "r").name == "t"


# --- the recipe file ----------------------------------------------------------------------


def _file_error(path) -> str:
    with _within(30), pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 1000, message
    return message


def test_a_folder_dev_null_and_a_fifo_are_refused_without_hanging(tmp_path):
    assert _file_error(tmp_path).startswith(f"--recipe: {tmp_path} is a folder, not a recipe file — ")
    assert _file_error("/dev/null").startswith("--recipe: /dev/null is not a regular file")
    fifo = tmp_path / "r.yaml"
    os.mkfifo(fifo)
    assert _file_error(fifo).startswith(f"--recipe: {fifo} is not a regular file (a device, FIFO or socket)")


def test_missing_null_byte_and_file_under_a_file(tmp_path):
    assert "does not exist" in _file_error(tmp_path / "nope.yaml")
    afile = tmp_path / "f"
    afile.write_text("x")
    assert "does not exist" in _file_error(afile / "r.yaml")
    assert _file_error(str(tmp_path / "r\x00.yaml")).startswith("--recipe: ") and "contains a null byte" in \
        _file_error(str(tmp_path / "r\x00.yaml"))


def test_an_unreadable_file_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    real_open = os.open

    def denied(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)  # tests run as root, who reads a chmod 000 file anyway
    assert _file_error(path) == (f"--recipe: {path} cannot be read (permission denied) — make it readable, "
                                 "or pass a copy you can read")


def test_a_read_error_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    import dstrain.recipe.io as recipe_io

    def failing(fd, *args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(recipe_io.os, "fdopen", failing)
    assert _file_error(path) == (f"--recipe: {path} cannot be read (Input/output error) — pass a YAML file, "
                                 "e.g. recipes/digits_gmp90.yaml")


def test_a_file_over_one_mib_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(RECIPE + "description: " + "x" * MAX_RECIPE_BYTES + "\n")
    assert "more than a recipe may be" in _file_error(path)
    path.write_text(RECIPE + "description: " + "x" * 1000 + "\n")
    assert load_recipe(path).description == "x" * 1000


def test_loader_errors_are_yaml_errors():
    with pytest.raises(yaml.YAMLError):
        load_yaml("a: 1\na: 2\n")
    with pytest.raises(YamlRuleError) as info:
        load_yaml("a:\n  b: 0100\n")
    assert info.value.where == "a.b (at line 2)"
