"""Item features attached to a next-item model: the sparse path (multi-hot attributes as a CSR matrix
times the projection) computes the same vectors and gradients as the dense product, in one
process. Both are float32 sums of the same non-zero terms in another order: with |x| <= 1.5 and <= 4
terms per item the difference is a few ulps of O(0.1) values, far inside atol 1e-6, while a wrong
column, weight or offset moves a vector by the projection's scale (std 0.02 per entry, ~0.1 per vector)."""

from __future__ import annotations

import pytest
import torch

from ssmrec.models.seq.base import SeqRecModel
from ssmrec.registry import get_model

N_ITEMS, N_FEATURES = 60, 200


def _features(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = torch.zeros(N_ITEMS, N_FEATURES)
    for i in range(1, N_ITEMS):
        k = int(torch.randint(0, 5, (1,), generator=g))  # 0..4 attributes, some items none
        cols = torch.randperm(N_FEATURES, generator=g)[:k]
        f[i, cols] = torch.rand(k, generator=g) + 0.5  # weighted, not only ones
    return f


def _model(features, sparse: bool, monkeypatch, mode="add"):
    spec = get_model("next_item", "mamba4rec")
    torch.manual_seed(0)
    model = spec.cls(spec.config({"dropout": 0.0}), N_ITEMS)
    with monkeypatch.context() as m:
        m.setattr(SeqRecModel, "SPARSE_FEATURE_DENSITY", 0.05 if sparse else -1.0)
        model.attach_item_features(features, mode)
    torch.manual_seed(1)
    torch.nn.init.normal_(model.feature_proj.weight, std=0.02)
    return model


@pytest.mark.parametrize("mode", ["add", "replace"])
def test_sparse_features_equal_dense(monkeypatch, mode):
    f = _features()
    sparse, dense = _model(f, True, monkeypatch, mode), _model(f, False, monkeypatch, mode)
    assert sparse._sparse_features is not None and dense._sparse_features is None
    dense.load_state_dict(sparse.state_dict())
    ids = torch.randint(0, N_ITEMS, (4, 7))
    for m in (sparse, dense):
        m.zero_grad()
        (m.item_vectors(ids).sin().sum() + m.item_vectors().cos().sum()).backward()
    torch.testing.assert_close(sparse.item_vectors(ids), dense.item_vectors(ids), atol=1e-6, rtol=0)
    torch.testing.assert_close(sparse.item_vectors(), dense.item_vectors(), atol=1e-6, rtol=0)
    torch.testing.assert_close(sparse.projected_item_features(), dense.projected_item_features(), atol=1e-6, rtol=0)
    torch.testing.assert_close(sparse.feature_proj.weight.grad, dense.feature_proj.weight.grad, atol=1e-5, rtol=0)
    # features count: items without attributes (row 0, padding) get exactly the ID vector in "add" mode
    empty = int((f.abs().sum(1) == 0).nonzero()[0])
    assert torch.equal(sparse.projected_item_features()[empty], torch.zeros(sparse.item_table.weight.shape[1]))


def test_dense_text_vectors_keep_the_dense_product(monkeypatch):
    model = _model(torch.randn(N_ITEMS, 16), True, monkeypatch)
    assert model._sparse_features is None  # no zeros: a bag would only add overhead
