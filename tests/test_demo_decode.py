"""Decoding in the demo (``edd_ext.demo.decode`` and the models' decoder states): incremental decoding against
full recomputation, beam search against greedy decoding and against exhaustive enumeration, the n-best
aggregation, batching, the subword vocabulary, the data-file checks and the ``--device`` option. Small
random models; every test takes well under a few seconds."""
import itertools
import math

import numpy as np
import pytest
import torch

import edd_ext as E
from edd_ext.demo import corpus as demo_corpus
from edd_ext.demo.__main__ import main, parse_args
from edd_ext.demo.corpus import BOS, EOS, PAD, UNK, DataError
from edd_ext.demo.decode import (
    DirichletSystem,
    EnsembleSystem,
    LengthLimit,
    LogitSystem,
    System,
    batch_groups,
    decode_set,
    score,
    search,
)
from edd_ext.demo.model import ModelConfig, Seq2Seq
from edd_ext.demo.train import batches

V = 40


def _model(seed, *, layers=1, log_scale_head=False, vocab=V, eos_bias=1.5, eos_near_5=None):
    """A random model in eval mode whose hypotheses end at different lengths: EOS gets ``eos_bias``, or with
    ``eos_near_5 = (a, b)`` an output row of ``a`` times the direction of position 5's encoding and bias ``b``,
    so that it becomes likely around the fifth token."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, d_model=32, nhead=4, layers=layers, ffn=48, max_len=24)
    model = Seq2Seq(cfg, log_scale_head=log_scale_head).eval()
    with torch.no_grad():
        if eos_near_5 is None:
            model.out_bias[EOS] += eos_bias
        else:
            model.embed.weight[EOS] = eos_near_5[0] * model.pos[5] / model.pos[5].norm()
            model.out_bias[EOS] = eos_near_5[1]
    return model


def _sources(n=6, seed=0, vocab=V):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (n, 7), generator=g)
    for i in range(n):  # sources of different lengths
        src[i, 7 - i % 4:] = PAD
    return src


def _systems():
    return [
        System("single", [_model(1, eos_near_5=(6, -3))]),
        EnsembleSystem("ensemble", [_model(2), _model(3, layers=2), _model(4)]),
        DirichletSystem("dirichlet", [_model(5, layers=2, eos_near_5=(4, -5))]),
        LogitSystem("logit", [_model(6, log_scale_head=True, eos_near_5=(4, -3))], family="laplace", num_samples=4,
                    seed=0),
    ]


def test_incremental_step_equals_the_full_decoder_pass():
    model = _model(0, layers=2, log_scale_head=True)
    src = _sources()
    memory, src_pad = model.encode(src)
    prev = torch.randint(4, V, (src.shape[0], 10))
    prev[:, 0] = BOS
    with torch.no_grad():
        full = model.decode(memory, src_pad, prev)
        decoder = model.start_decoding(memory, src_pad, max_len=10)
        for t in range(10):
            for got, want in zip(decoder.step(prev[:, t]), full):
                torch.testing.assert_close(got, want[:, t], rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="all used"):
            decoder.step(prev[:, 0])
    with pytest.raises(ValueError, match="eval mode"):
        model.train().start_decoding(memory, src_pad, max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        model.eval().start_decoding(memory, src_pad, max_len=25)


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("system", _systems(), ids=lambda s: s.name)
def test_incremental_search_equals_full_recomputation(system, beam):
    src = _sources()
    limit = torch.tensor([12, 5, 9, 12, 1, 7])
    inc = search(system, src, limit, beam=beam)
    full = search(system, src, limit, beam=beam, incremental=False)
    assert torch.equal(inc.tokens, full.tokens)
    assert torch.equal(inc.lengths, full.lengths)
    torch.testing.assert_close(inc.scores, full.scores, rtol=1e-5, atol=1e-5)
    assert (inc.lengths <= limit[:, None]).all()
    ended = inc.tokens.eq(EOS).any(-1)
    assert ended.any() and (~ended).any()  # some hypotheses end with EOS, some reach their limit
    # The same hypotheses give the same sequence measures, whichever way they were decoded.
    flat = inc.tokens.flatten(0, 1)
    rows = torch.arange(src.shape[0]).repeat_interleave(beam)
    a, b = score(system, src[rows], flat), score(system, src[rows], full.tokens.flatten(0, 1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _reference_greedy(system, src, max_len):
    """Greedy decoding written plainly: full recomputation of every model over the prefix, argmax."""
    state = system.encode(src)
    prev = torch.full((src.shape[0], 1), BOS)
    done = torch.zeros(src.shape[0], dtype=torch.bool)
    for _ in range(max_len):
        logp = system.log_probs(tuple(None if o is None else o[:, -1] for o in system.outputs(state, prev)))
        logp[:, [PAD, BOS, UNK]] = -math.inf
        tok = logp.argmax(-1).masked_fill(done, PAD)
        prev = torch.cat([prev, tok[:, None]], 1)
        done |= tok.eq(EOS)
        if done.all():
            break
    return prev[:, 1:]


@pytest.mark.parametrize("system", _systems(), ids=lambda s: s.name)
def test_beam_one_is_greedy_decoding(system):
    src = _sources()
    nbest = search(system, src, 10, beam=1)
    assert torch.equal(nbest.tokens[:, 0], _reference_greedy(system, src, 10))


def _tiny_vocab_system():
    """A single model over 3 words (+ EOS and the specials), small enough to enumerate every hypothesis."""
    return System("tiny", [_model(11, vocab=7, eos_bias=0.5)])


def test_wide_beam_is_exhaustive_search():
    """With a beam as wide as the hypothesis space, the n-best list is every hypothesis with its exact
    log-probability, ranked by log-probability per token."""
    system = _tiny_vocab_system()
    src = _sources(n=2, vocab=7)
    limit = 3
    words = [4, 5, 6]
    hyps = [list(w) + [EOS] for n in range(limit) for w in itertools.product(words, repeat=n)]
    hyps += [list(w) for w in itertools.product(words, repeat=limit)]  # cut at the limit, no EOS
    assert len(hyps) == 40
    nbest = search(system, src, limit, beam=len(hyps))
    assert torch.isfinite(nbest.scores).all()
    for i in range(src.shape[0]):
        # The oracle: each hypothesis's log-probability from one teacher-forced pass.
        tokens = demo_train_pad(hyps)
        pe = score(system, src[[i]].expand(len(hyps), -1), tokens)["PE"].double()
        lengths = tokens.ne(PAD).sum(-1)
        want = {tuple(h): float(-p * n) for h, p, n in zip(hyps, pe, lengths)}
        got = {tuple(t for t in row if t != PAD): float(s) for row, s in zip(nbest.tokens[i].tolist(), nbest.scores[i])}
        assert got.keys() == want.keys()
        for h in want:
            assert got[h] == pytest.approx(want[h], abs=1e-4), h
        per_token = nbest.scores[i] / nbest.lengths[i]
        assert (per_token[:-1] >= per_token[1:]).all()


def demo_train_pad(rows):
    from edd_ext.demo.train import pad

    return pad(rows)


@pytest.mark.parametrize("system", _systems(), ids=lambda s: s.name)
def test_beam_scores_are_sorted_and_are_the_hypotheses_log_probabilities(system):
    src = _sources()
    nbest = search(system, src, 9, beam=4)
    per_token = nbest.scores / nbest.lengths
    assert (per_token[:, :-1] >= per_token[:, 1:]).all()
    # Distinct hypotheses per source.
    for row in nbest.tokens.tolist():
        assert len({tuple(h) for h in row}) == len(row)
    # Each score is the sum of the system's token log-probabilities (PE is their negative mean).
    rows = torch.arange(src.shape[0]).repeat_interleave(4)
    pe = score(system, src[rows], nbest.tokens.flatten(0, 1))["PE"].view(-1, 4)
    torch.testing.assert_close(nbest.scores, -pe * nbest.lengths, rtol=1e-4, atol=1e-4)


def test_nbest_measures_are_the_weighted_average_over_the_beam():
    system = _systems()[1]
    sources = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    limit = LengthLimit(cap=8)
    hyps, measures, _ = decode_set(system, sources, max_len=limit, width=1, beam=3, progress=False)
    src = demo_train_pad(sources)
    nbest = search(system, src, 8, beam=3)
    per_hyp = score(system, src.repeat_interleave(3, 0), nbest.tokens.flatten(0, 1))
    weights = torch.softmax(nbest.scores.double(), -1)
    for name in system.measures:
        want = (weights * per_hyp[name].view(4, 3).double()).sum(-1)
        torch.testing.assert_close(measures[name].double(), want, rtol=1e-5, atol=1e-6)
    assert hyps == [[t for t in row if t not in (PAD, EOS)] for row in nbest.tokens[:, 0].tolist()]
    # With one hypothesis per source the aggregation is the identity.
    _, one, _ = decode_set(system, sources, max_len=limit, width=1, beam=1, progress=False)
    greedy = search(system, src, 8)
    direct = score(system, src, greedy.tokens[:, 0])
    assert all(torch.equal(one[k], direct[k]) for k in system.measures)


def test_length_sorted_batches_give_the_same_results_in_the_input_order():
    system = _systems()[0]
    g = np.random.default_rng(0)
    sources = [g.integers(4, V, size=int(n)).tolist() for n in g.integers(1, 8, size=30)]
    limit = LengthLimit(cap=12, ratio=1.5, extra=2)
    a = decode_set(system, sources, max_len=limit, width=20000, progress=False)
    b = decode_set(system, sources, max_len=limit, width=20000, by_length=True, progress=False)
    assert a[0] == b[0]
    for k in a[1]:
        torch.testing.assert_close(a[1][k], b[1][k], rtol=1e-5, atol=1e-6)
    assert all(len(h) <= limit(len(s)) for h, s in zip(a[0], sources))


def test_batch_groups_and_length_limit():
    assert LengthLimit(cap=20)(3) == 20
    assert LengthLimit(cap=20, ratio=1.5, extra=2)(4) == 8 and LengthLimit(cap=20, ratio=1.5, extra=2)(30) == 20
    # Fixed limit, corpus order: the old fixed batch size max(8, min(128, 2**24 // (limit * width))).
    groups = batch_groups([10] * 300, width=2 * 5000)
    assert [len(g) for g in groups] == [128, 128, 44] and sum(groups, []) == list(range(300))
    assert [len(g) for g in batch_groups([10] * 20, width=10 ** 9)] == [8, 8, 4]
    limits = [3, 30, 5, 30, 4]
    groups = batch_groups(limits, width=2 ** 24 // 60, min_rows=1, by_length=True)
    assert groups == [[1, 3], [2, 4, 0]]  # longest first; two rows of 30 fit, a third would not


def test_token_batches_hold_similar_lengths_within_the_budget():
    g = np.random.default_rng(1)
    src = [g.integers(4, 50, size=int(n)).tolist() for n in g.integers(1, 30, size=400)]
    tgt = [g.integers(4, 50, size=int(n)).tolist() for n in g.integers(1, 30, size=400)]
    seen = []
    for b in batches(src, tgt, 16, 40, np.random.default_rng(0), max_tokens=300):
        rows = b.src.shape[0]
        assert rows == 1 or rows * (b.src.ne(PAD).sum(1) + b.prev.ne(PAD).sum(1)).max() <= 300
        seen.append(rows)
    assert len(seen) == 40 and max(seen) > 2 * min(seen)  # short pairs share a batch with more rows
    again = [b.src for b in batches(src, tgt, 16, 40, np.random.default_rng(0), max_tokens=300)]
    assert len(again) == 40


# ---- subword vocabulary ----
def _text_corpus():
    words = "the quick brown fox jumps over lazy dogs while seven wizards quietly box jumping frogs".split()
    g = np.random.default_rng(0)
    train = [[words[i] for i in g.integers(len(words), size=int(n))] for n in g.integers(3, 9, size=120)]
    train_tgt = [[w.upper() for w in s] for s in train]
    return demo_corpus.Corpus(demo_corpus.Dictionary([]), train, train_tgt, train[:5],
                              [s + ["(x)"] for s in train_tgt[:5]], {"copy": train_tgt[:5]}, "tiny text")


def test_bpe_segments_every_split_and_decodes_back_to_the_text():
    pytest.importorskip("sentencepiece")
    from edd_ext.demo.subword import Subwords, apply_bpe

    corpus = _text_corpus()
    bpe = apply_bpe(corpus, 60)
    d = bpe.dictionary
    assert d.words[:4] == list(demo_corpus.SPECIALS) and len(d) <= 60
    for words, pieces in zip(corpus.train_src + corpus.test_tgt, bpe.train_src + bpe.test_tgt):
        assert bpe.text(pieces) == " ".join(words)  # lossless round trip
    assert sum(map(len, bpe.train_src)) > sum(map(len, corpus.train_src))  # words were split into pieces
    assert bpe.reference_text() == [" ".join(s) for s in corpus.test_tgt]
    assert set(bpe.ood_src) == {"copy"}
    # Ids agree with SentencePiece's, so decoding ids through the dictionary gives the text back.
    sp = Subwords.train([" ".join(s) for s in corpus.train_src + corpus.train_tgt], 60)
    ids = sp.processor.encode(" ".join(corpus.train_src[0]))
    assert d.encode(bpe.train_src[0]) == ids and bpe.text(d.decode(ids)) == " ".join(corpus.train_src[0])
    with pytest.raises(DataError, match="--bpe"):
        Subwords.train(["a b"], 4)


# ---- the user's files ----
def _write(tmp_path, name, text, mode="w"):
    path = tmp_path / name
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return str(path)


def _files(tmp_path, **override):
    files = {"train_src": "a b c\nd e\nf\n", "train_tgt": "x y\nz\nw v\n", "test_src": "a d\n", "test_tgt": "x z\n"}
    files.update(override)
    return {k: _write(tmp_path, k, v) for k, v in files.items()}


@pytest.mark.parametrize("override, message", [
    (dict(train_tgt=""), r"--train-tgt .*train_tgt: the file is empty"),
    (dict(test_src="\n \n"), r"--test-src .*: the file is empty"),
    (dict(train_src="a b\nc\n"), r"--train-src .* has 2 lines but --train-tgt .* has 3: the files are not aligned"),
    (dict(train_src="a\n\n\n"), r"2 of 3 line pairs have an empty side; the files look misaligned"),
    (dict(test_tgt=b"ok\nbad \xff\n"), r"--test-tgt .*: expected UTF-8 text, line 2 has the byte 0xff at column 5"),
])
def test_file_errors_name_the_option_the_file_and_the_problem(tmp_path, override, message):
    f = _files(tmp_path, **override)
    with pytest.raises(DataError, match=message):
        demo_corpus.file_corpus(f["train_src"], f["train_tgt"], f["test_src"], f["test_tgt"])


def test_missing_file_and_long_sentences(tmp_path, capsys):
    f = _files(tmp_path)
    with pytest.raises(DataError, match="--ood-src .*nothere.txt: cannot read the file"):
        demo_corpus.file_corpus(f["train_src"], f["train_tgt"], f["test_src"], f["test_tgt"],
                                ood_src=[str(tmp_path / "nothere.txt")])
    corpus = demo_corpus.file_corpus(f["train_src"], f["train_tgt"], f["test_src"], f["test_tgt"])
    demo_corpus.limit_lengths(corpus, 2)
    assert corpus.train_src == [["d", "e"], ["f"]] and corpus.train_tgt == [["z"], ["w", "v"]]
    assert "dropped 1 training pairs longer than 2 tokens (--max-sentence-tokens)" in corpus.notes
    assert all(len(s) <= 2 for sents in corpus.ood_src.values() for s in sents)
    with pytest.raises(DataError, match="every training pair"):
        demo_corpus.limit_lengths(corpus, 0)
    # Through the command line: a message, exit status 2, no traceback.
    args = ["--train-src", f["train_src"], "--train-tgt", _write(tmp_path, "short.tgt", "x\n"), "--test-src",
            f["test_src"], "--test-tgt", f["test_tgt"], "--output-dir", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 2
    assert "edd-demo: error: --train-src" in capsys.readouterr().err


# ---- --device ----
def test_device_option(monkeypatch):
    assert parse_args(["--device", "cpu"]).device == "cpu"
    assert parse_args([]).device == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "gpu0", "cpu:x"):
        with pytest.raises(SystemExit):
            parse_args(["--device", bad])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            parse_args(["--device", "cuda"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(E, "cuda_built", lambda: False)
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda"])
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda:3"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU is visible")
def test_device_cuda_without_a_gpu_says_why(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--device", "cuda"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--device cuda: no CUDA device is visible" in err and "use --device cpu" in err


def test_sweep_passes_the_device_on():
    from edd_ext.demo.sweep import parse_sweep_args

    args, rest = parse_sweep_args(["--vocab", "300", "--device", "cpu", "--beam", "2"])
    assert rest == ["--device", "cpu", "--beam", "2"]
    assert parse_args(rest).device == "cpu" and parse_args(rest).beam == 2


def test_trial_steps_leave_the_random_state_alone():
    from edd_ext.demo.plan import Workload, estimate_seconds, trial_step_seconds

    model = _model(0)
    batch = next(batches([[5, 6, 7]] * 8, [[8, 9]] * 8, 4, 1, np.random.default_rng(0)))
    before = torch.get_rng_state()
    trial = trial_step_seconds(model.cfg, batch, members=2, decode_rows=3, device=torch.device("cpu"))
    assert torch.equal(before, torch.get_rng_state())
    assert set(trial) == {"train_step", "forward", "ensemble_stats", "loss", "decode_step"}
    assert all(v > 0 for v in trial.values())
    work = Workload(members=2, teacher_steps=10, student_steps=5, students=3, warm_start_steps=5, eval_models=7,
                    eval_sentences=50, decode_rows=10, beam=1, hypothesis_len=4.0)
    est = estimate_seconds(trial, work, batch_rows=4)
    assert est["teachers_s"] == pytest.approx(20 * trial["train_step"])
    assert est["total_s"] == pytest.approx(est["teachers_s"] + est["students_s"] + est["evaluation_s"])
