"""A real parallel corpus from the message catalogs of translated programs: each message's original English
text (``msgid``) and its translation (``msgstr``), read from the compiled gettext catalogs (``.mo``) that Debian
packages install under ``/usr/share/locale/<lang>/LC_MESSAGES/`` (git, coreutils, PostgreSQL, GnuPG, ...).

    python python_examples/po_corpus.py OUT_DIR [--lang de] [--ood-lang fr] [--locale-dir /usr/share/locale]
    python -m edd_ext.demo --train-src OUT_DIR/train.src --train-tgt OUT_DIR/train.tgt \\
        --test-src OUT_DIR/test.src --test-tgt OUT_DIR/test.tgt \\
        --ood-src OUT_DIR/ood-domain.src --ood-src OUT_DIR/ood-foreign.src --bpe 4000

Writes ``train.src/.tgt`` and ``test.src/.tgt`` (English -> ``--lang``, one message line per line, raw text),
two out-of-distribution source sets, and ``manifest.json`` (catalogs, the Debian packages and versions that
ship them where ``dpkg-query`` can tell, counts, options):

* ``ood-domain.src``: English messages of catalogs held out of training (``--ood-domains``, by default GTK's
  widget property descriptions: the same language, another kind of text);
* ``ood-foreign.src``: the test messages in ``--ood-lang`` (a language no model saw), so a model that detects
  it is detecting the language, not the content.

What is kept: the singular form of each message (``msgstr[0]`` for plural ones), without its ``msgctxt``;
multi-line messages split into line pairs when both sides have the same number of lines (help texts), else
dropped; whitespace collapsed; pairs with an empty side, no letter in the source, or a translation equal to the
source (names, format strings left untranslated) dropped; each source text kept once (its first catalog in
name order), so no test source occurs in training. The split is seeded (``--seed``). A ``.po`` catalog can be
compiled first with ``msgfmt FILE.po -o FILE.mo``. The catalogs' own licences apply to the text (mostly
the GPL/LGPL or the program's licence, as each package's ``/usr/share/doc/<package>/copyright`` says).
"""
from __future__ import annotations

import argparse
import gettext
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

#: Catalogs left out by default: lists of language, country, script and currency names.
SKIP_PREFIXES = ("iso_",)
#: Default held-out catalogs: GTK's widget property descriptions.
OOD_DOMAINS = ("gtk20-properties",)

Pair = Tuple[str, str]


def read_catalog(path: Path) -> Dict[str, str]:
    """msgid -> msgstr of one compiled catalog (``.mo``), without the header, contexts or plural forms
    beyond the singular."""
    with open(path, "rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog
    out: Dict[str, str] = {}
    for key, value in catalog.items():
        if isinstance(key, tuple):  # plural: (msgid, n) -> msgstr[n]
            if key[1] != 0:
                continue
            key = key[0]
        key = key.split("\x04")[-1]  # "msgctxt\x04msgid"
        if key:
            out[key] = value
    return out


def message_pairs(catalog: Dict[str, str]) -> List[Pair]:
    """Line pairs of a catalog, cleaned as the module docstring says (uniqueness is the caller's)."""
    pairs = []
    for msgid, msgstr in catalog.items():
        src_lines, tgt_lines = msgid.strip("\n").split("\n"), msgstr.strip("\n").split("\n")
        if len(src_lines) != len(tgt_lines):
            continue
        for s, t in zip(src_lines, tgt_lines):
            s, t = " ".join(s.split()), " ".join(t.split())
            if s and t and s != t and re.search("[A-Za-z]", s):
                pairs.append((s, t))
    return pairs


def catalogs(locale_dir: Path, lang: str) -> Dict[str, Path]:
    """Catalog name (gettext domain) -> path, for every ``.mo`` of ``lang``."""
    return {p.stem: p for p in sorted((locale_dir / lang / "LC_MESSAGES").glob("*.mo"))}


def unique_pairs(paths: Iterable[Path]) -> Dict[str, Tuple[str, str]]:
    """source -> (translation, catalog name): the first catalog's translation of each source text.
    Catalogs that cannot be read as UTF-8 (a few old ones use another charset) are skipped."""
    out: Dict[str, Tuple[str, str]] = {}
    for path in paths:
        try:
            pairs = message_pairs(read_catalog(path))
        except (UnicodeDecodeError, OSError) as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
            continue
        for s, t in pairs:
            out.setdefault(s, (t, path.stem))
    return out


def _package(path: Path) -> Optional[str]:
    """'package version' of the Debian package that ships ``path`` (None without dpkg)."""
    try:
        owner = subprocess.run(["dpkg-query", "-S", str(path)], capture_output=True, text=True, check=True)
        name = owner.stdout.split(":")[0].strip()
        version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True, text=True,
                                 check=True).stdout.strip()
        return f"{name} {version}"
    except (OSError, subprocess.CalledProcessError):
        return None


def build(out_dir: Path, *, locale_dir: Path = Path("/usr/share/locale"), lang: str = "de", ood_lang: str = "fr",
          domains: Optional[Sequence[str]] = None, ood_domains: Sequence[str] = OOD_DOMAINS, test_size: int = 500,
          ood_size: int = 500, seed: int = 0) -> Dict:
    """Write the corpus files to ``out_dir`` and return the manifest (also written as ``manifest.json``)."""
    available = catalogs(locale_dir, lang)
    if not available:
        raise ValueError(f"--locale-dir {locale_dir}: no {lang}/LC_MESSAGES/*.mo catalogs there")
    if domains is None:
        domains = [d for d in available if not d.startswith(SKIP_PREFIXES) and d not in ood_domains]
    missing = [d for d in list(domains) + list(ood_domains) if d not in available]
    if missing:
        raise ValueError(f"--domains/--ood-domains: no {lang} catalog for {missing} in {locale_dir}")
    overlap = set(domains) & set(ood_domains)
    if overlap:
        raise ValueError(f"--domains and --ood-domains: expected disjoint lists, both name {sorted(overlap)}")
    pairs = unique_pairs(available[d] for d in domains)
    sources = sorted(pairs)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sources))
    if len(sources) < 2 * test_size:
        raise ValueError(f"--test-size {test_size}: the catalogs give only {len(sources)} pairs")
    test = [sources[i] for i in order[:test_size]]
    train = [sources[i] for i in order[test_size:]]

    # OOD 1: messages of held-out catalogs that occur in no training catalog.
    held_out = [s for s in sorted(unique_pairs(available[d] for d in ood_domains)) if s not in pairs]
    domain_ood = [held_out[i] for i in sorted(rng.permutation(len(held_out))[:ood_size])]
    # OOD 2: the test messages in another language, from the same catalogs.
    foreign_catalog: Dict[str, str] = {}
    for d in domains:
        path = locale_dir / ood_lang / "LC_MESSAGES" / f"{d}.mo"
        if path.exists():
            for s, t in unique_pairs([path]).items():
                foreign_catalog.setdefault(s, t[0])
    foreign = [foreign_catalog[s] for s in test if s in foreign_catalog][:ood_size]

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"train.src": train, "train.tgt": [pairs[s][0] for s in train], "test.src": test,
             "test.tgt": [pairs[s][0] for s in test], "ood-domain.src": domain_ood, "ood-foreign.src": foreign}
    for name, lines in files.items():
        (out_dir / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    used = sorted(set(domains) | set(ood_domains))
    manifest = {
        "source_language": "en", "target_language": lang, "foreign_language": ood_lang,
        "locale_dir": str(locale_dir), "seed": seed,
        "catalogs": {d: {"path": str(available[d]), "package": _package(available[d]),
                         "pairs": sum(1 for t, c in pairs.values() if c == d)} for d in used},
        "ood_domains": list(ood_domains),
        "counts": {name: len(lines) for name, lines in files.items()},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--locale-dir", type=Path, default=Path("/usr/share/locale"))
    p.add_argument("--lang", default="de", help="target language (default: %(default)s)")
    p.add_argument("--ood-lang", default="fr", help="language of the foreign OOD set (default: %(default)s)")
    p.add_argument("--domains", default=None,
                   help="comma-separated catalogs for training and test (default: every catalog of --lang but "
                        "the iso_* name lists and --ood-domains)")
    p.add_argument("--ood-domains", default=",".join(OOD_DOMAINS),
                   help="comma-separated held-out catalogs for the domain OOD set (default: %(default)s)")
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--ood-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    split = lambda text: [d for d in text.split(",") if d]  # noqa: E731
    try:
        manifest = build(args.out_dir, locale_dir=args.locale_dir, lang=args.lang, ood_lang=args.ood_lang,
                         domains=split(args.domains) if args.domains else None, ood_domains=split(args.ood_domains),
                         test_size=args.test_size, ood_size=args.ood_size, seed=args.seed)
    except ValueError as e:
        p.error(str(e))
    print(json.dumps(manifest["counts"]), f"from {len(manifest['catalogs'])} catalogs; wrote {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
