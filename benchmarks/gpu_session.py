"""Every GPU check and measurement of the kernel work, in parts that each fit one short device call.

    python3 benchmarks/gpu_session.py --out OUT --part 1|2|3|all [--dry-run] [--budget SECONDS]

(``benchmarks/gpu_session.sh`` installs the carried wheels, sets PYTHONPATH/PATH and calls
this; ``benchmarks/README.md`` has the exact device-tool invocations.)

Why a driver rather than a shell pipeline: a GPU lease is 15 minutes in all, starts
included, so the session must succeed on its first try.  Every step therefore runs as
its own subprocess with a timeout inside an overall budget, its whole output goes to a
file in OUT, a failed or timed-out step is recorded in ``steps.json``/``summary.md`` and
the session goes on to the next one, and nothing is piped through ``tail``.  The device
tool brings back at most 8 files from $OUT and silently drops the rest (part 1 once lost
half its logs that way), so every part ends by packing every file it wrote into one
archive, ``OUT/part<N>.tar.gz``: only ``summary.md``, ``steps.json`` and the archives stay
loose.

Part 1 (<= 5 min): environment, imports and paths, ``selfcheck --quick`` (every kernel
variant, one block config each), and the kernel benchmarks (host time, optimizer steps,
threshold selection; one pytest run and one JSON per file, so a timeout costs one file)
with their Markdown tables.
Part 2 (<= 5 min): ResNet50 ZeRO-2/bf16 end-to-end throughput, dense vs a fixed 90 % mask
(``recipes/bench/``), read from ``<runs>/<run>/<recipe name>/result.json``, table in
``throughput.md``; ``dstrain speedcheck`` of ResNet50 and BERT-base in bf16 (dense vs 2:4 vs
unstructured 90 % per layer shape, 30 s budget each; ``speedcheck_<model>.md`` and ``.json``);
then the sm_XX compiled-code table (``dstrain.kernels.aot``), last because part 1 has the least
slack (Triton autotunes every benchmarked variant there).
Part 3 (<= 2.5 min): the environment step, the two speedchecks and a profile of the fused AdamW step
and the threshold selection (``benchmarks/profile_gpu.py``), for a short extra call.

``--dry-run`` runs the same steps on a CPU machine with the device image's software
(pyenv Python 3.12, torch 2.11, triton 3.6, the carried wheels): kernels under the Triton
interpreter, benchmarks in their smoke mode (tiny shapes), the compiled-code table for
sm_90 (Triton's own ptxas, no GPU needed), both throughput runs through the same
``deepspeed`` launcher, config and recipes with the model input shrunk (32x32 images, a
few steps, DS_ACCELERATOR=cpu), and the speedchecks on the CPU at small inputs (where they
must say that 2:4 is not supported).  Whatever fails there would fail on the GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
DS_CONFIG = "launch/configs/1gpu_zero2_bf16.json"
RUNS = ("dense", "sparse90")
RECIPES = {r: f"recipes/bench/resnet50_synthetic_{r}.yaml" for r in RUNS}
BENCH_FILES = ("test_bench_host.py", "test_bench_optim.py", "test_bench_select.py")
DRY_RUN_OVERRIDES = ["task.image_size=32", "task.synthetic_size=64", "task.num_workers=2",
                     "training.batch_size=8"]
"""What the CPU dry run shrinks: the input, not the code path (same launcher, config, recipe)."""
SPEEDCHECK_MODELS = {"resnet50": [], "bert-base": ["--seq-len", "128"]}
SPEEDCHECK_ARGS = ["--dtype", "bf16", "--batch", "1,8,64,256", "--budget-s", "30"]
"""30 s of timing each: part 2 has about 95 s left after the throughput runs, and the aot table still follows."""
DRY_RUN_SPEEDCHECK_ARGS = ["--dtype", "bf16", "--batch", "1,2", "--image-size", "32", "--seq-len", "16",
                           "--budget-s", "30"]
"""The CPU rehearsal: same command and dtype (so both sparse paths must report "not supported"), small inputs."""
PART_BUDGET_S = {"1": 285.0, "2": 285.0, "3": 170.0}
LOOSE_FILES = ("summary.md", "steps.json")
"""What stays outside the part archives, so a device call brings back at most 2 + parts files."""
ARCHIVE = re.compile(r"^part\d+\.tar\.gz$")


class Session:
    """Runs steps into OUT, each with a timeout inside the part's budget, and records every outcome."""

    min_step_s = 10.0
    """A step that would get less time than this is recorded as skipped instead of started."""

    def __init__(self, out: Path, budget_s: float, dry_run: bool) -> None:
        self.out = out
        self.dry_run = dry_run
        self.deadline = time.monotonic() + budget_s
        self.steps: List[Dict] = []
        self.timeout_scale = 5.0 if dry_run else 1.0  # a loaded 2-core CPU, the interpreter, a one-off op build
        self.base_env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.base_env.pop("TRITON_INTERPRET", None)
        if dry_run:
            self.base_env["DS_ACCELERATOR"] = "cpu"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def record(self, name: str, status: str, seconds: float, output: str, command: str = "", note: str = "") -> None:
        self.steps.append(dict(name=name, status=status, seconds=round(seconds, 1), output=output,
                               command=command, note=note))
        print(f"[{status:>7}] {name} ({seconds:.1f} s){': ' + note if note else ''}", flush=True)
        (self.out / "steps.json").write_text(json.dumps(self.steps, indent=1))

    def run(self, name: str, cmd: List[str], timeout_s: float, env: Optional[Dict[str, str]] = None,
            output: Optional[str] = None) -> bool:
        """Run ``cmd`` from the repo root, stdout+stderr into OUT/<output or name>.txt; True if it exited 0."""
        output = output or f"{name}.txt"
        timeout = min(timeout_s * self.timeout_scale, self.remaining() - 5)
        command = " ".join(cmd)
        if timeout < self.min_step_s:
            self.record(name, "skipped", 0.0, "", command, "part budget used up")
            return False
        full_env = dict(self.base_env, **(env or {}))
        start = time.monotonic()
        with open(self.out / output, "w") as log:
            log.write(f"$ {command}\n")
            log.flush()
            try:
                proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_tree(proc)
                proc.wait()
                self.record(name, "timeout", time.monotonic() - start, output, command, f"killed after {timeout:.0f} s")
                return False
            except OSError as exc:  # e.g. the executable is missing
                log.write(f"{exc}\n")
                self.record(name, "failed", time.monotonic() - start, output, command, str(exc))
                return False
        status = "ok" if rc == 0 else "failed"
        self.record(name, status, time.monotonic() - start, output, command, "" if rc == 0 else f"exit {rc}")
        return rc == 0

    def summary(self) -> str:
        lines = ["| step | status | seconds | output | note |", "|---|---|---:|---|---|"]
        lines += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['output']} | {s['note']} |" for s in self.steps]
        return "\n".join(lines)


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill a timed-out step and everything it started.

    The process group is not enough: deepspeed's launcher starts its workers, and those
    start compilers (torch extensions), in groups of their own.
    """
    try:
        import psutil

        family = psutil.Process(proc.pid).children(recursive=True)
    except Exception:  # noqa: BLE001 - psutil missing or the process already gone
        family = []
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    for child in family:
        try:
            child.kill()
        except Exception:  # noqa: BLE001 - already exited
            pass


# --- steps ---------------------------------------------------------------------------
PY = sys.executable


def check_environment(s: Session) -> None:
    """Versions, GPU, and that every module and file the session uses is there (fails fast, costs seconds)."""
    code = r'''
import importlib, json, os, pkgutil, shutil, sys
from pathlib import Path
import torch, triton
OPTIONAL = {"datasets"}
info = {"python": sys.version.split()[0], "torch": torch.__version__, "triton": triton.__version__,
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "capability": "%d%d" % torch.cuda.get_device_capability() if torch.cuda.is_available() else None,
        "deepspeed_launcher": shutil.which("deepspeed")}
for mod in ("deepspeed", "pydantic", "pydantic_core", "hjson", "torchvision", "transformers", "yaml",
            "pytest_benchmark", "numpy"):
    m = importlib.import_module(mod)
    info[mod] = getattr(m, "__version__", "?")
failed, optional = [], []
for pkg in ("dstrain",):
    root = importlib.import_module(pkg)
    for mi in pkgutil.walk_packages(root.__path__, pkg + "."):
        try:
            importlib.import_module(mi.name)
        except ModuleNotFoundError as exc:  # GLUE needs `datasets`, absent from the device image: not used here
            (optional if exc.name in OPTIONAL else failed).append(f"{mi.name}: {exc}")
        except Exception as exc:
            failed.append(f"{mi.name}: {type(exc).__name__}: {exc}")
info["import_failures"] = failed
info["not_importable_without_optional_packages"] = optional
paths = ["launch/train.py", "launch/configs/1gpu_zero2_bf16.json", "benchmarks/report.py",
         "recipes/bench/resnet50_synthetic_dense.yaml", "recipes/bench/resnet50_synthetic_sparse90.yaml"]
info["missing_paths"] = [p for p in paths if not Path(p).exists()]
from dstrain import load_recipe
info["recipes"] = {p: load_recipe(p).name for p in paths if p.endswith(".yaml")}
print(json.dumps(info, indent=1))
bad = failed or info["missing_paths"] or not info["deepspeed_launcher"]
if info["deepspeed"] == "0.19.8":
    print("deepspeed 0.19.8 crashes on channels-last parameters (_broadcast_model); carry 0.19.7")
    bad = True
sys.exit(1 if bad else 0)
'''
    s.run("environment", [PY, "-c", code], 90)
    if not s.dry_run and shutil.which("nvidia-smi"):
        s.run("nvidia-smi", ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                             "--format=csv"], 20)


def _gpu_arch() -> str:
    """The sm_XX of this machine's GPU (90 for the dry run: the device image's H100/H200)."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return str(10 * major + minor)
    except Exception:  # noqa: BLE001 - recorded by the environment step
        pass
    return "90"


def part1(s: Session) -> None:
    check_environment(s)
    interp = {"TRITON_INTERPRET": "1"} if s.dry_run else {}
    s.run("selfcheck", [PY, "-m", "dstrain.cli.selfcheck", "--quick"], 150, env=interp)
    bench_env = {"DSTRAIN_BENCH_SMOKE": "1"} if s.dry_run else {}
    for name in BENCH_FILES:
        stem = name[len("test_"):-len(".py")]
        json_path = s.out / f"{stem}.json"
        if s.run(stem, [PY, "-m", "pytest", f"benchmarks/{name}", "--benchmark-only", "-q", "-p", "no:cacheprovider",
                        f"--benchmark-json={json_path}"], 200, env=bench_env) or json_path.exists():
            s.run(f"{stem}_report", [PY, "benchmarks/report.py", str(json_path)], 30, output=f"{stem}.md")


def _recipe_name(path: str) -> str:
    import yaml

    return yaml.safe_load((REPO / path).read_text())["name"]


def part2(s: Session, runs_dir: Path) -> None:
    if not s.steps:
        check_environment(s)
    launcher = shutil.which("deepspeed") or "deepspeed"
    results: Dict[str, Dict] = {}
    for run in RUNS:
        cmd = [launcher, "--num_gpus", "1", "launch/train.py", "--no_progress", "--deepspeed_config", DS_CONFIG,
               "--recipe", RECIPES[run], "--output_dir", str(runs_dir / run)]
        if s.dry_run:
            cmd += ["--max_steps", "3"] + [x for o in DRY_RUN_OVERRIDES for x in ("--set", o)]
        s.run(f"throughput_{run}", cmd, 200 if run == RUNS[0] else 240)
        result = collect_run(s.out, runs_dir, run)
        if result is not None:
            results[run] = result
    start = time.monotonic()
    try:
        table = throughput_table(results)
        (s.out / "throughput.md").write_text(table + "\n")
        print(table)
        s.record("throughput_summary", "ok" if len(results) == len(RUNS) else "failed", time.monotonic() - start,
                 "throughput.md", note="" if len(results) == len(RUNS) else f"result.json missing for "
                 f"{[r for r in RUNS if r not in results]} under {runs_dir}/<run>/<recipe name>/")
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        s.record("throughput_summary", "failed", time.monotonic() - start, "", note=f"{type(exc).__name__}: {exc}")
    speedchecks(s)
    # last: the compiled-code table is information, the throughput runs are the measurement
    s.run("aot", [PY, "-m", "dstrain.kernels.aot", "--arch", _gpu_arch()], 120, output="aot.md")


def speedcheck_command(out: Path, model: str, dry_run: bool) -> List[str]:
    """``dstrain speedcheck`` of ``model`` with its JSON in OUT (its Markdown is the step's output file)."""
    extra = DRY_RUN_SPEEDCHECK_ARGS if dry_run else SPEEDCHECK_ARGS + SPEEDCHECK_MODELS[model]
    return [PY, "-m", "dstrain.cli", "speedcheck", model, *extra, "--json", str(out / f"speedcheck_{model}.json")]


def speedchecks(s: Session) -> None:
    for model in SPEEDCHECK_MODELS:
        s.run(f"speedcheck_{model}", speedcheck_command(s.out, model, s.dry_run), 60, output=f"speedcheck_{model}.md")


def part3(s: Session) -> None:
    check_environment(s)
    speedchecks(s)
    profile(s)


def profile(s: Session) -> None:
    """Where the time of a fused step and of the threshold goes (benchmarks/profile_gpu.py): kernels vs launches."""
    env = {"DSTRAIN_BENCH_SMOKE": "1", "TRITON_INTERPRET": "1"} if s.dry_run else {}
    s.run("profile", [PY, "benchmarks/profile_gpu.py", "--out", str(s.out)], 90, env=env, output="profile.txt")


def collect_run(out: Path, runs_dir: Path, run: str) -> Optional[Dict]:
    """Copy a run's result.json and metrics.jsonl flat into ``out``; return the parsed result (None if absent).

    A run writes ``<output_dir>/<recipe name>/``, and the output dir is ``runs_dir/<run>``.
    """
    run_dir = runs_dir / run / _recipe_name(RECIPES[run])
    for src, dst in (("result.json", f"throughput_{run}_result.json"),
                     ("metrics.jsonl", f"throughput_{run}_metrics.jsonl")):
        if (run_dir / src).exists():
            shutil.copy(run_dir / src, out / dst)
    path = run_dir / "result.json"
    return json.loads(path.read_text()) if path.exists() else None


def throughput_table(results: Dict[str, Dict]) -> str:
    """Markdown: images/s after warm-up and over all steps, and the sparse run's time overhead per image."""
    lines = ["| run | images/s after 20 warm-up steps | images/s, all steps | steps |", "|---|---:|---:|---:|"]
    for run, res in results.items():
        after = res.get("train_samples_per_s_after_warmup")
        lines.append(f"| {run} | {'n/a' if after is None else f'{after:.1f}'} | {res['train_samples_per_s']:.1f} | "
                     f"{res.get('steps', res.get('global_step', '?'))} |")
    rates = {r: results[r].get("train_samples_per_s_after_warmup") for r in results}
    if all(rates.get(r) for r in RUNS):
        lines.append(f"\nsparse overhead: {100 * (rates['dense'] / rates['sparse90'] - 1):+.2f}% time per image "
                     "(after warm-up)")
    return "\n".join(lines)


def pack_part(s: Session, part: str) -> None:
    """Move every file in OUT except :data:`LOOSE_FILES` and earlier archives into ``OUT/part<part>.tar.gz``.

    Recorded as a step; if packing fails, the files stay loose (some may then not come back).
    """
    start = time.monotonic()
    archive = s.out / f"part{part}.tar.gz"
    members = sorted(p for p in s.out.iterdir() if p.name not in LOOSE_FILES and not ARCHIVE.match(p.name))
    try:
        partial = archive.with_name(archive.name + ".partial")
        with tarfile.open(partial, "w:gz") as tar:
            for path in members:
                tar.add(path, arcname=path.name)
        os.replace(partial, archive)
    except OSError as exc:
        s.record(f"pack_part{part}", "failed", time.monotonic() - start, "", note=f"{exc}; files left loose")
        return
    for path in members:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    s.record(f"pack_part{part}", "ok", time.monotonic() - start, archive.name,
             note=f"{len(members)} files: {', '.join(p.name for p in members)}")


def _part2(s: Session, runs_dir: Optional[str]) -> None:
    import tempfile

    part2(s, Path(runs_dir) if runs_dir else Path(tempfile.mkdtemp(prefix="dstrain_runs_")))


PARTS = {"1": lambda s, runs_dir: part1(s), "2": _part2, "3": lambda s, runs_dir: part3(s)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for every result file (packed per part at the end)")
    parser.add_argument("--part", choices=("1", "2", "3", "all"), default="1", help="all: parts 1 and 2")
    parser.add_argument("--dry-run", action="store_true", help="CPU rehearsal in the device image's versions")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole call (default: "
                             + ", ".join(f"part {p} {b:.0f}" for p, b in PART_BUDGET_S.items()) + ")")
    parser.add_argument("--runs_dir", default=None, help="where the throughput runs write (default: a temp folder)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    parts = ["1", "2"] if args.part == "all" else [args.part]
    budget = args.budget if args.budget is not None else sum(PART_BUDGET_S[p] for p in parts)
    s = Session(out, budget, args.dry_run)
    print(f"gpu session part {args.part}{' (dry run)' if args.dry_run else ''}: out={out}, budget {budget:.0f} s",
          flush=True)
    for part in parts:
        PARTS[part](s, args.runs_dir)
        pack_part(s, part)
    archives = ", ".join(f"part{p}.tar.gz" for p in parts)
    summary = (s.summary() + f"\n\nEvery step's output file is inside {archives} (`tar xzf`); "
               "only summary.md, steps.json and the archives are left loose.")
    (out / "summary.md").write_text(summary + "\n")
    print(summary)
    return 0 if all(st["status"] == "ok" for st in s.steps) else 1


if __name__ == "__main__":
    sys.exit(main())
