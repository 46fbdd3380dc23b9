"""Writing trained sparse models for people who use them: dense files with exact zeros, compressed
files that are smaller on disk, and a loader that runs 2:4 Linear weights on sparse tensor cores.

Why a module of its own, below the trainer, the tasks and the HF helpers: all three export
(``GlueTask.export``, ``dstrain.hf``, the ``dstrain export`` command in
:mod:`dstrain.run.export`), and keeping export free of any of them is what breaks the import
circle tasks/glue.py -> hf.py -> trainer.py -> tasks (``tests/test_export.py`` pins it).
It imports only torch, safetensors and :mod:`dstrain.sparsity.nm`.

Formats (``dstrain export --format``):

* ``torchvision`` / ``hf``: dense tensors, pruned weights exactly 0 (``model.pth`` state dict;
  ``save_pretrained`` safetensors, :func:`export_sparse_model`);
* ``compressed``: one safetensors file; every floating tensor for which it is smaller is stored
  as its nonzero values (flat, in row-major order) plus a 1-bit-per-element mask
  (``<name>::values``, ``<name>::bitmask``); the rest are stored as they are
  (:func:`save_compressed`, :func:`load_compressed`).  A 2:4 tensor costs the same 1 bit per
  element either as a bitmask or as N:M indices (two 2-bit indices per group of 4), so one
  encoding serves both; the round trip is exact in value (a -0.0 comes back as 0.0);
* ``semi-structured``: the compressed file, plus :func:`swap_to_semi_structured` at load time,
  which replaces each exact-2:4 Linear weight by ``torch.sparse.to_sparse_semi_structured``
  on a CUDA GPU that has sparse tensor cores (fp16/bf16), and otherwise says why not and
  keeps the dense weight.
"""
from __future__ import annotations

import glob
import json
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from dstrain.sparsity.nm import is_nm, nm_eligible

FORMATS = ("torchvision", "hf", "compressed", "semi-structured")
COMPRESSED_FILE = "model.compressed.safetensors"
TORCHVISION_FILE = "model.pth"
MANIFEST = "dstrain_export.json"
_SEP = "::"  # never part of a torch parameter name

__all__ = ["FORMATS", "COMPRESSED_FILE", "TORCHVISION_FILE", "MANIFEST", "unwrap_model", "export_sparse_model",
           "count_zeros_in_safetensors", "pack_bits", "unpack_bits", "compress_state_dict",
           "decompress_state_dict", "save_compressed", "load_compressed", "semi_structured_unavailable",
           "swap_to_semi_structured", "dense_bytes", "file_bytes"]

SPARSITY_REPORT = "dstrain_sparsity.json"


def unwrap_model(model: Any) -> nn.Module:
    """Strips DeepSpeed engine / DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif hasattr(model, "module") and isinstance(model.module, nn.Module) and not hasattr(model, "save_pretrained"):
            model = model.module
        else:
            break
    return model


def count_zeros_in_safetensors(out_dir: str) -> Dict[str, int]:
    """Exact-zero count per tensor in every ``*.safetensors`` file of ``out_dir``."""
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(out_dir, "*.safetensors")))
    if not files:
        raise ValueError(f"no *.safetensors files in {out_dir}")
    counts: Dict[str, int] = {}
    for f in files:
        with safe_open(f, framework="pt") as fh:
            for k in fh.keys():
                counts[k] = int((fh.get_tensor(k) == 0).sum())
    return counts


def export_sparse_model(
    model: nn.Module,
    out_dir: str,
    tokenizer: Optional[Any] = None,
    masks: Optional[Mapping[str, Tensor]] = None,
    verify: bool = True,
) -> Dict[str, float]:
    """Writes ``model`` with ``save_pretrained`` (safetensors) so ``from_pretrained`` in plain
    transformers loads it with every pruned weight exactly 0.

    ``masks`` (parameter name -> bool mask, True = kept) is applied first if given;
    normally the trainer has already applied them. With ``verify`` the written files are
    read back and each tensor's zero count compared with the model's, so a silent dtype
    cast or re-initialisation in the save path cannot go unnoticed.
    Returns per-parameter sparsity (fraction of zeros) for the weights that have any,
    also written to ``dstrain_sparsity.json`` next to the weights.
    """
    model = unwrap_model(model)
    if not hasattr(model, "save_pretrained"):
        raise ValueError(
            f"{type(model).__name__} has no save_pretrained; export_sparse_model takes a transformers "
            "PreTrainedModel (unwrap your own wrapper first)"
        )
    params = dict(model.named_parameters())
    if masks:
        unknown = [n for n in masks if n not in params]
        if unknown:
            raise ValueError(f"masks name parameters the model does not have: {unknown[:5]}")
        with torch.no_grad():
            for name, mask in masks.items():
                params[name].mul_(mask.to(device=params[name].device, dtype=params[name].dtype))

    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)  # transformers 5 writes safetensors only
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)

    with torch.no_grad():
        state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        zeros = {k: int((v == 0).sum()) for k, v in state.items()}
        sparsity = {k: zeros[k] / max(1, state[k].numel()) for k in state if zeros[k] > 0}
    if verify:
        written = count_zeros_in_safetensors(out_dir)
        mismatched = [k for k in written if k in zeros and written[k] != zeros[k]]
        if mismatched:
            raise RuntimeError(f"zeros changed while saving to {out_dir}: {mismatched[:5]}")
    with open(os.path.join(out_dir, SPARSITY_REPORT), "w") as f:
        json.dump({"sparsity": sparsity}, f, indent=1, sort_keys=True)
    return sparsity


# --- compressed: values + bitmask ----------------------------------------------------------------
def pack_bits(flags: Tensor) -> Tensor:
    """Bool tensor -> uint8, 8 flags per byte (element i is bit i % 8 of byte i // 8)."""
    flat = flags.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = (1 << torch.arange(8, dtype=torch.int32)).to(torch.int32)
    return (flat.view(-1, 8).to(torch.int32) * weights).sum(1).to(torch.uint8)


def unpack_bits(packed: Tensor, numel: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` flags as a flat bool tensor."""
    bits = (packed.to(torch.int32).unsqueeze(1) >> torch.arange(8, dtype=torch.int32)) & 1
    return bits.reshape(-1)[:numel].bool()


def _stored(t: Tensor) -> Tensor:
    """A flag per element that must be stored: the nonzeros.

    Zeros come back as +0.0.  Masking makes every pruned negative weight -0.0, which equals 0.0
    in value and in every sum it enters, so keeping the sign would store the pruned weights again.
    """
    return t != 0


def compress_state_dict(state: Mapping[str, Tensor]) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """(tensors to write, per-tensor layout) — values + bitmask wherever that is smaller than dense."""
    tensors: Dict[str, Tensor] = {}
    layout: Dict[str, Any] = {}
    for name, tensor in state.items():
        if _SEP in name:
            raise ValueError(f"tensor name {name!r} contains {_SEP!r}, which the compressed format reserves")
        t = tensor.detach().cpu().contiguous()
        if t.is_floating_point() and t.numel():
            keep = _stored(t).reshape(-1)
            nnz = int(keep.sum())
            packed_bytes = nnz * t.element_size() + math.ceil(t.numel() / 8)
            if packed_bytes < t.numel() * t.element_size():
                tensors[name + _SEP + "values"] = t.reshape(-1)[keep].clone()
                tensors[name + _SEP + "bitmask"] = pack_bits(keep)
                layout[name] = {"layout": "bitmask", "shape": list(t.shape), "nnz": nnz}
                continue
        tensors[name] = t.clone()  # clone: safetensors refuses tensors that share memory (tied weights)
        layout[name] = {"layout": "dense"}
    return tensors, layout


def decompress_state_dict(tensors: Mapping[str, Tensor], layout: Mapping[str, Any]) -> Dict[str, Tensor]:
    """Inverse of :func:`compress_state_dict`: dense tensors in the original order."""
    out: Dict[str, Tensor] = {}
    for name, info in layout.items():
        if info["layout"] == "dense":
            out[name] = tensors[name]
            continue
        values = tensors[name + _SEP + "values"]
        numel = math.prod(info["shape"])
        keep = unpack_bits(tensors[name + _SEP + "bitmask"], numel)
        if int(keep.sum()) != values.numel():
            raise ValueError(f"{name}: bitmask has {int(keep.sum())} set bits for {values.numel()} values")
        dense = torch.zeros(numel, dtype=values.dtype)
        dense[keep] = values
        out[name] = dense.view(info["shape"])
    return out


def save_compressed(state: Mapping[str, Tensor], path: str, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Write ``state`` as a compressed safetensors file; returns the layout stored in its metadata."""
    from safetensors.torch import save_file

    tensors, layout = compress_state_dict(state)
    metadata = {"dstrain_layout": json.dumps(layout), "dstrain_format": "compressed-v1"}
    if extra:
        metadata["dstrain_extra"] = json.dumps(extra)
    save_file(tensors, path, metadata=metadata)
    return layout


def load_compressed(path: str) -> Dict[str, Tensor]:
    """Dense state dict from a file written by :func:`save_compressed` (bit-identical to what was saved)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata() or {}
        if meta.get("dstrain_format") != "compressed-v1":
            raise ValueError(f"{path} is not a dstrain compressed file (no dstrain_format metadata)")
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    return decompress_state_dict(tensors, json.loads(meta["dstrain_layout"]))


def dense_bytes(state: Mapping[str, Tensor]) -> int:
    """Bytes of the tensors themselves, stored dense (what a dense file holds, less its header)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def file_bytes(path: str) -> int:
    """Size on disk of a file, or of every file under a folder."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(path, "**", "*"), recursive=True) if os.path.isfile(p))


# --- semi-structured: 2:4 Linear weights on sparse tensor cores -----------------------------------
SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)


def semi_structured_unavailable(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """Why ``torch.sparse.to_sparse_semi_structured`` cannot run here, or None if it can."""
    device = torch.device(device)
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured"
    if device.type != "cuda":
        return f"device {device.type}: 2:4 sparse kernels (cuSPARSELt/CUTLASS) need a CUDA GPU"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"GPU compute capability {major}.{minor} has no sparse tensor cores (needs 8.0, Ampere, or newer)"
    if dtype not in SEMI_STRUCTURED_DTYPES:
        return f"dtype {dtype}: semi-structured kernels here take float16 or bfloat16"
    return None


def two_four_linears(model: nn.Module) -> List[Tuple[str, nn.Linear]]:
    """Linear layers whose weight is exactly 2:4 (the pattern the sparse tensor cores run)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and nm_eligible(m.weight, (2, 4)) and is_nm(m.weight.detach(), (2, 4))]


@torch.no_grad()
def swap_to_semi_structured(model: nn.Module, device: Any = "cuda", dtype: torch.dtype = torch.float16,
                            log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Move ``model`` to ``device``/``dtype`` and swap every exact-2:4 Linear weight to a semi-structured
    sparse tensor; where that cannot run, keep the dense weights and ``log`` one line saying why.

    Returns {"swapped": [names], "dense": {name: reason}, "fallback": reason or None}.
    """
    candidates = two_four_linears(model)
    reason = semi_structured_unavailable(torch.device(device), dtype)
    if reason is not None:
        model.to(device=device if torch.device(device).type != "cuda" or torch.cuda.is_available() else "cpu")
        log(f"semi-structured: not used ({reason}); {len(candidates)} 2:4 Linear weight(s) stay dense")
        return {"swapped": [], "dense": {n: reason for n, _ in candidates}, "fallback": reason}
    model.to(device=device, dtype=dtype)
    swapped, dense = [], {}
    for name, module in candidates:
        try:
            sparse = torch.sparse.to_sparse_semi_structured(module.weight.detach())
        except (RuntimeError, ValueError) as err:  # shape or dtype the kernels do not take
            dense[name] = str(err).splitlines()[0]
            continue
        module.weight = nn.Parameter(sparse, requires_grad=False)
        swapped.append(name)
    log(f"semi-structured: {len(swapped)} of {len(candidates)} 2:4 Linear weight(s) swapped"
        + (f"; kept dense: {', '.join(dense)}" if dense else ""))
    return {"swapped": swapped, "dense": dense, "fallback": None}
