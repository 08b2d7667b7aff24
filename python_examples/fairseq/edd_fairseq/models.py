"""A fairseq transformer with a second output head: the log-scale of a distribution over logits.

``--arch edd_transformer_logit`` is the student of the logit-space criteria (``edd_logit_gaussian``,
``edd_logit_laplace``). Its decoder returns the usual ``[B, T, V]`` logits, which are the location mu of the
distribution (so beam search, scoring and every fairseq tool use it unchanged, decoding with softmax(mu)),
and puts the log-scale rho ``[B, T, V]`` in ``extra["log_scale"]``. The log-scale head is a linear layer
from the decoder's output features, initialised to the constant ``--log-scale-init`` (zero weights), so a
fresh model starts from s = exp(log_scale_init) everywhere.

Every option of ``--arch transformer`` is accepted; ``edd_transformer_logit_tiny`` is a 1+1-layer,
64-dimensional version for tests and CPU examples.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import (
    TransformerConfig,
    TransformerDecoderBase,
    TransformerModel,
    base_architecture,
)
from torch import Tensor, nn

__all__ = ["LogScaleTransformerDecoder", "LogitDistributionTransformerModel"]


class LogScaleTransformerDecoder(TransformerDecoderBase):
    """Transformer decoder whose forward also returns ``extra["log_scale"]`` (``[B, T, V]``)."""

    def __init__(self, cfg, dictionary, embed_tokens, no_encoder_attn=False, log_scale_init=0.0):
        super().__init__(cfg, dictionary, embed_tokens, no_encoder_attn=no_encoder_attn)
        self.log_scale_projection = nn.Linear(self.output_embed_dim, len(dictionary), bias=True)
        nn.init.zeros_(self.log_scale_projection.weight)
        nn.init.constant_(self.log_scale_projection.bias, float(log_scale_init))

    def upgrade_state_dict_named(self, state_dict, name):
        """Accept a plain transformer's weights (``--finetune-from-model`` a categorical model or teacher):
        a missing log-scale head keeps its initial value."""
        state_dict = super().upgrade_state_dict_named(state_dict, name)
        prefix = f"{name}.log_scale_projection." if name else "log_scale_projection."
        for key, value in self.log_scale_projection.state_dict().items():
            state_dict.setdefault(prefix + key, value.detach().clone())
        return state_dict

    def forward(
        self,
        prev_output_tokens,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
        features_only: bool = False,
        full_context_alignment: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
        src_lengths: Optional[Any] = None,
        return_all_hiddens: bool = False,
    ):
        x, extra = self.extract_features(
            prev_output_tokens,
            encoder_out=encoder_out,
            incremental_state=incremental_state,
            full_context_alignment=full_context_alignment,
            alignment_layer=alignment_layer,
            alignment_heads=alignment_heads,
        )
        if not features_only:
            extra["log_scale"] = self.log_scale_projection(x)
            x = self.output_layer(x)
        return x, extra


@register_model("edd_transformer_logit")
class LogitDistributionTransformerModel(TransformerModel):
    """``transformer`` whose decoder predicts a location (the logits) and a log-scale per class.

    Shape:
        ``model(src_tokens, src_lengths, prev_output_tokens)`` -> ``(loc [B, T, V], extra)`` with
        ``extra["log_scale"]`` of shape ``[B, T, V]``.
    """

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        parser.add_argument(
            "--log-scale-init", type=float, metavar="RHO",
            help="initial log-scale of the logit distribution (bias of the log-scale head; default 0: s = 1)",
        )

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        cfg = TransformerConfig.from_namespace(args)
        return LogScaleTransformerDecoder(
            cfg, tgt_dict, embed_tokens,
            no_encoder_attn=cfg.no_cross_attention,
            log_scale_init=getattr(args, "log_scale_init", None) or 0.0,
        )


@register_model_architecture("edd_transformer_logit", "edd_transformer_logit")
def logit_base_architecture(args):
    if getattr(args, "log_scale_init", None) is None:
        args.log_scale_init = 0.0
    base_architecture(args)


@register_model_architecture("edd_transformer_logit", "edd_transformer_logit_tiny")
def logit_tiny_architecture(args):
    for name, value in (("encoder_embed_dim", 64), ("encoder_ffn_embed_dim", 128), ("encoder_layers", 1),
                        ("encoder_attention_heads", 2), ("decoder_embed_dim", 64),
                        ("decoder_ffn_embed_dim", 128), ("decoder_layers", 1), ("decoder_attention_heads", 2)):
        setattr(args, name, getattr(args, name, value))
    logit_base_architecture(args)


@register_model_architecture("transformer", "edd_transformer_tiny")
def tiny_architecture(args):
    """The plain 1+1-layer, 64-dimensional transformer that the examples and tests use as teacher and
    categorical/Dirichlet student."""
    for name, value in (("encoder_embed_dim", 64), ("encoder_ffn_embed_dim", 128), ("encoder_layers", 1),
                        ("encoder_attention_heads", 2), ("decoder_embed_dim", 64),
                        ("decoder_ffn_embed_dim", 128), ("decoder_layers", 1), ("decoder_attention_heads", 2)):
        setattr(args, name, getattr(args, name, value))
    base_architecture(args)
