#!/usr/bin/env python
"""Write a small deterministic parallel corpus for the fairseq example, as plain text fairseq-preprocess reads.

The sentences come from the project's toy translation language (``edd_ext.demo.corpus.toy_corpus``): Zipfian
source words, a lexicon in which about a third of the words have several valid translations (genuine data
uncertainty) and adjective-noun swaps. Out-of-domain source sets are derived from the in-domain test set.

Writes, under OUT:
  train.src/.tgt, valid.src/.tgt, test.src/.tgt     in-domain splits
  ood_<name>.src/.tgt                                out-of-domain sources (targets are empty lines: they have
                                                     no reference)
  dict.txt                                           the full joint vocabulary in fairseq's format, so that
                                                     words never seen in training still get their own id

Usage: python make_corpus.py OUT [--vocab 200] [--train 4000] [--test 200] [--ood permuted,foreign] [--seed 0]
"""
import argparse
import os
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--vocab", type=int, default=200, help="joint vocabulary size (>= 40)")
    p.add_argument("--train", type=int, default=4000, help="training sentence pairs")
    p.add_argument("--test", type=int, default=200, help="sentences in valid, in test and in each OOD set")
    p.add_argument("--ood", default="permuted,foreign",
                   help="comma-separated OOD sets among permuted, copy, noise, foreign")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from edd_ext.demo.corpus import SPECIALS, toy_corpus

    corpus = toy_corpus(vocab=args.vocab, train_size=args.train, test_size=2 * args.test, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)

    def write(name, sentences):
        with open(os.path.join(args.out, name), "w", encoding="utf-8") as f:
            for s in sentences:
                f.write(" ".join(s) + "\n")

    n = args.test
    write("train.src", corpus.train_src)
    write("train.tgt", corpus.train_tgt)
    write("valid.src", corpus.test_src[:n])
    write("valid.tgt", corpus.test_tgt[:n])
    write("test.src", corpus.test_src[n:])
    write("test.tgt", corpus.test_tgt[n:])
    for name in [x for x in args.ood.split(",") if x]:
        if name not in corpus.ood_src:
            sys.exit(f"--ood: unknown set {name!r}; expected some of {sorted(corpus.ood_src)}")
        # The OOD sets are derived sentence by sentence from the whole test list; keep those of the test half.
        sentences = corpus.ood_src[name][n:2 * n] if len(corpus.ood_src[name]) >= 2 * n else corpus.ood_src[name][:n]
        write(f"ood_{name}.src", sentences)
        write(f"ood_{name}.tgt", [[] for _ in sentences])
    with open(os.path.join(args.out, "dict.txt"), "w", encoding="utf-8") as f:
        for word in corpus.dictionary.words:
            if word not in SPECIALS:
                f.write(f"{word} 1\n")
    print(f"{args.out}: {corpus.description}; valid/test {n} each; OOD: {args.ood}")


if __name__ == "__main__":
    main()
