"""Tabular users and items for two-tower retrieval: encoded feature tables and (user, item, target) pairs.

A side (users or items) is a :class:`FeatureTable`: ``num`` (N, n_numeric) float32 and ``cat``
(N, n_categorical) int64, every categorical feature encoded to ``1..K`` with **index 0 reserved for
"unseen or missing"**. :func:`encode_table` builds one from raw columns, vectorised, with an explicit
policy for the two ways real tables go wrong:

* a category value not in the vocabulary (the vocabulary is built on the rows given as
  ``fit_rows``, or passed in): ``unseen="reserve"`` maps it to index 0 (a learned "unknown" token),
  ``unseen="error"`` raises one line naming the file, column, row and value;
* a NaN in a numeric column: ``nan="error"`` raises one line naming the file, column and row,
  ``nan="mean"`` replaces it by the column's mean over ``fit_rows`` (documented per environment).
  A missing categorical value (None / NaN / empty string) is its own category, ``"<missing>"``.

Numeric columns are standardised with the mean / std of ``fit_rows`` (std 0 -> 1), so ages and
binary genre flags reach the tokenizer on one scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ssmrec.errors import DataError

MISSING = "<missing>"


@dataclass
class FeatureTable:
    num: torch.Tensor  # (N, n_numeric) float32, standardised
    cat: torch.Tensor  # (N, n_categorical) int64, 0 = unseen / missing
    numeric: list[str]
    categorical: list[str]
    cardinalities: list[int]  # per categorical feature, including the reserved index 0
    ids: np.ndarray  # (N,) str: the row's id in the source (user id, article id, song rank)
    vocab: dict = field(default_factory=dict)  # column -> list of known values (index i+1)
    stats: dict = field(default_factory=dict)  # column -> (mean, std) used to standardise

    def __len__(self) -> int:
        return len(self.ids)

    def schema(self) -> dict:
        return {"numeric": list(self.numeric), "categorical": list(self.categorical),
                "cardinalities": [int(c) for c in self.cardinalities]}

    def rows(self, idx) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return self.num[idx], self.cat[idx]


def _as_str(values) -> np.ndarray:
    """Values as strings; None, NaN and "" become :data:`MISSING` (vectorised through pyarrow)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(np.asarray(values), from_pandas=True)
    arr = pc.cast(arr, pa.string())
    arr = pc.fill_null(pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr), MISSING)
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=str)


def encode_categorical(values, column: str, source: str, vocab: list[str] | None = None,
                       fit_rows: np.ndarray | None = None,
                       unseen: Literal["reserve", "error"] = "reserve") -> tuple[np.ndarray, list[str]]:
    """Codes 1..K (0 = unseen) of ``values`` against ``vocab`` (built from ``fit_rows`` when None)."""
    s = _as_str(values)
    if vocab is None:
        fit = s if fit_rows is None else s[fit_rows]
        vocab = sorted(set(fit.tolist()))
    known = np.asarray(vocab, dtype=str)
    order = np.argsort(known)
    pos = np.clip(np.searchsorted(known[order], s), 0, max(len(known) - 1, 0))
    found = (known[order][pos] == s) if len(known) else np.zeros(len(s), dtype=bool)
    codes = np.where(found, order[pos] + 1, 0).astype(np.int64)
    if unseen == "error" and not found.all():
        row = int(np.flatnonzero(~found)[0])
        raise DataError(source, f"value {str(s[row])!r} was not seen in training (data.unseen: error; "
                                f"'reserve' maps it to the unknown token)", column=column, row=row)
    return codes, list(vocab)


def encode_numeric(values, column: str, source: str, fit_rows: np.ndarray | None = None,
                   nan: Literal["error", "mean"] = "error",
                   stats: tuple[float, float] | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Standardised float32 column; NaN handled by ``nan`` (see module docstring)."""
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.asarray(values, dtype=object)
        for i, v in enumerate(arr):  # only reached on bad data: find the first unparsable row
            try:
                float(v)
            except (TypeError, ValueError):
                raise DataError(source, f"not a number: {v!r}", column=column, row=i) from None
        raise
    bad = ~np.isfinite(x)
    if bad.any() and nan == "error":
        row = int(np.flatnonzero(bad)[0])
        raise DataError(source, f"missing / non-finite value {x[row]} (data.nan: error; 'mean' imputes the "
                                f"training mean)", column=column, row=row)
    fit = x if fit_rows is None else x[fit_rows]
    if stats is None:
        good = fit[np.isfinite(fit)]
        if len(good) == 0:
            raise DataError(source, "no finite value to fit the column's mean / std", column=column)
        mean, std = float(good.mean()), float(good.std())
        stats = (mean, std if std > 0 else 1.0)
    x = np.where(bad, stats[0], x)
    return ((x - stats[0]) / stats[1]).astype(np.float32), stats


def encode_table(columns: dict, numeric: list[str], categorical: list[str], ids, source: str,
                 fit_rows: np.ndarray | None = None, unseen: str = "reserve", nan: str = "error",
                 vocab: dict | None = None, stats: dict | None = None) -> FeatureTable:
    """A :class:`FeatureTable` from raw ``columns`` (name -> array-like); ``vocab`` / ``stats`` from a
    previous fit make the encoding identical to that one (serving, checkpoints)."""
    n = len(ids)
    for c in (*numeric, *categorical):
        if c not in columns:
            raise DataError(source, "missing column", column=c)
        if len(columns[c]) != n:
            raise DataError(source, f"has {len(columns[c])} rows, expected {n}", column=c)
    vocab, stats = dict(vocab or {}), dict(stats or {})
    nums, cats = [], []
    for c in numeric:
        col, stats[c] = encode_numeric(columns[c], c, source, fit_rows, nan, stats.get(c))
        nums.append(col)
    for c in categorical:
        codes, vocab[c] = encode_categorical(columns[c], c, source, vocab.get(c), fit_rows, unseen)
        cats.append(codes)
    num = torch.from_numpy(np.stack(nums, 1)) if nums else torch.zeros(n, 0)
    cat = torch.from_numpy(np.stack(cats, 1)) if cats else torch.zeros(n, 0, dtype=torch.long)
    card = [len(vocab[c]) + 1 for c in categorical]
    return FeatureTable(num, cat, list(numeric), list(categorical), card, np.asarray(ids).astype(str), vocab, stats)


@dataclass
class Pairs:
    user: np.ndarray  # (P,) int64 row of the user table
    item: np.ndarray  # (P,) int64 row of the item table
    target: np.ndarray  # (P,) float32

    def __len__(self) -> int:
        return len(self.user)


@dataclass
class TowerData:
    """One environment's encoded data: both feature tables, train / valid pairs and the held-out
    test users with their relevant items (CSR over ``test_users``) for ranking against every item."""

    name: str
    users: FeatureTable
    items: FeatureTable
    train: Pairs
    valid: Pairs
    test_users: np.ndarray  # (T,) int64 rows of the user table
    relevant_offsets: np.ndarray  # (T + 1,) CSR over relevant_items
    relevant_items: np.ndarray  # item rows
    info: dict = field(default_factory=dict)  # generative facts (thresholds, cluster counts, sizes)

    def relevance_matrix(self, rows: slice | None = None) -> torch.Tensor:
        """Dense (T, n_items) bool relevance of the test users (``rows``: a slice of them)."""
        off = self.relevant_offsets
        lo, hi = (0, len(off) - 1) if rows is None else (rows.start or 0, min(rows.stop, len(off) - 1))
        rel = torch.zeros(hi - lo, len(self.items), dtype=torch.bool)
        counts = np.diff(off[lo:hi + 1])
        r = np.repeat(np.arange(hi - lo), counts)
        rel[torch.from_numpy(r), torch.from_numpy(self.relevant_items[off[lo]:off[hi]])] = True
        return rel


def csr_from_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets, columns) of a dense boolean (rows, cols) mask."""
    counts = mask.sum(1)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), np.nonzero(mask)[1].astype(np.int64)
