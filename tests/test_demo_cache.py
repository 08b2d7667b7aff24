"""The demo's offline distillation (--teacher-cache-topk K): the students train from an edd_ext.cache top-k cache of
the training corpus instead of running the teachers; every batch reads its own sentences' statistics."""
import math

import numpy as np
import pytest
import torch
from test_demo import _tiny_setup

import edd_ext as E
from edd_ext import reference
from edd_ext.demo.__main__ import parse_args
from edd_ext.demo.model import Seq2Seq
from edd_ext.demo.train import batches, build_teacher_cache, teacher_logits, train_students


def test_the_cache_gives_each_batch_its_sentences_statistics(tmp_path):
    cfg, teachers, src, tgt = _tiny_setup()
    cache = build_teacher_cache(teachers, src, tgt, str(tmp_path), top_k=cfg.vocab_size, storage_dtype="float32",
                                progress=False)
    assert len(cache) == len(src) and cache.top_k == cfg.vocab_size
    for b in batches(src, tgt, 8, 3, np.random.default_rng(0)):
        live = E.ensemble_stats(teacher_logits(teachers, b.src, b.prev))
        cached = reference.top_k_dense_stats(cache.batch(b.index, length=b.target.shape[1]))
        for field in ("mean_probs", "mean_log_probs", "rmi"):
            torch.testing.assert_close(getattr(cached, field)[b.mask], getattr(live, field)[b.mask], rtol=1e-5,
                                       atol=1e-6)


def test_students_train_from_the_cache(tmp_path):
    cfg, teachers, src, tgt = _tiny_setup()
    cache = build_teacher_cache(teachers, src, tgt, str(tmp_path), top_k=16, progress=False)
    students = {"EnD": Seq2Seq(cfg), "EnD2": Seq2Seq(cfg), "Proxy-Dirichlet": Seq2Seq(cfg)}
    info = train_students(students, teachers, src, tgt, steps=3, batch_size=8, lr=1e-3, seed=0, progress=False,
                          cache=cache)
    assert list(info) == list(students) and all(math.isfinite(v["final_loss"]) for v in info.values())


def test_logit_students_need_live_teachers(tmp_path):
    cfg, teachers, src, tgt = _tiny_setup()
    cache = build_teacher_cache(teachers, src, tgt, str(tmp_path), top_k=8, progress=False)
    with pytest.raises(ValueError, match="logit-space students need every member's logits"):
        train_students({"Logit-Gaussian": Seq2Seq(cfg, log_scale_head=True)}, teachers, src, tgt, steps=1,
                       batch_size=8, lr=1e-3, seed=0, progress=False, cache=cache)


def test_cache_flag():
    assert parse_args(["--quick"]).teacher_cache_topk is None
    args = parse_args(["--quick", "--teacher-cache-topk", "64"])
    assert args.teacher_cache_topk == 64 and args.methods == ["EnD", "EnD2", "Proxy-Dirichlet"]
    for bad in (["--teacher-cache-topk", "0"], ["--teacher-cache-topk", "8", "--methods", "Logit-Laplace"]):
        with pytest.raises(SystemExit):
            parse_args(["--quick", *bad])
