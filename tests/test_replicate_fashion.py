"""benchmarks/replicate_fashion.py on a tiny stand-in: the shipped recipes run with data/size
overrides only, extra seeds, skipping finished runs, the report's mean ± standard error, the
per-cell summary, and the dense length curve with the rule that picks the grid's 1x."""
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest

from dstrain import load_recipe
from dstrain.testing.idx import write_fashion_stand_in

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))  # importable by name: --jobs 2 workers unpickle train_one from it
import replicate_fashion as replicate  # noqa: E402


def _final(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("fashion")
    data = write_fashion_stand_in(root / "data", n_train=64, n_test=32)
    argv = ["--out", str(root / "runs"), "--report_dir", str(root / "report"), "--only", "dense_1x",
            "--only", "gmp95_1x", "--seeds", "2", "--jobs", "2", "--set", f"task.data_dir={data}",
            "--set", "training.batch_size=16", "--set", "task.arch_options.width=4"]
    # The default --jobs 2 in fresh worker processes, with OMP_NUM_THREADS unset as on a user's shell
    # (tests/conftest.py sets it): the workers must still train on --threads threads.
    omp = os.environ.pop("OMP_NUM_THREADS", None)
    try:
        assert replicate.main(argv) == 0
    finally:
        if omp is not None:
            os.environ["OMP_NUM_THREADS"] = omp
    return root, argv


def test_grid_runs_every_seed_and_reports_mean_and_standard_error(grid):
    root, _ = grid
    runs = root / "runs"
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == [
        "fashion_dense_1x_s0", "fashion_dense_1x_s1", "fashion_gmp95_1x_s0", "fashion_gmp95_1x_s1"]
    seeds = {json.loads((runs / f"fashion_gmp95_1x_s{s}" / "recipe.json").read_text())["training"]["seed"]
             for s in (0, 1)}
    assert seeds == {0, 1}
    assert len((runs / "times.jsonl").read_text().splitlines()) == 4
    # --threads (default 1) holds through training: the trainer must not widen it to every core
    assert {json.loads(line)["torch_threads"] for line in (runs / "times.jsonl").read_text().splitlines()} == {1}
    md = (root / "report" / "report.md").read_text()
    assert (root / "report" / "report.png").stat().st_size > 10_000
    assert (root / "report" / "curves.png").stat().st_size > 10_000
    timing = (root / "report" / "timing.md").read_text()
    times = {json.loads(line)["run"]: json.loads(line) for line in (runs / "times.jsonl").read_text().splitlines()}
    dense = times["fashion_dense_1x_s1"]
    assert dense["steps"] == 4 * load_recipe(REPO / "recipes" / "fashion" / "dense_1x.yaml").training.epochs  # 64 / 16
    assert f"| fashion_dense_1x_s1 | {dense['steps']} | {dense['seconds']:.0f} |" in timing
    assert "4 of 4 runs timed" in timing
    row = next(line for line in md.splitlines() if line.startswith("| fashion_gmp95_1x | gmp 95% |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    accs = [_final(runs / f"fashion_gmp95_1x_s{s}")["val_accuracy"] * 100 for s in (0, 1)]
    mean, se = sum(accs) / 2, abs(accs[0] - accs[1]) / 2  # n = 2: SE = |a - b| / 2
    assert cells[3] == "0,1" and cells[4] == f"{mean:.2f} ± {se:.2f}"
    gaps = [_final(runs / f"fashion_gmp95_1x_s{s}")["train_loss"] - _final(runs / f"fashion_dense_1x_s{s}")["train_loss"]
            for s in (0, 1)]  # paired by seed
    gap_mean = sum(gaps) / 2
    gap_se = math.sqrt(sum((g - gap_mean) ** 2 for g in gaps) / (2 - 1) / 2)
    assert cells[8] == f"{gap_mean:+.4f} ± {gap_se:.4f}"
    assert cells[9] == ("yes" if abs(gap_mean) > 2 * gap_se else "no")
    summary = (root / "report" / "summary.md").read_text()  # the same cell, per-cell table
    row = next(line for line in summary.splitlines() if line.startswith("| gmp 95% | 1x |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "0,1" and cells[4] == f"{mean:.2f} ± {se:.2f}" and cells[7] == f"{gap_mean:+.4f} ± {gap_se:.4f}"


def test_second_call_skips_finished_runs_and_reruns_a_missing_one(grid, capsys):
    root, argv = grid
    runs = root / "runs"
    before = (runs / "fashion_dense_1x_s1" / "metrics.jsonl").stat().st_mtime_ns
    (runs / "fashion_gmp95_1x_s0" / "result.json").unlink()
    capsys.readouterr()
    assert replicate.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("reusing") == 3 and "[1/1] fashion_gmp95_1x_s0" in out
    assert (runs / "fashion_dense_1x_s1" / "metrics.jsonl").stat().st_mtime_ns == before
    assert len((runs / "times.jsonl").read_text().splitlines()) == 5
    assert (runs / "fashion_gmp95_1x_s0" / "result.json").is_file()


def test_report_only_reports_finished_runs_and_lists_the_rest(grid, tmp_path, capsys):
    root, argv = grid
    argv = [a if a != str(root / "report") else str(tmp_path / "rep") for a in argv]
    assert replicate.main(argv + ["--seeds", "3", "--report_only"]) == 0  # seed 2 never ran
    assert "[1/" not in capsys.readouterr().out
    md, timing = (tmp_path / "rep" / "report.md").read_text(), (tmp_path / "rep" / "timing.md").read_text()
    epochs = load_recipe(REPO / "recipes" / "fashion" / "gmp95_1x.yaml").training.epochs
    assert "fashion_gmp95_1x_s2" not in md and f"| fashion_gmp95_1x | gmp 95% | {epochs:g} | 0,1 |" in md
    assert "Not finished (not in the report): fashion_dense_1x_s2, fashion_gmp95_1x_s2." in timing


def test_plan_orders_whole_seeds_and_gives_every_recipe_every_seed():
    paths = sorted((REPO / "recipes" / "fashion").glob("*.yaml"))
    jobs = replicate.plan(paths, 3, replicate.CLAIM)
    assert len(paths) == 17 and len(jobs) == 3 * 17  # 7 recipes at 1x and 2x, dense/gmp98/acdc98 at 4x
    assert [s for _, s in jobs] == sorted(s for _, s in jobs)  # seed 0 complete before seed 1 starts
    seed1 = [p.name for p, s in jobs if s == 1]  # lengths together, dense first, then 98% before 95% and 90%
    assert seed1[:6] == ["dense_1x.yaml", "dense_2x.yaml", "dense_4x.yaml", "acdc98_1x.yaml", "acdc98_2x.yaml",
                         "acdc98_4x.yaml"]
    assert seed1.index("gmp98_4x.yaml") < seed1.index("acdc95_1x.yaml") < seed1.index("gmp90_1x.yaml")


def _generator(folder: str):
    spec = importlib.util.spec_from_file_location(f"gen_{folder}", REPO / "recipes" / folder / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


def test_the_longer_fashion_recipes_are_multiples_of_the_base():
    for path in sorted((REPO / "recipes" / "fashion").glob("*_[24]x.yaml")):
        recipe = load_recipe(path)
        short = load_recipe(path.with_name(path.name.rsplit("_", 1)[0] + "_1x.yaml"))
        mult = int(path.stem.rsplit("_", 1)[1][0])
        assert recipe.task["name"] == "fashion_mnist" and recipe.training.epochs == mult * short.training.epochs


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (REPO / "recipes").glob("*/generate.py")))
def test_every_generated_recipe_folder_is_exactly_what_its_generator_writes(folder):
    from dstrain.recipe import dump_recipe

    gen = _generator(folder)  # the YAML files are exactly what the generator writes, and no stale file is left
    stems = set()
    for stem, data, note in gen.grid():
        stems.add(stem)
        expected = dump_recipe(data, gen.HEADER + "\n" + note + "\n")
        assert (REPO / "recipes" / folder / f"{stem}.yaml").read_text() == expected, stem
    assert {p.stem for p in (REPO / "recipes" / folder).glob("*.yaml")} == stems  # no stale file


def test_grid_base_is_a_point_of_the_length_curve():
    """The grid's dense 1x is the length curve's recipe at that length, names aside: the curve measured it."""
    base = _generator("fashion").BASE_EPOCHS
    curve = load_recipe(REPO / "recipes" / "fashion_length" / f"dense_{base}ep.yaml").model_dump()
    grid = load_recipe(REPO / "recipes" / "fashion" / "dense_1x.yaml").model_dump()
    for recipe in (curve, grid):
        recipe.pop("name"), recipe.pop("description")
    assert curve == grid


def _points(*triples):
    """Length-curve points from (epochs, accuracy mean, standard error)."""
    from dstrain.report import Stat

    return [{"epochs": e, "accuracy": Stat(m, se, 3)} for e, m, se in triples]


def test_base_is_the_shortest_length_whose_doubling_gains_no_more_than_two_standard_errors():
    # 3 -> 6 gains 2.0 pts (2 SE = 0.28): not enough; 6 -> 12 gains 0.25 (2 SE = 0.28): 6 is the base
    points = _points((3, 0.900, 0.001), (6, 0.915, 0.001), (12, 0.9175, 0.001), (24, 0.918, 0.001))
    assert replicate.choose_base(points) == 6
    assert [d["enough"] for d in replicate.doublings(points)] == [False, True, True]
    # a doubling that loses accuracy beyond noise also says the shorter length was enough
    assert replicate.choose_base(_points((3, 0.90, 0.001), (6, 0.91, 0.001), (12, 0.90, 0.001))) == 6
    # still rising at the longest doubling: no base (the curve must go longer); one seed: no noise estimate
    assert replicate.choose_base(_points((3, 0.90, 0.001), (6, 0.91, 0.001))) is None
    assert replicate.choose_base(_points((3, 0.90, None), (6, 0.90, None))) is None


def test_length_curve_writes_the_table_the_rule_and_the_plot(tmp_path, capsys):
    data = write_fashion_stand_in(tmp_path / "data", n_train=64, n_test=32)
    argv = ["--length_curve", "--out", str(tmp_path / "runs"), "--report_dir", str(tmp_path / "report"),
            "--only", "dense_3ep", "--only", "dense_6ep", "--seeds", "2", "--jobs", "1",
            "--set", f"task.data_dir={data}", "--set", "training.batch_size=16", "--set", "task.arch_options.width=4"]
    assert replicate.main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()) == [
        "fashion_dense_3ep_s0", "fashion_dense_3ep_s1", "fashion_dense_6ep_s0", "fashion_dense_6ep_s1"]
    md = (tmp_path / "report" / "length.md").read_text()
    accs = [_final(tmp_path / "runs" / f"fashion_dense_3ep_s{s}")["val_accuracy"] * 100 for s in (0, 1)]
    assert f"| 3 | 12 | 0,1 | {sum(accs) / 2:.2f} ± {abs(accs[0] - accs[1]) / 2:.2f} |" in md
    assert "| 3 → 6 |" in md and ("Chosen 1x: **3 epochs**" in md or "No measured length qualifies" in md)
    assert (tmp_path / "report" / "length.png").stat().st_size > 10_000
    assert (tmp_path / "report" / "length_timing.md").is_file()


def test_bad_override_is_one_line(tmp_path, capsys):
    assert replicate.main(["--out", str(tmp_path), "--set", "training.batch_size"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--set" in err and "KEY=VALUE" in err
