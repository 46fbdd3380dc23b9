"""A tiny BERT and its WordPiece tokenizer, built offline and saved with save_pretrained.

Why: tests and smoke runs of the GLUE path need a real ``transformers`` BERT directory
(config, weights, tokenizer files) that :class:`~dstrain.tasks.glue.GlueTask` can load
exactly as it would load bert-base — but nothing may come from the hub. Building a
WordPiece vocabulary on a few sentences and randomly initialising a 2-layer BERT with a
fixed seed gives such a directory in well under a second, deterministically.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

import torch

__all__ = ["TinyBertSizes", "build_wordpiece_vocab", "train_wordpiece_tokenizer", "make_tiny_bert"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class TinyBertSizes:
    hidden_size: int = 32
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 64
    max_position_embeddings: int = 128
    dropout: float = 0.1  # BERT's; 0 where a test compares runs whose random streams differ (1 vs 2 ranks)


def build_wordpiece_vocab(words: Iterable[str], vocab_size: int) -> Dict[str, int]:
    """A deterministic WordPiece vocabulary: specials, every character (word-initial and
    ``##`` continuation), then the most frequent word prefixes / ``##`` suffixes.

    Why not ``tokenizers.trainers.WordPieceTrainer``: its merge tie-breaking follows
    Rust hash-map order, which is seeded per process, so the same texts give different
    vocabularies (and token sets) from run to run. A tiny test model must be reproducible,
    and for it vocabulary quality hardly matters. Ties are broken by the token string.
    """
    counts: Counter = Counter()
    first_chars, cont_chars = set(), set()
    for w in words:
        first_chars.add(w[0])
        cont_chars.update("##" + c for c in w[1:])
        for i in range(2, len(w) + 1):
            counts[w[:i]] += 1  # prefixes, the whole word included
        for i in range(1, len(w) - 1):
            counts["##" + w[i:]] += 1  # suffixes of at least two characters
    base = list(SPECIAL_TOKENS) + sorted(first_chars) + sorted(cont_chars - set(first_chars))
    if vocab_size < len(base):
        raise ValueError(f"vocab_size={vocab_size} is below the {len(base)} special and single-character tokens the texts need")
    ranked = sorted((t for t in counts if t not in base), key=lambda t: (-counts[t] * len(t.lstrip("#")), t))
    tokens = base + ranked[: vocab_size - len(base)]
    return {t: i for i, t in enumerate(tokens)}


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 512, lowercase: bool = True):
    """Builds a BERT-style WordPiece tokenizer from ``texts`` and wraps it as ``BertTokenizerFast``.

    Same normalizer, pre-tokenizer, ``##`` continuation prefix and ``[CLS] a [SEP] b [SEP]``
    template (with token type ids) as BERT's own, so pair tasks tokenize exactly as with a
    real checkpoint. The vocabulary comes from :func:`build_wordpiece_vocab` (deterministic).
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import BertTokenizerFast

    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; the WordPiece vocabulary needs some training text")
    normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=True, handle_chinese_chars=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = [w for t in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t))]
    if not words:
        raise ValueError("texts contain no words after BERT normalization")
    vocab = build_wordpiece_vocab(words, vocab_size)
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    # transformers 5's BertTokenizerFast installs this same template itself; setting it here
    # keeps the raw tokenizers object correct on its own too.
    return BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        do_lower_case=lowercase,
        model_max_length=512,
    )


def make_tiny_bert(
    out_dir: Optional[str],
    texts: Iterable[str],
    num_labels: int = 2,
    vocab_size: int = 512,
    sizes: TinyBertSizes = TinyBertSizes(),
    seed: int = 0,
) -> Tuple["torch.nn.Module", object]:
    """Builds (and, if ``out_dir`` is given, saves) a random tiny ``BertForSequenceClassification``.

    The model is initialised under ``torch.manual_seed(seed)`` inside a forked RNG, so
    the same seed gives the same weights and the caller's RNG state is untouched.
    Returns ``(model, tokenizer)``; the model is in eval mode.
    """
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = train_wordpiece_tokenizer(texts, vocab_size=vocab_size)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes.hidden_size,
        num_hidden_layers=sizes.num_hidden_layers,
        num_attention_heads=sizes.num_attention_heads,
        intermediate_size=sizes.intermediate_size,
        max_position_embeddings=sizes.max_position_embeddings,
        type_vocab_size=2,
        hidden_dropout_prob=sizes.dropout,
        attention_probs_dropout_prob=sizes.dropout,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    model.eval()
    # Real checkpoints are loaded with max_length <= max_position_embeddings.
    tokenizer.model_max_length = sizes.max_position_embeddings
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        model.save_pretrained(out_dir)  # safetensors (the only format in transformers 5)
        tokenizer.save_pretrained(out_dir)
    return model, tokenizer
