"""GRU4Rec (Hidasi et al. 2016) as RecBole runs it: item embedding -> dropout -> GRU -> linear back
to the embedding width; full-softmax CE against the shared item table."""

from __future__ import annotations

import torch
import torch.nn as nn

from ssmrec.models.seq.base import SeqRecModel
from ssmrec.params import PosInt, Rate, config_dataclass
from ssmrec.registry import register


@config_dataclass
class GRU4RecConfig:
    embedding_size: PosInt = 64
    hidden_size: PosInt = 128
    num_layers: PosInt = 1
    dropout: Rate = 0.3


@register("next_item", "gru4rec", GRU4RecConfig)
class GRU4Rec(SeqRecModel):
    def __init__(self, cfg: GRU4RecConfig, n_items: int):
        super().__init__(n_items, cfg.embedding_size)
        self.cfg = cfg
        self.dropout = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.embedding_size, cfg.hidden_size, cfg.num_layers, batch_first=True, bias=False)
        self.dense = nn.Linear(cfg.hidden_size, cfg.embedding_size)
        nn.init.xavier_uniform_(self.item_table.weight)  # RecBole GRU4Rec: xavier for embeddings and GRU
        for name, p in self.gru.named_parameters():
            nn.init.xavier_uniform_(p)

    def encode(self, batch) -> torch.Tensor:
        h, _ = self.gru(self.dropout(self.item_vectors(batch.item_seq)))
        return self.dense(h)
