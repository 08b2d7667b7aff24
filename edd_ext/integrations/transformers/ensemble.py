"""An ensemble of seq2seq models that ``generate`` can decode with: each step predicts the members' mean
probability, ln p-bar = logsumexp_m log_softmax(u^(m)) - ln M.

The encoder outputs of the M members are concatenated along the feature axis (``[B, S, sum_m D_m]``), so
that ``generate`` expands them for beam search like any model's; each member reads its own slice. The
members' key/value caches are not kept: every step runs each member on the whole prefix (``use_cache`` is
off), which is correct for greedy and beam search alike and costs O(L^2) decoder work per hypothesis.
"""
from __future__ import annotations

import copy
import math
from typing import List, Sequence

import torch
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from .checks import check_same_vocabulary

__all__ = ["EnsembleForGeneration"]

_SPECIAL_IDS = ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id")


class EnsembleConfig(PreTrainedConfig):
    """Minimal configuration of :class:`EnsembleForGeneration` (the members keep their own)."""

    model_type = "edd_ensemble"
    vocab_size: int | None = None
    is_encoder_decoder: bool | None = True


class _ConcatenatedEncoders(nn.Module):
    """Runs every member's encoder; returns their last hidden states concatenated ``[B, S, sum_m D_m]``."""

    def __init__(self, members: Sequence[PreTrainedModel]):
        super().__init__()
        self.encoders = nn.ModuleList([m.get_encoder() for m in members])
        self.main_input_name = "input_ids"

    def forward(self, input_ids=None, attention_mask=None, **kwargs) -> BaseModelOutput:
        states = [enc(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
                  for enc in self.encoders]
        return BaseModelOutput(last_hidden_state=torch.cat(states, dim=-1))


class EnsembleForGeneration(PreTrainedModel, GenerationMixin):
    """Decodes with the mean of the members' probabilities, with the first member's generation settings
    (``generation_config``) except ``use_cache``.

    ``forward`` returns ``logits`` = ln p-bar ``[B, T, V]`` (log-probabilities: softmax of them is p-bar) and
    ``member_logits`` is available from :meth:`member_logits`. The members must share the vocabulary and
    the special token ids (checked).
    """

    config_class = EnsembleConfig
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(self, members: Sequence[PreTrainedModel]):
        members = list(members)
        if not members:
            raise ValueError("members: expected at least one model, got an empty sequence")
        check_same_vocabulary(members[0], members, reference_name="members[0]", others_name="members")
        first = members[0].config
        config = EnsembleConfig(vocab_size=members[0].get_output_embeddings().out_features,
                                **{k: getattr(first, k, None) for k in _SPECIAL_IDS})
        super().__init__(config)
        self.members = nn.ModuleList(members)
        self.encoder = _ConcatenatedEncoders(members)
        self.generation_config = copy.deepcopy(members[0].generation_config)
        self.generation_config.use_cache = False
        self._widths = [m.config.d_model for m in members]  # each encoder's output width

    def get_encoder(self):
        return self.encoder

    def _split_encoder_states(self, encoder_outputs) -> List[Tensor]:
        states = encoder_outputs[0] if isinstance(encoder_outputs, (tuple, list)) else encoder_outputs.last_hidden_state
        return list(torch.split(states, self._widths, dim=-1))

    def member_logits(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None,
                      **kwargs) -> Tensor:
        """The members' logits ``[B, T, M, V]``."""
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        states = self._split_encoder_states(encoder_outputs)
        logits = [m(attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                    encoder_outputs=BaseModelOutput(last_hidden_state=s), use_cache=False, return_dict=True).logits
                  for m, s in zip(self.members, states)]
        return torch.stack(logits, dim=-2)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None,
                **kwargs) -> Seq2SeqLMOutput:
        logits = self.member_logits(input_ids, attention_mask, decoder_input_ids, encoder_outputs)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        mean = torch.logsumexp(log_probs, dim=-2) - math.log(log_probs.shape[-2])
        return Seq2SeqLMOutput(logits=mean)
