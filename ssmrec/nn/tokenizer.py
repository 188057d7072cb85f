"""Feature tokenizer: one row of tabular features -> a sequence of tokens (FT-Transformer / FT-Mamba).

Reference doc §8.1 (Gorishniy et al., "Revisiting Deep Learning Models for Tabular Data", §3.3;
FT-Mamba §III): for token width d,

* numeric feature j: ``T_j = x_j * w_j + b_j`` (``w_j, b_j`` in R^d);
* categorical feature j: ``T_j = E_j[x_j] + b_j``, one table per feature and a per-feature bias
  shared by its categories (all tables live in one ``nn.Embedding`` with per-feature offsets);
* [CLS]: the numeric tokenizer applied to a constant 1, ``w_cls + b_cls``, appended **last**, because
  a causal Mamba summarises the whole row only at its final position (the ``rtdl`` library appends it
  last as well). The row representation is the embedder's output at that slot.

Category index 0 of every feature is reserved for "unseen / missing" (the data module maps values it
did not see in training there, or refuses them, by its documented policy); the tokenizer itself only
checks ranges. Initialisation: U(±d^-1/2) for every weight and bias, as ``rtdl`` does.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor


class FeatureTokenizer(nn.Module):
    def __init__(self, n_numeric: int, cardinalities: list[int], d_token: int, cls_token: bool = True):
        super().__init__()
        if n_numeric < 0 or any(c < 1 for c in cardinalities):
            raise ValueError("n_numeric must be >= 0 and every cardinality >= 1")
        if n_numeric == 0 and not cardinalities:
            raise ValueError("a tokenizer needs at least one feature")
        self.n_numeric, self.n_categorical, self.d_token = n_numeric, len(cardinalities), d_token
        self.cardinalities = list(cardinalities)
        # [CLS] = one more numeric feature whose value is always 1 (its w + b)
        n_lin = n_numeric + (1 if cls_token else 0)
        self.cls_token = cls_token
        self.num_weight = nn.Parameter(torch.empty(n_lin, d_token)) if n_lin else None
        self.num_bias = nn.Parameter(torch.empty(n_lin, d_token)) if n_lin else None
        if cardinalities:
            self.register_buffer("cat_offsets", torch.tensor([0] + list(cardinalities[:-1])).cumsum(0), persistent=False)
            self.cat_table = nn.Embedding(sum(cardinalities), d_token)
            self.cat_bias = nn.Parameter(torch.empty(len(cardinalities), d_token))
        else:
            self.cat_offsets, self.cat_table, self.cat_bias = None, None, None
        bound = 1.0 / math.sqrt(d_token)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    @property
    def n_tokens(self) -> int:
        return self.n_numeric + self.n_categorical + (1 if self.cls_token else 0)

    def forward(self, x_num: Tensor | None, x_cat: Tensor | None) -> Tensor:
        """``x_num`` (B, n_numeric) float, ``x_cat`` (B, n_categorical) int64 in [0, cardinality)
        -> tokens (B, n_numeric + n_categorical [+ 1 for CLS], d_token): numeric, categorical, [CLS]."""
        parts = []
        batch = (x_num if x_num is not None and x_num.numel() else x_cat).shape[0]
        if self.n_numeric:
            parts.append(x_num[..., None] * self.num_weight[: self.n_numeric] + self.num_bias[: self.n_numeric])
        if self.n_categorical:
            parts.append(self.cat_table(x_cat + self.cat_offsets) + self.cat_bias)
        if self.cls_token:
            cls = (self.num_weight[-1] + self.num_bias[-1]).expand(batch, 1, self.d_token)
            parts.append(cls)
        return torch.cat(parts, dim=1)
