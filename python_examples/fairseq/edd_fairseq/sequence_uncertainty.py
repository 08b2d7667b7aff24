"""Token- and sequence-level uncertainty of decoded hypotheses, for ensembles and distilled students.

:class:`HypothesisScorer` re-runs every model under teacher forcing on the hypotheses of a beam and returns,
per hypothesis, the token-level measures and their sequence-level summaries (Malinin & Gales 2021):

* token level (``[L]`` each): ``tu, du, mi, epkl, rmi`` — for an ensemble the measures of its members'
  categoricals (SPEC section 1), for a Dirichlet student those of its Dirichlet (plus ``precision`` alpha_0),
  for a logit-distribution student Monte-Carlo estimates over samples of its logits; for a single categorical
  model only ``tu`` is informative (the others are 0);
* sequence level: ``pe`` (product of expectations, -(1/L) sum_l ln pbar(y_l)), ``ep`` (expectation of
  products; equal to ``pe`` for a single model) and the chain-rule averages ``tu, du, mi, epkl, rmi`` of the
  token measures (EOS included);
* n-best aggregates ``sum_b w_b U_b`` with ``w = softmax(ln P(y_b) / T)`` over the beam's hypotheses.
"""
import math
from typing import Dict, List, Sequence

import torch

import edd_ext as E
from edd_ext.uncertainty import sequence as seq

KINDS = ("ensemble", "categorical", "dirichlet", "logit-gaussian", "logit-laplace")
TOKEN_MEASURES = ("tu", "du", "mi", "epkl", "rmi")
SEQUENCE_MEASURES = ("pe", "ep") + TOKEN_MEASURES
_FIELDS = {"tu": "total", "du": "data", "mi": "mutual_information", "epkl": "epkl", "rmi": "rmi"}

__all__ = ["HypothesisScorer", "kind_of_checkpoint", "KINDS", "TOKEN_MEASURES", "SEQUENCE_MEASURES"]


def kind_of_checkpoint(cfg) -> Dict[str, object]:
    """What a single checkpoint predicts, read from its training criterion: ``{"kind": ..., options}``."""
    criterion = cfg.get("criterion") if hasattr(cfg, "get") else getattr(cfg, "criterion", None)
    name = getattr(criterion, "_name", None) if criterion is not None else None
    if name in ("edd_dirichlet_nll", "edd_proxy_dirichlet_kl"):
        return {"kind": "dirichlet", "model_offset": float(getattr(criterion, "model_offset", 1.0))}
    if name in ("edd_logit_gaussian", "edd_logit_laplace"):
        return {"kind": "logit-" + name.split("_")[-1], "min_scale": float(getattr(criterion, "min_scale", 0.0))}
    return {"kind": "categorical"}


class HypothesisScorer:
    """Uncertainty of hypotheses under ``models`` (see the module docstring).

    Args:
        models: one or more fairseq encoder-decoder models (eval mode) sharing the target dictionary.
        kind: one of :data:`KINDS`; ``"ensemble"`` and ``"categorical"`` treat the models' softmax outputs as
            an ensemble (of one for ``"categorical"``).
        pad, eos: the target dictionary's padding and end-of-sentence indices.
        model_offset: c of a Dirichlet student.
        min_scale, num_samples, seed: options of a logit-distribution student's Monte-Carlo measures.
        nbest_temperature: T of the n-best weights.
    """

    def __init__(self, models: Sequence[torch.nn.Module], kind: str, pad: int, eos: int, *,
                 model_offset: float = 1.0, min_scale: float = 0.0, num_samples: int = 25, seed: int = 0,
                 nbest_temperature: float = 1.0):
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
        if kind != "ensemble" and len(models) != 1:
            raise ValueError(f"kind: {kind!r} describes a single model, got {len(models)} models")
        self.models = list(models)
        self.kind = kind
        self.pad, self.eos = pad, eos
        self.model_offset = model_offset
        self.min_scale = min_scale
        self.num_samples = num_samples
        self.seed = seed
        self.nbest_temperature = nbest_temperature

    # -- teacher forcing -----------------------------------------------------------------------------
    def _forced_batch(self, sample, hypos):
        """Source rows repeated per hypothesis, ``prev_output_tokens`` = [EOS] + y[:-1], targets y."""
        src_tokens = sample["net_input"]["src_tokens"]
        src_lengths = sample["net_input"]["src_lengths"]
        rows, owners = [], []
        for i, beam in enumerate(hypos):
            for hypo in beam:
                rows.append(hypo["tokens"])
                owners.append(i)
        owners_t = torch.tensor(owners, dtype=torch.long, device=src_tokens.device)
        length = max(len(r) for r in rows)
        target = src_tokens.new_full((len(rows), length), self.pad)
        prev = src_tokens.new_full((len(rows), length), self.pad)
        for n, r in enumerate(rows):
            target[n, :len(r)] = r
            prev[n, 0] = self.eos
            prev[n, 1:len(r)] = r[:-1]
        return src_tokens[owners_t], src_lengths[owners_t], prev, target, owners

    @torch.no_grad()
    def score(self, sample, hypos: List[List[dict]]) -> List[List[dict]]:
        """Measures of every hypothesis: a list (per sentence) of lists (per hypothesis) of dicts with
        ``token`` (measure -> list of floats), ``sequence`` (measure -> float) and ``log_prob`` (ln P(y))."""
        src, src_len, prev, target, owners = self._forced_batch(sample, hypos)
        mask = target.ne(self.pad)
        outputs = [m(src_tokens=src, src_lengths=src_len, prev_output_tokens=prev) for m in self.models]
        safe_target = target.masked_fill(~mask, 0).unsqueeze(-1)

        extra_token = {}
        if self.kind in ("ensemble", "categorical"):
            logits = torch.stack([o[0].float() for o in outputs], dim=2)  # [N, L, M, V]
            u = E.uncertainty.ensemble(logits)
            log_probs = torch.log_softmax(logits, dim=-1)
            token_lp = log_probs.gather(-1, safe_target.unsqueeze(-2).expand(-1, -1, logits.size(2), -1))
            token_lp = token_lp.squeeze(-1).transpose(1, 2)  # [N, M, L]
        elif self.kind == "dirichlet":
            z = outputs[0][0].float()
            u = E.uncertainty.dirichlet(z, model_offset=self.model_offset)
            log_c = math.log(self.model_offset) if self.model_offset > 0 else -math.inf
            log_alpha = torch.logaddexp(z, torch.full_like(z, log_c))
            log_p = log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)
            token_lp = log_p.gather(-1, safe_target).squeeze(-1).unsqueeze(1)  # [N, 1, L]
            extra_token["precision"] = u.precision
        else:
            loc, extra = outputs[0]
            if not isinstance(extra, dict) or "log_scale" not in extra:
                raise ValueError(f"kind {self.kind!r}: the model has no log-scale head (extra['log_scale'])")
            loc, log_scale = loc.float(), extra["log_scale"].float()
            u = E.uncertainty.logit_distribution(
                loc, log_scale, family=self.kind.split("-")[1], num_samples=self.num_samples, seed=self.seed,
                min_scale=self.min_scale)
            token_lp = torch.log_softmax(loc, dim=-1).gather(-1, safe_target).squeeze(-1).unsqueeze(1)
            extra_token["scale"] = (log_scale.exp() + self.min_scale).mean(-1)

        token = {name: getattr(u, field) for name, field in _FIELDS.items()}
        token.update(extra_token)
        sequence = {
            "pe": seq.product_of_expectations(token_lp, mask),
            "ep": seq.expectation_of_products(token_lp, mask),
        }
        for name in TOKEN_MEASURES:
            sequence[name] = seq.chain_rule_average(token[name].float(), mask)
        # ln P(y) under the model's predictive mean: -L * PE
        log_prob = -sequence["pe"] * mask.sum(-1).to(sequence["pe"].dtype)

        result: List[List[dict]] = [[] for _ in hypos]
        lengths = mask.sum(-1).tolist()
        token_cpu = {k: v.float().cpu() for k, v in token.items()}
        sequence_cpu = {k: v.float().cpu().tolist() for k, v in sequence.items()}
        log_prob_cpu = log_prob.float().cpu().tolist()
        for n, i in enumerate(owners):
            length = lengths[n]
            result[i].append({
                "token": {k: [round(x, 6) for x in v[n, :length].tolist()] for k, v in token_cpu.items()},
                "sequence": {k: v[n] for k, v in sequence_cpu.items()},
                "log_prob": log_prob_cpu[n],
            })
        return result

    def nbest(self, scored: List[dict]) -> Dict[str, float]:
        """n-best aggregates ``sum_b w_b U_b`` of every sequence measure over one sentence's hypotheses."""
        log_probs = torch.tensor([h["log_prob"] for h in scored], dtype=torch.float64)
        out = {}
        for name in SEQUENCE_MEASURES:
            values = torch.tensor([h["sequence"][name] for h in scored], dtype=torch.float64)
            out[name] = float(seq.nbest_aggregate(values, log_probs, self.nbest_temperature))
        return out
