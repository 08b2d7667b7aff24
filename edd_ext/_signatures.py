"""The signature, defaults and docstring of every distillation loss (SPEC section 2), written once.

Three things implement each loss: the fused public function (``edd_ext.losses``), its plain-PyTorch definition
(``edd_ext.reference``) and its ``nn.Module`` form (``edd_ext.nn``). They take their name, keywords, defaults
and documentation from the stubs below:

* :func:`implements` turns a function that takes every keyword explicitly (no defaults) into the public
  callable: it gets the stub's signature (``help``, ``inspect.signature``), docstring and defaults;
* ``edd_ext.nn.loss_module`` builds the module class from the same stub.

The stubs are never called.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Optional, Union

from torch import Tensor

from .types import EnsembleStats, TopKEnsembleStats

#: A teacher is raw logits ``[*, M, V]``, precomputed :class:`EnsembleStats` or :class:`TopKEnsembleStats`.
Teacher = Union[Tensor, EnsembleStats, TopKEnsembleStats]

_SHAPES = """
    A :class:`~edd_ext.TopKEnsembleStats` teacher (``ensemble_stats(..., top_k=k)``, SPEC section 1.1) stands for
    the dense target in which each of the V - k classes outside its ``indices`` has mean probability
    ``tail_mass / (V - k)`` and mean log-probability ``tail_mean_log_prob`` (the mean of l- over those classes),
    and the listed classes their own values; its measures are exact over all V. With k = V the loss equals the
    dense one; with k < V it approximates it (the fused kernels read the sparse target directly).

    Shape:
        student_logits: ``[*, V]``; teacher: ``[*, M, V]`` logits, :class:`~edd_ext.EnsembleStats` (uses {uses}) or
        :class:`~edd_ext.TopKEnsembleStats` (uses {topk_uses}); mask: ``[*]`` bool (True = a real position).
        Output: ``[*]`` for ``reduction="none"``, else a scalar.
"""

_LOGIT_SHAPES = """
    ``teacher_logits`` may also be the compact :class:`~edd_ext.TopKLogitTargets` of ``edd_ext.top_k_logit_targets``:
    the k most probable classes' member targets exactly, each member's tail summarised by its mean and the pooled
    variance — an approximation, computed in plain PyTorch (``edd_ext.logit_top_k``); equal to the dense loss with
    k = V.

    Shape:
        loc, log_scale: ``[*, V]`` (same dtype); teacher_logits: ``[*, M, V]``; mask: ``[*]`` bool.
        Output: ``[*]`` for ``reduction="none"``, else a scalar.
"""

_TEACHER_NORM = """
    Targets x^(m): ``teacher_norm="log_softmax"`` (default) log_softmax(u^(m) / T); ``"center"`` u/T minus the mean
    of the member's logits other than -inf; ``"none"`` u/T. s_k = exp(rho_k) + ``min_scale`` (rho = ``log_scale``).
    A teacher logit of -inf gives a target of -inf and a loss of +inf (the mathematics is infinite there), never
    NaN; the Gaussian's gradients for that class are +inf (loc) and -inf (log_scale).
"""


def dirichlet_nll(
    student_logits: Tensor,
    teacher: Teacher,
    *,
    model_offset: float = 1.0,
    mask: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """EnD^2: negative log-likelihood of the members' probability vectors under the student Dirichlet
    (SPEC section 2.1).

    With alpha_k = exp(z_k) + c (c = ``model_offset``), alpha_0 = sum_k alpha_k and the teacher's mean
    log-probability l-_k = (1/M) sum_m ln pi^(m)_k:

        L = sum_k lnGamma(alpha_k) - lnGamma(alpha_0) - sum_k (alpha_k - 1) l-_k
          = -(1/M) sum_m ln Dir(pi^(m) | alpha)
        dL/dz_k = (alpha_k - c) (psi(alpha_k) - psi(alpha_0) - l-_k)

    Only l- is needed from the teacher. alpha_0 and the per-position sums are float64, so the loss stays finite
    for z up to 80 at any V. With M = 1 or identical members the loss is unbounded below in the precision
    direction (the model's nature).

    A teacher logit of -inf is a probability of 0: where a member gives class k probability 0 (and no smoothing
    was applied to the statistics), l-_k = -inf and the likelihood is 0; the loss is then +inf, with a gradient of
    +inf for that class, never NaN. A student logit of -inf (alpha_k = c) stays finite.
    """


def proxy_dirichlet_kl(
    student_logits: Tensor,
    teacher: Teacher,
    *,
    direction: str = "reverse",
    precision: str = "mkl",
    model_offset: float = 1.0,
    target_offset: float = 1.0,
    eps: float = 1.1920929e-7,
    max_precision: Optional[float] = None,
    reference_code_compat: bool = False,
    mask: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Proxy-Dirichlet KL: distil to a Dirichlet with the ensemble's mean and a precision derived from its
    diversity (SPEC section 2.2).

    Target: beta^_0 = (V - 1) / (2 max(RMI, 0) + eps) (``precision="mkl"``, default) or
    (V - 1) / (max(EPKL, 0) + eps) (``"epkl"``), clamped to ``max_precision``; beta_k = beta^_0 pi^_k + t and
    beta_0 = beta^_0 + t V (t = ``target_offset``; t = 1 puts the target's mode at pi^). Student
    alpha_k = exp(z_k) + c (c = ``model_offset``).

        direction="reverse" (default, the published method):  L = KL[Dir(alpha) || Dir(beta)] / beta_0
            dL/dz_j = (alpha_j - c) [psi'(alpha_j)(alpha_j - beta_j) - psi'(alpha_0)(alpha_0 - beta_0)] / beta_0
        direction="forward":  L = KL[Dir(beta) || Dir(alpha)] / beta_0
            dL/dz_j = (alpha_j - c) [psi(alpha_j) - psi(alpha_0) - psi(beta_j) + psi(beta_0)] / beta_0

    with KL[Dir(a) || Dir(b)] = lnGamma(a_0) - sum lnGamma(a_k) - lnGamma(b_0) + sum lnGamma(b_k)
    + sum_k (a_k - b_k)(psi(a_k) - psi(a_0)). The loss is >= 0 and exactly 0 when alpha = beta. The target is a
    constant: no gradient reaches the teacher. A teacher logit of -inf is a probability of exactly 0 (0 ln 0 = 0):
    the target stays finite and equal to its limit (where only some members give a class probability 0, RMI and
    EPKL are +inf and beta^_0 = 0).

    ``reference_code_compat=True`` (reverse only) reproduces the objective of the authors' released code,
    L = -sum_k pi^_k (psi(alpha_k) - psi(alpha_0)) - H[Dir(alpha)] / beta_0 with
    H[Dir(alpha)] = sum lnGamma(alpha_k) - lnGamma(alpha_0) - sum (alpha_k - 1)(psi(alpha_k) - psi(alpha_0)).
    It differs from the exact KL / beta_0 by a z-dependent term: beta_0 times it equals
    KL[Dir(alpha) || Dir(beta_0 pi^ + 1)] up to a constant, so its optimum is alpha = beta_0 pi^ + 1, of precision
    beta^_0 + (t + 1) V (beta^_0 + 2V for t = 1) instead of beta^_0 + t V, and it is not zero there. Use it only
    to match published numbers.
    """


def logit_gaussian_nll(
    loc: Tensor,
    log_scale: Tensor,
    teacher_logits: Tensor,
    *,
    teacher_norm: str = "log_softmax",
    temperature: float = 1.0,
    min_scale: float = 0.0,
    mask: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Gaussian NLL of the members' normalised logits (SPEC section 2.3).

        L = sum_k [ ln s_k + 1/2 ln 2pi + v_k / (2 s_k^2) ],   v_k = (1/M) sum_m (x^(m)_k - mu_k)^2
        dL/dmu_k = (mu_k - x-_k) / s_k^2,   dL/drho_k = (1 - v_k / s_k^2) (s_k - min_scale) / s_k

    v is accumulated in centred form, v = (1/M) sum_m (x - x-)^2 + (x- - mu)^2 with x- = (1/M) sum_m x^(m), never
    as E[x^2] - 2 mu E[x] + mu^2 (which cancels catastrophically in float32).
    """


def logit_laplace_nll(loc: Tensor, log_scale: Tensor, teacher_logits: Tensor, **options) -> Tensor:
    """Laplace NLL of the members' normalised logits (SPEC section 2.3).

        L = sum_k [ ln s_k + ln 2 + a_k / s_k ],   a_k = (1/M) sum_m |x^(m)_k - mu_k|
        dL/dmu_k = -(1/(M s_k)) sum_m sign(x^(m)_k - mu_k),   dL/drho_k = (1 - a_k / s_k)(s_k - min_scale) / s_k

    The absolute deviations need every member (there is no sufficient statistic). The optimum is mu at a median
    of the members' targets and s at their mean absolute deviation from it.
    """


def ensemble_kl(
    student_logits: Tensor,
    teacher: Teacher,
    *,
    mask: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """EnD baseline: KL from the ensemble mean to the student's categorical (SPEC section 2.4).

        L = sum_k pi^_k (ln pi^_k - log_softmax(z)_k),   dL/dz = softmax(z) - pi^

    with 0 ln 0 = 0 (a teacher logit of -inf is a probability of exactly 0). Standard distillation to the
    ensemble mean; it gives no knowledge uncertainty.
    """


logit_laplace_nll.__signature__ = inspect.signature(logit_gaussian_nll)  # the same keywords and defaults
dirichlet_nll.__doc__ += _SHAPES.format(uses="``mean_log_probs``",
                                        topk_uses="``mean_log_probs`` and ``tail_mean_log_prob``")
proxy_dirichlet_kl.__doc__ += _SHAPES.format(uses="``mean_probs`` and ``rmi`` or ``epkl``",
                                             topk_uses="``mean_probs``, ``tail_mass`` and ``rmi`` or ``epkl``")
ensemble_kl.__doc__ += _SHAPES.format(uses="``mean_probs``", topk_uses="``mean_probs`` and ``tail_mass``")
logit_gaussian_nll.__doc__ = logit_gaussian_nll.__doc__.replace("\n\n", "\n" + _TEACHER_NORM + "\n", 1) + _LOGIT_SHAPES
logit_laplace_nll.__doc__ = logit_laplace_nll.__doc__.replace("\n\n", "\n" + _TEACHER_NORM + "\n", 1) + _LOGIT_SHAPES

#: The stubs, by name.
LOSSES = {f.__name__: f for f in (dirichlet_nll, proxy_dirichlet_kl, logit_gaussian_nll, logit_laplace_nll,
                                  ensemble_kl)}


def defaults(stub: Callable) -> dict:
    """The keyword-only parameters of ``stub`` with their defaults."""
    return {name: p.default for name, p in inspect.signature(stub).parameters.items() if p.kind is p.KEYWORD_ONLY}


def implements(stub: Callable, *, note: str = "") -> Callable[[Callable], Callable]:
    """Decorator: the decorated ``fn(*inputs, **every_keyword)`` (called with every keyword, defaults filled in)
    becomes a callable with ``stub``'s name,
    signature, defaults and docstring (``note`` appended to the docstring). A keyword the stub does not have
    is a ``TypeError``, as for any Python function."""
    options = defaults(stub)

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(stub)
        def wrapper(*inputs, **kwargs):
            unknown = kwargs.keys() - options.keys()
            if unknown:
                raise TypeError(f"{stub.__name__}() got unexpected keyword argument(s) {sorted(unknown)}")
            return fn(*inputs, **{**options, **kwargs})

        wrapper.__module__ = fn.__module__
        wrapper.__doc__ = (stub.__doc__ or "") + note
        wrapper.__signature__ = inspect.signature(stub)
        del wrapper.__wrapped__  # the public signature is the stub's; the implementation is private
        wrapper.implementation = fn
        return wrapper

    return decorate


_LINEAR_NOTE = """
    Fused linear form (SPEC section 2.5): the loss of the student's output layer(s) applied to ``input``, computed
    chunk by chunk over the positions so that no ``[*, V]`` student tensor is kept, with gradients for ``input``, the
    weight(s) and the bias(es). ``teacher`` may also be :class:`~edd_ext.LinearTeachers` (the teachers' last hidden
    states and output layers): then no ``[*, M, V]`` teacher tensor exists either. ``chunk_size``: positions per
    chunk (None: from V, M and D; see :mod:`edd_ext.linear`). The other keywords are those of
    :func:`edd_ext.{loss}`:
"""


def linear_stub(loss: str) -> Callable:
    """The stub of ``linear_<loss>``, the fused linear form of the loss ``<loss>``: the student tensors become
    ``input`` and the output layer(s) (``linear_weight``; ``loc_weight`` and ``log_scale_weight`` for the logit-space
    losses), the teacher is ``teacher``, the bias(es) and ``chunk_size`` are keywords (default None), then come the
    loss's own keywords with their defaults. Its docstring is the linear form's, then the loss's."""
    stub = LOSSES[loss]
    heads = ("loc", "log_scale") if loss.startswith("logit_") else ("linear",)
    positional = ["input", *(f"{h}_weight" for h in heads), "teacher"]
    keyword = [*(f"{h}_bias" for h in heads), "chunk_size"]
    params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in positional]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in keyword]
    params += [p for p in inspect.signature(stub).parameters.values() if p.kind is p.KEYWORD_ONLY]
    student = ", ".join(f"F.linear(input, {h}_weight, {h}_bias)" for h in heads)

    def linear_stub(*args, **kwargs):  # never called
        raise NotImplementedError

    linear_stub.__name__ = linear_stub.__qualname__ = f"linear_{loss}"
    linear_stub.__signature__ = inspect.Signature(params, return_annotation=Tensor)
    shapes = (f"input: ``[*, D]``; {', '.join(h + '_weight' for h in heads)}: ``[V, D]``; "
              f"{', '.join(h + '_bias' for h in heads)}: ``[V]``;\n        teacher: as for "
              f":func:`edd_ext.{loss}`, or :class:`~edd_ext.LinearTeachers`.")
    linear_stub.__doc__ = (f":func:`edd_ext.{loss}` of ``{student}``, fused with the output layer(s) and chunked.\n"
                           + _LINEAR_NOTE.format(loss=loss) + "\n    " + (stub.__doc__ or "")
                           + f"\n    Linear form:\n        {shapes}\n")
    return linear_stub
