"""``dstrain speedcheck MODEL``: times each distinct Linear/Conv2d shape of MODEL dense, 2:4 and unstructured sparse.

    dstrain speedcheck resnet50 --batch 1,8,64,256 --dtype bf16
    dstrain speedcheck bert-base --seq-len 128 --json speedcheck.json
    dstrain speedcheck recipes/digits_gmp90.yaml          # the recipe's model, prunable layers and sparsity
    dstrain speedcheck runs/exp --budget-s 60             # a folder written by dstrain export

MODEL: a torchvision classification model name, ``bert-base``, a recipe YAML, a folder written by
``dstrain export``, or a Hugging Face folder with config.json.  Markdown goes to stdout (``--json -``
puts JSON there instead).  Where a path cannot run on this device, dtype or shape, the output
says so and why; it never prints a number it did not measure.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, List, NoReturn, Optional

import torch

from dstrain.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_BATCHES = "1,8,64,256"
DEFAULT_BUDGET_S = 120.0


class _Parser(argparse.ArgumentParser):
    """argparse, but a user mistake is one line (the argument, the bad value, the fix) and exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see dstrain speedcheck --help)", file=sys.stderr)
        raise SystemExit(2)


def batch_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive integers (e.g. 1,8,64)")
    return sorted(set(values))


def _number(kind: Callable[[str], Any], accept: Callable[[Any], bool], wanted: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` if ``accept`` holds for it, else the error saying what is ``wanted``."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be {wanted}")
        return value

    return parse


sparsity_value = _number(float, lambda v: 0.0 < v < 1.0, "a fraction of zeros in (0, 1), e.g. 0.9")
positive_int = _number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a number of seconds > 0")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dstrain speedcheck", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("model", metavar="MODEL", help="torchvision name, bert-base, recipe YAML, export or HF folder")
    p.add_argument("--batch", type=batch_list, default=batch_list(DEFAULT_BATCHES),
                   help=f"batch sizes, comma-separated (default {DEFAULT_BATCHES})")
    p.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--sparsity", type=sparsity_value, default=None,
                   help="unstructured sparsity (default: the recipe's or export's, else 0.9)")
    p.add_argument("--seq-len", type=positive_int, default=None, help="tokens per sequence, text models (default 128)")
    p.add_argument("--image-size", type=positive_int, default=None,
                   help="image height = width (default: the recipe's or export's, else 224)")
    p.add_argument("--json", metavar="PATH", default=None,
                   help="also write JSON to PATH ('-': JSON to stdout instead of the tables)")
    p.add_argument("--budget-s", type=positive_float, default=DEFAULT_BUDGET_S,
                   help=f"seconds for the whole check, model building included; what is left unmeasured when it "
                        f"runs out is reported as 'not measured: budget' (default {DEFAULT_BUDGET_S:g})")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed calls before timing (default 3)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed repeats, median reported (default 5)")
    return p


def _device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", "cuda is not available on this machine", "use --device cpu or auto")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from dstrain.speedcheck.timing import Budget

    budget = Budget(args.budget_s)  # the whole command's: building the model and finding its shapes count too
    command = "dstrain speedcheck " + " ".join(sys.argv[2:] if argv is None else argv)
    try:
        if args.json not in (None, "-") and not Path(args.json).parent.is_dir():
            raise ConfigError("--json", f"folder {Path(args.json).parent} does not exist",
                              "create it or pick another path")
        device = _device(args.device)
        dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
        from dstrain.speedcheck.model_source import DEFAULT_SPARSITY, resolve_model

        spec = resolve_model(args.model, args.seq_len, args.image_size)
        from dstrain.speedcheck.shapes import collect_shapes

        shapes = collect_shapes(spec)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not shapes.shapes:
        print(f"error: MODEL: {args.model} runs no Linear or Conv2d layer in its forward — nothing to measure",
              file=sys.stderr)
        return 2
    from dstrain.speedcheck.report import markdown, to_json
    from dstrain.speedcheck.runner import run_check

    sparsity = args.sparsity or spec.sparsity or DEFAULT_SPARSITY
    measurement = run_check(spec, shapes, args.batch, device, dtype, sparsity, budget, args.warmup,
                            args.repeats, log=lambda line: print(line, file=sys.stderr, flush=True))
    data = to_json(measurement, command)
    if args.json == "-":
        print(json.dumps(data, indent=1))
        return 0
    print(markdown(measurement, command), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
