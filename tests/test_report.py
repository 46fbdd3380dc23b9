"""The under-training report: table and plot from real runs, dense-reference matching, bad input."""
import json

import pytest
from helpers import run, tiny_recipe

from dstrain import cli, report
from dstrain.cli import report as cli_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A dense and a GMP run of the tiny digits recipe, one epoch each (11 steps)."""
    root = tmp_path_factory.mktemp("runs")
    run(tiny_recipe(**{"name": "tiny_dense", "training.epochs": 1, "pruning.schedule": {"kind": "dense"}}),
        root / "tiny_dense")
    run(tiny_recipe(**{"name": "tiny_gmp", "training.epochs": 1, "pruning.schedule.end": 11}), root / "tiny_gmp")
    return root


def _rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _table(md):
    """Data rows of the first Markdown table as lists of cells."""
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    return header, [dict(zip(header, r)) for r in rows if len(r) == len(header)]


def test_report_from_two_real_runs(two_runs, tmp_path, capsys):
    assert cli_report.main([str(two_runs / "tiny_dense"), str(two_runs / "tiny_gmp"), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert md in capsys.readouterr().out
    header, rows = _table(md)
    assert header[:3] == ["Run", "Recipe", "Epochs"] and "Train-loss gap" in header
    by_run = {r["Run"]: r for r in rows[:2]}
    assert set(by_run) == {"tiny_dense", "tiny_gmp"}
    dense, gmp = _rows(two_runs / "tiny_dense")[-1], _rows(two_runs / "tiny_gmp")[-1]
    assert by_run["tiny_gmp"]["Dense ref"] == "tiny_dense"
    assert float(by_run["tiny_gmp"]["Train-loss gap"]) == pytest.approx(gmp["train_loss"] - dense["train_loss"], abs=1e-4)
    assert by_run["tiny_dense"]["Train-loss gap"] == "0 (ref)"
    assert float(by_run["tiny_gmp"]["Final sparsity"]) == pytest.approx(gmp["sparsity"], abs=1e-4)
    assert float(by_run["tiny_gmp"]["Final val accuracy (%)"]) == pytest.approx(gmp["val_accuracy"] * 100, abs=0.01)
    assert float(by_run["tiny_gmp"]["Mean mask change"]) == pytest.approx(gmp["mask_change_rate"], abs=1e-4)
    assert by_run["tiny_dense"]["Mean mask change"] == "–"
    png = (tmp_path / "report.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    import matplotlib.image

    h, w, _ = matplotlib.image.imread(tmp_path / "report.png").shape
    assert w > 2 * h  # three panels side by side


def test_cli_report_accepts_a_folder_of_runs(two_runs, tmp_path):
    assert cli.main(["report", str(two_runs), "--out", str(tmp_path / "r")]) == 0
    _, rows = _table((tmp_path / "r" / "report.md").read_text())
    assert [r["Run"] for r in rows] == ["tiny_dense", "tiny_gmp"]


def test_cli_report_writes_into_the_first_run_dir_by_default(two_runs, tmp_path):
    """`dstrain report RUN_DIR` (the README form) works without --out."""
    import shutil

    runs = shutil.copytree(two_runs, tmp_path / "runs")
    assert cli.main(["report", str(runs)]) == 0
    assert (runs / "report.md").is_file() and (runs / "report.png").is_file()
    _, rows = _table((runs / "report.md").read_text())
    assert [r["Run"] for r in rows] == ["tiny_dense", "tiny_gmp"]


def _fake_run(root, name, epochs, kind, losses, sparsity=0.0):
    path = root / name
    path.mkdir(parents=True)
    schedule = {"kind": kind} if kind == "dense" else {"kind": kind, "final_sparsity": sparsity}
    (path / "recipe.json").write_text(json.dumps({"name": name, "training": {"epochs": epochs},
                                                  "pruning": {"schedule": schedule}}))
    with open(path / "metrics.jsonl", "w") as f:
        for e, loss in enumerate(losses, 1):
            f.write(json.dumps({"epoch": e, "train_loss": loss, "val_accuracy": 0.5 + 0.01 * e,
                                "sparsity": sparsity if kind != "dense" else 0.0, "mask_change_rate": None}) + "\n")
    (path / "result.json").write_text(json.dumps({"metric": "accuracy", "stopped_early": False}))
    return path


def test_each_run_is_compared_with_the_dense_run_of_its_length(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs, "a_long_baseline", 4, "dense", [1.0, 0.5, 0.3, 0.2])
    _fake_run(runs, "b_dense_short", 2, "dense", [1.0, 0.6])
    _fake_run(runs, "c_gmp_short", 2, "gmp", [1.2, 0.9], 0.9)
    _fake_run(runs, "d_gmp_long", 4, "gmp", [1.2, 0.8, 0.5, 0.35], 0.9)
    _fake_run(runs, "e_gmp_mid", 3, "gmp", [1.2, 0.8, 0.6], 0.9)
    loaded = report.load_runs([runs])
    refs = {r.label: report.dense_reference(r, loaded).label for r in loaded}
    assert refs == {"a_long_baseline": "a_long_baseline", "b_dense_short": "b_dense_short",
                    "c_gmp_short": "b_dense_short", "d_gmp_long": "a_long_baseline",
                    "e_gmp_mid": "b_dense_short"}  # 3 epochs: 2 and 4 tie; the run named "dense" wins
    rows = {r["run"]: r for r in report.summary_rows(loaded)}
    assert rows["c_gmp_short"]["train_loss_gap"] == pytest.approx(0.3)
    assert rows["d_gmp_long"]["train_loss_gap"] == pytest.approx(0.15)
    assert rows["d_gmp_long"]["late_drop"] == pytest.approx(0.15)  # last 25% of 4 epochs: 0.5 -> 0.35
    (effect,) = [e for e in report.length_effects(loaded) if e["method"] == "gmp 90%"]
    assert (effect["short"].label, effect["long"].label) == ("c_gmp_short", "d_gmp_long")
    assert effect["gap_short"] == pytest.approx(0.3) and effect["gap_long"] == pytest.approx(0.15)
    md = report.markdown(loaded)
    assert "| gmp 90% | 2 → 4 | +2.00 | -0.5500 | +0.3000 → +0.1500 |" in md


def test_named_dense_run_is_preferred_at_equal_length(tmp_path):
    _fake_run(tmp_path, "a_pruned_to_zero", 2, "gmp", [1.0, 0.7], 0.0)  # no pruning in effect: dense too
    _fake_run(tmp_path, "b_dense", 2, "dense", [1.0, 0.6])
    _fake_run(tmp_path, "c_gmp", 2, "gmp", [1.0, 0.9], 0.9)
    loaded = report.load_runs([tmp_path])
    assert report.dense_reference(loaded[2], loaded).label == "b_dense"


@pytest.mark.parametrize("damage,words", [
    ("nothing", "does not exist"),
    ("metrics", "has no metrics.jsonl"),
    ("recipe", "has no recipe.json"),
    ("empty", "is empty: the run stopped before its first evaluation"),
    ("garbled", "metrics.jsonl:2: is not valid JSON"),
])
def test_missing_or_broken_files_give_one_clear_error(tmp_path, capsys, damage, words):
    path = _fake_run(tmp_path, "r", 2, "dense", [1.0, 0.5])
    target = path
    if damage == "nothing":
        target = tmp_path / "no_such_run"
    elif damage == "metrics":
        (path / "metrics.jsonl").unlink()
    elif damage == "recipe":
        (path / "recipe.json").unlink()
    elif damage == "empty":
        (path / "metrics.jsonl").write_text("")
    elif damage == "garbled":
        (path / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 1.0}\n{"epoch": 2, \n')
    assert cli_report.main([str(target), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err
    assert not (tmp_path / "out" / "report.md").exists()


def test_unfinished_run_is_flagged(tmp_path):
    path = _fake_run(tmp_path, "r", 2, "dense", [1.0, 0.5])
    (path / "result.json").unlink()
    md = report.markdown(report.load_runs([path]))
    assert "| r (unfinished) |" in md and "Unfinished (no result.json or stopped early): r." in md


def test_cli_rejects_unknown_command(capsys):
    assert cli.main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err
