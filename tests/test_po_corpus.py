"""The message-catalog corpus loader (``python_examples/po_corpus.py``) on a tiny sample: two German catalogs
and one French catalog under ``tests/data/locale``, compiled from the ``.po`` files beside them with
``msgfmt X.LANG.po -o LANG/LC_MESSAGES/X.mo`` (GNU gettext 0.21)."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCALE = ROOT / "tests" / "data" / "locale"
# loaded from its file: python_examples/ on sys.path would make its transformers/ and fairseq/ folders importable
# as namespace packages named like the real libraries, and the optional tests would no longer skip without them
_SPEC = importlib.util.spec_from_file_location("po_corpus", ROOT / "python_examples" / "po_corpus.py")
po_corpus = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(po_corpus)

PROG_PAIRS = {
    "cannot open file": "Datei kann nicht geöffnet werden",
    "file not found": "Datei nicht gefunden",
    "permission denied": "Zugriff verweigert",
    "--help display this help": "--help diese Hilfe anzeigen",  # a help text, split line by line
    "--version output version information": "--version Versionsinformation ausgeben",
    "Open": "Öffnen",  # without its msgctxt
    "%d file removed": "%d Datei entfernt",  # the singular of a plural message
}
FRENCH = {"cannot open file": "impossible d'ouvrir le fichier", "file not found": "fichier introuvable",
          "permission denied": "permission refusée", "%d file removed": "%d fichier supprimé"}


def test_catalog_pairs_are_cleaned():
    pairs = dict(po_corpus.message_pairs(po_corpus.read_catalog(LOCALE / "de" / "LC_MESSAGES" / "prog.mo")))
    # Dropped: a two-line message with a one-line translation, "%s: %s" and "Git" (left as they are), the
    # untranslated message (msgfmt leaves it out), the header.
    assert pairs == PROG_PAIRS


def _read(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_build_writes_a_seeded_split_and_two_ood_sets(tmp_path):
    manifest = po_corpus.build(tmp_path, locale_dir=LOCALE, lang="de", ood_lang="fr", ood_domains=["gui"],
                               test_size=2, ood_size=5, seed=0)
    train, test = _read(tmp_path / "train.src"), _read(tmp_path / "test.src")
    assert sorted(train + test) == sorted(PROG_PAIRS) and not set(train) & set(test) and len(test) == 2
    for split, sources in (("train", train), ("test", test)):
        assert _read(tmp_path / f"{split}.tgt") == [PROG_PAIRS[s] for s in sources]
    # The held-out catalog's messages, less the one that also occurs in training.
    assert _read(tmp_path / "ood-domain.src") == ["The label of the button", "Whether the widget is visible"]
    assert _read(tmp_path / "ood-foreign.src") == [FRENCH[s] for s in test if s in FRENCH]
    assert manifest["counts"] == {"train.src": 5, "train.tgt": 5, "test.src": 2, "test.tgt": 2,
                                  "ood-domain.src": 2, "ood-foreign.src": len(_read(tmp_path / "ood-foreign.src"))}
    assert set(manifest["catalogs"]) == {"prog", "gui"}
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    again = tmp_path / "again"
    po_corpus.build(again, locale_dir=LOCALE, lang="de", ood_lang="fr", ood_domains=["gui"], test_size=2, seed=0)
    assert _read(again / "test.src") == test  # the same seed, the same split


def test_build_errors(tmp_path):
    with pytest.raises(ValueError, match="no xx/LC_MESSAGES"):
        po_corpus.build(tmp_path, locale_dir=LOCALE, lang="xx")
    with pytest.raises(ValueError, match="no de catalog for \\['nothere'\\]"):
        po_corpus.build(tmp_path, locale_dir=LOCALE, lang="de", ood_domains=["nothere"])
    with pytest.raises(ValueError, match="disjoint"):
        po_corpus.build(tmp_path, locale_dir=LOCALE, lang="de", domains=["prog", "gui"], ood_domains=["gui"])
    with pytest.raises(ValueError, match="--test-size 10"):
        po_corpus.build(tmp_path, locale_dir=LOCALE, lang="de", ood_domains=["gui"], test_size=10)
