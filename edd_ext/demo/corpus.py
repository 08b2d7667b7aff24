"""Data for the demo: a deterministic toy parallel corpus, or the user's own parallel text files.

The built-in corpus is a source->target "translation" over a joint vocabulary of ``vocab`` types
(specials, source words ``s*``, target words ``t*`` and words of a held-out "foreign" language ``f*``).
Source words are nouns, adjectives or verbs, drawn from a Zipf distribution within their class, and
sentences follow a small grammar, ``NP (VERB NP)*`` with ``NP = [ADJ] NOUN``. The target language
reorders (noun before adjective, verb after its object), so the models must attend beyond the aligned
position. Each source word has a translation table: most words have one translation, some have two or
three with fixed probabilities (so the data carry genuine aleatoric uncertainty), a few become a
two-word phrase.

Out-of-distribution (OOD) test sets are built from the in-domain test set: ``permuted`` (source words
shuffled), ``copy`` (target-language sentences fed as the source), ``noise`` (uniformly random tokens)
and, for the built-in corpus, ``foreign`` (sentences in a language the models never saw).
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")

Sentence = List[str]


class DataError(ValueError):
    """A problem with the user's data files or data options (the message names the option and the file)."""


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

    def pad_to(self, size: int) -> None:
        """Append types ``<unused0> <unused1> ...`` that no split contains until there are ``size`` types.

        Widens the models' softmax (the number of classes every loss sums over) without changing the
        corpus: the new classes are the never-seen tail that a real subword vocabulary has.
        """
        if size < len(self):
            raise ValueError(f"output vocabulary: expected at least the corpus's {len(self)} types, got {size}")
        for i in range(size - len(self)):
            word = f"<unused{i}>"
            self.index[word] = len(self.words)
            self.words.append(word)


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
    #: tokens -> text for BLEU (default: joined by spaces; subword corpora decode their pieces)
    detokenize: Optional[Callable[[Sentence], str]] = None
    #: the test references as text (default: the detokenised ``test_tgt``)
    references: Optional[List[str]] = None
    #: what was dropped or cut while reading the data, for the log
    notes: List[str] = field(default_factory=list)

    @property
    def vocab_size(self) -> int:
        return len(self.dictionary)

    def text(self, tokens: Sentence) -> str:
        return (self.detokenize or " ".join)(tokens)

    def reference_text(self) -> List[str]:
        return self.references if self.references is not None else [self.text(t) for t in self.test_tgt]


# --------------------------------------------------------------------------------------------------
# Built-in toy corpus
# --------------------------------------------------------------------------------------------------
@dataclass
class ToyLanguage:
    """The generative model of the built-in corpus: a small grammar and a lexicon with translation
    probabilities."""

    num_source: int
    num_target: int
    num_foreign: int
    zipf_exponent: float
    word_class: np.ndarray  # [num_source] 0 = noun, 1 = adjective, 2 = verb
    translations: List[List[Sentence]]  # per source word: the candidate target phrases
    probabilities: List[np.ndarray]  # per source word: their probabilities

    @property
    def num_ambiguous(self) -> int:
        return sum(len(t) > 1 for t in self.translations)


NOUN, ADJECTIVE, VERB = 0, 1, 2


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
    word_class = rng.choice(3, size=num_source, p=[0.5, 0.25, 0.25])
    # Each source word's most likely translation is its own target word; alternatives may come from
    # anywhere in the target vocabulary.
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
        elif u < ambiguity + 0.05:  # a two-word phrase
            options = [options[0] + [f"t{rng.integers(num_target)}"]]
            p = np.ones(1)
        else:
            p = np.ones(1)
        translations.append(options)
        probabilities.append(p / p.sum())
    return ToyLanguage(num_source, num_target, num_foreign, zipf_exponent, word_class, translations,
                       probabilities)


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** exponent
    return w / w.sum()


class _Sampler:
    """Zipf-distributed words of each class."""

    def __init__(self, lang: ToyLanguage, rng: np.random.Generator):
        self.rng = rng
        self.words = [np.flatnonzero(lang.word_class == c) for c in (NOUN, ADJECTIVE, VERB)]
        self.weights = [_zipf_weights(len(w), lang.zipf_exponent) for w in self.words]

    def draw(self, cls: int) -> int:
        return int(self.words[cls][self.rng.choice(len(self.words[cls]), p=self.weights[cls])])


def _noun_phrase(sampler: _Sampler) -> List[int]:
    """``[ADJ] NOUN`` in the source."""
    noun = sampler.draw(NOUN)
    return [sampler.draw(ADJECTIVE), noun] if sampler.rng.random() < 0.4 else [noun]


def sample_pair(lang: ToyLanguage, sampler: _Sampler, length: int) -> tuple:
    """One source sentence ``NP (VERB NP)*`` of about ``length`` words and a sampled translation.

    The target language puts adjectives after their noun and each verb after its object
    (``ADJ N1 V N2`` -> ``N1 ADJ N2 V``); each word takes one of its translations at random.
    """
    src = _noun_phrase(sampler)
    order = [src[::-1]]  # target-side units, nouns before adjectives
    while len(src) + 2 <= max(length, 3):
        verb, obj = sampler.draw(VERB), _noun_phrase(sampler)
        src += [verb] + obj
        order.append(obj[::-1] + [verb])
    tgt: Sentence = []
    for unit in order:
        for j in unit:
            options = lang.translations[j]
            k = 0 if len(options) == 1 else int(sampler.rng.choice(len(options), p=lang.probabilities[j]))
            tgt.extend(options[k])
    return [f"s{i}" for i in src], tgt


def sample_corpus(lang: ToyLanguage, rng: np.random.Generator, n: int, min_len: int, max_len: int):
    sampler = _Sampler(lang, rng)
    pairs = [sample_pair(lang, sampler, int(L)) for L in rng.integers(min_len, max_len + 1, size=n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def sample_foreign(lang: ToyLanguage, rng: np.random.Generator, n: int, min_len: int, max_len: int):
    """Sentences of Zipf-distributed words of a language no model was trained on."""
    weights = _zipf_weights(lang.num_foreign, lang.zipf_exponent)
    return [[f"f{i}" for i in rng.choice(lang.num_foreign, size=int(L), p=weights)]
            for L in rng.integers(min_len, max_len + 1, size=n)]


def toy_corpus(vocab: int = 4000, train_size: int = 20000, test_size: int = 500, seed: int = 0,
               min_len: int = 3, max_len: int = 10) -> Corpus:
    """The built-in corpus with in-domain train/test splits and four OOD source sets."""
    lang = make_language(vocab, seed)
    words = ([f"s{i}" for i in range(lang.num_source)] + [f"t{i}" for i in range(lang.num_target)]
             + [f"f{i}" for i in range(lang.num_foreign)])
    dictionary = Dictionary(words)
    train_src, train_tgt = sample_corpus(lang, np.random.default_rng([seed, 2]), train_size, min_len, max_len)
    test_src, test_tgt = sample_corpus(lang, np.random.default_rng([seed, 3]), test_size, min_len, max_len)
    ood = synthetic_ood(test_src, test_tgt, dictionary, seed)
    ood["foreign"] = sample_foreign(lang, np.random.default_rng([seed, 4]), test_size, min_len, max_len)
    description = (f"built-in toy corpus: V={len(dictionary)} ({lang.num_source} source, {lang.num_target} "
                   f"target, {lang.num_foreign} foreign types), {lang.num_ambiguous} ambiguous source words, "
                   f"{train_size} train / {test_size} test sentences")
    return Corpus(dictionary, train_src, train_tgt, test_src, test_tgt, ood, description)


def synthetic_ood(test_src: List[Sentence], test_tgt: List[Sentence], dictionary: Dictionary,
                  seed: int) -> Dict[str, List[Sentence]]:
    """OOD sources derived from any test set: ``permuted``, ``copy`` and ``noise``."""
    rng = np.random.default_rng([seed, 5])
    permuted = [[s[i] for i in rng.permutation(len(s))] for s in test_src]
    copy = [list(t) for t in test_tgt]
    content = dictionary.words[len(SPECIALS):]
    noise = [[content[i] for i in rng.integers(len(content), size=len(s))] for s in test_src]
    return {"permuted": permuted, "copy": copy, "noise": noise}


# --------------------------------------------------------------------------------------------------
# User files
# --------------------------------------------------------------------------------------------------
def read_lines(path: str, flag: str = "") -> List[Sentence]:
    """Whitespace-tokenised lines of a UTF-8 text file.

    Raises DataError naming the option (``flag``) and the file when it is missing, not UTF-8 text (with the
    line) or has no non-blank line.
    """
    name = f"{flag} {path}" if flag else str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read().split(b"\n")
    except OSError as e:
        raise DataError(f"{name}: cannot read the file ({e.strerror})") from None
    if raw and raw[-1] == b"":
        raw.pop()
    lines = []
    for number, line in enumerate(raw, 1):
        try:
            lines.append(line.decode("utf-8").split())
        except UnicodeDecodeError as e:
            raise DataError(f"{name}: expected UTF-8 text, line {number} has the byte "
                             f"0x{line[e.start]:02x} at column {e.start + 1}") from None
    if not any(lines):
        raise DataError(f"{name}: the file is empty (expected one sentence per line)")
    return lines


def add_ood_files(ood: Dict[str, List[Sentence]], paths: Sequence[str]) -> None:
    """Add each OOD source file as a set named after the file (made unique)."""
    for p in paths:
        name = Path(p).stem
        while name in ood:
            name += "_"
        ood[name] = read_lines(p, "--ood-src")


def file_corpus(train_src: str, train_tgt: str, test_src: str, test_tgt: str,
                ood_src: Sequence[str] = (), vocab: Optional[int] = None, seed: int = 0) -> Corpus:
    """A corpus from parallel text files (one sentence per line, whitespace tokens).

    The joint dictionary holds the training types by decreasing frequency, capped at ``vocab`` entries
    (specials included) when given; others map to ``<unk>``. Besides the user's OOD files, the
    ``permuted``, ``copy`` and ``noise`` sets are derived from the test set.
    """
    paths = dict(train_src=train_src, train_tgt=train_tgt, test_src=test_src, test_tgt=test_tgt)
    data = {name: read_lines(p, "--" + name.replace("_", "-")) for name, p in paths.items()}
    for a, b in (("train_src", "train_tgt"), ("test_src", "test_tgt")):
        if len(data[a]) != len(data[b]):
            raise DataError(f"--{a.replace('_', '-')} {paths[a]} has {len(data[a])} lines but "
                             f"--{b.replace('_', '-')} {paths[b]} has {len(data[b])}: the files are not aligned "
                             "line by line")
    keep = [i for i, (s, t) in enumerate(zip(data["train_src"], data["train_tgt"])) if s and t]
    notes = []
    if len(keep) < len(data["train_src"]):
        dropped = len(data["train_src"]) - len(keep)
        if dropped > len(data["train_src"]) // 2:
            raise DataError(f"--train-src {train_src} / --train-tgt {train_tgt}: {dropped} of "
                             f"{len(data['train_src'])} line pairs have an empty side; the files look misaligned")
        notes.append(f"dropped {dropped} training pairs with an empty side")
    tr_s = [data["train_src"][i] for i in keep]
    tr_t = [data["train_tgt"][i] for i in keep]
    counts = collections.Counter(w for s in tr_s + tr_t for w in s)
    words = sorted(counts, key=lambda w: (-counts[w], w))
    if vocab is not None:
        words = words[:max(0, vocab - len(SPECIALS))]
    dictionary = Dictionary(words)
    ood = synthetic_ood(data["test_src"], data["test_tgt"], dictionary, seed)
    add_ood_files(ood, ood_src)
    description = (f"files {train_src} / {train_tgt}: {len(tr_s)} train / {len(data['test_src'])} test sentences, "
                   f"V={len(dictionary)} word types")
    return Corpus(dictionary, tr_s, tr_t, data["test_src"], data["test_tgt"], ood, description, notes=notes)


def limit_lengths(corpus: Corpus, max_tokens: int) -> None:
    """Keep every sentence within ``max_tokens`` tokens: training pairs with a longer side are dropped, longer
    test and OOD sources are cut (their references stay whole); each change is added to ``corpus.notes``."""
    keep = [i for i, (s, t) in enumerate(zip(corpus.train_src, corpus.train_tgt))
            if len(s) <= max_tokens and len(t) <= max_tokens]
    dropped = len(corpus.train_src) - len(keep)
    if dropped == len(corpus.train_src):
        raise DataError(f"--max-sentence-tokens: every training pair has a side longer than {max_tokens} tokens")
    if dropped:
        corpus.train_src = [corpus.train_src[i] for i in keep]
        corpus.train_tgt = [corpus.train_tgt[i] for i in keep]
        corpus.notes.append(f"dropped {dropped} training pairs longer than {max_tokens} tokens "
                            "(--max-sentence-tokens)")
    for name, sents in [("test", corpus.test_src), *corpus.ood_src.items()]:
        cut = sum(len(s) > max_tokens for s in sents)
        if cut:
            sents[:] = [s[:max_tokens] for s in sents]
            corpus.notes.append(f"cut {cut} {name} sources to {max_tokens} tokens (--max-sentence-tokens)")


def length_ratio(src: Sequence[Sentence], tgt: Sequence[Sentence], quantile: float = 0.99) -> float:
    """The ``quantile`` of target/source length ratios over the pairs (for the decoding length limit)."""
    return float(np.quantile([len(t) / max(1, len(s)) for s, t in zip(src, tgt)], quantile))
