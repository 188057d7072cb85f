"""Fusion rule (MambaCTR §3.2.2): λ validation, L2 normalisation, the isometry for unequal widths, PCA."""

import numpy as np
import pytest

from ssmrec.embed.fusion import fit_pca, fuse, isometry, l2_normalise, parse_weights
from ssmrec.errors import ConfigError


def test_weights_must_sum_to_one():
    assert parse_weights("0.7,0.3") == (0.7, 0.3)
    assert parse_weights((1, 0)) == (1.0, 0.0)
    for bad in ("0.6,0.3", "0.7,0.7", "1.2,-0.2", "0.5", "0.2,0.3,0.5", "a,b", "nan,0.5"):
        with pytest.raises(ConfigError, match="weights"):
            parse_weights(bad)


def test_equal_widths_is_weighted_sum_of_unit_vectors():
    rng = np.random.default_rng(0)
    v, t = rng.normal(size=(5, 8)) * 3.0, rng.normal(size=(5, 8)) * 0.1
    fused, how = fuse(v, t, (0.7, 0.3))
    assert how["projected"] is None and how["Q"] is None
    expected = 0.7 * v / np.linalg.norm(v, axis=1, keepdims=True) + 0.3 * t / np.linalg.norm(t, axis=1, keepdims=True)
    np.testing.assert_allclose(fused, expected, rtol=1e-12)
    # The raw scales of the two encoders do not matter, only λ does.
    np.testing.assert_allclose(fuse(v * 100, t, (0.7, 0.3))[0], fused, rtol=1e-12)


def test_unequal_widths_project_the_narrower_by_an_isometry():
    q = isometry(6, 10)
    np.testing.assert_allclose(q @ q.T, np.eye(6), atol=1e-12)
    np.testing.assert_array_equal(q, isometry(6, 10))  # seeded: the same mapping every run
    rng = np.random.default_rng(1)
    v, t = rng.normal(size=(4, 6)), rng.normal(size=(4, 10))
    fused, how = fuse(v, t, (0.7, 0.3))
    assert how["projected"] == "image" and fused.shape == (4, 10)
    vp = l2_normalise(v) @ how["Q"]
    # Norms and cosines of the projected modality are unchanged.
    np.testing.assert_allclose(np.linalg.norm(vp, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(vp @ vp.T, l2_normalise(v) @ l2_normalise(v).T, atol=1e-12)
    np.testing.assert_allclose(fused, 0.7 * vp + 0.3 * l2_normalise(t), rtol=1e-12)
    assert fuse(t, v, (0.7, 0.3))[1]["projected"] == "text"


def test_single_modality_is_its_unit_vector():
    x = np.array([[3.0, 4.0], [0.0, 2.0]])
    np.testing.assert_allclose(fuse(None, x, (0.0, 1.0))[0], [[0.6, 0.8], [0.0, 1.0]])


def test_pca_width_whitening_and_zero_columns():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 40)) @ rng.normal(size=(40, 40))
    red, pca, k = fit_pca(x, 16, whiten=False)
    assert red.shape == (200, 16) and k == 16
    assert np.all(np.diff(red.var(axis=0)) <= 1e-9)  # components sorted by variance
    white, _, _ = fit_pca(x, 16, whiten=True)
    np.testing.assert_allclose(white.var(axis=0, ddof=1), 1.0, rtol=1e-6)
    narrow, _, k = fit_pca(x[:, :10], 16, whiten=False)  # only 10 components exist
    assert k == 10 and narrow.shape == (200, 16) and np.all(narrow[:, 10:] == 0) and np.any(narrow[:, :10] != 0)
