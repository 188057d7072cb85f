"""MM-CTR feature embedding (reference doc §1.4), shared by every CTR model.

Item vector ``[id (d) ; mean(tags) (d) ; W_mm emb128 (128)]`` (``D_item = 2d + 128``, or ``2d``
without the multimodal vector); target side info ``[likes (d) ; views (d)]``.
"""

from __future__ import annotations

from ssmrec.data.mmctr import CTRBatch
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssmrec.data.schema import ITEM_EMB_DIM, LEVEL_VOCAB


class MMCTRFeatureEmbedding(nn.Module):
    def __init__(self, item_tags: torch.Tensor, item_emb: torch.Tensor | None, n_tags: int, dim: int = 64,
                 use_mm_emb: bool = True, level_zero_is_padding: bool = False):
        super().__init__()
        n_items = item_tags.shape[0]
        self.dim, self.use_mm_emb = dim, use_mm_emb
        self.item_dim = 2 * dim + (ITEM_EMB_DIM if use_mm_emb else 0)
        self.side_dim = 2 * dim
        # Item side tables come from item_info; they are data, not weights, so not checkpointed.
        self.register_buffer("item_tags", item_tags.long(), persistent=False)
        if use_mm_emb:
            if item_emb is None:
                raise ValueError("use_mm_emb=True needs item_info's item_emb_d128")
            self.register_buffer("item_emb", item_emb.float(), persistent=False)
            self.mm_proj = nn.Linear(ITEM_EMB_DIM, ITEM_EMB_DIM, bias=False)
        self.id_table = nn.Embedding(n_items, dim, padding_idx=0)
        self.tag_table = nn.Embedding(max(n_tags, 1), dim, padding_idx=0)
        # Levels 0-9 are real values in the MM-CTR data; FuxiCTR's padding_idx=0 would pin level 0
        # to a fixed zero vector. We keep level 0 learnable unless the quirk is requested.
        pad = 0 if level_zero_is_padding else None
        self.likes_table = nn.Embedding(LEVEL_VOCAB, dim, padding_idx=pad)
        self.views_table = nn.Embedding(LEVEL_VOCAB, dim, padding_idx=pad)

    # A batch of histories repeats items heavily (MM-CTR at batch 8,192: 532k slots, far fewer
    # distinct items, padding alone a third), so above this many ids each distinct item is encoded once.
    DEDUP_MIN_IDS = 2048

    def items(self, ids: torch.Tensor) -> torch.Tensor:
        """Item vectors for an id tensor of any shape -> (*ids.shape, item_dim)."""
        if not isinstance(ids.numel(), int):  # symbolic shape (export): a branch on it would pin it
            return self._encode(ids)
        if ids.numel() >= self.DEDUP_MIN_IDS:
            distinct, inverse = torch.unique(ids, return_inverse=True)
            return F.embedding(inverse, self._encode(distinct))  # gradients summed per distinct item
        return self._encode(ids)

    def _encode(self, ids: torch.Tensor) -> torch.Tensor:
        tags = self.item_tags[ids]
        tag_mask = (tags > 0).unsqueeze(-1).to(self.tag_table.weight.dtype)
        tag_vec = (self.tag_table(tags) * tag_mask).sum(-2) / (tag_mask.sum(-2) + 1e-12)
        parts = [self.id_table(ids), tag_vec]
        if self.use_mm_emb:
            parts.append(self.mm_proj(self.item_emb[ids]))
        return torch.cat(parts, dim=-1)

    def forward(self, batch: CTRBatch):
        """Returns ``target (B, D)``, ``history (B, L, D)`` zeroed where ``mask`` is False, and
        ``side (B, 2d)``. Target and history share one lookup (one gather for L + 1 ids)."""
        ids = torch.cat([batch.item_seq, batch.item_id.unsqueeze(1)], dim=1)
        vecs = self.items(ids)
        history = vecs[:, :-1] * batch.mask.unsqueeze(-1).to(vecs.dtype)
        return vecs[:, -1], history, self.side(batch.likes_level, batch.views_level)

    def side(self, likes_level: torch.Tensor, views_level: torch.Tensor) -> torch.Tensor:
        """Side features of target rows: the likes and views level vectors, ``(*, 2d)``."""
        return torch.cat([self.likes_table(likes_level), self.views_table(views_level)], dim=-1)
