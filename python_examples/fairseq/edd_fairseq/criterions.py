"""Ensemble-distribution-distillation criteria for fairseq.

Each criterion reads the teacher ensemble from ``sample["teacher"]`` (attached by ``--task edd_distillation``:
``[B, T, M, V]`` logits, or cached statistics, dense or top-k), computes its loss with ``edd_ext`` (summed over
the target tokens, padding masked), and logs, per target token:

* ``loss``: the criterion's loss (nats per token, or per sentence with ``--sentence-avg``);
* ``nll_loss`` / ``ppl``: the student's negative log-likelihood of the reference (base 2, as fairseq's
  cross-entropy criteria report it) under its predictive mean: softmax(z) for the categorical student,
  alpha / alpha_0 for a Dirichlet, softmax(mu) for a logit distribution;
* ``ens_nll`` / ``ens_ppl``: the same for the teacher ensemble's mean pi^;
* ``ens_tu``, ``ens_mi``: the ensemble's total uncertainty and mutual information (nats);
  ``ens_log_prec``: ln of the ensemble's implied Dirichlet precision (V - 1) / (2 RMI) (the proxy target);
* ``st_tu``, ``st_mi``: the student's total uncertainty and mutual information; ``st_log_prec``: ln alpha_0
  for Dirichlet students, ``st_scale``: the mean scale s for logit-distribution students (their TU and MI are
  Monte-Carlo estimates over ``--uncertainty-samples`` samples, computed in validation only: the samples
  take ``[B, T, S, V]`` memory).

Criteria:

======================== ========================================================= ======================
name                     loss (SPEC section)                                        student
======================== ========================================================= ======================
edd_ensemble_kl          KL(pi^ || softmax(z)), EnD (2.4)                           any fairseq model
edd_dirichlet_nll        Dirichlet NLL of the members, EnD^2 (2.1)                  any fairseq model
edd_proxy_dirichlet_kl   KL to a proxy Dirichlet (2.2)                              any fairseq model
edd_logit_gaussian       Gaussian NLL of normalised teacher logits (2.3)            edd_transformer_logit
edd_logit_laplace        Laplace NLL of normalised teacher logits (2.3)             edd_transformer_logit
======================== ========================================================= ======================
"""

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II
from torch import Tensor

import edd_ext as E

__all__ = [
    "EnsembleKLCriterion",
    "DirichletNLLCriterion",
    "ProxyDirichletKLCriterion",
    "LogitGaussianCriterion",
    "LogitLaplaceCriterion",
    "teacher_from_sample",
]

_LN2 = math.log(2.0)
#: logging keys summed over tokens (reduced as per-token means)
_TOKEN_MEANS = ("ens_tu", "ens_mi", "ens_log_prec", "st_tu", "st_mi", "st_log_prec", "st_scale")


def _masked_sum(x: Tensor, mask: Tensor) -> Tensor:
    """Sum of ``x [B, T]`` over the real tokens (``torch.where``: padding never leaks NaN or inf)."""
    return torch.where(mask, x.float(), torch.zeros((), dtype=torch.float32, device=x.device)).sum()


def teacher_from_sample(sample) -> dict:
    """``sample["teacher"]`` with a clear error when the batch has none."""
    teacher = sample.get("teacher") if isinstance(sample, dict) else None
    if teacher is None:
        raise ValueError(
            "sample['teacher']: the edd_* criteria need teacher outputs in every batch; train with "
            "--task edd_distillation --teacher-paths a.pt:b.pt:... (got a batch without them)"
        )
    return teacher


def _stats_from_teacher(teacher: dict):
    """The teacher's statistics: the cached :class:`edd_ext.EnsembleStats` or :class:`edd_ext.TopKEnsembleStats`,
    or computed from the logits."""
    if "stats" in teacher:
        return teacher["stats"]
    return E.ensemble_stats(teacher["logits"], temperature=float(teacher.get("temperature", 1.0)),
                            smoothing=float(teacher.get("smoothing", 0.0)))


def _mean_prob_of(stats, target: Tensor) -> Tensor:
    """pi^ of the reference tokens ``[B, T]``; from top-k statistics, the listed value or the tail's
    tau / (V - k)."""
    if isinstance(stats, E.TopKEnsembleStats):
        hit = stats.indices == target.unsqueeze(-1)
        listed = torch.where(hit, stats.mean_probs.float(), torch.zeros((), device=target.device)).sum(-1)
        tail = stats.tail_mass.float() / max(stats.num_classes - stats.top_k, 1)
        return torch.where(hit.any(-1), listed, tail)
    return stats.mean_probs.float().gather(-1, target.unsqueeze(-1)).squeeze(-1)


@dataclass
class EddCriterionConfig(FairseqDataclass):
    sentence_avg: bool = II("optimization.sentence_avg")


class _EddCriterion(FairseqCriterion):
    """Shared forward/logging. Subclasses implement :meth:`compute_loss` and :meth:`student_measures`."""

    #: True when the loss needs every member's logits (the teacher cache then stores logits, not statistics)
    needs_member_logits = False

    def __init__(self, cfg, task):
        super().__init__(task)
        self.cfg = cfg
        self.sentence_avg = cfg.sentence_avg

    # -- to implement --------------------------------------------------------------------------------
    def compute_loss(self, net_output, teacher: dict, stats, mask: Tensor) -> Tensor:
        raise NotImplementedError

    def student_measures(self, net_output, target: Tensor, mask: Tensor, training: bool = False) -> dict:
        """Per-token student measures ``[B, T]``: ``nll`` (of the reference) and any of ``tu, mi, log_prec,
        scale``."""
        raise NotImplementedError

    # -- fairseq API ---------------------------------------------------------------------------------
    def forward(self, model, sample, reduce=True):
        teacher = teacher_from_sample(sample)
        net_output = model(**sample["net_input"])
        target = sample["target"]
        mask = target.ne(self.padding_idx)
        stats = None if self.needs_member_logits else _stats_from_teacher(teacher)
        loss = self.compute_loss(net_output, teacher, stats, mask)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]

        with torch.no_grad():
            if stats is None:
                stats = _stats_from_teacher(teacher)
            log = self._ensemble_log(stats, target, mask)
            student = self.student_measures(net_output, target, mask, training=model.training)
            log["nll_loss"] = _masked_sum(student.pop("nll"), mask)
            for key, value in student.items():
                log["st_" + key] = _masked_sum(value, mask)
        logging_output = {
            "loss": loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        logging_output.update({k: v.data for k, v in log.items()})
        return loss, sample_size, logging_output

    @staticmethod
    def _ensemble_log(stats, target: Tensor, mask: Tensor) -> dict:
        num_classes = stats.num_classes if isinstance(stats, E.TopKEnsembleStats) else stats.mean_probs.size(-1)
        p_ref = _mean_prob_of(stats, target.masked_fill(~mask, 0))
        ens_nll = -torch.log(p_ref.clamp_min(1e-30))
        precision = (num_classes - 1) / (2.0 * stats.rmi.float().clamp_min(0.0) + 1.1920929e-7)
        return {
            "ens_nll": _masked_sum(ens_nll, mask),
            "ens_tu": _masked_sum(stats.total, mask),
            "ens_mi": _masked_sum(stats.mutual_information, mask),
            "ens_log_prec": _masked_sum(precision.log(), mask),
        }

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        sample_size = total("sample_size")
        ntokens = total("ntokens")
        if sample_size > 0:
            metrics.log_scalar("loss", total("loss") / sample_size, sample_size, round=4)
        if ntokens > 0:
            metrics.log_scalar("nll_loss", total("nll_loss") / ntokens / _LN2, ntokens, round=3)
            metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
            metrics.log_scalar("ens_nll", total("ens_nll") / ntokens / _LN2, ntokens, round=3)
            metrics.log_derived("ens_ppl", lambda meters: utils.get_perplexity(meters["ens_nll"].avg))
            for key in _TOKEN_MEANS:
                if any(key in log for log in logging_outputs):
                    metrics.log_scalar(key, total(key) / ntokens, ntokens, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


# --------------------------------------------------------------------------------------------------
# Categorical and Dirichlet students (the model's logits are z)
# --------------------------------------------------------------------------------------------------


def _logits(net_output) -> Tensor:
    return net_output[0]


@dataclass
class EnsembleKLConfig(EddCriterionConfig):
    pass


@register_criterion("edd_ensemble_kl", dataclass=EnsembleKLConfig)
class EnsembleKLCriterion(_EddCriterion):
    """EnD: KL from the ensemble mean to the student's categorical (``edd_ext.ensemble_kl``)."""

    def compute_loss(self, net_output, teacher, stats, mask):
        return E.ensemble_kl(_logits(net_output), stats, mask=mask, reduction="sum")

    def student_measures(self, net_output, target, mask, training=False):
        log_probs = torch.log_softmax(_logits(net_output).float(), dim=-1)
        nll = -log_probs.gather(-1, target.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
        return {"nll": nll, "tu": -(log_probs.exp() * log_probs).sum(-1)}


def _dirichlet_measures(z: Tensor, target: Tensor, mask: Tensor, model_offset: float) -> dict:
    z = z.float()
    u = E.uncertainty.dirichlet(z, model_offset=model_offset)
    # ln p_y = ln alpha_y - ln alpha_0 with ln alpha = logaddexp(z, ln c)
    log_c = math.log(model_offset) if model_offset > 0 else -math.inf
    log_alpha = torch.logaddexp(z, torch.full_like(z, log_c))
    log_p = log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)
    nll = -log_p.gather(-1, target.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return {"nll": nll, "tu": u.total, "mi": u.mutual_information, "log_prec": u.precision.log()}


@dataclass
class DirichletNLLConfig(EddCriterionConfig):
    model_offset: float = field(
        default=1.0, metadata={"help": "c in the student's concentrations alpha = exp(z) + c"})


@register_criterion("edd_dirichlet_nll", dataclass=DirichletNLLConfig)
class DirichletNLLCriterion(_EddCriterion):
    """EnD^2: negative log-likelihood of the members' distributions under the student Dirichlet
    (``edd_ext.dirichlet_nll``). Combine with ``--teacher-temperature`` / ``--teacher-smoothing`` of the task
    for the usual temperature-annealed, smoothed training."""

    def compute_loss(self, net_output, teacher, stats, mask):
        return E.dirichlet_nll(_logits(net_output), stats, model_offset=self.cfg.model_offset, mask=mask,
                                  reduction="sum")

    def student_measures(self, net_output, target, mask, training=False):
        return _dirichlet_measures(_logits(net_output), target, mask, self.cfg.model_offset)


@dataclass
class ProxyDirichletKLConfig(EddCriterionConfig):
    direction: ChoiceEnum(["reverse", "forward"]) = field(
        default="reverse", metadata={"help": "reverse: KL[Dir(alpha) || Dir(beta)] (the published method); "
                                             "forward: KL[Dir(beta) || Dir(alpha)]"})
    precision: ChoiceEnum(["mkl", "epkl"]) = field(
        default="mkl", metadata={"help": "target precision: mkl = (V - 1) / (2 RMI), epkl = (V - 1) / EPKL"})
    model_offset: float = field(
        default=1.0, metadata={"help": "c in the student's concentrations alpha = exp(z) + c"})
    target_offset: float = field(
        default=1.0, metadata={"help": "t in the target concentrations beta = beta0^ pi^ + t"})
    eps: float = field(
        default=1.1920929e-7, metadata={"help": "added to the denominator of the target precision"})
    max_precision: Optional[float] = field(
        default=None, metadata={"help": "clamp the target precision to at most this value"})
    reference_code_compat: bool = field(
        default=False, metadata={"help": "reproduce the objective of the authors' released code (its optimum "
                                         "has precision beta0^ + 2V instead of beta0^ + V; reverse only)"})


@register_criterion("edd_proxy_dirichlet_kl", dataclass=ProxyDirichletKLConfig)
class ProxyDirichletKLCriterion(_EddCriterion):
    """Proxy-Dirichlet KL (``edd_ext.proxy_dirichlet_kl``): distil to a Dirichlet with the ensemble's mean and
    a precision from its diversity — the large-vocabulary fix for EnD^2."""

    def compute_loss(self, net_output, teacher, stats, mask):
        c = self.cfg
        return E.proxy_dirichlet_kl(
            _logits(net_output), stats, direction=str(c.direction), precision=str(c.precision),
            model_offset=c.model_offset, target_offset=c.target_offset, eps=c.eps,
            max_precision=c.max_precision, reference_code_compat=bool(c.reference_code_compat), mask=mask,
            reduction="sum")

    def student_measures(self, net_output, target, mask, training=False):
        return _dirichlet_measures(_logits(net_output), target, mask, self.cfg.model_offset)


# --------------------------------------------------------------------------------------------------
# Logit-distribution students (edd_transformer_logit: loc = logits, extra["log_scale"])
# --------------------------------------------------------------------------------------------------


@dataclass
class LogitDistributionConfig(EddCriterionConfig):
    teacher_norm: ChoiceEnum(["log_softmax", "center", "none"]) = field(
        default="log_softmax", metadata={"help": "targets: log_softmax of the teacher logits (default), "
                                                 "logits minus each member's mean, or raw logits"})
    min_scale: float = field(default=0.0, metadata={"help": "floor of the scale, s = exp(rho) + min_scale"})
    uncertainty_samples: int = field(
        default=8, metadata={"help": "Monte-Carlo samples for the student uncertainty logged in validation "
                                     "(0: do not log it)"})


class _LogitCriterion(_EddCriterion):
    needs_member_logits = True
    family = "gaussian"

    def _loc_scale(self, net_output):
        extra = net_output[1] if len(net_output) > 1 and isinstance(net_output[1], dict) else {}
        if "log_scale" not in extra:
            raise ValueError(
                f"net_output: criterion edd_logit_{self.family} needs a model with a log-scale head; train with "
                f"--arch edd_transformer_logit (or edd_transformer_logit_tiny), got a model without "
                f"extra['log_scale']")
        return net_output[0], extra["log_scale"]

    def compute_loss(self, net_output, teacher, stats, mask):
        if "logits" not in teacher:
            raise ValueError("sample['teacher']: the logit-space criteria need every member's logits "
                             "[B, T, M, V], got cached statistics only")
        loc, log_scale = self._loc_scale(net_output)
        fn = E.logit_gaussian_nll if self.family == "gaussian" else E.logit_laplace_nll
        return fn(loc, log_scale, teacher["logits"], teacher_norm=str(self.cfg.teacher_norm),
                  temperature=float(teacher.get("temperature", 1.0)), min_scale=self.cfg.min_scale, mask=mask,
                  reduction="sum")

    def student_measures(self, net_output, target, mask, training=False):
        loc, log_scale = self._loc_scale(net_output)
        loc, log_scale = loc.float(), log_scale.float()
        log_probs = torch.log_softmax(loc, dim=-1)
        nll = -log_probs.gather(-1, target.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
        scale = log_scale.exp() + self.cfg.min_scale
        out = {"nll": nll, "scale": scale.mean(-1)}
        if self.cfg.uncertainty_samples > 0 and not training:
            u = E.uncertainty.logit_distribution(
                loc, log_scale, family=self.family, num_samples=int(self.cfg.uncertainty_samples), seed=0,
                min_scale=self.cfg.min_scale)
            out["tu"], out["mi"] = u.total, u.mutual_information
        return out


@register_criterion("edd_logit_gaussian", dataclass=LogitDistributionConfig)
class LogitGaussianCriterion(_LogitCriterion):
    """Gaussian NLL of the members' normalised logits (``edd_ext.logit_gaussian_nll``)."""

    family = "gaussian"


@register_criterion("edd_logit_laplace", dataclass=LogitDistributionConfig)
class LogitLaplaceCriterion(_LogitCriterion):
    """Laplace NLL of the members' normalised logits (``edd_ext.logit_laplace_nll``)."""

    family = "laplace"
