"""dstrain export: no import circle, compressed round trip, torchvision/hf formats, semi-structured fallback, CLI errors."""
import ast
import sys
from pathlib import Path

import pytest
import torch
from helpers import run, tiny_recipe
from torch import nn

from dstrain import export as ex
from dstrain.cli import main as cli_main
from dstrain.run.export import export_checkpoint, load_exported_model
from dstrain.sparsity.nm import is_nm, nm_mask

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "dstrain"


# --- import structure ---------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph():
    """dstrain module -> dstrain modules it imports anywhere in its file (module level or inside functions)."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            # a module's parent packages are imported before it anyway (``from . import x`` names one);
            # the root package imports the public API from everywhere
            parents = {".".join(name.split(".")[:i]) for i in range(1, len(name.split(".")))}
            deps |= {c for c in candidates if c in modules and c not in parents | {name, "dstrain"}}
        graph[name] = deps
    return graph


def _reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_export_sits_below_trainer_tasks_and_hf():
    below = _reachable(import_graph(), "dstrain.export")
    assert not below & {"dstrain.run.trainer", "dstrain.tasks", "dstrain.tasks.glue", "dstrain.hf", "dstrain.run.export"}


def test_no_import_circle_in_the_package():
    graph = import_graph()
    circles = [name for name in graph if name in _reachable(graph, name)]
    assert not circles, f"import circle through {sorted(circles)}"


# --- compressed format --------------------------------------------------------------------------
def test_bits_pack_and_unpack():
    flags = torch.rand(37) > 0.5
    packed = ex.pack_bits(flags)
    assert packed.dtype == torch.uint8 and packed.numel() == 5
    assert torch.equal(ex.unpack_bits(packed, 37), flags)


def test_compressed_state_round_trips_bit_exactly_and_is_smaller(tmp_path):
    w = torch.randn(64, 64)
    w[w.abs() < 1.6] = 0  # ~89% zeros
    w[0, 0] = -0.0
    w[0, 1] = -0.0
    state = {"w": w, "dense": torch.randn(10), "bf16": (torch.randn(32, 8) * (torch.rand(32, 8) > 0.9)).bfloat16(),
             "steps": torch.arange(4)}
    path = str(tmp_path / "m.safetensors")
    layout = ex.save_compressed(state, path)
    assert layout["w"]["layout"] == "bitmask" and layout["dense"]["layout"] == "dense"
    back = ex.load_compressed(path)
    assert list(back) == list(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    assert layout["w"]["nnz"] == int((w != 0).sum())  # -0.0 (a masked negative weight) is not stored
    assert ex.file_bytes(path) < 0.3 * ex.dense_bytes(state)


def test_a_dense_file_is_refused_by_the_compressed_loader(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.ones(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a dstrain compressed file"):
        ex.load_compressed(str(tmp_path / "x.safetensors"))


# --- semi-structured ----------------------------------------------------------------------------
def _two_four_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 3))
    with torch.no_grad():
        for m in list(model)[:3:2]:
            m.weight.mul_(nm_mask(m.weight, (2, 4)))
    return model.eval()


def test_semi_structured_falls_back_with_a_message_on_cpu():
    model = _two_four_mlp()
    x = torch.randn(5, 64)
    expected = model(x)
    lines = []
    report = ex.swap_to_semi_structured(model, "cpu", torch.float16, log=lines.append)
    assert report["swapped"] == [] and sorted(report["dense"]) == ["0", "2"]
    assert len(lines) == 1 and "not used" in lines[0] and "CUDA GPU" in lines[0]
    assert torch.equal(model(x), expected)  # untouched: still the dense fp32 model


def test_semi_structured_reasons():
    assert "CUDA GPU" in ex.semi_structured_unavailable(torch.device("cpu"), torch.float16)
    assert [n for n, _ in ex.two_four_linears(_two_four_mlp())] == ["0", "2"]


# --- exporting a trained run --------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A digits run with 2:4 masks on every conv and on the classifier (a Linear, so semi-structured applies)."""
    out = tmp_path_factory.mktemp("run")
    recipe = tiny_recipe(**{"pruning.pattern": "2:4", "pruning.schedule": {"kind": "constant", "sparsity": 0.5},
                            "pruning.exclude_classifier": False, "training.epochs": 1})
    trainer, _ = run(recipe, out, max_steps=3)
    model = trainer.engine.module.eval()
    x = torch.stack([trainer.task.build_datasets()[1][i][0] for i in range(16)])
    with torch.no_grad():
        expected = model(x)
    return out, x, expected, model


@pytest.mark.parametrize("fmt", ["compressed", "semi-structured", "torchvision"])
def test_export_round_trip_gives_identical_outputs(trained_run, tmp_path, fmt):
    run_dir, x, expected, model = trained_run
    manifest = export_checkpoint(str(run_dir), fmt, str(tmp_path / fmt), log=lambda _: None)
    lines = []
    loaded = load_exported_model(str(tmp_path / fmt), log=lines.append)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    for name, p in loaded.state_dict().items():
        assert torch.equal(p, model.state_dict()[name]), name
    if fmt != "torchvision":
        assert manifest["bytes_on_disk"] < 0.75 * manifest["dense_bytes"]  # 2:4: half the values + 1 bit each
    if fmt == "semi-structured":
        assert manifest["two_four_linears"] == ["fc"] and "not used" in lines[0]


def test_torchvision_export_loads_in_a_plain_model(trained_run, tmp_path):
    from dstrain.models import build_vision_model

    run_dir, x, expected, _ = trained_run
    export_checkpoint(str(run_dir), "torchvision", str(tmp_path), log=lambda _: None)
    plain = build_vision_model("small_resnet", 10, 1, depth=8, width=8)
    plain.load_state_dict(torch.load(tmp_path / ex.TORCHVISION_FILE))
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), expected)
    assert is_nm(plain.fc.weight.detach(), (2, 4))


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/run", "--format", "compressed", "--out", "o"], "does not exist"),
    (["RUN", "--format", "zip", "--out", "o"], "'zip' is not a format"),
    (["RUN", "--format", "hf", "--out", "o"], "hf is for transformers models"),
    (["EMPTY", "--format", "compressed", "--out", "o"], "neither a complete dstrain checkpoint"),
])
def test_cli_errors_are_one_line(trained_run, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    args = [str(trained_run[0]) if a == "RUN" else str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    args[-1] = str(tmp_path / "o")
    assert cli_main(["export", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("error: ")


def test_semi_structured_export_needs_2_4_linears(tmp_path, capsys):
    recipe = tiny_recipe(**{"training.epochs": 2})  # unstructured GMP (ends at step 20), classifier excluded
    run(recipe, tmp_path / "run", max_steps=2)
    assert cli_main(["export", str(tmp_path / "run"), "--format", "semi-structured", "--out", str(tmp_path / "o")]) == 2
    assert "exactly 2:4" in capsys.readouterr().err


def test_export_sizes_script_measures_smaller_files_at_higher_sparsity():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import export_sizes

    rows = {r["setting"]: r for r in export_sizes.measure(export_sizes.small)}
    assert abs(rows["90%"]["prunable_sparsity"] - 0.9) < 1e-6 and rows["2:4"]["prunable_sparsity"] == 0.5
    sizes = [rows[s]["compressed_bytes"] for s in ("dense", "2:4", "90%", "95%", "98%")]
    assert sizes == sorted(sizes, reverse=True)
    assert rows["dense"]["compressed_bytes"] <= rows["dense"]["dense_bytes"] * 1.01  # dense stays dense
    # 90% fp32: 10% of the values plus 1 bit per weight is about 0.135 of the prunable bytes
    assert rows["90%"]["compressed_bytes"] < 0.2 * rows["90%"]["dense_bytes"]
