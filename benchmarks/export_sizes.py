"""Size on disk of a pruned model: dense safetensors vs dstrain's compressed format (values + bitmask).

    python benchmarks/export_sizes.py                 # torchvision ResNet50 and BERT-base, fp32
    python benchmarks/export_sizes.py --models small  # a SmallResNet (seconds; what the test runs)

Each model is built with random weights (seeded; no download): the size of either format depends
only on the tensor shapes, the dtype and how many weights are zero, not on the values.  Prunable
weights are those the shipped recipes prune (ResNet50: every conv and fc, recipes/resnet50/;
BERT-base: the encoder's Linear weights, recipes/bert/), pruned to 90/95/98 % by global magnitude
(:meth:`MaskRegistry.update`) and to 2:4 (:mod:`dstrain.sparsity.nm`).  Both files are written to a
temporary folder and measured with ``os.path.getsize``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dstrain.export import save_compressed  # noqa: E402
from dstrain.sparsity.registry import MaskRegistry, PrunableSelection  # noqa: E402
from dstrain.sparsity.magnitude import global_magnitude_masks  # noqa: E402
from dstrain.sparsity.nm import nm_masks  # noqa: E402

SETTINGS = ("dense", "90%", "95%", "98%", "2:4")


def resnet50() -> Tuple[nn.Module, PrunableSelection]:
    import torchvision

    return torchvision.models.resnet50(weights=None), PrunableSelection(exclude_first_conv=False,
                                                                         exclude_classifier=False)


def bert_base() -> Tuple[nn.Module, PrunableSelection]:
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(num_labels=3))  # bert-base-uncased shapes
    return model, PrunableSelection(exclude=(r"^bert\.pooler\.",), exclude_classifier=True)


def small() -> Tuple[nn.Module, PrunableSelection]:
    from dstrain.models import SmallResNet

    return SmallResNet(num_classes=10, in_channels=1, depth=8, width=32), PrunableSelection()


MODELS: Dict[str, Callable[[], Tuple[nn.Module, PrunableSelection]]] = {
    "resnet50": resnet50, "bert-base": bert_base, "small": small}


def measure(build: Callable[[], Tuple[nn.Module, PrunableSelection]], settings: Sequence[str] = SETTINGS) -> List[dict]:
    """One row per setting: bytes of the dense and the compressed safetensors file."""
    from safetensors.torch import save_file

    rows = []
    for setting in settings:
        torch.manual_seed(0)
        model, selection = build()
        registry = MaskRegistry(model, selection)
        if setting == "2:4":
            registry.set_masks(nm_masks([registry.params[n] for n in registry.names()], 0.5, (2, 4)))
        elif setting != "dense":
            registry.set_masks(global_magnitude_masks([registry.params[n] for n in registry.names()],
                                                      float(setting.rstrip("%")) / 100))
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        with tempfile.TemporaryDirectory() as tmp:
            save_file(state, os.path.join(tmp, "dense.safetensors"))
            save_compressed(state, os.path.join(tmp, "compressed.safetensors"))
            dense = os.path.getsize(os.path.join(tmp, "dense.safetensors"))
            packed = os.path.getsize(os.path.join(tmp, "compressed.safetensors"))
        rows.append({"setting": setting, "prunable_sparsity": registry.weight_sparsity(),
                     "model_sparsity": sum(int((v == 0).sum()) for v in state.values() if v.is_floating_point())
                     / sum(v.numel() for v in state.values() if v.is_floating_point()),
                     "dense_bytes": dense, "compressed_bytes": packed})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet50", "bert-base"], choices=sorted(MODELS))
    args = p.parse_args(argv)
    print("| model | pruned | zeros in prunable weights | zeros in whole model | dense safetensors (MB) "
          "| compressed (MB) | compressed / dense |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        for r in measure(MODELS[name]):
            print(f"| {name} | {r['setting']} | {r['prunable_sparsity']:.4f} | {r['model_sparsity']:.4f} "
                  f"| {r['dense_bytes'] / 1e6:.1f} | {r['compressed_bytes'] / 1e6:.1f} "
                  f"| {r['compressed_bytes'] / r['dense_bytes']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
