"""``dstrain train`` and ``launch/train.py``: train a sparse network from a recipe with DeepSpeed.

    dstrain train                                            # embedded default: digits, dense vs GMP 90%
    dstrain train --recipe digits_gmp90                       # a shipped recipe by name (dstrain train --list)
    deepspeed launch/train.py --deepspeed_config launch/ds_config.json --recipe recipes/digits_gmp90.yaml
    torchrun --nproc_per_node 2 launch/train.py --recipe recipes/digits_acdc90.yaml   # AC/DC, the second method

Bad input (recipe, config, path) ends with one line naming the field and the fix, exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dstrain train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", action="append", default=None,
                   help="YAML recipe path, or a shipped recipe's name (repeat to run several in sequence); "
                        "default: digits dense + GMP 90%%")
    p.add_argument("--deepspeed_config", "--ds_config", dest="ds_config", default="ds_config",
                   help="DeepSpeed JSON config, a path or a shipped config's name (default: launch/ds_config.json; "
                        "batch sizes may be 'auto': the recipe decides)")
    p.add_argument("--output_dir", default="runs", help="runs are written to OUTPUT_DIR/<recipe name>")
    p.add_argument("--resume", default=None,
                   help="'auto' (newest checkpoint that verifies against its manifest) or a checkpoint folder")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an output folder that holds another run's checkpoints (deletes them)")
    p.add_argument("--save_every", type=int, default=0,
                   help="optimizer steps between checkpoints; N > 0 also saves at every epoch end. "
                        "0 (default): only the final checkpoint (and one where --max_steps stops)")
    p.add_argument("--keep_last", type=int, default=2,
                   help="complete checkpoints kept in OUTPUT_DIR/<recipe>/checkpoints; older ones are deleted "
                        "(default 2; 0 keeps all)")
    p.add_argument("--max_steps", type=int, default=None, help="stop after this many optimizer steps (and save); 0: evaluate only, after the "
                        "recipe's step-0 mask update (a one-shot prune), then save and export")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set training.epochs=5 (value parsed as YAML)")
    p.add_argument("--num_workers", type=int, default=0,
                   help="data-loader worker processes per rank (0: the recipe's task.num_workers, if any)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--list", action="store_true", help="print the names of the shipped recipes and exit")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def parse_overrides(items: List[str]) -> Dict[str, Any]:
    """``--set KEY=VALUE`` pairs, each value read as YAML in the recipe's own dialect
    (:mod:`dstrain.recipe.yaml_loader`: ``--set pruning.pattern=2:4`` is the text 2:4, ``yes`` is no
    boolean, ``0100`` is refused), so a value means on the command line what it means in the file."""
    import yaml

    from dstrain.errors import ConfigError
    from dstrain.messages import clip, shown
    from dstrain.recipe.yaml_loader import YamlRuleError, load_yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {clip(item, 80)}", "expected KEY=VALUE", "e.g. --set training.epochs=5")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {clip(item, 80)}", f"{shown(key, 80)} is not a dotted recipe key",
                              "e.g. --set training.epochs=5")
        try:
            out[key] = load_yaml(value)
        except YamlRuleError as err:
            field = f"--set {clip(key, 80)}" + (f".{err.path}" if err.path else "")
            raise ConfigError(field, err.problem, err.fix) from None
        except yaml.YAMLError as err:
            problem = clip(str(err).splitlines()[0], 200)
            raise ConfigError(f"--set {clip(key, 80)}", f"value {shown(value)} is not valid YAML ({problem})",
                              "quote strings and close brackets, e.g. --set 'training.epochs=5'") from None
    return out


def _print_results(results: List[Dict[str, Any]]) -> None:
    for r in results:
        score = "n/a" if r["score"] is None else f"{r['score']:.4f}"
        print(f"{r['recipe']:>24}: {r['metric']}={score} sparsity={r['sparsity']:.4f} "
              f"revived={r['revived']} steps={r['steps']} wall={r['wall_time_s']:.1f}s "
              f"train_samples/s={r['train_samples_per_s']:.1f}")
    last = results[-1]
    dense = [r for r in results[:-1] if r["sparsity"] < 0.01]
    baseline = f" dense_baseline_{dense[0]['metric']}={dense[0]['score']:.4f}" if dense and dense[0]["score"] else ""
    score = "n/a" if last["score"] is None else f"{last['score']:.4f}"
    print(f"final: val_{last['metric']}={score} global_sparsity={last['sparsity']:.4f} "
          f"wall_time={sum(r['wall_time_s'] for r in results):.1f}s{baseline}")


def main(argv: Optional[List[str]] = None) -> int:
    """Train; 0 on success, 2 on a user mistake (one line on stderr).  Callable again in one process."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from dstrain import distributed, shipped
    from dstrain.errors import ConfigError

    if args.list:
        print("\n".join(shipped.shipped_recipe_names()))
        return 0
    try:
        from dstrain.recipe import load_recipe
        from dstrain.run.dsconfig import load_ds_config
        from dstrain.run.options import TrainerOptions
        from dstrain.run.preflight import check_run_options
        from dstrain.run.trainer import SparseTrainer

        check_run_options(args.save_every, args.max_steps, args.num_workers, keep_last=args.keep_last)
        overrides = parse_overrides(args.overrides)
        recipes = [load_recipe(shipped.resolve_recipe(r), overrides)
                   for r in (args.recipe or shipped.DEFAULT_RECIPES)]
        ds_config = load_ds_config(shipped.resolve_ds_config(args.ds_config))
        results = []
        for recipe in recipes:
            options = TrainerOptions(output_dir=Path(args.output_dir) / recipe.name, ds_config=ds_config,
                                     save_every=args.save_every, keep_last=args.keep_last,
                                     resume=args.resume, max_steps=args.max_steps,
                                     progress=not args.no_progress, num_workers=args.num_workers,
                                     overwrite=args.overwrite)
            results.append(SparseTrainer(recipe, options).train())
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if distributed.is_main():
        _print_results(results)
    return 0


def console_main(argv: Optional[List[str]] = None) -> int:
    """As a process's last act: :func:`main`, then leave torch.distributed cleanly after a success."""
    status = main(argv)
    if status == 0:
        from dstrain import distributed

        distributed.shutdown()
    return status
