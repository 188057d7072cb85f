"""DIN, the official MM-CTR challenge baseline (reference doc §2).

``p = sum_l a_l e_l`` with ``a_l = MLP_att([e_t ; e_l ; e_t - e_l ; e_t * e_l]) * m_l`` (attention MLP
[512, 256], dropout 0.1, **no softmax**), then ``MLP([s ; e_t ; p])`` [1024, 512, 256] with BN and
dropout 0.1 -> logit. Defaults = the official config (``reczoo/WWW2025_MMCTR_Challenge``).

Switches: ``attention_activation: dice`` (with ``embedding_dim: 128``: the tuned DIN that MambaCTR's
Table 2 compares against), ``attention_softmax`` (FuxiCTR ``din_use_softmax``), ``use_mm_emb``,
``level_zero_is_padding`` (FuxiCTR quirk, off by default; see ``MMCTRFeatureEmbedding``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ssmrec.models.ctr.validate import check_bool, check_choice, check_positive, check_rate, check_widths
from ssmrec.nn.attention import DINAttention
from ssmrec.nn.embedding import MMCTRFeatureEmbedding
from ssmrec.nn.layers import ACTIVATIONS, MLP, fuxictr_init


@dataclass
class DINConfig:
    embedding_dim: int = 64
    use_mm_emb: bool = True
    attention_hidden: list = field(default_factory=lambda: [512, 256])
    attention_activation: str = "relu"  # relu (official) | dice (MambaCTR's DIN)
    attention_dropout: float = 0.1
    attention_softmax: bool = False
    dnn_hidden: list = field(default_factory=lambda: [1024, 512, 256])
    dnn_activation: str = "relu"
    net_dropout: float = 0.1
    batch_norm: bool = True
    level_zero_is_padding: bool = False

    def __post_init__(self):
        check_positive(self, "embedding_dim")
        check_widths(self, "attention_hidden", "dnn_hidden")
        check_choice(self, "attention_activation", ACTIVATIONS)
        check_choice(self, "dnn_activation", ACTIVATIONS)
        check_rate(self, "attention_dropout", "net_dropout")
        check_bool(self, "use_mm_emb", "attention_softmax", "batch_norm", "level_zero_is_padding")


class DIN(nn.Module):
    def __init__(self, cfg: DINConfig, item_tags, item_emb, n_tags):
        super().__init__()
        self.cfg = cfg
        self.embedding = MMCTRFeatureEmbedding(item_tags, item_emb, n_tags, cfg.embedding_dim, cfg.use_mm_emb,
                                               cfg.level_zero_is_padding)
        d = self.embedding.item_dim
        self.attention = DINAttention(d, cfg.attention_hidden, cfg.attention_activation, cfg.attention_dropout,
                                      cfg.attention_softmax)
        self.dnn = MLP(self.embedding.side_dim + 2 * d, cfg.dnn_hidden, 1, act=cfg.dnn_activation,
                       dropout=cfg.net_dropout, batch_norm=cfg.batch_norm)
        fuxictr_init(self)

    def forward(self, batch: dict) -> dict:
        target, history, side = self.embedding(batch)
        pooled = self.attention(target, history, batch["mask"])
        return {"logit": self.dnn(torch.cat([side, target, pooled], dim=-1)).squeeze(-1)}
