"""Small seq2seq models and a word-level tokenizer built locally (no download), for the example and tests.

``word_tokenizer`` trains a ``tokenizers`` WordLevel model on whitespace-separated text (specials ``<pad>``,
``</s>``, ``<unk>``; every encoding ends in ``</s>``); ``marian_config`` / ``t5_config`` size a model to it.
"""
from __future__ import annotations

from typing import Iterable, List, Sequence

from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import MarianConfig, PreTrainedTokenizerFast, T5Config

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the whitespace tokens of ``texts`` (one joint source/target vocabulary)."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=[PAD, EOS, UNK]))
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, tok.token_to_id(EOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def _special_ids(tokenizer) -> dict:
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    return dict(pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad)


def marian_config(tokenizer, *, d_model: int = 32, layers: int = 1, heads: int = 2, ffn: int = 64,
                  max_positions: int = 64, dropout: float = 0.0) -> MarianConfig:
    """A small Marian (post-norm transformer, tied embeddings, ``final_logits_bias``) for ``tokenizer``.

    Embeddings are scaled by sqrt(d_model) (``scale_embedding``, as trained Marian models have it): without it
    the sinusoidal positions drown the 0.02-scale token embeddings and a small model barely learns.
    """
    v = len(tokenizer)
    return MarianConfig(vocab_size=v, decoder_vocab_size=v, d_model=d_model, encoder_layers=layers,
                        decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
                        encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, max_position_embeddings=max_positions,
                        dropout=dropout, attention_dropout=0.0, activation_dropout=0.0, scale_embedding=True,
                        forced_eos_token_id=None, **_special_ids(tokenizer))


def t5_config(tokenizer, *, d_model: int = 32, layers: int = 1, heads: int = 2, ffn: int = 64,
              dropout: float = 0.0) -> T5Config:
    """A small T5 (pre-norm, relative positions, tied embeddings: decoder output scaled by d_model^-1/2)."""
    return T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=d_model // heads, d_ff=ffn, num_layers=layers,
                    num_decoder_layers=layers, num_heads=heads, dropout_rate=dropout, **_special_ids(tokenizer))


def encode_pairs(tokenizer, sources: Sequence[str], targets: Sequence[str]) -> List[dict]:
    """One ``{"input_ids", "attention_mask", "labels"}`` dict per pair (``DataCollatorForSeq2Seq`` pads them)."""
    enc = tokenizer(list(sources), text_target=list(targets))
    return [{"input_ids": i, "attention_mask": a, "labels": y}
            for i, a, y in zip(enc["input_ids"], enc["attention_mask"], enc["labels"])]
