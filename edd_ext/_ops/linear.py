"""The op behind the fused linear losses (SPEC section 2.5): ``torch.ops.edd_ext.linear_loss``, with its fake
kernel and autograd beside it, and the call wrapper the public ``edd_ext.linear_*`` functions use.

One call runs over the positions in chunks. For each chunk of C positions it forms the student's logits
``input_chunk @ W.T + b`` ``[C, V]`` (two of them, loc and log-scale, for the logit-space losses) and the teachers'
``[C, M, V]`` logits (sliced from the given logits, or formed from ``LinearTeachers`` hidden states and output
layers) or statistics rows (``EnsembleStats``, or ``TopKEnsembleStats`` for the top-k ops), runs the loss's
compiled kernel on the chunk with ``compute_grad=True`` (loss and dLoss/dlogits in one fused pass), and at once
turns that ``[C, V]`` gradient G into the chunk's share of the parameter gradients:

    grad_input[chunk] = G @ W            grad_W += G.T @ input_chunk            grad_b += G.sum(0)

so the backward keeps nothing of size ``[N, V]``: the op returns the loss together with ``grad_input [N, D]``,
``grad_W [V, D]`` and ``grad_b [V]`` (the gradients of a loss whose incoming gradient is 1), and the registered
backward only multiplies them by the incoming scalar. ``grad_W`` and ``grad_b`` are accumulated over the chunks
in float32 for float16 / bfloat16 parameters. ``"mean"`` divides by the unmasked positions of the whole call, a
device tensor (no host synchronisation).

``reduction="none"`` cannot be finished in the forward (the incoming gradient differs per position): its forward
computes the per-position losses only, and its backward runs the op again with ``grad_loss`` (the incoming
``[N]`` gradient), recomputing every chunk and weighting each position's gradient rows by it: two passes.

Masked positions (``mask`` False) never reach the output layer on CPU: each chunk is C unmasked positions,
gathered by index (finding them is a host operation there, so it costs no device synchronisation). On other
devices the chunks are consecutive positions, whose masked rows are zeroed before the matmul and skipped by the
kernel (loss and gradient exactly 0 whatever they hold): finding the unmasked ones would synchronise.

Where the compiled kernels do not serve the device (no build, or a device without kernels: the one fallback rule,
``edd_ext._ops.fused``), the per-chunk loss is ``edd_ext.reference``'s, differentiated with ``torch.func.vjp``
(the op runs below autograd, so ``torch.autograd.grad`` does not see its tensors); the chunking and memory are the
same.

The gradients are first order: the saved gradients are constants of the backward graph.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from .. import _signatures as S
from .. import reference
from ..types import EnsembleStats, TopKEnsembleStats
from . import fused
from .losses import proxy_measure_field

__all__ = ["linear_loss", "auto_chunk_size", "LOSSES", "OPTIONS"]

NONE, SUM, MEAN = 0, 1, 2
REDUCTION_CODES = {"none": NONE, "sum": SUM, "mean": MEAN}

#: loss -> its keywords other than ``mask`` and ``reduction`` (the op takes the union; each loss reads its own).
LOSSES = {name: tuple(k for k in S.defaults(stub) if k not in ("mask", "reduction"))
          for name, stub in S.LOSSES.items()}
#: Every loss keyword with its default (from the losses' signatures).
OPTIONS = {k: v for stub in S.LOSSES.values() for k, v in S.defaults(stub).items() if k not in ("mask", "reduction")}

#: The automatic chunk size: as many positions as fit CHUNK_BYTES of a chunk's logit-sized tensors (student logits
#: and their gradients, teacher logits, counted in float32), within [MIN_CHUNK, MAX_CHUNK]. On CPU the matmuls of
#: chunks under ~500 positions run markedly slower per position (V = 32000, D = 256) and beyond ~1000 gain nothing;
#: at V = 128000 chunks of 174 positions took up to 1.3x the wall time of 348 on a loaded machine (the same CPU
#: time: more, smaller matmuls, each a synchronisation of the threads).
CHUNK_BYTES = 512 * 2**20
MIN_CHUNK, MAX_CHUNK = 256, 1024


def auto_chunk_size(vocab: int, members: int, width: int, heads: int = 1) -> int:
    """Positions per chunk: as many as fit ``CHUNK_BYTES`` with a chunk's ``[C, V]`` student logits and gradients
    (``heads`` of each), its ``[C, M, V]`` teacher logits and its hidden states (``(M + 1) x D``), within
    ``[MIN_CHUNK, MAX_CHUNK]``."""
    per_position = 4 * ((members + 2 * heads) * vocab + (members + 1) * width)
    return max(MIN_CHUNK, min(MAX_CHUNK, CHUNK_BYTES // per_position))


# ---- the chunk loop ----


def _gathers_rows(device: torch.device) -> bool:
    """Whether chunks gather the unmasked positions by index on ``device`` (only where finding them needs no
    device synchronisation)."""
    return device.type == "cpu"


def _chunks(n: int, chunk_size: int, mask: Optional[Tensor]):
    """Yield ``(rows, chunk_mask)``: ``rows`` an index tensor of up to ``chunk_size`` unmasked positions (CPU
    with a mask; ``chunk_mask`` None) or a slice of consecutive positions (with their mask, or None)."""
    if mask is not None and _gathers_rows(mask.device):
        index = mask.nonzero().squeeze(1)
        for start in range(0, index.numel(), chunk_size):
            yield index[start:start + chunk_size], None
        return
    for start in range(0, n, chunk_size):
        rows = slice(start, min(n, start + chunk_size))
        yield rows, None if mask is None else mask[rows]


class _Scratch:
    """Chunk-sized tensors reused from one chunk to the next, by key. A fresh CPU allocation of this size is
    mapped anew, and the OS zeroes every page at its first touch: for a chunk's [C, M, V] teacher logits that took
    about five times the CPU time of writing a reused buffer (C = 694, M = 4, V = 32000)."""

    def __init__(self) -> None:
        self._tensors = {}

    def __call__(self, key, shape, like: Tensor) -> Tensor:
        """An uninitialised tensor of ``shape`` with ``like``'s dtype and device."""
        numel = math.prod(shape)
        t = self._tensors.get(key)
        if t is None or t.numel() < numel:
            t = self._tensors[key] = like.new_empty(numel)
        return t[:numel].view(shape)


def _take(t: Tensor, rows, scratch: Optional[_Scratch] = None, key=None) -> Tensor:
    """The ``rows`` of ``t``: a view for a slice; gathered (into ``scratch[key]`` when given) for an index."""
    if isinstance(rows, slice):
        return t[rows]
    if scratch is None:
        return t.index_select(0, rows)
    return torch.index_select(t, 0, rows, out=scratch(key, (rows.numel(), *t.shape[1:]), t))


def _linear_into(out: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``F.linear(x, weight, bias)`` written into ``out``."""
    if bias is None:
        return torch.mm(x, weight.t(), out=out)
    return torch.addmm(bias, x, weight.t(), out=out)


def _put(dst: Tensor, rows, src: Tensor) -> None:
    if isinstance(rows, slice):
        dst[rows] = src
    else:
        dst.index_copy_(0, rows, src.to(dst.dtype))


def _add_product(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """``acc += a @ b`` with the product in ``a``'s dtype and the sum in ``acc``'s."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    else:
        acc.add_(torch.mm(a, b))


def _teacher_chunk(rows, scratch, teacher_logits, teacher_stats, teacher_top_k, teacher_inputs, teacher_weights,
                   teacher_biases, vocab):
    """The teacher of the chunk ``rows``: ``[C, M, V]`` logits (given, or formed from the hidden states and
    output layers), or the :class:`EnsembleStats` or :class:`TopKEnsembleStats` of the rows."""
    if teacher_logits is not None:
        return _take(teacher_logits, rows, scratch, "teacher")
    if teacher_stats:
        return EnsembleStats(*(_take(t, rows, scratch, ("teacher", i)) for i, t in enumerate(teacher_stats)))
    if teacher_top_k:
        return TopKEnsembleStats(*(_take(t, rows) for t in teacher_top_k), num_classes=vocab)
    if teacher_weights[0].dim() == 3:  # stacked: [N, M, D], [M, V, D], [M, V]
        hidden = _take(teacher_inputs[0], rows)
        members = [(hidden[:, m], w, None if teacher_biases[0] is None else teacher_biases[0][m])
                   for m, w in enumerate(teacher_weights[0])]
    else:
        members = [(_take(h, rows), w, b) for h, w, b in zip(teacher_inputs, teacher_weights, teacher_biases)]
    hidden, weight = members[0][:2]
    logits = scratch("teacher", (hidden.shape[0], len(members), weight.shape[0]), hidden)
    for m, (h, w, b) in enumerate(members):
        # written in place into the [C, M, V] rows (a BLAS leading dimension of M x V): no permuted copy
        _linear_into(logits[:, m], h, w, b)
    return logits


def _kernel_loss(loss, students, teacher, mask, reduction, compute_grad, o):
    """The compiled op on one chunk: (loss, [dLoss/dstudent for each student tensor])."""
    ops = torch.ops.edd_ext
    if isinstance(teacher, TopKEnsembleStats):
        out = _top_k_kernel_loss(loss, students[0], teacher, mask, reduction, compute_grad, o)
        return out[0], list(out[1:])
    logits, stats = (None, teacher) if isinstance(teacher, EnsembleStats) else (teacher, None)
    if loss == "dirichlet_nll":
        out = ops.dirichlet_nll(students[0], logits, None if stats is None else stats.mean_log_probs, mask,
                                o["model_offset"], reduction, compute_grad)
    elif loss == "proxy_dirichlet_kl":
        rows = measure = None
        if stats is not None:
            rows, measure = stats.mean_probs, getattr(stats, proxy_measure_field(o["precision"]))
        out = ops.proxy_dirichlet_kl(students[0], logits, rows, measure, mask, o["direction"], o["precision"],
                                     o["model_offset"], o["target_offset"], o["eps"], o["max_precision"],
                                     o["reference_code_compat"], reduction, compute_grad)
    elif loss == "ensemble_kl":
        out = ops.ensemble_kl(students[0], logits, None if stats is None else stats.mean_probs, mask, reduction,
                              compute_grad)
    else:
        out = ops.logit_nll(students[0], students[1], logits, mask, loss.split("_")[1], o["teacher_norm"],
                            o["temperature"], o["min_scale"], reduction, compute_grad)
    return out[0], list(out[1:])


def _top_k_kernel_loss(loss, student, teacher, mask, reduction, compute_grad, o):
    """The top-k form of the compiled op (``torch.ops.edd_ext.topk_<loss>``) on one chunk: (loss, grad)."""
    ops, indices = torch.ops.edd_ext, teacher.indices.long()
    if loss == "dirichlet_nll":
        return ops.topk_dirichlet_nll(student, indices, teacher.mean_log_probs, teacher.tail_mean_log_prob, mask,
                                      o["model_offset"], reduction, compute_grad)
    if loss == "proxy_dirichlet_kl":
        measure = getattr(teacher, proxy_measure_field(o["precision"]))
        return ops.topk_proxy_dirichlet_kl(student, indices, teacher.mean_probs, teacher.tail_mass, measure, mask,
                                           o["direction"], o["precision"], o["model_offset"], o["target_offset"],
                                           o["eps"], o["max_precision"], o["reference_code_compat"], reduction,
                                           compute_grad)
    return ops.topk_ensemble_kl(student, indices, teacher.mean_probs, teacher.tail_mass, mask, reduction,
                                compute_grad)


def _reference_loss(loss, students, teacher, mask, reduction, compute_grad, o):
    """``edd_ext.reference`` on one chunk, differentiated with ``torch.func.vjp``."""
    fn = getattr(reference, loss)
    keywords = {k: o[k] for k in LOSSES[loss]}

    def call(*xs):
        return fn(*xs, teacher, mask=mask, reduction="none" if reduction == NONE else "sum", **keywords)

    if not compute_grad:
        return call(*students), []
    value, vjp = torch.func.vjp(call, *students)
    return value, list(vjp(torch.ones_like(value)))


def _loss_dtype(input: Tensor, teacher_dtype: torch.dtype) -> torch.dtype:
    """float64 when the student or the teacher is float64, else float32 (what the kernels return)."""
    return torch.float64 if torch.float64 in (input.dtype, teacher_dtype) else torch.float32


def _teacher_dtype(teacher_logits, teacher_stats, teacher_top_k, teacher_inputs) -> torch.dtype:
    if teacher_logits is not None:
        return teacher_logits.dtype
    if teacher_stats:
        return teacher_stats[0].dtype
    return teacher_top_k[1].dtype if teacher_top_k else teacher_inputs[0].dtype  # top-k: mean_probs


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0)


def _run(input, weights, biases, teacher_logits, teacher_stats, teacher_top_k, teacher_inputs, teacher_weights,
         teacher_biases, mask, grad_loss, loss, options, reduction, chunk_size, input_grad, weight_grad):
    """The chunk loop (see the module docstring): (loss, grad_input | None, [grad_weight | None for each weight],
    [grad_bias | None for each bias]), the parameter gradients in the parameters' dtypes."""
    n = input.shape[0]
    members = teacher_logits.shape[1] if teacher_logits is not None else (
        teacher_weights[0].shape[0] if teacher_weights and teacher_weights[0].dim() == 3 else len(teacher_weights))
    chunk_size = chunk_size or auto_chunk_size(weights[0].shape[0], members, input.shape[1], len(weights))
    loss_dtype = _loss_dtype(input, _teacher_dtype(teacher_logits, teacher_stats, teacher_top_k, teacher_inputs))
    per_position = reduction == NONE
    compute_grad = (input_grad or weight_grad) and (not per_position or grad_loss is not None)
    acc_dtype = torch.promote_types(input.dtype, torch.float32)
    total = input.new_zeros(n if per_position else (), dtype=loss_dtype)
    grad_input = None
    if compute_grad and input_grad:  # rows of masked positions are written only where chunks are consecutive
        gathers = mask is not None and _gathers_rows(mask.device)
        grad_input = torch.zeros_like(input) if gathers else torch.empty_like(input)
    grad_weights = [torch.zeros(w.shape, dtype=acc_dtype, device=w.device) if compute_grad and weight_grad else None
                    for w in weights]
    grad_biases = [torch.zeros(b.shape, dtype=acc_dtype, device=b.device)
                   if compute_grad and weight_grad and b is not None else None for b in biases]
    if grad_loss is not None and mask is not None:  # a masked position's incoming gradient may be anything
        grad_loss = torch.where(mask, grad_loss, grad_loss.new_zeros(()))
    chunk_loss = _kernel_loss if fused(input) else _reference_loss
    scratch = _Scratch()
    for rows, chunk_mask in _chunks(n, chunk_size, mask):
        x = _take(input, rows)
        if chunk_mask is not None:  # keep what masked rows hold (NaN included) out of grad_W
            x = torch.where(chunk_mask.unsqueeze(-1), x, x.new_zeros(()))
        students = [_linear_into(scratch(("student", j), (x.shape[0], w.shape[0]), x), x, w, b)
                    for j, (w, b) in enumerate(zip(weights, biases))]
        teacher = _teacher_chunk(rows, scratch, teacher_logits, teacher_stats, teacher_top_k, teacher_inputs,
                                 teacher_weights, teacher_biases, weights[0].shape[0])
        value, grads = chunk_loss(loss, students, teacher, chunk_mask, NONE if per_position else SUM, compute_grad,
                                  options)
        del students, teacher
        if per_position:
            _put(total, rows, value)
        else:
            total.add_(value)
        if not compute_grad:
            continue
        if grad_loss is not None:
            scale = _take(grad_loss, rows).unsqueeze(-1)
            grads = [g.mul_(scale) for g in grads]
        if grad_input is not None:
            part = torch.mm(grads[0], weights[0])
            for g, w in zip(grads[1:], weights[1:]):
                part.addmm_(g, w)
            _put(grad_input, rows, part)
        for g, gw, gb in zip(grads, grad_weights, grad_biases):
            if gw is not None:
                _add_product(gw, g.t(), x)
            if gb is not None:
                gb.add_(g.sum(0, dtype=acc_dtype))
    if reduction == MEAN:
        # a device tensor with a mask, else a Python number (torch.tensor(n, device=...) would be a host copy)
        count = mask.sum().clamp_min(1).to(acc_dtype) if mask is not None else max(n, 1)
        total = total / count
        for g in (grad_input, *grad_weights, *grad_biases):
            if g is not None:
                g.div_(count)
    grad_weights = [None if g is None else g.to(w.dtype) for g, w in zip(grad_weights, weights)]
    grad_biases = [None if g is None else g.to(b.dtype) for g, b in zip(grad_biases, biases)]
    return total, grad_input, grad_weights, grad_biases


# ---- the op ----


@torch.library.custom_op("edd_ext::linear_loss", mutates_args=())
def _linear_loss_op(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    log_scale_weight: Optional[Tensor],
    log_scale_bias: Optional[Tensor],
    teacher_logits: Optional[Tensor],
    teacher_stats: List[Tensor],
    teacher_top_k: List[Tensor],
    teacher_inputs: List[Tensor],
    teacher_weights: List[Tensor],
    teacher_biases: List[Optional[Tensor]],
    mask: Optional[Tensor],
    grad_loss: Optional[Tensor],
    loss: str,
    model_offset: float,
    direction: str,
    precision: str,
    target_offset: float,
    eps: float,
    max_precision: Optional[float],
    reference_code_compat: bool,
    teacher_norm: str,
    temperature: float,
    min_scale: float,
    reduction: int,
    chunk_size: Optional[int],
    input_grad: bool,
    weight_grad: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``input [N, D]`` and the student's output layer ``weight [V, D]``, ``bias [V] | None`` (for the logit-space
    losses, the location's; ``log_scale_weight [V, D]`` and ``log_scale_bias`` are the log-scale head's, None
    otherwise); the teacher as ``teacher_logits [N, M, V]``, or ``teacher_stats`` (the seven tensors of an
    :class:`EnsembleStats` over N positions), or ``teacher_top_k`` (the ten tensors of a
    :class:`TopKEnsembleStats`), or hidden states and output layers (``teacher_inputs``,
    ``teacher_weights``, ``teacher_biases``: one stacked ``[N, M, D]`` / ``[M, V, D]`` / ``[M, V] | None`` entry,
    or M entries ``[N, D_m]`` / ``[V, D_m]`` / ``[V] | None``); ``mask [N]``.

    Returns ``(loss, grad_input, grad_weight, grad_bias, grad_log_scale_weight, grad_log_scale_bias)``: the loss
    (``[N]`` for reduction 0 = none, else a scalar; float32, float64 when the student or the teacher is float64)
    and its gradients with respect to ``input`` (if ``input_grad``) and the weights and biases (if
    ``weight_grad``), each ``[0]`` where not computed or absent. Gradients are computed for reductions 1 (sum) and
    2 (mean), and for reduction 0 when ``grad_loss [N]`` (the incoming gradient of the per-position losses) is
    given: the backward of reduction none.
    """
    options = dict(model_offset=model_offset, direction=direction, precision=precision, target_offset=target_offset,
                   eps=eps, max_precision=max_precision, reference_code_compat=reference_code_compat,
                   teacher_norm=teacher_norm, temperature=temperature, min_scale=min_scale)
    weights, biases = _heads(weight, bias, log_scale_weight, log_scale_bias)
    total, grad_input, grad_weights, grad_biases = _run(
        input, weights, biases, teacher_logits, teacher_stats, teacher_top_k, teacher_inputs, teacher_weights,
        teacher_biases, mask, grad_loss, loss, options, reduction, chunk_size, input_grad, weight_grad)
    return _outputs(input, total, grad_input, grad_weights, grad_biases)


def _heads(weight, bias, log_scale_weight, log_scale_bias):
    """([weights], [biases]) of the student's one or two output layers."""
    if log_scale_weight is None:
        return [weight], [bias]
    return [weight, log_scale_weight], [bias, log_scale_bias]


def _outputs(input, total, grad_input, grad_weights, grad_biases):
    """The op's six outputs, ``[0]`` tensors for gradients not computed or of absent parameters."""
    grads = [grad_input, *grad_weights, *[None] * (2 - len(grad_weights)), *grad_biases,
             *[None] * (2 - len(grad_biases))]
    grad_input, gw, gw2, gb, gb2 = (_empty(input) if g is None else g for g in grads)
    return total, grad_input, gw, gb, gw2, gb2


#: Position of each argument of the op.
_ARG = {a.name: i for i, a in enumerate(torch.ops.edd_ext.linear_loss.default._schema.arguments)}
#: The tensor arguments (input ... grad_loss) come first.
_TENSOR_ARGS = _ARG["loss"]


@_linear_loss_op.register_fake
def _linear_loss_fake(input, weight, bias, log_scale_weight, log_scale_bias, teacher_logits, teacher_stats,
                      teacher_top_k, teacher_inputs, teacher_weights, teacher_biases, mask, grad_loss, loss, *options):
    reduction, input_grad, weight_grad = (options[_ARG[k] - _ARG["loss"] - 1]
                                          for k in ("reduction", "input_grad", "weight_grad"))
    dtype = _loss_dtype(input, _teacher_dtype(teacher_logits, teacher_stats, teacher_top_k, teacher_inputs))
    total = input.new_empty(input.shape[:1] if reduction == NONE else (), dtype=dtype)
    computed = reduction != NONE or grad_loss is not None
    weights, biases = _heads(weight, bias, log_scale_weight, log_scale_bias)
    grad_input = torch.empty_like(input) if computed and input_grad else None
    grad_weights = [torch.empty_like(w) if computed and weight_grad else None for w in weights]
    grad_biases = [torch.empty_like(b) if computed and weight_grad and b is not None else None for b in biases]
    return _outputs(input, total, grad_input, grad_weights, grad_biases)


def _setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(*output[1:])
    # the backward returns one entry per argument: for a list of tensors, a list of as many (None) entries
    ctx.structure = [len(a) if isinstance(a, list) and all(isinstance(t, Tensor) for t in a) else None
                     for a in inputs]
    ctx.present = [inputs[_ARG[k]] is not None for k in ("bias", "log_scale_weight", "log_scale_bias")]
    ctx.input_grad, ctx.weight_grad = inputs[_ARG["input_grad"]], inputs[_ARG["weight_grad"]]
    ctx.per_position = inputs[_ARG["reduction"]] == NONE
    if ctx.per_position:  # the backward runs the op again: keep its inputs
        flat, ctx.spec = pytree.tree_flatten(list(inputs[:_TENSOR_ARGS]))
        ctx.save_for_backward(*flat)
        ctx.options = inputs[_TENSOR_ARGS:]
    else:
        ctx.save_for_backward(*output[1:])


def _backward(ctx, grad_loss, *unused):
    out = [None if n is None else [None] * n for n in ctx.structure]
    if grad_loss is None:  # nothing reached the loss
        return tuple(out)
    if ctx.per_position:
        args = pytree.tree_unflatten(list(ctx.saved_tensors), ctx.spec)
        args[_ARG["grad_loss"]] = grad_loss
        grads = torch.ops.edd_ext.linear_loss(*args, *ctx.options)[1:]
    else:
        grads = [g * grad_loss for g in ctx.saved_tensors]
    grad_input, grad_weight, grad_bias, grad_log_scale_weight, grad_log_scale_bias = grads
    if ctx.input_grad:
        out[_ARG["input"]] = grad_input
    if ctx.weight_grad:
        has_bias, has_log_scale, has_log_scale_bias = ctx.present
        out[_ARG["weight"]] = grad_weight
        out[_ARG["bias"]] = grad_bias if has_bias else None
        out[_ARG["log_scale_weight"]] = grad_log_scale_weight if has_log_scale else None
        out[_ARG["log_scale_bias"]] = grad_log_scale_bias if has_log_scale_bias else None
    return tuple(out)


_linear_loss_op.register_autograd(_backward, setup_context=_setup_context)


# ---- call wrapper ----


def linear_loss(loss: str, input: Tensor, weights: Sequence[Tensor], biases: Sequence[Optional[Tensor]], *,
                teacher_logits: Optional[Tensor] = None, teacher_stats: Sequence[Tensor] = (),
                teacher_top_k: Sequence[Tensor] = (), teacher_inputs: Sequence[Tensor] = (),
                teacher_weights: Sequence[Tensor] = (), teacher_biases: Sequence[Optional[Tensor]] = (),
                mask: Optional[Tensor], reduction: str, chunk_size: Optional[int], **options) -> Tensor:
    """The loss of ``torch.ops.edd_ext.linear_loss`` (arguments already checked and flattened to N positions;
    ``weights`` / ``biases``: the student's one output layer, or the loc and log-scale heads), with the gradients
    computed only for what autograd needs."""
    grad_mode = torch.is_grad_enabled()
    input_grad = grad_mode and input.requires_grad
    weight_grad = grad_mode and any(t is not None and t.requires_grad for t in (*weights, *biases))
    heads = list(zip(weights, biases)) + [(None, None)]
    (weight, bias), (log_scale_weight, log_scale_bias) = heads[:2]
    o = {**OPTIONS, **options}
    detached = lambda ts: [None if t is None else t.detach() for t in ts]  # noqa: E731  (teachers: constants)
    return torch.ops.edd_ext.linear_loss(
        input, weight, bias, log_scale_weight, log_scale_bias,
        None if teacher_logits is None else teacher_logits.detach(), detached(teacher_stats), detached(teacher_top_k),
        detached(teacher_inputs), detached(teacher_weights), detached(teacher_biases), mask, None, loss,
        model_offset=float(o["model_offset"]), direction=o["direction"], precision=o["precision"],
        target_offset=float(o["target_offset"]), eps=float(o["eps"]),
        max_precision=None if o["max_precision"] is None else float(o["max_precision"]),
        reference_code_compat=bool(o["reference_code_compat"]), teacher_norm=o["teacher_norm"],
        temperature=float(o["temperature"]), min_scale=float(o["min_scale"]), reduction=REDUCTION_CODES[reduction],
        chunk_size=chunk_size, input_grad=input_grad, weight_grad=weight_grad,
    )[0]
