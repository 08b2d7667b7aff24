"""A small transformer encoder-decoder in plain PyTorch, shared by the teachers and every student.

Source and target share one vocabulary and one embedding matrix, which is also the output projection
(the "shared target softmax"). Students of the logit-space methods add a second head that predicts a
per-class log-scale next to the logits (their location).

Decoding goes one target position at a time through a *decoder state* (:meth:`Seq2Seq.start_decoding`):
:class:`IncrementalDecoder` keeps each layer's self-attention keys and values and the projected encoder
memory, so a step runs the decoder on the one new position (its cost does not grow with the prefix, apart
from attending over it); :class:`FullDecoder` recomputes the decoder over the whole prefix at every step
(a step costs O(prefix) layer work and an ``[B, T, V]`` projection). Both give the same outputs up to float
rounding; the second is the reference that tests and benchmarks compare against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
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
        return self.project(self.decoder_states(memory, src_pad, prev))

    def project(self, h: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Final decoder states ``[*, d]`` -> (logits ``[*, V]``, log-scale ``[*, V]`` or None)."""
        weight, bias = self.output_layer()
        logits = h @ weight.t() + bias
        log_scale = self.log_scale(h) if self.log_scale is not None else None
        return logits, log_scale

    def start_decoding(self, memory: Tensor, src_pad: Tensor, max_len: int,
                       incremental: bool = True) -> Union[IncrementalDecoder, FullDecoder]:
        """A decoder state for the sources encoded as ``memory [B, S, d]`` / ``src_pad [B, S]``, for at most
        ``max_len`` steps (BOS included). The model must be in eval mode (no dropout)."""
        if self.training:
            raise ValueError("start_decoding: expected the model in eval mode (call .eval() first), got training mode")
        if max_len > self.cfg.max_len:
            raise ValueError(f"max_len: expected at most the model's {self.cfg.max_len} positions, got {max_len}")
        return (IncrementalDecoder if incremental else FullDecoder)(self, memory, src_pad, max_len)

    def forward(self, src: Tensor, prev: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        memory, src_pad = self.encode(src)
        return self.decode(memory, src_pad, prev)


class FullDecoder:
    """Reference decoder state: keeps the prefix and recomputes the whole decoder at every step."""

    def __init__(self, model: Seq2Seq, memory: Tensor, src_pad: Tensor, max_len: int):
        self.model, self.memory, self.src_pad, self.max_len = model, memory, src_pad, max_len
        self.prev = torch.empty(memory.shape[0], 0, dtype=torch.long, device=memory.device)

    def step(self, tokens: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Append ``tokens [B]`` to the prefix; the outputs ``[B, V]`` at that new position."""
        self.prev = torch.cat([self.prev, tokens[:, None]], 1)
        return tuple(None if o is None else o[:, -1] for o in self.model.decode(self.memory, self.src_pad, self.prev))

    def reorder(self, index: Tensor) -> None:
        """Keep rows ``index [B']`` (beam search: the surviving hypotheses, or a source repeated per beam)."""
        self.memory, self.src_pad, self.prev = self.memory[index], self.src_pad[index], self.prev[index]


def _heads(x: Tensor, nhead: int) -> Tensor:
    """``[B, T, d]`` -> ``[B, H, T, d / H]``."""
    return x.unflatten(-1, (nhead, -1)).transpose(1, 2)


class IncrementalDecoder:
    """Decoder state with per-layer key/value caches: each step runs the decoder on one new position.

    Self-attention keys and values are written into buffers ``[B, H, max_len, d / H]`` preallocated per
    layer (no copy of the prefix per step); the encoder memory is projected to each layer's cross-attention
    keys and values once. The arithmetic is that of ``nn.TransformerDecoderLayer`` with ``norm_first=True``
    (the model's layers), read from the same parameters.
    """

    def __init__(self, model: Seq2Seq, memory: Tensor, src_pad: Tensor, max_len: int):
        self.model, self.max_len, self.length = model, max_len, 0
        self.nhead = model.cfg.nhead
        self.attend_memory = ~src_pad[:, None, None, :]  # [B, 1, 1, S], True = attend
        self.cross: List[Tuple[Tensor, Tensor]] = []
        self.keys: List[Tensor] = []
        self.values: List[Tensor] = []
        b, d = memory.shape[0], model.cfg.d_model
        for layer in model.decoder.layers:
            attn = layer.multihead_attn
            k, v = F.linear(memory, attn.in_proj_weight[d:], attn.in_proj_bias[d:]).chunk(2, -1)
            self.cross.append((_heads(k, self.nhead), _heads(v, self.nhead)))
            shape = (b, self.nhead, max_len, d // self.nhead)
            self.keys.append(memory.new_empty(shape))
            self.values.append(memory.new_empty(shape))

    def step(self, tokens: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """Run the decoder on ``tokens [B]`` at the next position; its outputs ``[B, V]``."""
        t = self.length
        if t >= self.max_len:
            raise ValueError(f"step: the decoder state holds {self.max_len} positions, all used")
        model, d = self.model, self.model.cfg.d_model
        x = model.embed(tokens[:, None]) * math.sqrt(d) + model.pos[t]  # [B, 1, d]
        for i, layer in enumerate(model.decoder.layers):
            sa = layer.self_attn
            q, k, v = (_heads(p, self.nhead) for p in F.linear(layer.norm1(x), sa.in_proj_weight,
                                                               sa.in_proj_bias).chunk(3, -1))
            self.keys[i][:, :, t:t + 1] = k
            self.values[i][:, :, t:t + 1] = v
            a = F.scaled_dot_product_attention(q, self.keys[i][:, :, :t + 1], self.values[i][:, :, :t + 1])
            x = x + sa.out_proj(a.transpose(1, 2).flatten(2))
            ca = layer.multihead_attn
            q = _heads(F.linear(layer.norm2(x), ca.in_proj_weight[:d], ca.in_proj_bias[:d]), self.nhead)
            a = F.scaled_dot_product_attention(q, *self.cross[i], attn_mask=self.attend_memory)
            x = x + ca.out_proj(a.transpose(1, 2).flatten(2))
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        self.length = t + 1
        return model.project(model.decoder.norm(x[:, 0]))

    def reorder(self, index: Tensor) -> None:
        """Keep rows ``index [B']`` (beam search: the surviving hypotheses, or a source repeated per beam)."""
        t = self.length
        self.attend_memory = self.attend_memory[index]
        self.cross = [(k[index], v[index]) for k, v in self.cross]
        for cache in (self.keys, self.values):
            for i, buf in enumerate(cache):
                if buf.shape[0] == index.shape[0]:
                    buf[:, :, :t] = buf[index, :, :t]  # only the filled positions move
                else:
                    cache[i] = buf[index]
