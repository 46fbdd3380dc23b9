"""``dstrain selfcheck [--quick]``: the fused kernels against the PyTorch reference on this machine's GPU.

Exit status: 0 every case agrees; 1 a case disagrees (the kernels are wrong here); 3 the
check cannot run here (no CUDA GPU and no ``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import torch


def build_parser() -> argparse.ArgumentParser:
    from dstrain.optim import selfcheck

    parser = argparse.ArgumentParser(prog="dstrain selfcheck", description=selfcheck.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="every kernel variant once, one block config each (under a minute on a GPU)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from dstrain.optim import selfcheck

    args = build_parser().parse_args(argv)
    if args.quick:
        runtime = sys.modules.get("dstrain.kernels._runtime")
        if runtime is None:
            os.environ.setdefault("DSTRAIN_AUTOTUNE", "0")  # read when the kernels are first imported
        elif runtime.AUTOTUNE and not runtime.INTERPRET:
            print("note: kernels were imported before --quick could turn autotuning off; autotuning stays on")
    device = selfcheck._device()
    if device is None:
        print("selfcheck cannot run here: it needs a CUDA GPU for the compiled kernels, or "
              "TRITON_INTERPRET=1 (set before starting Python) to run them interpreted on the CPU",
              file=sys.stderr)
        return selfcheck.EXIT_CANNOT_RUN
    import triton

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
    print(f"fused kernels vs PyTorch reference on {name}, torch {torch.__version__}, triton {triton.__version__}"
          + (" (quick)" if args.quick else ""))
    results = selfcheck.run_all(device, selfcheck.print_result, quick=args.quick)
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)}/{len(results)} cases agree "
          f"({sum(r.bitwise for r in results)} bitwise); tolerance rtol={selfcheck.RTOL}, atol={selfcheck.ATOL}")
    return selfcheck.EXIT_MISMATCH if failed else selfcheck.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
