"""Subword vocabularies for the demo (``--bpe N``): a joint SentencePiece BPE model trained on the training
split, every split segmented into its pieces, and hypotheses decoded back to text for BLEU.

SentencePiece (https://github.com/google/sentencepiece) is an optional dependency: ``pip install
"edd_ext[bpe]"``. Its ids 0-3 are set to the demo's ``<pad> <s> </s> <unk>``, so that piece ids and the
demo's dictionary ids agree.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import List, Optional, Sequence

from .corpus import SPECIALS, Corpus, DataError, Dictionary, Sentence


def _sentencepiece():
    try:
        import sentencepiece
    except ImportError:
        raise DataError('--bpe: needs the sentencepiece package (pip install "edd_ext[bpe]" or '
                         'pip install sentencepiece==0.2.3)') from None
    return sentencepiece


class Subwords:
    """A trained SentencePiece model: ``segment`` (text -> pieces), ``detokenize`` (pieces -> text)."""

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self.processor = _sentencepiece().SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, sentences: Sequence[str], vocab_size: int) -> Subwords:
        """A joint BPE model of at most ``vocab_size`` pieces (specials included) over ``sentences``; a small
        corpus may give fewer pieces."""
        if vocab_size <= len(SPECIALS):
            raise DataError(f"--bpe: expected more than {len(SPECIALS)} pieces, got {vocab_size}")
        proto = io.BytesIO()
        _sentencepiece().SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=proto, vocab_size=vocab_size, model_type="bpe",
            character_coverage=1.0, hard_vocab_limit=False, num_threads=1, minloglevel=2,
            pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece=SPECIALS[0], bos_piece=SPECIALS[1],
            eos_piece=SPECIALS[2], unk_piece=SPECIALS[3])
        return cls(proto.getvalue())

    @property
    def pieces(self) -> List[str]:
        return [self.processor.id_to_piece(i) for i in range(self.processor.get_piece_size())]

    def segment(self, text: str) -> Sentence:
        return self.processor.encode(text, out_type=str)

    def detokenize(self, pieces: Sentence) -> str:
        return self.processor.decode_pieces(list(pieces))


def apply_bpe(corpus: Corpus, vocab_size: int, save_to: Optional[Path] = None) -> Corpus:
    """``corpus`` segmented by a joint BPE model trained on its training sources and targets.

    The references stay the original text; hypotheses are decoded from pieces back to text
    (``corpus.text``). The model is written to ``save_to`` when given.
    """
    join = corpus.text
    subwords = Subwords.train([join(s) for s in corpus.train_src + corpus.train_tgt], vocab_size)
    if save_to is not None:
        Path(save_to).write_bytes(subwords.model_proto)

    def segment(sentences: List[Sentence]) -> List[Sentence]:
        return [subwords.segment(join(s)) for s in sentences]

    pieces = subwords.pieces  # ids 0-3 are the specials, so Dictionary(pieces) keeps SentencePiece's ids
    mean_words = sum(map(len, corpus.train_tgt)) / max(1, len(corpus.train_tgt))
    train_tgt = segment(corpus.train_tgt)
    mean_pieces = sum(map(len, train_tgt)) / max(1, len(train_tgt))
    return Corpus(Dictionary(pieces), segment(corpus.train_src), train_tgt, segment(corpus.test_src),
                  segment(corpus.test_tgt), {k: segment(v) for k, v in corpus.ood_src.items()},
                  f"{corpus.description}, segmented into a joint BPE vocabulary of V={len(pieces)} pieces "
                  f"({mean_pieces:.1f} pieces per target sentence, {mean_words:.1f} words)",
                  detokenize=subwords.detokenize, references=corpus.reference_text(), notes=list(corpus.notes))
