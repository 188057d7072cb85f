"""GRU4Rec (Hidasi et al. 2016) as RecBole runs it: item embedding -> dropout -> GRU -> linear back
to the embedding width; full-softmax CE against the shared item table."""

from __future__ import annotations

import torch
import torch.nn as nn

from ssmrec.models.incremental import split_rows
from ssmrec.models.seq.base import SeqRecModel
from ssmrec.nn.layers import Dropout
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
    """Serving state: the GRU's hidden state per layer and the newest output ``h``; O(1) per event within
    the window."""

    state_layout = "gru-hidden+h"
    advances = True
    def __init__(self, cfg: GRU4RecConfig, n_items: int):
        super().__init__(n_items, cfg.embedding_size)
        self.cfg = cfg
        self.dropout = Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.embedding_size, cfg.hidden_size, cfg.num_layers, batch_first=True, bias=False)
        self.dense = nn.Linear(cfg.hidden_size, cfg.embedding_size)
        nn.init.xavier_uniform_(self.item_table.weight)  # RecBole GRU4Rec: xavier for embeddings and GRU
        for name, p in self.gru.named_parameters():
            nn.init.xavier_uniform_(p)

    def encode(self, batch) -> torch.Tensor:
        h, _ = self.gru(self.dropout(self.item_vectors(batch.item_seq)))
        return self.dense(h)

    # -- incremental inference ----------------------------------------------------------------
    def encode_window(self, window):
        return self.encode_windows(window[None])[0]

    def encode_windows(self, windows):
        cfg, B = self.cfg, windows.shape[0]
        if not windows.shape[1]:
            return split_rows({"hidden": torch.zeros(B, cfg.num_layers, cfg.hidden_size),
                               "h": torch.zeros(B, cfg.embedding_size)}, B)
        out, hidden = self.gru(self.dropout(self.item_vectors(windows)))
        return split_rows({"hidden": hidden.transpose(0, 1), "h": self.dense(out[:, -1])}, B)

    def step_tensors(self, tensors, items, positions):
        out, hidden = self.gru(self.dropout(self.item_vectors(items))[:, None], tensors["hidden"].transpose(0, 1).contiguous())
        return {"hidden": hidden.transpose(0, 1), "h": self.dense(out[:, 0])}
