"""DIN, the official MM-CTR challenge baseline (reference doc §2).

``p = sum_l a_l e_l`` with ``a_l = MLP_att([e_t ; e_l ; e_t - e_l ; e_t * e_l]) * m_l`` (attention MLP
[512, 256], dropout 0.1, **no softmax**), then ``MLP([s ; e_t ; p])`` [1024, 512, 256] with BN and
dropout 0.1 -> logit. Defaults = the official config (``reczoo/WWW2025_MMCTR_Challenge``).

Switches: ``attention_activation: dice`` (with ``embedding_dim: 128``: the tuned DIN that MambaCTR's
Table 2 compares against), ``attention_softmax`` (FuxiCTR ``din_use_softmax``), ``use_mm_emb``,
``level_zero_is_padding`` (FuxiCTR quirk, off by default; see ``MMCTRFeatureEmbedding``).
"""

from __future__ import annotations

from dataclasses import field
from typing import Literal

import torch
import torch.nn as nn

from ssmrec.data.mmctr import CTRBatch
from ssmrec.models.ctr.base import CTRModel
from ssmrec.nn.attention import DINAttention
from ssmrec.nn.embedding import MMCTRFeatureEmbedding
from ssmrec.nn.layers import ACTIVATIONS, MLP, fuxictr_init
from ssmrec.params import Bool, PosInt, Rate, Widths, config_dataclass
from ssmrec.registry import register

Activation = Literal[ACTIVATIONS]  # type: ignore[valid-type]


@config_dataclass
class DINConfig:
    embedding_dim: PosInt = 64
    use_mm_emb: Bool = True
    attention_hidden: Widths = field(default_factory=lambda: [512, 256])
    attention_activation: Activation = "relu"  # dice: MambaCTR's DIN (with embedding_dim 128)
    attention_dropout: Rate = 0.1
    attention_softmax: Bool = False
    # factored: the same function with the target term once per row and padded slots skipped
    # (DINAttention); concat: the literal [t; h; t-h; t*h] MLP, FuxiCTR's arithmetic.
    attention_impl: Literal["factored", "concat"] = "factored"
    dnn_hidden: Widths = field(default_factory=lambda: [1024, 512, 256])
    dnn_activation: Activation = "relu"
    net_dropout: Rate = 0.1
    batch_norm: Bool = True
    level_zero_is_padding: Bool = False


@register("ctr", "din", DINConfig)
class DIN(nn.Module, CTRModel):
    """Served from the window alone: ``forward`` on it per request (no incremental form)."""

    def __init__(self, cfg: DINConfig, item_tags, item_emb, n_tags):
        super().__init__()
        self.cfg = cfg
        self.embedding = MMCTRFeatureEmbedding(item_tags, item_emb, n_tags, cfg.embedding_dim, cfg.use_mm_emb,
                                               cfg.level_zero_is_padding)
        d = self.embedding.item_dim
        self.attention = DINAttention(d, cfg.attention_hidden, cfg.attention_activation, cfg.attention_dropout,
                                      cfg.attention_softmax, cfg.attention_impl)
        self.dnn = MLP(self.embedding.side_dim + 2 * d, cfg.dnn_hidden, 1, act=cfg.dnn_activation,
                       dropout=cfg.net_dropout, batch_norm=cfg.batch_norm)
        fuxictr_init(self)

    def forward(self, batch: CTRBatch) -> dict:
        target, history, side = self.embedding(batch)
        pooled = self.attention(target, history, batch.mask)
        return {"logit": self.dnn(torch.cat([side, target, pooled], dim=-1)).squeeze(-1)}
