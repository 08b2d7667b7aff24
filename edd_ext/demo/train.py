"""Training: batching, the teachers (cross-entropy), and the students (the library's distillation losses).

All students are trained in one loop: each batch runs the M teachers once, computes the ensemble
statistics once with ``ensemble_stats`` and gives every student a step on the same data.

The logit-space students regress all V teacher log-probabilities. In a model this small the tail classes
(thousands of log-probabilities per position) take the capacity and the gradient, and the top class, which
decides the translation, is learnt far more slowly than with a probability-space loss. So by default
their objective is the logit NLL averaged over the vocabulary plus ``logit_anchor`` times the EnD loss on
the location (``ensemble_kl(loc, stats)``); ``--logit-anchor 0`` trains with the logit NLL alone. Their
output biases also start at the teachers' per-class mean log-probability and spread, measured on one
batch, so that Adam need not move them by ~10 nats first.

The EnD² student (Dirichlet NLL, alpha = exp(z) + 1) does not train from a random initialisation. Its
gradient, (alpha_k - 1)(psi(alpha_k) - psi(alpha_0) - mean log p_k), is weighted by exp(z_k): at
initialisation the few classes with large random logits dominate it, and within ~50 steps every logit,
the correct class's included, is pushed below z ~ -3, where exp(z_k) ~ 0 and the gradient vanishes (a flat
Dirichlet, alpha_k ~ 1; measured at V = 150, 600 and 2000, with lower learning rates and with teacher
temperature annealing too). So by default (``end2_init="EnD"``) it starts from the trained EnD student and
is then trained with the Dirichlet NLL for the same number of steps, with a fresh optimiser (its warm-up
keeps Adam from taking the NLL's ~1e3x larger gradients at the EnD state's step sizes) at a third of the
learning rate; its reported training time includes the EnD phase. ``end2_init="scratch"`` reproduces the
collapse.

With ``linear=True`` every student is trained through the fused linear losses (``edd_ext.linear_*``): the loss
takes the student's last decoder states and its output layer(s), and the teachers as ``edd_ext.LinearTeachers``
(their decoder states and output layers), so neither the ``[B, T, V]`` student logits nor the ``[B, T, M, V]``
teacher logits are formed; the objectives, and so the results to rounding, are the same.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

import edd_ext as E

from .corpus import BOS, EOS, PAD
from .model import Seq2Seq

#: Student methods: name -> (library loss, whether the model has a log-scale head).
METHODS = {
    "EnD": ("ensemble_kl", False),
    "EnD2": ("dirichlet_nll", False),
    "Proxy-Dirichlet": ("proxy_dirichlet_kl", False),
    "Logit-Gaussian": ("logit_gaussian_nll", True),
    "Logit-Laplace": ("logit_laplace_nll", True),
}


@dataclass
class Batch:
    src: Tensor  # [B, S]
    prev: Tensor  # [B, T]  BOS + target
    target: Tensor  # [B, T]  target + EOS
    mask: Tensor  # [B, T]  True at real target tokens
    index: Optional[np.ndarray] = None  # [B] the sentences' corpus indices (batches() sets it)

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) for t in (self.src, self.prev, self.target, self.mask)), index=self.index)


def pad(rows: Sequence[Sequence[int]], value: int = PAD) -> Tensor:
    width = max(1, max(len(r) for r in rows))
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return torch.from_numpy(out)


def make_batch(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> Batch:
    prev = pad([[BOS] + list(t) for t in tgt])
    target = pad([list(t) + [EOS] for t in tgt])
    return Batch(pad(src), prev, target, target.ne(PAD))


def batches(src: List[List[int]], tgt: List[List[int]], batch_size: int, steps: int,
            rng: np.random.Generator, max_tokens: Optional[int] = None) -> Iterator[Batch]:
    """``steps`` batches sampled by shuffled epochs: ``batch_size`` sentences each, or, with ``max_tokens``,
    batches of similar lengths with at most ``max_tokens`` padded tokens (source + target) each."""
    if max_tokens:
        yield from _token_batches(src, tgt, max_tokens, steps, rng)
        return
    order = np.empty(0, dtype=np.int64)
    for _ in range(steps):
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(len(src))])
        idx, order = order[:batch_size], order[batch_size:]
        batch = make_batch([src[i] for i in idx], [tgt[i] for i in idx])
        batch.index = idx
        yield batch


def _token_batches(src, tgt, max_tokens: int, steps: int, rng: np.random.Generator) -> Iterator[Batch]:
    """Each epoch: shuffle, sort pools of about 50 batches by length, cut them into batches of at most
    ``max_tokens`` padded tokens (rows x longest source-plus-target; one pair at least), shuffle the batches."""
    lengths = np.array([len(s) + len(t) + 1 for s, t in zip(src, tgt)])
    pool = max(1, 50 * max_tokens // max(1, int(lengths.mean())))
    done = 0
    while True:
        order = rng.permutation(len(src))
        epoch: List[List[int]] = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start:start + pool].tolist(), key=lambda i: lengths[i])
            rows: List[int] = []
            for i in chunk:
                if rows and (len(rows) + 1) * lengths[i] > max_tokens:
                    epoch.append(rows)
                    rows = []
                rows.append(i)
            epoch.append(rows)
        for j in rng.permutation(len(epoch)):
            if done == steps:
                return
            batch = make_batch([src[i] for i in epoch[j]], [tgt[i] for i in epoch[j]])
            batch.index = np.asarray(epoch[j])
            yield batch
            done += 1


def _optimizer(model: torch.nn.Module, lr: float, steps: int):
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    warmup = max(1, steps // 10)

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to 5 %
        if step < warmup:
            return (step + 1) / warmup
        return max(0.05, 1.0 - (step - warmup) / max(1, steps - warmup))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def _step(model, opt, sched, loss: Tensor, clip: float = 1.0) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    sched.step()


def train_teacher(model: Seq2Seq, src, tgt, *, steps: int, batch_size: int, lr: float, seed: int,
                  label_smoothing: float = 0.1, desc: str = "teacher", progress: bool = True,
                  max_tokens: Optional[int] = None) -> Dict[str, float]:
    """Maximum-likelihood training of one teacher; its seed sets the data order (the init is set by the caller)."""
    model.train()
    device = model.embed.weight.device
    opt, sched = _optimizer(model, lr, steps)
    rng = np.random.default_rng([seed, 10])
    start, loss_avg = time.perf_counter(), float("nan")
    bar = tqdm(batches(src, tgt, batch_size, steps, rng, max_tokens), total=steps, desc=desc, disable=not progress,
               leave=False, dynamic_ncols=True)
    for i, b in enumerate(bar):
        b = b.to(device)
        logits, _ = model(b.src, b.prev)
        loss = F.cross_entropy(logits.flatten(0, 1), b.target.flatten(), ignore_index=PAD,
                               label_smoothing=label_smoothing)
        _step(model, opt, sched, loss)
        loss_avg = loss.item() if i == 0 else 0.95 * loss_avg + 0.05 * loss.item()
        if i % 20 == 0:
            bar.set_postfix(nll=f"{loss_avg:.3f}")
    model.eval()
    return {"train_s": time.perf_counter() - start, "final_loss": loss_avg}


def student_loss(method: str, outputs: Tuple[Tensor, Optional[Tensor]], teacher_logits: Tensor, stats,
                 mask: Tensor, logit_anchor: float = 1.0) -> Tensor:
    """The library loss of ``method`` for one batch (teacher statistics computed once, shared).

    Logit-space students: ``nll(loc, log_scale, teacher_logits) / V + logit_anchor * ensemble_kl(loc, stats)``
    (see the module docstring).
    """
    fn_name, _ = METHODS[method]
    loc, log_scale = outputs
    if log_scale is None:
        return getattr(E, fn_name)(loc, stats, mask=mask)
    loss = getattr(E, fn_name)(loc, log_scale, teacher_logits, mask=mask) / loc.shape[-1]
    if logit_anchor:
        loss = loss + logit_anchor * E.ensemble_kl(loc, stats, mask=mask)
    return loss


def student_linear_loss(method: str, model: Seq2Seq, batch: Batch, teachers: E.LinearTeachers,
                        logit_anchor: float = 1.0) -> Tensor:
    """:func:`student_loss` through the fused linear losses, from ``model``'s decoder states and output layer(s)
    and the teachers' (:func:`linear_teachers`)."""
    fn_name, has_scale = METHODS[method]
    states = model.features(batch.src, batch.prev)
    weight, bias = model.output_layer()
    if not has_scale:
        return getattr(E, "linear_" + fn_name)(states, weight, teachers, linear_bias=bias, mask=batch.mask)
    loss = getattr(E, "linear_" + fn_name)(states, weight, model.log_scale.weight, teachers, loc_bias=bias,
                                           log_scale_bias=model.log_scale.bias, mask=batch.mask)
    loss = loss / weight.shape[0]
    if logit_anchor:
        loss = loss + logit_anchor * E.linear_ensemble_kl(states, weight, teachers, linear_bias=bias, mask=batch.mask)
    return loss


@torch.no_grad()
def linear_teachers(teachers: Sequence[Seq2Seq], src: Tensor, prev: Tensor) -> E.LinearTeachers:
    """The members as their decoder states ``[B, T, d]`` and output layers, one pair per member."""
    return E.LinearTeachers.from_pairs([(t.features(src, prev), *t.output_layer()) for t in teachers])


@torch.no_grad()
def init_logit_student(model: Seq2Seq, teachers: Sequence[Seq2Seq], batch: Batch) -> None:
    """Start a logit-space student's biases at the teachers' per-class log-prob mean and spread."""
    x = torch.log_softmax(teacher_logits(teachers, batch.src, batch.prev).float(), -1)[batch.mask]  # [N, M, V]
    mean = x.mean(1)
    model.out_bias.copy_(mean.mean(0))
    spread = (mean.var(0, unbiased=False) + x.var(1, unbiased=False).mean(0)).clamp_min(1e-4).sqrt()
    model.log_scale.bias.copy_(spread.log())
    model.log_scale.weight.mul_(0.1)


@torch.no_grad()
def teacher_logits(teachers: Sequence[Seq2Seq], src: Tensor, prev: Tensor) -> Tensor:
    """Stacked member logits ``[B, T, M, V]``."""
    return torch.stack([t(src, prev)[0] for t in teachers], dim=-2)


def build_teacher_cache(teachers: Sequence[Seq2Seq], src, tgt, directory: str, *, top_k: int,
                        storage_dtype: str = "float16", progress: bool = True):
    """Run the teachers once over the training corpus and write its top-k statistics cache (``edd_ext.cache``)."""
    for t in teachers:
        t.eval()

    device = teachers[0].embed.weight.device

    def run(indices):
        b = make_batch([src[i] for i in indices], [tgt[i] for i in indices]).to(device)
        return teacher_logits(teachers, b.src, b.prev)

    return E.cache.build_cache(directory, [len(t) + 1 for t in tgt], run, kind="top_k",
                               top_k=min(top_k, teachers[0].cfg.vocab_size), storage_dtype=storage_dtype,
                               teachers=[f"demo teacher {m}" for m in range(len(teachers))],
                               data_fingerprint=E.cache.fingerprint(np.asarray(s, dtype=np.int64) for s in src + tgt),
                               overwrite=True, progress=progress)


def _distil(students: Dict[str, Seq2Seq], teachers: Sequence[Seq2Seq], src, tgt, *, steps: int, batch_size: int,
            lr: float, rng: np.random.Generator, logit_anchor: float, desc: str, progress: bool,
            max_tokens: Optional[int] = None, cache=None,
            linear: bool = False) -> Tuple[Dict[str, Dict[str, float]], float]:
    """``steps`` optimiser steps for every student on the same batches; returns (per-student info, shared s).
    With a teacher ``cache`` the batches' statistics are read from it instead of running the teachers; with
    ``linear`` the students train through the fused linear losses."""
    for model in students.values():
        model.train()
    opts = {name: _optimizer(model, lr, steps) for name, model in students.items()}
    info = {name: {"train_s": 0.0, "final_loss": float("nan")} for name in students}
    shared_s = 0.0
    device = teachers[0].embed.weight.device
    bar = tqdm(batches(src, tgt, batch_size, steps, rng, max_tokens), total=steps, desc=desc, disable=not progress,
               leave=False, dynamic_ncols=True)
    for i, b in enumerate(bar):
        b = b.to(device)
        t0 = time.perf_counter()
        if cache is not None:  # offline distillation: the cached top-k statistics of these sentences
            stats = cache.batch(b.index, length=b.target.shape[1])
            logits, stats = None, type(stats)(*(x.to(device) if torch.is_tensor(x) else x for x in stats))
        elif not linear:
            logits = teacher_logits(teachers, b.src, b.prev)  # [B, T, M, V]
            stats = E.ensemble_stats(logits)  # once per batch, shared by the categorical/Dirichlet losses
        if linear:  # the teachers as decoder states and output layers, or the cached statistics
            members = stats if cache is not None else linear_teachers(teachers, b.src, b.prev)
        shared_s += time.perf_counter() - t0
        for name, model in students.items():
            t0 = time.perf_counter()
            if linear:
                loss = student_linear_loss(name, model, b, members, logit_anchor)
            else:
                loss = student_loss(name, model(b.src, b.prev), logits, stats, b.mask, logit_anchor)
            _step(model, *opts[name], loss)
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"{name}: non-finite training loss {value} at step {i}")
            prev = info[name]["final_loss"]
            info[name]["final_loss"] = value if i == 0 else 0.95 * prev + 0.05 * value
            info[name]["train_s"] += time.perf_counter() - t0
        if i % 10 == 0:
            bar.set_postfix({k.split("-")[-1][:5]: f"{v['final_loss']:.3g}" for k, v in info.items()})
    for model in students.values():
        model.eval()
    return info, shared_s


#: Ways to start the EnD² student (see the module docstring).
END2_INIT = ("EnD", "scratch")


def train_students(students: Dict[str, Seq2Seq], teachers: Sequence[Seq2Seq], src, tgt, *, steps: int,
                   batch_size: int, lr: float, seed: int, logit_anchor: float = 1.0, end2_init: str = "EnD",
                   progress: bool = True, max_tokens: Optional[int] = None, cache=None,
                   linear: bool = False) -> Dict[str, Dict[str, float]]:
    """Distil the ensemble into every student; returns per-student time and final loss. ``linear``: through the
    fused linear losses (see the module docstring).

    With ``end2_init="EnD"`` the EnD² student starts from the trained EnD student (an EnD student is
    trained for it if ``students`` has none) and then gets ``steps`` Dirichlet-NLL steps of its own. With a
    teacher ``cache`` (:func:`build_teacher_cache`) the students read the cached top-k statistics instead of
    running the teachers (the logit-space students, which need every member's logits, cannot).
    """
    if cache is not None and any(model.log_scale is not None for model in students.values()):
        raise ValueError("cache: the logit-space students need every member's logits; train them with the "
                         "teachers")
    if end2_init not in END2_INIT:
        raise ValueError(f"end2_init: expected one of {END2_INIT}, got {end2_init!r}")
    for t in teachers:
        t.eval()
    device = teachers[0].embed.weight.device
    init_batch = next(batches(src, tgt, 8 * batch_size, 1, np.random.default_rng([seed, 21]))).to(device)
    for model in students.values():
        if model.log_scale is not None:
            init_logit_student(model, teachers, init_batch)
    warm_end2 = end2_init == "EnD" and "EnD2" in students
    first = {k: v for k, v in students.items() if not (warm_end2 and k == "EnD2")}
    if warm_end2 and "EnD" not in first:  # a private EnD student from the same initialisation
        first["EnD"] = Seq2Seq(students["EnD2"].cfg).to(device)
        first["EnD"].load_state_dict(students["EnD2"].state_dict())
    info, shared_s = _distil(first, teachers, src, tgt, steps=steps, batch_size=batch_size, lr=lr,
                             rng=np.random.default_rng([seed, 20]), logit_anchor=logit_anchor, desc="students",
                             progress=progress, max_tokens=max_tokens, cache=cache, linear=linear)
    for v in info.values():
        v["teacher_forward_s"] = shared_s
    if warm_end2:
        end2 = students["EnD2"]
        end2.load_state_dict(first["EnD"].state_dict())
        end2_info, end2_shared = _distil({"EnD2": end2}, teachers, src, tgt, steps=steps, batch_size=batch_size,
                                         lr=lr / 3, rng=np.random.default_rng([seed, 22]), logit_anchor=logit_anchor,
                                         desc="EnD2 from EnD", progress=progress, max_tokens=max_tokens,
                                         cache=cache, linear=linear)
        end2_info = end2_info["EnD2"]
        end2_info["train_s"] += info["EnD"]["train_s"]
        end2_info["teacher_forward_s"] = shared_s + end2_shared
        end2_info["init"] = "EnD"
        info["EnD2"] = end2_info
    return {name: info[name] for name in students}
