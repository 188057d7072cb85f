"""ssmrec's CPU dropout: the distribution of ``F.dropout`` (keep probability, scale, gradient), drawn
from the seeded generator, and every sequence model's dropout modules are it."""

import math

import pytest
import torch

from ssmrec.nn.layers import Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_fraction_and_scale_match_f_dropout(p):
    n = 1_000_000
    x = torch.ones(n)
    y = dropout(x, p)
    kept = y != 0
    # binomial: 6 standard deviations of the kept fraction
    assert abs(float(kept.float().mean()) - (1 - p)) < 6 * math.sqrt(p * (1 - p) / n)
    torch.testing.assert_close(y[kept], torch.full((int(kept.sum()),), 1 / (1 - p)))
    ref = torch.nn.functional.dropout(x, p, True)  # same mean, 1
    assert abs(float(y.mean()) - 1.0) < 6 * math.sqrt(p / (1 - p) / n)
    assert abs(float(ref.mean()) - 1.0) < 6 * math.sqrt(p / (1 - p) / n)


def test_gradient_is_the_mask_and_eval_is_identity():
    x = torch.randn(4096, requires_grad=True)
    y = dropout(x, 0.3)
    y.sum().backward()
    keep = y.detach() != 0
    torch.testing.assert_close(x.grad, keep.float() / 0.7)
    m = Dropout(0.3).eval()
    z = torch.randn(10)
    assert m(z) is z
    assert dropout(z, 0.0) is z
    assert (dropout(z, 1.0) == 0).all()


def test_the_mask_follows_the_seed_and_columns_are_independent():
    torch.manual_seed(3)
    a = dropout(torch.ones(64, 64), 0.5)
    torch.manual_seed(3)
    b = dropout(torch.ones(64, 64), 0.5)
    assert torch.equal(a, b)
    c = dropout(torch.ones(64, 64), 0.5)
    assert not torch.equal(a, c)
    # pairs of neighbouring elements: kept together with probability (1-p)^2, not 1-p
    both = ((a[:, ::2] != 0) & (a[:, 1::2] != 0)).float().mean()
    assert abs(float(both) - 0.25) < 6 * math.sqrt(0.25 * 0.75 / both.numel())


@pytest.mark.parametrize("model", ["mamba4rec", "sasrec", "gru4rec", "bert4rec"])
def test_sequence_models_use_ssmrec_dropout(model):
    from ssmrec.registry import get_model

    spec = get_model("next_item", model)
    net = spec.cls(spec.config({"dropout": 0.2}), 50)
    drops = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(isinstance(m, Dropout) for m in drops), [type(m) for m in drops]
