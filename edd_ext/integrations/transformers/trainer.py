"""``EnsembleDistillationTrainer``: a ``Seq2SeqTrainer`` that distils an ensemble of seq2seq teachers into
its model with one of the library's fused losses.

Normalisation. The loss of a micro-batch is the objective summed over its target tokens (labels != -100)
divided by ``num_items_in_batch``, the number of target tokens of the whole optimisation step: every
gradient-accumulation micro-batch of every process (the Trainer counts them once per step and, with
``average_tokens_across_devices=True``, its default, all-reduces the count). Because
``DistributedDataParallel`` averages gradients over the W processes, the loss is multiplied by W. The
gradient of a step is then the gradient of (sum over all its tokens) / (their number) whatever the number of
processes or accumulation steps the batch is split into; tests/test_transformers_ddp.py checks this against a
single-process run.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from transformers import Seq2SeqTrainer

from .checks import check_teachers, check_tokenizers, unwrap
from .log_scale_head import LogScaleHeadForSeq2SeqLM
from .objective import LOSSES, DistillationObjective, linear_losses_available
from .output_layer import hidden_states_only, output_layer, supports_hidden_states
from .teachers import prepare_teachers, teacher_hidden_states, teacher_logits

__all__ = ["EnsembleDistillationTrainer"]

_TEACHER_INPUTS = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")


class EnsembleDistillationTrainer(Seq2SeqTrainer):
    """Distil ``teachers`` into ``model`` with an ensemble-distribution-distillation loss.

    Args:
        model: the student, a seq2seq ``PreTrainedModel``; for a logit-space loss a
            :class:`LogScaleHeadForSeq2SeqLM`.
        args: ``Seq2SeqTrainingArguments``; the other keyword arguments as for ``Seq2SeqTrainer``
            (``train_dataset``, ``data_collator``, ``processing_class``, ...). Batches must hold ``labels``
            ``[B, T]`` with -100 at padding (``DataCollatorForSeq2Seq`` does this).
        teachers: a list of seq2seq models with the student's vocabulary. They are moved (in place) to the
            training device and ``teacher_dtype``, frozen, run in evaluation mode under ``torch.no_grad()`` and
            never wrapped for data parallelism (each process runs all of them on its own micro-batches).
        loss: one of ``"ensemble_kl"``, ``"dirichlet_nll"``, ``"proxy_dirichlet_kl"``, ``"logit_gaussian_nll"``,
            ``"logit_laplace_nll"`` (SPEC section 2).
        loss_options: keyword options of that loss (e.g. ``{"direction": "forward"}``, ``{"min_scale": 0.01}``).
        loss_weight, anchor_weight: the objective is ``loss_weight * loss + anchor_weight * ensemble_kl(logits)``
            (see :class:`~edd_ext.integrations.transformers.objective.DistillationObjective`).
        temperature: the teachers' temperature T (their logits are divided by T).
        teacher_dtype: ``torch.bfloat16`` / ``torch.float16`` to run the teachers in half precision.
        teacher_tokenizers: the teachers' tokenizers, checked to equal ``processing_class``'s vocabulary.
        use_linear_losses: ``None`` (default): the fused linear losses (``E.linear_*``: from the last hidden
            states and output layers, no ``[N, V]`` logits) when this ``edd_ext`` has them and every model's
            architecture is supported (``output_layer.LINEAR_ARCHITECTURES``), else the logits; ``True``:
            require them; ``False``: always the logits. Evaluation always uses the logits.
    """

    #: the loss returned by compute_loss is already normalised over the whole accumulated step
    loss_is_scaled_for_ga = True

    def __init__(self, model: Optional[nn.Module] = None, args=None, *, teachers: Sequence[nn.Module],
                 loss: str = "proxy_dirichlet_kl", loss_options: Optional[dict] = None, loss_weight: float = 1.0,
                 anchor_weight: float = 0.0, temperature: float = 1.0, teacher_dtype: Optional[torch.dtype] = None,
                 teacher_tokenizers: Optional[Sequence] = None, use_linear_losses: Optional[bool] = None,
                 **kwargs):
        self.objective = DistillationObjective(loss, dict(loss_options or {}), loss_weight, anchor_weight,
                                               temperature)
        if model is None:
            raise ValueError("model: expected the student seq2seq model, got None")
        has_head = isinstance(unwrap(model), LogScaleHeadForSeq2SeqLM)
        if self.objective.uses_log_scale and not has_head:
            raise ValueError(
                f"model: loss={loss!r} trains a location and a log-scale per class; wrap the student as "
                f"LogScaleHeadForSeq2SeqLM.from_model(model), got a {type(unwrap(model)).__name__}"
            )
        if has_head and not self.objective.uses_log_scale:
            raise ValueError(
                f"model: a LogScaleHeadForSeq2SeqLM student is for the logit-space losses "
                f"{[k for k, v in LOSSES.items() if v]}, got loss={loss!r}; train model.base instead"
            )
        check_teachers(model, teachers)
        check_tokenizers(kwargs.get("processing_class"), teacher_tokenizers)
        if has_head:
            unwrap(model).config.family = self.objective.family
        super().__init__(model=model, args=args, **kwargs)
        # the Trainer counts the step's target tokens (num_items_in_batch) only for models that take loss
        # keywords; compute_loss below needs the count for every model
        self.model_accepts_loss_kwargs = True
        self.teachers = prepare_teachers(teachers, self.args.device, teacher_dtype)
        self.use_linear_losses = self._resolve_linear(use_linear_losses)

    def _resolve_linear(self, requested: Optional[bool]) -> bool:
        if requested is False:
            return False
        missing = None
        if not linear_losses_available():
            missing = "this edd_ext has no fused linear losses (edd_ext.linear_*)"
        else:
            unsupported = [type(m).__name__ for m in [self.model, *self.teachers] if not supports_hidden_states(m)]
            if unsupported:
                missing = f"the output layer of {unsupported} is not known to be a plain linear layer"
        if missing is None:
            return True
        if requested:
            raise ValueError(f"use_linear_losses: True needs the fused linear losses, but {missing}")
        return False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The objective over the batch's target tokens, normalised as the module docstring says."""
        labels = inputs.get("labels")
        if labels is None:
            raise ValueError(
                f"inputs: expected 'labels' [B, T] with -100 at padding in every batch, got keys {sorted(inputs)}"
            )
        mask = labels.ne(-100)
        student_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        if student_inputs.get("decoder_input_ids") is None:
            student_inputs["decoder_input_ids"] = unwrap(model).prepare_decoder_input_ids_from_labels(labels=labels)
        teacher_inputs = {k: student_inputs[k] for k in _TEACHER_INPUTS if k in student_inputs}
        if self.use_linear_losses and not return_outputs:
            loss_sum, outputs = self._linear_objective(model, student_inputs, teacher_inputs, mask)
        else:
            outputs = model(**student_inputs)
            loss_sum = self.objective.from_logits(outputs.logits, getattr(outputs, "log_scale", None),
                                                  teacher_logits(self.teachers, teacher_inputs), mask)
        if num_items_in_batch is None:  # one batch on its own (e.g. called outside the training loop)
            loss = loss_sum / mask.sum().clamp_min(1)
        else:
            loss = loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices:  # num_items_in_batch counts every process's tokens
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _linear_objective(self, model, student_inputs: dict, teacher_inputs: dict, mask):
        student = unwrap(model)
        with hidden_states_only(student) as captured:
            outputs = model(**student_inputs)  # through the DDP wrapper: its forward arms the gradient hooks
        head = getattr(student, "log_scale_head", None)
        log_scale_layer = None if head is None else (head.weight, head.bias)
        hidden, layers = teacher_hidden_states(self.teachers, teacher_inputs)
        loss_sum = self.objective.from_hidden(captured.hidden, output_layer(student), log_scale_layer, hidden, layers,
                                              mask)
        return loss_sum, outputs
