"""QIN: the reference parameter count (31,244,293), ASTA as coded, and the five ablation switches."""

import pytest
import torch
import torch.nn as nn

from ssmrec.models.ctr.qin import QIN, QINConfig
from ssmrec.nn.layers import MLP, masked_mean
from tests.models.zoo import build, mixed_batch

# FuxiCTR's tables for the real MM-CTR data (reference doc §11.1): item_id vocab 91,718 (keys 0-91,716,
# 0 = padding, + OOV 91,717), item_tags 11,740 (0-11,738 + OOV), likes/views 11 (0-9 + OOV).
ITEM_VOCAB, TAG_VOCAB = 91_718, 11_740


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("rows,expected", [(4, 31_244_293), (3, 27_045_893)])
def test_reference_parameter_count(rows, expected):
    """QIN_variety_v9 log: 'Total number of parameters: 31244293' (num_row 4); 27,045,893 with 3 rows."""
    tags = torch.zeros(ITEM_VOCAB, 5, dtype=torch.long)
    emb = torch.zeros(ITEM_VOCAB, 128)
    model = QIN(QINConfig(qnn_rows=rows), tags, emb, TAG_VOCAB)
    assert _n_params(model) == expected
    # Breakdown: embeddings 13,261,824 (incl. the 128x128 multimodal projection), ASTA 4 x 294,912.
    assert _n_params(model.embedding) == 13_261_824
    assert _n_params(model.asta) == 4 * 384 * 768


def test_asta_is_relu_target_attention_with_residual(tiny_data):
    torch.manual_seed(0)
    model = build("qin", tiny_data).eval()
    batch = mixed_batch(tiny_data)
    target, history, _ = model.embedding(batch)
    a = model.asta
    d_att = a.q_proj.out_features
    assert d_att == 2 * model.embedding.item_dim
    scores = torch.einsum("bd,bld->bl", a.q_proj(target), a.k_proj(history)) / d_att ** 0.5
    weights = torch.relu(scores * batch.mask)
    expect = a.out_proj(torch.einsum("bl,bld->bd", weights, a.v_proj(history))) + target
    torch.testing.assert_close(a(target, history, batch.mask), expect)


def test_ablation_switches(tiny_data):
    torch.manual_seed(0)
    batch = mixed_batch(tiny_data)
    full = build("qin", tiny_data)
    # QIN w/o QNN: an MLP [1024, 512, 256] head.
    no_qnn = build("qin", tiny_data, head="mlp")
    assert isinstance(no_qnn.head, MLP) and no_qnn.out.in_features == 256
    assert [m.out_features for m in no_qnn.head.modules() if isinstance(m, nn.Linear)] == [1024, 512, 256]
    # QIN w/o ASTA: masked mean pooling, no attention weights.
    mean = build("qin", tiny_data, interest="mean").eval()
    assert not hasattr(mean, "asta")
    _, history, _ = mean.embedding(batch)
    captured = {}
    mean.head.register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    with torch.no_grad():
        mean(batch)
    d = mean.embedding.item_dim
    torch.testing.assert_close(captured["x"][:, -d:], masked_mean(history, batch.mask))
    # ASTA w/ SoftMax: normalised weights.
    soft = build("qin", tiny_data, attention_norm="softmax")
    assert soft.asta.norm == "softmax" and full.asta.norm == "relu"
    # QNN w/o PReLU.
    relu = build("qin", tiny_data, qnn_activation="relu")
    assert not any(isinstance(m, nn.PReLU) for m in relu.modules())
    assert sum(isinstance(m, nn.PReLU) for m in full.modules()) == full.cfg.qnn_layers
    # ASTA w/ Dropout 0.1: stochastic in training, deterministic in eval.
    drop = build("qin", tiny_data, attention_dropout=0.1, net_dropout=0.0)
    target, history, _ = drop.embedding(batch)
    drop.train()
    assert not torch.equal(drop.asta(target, history, batch.mask), drop.asta(target, history, batch.mask))
    drop.eval()
    assert torch.equal(drop.asta(target, history, batch.mask), drop.asta(target, history, batch.mask))
    for m in (no_qnn, soft, relu, drop):
        assert m(batch)["logit"].shape == (24,)
