"""A tiny random Llama and a byte-level tokenizer, built offline and saved with save_pretrained.

Why: tests of the causal-LM path (task, Wanda/SparseGPT, SquareHead, export) need a real
``transformers`` decoder folder that :class:`~dstrain.tasks.causal_lm.CausalLMTask` loads as it
loads SmolLM2 — with nothing from the hub, in well under a second, the same every time.
The tokenizer is byte-level BPE with no merges: one token per byte, 256 tokens plus an
end-of-text token, a deterministic vocabulary that needs no training text.  The sizes
(2 layers, hidden 64) keep every Linear's input a multiple of 4, so 2:4 reaches them all,
and the embedding is tied to the output layer as in SmolLM2.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

__all__ = ["TinyLlamaSizes", "byte_tokenizer", "make_tiny_llama", "write_tiny_text"]

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class TinyLlamaSizes:
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256


def byte_tokenizer():
    """Byte-level BPE without merges (GPT-2's byte alphabet), wrapped as ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab[EOS] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, model_max_length=1 << 20)


def make_tiny_llama(out_dir: Optional[str], sizes: TinyLlamaSizes = TinyLlamaSizes(),
                    seed: int = 0) -> Tuple["torch.nn.Module", object]:
    """A random ``LlamaForCausalLM`` (fixed seed, caller's RNG untouched) and its tokenizer; saved if ``out_dir``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=sizes.hidden_size,
                         intermediate_size=sizes.intermediate_size, num_hidden_layers=sizes.num_hidden_layers,
                         num_attention_heads=sizes.num_attention_heads,
                         num_key_value_heads=sizes.num_key_value_heads,
                         max_position_embeddings=sizes.max_position_embeddings, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, use_cache=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    return model, tokenizer


def write_tiny_text(path: str, sentences: int = 200, seed: int = 0) -> str:
    """A plain-text file of ``sentences`` short sentences drawn from a small vocabulary (deterministic)."""
    import random

    words = ("the hacker wrote a kludge that ran on every machine in the lab and nobody knew why it worked "
             "until the bug showed up at night").split()
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 12))).capitalize() + "."
             for _ in range(sentences)]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path
