"""A tiny BERT and its WordPiece tokenizer, built offline and saved with save_pretrained.

Why: tests and smoke runs of the GLUE path need a real ``transformers`` BERT directory
(config, weights, tokenizer files) that :class:`~dstrain.tasks.glue.GlueTask` can load
exactly as it would load bert-base — but nothing may come from the hub. Training a
WordPiece vocabulary on a few sentences and randomly initialising a 2-layer BERT with a
fixed seed gives such a directory in well under a second, deterministically.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

import torch

__all__ = ["TinyBertSizes", "train_wordpiece_tokenizer", "make_tiny_bert"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class TinyBertSizes:
    hidden_size: int = 32
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 64
    max_position_embeddings: int = 128


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 512, lowercase: bool = True):
    """Trains a BERT-style WordPiece tokenizer on ``texts`` and wraps it as ``BertTokenizerFast``.

    Same normalizer, pre-tokenizer and ``[CLS] a [SEP] b [SEP]`` template (with token
    type ids) as BERT's own, so pair tasks tokenize exactly as with a real checkpoint.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; the WordPiece vocabulary needs some training text")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
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
