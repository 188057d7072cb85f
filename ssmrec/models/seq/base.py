"""What every next-item model shares: the item table (padding row 0) and scoring against it."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn as nn


class SeqRecModel(nn.Module, ABC):
    """Base class: ``item_table`` (n_items x D, row 0 = padding) is both the input embedding and the
    prediction layer (scores ``h · Eᵀ``), as in RecBole's sequential models."""

    def __init__(self, n_items: int, dim: int):
        super().__init__()
        self.item_table = nn.Embedding(n_items, dim, padding_idx=0)
        self.register_buffer("item_features", None, persistent=False)  # data, carried as a checkpoint artifact
        self.feature_mode = "none"

    def attach_item_features(self, features: torch.Tensor, mode: str = "add") -> None:
        """Frozen per-item vectors (e.g. `ssmrec embed` text embeddings), ``(n_items, F)`` with row 0 =
        padding, fed through a learned projection and added to (``add``) or used instead of
        (``replace``) the ID embedding, for inputs and scoring alike. Rows beyond the table (a
        [MASK] item) get zeros. The table is data, not a weight: the task stores it in checkpoints."""
        n, dim = self.item_table.weight.shape
        f = torch.zeros(n, features.shape[1])
        f[: min(n, len(features))] = features[:n].float()
        self.item_features = f
        self.feature_proj = nn.Linear(features.shape[1], dim, bias=False)
        nn.init.normal_(self.feature_proj.weight, std=0.02)
        self.feature_mode = mode

    def item_vectors(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors of items ``ids`` (any shape), or of every item when ``ids`` is None."""
        e = self.item_table.weight if ids is None else self.item_table(ids)
        if self.item_features is None:
            return e
        f = self.feature_proj(self.item_features if ids is None else self.item_features[ids])
        return f if self.feature_mode == "replace" else e + f

    @abstractmethod
    def encode(self, batch) -> torch.Tensor:
        """Hidden states ``(B, L, D)`` of a right-padded batch (causal models: position t sees <= t)."""

    def forward(self, batch) -> dict:
        """``hidden``: the user states that are scored — every position with a target when
        ``batch.target`` is ``(B, L)``, else each row's last real position; ``logits``: their scores
        over all items; ``labels``: the targets (``None`` when the batch has none)."""
        h, labels = user_states(self.encode(batch), batch)
        return {"hidden": h, "logits": self.full_sort_predict(h), "labels": labels}

    def full_sort_predict(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every item (column 0 = padding) for user states ``hidden`` ``(N, D)``."""
        return hidden @ self.item_vectors().t()


def user_states(hidden: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    if batch.target is not None and batch.target.dim() == 2:
        sel = batch.target > 0
        return hidden[sel], batch.target[sel]
    h = hidden[torch.arange(hidden.shape[0], device=hidden.device), batch.lengths - 1]
    return h, batch.target
