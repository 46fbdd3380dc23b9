"""Compile the kernels for a CUDA architecture without a GPU, and summarise what they compiled to.

Why this exists: CI and most development machines have no GPU, and the Triton
interpreter checks only the numerics.  It cannot tell whether a kernel *lowers*
(an ``int64 -> pointer`` cast, ``tl.histogram``, ``tl.div_rn`` on a given Triton
release), nor whether the memory accesses came out as the wide vector loads a
bandwidth-bound optimizer step needs.  Triton ships ``ptxas``, so the full
pipeline (Triton IR -> LLVM -> PTX -> cubin) runs on a CPU-only machine for any
target such as ``sm_90``.  This module does that for each kernel variant and
counts the global loads and stores by width in the PTX, plus the registers and
spills ``cuobjdump`` reports for the cubin.  It measures no speed.

Must run with ``TRITON_INTERPRET`` unset (the interpreter replaces ``triton.jit``
at import); ``python -m dstrain.kernels.aot`` prints the table, ``tests/test_kernels_compile.py``
runs it in a subprocess.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import _runtime

_TABLE_ARGS = {"work_tid", "work_start", "numels", "p_tab", "g_tab", "b_tab", "m_tab", "v_tab", "mask_tab", "x_tab"}
_ARG_TYPES: Dict[str, str] = {
    **{name: "*i64" for name in _TABLE_ARGS},
    "neg_ss_tab": "*fp32", "bc2_tab": "*fp32", "hist": "*i32", "prefix": "i32", "tune_key": "i32",
}
"""Runtime (non-constexpr) argument types; every other runtime argument is an fp32 scalar."""

_GLOBAL_ACCESS = re.compile(r"\b(ld|st)\.global((?:\.[a-z0-9_:]+)*)")
_VECTOR = re.compile(r"\.v(\d+)")
_ELEMENT = re.compile(r"\.[bfsu](\d+)\b")


@dataclass(frozen=True)
class KernelVariant:
    """One specialisation of a kernel: its name in the table, and the constexprs that pick it."""

    label: str
    kernel: str  # "sgd" | "adamw" | "hist"
    constexprs: Mapping[str, object]
    num_warps: int = 8


@dataclass
class CompiledStats:
    """What one variant compiled to (bit widths of global accesses, and resources)."""

    variant: KernelVariant
    loads: Dict[int, int] = field(default_factory=dict)  # access width in bits -> count in the PTX
    stores: Dict[int, int] = field(default_factory=dict)
    registers: Optional[int] = None
    spill_bytes: Optional[int] = None

    def count(self, kind: str, bits: int) -> int:
        return (self.loads if kind == "ld" else self.stores).get(bits, 0)


def _jit_function(kernel: str) -> triton.runtime.JITFunction:
    if _runtime.INTERPRET:
        raise RuntimeError("dstrain.kernels.aot compiles real GPU code: run it with TRITON_INTERPRET unset "
                           "(the interpreter replaces triton.jit when dstrain.kernels is imported)")
    from . import masked_adamw, masked_sgd, select
    fn = {"sgd": masked_sgd._kernel, "adamw": masked_adamw._kernel, "hist": select._radix_hist_kernel}[kernel]
    return fn.fn if isinstance(fn, triton.runtime.Autotuner) else fn  # the autotuner wraps the JITFunction


def access_widths(ptx: str) -> Dict[str, Dict[int, int]]:
    """Global loads/stores in ``ptx`` counted by width in bits (``ld.global.v4.b32`` -> 128)."""
    widths: Dict[str, Dict[int, int]] = {"ld": collections.Counter(), "st": collections.Counter()}
    for op, modifiers in _GLOBAL_ACCESS.findall(ptx):
        element = _ELEMENT.findall(modifiers)
        if not element:
            continue
        vector = _VECTOR.search(modifiers)
        widths[op][int(element[-1]) * (int(vector.group(1)) if vector else 1)] += 1
    return {op: dict(counter) for op, counter in widths.items()}


def _resource_usage(cubin: bytes) -> tuple:
    """(registers, spill bytes) from the bundled ``cuobjdump``; (None, None) where it is unavailable."""
    try:
        tool = triton.knobs.nvidia.cuobjdump.path
    except Exception:  # pragma: no cover - older Triton layouts
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):  # pragma: no cover - depends on the machine
        return None, None
    finally:
        os.unlink(f.name)
    regs = re.search(r"REG:(\d+)", out)
    local = re.search(r"LOCAL:(\d+)", out)
    return (int(regs.group(1)) if regs else None), (int(local.group(1)) if local else None)


def compile_variant(variant: KernelVariant, arch: int = 90) -> CompiledStats:
    """Compile ``variant`` for ``sm_<arch>`` (all the way to a cubin) and summarise it.

    Raises whatever Triton raises when the kernel does not lower: that is the point.
    """
    fn = _jit_function(variant.kernel)
    signature = {name: ("constexpr" if name in variant.constexprs else _ARG_TYPES.get(name, "fp32"))
                 for name in fn.arg_names}
    missing = [n for n in fn.arg_names if n not in variant.constexprs and fn.params[fn.arg_names.index(n)].is_constexpr]
    if missing:
        raise ValueError(f"variant {variant.label!r} leaves constexprs {missing} unset")
    # Kernel arguments are 16-byte aligned allocations, as Triton's launcher would specialise them.
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n, t in signature.items() if t.startswith("*")}
    source = ASTSource(fn, signature, dict(variant.constexprs), attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": variant.num_warps, "enable_fp_fusion": False})
    widths = access_widths(compiled.asm["ptx"])
    registers, spills = _resource_usage(compiled.asm["cubin"])
    return CompiledStats(variant, widths["ld"], widths["st"], registers, spills)


def _optimizer_flags(kernel: str, grad_kind: int, mask_kind: int, aligned: bool, block: int) -> Dict[str, object]:
    common = dict(CHUNK=_runtime.GPU_CHUNK, GRAD_KIND=grad_kind, MASK_KIND=mask_kind, MAXIMIZE=False,
                  EMULATE_FMA=False, ALIGNED=aligned, BLOCK=block)
    if kernel == "sgd":
        return dict(common, HAS_MOMENTUM=True, FIRST_STEP=False, NESTEROV=False, HAS_WD=True)
    return dict(common, LERP_SMALL=True, PER_TENSOR_STEP=False, CUDA_ORDER=True)


GRAD_NAMES = {0: "fp32", 1: "bf16", 2: "fp16"}
MASK_NAMES = {0: "dense", 1: "bytemask", 2: "bitmask"}


def standard_variants(full: bool = False) -> List[KernelVariant]:
    """The variants the tests and the table cover: a representative set, or (``full``) every combination."""
    grads = (0, 1, 2) if full else (0, 1)
    masks = (0, 1, 2) if full else (1, 2)
    out: List[KernelVariant] = []
    for kernel in ("sgd", "adamw"):
        for g in grads:
            for m in masks:
                for aligned in ((True, False) if full or (g, m) == (0, 1) else (True,)):
                    label = f"{kernel} {GRAD_NAMES[g]} grad, {MASK_NAMES[m]}, {'aligned' if aligned else 'unaligned'}"
                    out.append(KernelVariant(label, kernel, _optimizer_flags(kernel, g, m, aligned, 2048)))
    for x in grads:
        for aligned in ((True, False) if full or x == 0 else (True,)):
            for level in ((0, 1) if full else (1,)):
                shift, width = ((23, 8), (15, 8))[level]
                label = f"hist {GRAD_NAMES[x]}, pass {level + 1}, {'aligned' if aligned else 'unaligned'}"
                out.append(KernelVariant(label, "hist", dict(
                    CHUNK=_runtime.GPU_CHUNK, BLOCK=1024, X_KIND=x, SHIFT=shift, WIDTH=width,
                    FILTER=level > 0, ALIGNED=aligned), num_warps=4))
    return out


def format_table(stats: Sequence[CompiledStats], arch: int) -> str:
    """A Markdown table: accesses by width, registers and spills per variant."""
    lines = [f"Compiled for sm_{arch} with Triton {triton.__version__} (no GPU needed; no timing).", "",
             "| variant | loads (bits x count) | stores (bits x count) | registers | spill bytes |",
             "|---|---|---|---|---|"]

    def fmt(counts: Dict[int, int]) -> str:
        return ", ".join(f"{bits}x{n}" for bits, n in sorted(counts.items(), reverse=True)) or "-"

    for s in stats:
        lines.append(f"| {s.variant.label} | {fmt(s.loads)} | {fmt(s.stores)} | "
                     f"{'?' if s.registers is None else s.registers} | {'?' if s.spill_bytes is None else s.spill_bytes} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80 or 90")
    parser.add_argument("--full", action="store_true", help="every grad dtype x mask format x alignment")
    parser.add_argument("--json", action="store_true", help="one JSON object per variant instead of the table")
    args = parser.parse_args(argv)
    stats = [compile_variant(v, args.arch) for v in standard_variants(args.full)]
    if args.json:
        for s in stats:
            print(json.dumps(dict(label=s.variant.label, kernel=s.variant.kernel, **dict(s.variant.constexprs),
                                  loads=s.loads, stores=s.stores, registers=s.registers, spill_bytes=s.spill_bytes)))
    else:
        print(format_table(stats, args.arch))


if __name__ == "__main__":
    main()
