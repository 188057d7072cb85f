"""BERT4Rec (Sun et al. 2019) as RecBole runs it: bidirectional Transformer over the history with a
``[MASK]`` item (id ``n_items``, one extra embedding row); trained with the Cloze objective (task
``data.train_mode: cloze``: random positions masked, each predicted from both sides); at evaluation
``[MASK]`` is appended to the history and predicted. Output head: Linear -> GELU -> LayerNorm, then
scores against the item table plus a per-item bias."""

from __future__ import annotations

import torch
import torch.nn as nn

from ssmrec.models.seq.base import SeqRecModel
from ssmrec.nn.attention import MaskedTransformerEncoder
from ssmrec.nn.layers import Dropout, recbole_init
from ssmrec.params import PosInt, Rate, config_dataclass
from ssmrec.registry import register


@config_dataclass
class BERT4RecConfig:
    hidden_size: PosInt = 64
    num_layers: PosInt = 2
    num_heads: PosInt = 2
    inner_size: PosInt = 256
    dropout: Rate = 0.2
    mask_ratio: Rate = 0.2  # share of training positions replaced by [MASK]
    max_len: PosInt = 200

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"model_params.num_heads ({self.num_heads}) must divide hidden_size {self.hidden_size}")


@register("next_item", "bert4rec", BERT4RecConfig)
class BERT4Rec(SeqRecModel):
    """Bidirectional: served from the window by ``forward`` (window + [MASK]) per request."""

    cloze = True  # the task trains it with masked items and appends [MASK] when scoring

    def __init__(self, cfg: BERT4RecConfig, n_items: int):
        super().__init__(n_items + 1, cfg.hidden_size)  # the last row is [MASK]
        self.cfg = cfg
        self.n_items = n_items
        self.mask_id = n_items
        self.position_table = nn.Embedding(cfg.max_len, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=1e-12)
        self.dropout = Dropout(cfg.dropout)
        self.encoder = MaskedTransformerEncoder(cfg.hidden_size, cfg.num_heads, cfg.inner_size, cfg.dropout,
                                                cfg.num_layers, activation="gelu", layer_norm_eps=1e-12)
        self.head = nn.Sequential(nn.Linear(cfg.hidden_size, cfg.hidden_size), nn.GELU(),
                                  nn.LayerNorm(cfg.hidden_size, eps=1e-12))
        self.output_bias = nn.Parameter(torch.zeros(n_items))
        recbole_init(self)

    def encode(self, batch) -> torch.Tensor:
        L = batch.item_seq.shape[1]
        pos = torch.arange(L, device=batch.item_seq.device).clamp_max(self.cfg.max_len - 1)
        h = self.dropout(self.norm(self.item_vectors(batch.item_seq) + self.position_table(pos)))
        return self.head(self.encoder(h, batch.item_seq > 0))

    def full_sort_predict(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.item_vectors()[: self.n_items].t() + self.output_bias
