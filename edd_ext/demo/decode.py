"""Decoding (greedy or beam search) and uncertainty scoring for every system (ensemble, single model, each student).

A *system* turns decoder outputs into (a) the distribution it decodes with and (b) its token-level
uncertainty measures. :func:`search` decodes step by step through the models' incremental decoder states
(``model.IncrementalDecoder``: per-layer key/value caches, one new position per step), keeping the ``beam``
best hypotheses per source by their log-probability under the system (``beam=1`` is greedy decoding).
Then one teacher-forced pass over the hypotheses gives every position's outputs; the measures are computed
on the real (unmasked) positions only, in chunks so that Monte-Carlo samples ``[N, S, V]`` stay small, and
combined into sequence-level scores:

* TU, DU, MI, EPKL, RMI: chain-rule averages of the token measures over the hypothesis (EOS included);
* PE: -(1/L) sum_l ln p(y_l) under the system's decoding distribution (the ensemble's p̄ for the ensemble);
* EP (ensemble only): -(1/L)(logsumexp_m sum_l ln P_m(y_l) - ln M).

With a beam, every hypothesis of the n-best list is scored and a source's score is their average weighted by
``softmax(ln P(y_b))`` (``nbest_aggregate``, temperature 1), as in Malinin & Gales (2021); BLEU uses the best
hypothesis by length-normalised log-probability. The sequence-level combinations are
``edd_ext.uncertainty.sequence``'s ``chain_rule_average``, ``product_of_expectations``,
``expectation_of_products`` and ``nbest_aggregate``.

Everything runs on the device of the models and the source tensor; the only host synchronisations are the
"all hypotheses finished?" test of each step and, once per batch, the selection of the real positions for
scoring, the finiteness check of each chunk of measures and the hand-over of the hypotheses.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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
    if not bool(torch.isfinite(torch.stack(list(fields.values()))).all()):  # one host sync per chunk
        bad = [short for short, value in fields.items() if not bool(torch.isfinite(value).all())]
        raise FloatingPointError(f"non-finite {', '.join(bad)} token uncertainty from the library")
    return fields


class System:
    """Decoding distribution and token measures of one or more models."""

    measures: Tuple[str, ...] = ("TU", "PE")

    def __init__(self, name: str, models: Sequence[Seq2Seq]):
        self.name, self.models = name, list(models)

    def encode(self, src: Tensor):
        """Per-model encoder state: a list of (memory ``[B, S, d]``, source padding mask ``[B, S]``)."""
        return [m.encode(src) for m in self.models]

    @staticmethod
    def expand(state, index: Tensor):
        """The encoder state of rows ``index [B']`` (e.g. each source repeated once per hypothesis)."""
        return [(memory[index], src_pad[index]) for memory, src_pad in state]

    def combine(self, outputs: List[Tuple[Tensor, Optional[Tensor]]]):
        """The system's raw outputs from its models' (logits, log-scale) pairs."""
        return outputs[0]

    def outputs(self, state, prev: Tensor):
        """Raw outputs at every position of ``prev``."""
        return self.combine([m.decode(memory, src_pad, prev) for m, (memory, src_pad) in zip(self.models, state)])

    def start(self, state, max_len: int, incremental: bool = True) -> list:
        """Decoder states (one per model) for at most ``max_len`` steps."""
        return [m.start_decoding(memory, src_pad, max_len, incremental) for m, (memory, src_pad) in
                zip(self.models, state)]

    def step(self, decoders: list, tokens: Tensor):
        """Raw outputs ``[B, ...]`` at the next position, after feeding ``tokens [B]``."""
        return self.combine([d.step(tokens) for d in decoders])

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

    def combine(self, outputs):
        return (torch.stack([logits for logits, _ in outputs], -2),)  # [..., M, V]

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


@dataclass
class LengthLimit:
    """Longest hypothesis for a source of ``n`` tokens: ``min(cap, ceil(ratio * n) + extra)``; with
    ``ratio = 0`` every source gets ``min(cap, extra)`` (``extra`` defaults to ``cap``)."""

    cap: int
    ratio: float = 0.0
    extra: Optional[int] = None

    def __call__(self, n: int) -> int:
        extra = self.cap if self.extra is None else self.extra
        return max(1, min(self.cap, math.ceil(self.ratio * n) + extra))


@dataclass
class NBest:
    """The ``K`` hypotheses per source of a search, best first (by log-probability per token).

    ``tokens [B, K, L]``: the tokens, then EOS, then PAD (no EOS where the length limit was reached);
    ``scores [B, K]``: ln P(y) under the system's decoding distribution, summed over the tokens (EOS
    included; -inf for a hypothesis the beam could not fill, possible only when ``K`` nears V);
    ``lengths [B, K]``: the number of real tokens (EOS included).
    """

    tokens: Tensor
    scores: Tensor
    lengths: Tensor


#: Tokens a hypothesis never contains.
_BANNED = (PAD, BOS, UNK)


@torch.no_grad()
def search(system: System, src: Tensor, max_len, *, beam: int = 1, min_len: int = 0, incremental: bool = True,
           state=None) -> NBest:
    """Beam search with ``beam`` hypotheses per source (``beam=1``: greedy decoding).

    Every step extends each live hypothesis by every token and keeps the ``beam`` best extensions per source
    by the sum of the system's token log-probabilities; a hypothesis that has emitted EOS, or reached its
    length limit, stays in the beam with its score (extended by PAD at no cost), so the search stops as soon
    as every kept hypothesis has ended: no live extension can then score higher. The n-best list is ranked
    by log-probability per token (length normalisation, fairseq's default).

    Args:
        src: ``[B, S]`` source tokens on the models' device.
        max_len: the longest hypothesis (EOS included): an int, or a ``[B]`` long tensor of per-source limits.
        min_len: EOS is banned before this many tokens (for fixed-length timing runs).
        incremental: decode through per-layer key/value caches (default) or recompute the decoder over the
            whole prefix at every step (the reference).
        state: the encoder state from ``system.encode(src)``, when the caller has it.
    """
    if beam < 1:
        raise ValueError(f"beam: expected at least 1 hypothesis per source, got {beam}")
    n, device = src.shape[0], src.device
    state = system.encode(src) if state is None else state
    limit = torch.as_tensor(max_len, dtype=torch.long, device=device).expand(n).repeat_interleave(beam)
    steps = int(limit.max())
    decoders = system.start(state, steps + 1, incremental)
    if beam > 1:  # every source's decoder state once per hypothesis
        for d in decoders:
            d.reorder(torch.arange(n, device=device).repeat_interleave(beam))
    scores = torch.zeros(n, beam, device=device)
    scores[:, 1:] = -math.inf  # the first step extends one hypothesis per source
    tokens = torch.full((n * beam, steps), PAD, dtype=torch.long, device=device)
    last = torch.full((n * beam,), BOS, dtype=torch.long, device=device)
    finished = torch.zeros(n * beam, dtype=torch.bool, device=device)
    banned = torch.tensor(_BANNED, device=device)
    pad_only = torch.full((1, system.models[0].cfg.vocab_size), -math.inf, device=device)
    pad_only[:, PAD] = 0.0
    first_row = (torch.arange(n, device=device) * beam)[:, None]
    width = 0
    for t in range(steps):
        logp = system.log_probs(system.step(decoders, last))  # [n * beam, V]
        vocab = logp.shape[-1]
        logp[:, banned] = -math.inf
        if t < min_len:
            logp[:, EOS] = -math.inf
        ended = finished | limit.le(t)  # an ended hypothesis continues with PAD only, at no cost
        logp = torch.where(ended[:, None], pad_only, logp)
        if beam == 1:  # greedy: the most probable token (the first of equals), whatever the prefix's score
            index = logp.argmax(-1, keepdim=True)
            scores = scores + logp.gather(-1, index)
        else:
            scores, index = (scores.reshape(-1, 1) + logp).reshape(n, beam * vocab).topk(beam, dim=-1)
        tok = (index % vocab).reshape(-1)
        if beam > 1:
            rows = (first_row + torch.div(index, vocab, rounding_mode="floor")).reshape(-1)
            for d in decoders:
                d.reorder(rows)
            tokens, finished = tokens[rows], finished[rows]
        tokens[:, t] = tok
        finished |= tok.eq(EOS)
        last, width = tok, t + 1
        if bool((finished | limit.le(t + 1)).all()):
            break
    tokens = tokens[:, :width].reshape(n, beam, width)
    lengths = tokens.ne(PAD).sum(-1)
    order = (scores / lengths.clamp_min(1)).argsort(dim=-1, descending=True, stable=True)
    return NBest(tokens.gather(1, order[..., None].expand_as(tokens)), scores.gather(1, order),
                 lengths.gather(1, order))


@torch.no_grad()
def score(system: System, src: Tensor, hyp: Tensor, state=None) -> Dict[str, Tensor]:
    """Sequence-level measures ``[B]`` of the hypotheses ``hyp [B, L]`` under ``system``."""
    state = system.encode(src) if state is None else state
    bos = torch.full((hyp.shape[0], 1), BOS, dtype=torch.long, device=hyp.device)
    prev = torch.cat([bos, hyp[:, :-1]], 1)
    prev = prev.masked_fill(prev.eq(EOS), PAD)  # nothing after EOS is conditioned on
    mask = hyp.ne(PAD)
    out = system.select(system.outputs(state, prev), mask)
    tokens = system.token_measures(out, hyp[mask])
    seq = {}
    for name in system.measures:
        if name in ("PE", "EP"):
            logp = tokens["logp"]  # [N, M]
            padded = logp.new_zeros(*hyp.shape, logp.shape[-1])
            padded[mask] = logp
            fn = sequence.product_of_expectations if name == "PE" else sequence.expectation_of_products
            seq[name] = fn(padded.transpose(1, 2), mask)  # [B, M, L] -> [B]
        else:
            padded = tokens[name].new_zeros(hyp.shape)
            padded[mask] = tokens[name]
            seq[name] = sequence.chain_rule_average(padded, mask)
    return seq


#: Upper bound on the floats of one batch's scoring pass (hypotheses x positions x members x V).
_BATCH_ELEMENTS = 1 << 24


def batch_groups(limits: Sequence[int], *, width: int, max_rows: int = 128, min_rows: int = 8,
                 by_length: bool = False) -> List[List[int]]:
    """Indices of the sources decoded together.

    A batch holds at most ``max_rows`` sources and, above ``min_rows``, at most ``_BATCH_ELEMENTS`` floats
    of scoring outputs (``rows x longest limit x width``, ``width`` = hypotheses x members x V per position).
    ``by_length`` sorts the sources by length limit first (longest first), so that batches of user text
    waste little on padding; otherwise batches follow the given order.
    """
    order = sorted(range(len(limits)), key=lambda i: -limits[i]) if by_length else list(range(len(limits)))
    groups: List[List[int]] = []
    longest = 0
    for i in order:
        rows, widest = (len(groups[-1]) + 1, max(longest, limits[i])) if groups else (0, 0)
        if groups and rows <= max_rows and (rows <= min_rows or rows * widest * width <= _BATCH_ELEMENTS):
            groups[-1].append(i)
            longest = widest
        else:
            groups.append([i])
            longest = limits[i]
    return groups


@torch.no_grad()
def decode_set(system: System, sources: List[List[int]], *, max_len: LengthLimit, width: int, beam: int = 1,
               by_length: bool = False, device=None, desc: str = "",
               progress: bool = True) -> Tuple[List[List[int]], Dict[str, Tensor], float]:
    """Decode and score a list of encoded sources; returns (best hypotheses, measures ``[N]`` on the CPU,
    seconds). ``width`` and ``by_length`` size the batches (:func:`batch_groups`)."""
    start = time.perf_counter()
    sources = [s if s else [UNK] for s in sources]
    limits = [max_len(len(s)) for s in sources]
    groups = batch_groups(limits, width=width * beam, by_length=by_length)
    hyps: List[List[int]] = [[] for _ in sources]
    parts: Dict[str, List[Tensor]] = {}
    for group in tqdm(groups, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        src = pad([sources[i] for i in group]).to(device)
        state = system.encode(src)
        nbest = search(system, src, torch.tensor([limits[i] for i in group], device=src.device), beam=beam,
                       state=state)
        rows = torch.arange(len(group), device=src.device).repeat_interleave(beam)
        flat = nbest.tokens.flatten(0, 1)
        measures = score(system, src[rows], flat, system.expand(state, rows) if beam > 1 else state)
        valid = torch.isfinite(nbest.scores)
        for k, v in measures.items():
            parts.setdefault(k, []).append(sequence.nbest_aggregate(v.view(len(group), beam), nbest.scores,
                                                                    mask=valid))
        for i, row in zip(group, nbest.tokens[:, 0].tolist()):
            hyps[i] = [t for t in row if t not in (PAD, EOS)]
    restore = torch.tensor([i for g in groups for i in g]).argsort()
    return hyps, {k: torch.cat(v).cpu()[restore] for k, v in parts.items()}, time.perf_counter() - start
