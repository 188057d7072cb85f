"""DIN: the official baseline's shapes (doc §2), no softmax by default, and the Dice switch."""

import torch
import torch.nn as nn

from ssmrec.models.ctr.din import DIN, DINConfig
from ssmrec.nn.layers import Dice
from tests.models.zoo import build, mixed_batch


def _linears(module):
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_reference_shapes():
    """Attention MLP 1024 -> 512 -> 256 -> 1, DNN 640 -> 1024 -> 512 -> 256 -> 1 with BN (d = 64)."""
    tags = torch.zeros(91_718, 5, dtype=torch.long)
    with torch.device("meta"):
        model = DIN(DINConfig(), tags, torch.zeros(91_718, 128), 11_740)
    assert _linears(model.attention) == [(1024, 512), (512, 256), (256, 1)]
    assert _linears(model.dnn) == [(640, 1024), (1024, 512), (512, 256), (256, 1)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.dnn.modules()) == 3
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.attention.modules())
    assert not model.attention.softmax
    dice = DIN(DINConfig(embedding_dim=128, attention_activation="dice"), tags[:10], torch.zeros(10, 128), 5)
    assert _linears(dice.attention)[0] == (4 * 384, 512)  # D_item 384 at embedding_dim 128
    assert [m.alpha.numel() for m in dice.attention.modules() if isinstance(m, Dice)] == [512, 256]
    assert not any(isinstance(m, Dice) for m in dice.dnn.modules())  # Dice only in the attention unit


def test_attention_weights_are_unnormalised_by_default(tiny_data):
    """Without softmax, duplicating the whole history doubles the pooled vector; with it, it does not."""
    torch.manual_seed(0)
    batch = mixed_batch(tiny_data)
    short = batch.mask.sum(1) < 10
    b = batch.rows(short)
    seq = b.item_seq
    doubled_seq = torch.cat([seq[:, -10:], seq[:, -10:]], 1)
    doubled = b.replace(item_seq=doubled_seq, mask=doubled_seq > 0)
    for softmax, ratio in [(False, 2.0), (True, 1.0)]:
        model = build("din", tiny_data, attention_softmax=softmax).eval()
        with torch.no_grad():
            t, h, _ = model.embedding(b)
            t2, h2, _ = model.embedding(doubled)
            torch.testing.assert_close(model.attention(t2, h2, doubled.mask),
                                       ratio * model.attention(t, h, b.mask), atol=1e-6, rtol=1e-4)
