"""Transformer-DCN, the MM-CTR challenge winner (team momo, reference doc §3).

1. ``x_l = [e_l ; e_t]``: the target is concatenated to every history slot (no positional encoding);
2. two post-LN Transformer encoder layers (d_model ``2 D_item``, 1 head, FFN 256, dropout 0.2);
3. padded outputs zeroed; the last 16 outputs flattened, plus ``Linear(max-pool over valid slots)``;
4. ``x0 = [s ; e_t ; seq]`` -> CrossNetV2 (3 layers) in parallel with an MLP [1024, 512, 256]
   (ReLU, dropout 0.2, no BN); ``[cross ; deep]`` -> MLP [64, 32] -> logit.

Correct key-padding masking by default. ``inverted_padding_mask: true`` reproduces the reference
code, which hands the validity mask to PyTorch as the *ignore* mask: real history items are hidden
as keys, padding slots (and, on full windows, only the newest slot) are attended, and the zero-fill
and max-pool then treat the real slots as padding.
"""

from __future__ import annotations

from dataclasses import field

import torch
import torch.nn as nn

from ssmrec.data.mmctr import CTRBatch
from ssmrec.models.ctr.base import CTRModel
from ssmrec.data.schema import ITEM_EMB_DIM
from ssmrec.nn.attention import MaskedTransformerEncoder
from ssmrec.nn.embedding import MMCTRFeatureEmbedding
from ssmrec.nn.layers import MLP, CrossNetV2, fuxictr_init, masked_max
from ssmrec.params import Bool, PosInt, Rate, Widths, config_dataclass
from ssmrec.registry import register


@config_dataclass
class TransformerDCNConfig:
    embedding_dim: PosInt = 64
    use_mm_emb: Bool = True
    transformer_layers: PosInt = 2
    num_heads: PosInt = 1
    dim_feedforward: PosInt = 256
    transformer_dropout: Rate = 0.2
    first_k_cols: PosInt = 16
    concat_max_pool: Bool = True
    dcn_cross_layers: PosInt = 3
    dcn_hidden: Widths = field(default_factory=lambda: [1024, 512, 256])
    mlp_hidden: Widths = field(default_factory=lambda: [64, 32])
    net_dropout: Rate = 0.2
    batch_norm: Bool = False
    inverted_padding_mask: Bool = False
    level_zero_is_padding: Bool = False

    def __post_init__(self):
        d_model = 2 * (2 * self.embedding_dim + (ITEM_EMB_DIM if self.use_mm_emb else 0))  # [e_l ; e_t]
        if d_model % self.num_heads:
            raise ValueError(f"model_params.num_heads ({self.num_heads}) must divide the encoder width {d_model}")


@register("ctr", "transformer_dcn", TransformerDCNConfig)
class TransformerDCN(nn.Module, CTRModel):
    """Served from the window alone: ``forward`` on it per request (no incremental form)."""

    def __init__(self, cfg: TransformerDCNConfig, item_tags, item_emb, n_tags):
        super().__init__()
        self.cfg = cfg
        self.embedding = MMCTRFeatureEmbedding(item_tags, item_emb, n_tags, cfg.embedding_dim, cfg.use_mm_emb,
                                               cfg.level_zero_is_padding)
        d = self.embedding.item_dim
        d_model = 2 * d
        self.encoder = MaskedTransformerEncoder(d_model, cfg.num_heads, cfg.dim_feedforward,
                                                cfg.transformer_dropout, cfg.transformer_layers,
                                                cfg.inverted_padding_mask)
        seq_dim = cfg.first_k_cols * d_model
        if cfg.concat_max_pool:
            self.pool_proj = nn.Linear(d_model, d_model)
            seq_dim += d_model
        width = self.embedding.side_dim + d + seq_dim
        self.cross = CrossNetV2(width, cfg.dcn_cross_layers)
        self.deep = MLP(width, cfg.dcn_hidden, act="relu", dropout=cfg.net_dropout, batch_norm=cfg.batch_norm)
        self.head = MLP(width + self.deep.d_out, cfg.mlp_hidden, 1, act="relu")
        fuxictr_init(self)

    def forward(self, batch: CTRBatch) -> dict:
        cfg = self.cfg
        target, history, side = self.embedding(batch)
        x = torch.cat([history, target.unsqueeze(1).expand_as(history)], dim=-1)
        h = self.encoder(x, batch.mask)
        valid = ~self.encoder.key_padding(batch.mask)  # = the validity mask unless inverted
        h = h * valid.unsqueeze(-1).to(h.dtype)
        k = min(cfg.first_k_cols, h.shape[1])
        last = h[:, -k:].flatten(1)
        if k < cfg.first_k_cols:  # window shorter than K: pad the flattened slots (old end) with zeros
            last = torch.cat([last.new_zeros(last.shape[0], (cfg.first_k_cols - k) * h.shape[-1]), last], 1)
        parts = [side, target, last]
        if cfg.concat_max_pool:
            parts.append(self.pool_proj(masked_max(h, valid, dim=1, fill=-1e9)))
        x0 = torch.cat(parts, dim=-1)
        z = torch.cat([self.cross(x0), self.deep(x0)], dim=-1)
        return {"logit": self.head(z).squeeze(-1)}
