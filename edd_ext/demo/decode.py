"""Greedy decoding and uncertainty scoring for every system (ensemble, single model, each student).

A *system* turns decoder outputs into (a) the distribution it decodes with and (b) its token-level
uncertainty measures. After greedy decoding, one teacher-forced pass over the hypotheses gives every
position's outputs; the measures are computed on the real (unmasked) positions only, in chunks so that
Monte-Carlo samples ``[N, S, V]`` stay small, and combined into sequence-level scores:

* TU, DU, MI, EPKL, RMI: chain-rule averages of the token measures over the hypothesis (EOS included);
* PE: -(1/L) sum_l ln p(y_l) under the system's decoding distribution (the ensemble's p̄ for the ensemble);
* EP (ensemble only): -(1/L)(logsumexp_m sum_l ln P_m(y_l) - ln M).

The sequence-level combinations are ``edd_ext.uncertainty.sequence``'s ``chain_rule_average``,
``product_of_expectations`` and ``expectation_of_products``.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

import edd_ext as E
from edd_ext.uncertainty import sequence

from .corpus import BOS, EOS, PAD, UNK
from .model import Seq2Seq
from .train import pad

MEASURES = ("TU", "DU", "MI", "EPKL", "RMI", "PE", "EP")
_FIELDS = (("TU", "total"), ("DU", "data"), ("MI", "mutual_information"), ("EPKL", "epkl"), ("RMI", "rmi"))

#: Upper bound on the floats one uncertainty call materialises (positions x members-or-samples x V).
_CHUNK_ELEMENTS = 1 << 23


def _chunked(fn: Callable[..., Dict[str, Tensor]], *tensors: Tensor, per_row: int) -> Dict[str, Tensor]:
    rows = max(1, _CHUNK_ELEMENTS // max(1, per_row))
    parts: Dict[str, List[Tensor]] = {}
    for chunk, start in enumerate(range(0, tensors[0].shape[0], rows)):
        out = fn(*(t[start:start + rows] for t in tensors), chunk=chunk)
        for k, v in out.items():
            parts.setdefault(k, []).append(v.float())
    return {k: torch.cat(v) for k, v in parts.items()}


def _fields(u) -> Dict[str, Tensor]:
    """The five token measures by their short names; a non-finite value is an error, never a score."""
    fields = {short: getattr(u, name) for short, name in _FIELDS}
    for short, value in fields.items():
        if not bool(torch.isfinite(value).all()):
            raise FloatingPointError(f"non-finite {short} token uncertainty from the library")
    return fields


class System:
    """Decoding distribution and token measures of one or more models."""

    measures: Tuple[str, ...] = ("TU", "PE")

    def __init__(self, name: str, models: Sequence[Seq2Seq]):
        self.name, self.models = name, list(models)

    def encode(self, src: Tensor):
        return [m.encode(src) for m in self.models]

    def outputs(self, state, prev: Tensor):
        """Raw outputs at every position of ``prev``."""
        (memory, src_pad), = state
        return self.models[0].decode(memory, src_pad, prev)

    def log_probs(self, out) -> Tensor:  # [..., V] decoding distribution
        return torch.log_softmax(out[0].float(), -1)

    def token_measures(self, out, tokens: Tensor) -> Dict[str, Tensor]:
        """Measures of the flattened real positions (``out`` fields are ``[N, ...]``): token-level
        measures ``[N]`` and ``logp`` ``[N, M]``, the log-probability each member (here the one model)
        gives to the hypothesis token."""
        logp = self.log_probs(out)
        return {"TU": -(logp.exp() * logp).sum(-1), "logp": logp.gather(-1, tokens[:, None])}

    def select(self, out, mask: Tensor):
        return tuple(None if o is None else o[mask] for o in out)


class EnsembleSystem(System):
    measures = MEASURES

    def outputs(self, state, prev):
        return (torch.stack([m.decode(mem, sp, prev)[0] for m, (mem, sp) in zip(self.models, state)], -2),)

    def log_probs(self, out):
        member = torch.log_softmax(out[0].float(), -1)
        return torch.logsumexp(member, -2) - math.log(member.shape[-2])

    def token_measures(self, out, tokens):
        logits = out[0]

        def fn(u, y, chunk):
            res = _fields(E.uncertainty.ensemble(u))
            index = y[:, None, None].expand(-1, u.shape[-2], 1)
            res["logp"] = torch.log_softmax(u.float(), -1).gather(-1, index)[..., 0]  # [N, M]
            return res

        return _chunked(fn, logits, tokens, per_row=logits.shape[-2] * logits.shape[-1] * 4)


class DirichletSystem(System):
    """Prior network student: alpha = exp(z) + 1, decodes with the expected categorical alpha / alpha_0."""

    measures = ("TU", "DU", "MI", "EPKL", "RMI", "PE")

    def log_probs(self, out):
        z = out[0].float()
        log_alpha = torch.logaddexp(z, torch.zeros_like(z))
        return log_alpha - torch.logsumexp(log_alpha, -1, keepdim=True)

    def token_measures(self, out, tokens):
        def fn(z, y, chunk):
            res = _fields(E.uncertainty.dirichlet(z))
            res["logp"] = self.log_probs((z,)).gather(-1, y[:, None])
            return res

        return _chunked(fn, out[0], tokens, per_row=out[0].shape[-1] * 8)


class LogitSystem(System):
    """Gaussian / Laplace over logits: decodes with softmax(loc), measures by Monte-Carlo sampling."""

    measures = ("TU", "DU", "MI", "EPKL", "RMI", "PE")

    def __init__(self, name, models, family: str, num_samples: int, seed: int):
        super().__init__(name, models)
        self.family, self.num_samples, self.seed = family, num_samples, seed

    def token_measures(self, out, tokens):
        def fn(loc, log_scale, y, chunk):
            u = E.uncertainty.logit_distribution(loc, log_scale, family=self.family,
                                                 num_samples=self.num_samples, seed=self.seed + chunk)
            res = _fields(u)
            res["logp"] = torch.log_softmax(loc.float(), -1).gather(-1, y[:, None])
            return res

        return _chunked(fn, out[0], out[1], tokens, per_row=self.num_samples * out[0].shape[-1] * 4)


@torch.no_grad()
def greedy(system: System, src: Tensor, max_len: int) -> Tensor:
    """Greedy hypotheses ``[B, L]``: tokens, then EOS, then PAD (no EOS if ``max_len`` was reached)."""
    state = system.encode(src)
    prev = torch.full((src.shape[0], 1), BOS, dtype=torch.long)
    finished = torch.zeros(src.shape[0], dtype=torch.bool)
    banned = torch.tensor([PAD, BOS, UNK])
    for _ in range(max_len):
        out = tuple(None if o is None else o[:, -1] for o in system.outputs(state, prev))
        logp = system.log_probs(out)
        logp[:, banned] = -math.inf
        tok = logp.argmax(-1).masked_fill(finished, PAD)
        prev = torch.cat([prev, tok[:, None]], 1)
        finished |= tok.eq(EOS)
        if bool(finished.all()):
            break
    return prev[:, 1:]


@torch.no_grad()
def score(system: System, src: Tensor, hyp: Tensor) -> Dict[str, Tensor]:
    """Sequence-level measures ``[B]`` of the hypotheses under ``system``."""
    state = system.encode(src)
    prev = torch.cat([torch.full((hyp.shape[0], 1), BOS, dtype=torch.long), hyp[:, :-1]], 1)
    prev = prev.masked_fill(prev.eq(EOS), PAD)  # nothing after EOS is conditioned on
    mask = hyp.ne(PAD)
    out = system.select(system.outputs(state, prev), mask)
    tokens = system.token_measures(out, hyp[mask])
    seq = {}
    for name in system.measures:
        if name in ("PE", "EP"):
            logp = tokens["logp"]  # [N, M]
            padded = torch.zeros(*hyp.shape, logp.shape[-1])
            padded[mask] = logp
            fn = sequence.product_of_expectations if name == "PE" else sequence.expectation_of_products
            seq[name] = fn(padded.transpose(1, 2), mask)  # [B, M, L] -> [B]
        else:
            padded = torch.zeros(hyp.shape)
            padded[mask] = tokens[name]
            seq[name] = sequence.chain_rule_average(padded, mask)
    return seq


def decode_set(system: System, sources: List[List[int]], *, batch_size: int, max_len: int,
               desc: str = "", progress: bool = True) -> Tuple[List[List[int]], Dict[str, Tensor], float]:
    """Decode and score a list of encoded sources; returns (hypotheses, measures ``[N]``, seconds)."""
    start = time.perf_counter()
    hyps: List[List[int]] = []
    parts: Dict[str, List[Tensor]] = {}
    for i in tqdm(range(0, len(sources), batch_size), desc=desc, disable=not progress, leave=False,
                  dynamic_ncols=True):
        src = pad([s if s else [UNK] for s in sources[i:i + batch_size]])
        hyp = greedy(system, src, max_len)
        for k, v in score(system, src, hyp).items():
            parts.setdefault(k, []).append(v)
        for row in hyp.tolist():
            hyps.append([t for t in row if t not in (PAD, EOS)])
    return hyps, {k: torch.cat(v) for k, v in parts.items()}, time.perf_counter() - start
