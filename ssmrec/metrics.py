"""Evaluation metrics: one definition per metric, used by every task, the Trainer and the benches.

Below ``tasks/`` in the data flow (it imports nothing of ssmrec). Three groups:

* **Ranking from ranks** (one relevant item per user: next-item evaluation). ``rank`` is the 1-based
  rank of the target among all scored items (:func:`rank_of_target`, ties pessimistic):

  =============  ======================================================
  ``hr@k``       ``1[rank <= k]``
  ``ndcg@k``     ``1[rank <= k] / log2(rank + 1)`` (one relevant item: IDCG = 1)
  ``mrr@k``      ``1[rank <= k] / rank``
  =============  ======================================================

* **Ranking from a score matrix and a relevance matrix** (several relevant items: retrieval),
  :func:`relevance_metrics`. ``first`` is the rank of the best-ranked relevant item, so ``hr@k``
  and ``mrr@k`` are the same functions of ``first`` as above; ``p@k = hits@k / k``,
  ``r@k = hits@k / n_relevant``, ``map@12 = sum_{i<=12} precision@i * rel_i / min(n_relevant, 12)``
  (Kaggle H&M's MAP@12).

* **CTR**: ``auc`` (scikit-learn's ROC AUC), ``logloss`` (mean binary cross-entropy, predictions
  clipped to ``[1e-7, 1 - 1e-7]`` as FuxiCTR), ``gauc`` (impression-weighted mean of per-user AUC over
  users with both classes).

**Non-finite scores never score well** (one rule): a NaN or infinite score ranks behind every finite
score; a target whose own score is non-finite ranks last (rank = number of scored columns); a
non-finite CTR prediction counts as the most wrong prediction, ``1 - label``. Each evaluation that
meets one says so on stderr with the count (:func:`warn_nonfinite`). ``-inf`` is also what masking
writes (:func:`exclude_items`), and a masked item indeed ranks behind the target.

**Monitor direction** comes from the metric's name alone (:func:`metric_direction`), for any ``k``.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

__all__ = ["metric_direction", "MONITOR_DIRECTIONS", "rank_of_target", "hit_rate", "ndcg_single", "mrr",
           "rank_metrics", "relevance_metrics", "exclude_items", "auc", "logloss", "gauc", "ctr_metrics",
           "warn_nonfinite"]

# ------------------------------------------------------------------------------------------------
# Monitor direction
# ------------------------------------------------------------------------------------------------

# (name pattern, direction); the first full match wins. ``@k`` metrics accept any positive k.
MONITOR_DIRECTIONS: tuple[tuple[str, str], ...] = (
    (r"(hr|ndcg|mrr|recall|r|p|precision|map)@[1-9][0-9]*", "max"),
    (r"g?auc", "max"),
    (r"logloss|mse|loss|ce|bce|[a-z0-9_]+_loss", "min"),
)


def metric_direction(name: str) -> str | None:
    """``"max"`` or ``"min"`` for a metric name (see :data:`MONITOR_DIRECTIONS`), ``None`` when unknown."""
    for pattern, direction in MONITOR_DIRECTIONS:
        if re.fullmatch(pattern, name):
            return direction
    return None


def warn_nonfinite(count: int, total: int, what: str) -> None:
    if count:
        print(f"ssmrec: warning: {count} of {total} {what} have non-finite scores; they are ranked worst",
              file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# Ranking: one relevant item per row
# ------------------------------------------------------------------------------------------------


def rank_of_target(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1-based rank of column ``target[i]`` in each row of ``scores`` (B, N). Ties are pessimistic (an
    item scoring exactly the target's score counts as ahead of it); non-finite scores rank behind every
    finite one, and a non-finite target score ranks last (``N``)."""
    t = scores.gather(1, target.view(-1, 1))
    ahead = ((scores >= t) & torch.isfinite(scores)).sum(1)
    return torch.where(torch.isfinite(t.view(-1)), ahead, torch.full_like(ahead, scores.shape[1]))


def hit_rate(rank: torch.Tensor, k: int) -> torch.Tensor:
    return (rank <= k).double()


def ndcg_single(rank: torch.Tensor, k: int) -> torch.Tensor:
    """NDCG@k with one relevant item (its ideal DCG is 1)."""
    return hit_rate(rank, k) / torch.log2(rank.double() + 1.0)


def mrr(rank: torch.Tensor, k: int) -> torch.Tensor:
    return hit_rate(rank, k) / rank.double()


def rank_metrics(rank: torch.Tensor, ks) -> dict[str, torch.Tensor]:
    """Per-row ``hr@k``, ``ndcg@k``, ``mrr@k`` from 1-based ranks (the caller averages)."""
    out = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(rank, k)
        out[f"ndcg@{k}"] = ndcg_single(rank, k)
        out[f"mrr@{k}"] = mrr(rank, k)
    return out


def exclude_items(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                  keep: torch.Tensor | None = None) -> torch.Tensor:
    """``scores`` with ``scores[rows[j], cols[j]] = -inf`` for every pair (in place), except where
    ``cols[j] == keep[rows[j]]`` (e.g. the target, when it repeats a history item)."""
    if keep is not None:
        drop = cols != keep[rows]
        rows, cols = rows[drop], cols[drop]
    return scores.index_put_((rows, cols), torch.tensor(float("-inf"), dtype=scores.dtype))


# ------------------------------------------------------------------------------------------------
# Ranking: several relevant items per row
# ------------------------------------------------------------------------------------------------


def relevance_metrics(scores: torch.Tensor, rel: torch.Tensor, ks) -> dict[str, torch.Tensor]:
    """Per-row ``p@k``, ``r@k``, ``mrr@k``, ``hr@k`` for each k, and ``map@12``, from ``scores`` (U, I)
    and ``rel`` (U, I) bool. Ties are broken pessimistically (irrelevant items first); rows without a
    relevant item get NaN (the caller leaves them out)."""
    scores = torch.where(torch.isfinite(scores), scores, torch.tensor(float("-inf"), dtype=scores.dtype))
    kmax = min(max(max(ks), 12), scores.shape[1])
    pre = torch.argsort(rel.to(torch.int8), dim=1, stable=True)  # irrelevant items first ...
    order = torch.argsort(scores.gather(1, pre), dim=1, descending=True, stable=True)  # ... within ties
    top = pre.gather(1, order[:, :kmax])
    hits = rel.gather(1, top).double()  # (U, kmax) relevance of the ranked list
    n_rel = rel.sum(1).double()
    valid = n_rel > 0
    cum = hits.cumsum(1)
    pos = torch.arange(1, kmax + 1, dtype=torch.float64)
    # rank of the best-ranked relevant item (kmax + 1 when none is within the list: a miss for every k)
    first = torch.where(hits.any(1), hits.argmax(1) + 1, torch.full_like(n_rel, kmax + 1, dtype=torch.long))
    out = {}
    nan = torch.full_like(n_rel, float("nan"))
    for k in ks:
        h = cum[:, min(k, kmax) - 1]
        out[f"p@{k}"] = torch.where(valid, h / k, nan)
        out[f"r@{k}"] = torch.where(valid, h / n_rel.clamp_min(1), nan)
        out[f"mrr@{k}"] = torch.where(valid, mrr(first, k), nan)
        out[f"hr@{k}"] = torch.where(valid, hit_rate(first, k), nan)
    k12 = min(12, kmax)
    ap = (cum[:, :k12] / pos[:k12] * hits[:, :k12]).sum(1) / n_rel.clamp(1, 12)
    out["map@12"] = torch.where(valid, ap, nan)
    return out


# ------------------------------------------------------------------------------------------------
# CTR
# ------------------------------------------------------------------------------------------------


def _worst_where_nonfinite(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(p)
    if bad.any():
        warn_nonfinite(int(bad.sum()), len(p), "predictions")
        p = np.where(bad, 1.0 - y, p)
    return p


def auc(y, p) -> float:
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0 or y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, _worst_where_nonfinite(y, np.asarray(p, dtype=np.float64))))


def logloss(y, p, eps: float = 1e-7) -> float:
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(_worst_where_nonfinite(y, np.asarray(p, dtype=np.float64)), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def gauc(y, p, groups) -> float:
    """Impression-weighted mean of per-user AUC over users with both classes (vectorised:
    per-group Mann-Whitney U from ranks within the group)."""
    y = np.asarray(y, dtype=np.float64)
    p = _worst_where_nonfinite(y, np.asarray(p, dtype=np.float64))
    g = np.asarray(groups)
    order = np.lexsort((p, g))
    y, p, g = y[order], p[order], g[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, len(g)])
    # Average ranks within each group: global average rank of (group, score) ties minus group offset.
    key = np.stack([g, p], 1)
    _, inv = np.unique(key, axis=0, return_inverse=True)
    ranks = rankdata(inv.ravel(), method="average") - np.repeat(starts, sizes)
    n_pos = np.add.reduceat(y, starts)
    n_neg = sizes - n_pos
    rank_pos = np.add.reduceat(ranks * y, starts)
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return float("nan")
    u = rank_pos[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2
    per_group = u / (n_pos[ok] * n_neg[ok])
    return float(np.average(per_group, weights=sizes[ok]))


def ctr_metrics(y, p, groups=None) -> dict:
    y = np.asarray(y, dtype=np.float64)
    p = _worst_where_nonfinite(y, np.asarray(p, dtype=np.float64))  # warn once, not per metric
    out = {"auc": auc(y, p), "logloss": logloss(y, p)}
    if groups is not None:
        out["gauc"] = gauc(y, p, groups)
    return out
