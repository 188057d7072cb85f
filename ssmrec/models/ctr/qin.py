"""QIN, the Quadratic Interest Network (2nd place, reference doc §4; ``salmon1802/QIN``,
``QIN_variety_v9``).

ASTA: ``u = W_o sum_l ReLU(m_l q.k_l / sqrt(d_a)) v_l + e_t`` with bias-free ``W_q, W_k, W_v``
(``D_item -> d_a = 2 D_item``) and ``W_o`` (``d_a -> D_item``). QNN head on ``[s ; e_t ; u]``: layers of
``x + Dropout(PReLU(BN(x * sum_r Dropout(W x + b)_r)))`` with R rows (``QuadraticNet``), then
``Linear(D, 1)``. At the reference config (embedding_dim 128, 4 layers, 4 rows, FuxiCTR vocabularies)
the model has 31,244,293 parameters, as in the QIN training log.

Ablation switches (QIN paper Table 3): ``head: mlp`` (MLP [1024, 512, 256] instead of QNN),
``interest: mean`` (masked mean pooling instead of ASTA), ``attention_norm: softmax``,
``qnn_activation: relu``, ``attention_dropout: 0.1``.
"""

from __future__ import annotations

from dataclasses import field
from typing import Literal

import torch
import torch.nn as nn

from ssmrec.data.mmctr import CTRBatch
from ssmrec.models.ctr.base import CTRModel
from ssmrec.nn.attention import TargetAttention
from ssmrec.nn.embedding import MMCTRFeatureEmbedding
from ssmrec.nn.layers import MLP, QuadraticNet, fuxictr_init, masked_mean
from ssmrec.params import Bool, PosInt, Rate, Widths, config_dataclass
from ssmrec.registry import register


@config_dataclass
class QINConfig:
    embedding_dim: PosInt = 128
    use_mm_emb: Bool = True
    interest: Literal["asta", "mean"] = "asta"  # mean = ablation "QIN w/o ASTA"
    attention_norm: Literal["relu", "softmax"] = "relu"  # relu (ASTA) | softmax (ablation)
    attention_dropout: Rate = 0.0  # 0.1 = ablation "ASTA w/ Dropout"
    attention_width_factor: PosInt = 2  # d_a = factor * D_item
    head: Literal["qnn", "mlp"] = "qnn"  # mlp = ablation "QIN w/o QNN"
    qnn_layers: PosInt = 4
    qnn_rows: PosInt = 4
    qnn_activation: Literal["prelu", "relu"] = "prelu"  # relu = ablation "QNN w/o PReLU"
    mlp_hidden: Widths = field(default_factory=lambda: [1024, 512, 256])  # head: mlp only
    net_dropout: Rate = 0.1
    batch_norm: Bool = True
    level_zero_is_padding: Bool = False


@register("ctr", "qin", QINConfig)
class QIN(nn.Module, CTRModel):
    """Served from the window alone: ``forward`` on it per request (no incremental form)."""

    def __init__(self, cfg: QINConfig, item_tags, item_emb, n_tags):
        super().__init__()
        self.cfg = cfg
        self.embedding = MMCTRFeatureEmbedding(item_tags, item_emb, n_tags, cfg.embedding_dim, cfg.use_mm_emb,
                                               cfg.level_zero_is_padding)
        d = self.embedding.item_dim
        if cfg.interest == "asta":
            self.asta = TargetAttention(d, d, cfg.attention_width_factor * d, d_out=d, norm=cfg.attention_norm,
                                        dropout=cfg.attention_dropout, bias=False, residual=True)
        width = self.embedding.side_dim + 2 * d
        if cfg.head == "qnn":
            self.head = QuadraticNet(width, cfg.qnn_layers, cfg.qnn_rows, cfg.net_dropout, cfg.batch_norm,
                                     cfg.qnn_activation)
            self.out = nn.Linear(width, 1)
        else:
            self.head = MLP(width, cfg.mlp_hidden, act="relu", dropout=cfg.net_dropout, batch_norm=cfg.batch_norm)
            self.out = nn.Linear(self.head.d_out, 1)
        fuxictr_init(self)

    def forward(self, batch: CTRBatch) -> dict:
        target, history, side = self.embedding(batch)
        mask = batch.mask
        interest = self.asta(target, history, mask) if self.cfg.interest == "asta" else masked_mean(history, mask)
        z = self.head(torch.cat([side, target, interest], dim=-1))
        return {"logit": self.out(z).squeeze(-1)}
