"""Top-k by inner product over an item catalogue: exact (torch) or approximate (faiss, optional).

Two-tower retrieval scores a user against every item by one inner product. Exact search is a chunked
matrix product + ``topk`` in torch; past ~100k items an approximate index answers faster with some
recall lost, so ``build_index(kind="auto")`` switches to faiss (``pip install 'ssmrec[ann]'``) above
``AUTO_THRESHOLD`` items when it is importable (else exact, with one warning). :func:`recall_at_k`
measures what the approximation loses against exact search on the same queries
(``ssmrec bench tower --index`` reports it).

Kinds: ``exact``; ``hnsw`` (faiss ``IndexHNSWFlat``, inner-product metric, M 32, efSearch 128);
``ivf`` (faiss ``IndexIVFFlat``, inner product, 4·sqrt(N) lists, nprobe 16).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ssmrec.errors import SsmrecError

AUTO_THRESHOLD = 100_000
INDEX_KINDS = ("auto", "exact", "hnsw", "ivf")


class ExactIndex:
    kind = "exact"

    def __init__(self, vectors, chunk: int = 4096):
        self.items = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        self.chunk = chunk

    def __len__(self) -> int:
        return len(self.items)

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (Q, k), item rows (Q, k))``, best first."""
        q = torch.as_tensor(np.asarray(queries, dtype=np.float32))
        k = min(k, len(self.items))
        out_s, out_i = [], []
        with torch.no_grad():
            for a in range(0, len(q), self.chunk):
                s, i = (q[a:a + self.chunk] @ self.items.T).topk(k, dim=1)
                out_s.append(s.numpy())
                out_i.append(i.numpy())
        return np.concatenate(out_s), np.concatenate(out_i)


class FaissIndex:
    def __init__(self, vectors, kind: str = "hnsw", seed: int = 0):
        faiss = _faiss()
        x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        n, d = x.shape
        self.kind = kind
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.hnsw.efSearch = 128
        else:
            nlist = max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))  # faiss wants >= 39 points per list
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            train = x[rng.choice(n, min(n, 256 * nlist), replace=False)]
            index.train(train)
            index.nprobe = min(64, nlist)
        index.add(x)
        self.index, self.n = index, n

    def __len__(self) -> int:
        return self.n

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        s, i = self.index.search(q, min(k, self.n))
        return s, i


def _faiss():
    try:
        import faiss
    except ImportError:
        raise SsmrecError("an approximate index needs faiss: pip install 'ssmrec[ann]' (faiss-cpu)") from None
    return faiss


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def build_index(vectors, kind: str = "auto"):
    """An index over ``vectors`` (N, d); see the module docstring for ``kind``."""
    if kind not in INDEX_KINDS:
        raise SsmrecError(f"index kind must be one of {', '.join(INDEX_KINDS)}, got {kind!r}")
    n = len(vectors)
    if kind == "auto":
        if n <= AUTO_THRESHOLD:
            return ExactIndex(vectors)
        if not faiss_available():
            warnings.warn(f"ssmrec: {n:,} items and no faiss: exact search (pip install 'ssmrec[ann]' for an "
                          f"approximate index)", RuntimeWarning, stacklevel=2)
            return ExactIndex(vectors)
        kind = "ivf"
    return ExactIndex(vectors) if kind == "exact" else FaissIndex(vectors, kind)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k."""
    k = exact_ids.shape[1]
    hits = (approx_ids[:, :, None] == exact_ids[:, None, :]).any(2).sum(1)
    return float((hits / k).mean())
