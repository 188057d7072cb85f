"""MambaCTR (reference doc §5): Stage I sequence encoder -> Stage II target-aware GRU -> head.

Default = what the reference code (``ours-mamba_version``) does, which produced the published numbers:
one Mamba-2 block over the history, the last 16 outputs scored against the target by a bilinear
masked softmax that drives an AUGRU, interest ``[u_K ; Linear(maxpool u)]``, a 3-layer 2-row
quadratic head, BCE + 0.01 x positive next-item auxiliary loss.

Named switches (see ``MambaCTRConfig``):
* ``variant="paper"`` preset: stacked Mamba-1 with pre-LN residual, cosine-weighted plain GRU over
  the whole history, residual GELU head (what the paper's prose describes);
* ``stage1="transformer"``: the "ablated" Transformer twin (2 post-LN encoder layers, 1 head);
* ``use_mm_emb``: with/without ``item_emb_d128`` (paper Table 5);
* reference quirks, off by default: ``drop_newest_on_full`` (the newest item of full windows is
  masked), ``inverted_padding_mask`` (Transformer key-padding mask with the wrong polarity),
  ``padding_noop=False`` (padded steps still update the SSM state through conv bias and dt).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmrec.nn.attention import MaskedTransformerEncoder
from ssmrec.nn.embedding import MMCTRFeatureEmbedding
from ssmrec.nn.layers import (AttentionalGRU, QuadraticNet, ResidualGELUHead, fuxictr_init, masked_max,
                              masked_softmax)
from ssmrec.nn.mamba import Mamba, Mamba2


@dataclass
class MambaCTRConfig:
    embedding_dim: int = 64
    use_mm_emb: bool = True
    # Stage I
    stage1: str = "mamba2"  # mamba2 | mamba1 | transformer
    stage1_layers: int = 1
    stage1_prenorm_residual: bool = False  # h = h + SSM(LN(h)), the paper's stacking
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    scan_impl: str = "auto"
    transformer_heads: int = 1
    transformer_ffn: int = 256
    transformer_dropout: float = 0.2
    # Stage II
    stage2: str = "augru"  # augru (code) | cosine_gru (paper)
    window: int = 16  # last-K Stage-I outputs fed to Stage II (augru only; cosine_gru uses all)
    # Head
    head: str = "qnn"  # qnn (code) | residual_gelu (paper)
    qnn_layers: int = 3
    qnn_rows: int = 2
    net_dropout: float = 0.2
    batch_norm: bool = True
    aux_loss_weight: float = 0.01
    # Reference quirks / deviations
    padding_noop: bool = True
    drop_newest_on_full: bool = False
    inverted_padding_mask: bool = False
    level_zero_is_padding: bool = False
    variant: str = "code"  # code | paper: the paper preset overrides stage1/stage2/head below

    def __post_init__(self):
        if self.variant == "paper":
            self.stage1, self.stage1_prenorm_residual, self.stage2, self.head = "mamba1", True, "cosine_gru", "residual_gelu"
            self.stage1_layers = max(self.stage1_layers, 2)
        checks = {"stage1": ("mamba2", "mamba1", "transformer"), "stage2": ("augru", "cosine_gru"),
                  "head": ("qnn", "residual_gelu"), "variant": ("code", "paper")}
        for key, allowed in checks.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"model.{key} must be one of {allowed}, got {getattr(self, key)!r}")


class SequenceEncoder(nn.Module):
    """Stage I: a stack of Mamba-1 / Mamba-2 blocks or Transformer encoder layers, mask-aware."""

    def __init__(self, cfg: MambaCTRConfig, d_model: int):
        super().__init__()
        self.cfg = cfg
        if cfg.stage1 == "transformer":
            self.layers = MaskedTransformerEncoder(d_model, cfg.transformer_heads, cfg.transformer_ffn,
                                                   cfg.transformer_dropout, cfg.stage1_layers,
                                                   cfg.inverted_padding_mask)
            self.norms = None
        else:
            block = Mamba2 if cfg.stage1 == "mamba2" else Mamba
            kw = dict(d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand, scan_impl=cfg.scan_impl)
            if cfg.stage1 == "mamba2":
                kw["headdim"] = cfg.headdim
            self.layers = nn.ModuleList(block(d_model, **kw) for _ in range(cfg.stage1_layers))
            for layer in self.layers:  # FuxiCTR's re-init must not wipe Mamba-1's dt initialisation
                if hasattr(layer, "dt_proj"):
                    layer.dt_proj._keep_init = True
            self.norms = nn.ModuleList(
                nn.LayerNorm(d_model) if cfg.stage1_prenorm_residual else nn.Identity() for _ in self.layers)

    def forward(self, x, mask):
        if self.cfg.stage1 == "transformer":
            return self.layers(x, mask)
        ssm_mask = mask if self.cfg.padding_noop else None
        for block, norm in zip(self.layers, self.norms):
            if self.cfg.stage1_prenorm_residual:
                x = x + block(norm(x), mask=ssm_mask)
            else:
                x = block(x, mask=ssm_mask)
        return x


class MambaCTR(nn.Module):
    def __init__(self, cfg: MambaCTRConfig, item_tags, item_emb, n_tags):
        super().__init__()
        self.cfg = cfg
        self.embedding = MMCTRFeatureEmbedding(item_tags, item_emb, n_tags, cfg.embedding_dim, cfg.use_mm_emb,
                                               cfg.level_zero_is_padding)
        d = self.embedding.item_dim
        self.encoder = SequenceEncoder(cfg, d)
        if cfg.stage2 == "augru":  # bilinear Stage-II score (W_a e_t) . h_l (unused by cosine_gru: not built)
            self.query = nn.Linear(d, d, bias=False)
        self.gru = AttentionalGRU(d, d)
        self.pool_proj = nn.Linear(d, d)
        head_dim = self.embedding.side_dim + d + 2 * d
        if cfg.head == "qnn":
            self.head = QuadraticNet(head_dim, cfg.qnn_layers, cfg.qnn_rows, cfg.net_dropout, cfg.batch_norm)
        else:
            self.head = ResidualGELUHead(head_dim, 2, cfg.net_dropout)
        self.out = nn.Linear(head_dim, 1)
        fuxictr_init(self)

    def forward(self, batch: dict) -> dict:
        cfg = self.cfg
        target, history, side = self.embedding(batch)
        mask = batch["mask"]
        h = self.encoder(history, mask)
        if cfg.drop_newest_on_full:  # reference quirk inherited from momo's inverted mask helper
            mask = mask.clone()
            mask[mask.all(dim=1), -1] = False
        h = h * mask.unsqueeze(-1).to(h.dtype)

        if cfg.stage2 == "augru":
            hk, mk, ek = h[:, -cfg.window:], mask[:, -cfg.window:], history[:, -cfg.window:]
            att = masked_softmax(torch.einsum("bld,bd->bl", hk, self.query(target)), mk)
            u = self.gru(hk, att)
        else:  # paper: cosine-weighted inputs to a plain GRU over the whole history
            hk, mk, ek = h, mask, history
            cos = F.cosine_similarity(hk, target.unsqueeze(1), dim=-1)
            u = self.gru(hk * cos.unsqueeze(-1), mk.to(h.dtype))
        interest = torch.cat([u[:, -1], self.pool_proj(masked_max(u, mk, dim=1, fill=0.0))], dim=-1)

        z = self.head(torch.cat([side, target, interest], dim=-1))
        out = {"logit": self.out(z).squeeze(-1)}
        if self.training and cfg.aux_loss_weight > 0:
            out["aux_loss"] = cfg.aux_loss_weight * self.next_item_loss(hk, ek, mk)
        return out

    @staticmethod
    def next_item_loss(h, e, mask):
        """Positive-only DIEN-style auxiliary loss on the window: state h_t should score the next
        real item e_{t+1} high (reference §5.1 step 8)."""
        logits = (h[:, :-1] * e[:, 1:]).sum(-1)
        nll = -torch.log(torch.sigmoid(logits) + 1e-8) * mask[:, 1:].to(h.dtype)
        return nll.sum(1).mean()


def config_from_dict(d: dict, cls=MambaCTRConfig):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise KeyError(unknown[0])
    return cls(**d)
