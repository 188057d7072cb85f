"""SASRec (Kang & McAuley 2018) as RecBole configures it for Mamba4Rec's Table 1: item + learned
position embeddings -> LayerNorm -> dropout -> 2 post-LN causal self-attention layers (2 heads, GELU
FFN 4x, LayerNorm eps 1e-12), full-softmax CE against the shared item table."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from ssmrec.models.incremental import pad_left, pad_right, split_rows
from ssmrec.models.seq.base import SeqRecModel
from ssmrec.nn.attention import MaskedTransformerEncoder
from ssmrec.nn.layers import Dropout, recbole_init
from ssmrec.params import PosInt, Rate, config_dataclass
from ssmrec.registry import register


@config_dataclass
class SASRecConfig:
    hidden_size: PosInt = 64
    num_layers: PosInt = 2
    num_heads: PosInt = 2
    inner_size: PosInt = 256
    dropout: Rate = 0.2  # RecBole: hidden and attention dropout
    max_len: PosInt = 200  # size of the position table
    activation: Literal["gelu", "relu"] = "gelu"

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"model_params.num_heads ({self.num_heads}) must divide hidden_size {self.hidden_size}")


@register("next_item", "sasrec", SASRecConfig)
class SASRec(SeqRecModel):
    """Serving state: every layer's keys and values of the window's positions (causal: they never
    change while the window grows) and the newest output ``h``; an event is one query per layer against
    the cached keys, O(window)."""

    state_layout = "kv-cache+h"
    advances = True
    def __init__(self, cfg: SASRecConfig, n_items: int):
        super().__init__(n_items, cfg.hidden_size)
        self.cfg = cfg
        self.position_table = nn.Embedding(cfg.max_len, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)
        self.dropout = Dropout(cfg.dropout)
        self.encoder = MaskedTransformerEncoder(cfg.hidden_size, cfg.num_heads, cfg.inner_size, cfg.dropout,
                                                cfg.num_layers, causal=True, activation=cfg.activation,
                                                layer_norm_eps=1e-12)
        recbole_init(self)

    def encode(self, batch) -> torch.Tensor:
        h = self._input(batch.item_seq, torch.arange(batch.item_seq.shape[1], device=batch.item_seq.device))
        return self.encoder(h, batch.item_seq > 0)

    # -- incremental inference: a key/value cache ------------------------------------------------
    def _input(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(self.item_vectors(ids) + self.position_table(positions.clamp_max(self.cfg.max_len - 1))))

    def encode_window(self, window):
        return self.encode_windows(window[None])[0]

    def encode_windows(self, windows):
        d, (B, n) = self.cfg.hidden_size, windows.shape
        if not n:
            empty = {f"{kv}{i}": torch.zeros(B, 0, d) for i in range(self.cfg.num_layers) for kv in "kv"}
            return split_rows({**empty, "h": torch.zeros(B, d)}, B)
        x, kvs = self.encoder.prefill(self._input(windows, torch.arange(n)))
        out = {"h": x[:, -1]}
        for i, (k, v) in enumerate(kvs):
            out[f"k{i}"], out[f"v{i}"] = k, v
        return split_rows(out, B)

    def advance(self, tensors, events, n_before):
        ids, valid = pad_right(events)
        n_layers = self.cfg.num_layers
        caches = []  # per layer: keys, values, keep (B, n0 + t) -- users' caches left-padded to one width
        for i in range(n_layers):
            K, keep = pad_left([t[f"k{i}"] for t in tensors])
            caches.append([K, pad_left([t[f"v{i}"] for t in tensors])[0], keep])
        width = caches[0][0].shape[1]
        h = torch.cat([t["h"] for t in tensors])
        pos = torch.tensor(n_before)
        for t in range(ids.shape[1]):
            x = self._input(ids[:, t], pos + t)
            for i, c in enumerate(caches):
                x, k, v = self.encoder.step_layer(i, x, *c)
                c[0], c[1] = torch.cat([c[0], k[:, None]], 1), torch.cat([c[1], v[:, None]], 1)
                c[2] = torch.cat([c[2], valid[:, t, None]], 1)
            h = torch.where(valid[:, t, None], x, h)
        out = []
        for b, t in enumerate(tensors):
            new = {"h": h[b:b + 1].clone()}
            for i, (K, V, _) in enumerate(caches):
                sel = valid[b]
                new[f"k{i}"] = torch.cat([t[f"k{i}"], K[b:b + 1, width:][:, sel]], 1)
                new[f"v{i}"] = torch.cat([t[f"v{i}"], V[b:b + 1, width:][:, sel]], 1)
            out.append(new)
        return out
