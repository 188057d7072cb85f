"""Evaluation metrics: AUC (scikit-learn), logloss (eps 1e-7 as FuxiCTR), group AUC by user."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score


def auc(y, p) -> float:
    y = np.asarray(y)
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, p))


def logloss(y, p, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def gauc(y, p, groups) -> float:
    """Impression-weighted mean of per-user AUC over users with both classes (vectorised:
    per-group Mann-Whitney U from ranks within the group)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
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
    out = {"auc": auc(y, p), "logloss": logloss(y, p)}
    if groups is not None:
        out["gauc"] = gauc(y, p, groups)
    return out
