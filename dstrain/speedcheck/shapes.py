"""The distinct Linear/Conv2d shapes of a model, with how often each runs in one forward.

Why a forward with hooks rather than reading the modules: a layer's cost depends on the size
of what it receives (tokens per sequence, a convolution's input resolution), which only a
forward shows, and a module called twice per forward costs twice.  The forward runs on the
meta device first (shapes without arithmetic, so BERT-large or a ResNet at 512 px costs
nothing); a model that cannot run on meta gets one real batch-1 forward on the CPU instead.

Layers are grouped by everything that decides their speed (geometry, input size) plus whether
they would be sparse, so the timing runs once per group and the totals multiply by the count.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch
from torch import nn
from torch.func import functional_call

from dstrain.errors import ConfigError
from dstrain.speedcheck.model_source import ARG, ModelSpec

Pair = Tuple[int, int]


@dataclass
class LayerShape:
    """One group of layers that run the same op on inputs of the same size.

    For a Linear, ``in_ch``/``out_ch`` are in/out features and ``rows_per_sample`` the rows of
    its input per example (tokens for a transformer, 1 for a classifier).  For a Conv2d,
    ``rows_per_sample`` is its output pixels: the rows of the implicit GEMM it runs.
    """

    kind: str
    in_ch: int
    out_ch: int
    rows_per_sample: int
    prunable: bool
    kernel: Pair = (1, 1)
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    in_hw: Pair = (1, 1)
    out_hw: Pair = (1, 1)
    count: int = 0
    layers: List[str] = field(default_factory=list)

    @property
    def key(self) -> Tuple[Any, ...]:
        return (self.kind, self.in_ch, self.out_ch, self.rows_per_sample, self.kernel, self.stride, self.padding,
                self.dilation, self.groups, self.in_hw, self.prunable)

    @property
    def gemm_k(self) -> int:
        """Reduction length of the (implicit) GEMM: in features, or in_channels/groups x kh x kw."""
        return self.in_ch // self.groups * self.kernel[0] * self.kernel[1]

    @property
    def gemm_n(self) -> int:
        return self.out_ch

    def rows(self, batch: int) -> int:
        return batch * self.rows_per_sample

    @property
    def label(self) -> str:
        if self.kind == "linear":
            rows = f" x{self.rows_per_sample} rows" if self.rows_per_sample > 1 else ""
            return f"linear {self.in_ch}->{self.out_ch}{rows}"
        kh, kw = self.kernel
        extra = "".join([f"/s{self.stride[0]}" if self.stride != (1, 1) else "",
                         f"/g{self.groups}" if self.groups > 1 else "",
                         f"/d{self.dilation[0]}" if self.dilation != (1, 1) else ""])
        return f"conv {self.in_ch}->{self.out_ch} {kh}x{kw}{extra} @{self.in_hw[0]}x{self.in_hw[1]}"

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"kind": self.kind, "label": self.label, "count": self.count, "layers": self.layers,
                               "prunable": self.prunable, "in": self.in_ch, "out": self.out_ch,
                               "rows_per_sample": self.rows_per_sample, "gemm_k": self.gemm_k, "gemm_n": self.gemm_n}
        if self.kind == "conv2d":
            out.update(kernel=list(self.kernel), stride=list(self.stride), padding=list(self.padding),
                       dilation=list(self.dilation), groups=self.groups, in_hw=list(self.in_hw),
                       out_hw=list(self.out_hw))
        return out


@dataclass
class ModelShapes:
    shapes: List[LayerShape]
    method: str
    """How the shapes were seen (meta device, or a real CPU forward and why meta failed)."""
    unseen: List[str]
    """Linear/Conv2d modules whose forward never ran (e.g. nn.MultiheadAttention's out_proj, used through
    F.multi_head_attention_forward): not measured, and said so."""


def _pair(value: Any) -> Pair:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def _record(module: nn.Module, inp: torch.Tensor, out: torch.Tensor, prunable: bool) -> LayerShape:
    if isinstance(module, nn.Linear):
        rows = inp.numel() // module.in_features
        return LayerShape("linear", module.in_features, module.out_features, rows, prunable)
    in_hw = (int(inp.shape[-2]), int(inp.shape[-1]))
    out_hw = (int(out.shape[-2]), int(out.shape[-1]))
    padding = module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":
        # "same" padding, or a reflect/replicate pad before the conv: the padding that gives out_hw,
        # folded into the input size for the non-zero modes (the GEMM sees the padded input)
        padding = tuple(max(0, ((o - 1) * s + d * (k - 1) + 1 - i) // 2) for o, s, d, k, i in
                        zip(out_hw, module.stride, module.dilation, module.kernel_size, in_hw, strict=True))
        if module.padding_mode != "zeros":
            in_hw, padding = (in_hw[0] + 2 * padding[0], in_hw[1] + 2 * padding[1]), (0, 0)
    return LayerShape("conv2d", module.in_channels, module.out_channels, out_hw[0] * out_hw[1], prunable,
                      kernel=_pair(module.kernel_size), stride=_pair(module.stride), padding=_pair(padding),
                      dilation=_pair(module.dilation), groups=module.groups, in_hw=in_hw, out_hw=out_hw)


def _forward_with_hooks(spec: ModelSpec, device: str) -> Tuple[List[Tuple[str, LayerShape]], List[str]]:
    model = spec.model
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    seen: List[Tuple[str, LayerShape]] = []
    handles = []
    for name, module in layers.items():
        def hook(mod: nn.Module, args: Tuple[Any, ...], output: Any, name: str = name) -> None:
            seen.append((name, _record(mod, args[0], output, name in spec.prunable)))

        handles.append(module.register_forward_hook(hook))
    try:
        args, kwargs = spec.make_input(1, torch.device(device), torch.float32)
        with torch.no_grad():
            if device == "meta":
                tensors = {n: torch.empty_like(t, device="meta") for n, t in
                           list(model.named_parameters()) + list(model.named_buffers())}
                functional_call(model, tensors, args, kwargs, strict=False)
            else:
                model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    ran = {n for n, _ in seen}
    return seen, [n for n in layers if n not in ran]


def first_line(err: BaseException) -> str:
    """An exception as one line (type and first line of its message), for tables and error messages."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:160]}" if lines else type(err).__name__


def collect_shapes(spec: ModelSpec) -> ModelShapes:
    """Distinct shapes in first-call order, each with its count and layer names."""
    try:
        seen, unseen = _forward_with_hooks(spec, "meta")
        method = "forward on the meta device"
    except Exception as err:  # noqa: BLE001 - any op without a meta kernel: the real forward decides
        try:
            seen, unseen = _forward_with_hooks(spec, "cpu")
        except Exception as real:  # noqa: BLE001 - e.g. an image too small for the model's downsampling
            raise ConfigError(ARG, f"{spec.name} fails a forward on {spec.input_desc} ({first_line(real)})",
                              "check --image-size / --seq-len") from None
        method = f"batch-1 CPU forward (the meta device failed: {first_line(err)})"
    groups: Dict[Tuple[Any, ...], LayerShape] = {}
    for name, shape in seen:
        group = groups.setdefault(shape.key, shape)
        group.count += 1
        if name not in group.layers:
            group.layers.append(name)
    return ModelShapes(list(groups.values()), method, unseen)
