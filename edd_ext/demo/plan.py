"""How long a demo configuration will take on this machine: estimated before the run from a few timed trial
steps of a model of the configured size on a batch of the run's data (a second or two), then compared with
the measured phase times in ``results.json``.

The estimate counts the work of every phase in units of the trial steps:

* teachers: ``M x teacher_steps`` training steps;
* students: per step, ``M`` teacher forward passes, one ``ensemble_stats`` call and, per student, a training
  step plus one fused loss's forward and backward (the EnD² warm start adds a second such loop);
* evaluation: per system and batch, one incremental decoder step per target token per model, plus the
  teacher-forced scoring pass.

It ignores the Monte-Carlo measures of the logit students and everything outside these loops, and the trial
steps see the machine's load at that moment, so read it as "roughly".
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict

import torch
import torch.nn.functional as F

import edd_ext as E

from .corpus import BOS, PAD
from .model import ModelConfig, Seq2Seq
from .train import Batch


@dataclass
class Workload:
    """What a run does, in the units the estimate counts."""

    members: int
    teacher_steps: int
    student_steps: int
    students: int  # students trained side by side in the main distillation loop
    warm_start_steps: int  # steps of the EnD² warm-start loop (0 without one)
    eval_models: int  # models over all evaluated systems (the ensemble counts M)
    eval_sentences: int  # test + OOD sources
    decode_rows: int  # sources per decoding batch
    beam: int
    hypothesis_len: float  # tokens per hypothesis, EOS included


def _median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 3) -> float:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def trial_step_seconds(cfg: ModelConfig, batch: Batch, *, members: int, decode_rows: int,
                       device: torch.device) -> Dict[str, float]:
    """Seconds of one training step, one forward pass, one ``ensemble_stats`` call, one fused loss (forward
    and backward) on ``batch``, and one incremental decoding step of ``decode_rows`` rows. The global random
    state is left as it was, so the run that follows is unchanged."""
    batch = batch.to(device)
    cuda = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(0)
        model = Seq2Seq(cfg).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def train_step():
            logits, _ = model(batch.src, batch.prev)
            loss = F.cross_entropy(logits.flatten(0, 1), batch.target.flatten(), ignore_index=PAD)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        out = {"train_step": _median_seconds(train_step, device)}
        model.eval()
        with torch.no_grad():
            out["forward"] = _median_seconds(lambda: model(batch.src, batch.prev), device)
            teacher = torch.randn(*batch.prev.shape, members, cfg.vocab_size, device=device)
            out["ensemble_stats"] = _median_seconds(lambda: E.ensemble_stats(teacher), device)
            stats = E.ensemble_stats(teacher)
        student = torch.randn(*batch.prev.shape, cfg.vocab_size, device=device, requires_grad=True)
        out["loss"] = _median_seconds(
            lambda: E.proxy_dirichlet_kl(student, stats, mask=batch.mask).backward(), device)
        with torch.no_grad():
            src = batch.src[torch.arange(decode_rows, device=device) % batch.src.shape[0]]
            memory, src_pad = model.encode(src)
            bos = torch.full((decode_rows,), BOS, dtype=torch.long, device=device)
            decoder = model.start_decoding(memory, src_pad, cfg.max_len)
            out["decode_step"] = _median_seconds(lambda: decoder.step(bos), device)
    return out


def estimate_seconds(trial: Dict[str, float], work: Workload, batch_rows: int) -> Dict[str, float]:
    """Estimated seconds per phase (``teachers_s``, ``students_s``, ``evaluation_s``, ``total_s``) from the
    trial step times of :func:`trial_step_seconds` on a training batch of ``batch_rows`` sentences."""
    student_step = trial["train_step"] + trial["loss"]
    shared = work.members * trial["forward"] + trial["ensemble_stats"]
    teachers = work.members * work.teacher_steps * trial["train_step"]
    students = (work.student_steps * (shared + work.students * student_step)
                + work.warm_start_steps * (shared + student_step))
    batches = math.ceil(work.eval_sentences / max(1, work.decode_rows))
    scoring = trial["forward"] * work.decode_rows * work.beam / max(1, batch_rows)
    evaluation = work.eval_models * batches * (work.hypothesis_len * trial["decode_step"] + scoring)
    return {"teachers_s": teachers, "students_s": students, "evaluation_s": evaluation,
            "total_s": teachers + students + evaluation}
