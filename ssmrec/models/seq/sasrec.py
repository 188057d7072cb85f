"""SASRec (Kang & McAuley 2018) as RecBole configures it for Mamba4Rec's Table 1: item + learned
position embeddings -> LayerNorm -> dropout -> 2 post-LN causal self-attention layers (2 heads, GELU
FFN 4x, LayerNorm eps 1e-12), full-softmax CE against the shared item table."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from ssmrec.models.seq.base import SeqRecModel
from ssmrec.nn.attention import MaskedTransformerEncoder
from ssmrec.nn.layers import recbole_init
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
    def __init__(self, cfg: SASRecConfig, n_items: int):
        super().__init__(n_items, cfg.hidden_size)
        self.cfg = cfg
        self.position_table = nn.Embedding(cfg.max_len, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = MaskedTransformerEncoder(cfg.hidden_size, cfg.num_heads, cfg.inner_size, cfg.dropout,
                                                cfg.num_layers, causal=True, activation=cfg.activation,
                                                layer_norm_eps=1e-12)
        recbole_init(self)

    def encode(self, batch) -> torch.Tensor:
        L = batch.item_seq.shape[1]
        pos = torch.arange(L, device=batch.item_seq.device).clamp_max(self.cfg.max_len - 1)
        h = self.dropout(self.norm(self.item_vectors(batch.item_seq) + self.position_table(pos)))
        return self.encoder(h, batch.item_seq > 0)
