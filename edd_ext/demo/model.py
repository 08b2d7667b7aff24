"""A small transformer encoder-decoder in plain PyTorch, shared by the teachers and every student.

Source and target share one vocabulary and one embedding matrix, which is also the output projection
(the "shared target softmax"). Students of the logit-space methods add a second head that predicts a
per-class log-scale next to the logits (their location).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .corpus import PAD


def _sinusoids(length: int, dim: int) -> Tensor:
    """Fixed sinusoidal position encodings ``[length, dim]``."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    out = torch.zeros(length, dim)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)
    return out


@dataclass
class ModelConfig:
    vocab_size: int
    d_model: int = 64
    nhead: int = 4
    layers: int = 1
    ffn: int = 256
    dropout: float = 0.1
    max_len: int = 64


class Seq2Seq(nn.Module):
    """Transformer seq2seq model: ``forward(src, prev) -> (logits [B, T, V], log_scale [B, T, V] | None)``."""

    def __init__(self, cfg: ModelConfig, log_scale_head: bool = False):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD)
        nn.init.normal_(self.embed.weight, std=cfg.d_model ** -0.5)
        self.register_buffer("pos", _sinusoids(cfg.max_len, cfg.d_model), persistent=False)
        layer = dict(d_model=cfg.d_model, nhead=cfg.nhead, dim_feedforward=cfg.ffn, dropout=cfg.dropout,
                     batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), cfg.layers,
                                             norm=nn.LayerNorm(cfg.d_model), enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), cfg.layers,
                                             norm=nn.LayerNorm(cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)
        self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.log_scale = nn.Linear(cfg.d_model, cfg.vocab_size) if log_scale_head else None

    def _embed(self, tokens: Tensor) -> Tensor:
        return self.drop(self.embed(tokens) * math.sqrt(self.cfg.d_model) + self.pos[:tokens.shape[1]])

    def encode(self, src: Tensor) -> Tuple[Tensor, Tensor]:
        """``src [B, S]`` -> (memory ``[B, S, d]``, source padding mask ``[B, S]``)."""
        src_pad = src.eq(PAD)
        memory = self.encoder(self._embed(src), src_key_padding_mask=src_pad)
        return memory, src_pad

    def decoder_states(self, memory: Tensor, src_pad: Tensor, prev: Tensor) -> Tensor:
        """Final decoder states ``[B, T, d]`` for every prefix position of ``prev [B, T]`` (BOS first): the input of
        the output layer(s)."""
        t = prev.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=prev.device).triu(1)
        return self.decoder(self._embed(prev), memory, tgt_mask=causal,
                            tgt_key_padding_mask=prev.eq(PAD), memory_key_padding_mask=src_pad)

    def output_layer(self) -> Tuple[Tensor, Tensor]:
        """(weight ``[V, d]``, bias ``[V]``) of the output projection: logits = states @ weight.T + bias."""
        return self.embed.weight, self.out_bias

    def features(self, src: Tensor, prev: Tensor) -> Tensor:
        """:meth:`decoder_states` of ``src [B, S]`` and ``prev [B, T]``: what :meth:`forward` computes before the
        output layer(s), for the fused linear losses (``edd_ext.linear_*``)."""
        memory, src_pad = self.encode(src)
        return self.decoder_states(memory, src_pad, prev)

    def decode(self, memory: Tensor, src_pad: Tensor, prev: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Decoder outputs for every prefix position of ``prev [B, T]`` (BOS first)."""
        h = self.decoder_states(memory, src_pad, prev)
        logits = h @ self.embed.weight.t() + self.out_bias
        log_scale = self.log_scale(h) if self.log_scale is not None else None
        return logits, log_scale

    def forward(self, src: Tensor, prev: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        memory, src_pad = self.encode(src)
        return self.decode(memory, src_pad, prev)
