"""A log-scale output layer beside a seq2seq model's own, for logit-space students (SPEC section 2.3).

A logit-space student predicts, per target position, a location mu ``[*, V]`` (the wrapped model's logits)
and a log-scale rho ``[*, V]`` (this head, a second linear layer on the decoder's last hidden state, the
tensor the model's own output layer reads). :class:`LogScaleHeadForSeq2SeqLM` wraps any
``AutoModelForSeq2SeqLM`` so that both are trained, saved (``save_pretrained``) and loaded
(``from_pretrained``, or ``AutoModelForSeq2SeqLM.from_pretrained``) together; it decodes with the wrapped
model (``generate`` uses the location only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForSeq2SeqLM, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import Seq2SeqLMOutput

from edd_ext._validation import check_choice

from .output_layer import capture_output_layer_input
from .teachers import teacher_logits

__all__ = ["LogScaleHeadConfig", "LogScaleHeadForSeq2SeqLM", "LogScaleSeq2SeqLMOutput"]


class LogScaleHeadConfig(PreTrainedConfig):
    """Configuration of :class:`LogScaleHeadForSeq2SeqLM`: the wrapped model's configuration
    (``text_config``), the initial value of the head's bias (``init_log_scale``, rho at start) and the
    distribution over logits the model is trained as (``family``: ``"gaussian"`` or ``"laplace"``; the
    trainer sets it from its loss, ``generate_with_uncertainty`` samples from it)."""

    model_type = "edd_log_scale_head"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="marian")}

    text_config: PreTrainedConfig | dict | None = None
    init_log_scale: float = 0.0
    family: str = "gaussian"
    is_encoder_decoder: bool | None = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_choice("family", self.family, ("gaussian", "laplace"))
        for name in ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id", "vocab_size"):
            if getattr(self, name, None) is None and getattr(self.text_config, name, None) is not None:
                setattr(self, name, getattr(self.text_config, name))


@dataclass
class LogScaleSeq2SeqLMOutput(Seq2SeqLMOutput):
    """The wrapped model's output (``logits`` = the location mu ``[B, T, V]``) plus ``log_scale`` rho
    ``[B, T, V]``."""

    log_scale: Optional[Tensor] = None


class LogScaleHeadForSeq2SeqLM(PreTrainedModel):
    """A seq2seq model with a second output layer, ``log_scale = head(h)``, on the hidden state ``h`` its own
    output layer reads (for T5 that is the decoder output already scaled by d_model^-1/2).

    Build it from a model (``LogScaleHeadForSeq2SeqLM.from_model(model)``), from a configuration
    (``LogScaleHeadForSeq2SeqLM(LogScaleHeadConfig(text_config=cfg))``) or from a saved directory
    (``from_pretrained``). ``forward`` takes the wrapped model's arguments and returns
    :class:`LogScaleSeq2SeqLMOutput`.

    Shape:
        the wrapped model's inputs; output ``logits`` and ``log_scale`` ``[B, T, V]``.
    """

    config_class = LogScaleHeadConfig
    base_model_prefix = "base"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def __init__(self, config: LogScaleHeadConfig, base: Optional[PreTrainedModel] = None):
        super().__init__(config)
        self.base = base if base is not None else AutoModelForSeq2SeqLM.from_config(config.text_config)
        lm_head = self.base.get_output_embeddings()
        self.log_scale_head = nn.Linear(lm_head.in_features, lm_head.out_features)
        self.post_init()

    @classmethod
    def from_model(cls, model: PreTrainedModel, *, init_log_scale: float = 0.0,
                   family: str = "gaussian") -> LogScaleHeadForSeq2SeqLM:
        """Wrap ``model`` (its weights are kept; the head starts at weight 0.02 N(0, 1), bias
        ``init_log_scale``)."""
        # a copy of the model's configuration: building this one must not change the model's (e.g. its attention
        # implementation)
        config = LogScaleHeadConfig(text_config=model.config.to_dict(), init_log_scale=init_log_scale, family=family)
        wrapped = cls(config, base=model)
        return wrapped.to(device=model.device, dtype=model.dtype).train(model.training)

    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "log_scale_head", None):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.constant_(module.bias, self.config.init_log_scale)

    def get_encoder(self):
        return self.base.get_encoder()

    def get_decoder(self):
        return self.base.get_decoder()

    def get_input_embeddings(self):
        return self.base.get_input_embeddings()

    def get_output_embeddings(self):
        return self.base.get_output_embeddings()

    def prepare_decoder_input_ids_from_labels(self, labels: Tensor) -> Tensor:
        return self.base.prepare_decoder_input_ids_from_labels(labels=labels)

    def forward(self, *args, **kwargs) -> LogScaleSeq2SeqLMOutput:
        kwargs["return_dict"] = True
        with capture_output_layer_input(self.base) as captured:
            out = self.base(*args, **kwargs)
        hidden = captured.hidden  # what the wrapped model's output layer read: [B, T, D]
        return LogScaleSeq2SeqLMOutput(log_scale=self.log_scale_head(hidden), **out)

    @torch.no_grad()
    def init_from_teachers(self, teachers: Sequence[nn.Module], *, labels: Tensor, **inputs) -> None:
        """Start the log-scale head at the teachers' per-class spread, and the location's per-class offset
        (the wrapped model's ``final_logits_bias``, where it has one) at their mean log-probability, measured
        on one batch (``labels`` ``[B, T]`` with -100 at padding; ``inputs`` as for ``forward``).

        A logit-space student regresses all V teacher log-probabilities, most of them near ln(1/V) or far
        below; starting there spares the optimiser moving every class by many nats first.
        """
        inputs = dict(inputs)
        if inputs.get("decoder_input_ids") is None:
            inputs["decoder_input_ids"] = self.prepare_decoder_input_ids_from_labels(labels)
        x = torch.log_softmax(teacher_logits(teachers, inputs).float(), -1)[labels.ne(-100)]  # [N, M, V]
        mean = x.mean(1)
        spread = (mean.var(0, unbiased=False) + x.var(1, unbiased=False).mean(0)).clamp_min(1e-4).sqrt()
        self.log_scale_head.bias.copy_(spread.log())
        self.log_scale_head.weight.mul_(0.1)
        final = getattr(self.base, "final_logits_bias", None)
        if final is not None:
            final.copy_(mean.mean(0).reshape(final.shape))

    @property
    def generation_config(self):
        return self.base.generation_config

    @torch.no_grad()
    def generate(self, *args, **kwargs):
        """Decodes with the wrapped model (the location mu); see :func:`generate_with_uncertainty` for the
        hypotheses' uncertainty."""
        return self.base.generate(*args, **kwargs)


AutoConfig.register(LogScaleHeadConfig.model_type, LogScaleHeadConfig, exist_ok=True)
AutoModelForSeq2SeqLM.register(LogScaleHeadConfig, LogScaleHeadForSeq2SeqLM, exist_ok=True)
