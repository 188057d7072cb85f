"""A synthetic sequential world with a known next-item distribution (so an oracle ranking exists).

Items ``1..n_items`` belong to ``n_clusters`` clusters; each has a global popularity (Zipf) and a
*successor* (the next item in its cluster's fixed order). Users follow a first-order Markov chain:

    P(j | i) = succ · [j = successor(i)] + stay · pop_c(i)(j) + (1 - succ - stay) · pop(j)

with ``pop_c`` the popularity renormalised inside cluster ``c``. The first item is drawn from ``pop``.
Order therefore matters (the successor term), clusters give medium-range structure, and popularity
is the baseline a non-sequential model reaches. The oracle ranks items by ``P(· | last item)``: no
model can beat it in expectation, so its NDCG@10 is the ceiling to compare against. Sequence lengths
are ``min_len + Geometric``; everything is a pure function of (config, seed) and vectorised over users.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class SeqWorldConfig:
    n_users: int = 6000
    n_items: int = 1500
    n_clusters: int = 30
    succ: float = 0.35  # weight of the successor item
    stay: float = 0.35  # weight of the current item's cluster
    zipf: float = 0.9  # popularity exponent
    min_len: int = 5
    mean_extra_len: float = 15.0  # mean of the geometric part of a length
    max_len: int = 120


PRESETS = {
    "tiny": SeqWorldConfig(n_users=400, n_items=150, n_clusters=6, mean_extra_len=8.0, max_len=40),
    "default": SeqWorldConfig(),
}


def transition_matrix(cfg: SeqWorldConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(P, pop): ``P[i, j]`` = P(next = j | current = i) over ids 0..n_items (row/column 0 = padding,
    never visited); ``pop`` the initial distribution."""
    rng = np.random.default_rng(seed)
    n = cfg.n_items
    cluster = rng.integers(0, cfg.n_clusters, size=n + 1)
    cluster[0] = -1
    ranks = rng.permutation(n) + 1.0
    pop = np.concatenate([[0.0], ranks ** -cfg.zipf])
    pop /= pop.sum()
    P = np.zeros((n + 1, n + 1))
    same = cluster[:, None] == cluster[None, :]
    same[0, :] = same[:, 0] = False
    pop_c = same * pop[None, :]
    pop_c /= np.maximum(pop_c.sum(1, keepdims=True), 1e-300)
    P = cfg.stay * pop_c + (1.0 - cfg.succ - cfg.stay) * pop[None, :]
    # Successor: the next item of the same cluster in a fixed random order (cyclic).
    succ = np.zeros(n + 1, dtype=np.int64)
    for c in range(cfg.n_clusters):  # n_clusters iterations, not per item
        members = rng.permutation(np.flatnonzero(cluster == c))
        if len(members):
            succ[members] = np.roll(members, -1)
    P[np.arange(1, n + 1), succ[1:]] += cfg.succ
    P[0] = 0.0
    P[1:] /= P[1:].sum(1, keepdims=True)
    return P, pop


def synth_sequences(cfg: SeqWorldConfig, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, items, P): chronological sequences of every user in CSR form and the true P."""
    P, pop = transition_matrix(cfg, seed)
    rng = np.random.default_rng(seed + 1)
    U = cfg.n_users
    lengths = np.minimum(cfg.min_len + rng.geometric(1.0 / (1.0 + cfg.mean_extra_len), size=U) - 1, cfg.max_len)
    T = int(lengths.max())
    seq = np.zeros((U, T), dtype=np.int64)
    seq[:, 0] = rng.choice(cfg.n_items + 1, size=U, p=pop)
    cdf = np.cumsum(P, axis=1)
    for t in range(1, T):  # T steps, each vectorised over users
        u = rng.random(U)
        prev = seq[:, t - 1]
        seq[:, t] = np.minimum((u[:, None] > cdf[prev]).sum(1), cfg.n_items)
    keep = np.arange(T)[None, :] < lengths[:, None]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return offsets, seq[keep], P


def config_dict(cfg: SeqWorldConfig) -> dict:
    return asdict(cfg)
