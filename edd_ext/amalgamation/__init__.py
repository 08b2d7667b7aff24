"""Knowledge amalgamation with teacher uncertainty (MUKA, SPEC section 4).

K teachers, each trained on its own subset of a label set, supervise one student over the union of the
subsets, without labels. For every input each teacher is run R times with Monte-Carlo dropout; the R
passes play the role of ensemble members, so a teacher's logits for a batch are ``[*, R, C_i]`` and the
library's ensemble-uncertainty op gives, per input, the entropy of the mean prediction H[p̄ᵢ] (``total``)
and the mutual information between prediction and dropout mask (``mutual_information``).

Teacher i's adequacy for an input is

    sᵢ = 1 − H[p̄ᵢ] / ln Cᵢ                    (measure="entropy", the default)
    sᵢ = 1 − MI / ln Cᵢ                        (measure="mutual_information")

which lies in [0, 1] (both measures are between 0 and ln Cᵢ) and is comparable between teachers with
different numbers of classes. Each p̄ᵢ is zero-padded into the union label space through a label map
(``label_maps[i][j]`` = the union index of teacher i's class j) and the teachers are combined into a target
t ∈ Δ^C per input:

    mode="hard":     t = pad(p̄_{i*}),  i* = argmax_i sᵢ   (ties: the first teacher)
    mode="soft":     t = Σᵢ wᵢ pad(p̄ᵢ),  w = softmax(s / selection_temperature)  (0.2 by default)
    mode="average":  t = (1/K) Σᵢ pad(p̄ᵢ)   — the uncertainty-free baseline

As ``selection_temperature → 0`` the soft weights tend to the hard one-hot selection. The student with
logits z ∈ ℝ^C is trained with

    L = w_margin · KL(t ‖ softmax(z / τ)) = w_margin · Σₖ tₖ (ln tₖ − log_softmax(z / τ)ₖ),
    ∂L/∂zₖ = w_margin · (softmax(z / τ)ₖ − tₖ) / τ,

where w_margin = 1, or, with ``margin_weighting=True``, the gap s₍₁₎ − s₍₂₎ ∈ [0, 1] between the best and
the second-best teacher score (inputs on which the teachers' adequacy is ambiguous count less). The target
is a constant: no gradient reaches the teachers. The loss is not multiplied by τ² (as some distillation
recipes do); scale it yourself if yours expects that.

Everything is batched over the positions ``[*]`` (no Python loop over examples; the only loops are over the
K teachers and the R dropout passes), works on CPU and CUDA tensors, and accumulates in float32 (float64
for float64 inputs).
"""
from ._checks import MEASURES, MODES
from .dropout import DROPOUT_TYPES, mc_dropout_logits
from .loss import AmalgamationLoss, amalgamation_kl, amalgamation_loss
from .targets import (
                      AmalgamationTargets,
                      amalgamation_targets,
                      margin_weights,
                      pad_to_union,
                      selection_weights,
                      teacher_mean_probs,
                      teacher_score,
)

__all__ = [
    "MODES",
    "MEASURES",
    "DROPOUT_TYPES",
    "AmalgamationTargets",
    "AmalgamationLoss",
    "mc_dropout_logits",
    "teacher_score",
    "teacher_mean_probs",
    "pad_to_union",
    "selection_weights",
    "margin_weights",
    "amalgamation_targets",
    "amalgamation_kl",
    "amalgamation_loss",
]
