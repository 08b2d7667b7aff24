"""Data for the demo: a deterministic toy parallel corpus, or the user's own parallel text files.

The built-in corpus is a source->target "translation" over a joint vocabulary of ``vocab`` types
(specials, source words ``s*``, target words ``t*`` and words of a held-out "foreign" language ``f*``).
Sentences are drawn from a Zipf distribution over source words. Each source word has a translation
table: most words have one translation, some have two or three with fixed probabilities (so the data
carry genuine aleatoric uncertainty), a few may become a two-word phrase. Words also carry a class, and
an adjective followed by a noun is swapped on the target side, so the models must attend beyond the
aligned position.

Out-of-distribution (OOD) test sets are built from the in-domain test set: ``permuted`` (source words
shuffled), ``copy`` (target-language sentences fed as the source), ``noise`` (uniformly random tokens)
and, for the built-in corpus, ``foreign`` (sentences in a language the models never saw).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")

Sentence = List[str]


class Dictionary:
    """Joint source/target token <-> id map; ids 0-3 are ``<pad> <s> </s> <unk>``."""

    def __init__(self, words: Sequence[str]):
        self.words: List[str] = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.index: Dict[str, int] = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, sentence: Sentence) -> List[int]:
        return [self.index.get(w, UNK) for w in sentence]

    def decode(self, ids: Sequence[int]) -> Sentence:
        return [self.words[i] for i in ids if i not in (PAD, BOS, EOS)]


@dataclass
class Corpus:
    """Tokenised sentences of every split plus the dictionary they are encoded with."""

    dictionary: Dictionary
    train_src: List[Sentence]
    train_tgt: List[Sentence]
    test_src: List[Sentence]
    test_tgt: List[Sentence]
    ood_src: Dict[str, List[Sentence]] = field(default_factory=dict)
    description: str = ""

    @property
    def vocab_size(self) -> int:
        return len(self.dictionary)


# --------------------------------------------------------------------------------------------------
# Built-in toy corpus
# --------------------------------------------------------------------------------------------------
@dataclass
class ToyLanguage:
    """The generative model of the built-in corpus: a lexicon with translation probabilities."""

    num_source: int
    num_target: int
    num_foreign: int
    zipf_exponent: float
    is_adjective: np.ndarray  # [num_source] bool
    translations: List[List[Sentence]]  # per source word: the candidate target phrases
    probabilities: List[np.ndarray]  # per source word: their probabilities

    @property
    def num_ambiguous(self) -> int:
        return sum(len(t) > 1 for t in self.translations)


def _split_vocab(vocab: int):
    if vocab < 40:
        raise ValueError(f"vocab: expected at least 40 types for the built-in corpus, got {vocab}")
    content = vocab - len(SPECIALS)
    num_foreign = max(8, content // 8)
    num_source = (content - num_foreign) * 4 // 9
    num_target = content - num_foreign - num_source
    return num_source, num_target, num_foreign


def make_language(vocab: int, seed: int, ambiguity: float = 0.35, zipf_exponent: float = 1.1) -> ToyLanguage:
    """Draw the toy lexicon deterministically from ``seed``.

    ``ambiguity`` is the fraction of source words with more than one valid translation.
    """
    num_source, num_target, num_foreign = _split_vocab(vocab)
    rng = np.random.default_rng([seed, 1])
    is_adjective = rng.random(num_source) < 0.25
    # Frequent source words take frequent target words: the primary translations are a permutation of
    # the first ``num_source`` target types; alternatives may come from anywhere in the target vocabulary.
    primary = rng.permutation(num_target)[:num_source]
    translations: List[List[Sentence]] = []
    probabilities: List[np.ndarray] = []
    for i in range(num_source):
        options = [[f"t{primary[i]}"]]
        u = rng.random()
        if u < ambiguity:
            k = 2 if rng.random() < 0.7 else 3
            for _ in range(k - 1):
                options.append([f"t{rng.integers(num_target)}"])
            # A set, well-separated preference: e.g. 0.6 / 0.4 or 0.5 / 0.3 / 0.2.
            p = np.sort(rng.dirichlet(np.full(k, 2.0)))[::-1]
        elif u < ambiguity + 0.05:
            options = [options[0] + [f"t{rng.integers(num_target)}"]]
            p = np.ones(1)
        else:
            p = np.ones(1)
        translations.append(options)
        probabilities.append(p / p.sum())
    return ToyLanguage(num_source, num_target, num_foreign, zipf_exponent, is_adjective, translations,
                       probabilities)


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** exponent
    return w / w.sum()


def _sample_lengths(rng: np.random.Generator, n: int, min_len: int, max_len: int) -> np.ndarray:
    return rng.integers(min_len, max_len + 1, size=n)


def sample_source(lang: ToyLanguage, rng: np.random.Generator, n: int, min_len: int, max_len: int,
                  prefix: str = "s", num_types: Optional[int] = None) -> List[Sentence]:
    """``n`` sentences of Zipf-distributed words ``{prefix}{i}``."""
    num_types = lang.num_source if num_types is None else num_types
    weights = _zipf_weights(num_types, lang.zipf_exponent)
    lengths = _sample_lengths(rng, n, min_len, max_len)
    ids = rng.choice(num_types, size=int(lengths.sum()), p=weights)
    out, pos = [], 0
    for length in lengths:
        out.append([f"{prefix}{i}" for i in ids[pos:pos + length]])
        pos += length
    return out


def translate(lang: ToyLanguage, src: Sentence, rng: np.random.Generator) -> Sentence:
    """Sample one translation: swap adjective-noun pairs, then pick each word's translation."""
    ids = [int(w[1:]) for w in src]
    order, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and lang.is_adjective[ids[i]] and not lang.is_adjective[ids[i + 1]]:
            order += [ids[i + 1], ids[i]]
            i += 2
        else:
            order.append(ids[i])
            i += 1
    out: Sentence = []
    for j in order:
        options = lang.translations[j]
        k = 0 if len(options) == 1 else int(rng.choice(len(options), p=lang.probabilities[j]))
        out.extend(options[k])
    return out


def toy_corpus(vocab: int = 4000, train_size: int = 20000, test_size: int = 500, seed: int = 0,
               min_len: int = 3, max_len: int = 10) -> Corpus:
    """The built-in corpus with in-domain train/test splits and four OOD source sets."""
    lang = make_language(vocab, seed)
    words = ([f"s{i}" for i in range(lang.num_source)] + [f"t{i}" for i in range(lang.num_target)]
             + [f"f{i}" for i in range(lang.num_foreign)])
    dictionary = Dictionary(words)
    rng = np.random.default_rng([seed, 2])
    train_src = sample_source(lang, rng, train_size, min_len, max_len)
    train_tgt = [translate(lang, s, rng) for s in train_src]
    rng = np.random.default_rng([seed, 3])
    test_src = sample_source(lang, rng, test_size, min_len, max_len)
    test_tgt = [translate(lang, s, rng) for s in test_src]
    ood = synthetic_ood(test_src, test_tgt, dictionary, seed)
    rng = np.random.default_rng([seed, 4])
    ood["foreign"] = sample_source(lang, rng, test_size, min_len, max_len, prefix="f",
                                   num_types=lang.num_foreign)
    description = (f"built-in toy corpus: V={len(dictionary)} ({lang.num_source} source, {lang.num_target} "
                   f"target, {lang.num_foreign} foreign types), {lang.num_ambiguous} ambiguous source words, "
                   f"{train_size} train / {test_size} test sentences")
    return Corpus(dictionary, train_src, train_tgt, test_src, test_tgt, ood, description)


def synthetic_ood(test_src: List[Sentence], test_tgt: List[Sentence], dictionary: Dictionary,
                  seed: int) -> Dict[str, List[Sentence]]:
    """OOD sources derived from any test set: ``permuted``, ``copy`` and ``noise``."""
    rng = np.random.default_rng([seed, 5])
    permuted = [list(rng.permutation(s)) if len(s) > 1 else list(s) for s in test_src]
    copy = [list(t) for t in test_tgt]
    content = dictionary.words[len(SPECIALS):]
    noise = [[content[i] for i in rng.integers(len(content), size=len(s))] for s in test_src]
    return {"permuted": permuted, "copy": copy, "noise": noise}


# --------------------------------------------------------------------------------------------------
# User files
# --------------------------------------------------------------------------------------------------
def read_lines(path: str) -> List[Sentence]:
    with open(path, encoding="utf-8") as f:
        return [line.split() for line in f]


def file_corpus(train_src: str, train_tgt: str, test_src: str, test_tgt: str,
                ood_src: Sequence[str] = (), vocab: Optional[int] = None, seed: int = 0) -> Corpus:
    """A corpus from parallel text files (one sentence per line, whitespace tokens).

    The joint dictionary holds the training types by decreasing frequency, capped at ``vocab`` entries
    (specials included) when given; others map to ``<unk>``. Besides the user's OOD files, the
    ``permuted``, ``copy`` and ``noise`` sets are derived from the test set.
    """
    data = {name: read_lines(p) for name, p in
            dict(train_src=train_src, train_tgt=train_tgt, test_src=test_src, test_tgt=test_tgt).items()}
    for a, b in (("train_src", "train_tgt"), ("test_src", "test_tgt")):
        if len(data[a]) != len(data[b]):
            raise ValueError(f"--{a.replace('_', '-')} has {len(data[a])} lines but "
                             f"--{b.replace('_', '-')} has {len(data[b])}")
    keep = [i for i, (s, t) in enumerate(zip(data["train_src"], data["train_tgt"])) if s and t]
    tr_s = [data["train_src"][i] for i in keep]
    tr_t = [data["train_tgt"][i] for i in keep]
    counts = collections.Counter(w for s in tr_s + tr_t for w in s)
    words = sorted(counts, key=lambda w: (-counts[w], w))
    if vocab is not None:
        words = words[:max(0, vocab - len(SPECIALS))]
    dictionary = Dictionary(words)
    ood = synthetic_ood(data["test_src"], data["test_tgt"], dictionary, seed)
    for p in ood_src:
        name = Path(p).stem
        while name in ood:
            name += "_"
        ood[name] = read_lines(p)
    description = (f"files {train_src}/{train_tgt}: V={len(dictionary)}, {len(tr_s)} train / "
                   f"{len(data['test_src'])} test sentences")
    return Corpus(dictionary, tr_s, tr_t, data["test_src"], data["test_tgt"], ood, description)
