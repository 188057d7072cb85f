"""What every next-item model shares: the item table (padding row 0) and scoring against it."""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from types import SimpleNamespace

import torch
import torch.nn as nn

from ssmrec.models.incremental import IncrementalModel, ModelState


class SeqRecModel(nn.Module, IncrementalModel, ABC):
    """Base class: ``item_table`` (n_items x D, row 0 = padding) is both the input embedding and the
    prediction layer (scores ``h · Eᵀ``), as in RecBole's sequential models.

    Serving (:mod:`ssmrec.models.incremental`): a model whose state holds ``h`` (the newest output,
    what is scored) ranks the catalogue by one product; any other is served from its window by
    ``forward`` (:meth:`offline_score_all`, what evaluation computes)."""

    serving_task = "next_item"
    cloze = False  # BERT4Rec: [MASK] appended to the window and scored
    # Trained with data.empty_history (the padding id alone as an input): a user with no events is
    # scored from that input, as training read it, instead of refused (set by the task).
    empty_history_start = False

    def __init__(self, n_items: int, dim: int):
        super().__init__()
        self.item_table = nn.Embedding(n_items, dim, padding_idx=0)
        self.register_buffer("item_features", None, persistent=False)  # data, carried as a checkpoint artifact
        self.feature_mode = "none"
        # the same features as a sparse CSR matrix when mostly zeros (multi-hot attributes), see item_vectors
        self.register_buffer("_sparse_features", None, persistent=False)

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
        self._sparse_features = None
        if f.count_nonzero() <= self.SPARSE_FEATURE_DENSITY * f.numel():
            with warnings.catch_warnings():  # CSR is "beta" in torch; sparse x dense mm and its backward are what we use
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                self._sparse_features = f.to_sparse_csr()

    # Below this fraction of non-zeros (Beauty's attributes: 0.6 %) the projected table is a sparse x dense
    # product, O(nnz x D), instead of a dense (items x F) x (F x D) product per lookup (the same sums in
    # another order). Beauty, per training step (two tables, forward + backward, one thread): dense 58 ms,
    # embedding_bag 17 ms, CSR 10 ms.
    SPARSE_FEATURE_DENSITY = 0.05

    def projected_item_features(self) -> torch.Tensor:
        """``(n_items, D)``: every item's feature vector through ``feature_proj``."""
        if self._sparse_features is None:
            return self.feature_proj(self.item_features)
        return torch.sparse.mm(self._sparse_features, self.feature_proj.weight.t())

    def item_vectors(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors of items ``ids`` (any shape), or of every item when ``ids`` is None."""
        e = self.item_table.weight if ids is None else self.item_table(ids)
        if self.item_features is None:
            return e
        if ids is None:
            f = self.projected_item_features()
        elif self._sparse_features is not None:  # the whole sparse product is cheaper than a dense lookup
            f = self.projected_item_features()[ids]
        else:
            f = self.feature_proj(self.item_features[ids])
        return f if self.feature_mode == "replace" else e + f

    @property
    def catalogue_size(self) -> int:
        """Items including the padding id 0 ([MASK] rows excluded)."""
        return getattr(self, "n_items", self.item_table.num_embeddings)

    def window_batch(self, windows: list[torch.Tensor]):
        """Right-padded windows as evaluation builds them (Cloze models: followed by [MASK])."""
        seqs = [w[-self.serving_window:] for w in windows]
        if self.cloze:
            seqs = [torch.cat([q, torch.tensor([self.mask_id])]) for q in seqs]
        lengths = torch.tensor([len(q) for q in seqs])
        item_seq = torch.zeros(len(seqs), int(lengths.max()), dtype=torch.long)
        for i, q in enumerate(seqs):
            item_seq[i, :len(q)] = q
        return SimpleNamespace(item_seq=item_seq, lengths=lengths, target=None)

    def _ranked(self, scores: torch.Tensor) -> torch.Tensor:
        scores = scores[:, :self.catalogue_size].clone()
        scores[:, 0] = float("-inf")  # padding
        return scores

    def _no_events(self) -> torch.Tensor:
        """The window a user with no events is scored from: the padding id alone (data.empty_history)."""
        if not self.empty_history_start:
            raise ValueError("a user with no events has no next-item state yet; send an event first "
                             "(or train with data.empty_history: true to score new users)")
        return torch.zeros(1, dtype=torch.long)

    @torch.inference_mode()
    def new_user_hidden(self) -> torch.Tensor:
        """The user state ``(1, D)`` a user with no events is scored from (data.empty_history): the
        forward's hidden on the padding id alone; ``full_sort_predict`` of it is that user's ranking."""
        return self(self.window_batch([self._no_events()]))["hidden"]

    @torch.inference_mode()
    def offline_score_all(self, windows: list[torch.Tensor]) -> torch.Tensor:
        """Scores of every item ``(B, n_items)`` by ``forward`` on the windows; column 0 is -inf."""
        windows = [w if len(w) else self._no_events() for w in windows]
        return self._ranked(self(self.window_batch(windows))["logits"])

    @torch.inference_mode()
    def score_all(self, states: list[ModelState]) -> torch.Tensor:
        new = [i for i, s in enumerate(states) if s.n_events == 0]
        if new:  # scored from the padding id by forward (one row, shared); the others as usual
            row = self.offline_score_all([self._no_events()])
            out = row.expand(len(states), -1).clone()
            rest = [i for i in range(len(states)) if states[i].n_events]
            if rest:
                out[rest] = self.score_all([states[i] for i in rest])
            return out
        if "h" in states[0].tensors:
            return self._ranked(self.full_sort_predict(torch.cat([s.tensors["h"] for s in states])))
        return self.offline_score_all([s.window for s in states])

    @torch.inference_mode()
    def score(self, states: list[ModelState], candidates: list[torch.Tensor], features=None) -> list[torch.Tensor]:
        """Softmax probability over the catalogue of each candidate."""
        if features:
            raise ValueError("features: a next-item model takes no candidate features")
        logp = torch.log_softmax(self.score_all(states), dim=-1)
        return [logp[i, c].exp() for i, c in enumerate(candidates)]

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
