"""benchmarks/replicate_fashion.py on a tiny stand-in: the shipped recipes run with data/size
overrides only, extra seeds, skipping finished runs, and the report's mean ± standard error."""
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
    timing = (root / "report" / "timing.md").read_text()
    seconds = {json.loads(line)["run"]: json.loads(line)["seconds"] for line in (runs / "times.jsonl").read_text().splitlines()}
    assert f"| fashion_dense_1x_s1 | 8 | {seconds['fashion_dense_1x_s1']:.0f} |" in timing and "4 of 4 runs timed" in timing
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
    assert "fashion_gmp95_1x_s2" not in md and "| fashion_gmp95_1x | gmp 95% | 2 | 0,1 |" in md
    assert "Not finished (not in the report): fashion_dense_1x_s2, fashion_gmp95_1x_s2." in timing


def test_plan_orders_whole_seeds_and_gives_extra_seeds_to_claim_recipes():
    paths = sorted((REPO / "recipes" / "fashion").glob("*.yaml"))
    jobs = replicate.plan(paths, 3, replicate.CLAIM)
    assert len(paths) == 14 and len(jobs) == 14 + 2 * 10  # dense/gmp95/gmp98/acdc95/acdc98 at 1x and 3x
    assert [s for _, s in jobs] == sorted(s for _, s in jobs)  # seed 0 complete before seed 1 starts
    seed1 = [p.name for p, s in jobs if s == 1]  # pairs together, dense first, then 98% before 95%
    assert seed1[:4] == ["dense_1x.yaml", "dense_3x.yaml", "acdc98_1x.yaml", "acdc98_3x.yaml"]
    assert seed1.index("gmp98_3x.yaml") < seed1.index("acdc95_1x.yaml")
    assert {p.name for p, s in jobs if s == 2} == {f"{m}_{n}x.yaml" for m in ("dense", "gmp95", "gmp98", "acdc95",
                                                                             "acdc98") for n in (1, 3)}


def test_shipped_recipes_are_the_generated_grid():
    for path in sorted((REPO / "recipes" / "fashion").glob("*_3x.yaml")):
        recipe = load_recipe(path)
        short = load_recipe(path.with_name(path.name.replace("_3x", "_1x")))
        assert recipe.task["name"] == "fashion_mnist" and recipe.training.epochs == 3 * short.training.epochs
    spec = importlib.util.spec_from_file_location("gen", REPO / "recipes" / "fashion" / "generate.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    from dstrain.recipe import dump_recipe

    for stem, data, note in gen.grid():  # the YAML files are exactly what the generator writes
        assert (REPO / "recipes" / "fashion" / f"{stem}.yaml").read_text() == dump_recipe(data, gen.HEADER + "\n" + note + "\n")


def test_bad_override_is_one_line(tmp_path, capsys):
    assert replicate.main(["--out", str(tmp_path), "--set", "training.batch_size"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--set" in err and "KEY=VALUE" in err
