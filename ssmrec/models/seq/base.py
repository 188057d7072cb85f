"""What every next-item model shares: the item table (padding row 0) and scoring against it."""

from __future__ import annotations

import torch
import torch.nn as nn


class SeqRecModel(nn.Module):
    """Base class: ``item_table`` (n_items x D, row 0 = padding) is both the input embedding and the
    prediction layer (scores ``h · Eᵀ``), as in RecBole's sequential models."""

    def __init__(self, n_items: int, dim: int):
        super().__init__()
        self.item_table = nn.Embedding(n_items, dim, padding_idx=0)

    def encode(self, batch) -> torch.Tensor:  # pragma: no cover - abstract
        """Hidden states ``(B, L, D)`` of a right-padded batch (causal models: position t sees <= t)."""
        raise NotImplementedError

    def forward(self, batch) -> dict:
        """``hidden``: the user states that are scored — every position with a target when
        ``batch.target`` is ``(B, L)``, else each row's last real position; ``logits``: their scores
        over all items; ``labels``: the targets (``None`` when the batch has none)."""
        h, labels = user_states(self.encode(batch), batch)
        return {"hidden": h, "logits": self.full_sort_predict(h), "labels": labels}

    def full_sort_predict(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every item (column 0 = padding) for user states ``hidden`` ``(N, D)``."""
        return hidden @ self.item_table.weight.t()


def user_states(hidden: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    if batch.target is not None and batch.target.dim() == 2:
        sel = batch.target > 0
        return hidden[sel], batch.target[sel]
    h = hidden[torch.arange(hidden.shape[0], device=hidden.device), batch.lengths - 1]
    return h, batch.target
