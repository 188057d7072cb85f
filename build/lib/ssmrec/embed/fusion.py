"""Fusion of image and text embeddings as MambaCTR §3.2.2: ``PCA(λ_img·ê_v + λ_txt·ê_t)``.

* Each modality is L2-normalised per item first (``ê = e / ||e||``), so λ weighs unit vectors.
* λ_img + λ_txt must equal 1 (the paper's condition that keeps the fused range unchanged); anything
  else is rejected.
* **When the two widths differ** (e.g. a 512-d CLIP image tower and a 384-d MiniLM text model), the
  narrower modality is mapped into the wider space by a fixed, seeded random **isometry**
  ``Q`` (``d_small x d_large`` with orthonormal rows, from the QR decomposition of a Gaussian
  matrix, seed 0). Why not zero-padding: padding adds coordinate *i* of one encoder to coordinate
  *i* of the other, a systematic collision of unrelated axes that concentrates on the leading
  coordinates; a random isometry keeps every length and every cosine similarity inside the
  narrower modality unchanged (so λ keeps its meaning) and spreads it over the wider space with no
  preferred axes. ``Q`` is saved with the output (``embed_pca.npz``), so the mapping is reproducible.
  With equal widths (CLIP image + CLIP text, Jina-CLIP-v2) nothing is projected: the paper's case.
* Then PCA to ``dim`` components (scikit-learn, fitted on all items), optionally whitened
  (unit variance per component). If fewer than ``dim`` components exist (fewer items or a narrower
  fused space than ``dim``), the remaining columns are zero and the manifest says so.
"""

from __future__ import annotations

import numpy as np

from ssmrec.errors import ConfigError

PROJECTION_SEED = 0


def parse_weights(text) -> tuple[float, float]:
    """``"0.7,0.3"`` (or a 2-sequence) -> (λ_img, λ_txt); both in [0, 1] and summing to 1."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        w = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"--weights must be two numbers 'IMAGE,TEXT' (e.g. 0.7,0.3), got {text!r}") from None
    if len(w) != 2 or not all(np.isfinite(w)):
        raise ConfigError(f"--weights must be two finite numbers 'IMAGE,TEXT' (e.g. 0.7,0.3), got {text!r}")
    if min(w) < 0:
        raise ConfigError(f"--weights {w[0]:g},{w[1]:g}: λ_img and λ_txt must be >= 0 (MambaCTR §3.2.2)")
    if abs(sum(w) - 1.0) > 1e-6:
        raise ConfigError(f"--weights {w[0]:g},{w[1]:g}: λ_img and λ_txt must be >= 0 and sum to 1 "
                          f"(MambaCTR §3.2.2), they sum to {sum(w):g}")
    return w


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def isometry(d_small: int, d_large: int, seed: int = PROJECTION_SEED) -> np.ndarray:
    """(d_small, d_large) matrix with orthonormal rows: ``x @ Q`` preserves norms and inner products."""
    g = np.random.default_rng(seed).normal(size=(d_large, d_small))
    q, r = np.linalg.qr(g)  # q: (d_large, d_small), orthonormal columns
    q *= np.sign(np.diag(r))[None, :]  # make the factorisation unique (independent of LAPACK sign choices)
    return q.T.astype(np.float64)


def fuse(image: np.ndarray | None, text: np.ndarray | None, weights) -> tuple[np.ndarray, dict]:
    """λ_img·ê_v + λ_txt·ê_t (float64) and what was done: ``{"projected": modality|None, "Q": array|None}``.
    With one modality missing, the fused vector is that modality's unit vector."""
    lam_img, lam_txt = weights
    if image is None or text is None:
        only = image if image is not None else text
        return l2_normalise(only.astype(np.float64)), {"projected": None, "Q": None}
    v, t = l2_normalise(image.astype(np.float64)), l2_normalise(text.astype(np.float64))
    projected, q = None, None
    if v.shape[1] != t.shape[1]:
        small, large = sorted((v.shape[1], t.shape[1]))
        q = isometry(small, large)
        if v.shape[1] == small:
            v, projected = v @ q, "image"
        else:
            t, projected = t @ q, "text"
    return lam_img * v + lam_txt * t, {"projected": projected, "Q": q}


def fit_pca(x: np.ndarray, dim: int, whiten: bool):
    """Fit PCA on all rows of ``x``; returns (reduced (n, dim) float32, fitted PCA, n_components)."""
    from sklearn.decomposition import PCA

    k = min(dim, x.shape[0], x.shape[1])
    pca = PCA(n_components=k, whiten=whiten, svd_solver="auto", random_state=0)
    reduced = pca.fit_transform(x)
    out = np.zeros((x.shape[0], dim), dtype=np.float32)
    out[:, :k] = reduced
    return out, pca, k
