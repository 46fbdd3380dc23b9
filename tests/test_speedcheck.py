"""dstrain speedcheck: the shapes it finds, what it says on a CPU, its JSON, totals, verdict and user errors.

Real models where they are cheap (torchvision ResNets on the meta device or at 32 px, BERT-base
shapes on meta, a tiny BertConfig, the shipped digits recipes, an export written by dstrain's
own export code); the timings themselves are never asserted, only that every number shown was
measured and that the sums and the verdict follow from them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dstrain.cli import main as dstrain_main
from dstrain.errors import ConfigError
from dstrain.speedcheck import report, runner
from dstrain.cli.speedcheck import main as speedcheck_main
from dstrain.speedcheck.model_source import resolve_model
from dstrain.speedcheck.paths import PathResult, magnitude_mask
from dstrain.speedcheck.shapes import LayerShape, ModelShapes, collect_shapes

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _short_measurements(monkeypatch):
    """A few ms per measurement: these tests check what is reported, not how precisely it is timed."""
    monkeypatch.setattr(runner, "MAX_ALLOWANCE_S", 0.002)


def _run(capsys, *args: str):
    rc = speedcheck_main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# --- shapes ------------------------------------------------------------------------------------------
def test_bert_base_has_three_encoder_shapes_twelve_layers_deep_and_the_pooler():
    shapes = collect_shapes(resolve_model("bert-base")).shapes
    found = {(s.in_ch, s.out_ch, s.rows_per_sample): (s.count, s.prunable) for s in shapes}
    assert all(s.kind == "linear" for s in shapes)
    assert found == {(768, 768, 128): (48, True),     # query, key, value, attention output x 12 layers
                     (768, 3072, 128): (12, True),    # intermediate
                     (3072, 768, 128): (12, True),    # output
                     (768, 768, 1): (1, False)}       # pooler (first token only), dstrain's "classifier"
    assert len(shapes) == 4


def test_resnet50_conv_gemm_shapes_match_torchvision():
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    expected = {(m.in_channels * m.kernel_size[0] * m.kernel_size[1], m.out_channels) for m in convs}
    collected = collect_shapes(resolve_model("resnet50"))
    assert collected.method == "forward on the meta device" and not collected.unseen
    conv_shapes = [s for s in collected.shapes if s.kind == "conv2d"]
    assert {(s.gemm_k, s.gemm_n) for s in conv_shapes} == expected
    assert sum(s.count for s in conv_shapes) == len(convs) == 53
    stem = conv_shapes[0]
    assert (stem.gemm_k, stem.rows_per_sample, stem.prunable) == (3 * 7 * 7, 112 * 112, False)
    assert next(s for s in conv_shapes if s.label == "conv 512->512 3x3 @7x7").rows(8) == 8 * 7 * 7


def test_recipe_gives_its_model_prunable_layers_sparsity_and_pattern():
    gmp = resolve_model(str(REPO / "recipes/digits_gmp90.yaml"))
    assert (gmp.sparsity, gmp.pattern, gmp.input_desc) == (0.9, "unstructured", "1x8x8 images")
    convs = [n for n, m in gmp.model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in gmp.model.named_modules() if isinstance(m, nn.Linear)]
    assert convs[0] not in gmp.prunable and linears[-1] not in gmp.prunable and set(convs[1:]) <= gmp.prunable
    nm = resolve_model(str(REPO / "recipes/digits_nm24.yaml"))
    assert (nm.sparsity, nm.pattern) == (0.5, "2:4")


def _tiny_bert_dir(path: Path) -> Path:
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100,
               max_position_embeddings=64).save_pretrained(path)
    return path


def test_glue_recipe_builds_its_classifier_from_config_with_the_recipe_s_pattern_and_sequence_length(tmp_path):
    text = (REPO / "recipes/bert/mnli_2of4_kd_10ep.yaml").read_text()
    model_dir = _tiny_bert_dir(tmp_path / "bert")
    recipe = tmp_path / "r.yaml"
    text = text.replace("/models/bert-base-uncased", str(model_dir))
    recipe.write_text(text.replace("max_length: 128", "max_length: 32"))
    spec = resolve_model(str(recipe))
    assert (spec.pattern, spec.sparsity, spec.input_desc) == ("2:4", 0.5, "32 tokens")
    assert not any(("pooler" in n or "classifier" in n) for n in spec.prunable) and len(spec.prunable) == 12
    recipe.write_text(text)
    with pytest.raises(ConfigError, match="task.max_length: 128 exceeds the model's 64 positions"):
        resolve_model(str(recipe))


def test_exported_folder_reports_the_sparsity_its_weights_really_have(tmp_path):
    from dstrain.run.manifest import write_manifest
    from dstrain.run.export import MODEL_STATES, export_checkpoint
    from dstrain.models import build_vision_model
    from dstrain.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes/digits_gmp90.yaml")
    torch.manual_seed(0)
    model = build_vision_model("small_resnet", 10, 1, **recipe.task["arch_options"])
    pruned = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][1:]
    with torch.no_grad():
        for name in pruned:
            w = model.get_submodule(name).weight
            w.mul_(magnitude_mask(w, 0.75))
    checkpoint = tmp_path / "checkpoints" / "step000000010"
    checkpoint.mkdir(parents=True)
    torch.save({"module": model.state_dict(), "recipe": recipe.model_dump()}, checkpoint / MODEL_STATES)
    write_manifest(checkpoint, {"step": 10, "tag": checkpoint.name})
    export_checkpoint(str(tmp_path), "compressed", str(tmp_path / "exported"), log=lambda _line: None)

    spec = resolve_model(str(tmp_path / "exported"))
    assert spec.source == "export" and spec.pattern == "unstructured"
    assert spec.sparsity == pytest.approx(0.75, abs=0.01) and spec.prunable == set(pruned)
    assert "75.0% overall" in spec.notes[-1]
    shapes = collect_shapes(spec).shapes
    assert sum(s.count for s in shapes if s.prunable) == len(pruned)


# --- what the command says on a CPU ------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU wording")
def test_cpu_run_of_resnet18_json_totals_and_no_2_4_number(tmp_path, capsys):
    out = tmp_path / "r18.json"
    rc, text, _ = _run(capsys, "resnet18", "--image-size", "32", "--batch", "1,2", "--warmup", "1", "--repeats", "2",
                       "--json", str(out), "--budget-s", "600")
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["schema"] == "dstrain.speedcheck/1" and data["device"]["type"] == "cpu" and data["dtype"] == "fp32"
    assert set(data) >= {"model", "batches", "sparsity", "shapes", "results", "totals", "verdict", "path_unavailable"}
    assert data["batches"] == [1, 2] and data["sparsity"] == 0.9
    assert data["path_unavailable"]["2:4"].startswith("not supported on cpu")
    assert data["path_unavailable"]["unstructured"] is None  # fp32 CSR runs on the CPU
    assert data["verdict"]["2:4"].startswith("2:4: not supported on cpu (needs a CUDA GPU")
    assert data["verdict"]["unstructured"].startswith("Unstructured 90%: ")
    assert "2:4: not supported on cpu" in text and "| 2:4 ms |" not in text
    for r in data["results"]:
        assert r["paths"]["2:4"]["ms"] is None and r["paths"]["2:4"]["status"] == "unsupported"
    shapes = data["shapes"]
    for total in data["totals"]:
        assert total["complete"] and total["forward_ms"] > 0
        rows = [r for r in data["results"] if r["batch"] == total["batch"]]
        dense = sum(shapes[r["shape"]]["count"] * r["dense_ms"] for r in rows)
        assert total["layers_dense_ms"] == pytest.approx(dense)
        csr = total["paths"]["unstructured"]
        expected, reference, left_dense = 0.0, 0.0, 0
        for r in rows:
            count, path = shapes[r["shape"]]["count"], r["paths"]["unstructured"]
            reference += count * r["reference_ms"]
            expected += count * (path["ms"] if path["status"] == "ok" else r["reference_ms"])
            left_dense += 0 if path["status"] == "ok" else count
        assert csr["layers_ms"] == pytest.approx(expected) and csr["reference_ms"] == pytest.approx(reference)
        assert csr["speedup"] == pytest.approx(reference / expected)
        assert csr["layers_left_dense"] == left_dense == 2  # the stem conv and the classifier
        assert total["paths"]["2:4"] is None
    conv = next(r for r in data["results"] if shapes[r["shape"]]["kind"] == "conv2d")
    assert conv["reference_ms"] == conv["dense_gemm_ms"]  # a conv's sparse paths are compared with its GEMM


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU wording")
def test_bf16_on_cpu_says_both_sparse_paths_are_unsupported_and_prints_no_sparse_number(tmp_path, capsys):
    rc, text, _ = _run(capsys, str(_tiny_bert_dir(tmp_path)), "--seq-len", "16", "--batch", "2", "--dtype", "bf16",
                       "--json", "-", "--warmup", "1", "--repeats", "1")
    assert rc == 0
    data = json.loads(text)
    assert [s["count"] for s in data["shapes"]] == [8, 2, 2, 1] and data["model"]["input"] == "16 tokens"
    assert "bfloat16" in data["path_unavailable"]["unstructured"]
    assert all(p["ms"] is None for r in data["results"] for p in r["paths"].values())
    assert all(t["paths"] == {"2:4": None, "unstructured": None} for t in data["totals"])


def test_a_tiny_budget_reports_not_measured_instead_of_numbers(capsys):
    rc, text, _ = _run(capsys, str(REPO / "recipes/digits_gmp90.yaml"), "--batch", "1,8", "--budget-s", "0.000001")
    assert rc == 0
    assert "| conv 32->32 3x3 @8x8 | 2 | 64x288x32 | not measured: budget |" in text
    assert ("Unstructured 90% (this model's pattern): not measured (budget ran out before any batch size "
            "was complete).") in text


def test_dstrain_cli_lists_and_dispatches_speedcheck(capsys):
    assert dstrain_main(["--help"]) == 0
    assert "dstrain speedcheck MODEL" in capsys.readouterr().out
    assert dstrain_main(["speedcheck", "no_such_model"]) == 2


@pytest.mark.parametrize("args, message", [
    (["resnet5O"], "MODEL: 'resnet5O' is not a torchvision classification model"),
    (["recipes/missing.yaml"], "MODEL: recipe recipes/missing.yaml does not exist"),
    (["resnet18", "--batch", "1,x"], "argument --batch: '1,x' is not a comma-separated list of positive integers"),
    (["resnet18", "--sparsity", "1.5"], "argument --sparsity: '1.5' must be a fraction of zeros in (0, 1)"),
    (["resnet18", "--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
    (["bert-base", "--seq-len", "1000"], "--seq-len: 1000 exceeds the model's 512 positions"),
    (["resnet18", "--json", "/nonexistent/folder/out.json"], "--json: folder /nonexistent/folder does not exist"),
])
def test_every_user_mistake_is_one_line_and_exit_2(capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(speedcheck_main(args))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


# --- totals and verdict on made-up numbers ---------------------------------------------------------------
def test_verdict_follows_the_thresholds():
    line = report.verdict_line
    assert line("2:4", [(1, 0.80, 0.9), (8, 0.93, 0.97), (64, 1.31, 1.18), (256, 1.40, 1.25)]) == (
        "2:4: pays off at batch >= 64 (layers 1.31x-1.40x, forward est. 1.18x-1.25x); "
        "costs at batch <= 8 (layers 0.80x-0.93x, forward est. 0.90x-0.97x).")
    assert line("Unstructured 90%", [(1, 0.21, None), (8, 0.45, None)]) == (
        "Unstructured 90%: costs at every batch (layers 0.21x-0.45x).")
    assert line("2:4", [(1, 1.05, 1.0), (8, 0.95, 1.0)]) == (
        "2:4: no measurable difference at every batch (layers 0.95x-1.05x, forward est. 1.00x).")
    assert line("2:4", [(1, 1.2, None), (8, 0.9, None), (64, 1.3, None)], unmeasured=[256]) == (
        "2:4: pays off at batch 1 and 64 (layers 1.20x-1.30x); costs at batch 8 (layers 0.90x); "
        "not measured at batch 256 (budget).")
    assert line("2:4", [], reason="not supported on cpu (x)") == "2:4: not supported on cpu (x)."
    assert [report.classify(x) for x in (1.051, 1.05, 0.95, 0.949)] == [
        "pays off", "no measurable difference", "no measurable difference", "costs"]
    assert report.amdahl(0.5, 2.0) == pytest.approx(1 / 0.75) and report.amdahl(1.3, 2.0) == pytest.approx(2.0)


def test_totals_count_layers_a_path_skips_at_their_dense_time():
    linear = LayerShape("linear", 64, 64, 1, prunable=True, count=3)
    conv = LayerShape("conv2d", 8, 16, 4, prunable=True, kernel=(3, 3), count=2)
    stem = LayerShape("conv2d", 3, 8, 16, prunable=False, kernel=(3, 3), count=1)
    spec = resolve_model(str(REPO / "recipes/digits_gmp90.yaml"))
    m = runner.Measurement(spec, ModelShapes([linear, conv, stem], "made up", []), [4], torch.device("cpu"),
                           torch.float32, 0.9, "test", {"2:4": "not supported on cpu (test)", "unstructured": None})
    m.forward_ms[4] = 100.0
    m.results = [
        runner.ShapeResult(0, 4, 10.0, None, {"2:4": PathResult("unsupported"), "unstructured": PathResult("ok", 5.0)}),
        runner.ShapeResult(1, 4, 20.0, 8.0, {"2:4": PathResult("unsupported"), "unstructured": PathResult("ok", 2.0)}),
        runner.ShapeResult(2, 4, 4.0, 2.0, {"2:4": PathResult("unsupported"),
                                            "unstructured": PathResult("kept dense")})]
    (total,) = report.batch_totals(m)
    assert total.layers_dense_ms == 3 * 10 + 2 * 20 + 4 and total.layers_share == pytest.approx(0.74)
    csr = total.paths["unstructured"]
    assert csr.reference_ms == 3 * 10 + 2 * 8 + 2 and csr.layers_ms == 3 * 5 + 2 * 2 + 2 and csr.dense_layers == 1
    assert csr.forward_estimate == pytest.approx(report.amdahl(0.74, 48 / 21))
    assert total.paths["2:4"] is None
    text = report.markdown(m)
    assert "| 4 | 100 | 74.00 | 74% | 21.00 (vs 48.00) | 2.29x |" in text
    assert "Unstructured 90% (this model's pattern): pays off at batch 4 (layers 2.29x" in text
    m.forward_ms[4] = 50.0  # the layers timed one by one add up to more than the forward: flagged, share taken as 1
    (total,) = report.batch_totals(m)
    assert total.paths["unstructured"].forward_estimate == pytest.approx(48 / 21)
    assert "| 148% (!) |" in report.markdown(m)
