"""CTR blocks in ssmrec.nn: QuadraticNet against the reference formula (doc §4.2), Dice, CrossNetV2,
DIN attention, target attention (ReLU/softmax, residual, candidate broadcasting), the masked
Transformer encoder and the similarity buckets/histogram."""

import math

import pytest
import torch
import torch.nn as nn

from ssmrec.nn.attention import (DINAttention, MaskedTransformerEncoder, TargetAttention, similarity_buckets,
                                 similarity_histogram)
from ssmrec.nn.layers import MLP, CrossNetV2, Dice, QuadraticNet, activation


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def test_quadratic_net_is_the_reference_formula():
    """Per layer (eval): H = W x + b as R rows of width D; q = x * sum_r H_r; x <- x + PReLU(BN(q))."""
    torch.manual_seed(0)
    dim, rows, layers = 6, 3, 2
    net = QuadraticNet(dim, layers, rows, dropout=0.3, batch_norm=True, act="prelu").eval()
    _randomise(net)
    x = torch.randn(5, dim)
    ref = x.clone()
    for proj, bn, act in zip(net.proj, net.norm, net.act):
        h = ref @ proj.weight.T + proj.bias  # (5, R*D), row r = columns r*D:(r+1)*D
        s = sum(h[:, r * dim:(r + 1) * dim] for r in range(rows))
        q = ref * s
        q = (q - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        q = torch.where(q >= 0, q, act.weight * q)  # one PReLU slope per layer
        ref = ref + q
    torch.testing.assert_close(net(x), ref)
    # Parameters per layer: Linear(D, R*D) with bias, BN affine (2D), one PReLU slope.
    assert sum(p.numel() for p in net.parameters()) == layers * (dim * rows * dim + rows * dim + 2 * dim + 1)
    relu_net = QuadraticNet(dim, layers, rows, act="relu")
    assert not any(isinstance(m, nn.PReLU) for m in relu_net.modules())


def test_dice_formula_and_mlp_integration():
    dice = Dice(4).eval()
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.0, 0.5, -1.0, 2.0]))
        dice.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        dice.bn.running_var.copy_(torch.tensor([1.0, 2.0, 0.5, 4.0]))
    x = torch.randn(7, 4)
    p = torch.sigmoid((x - dice.bn.running_mean) / torch.sqrt(dice.bn.running_var + 1e-9))
    torch.testing.assert_close(dice(x), p * x + (1 - p) * dice.alpha * x)
    assert dice.bn.weight is None and dice.bn.momentum == 0.01  # non-affine BN, FuxiCTR's momentum
    mlp = MLP(8, [5, 3], 1, act="dice")
    assert [m.alpha.numel() for m in mlp.modules() if isinstance(m, Dice)] == [5, 3]
    with pytest.raises(ValueError, match="width"):
        activation("dice")


def test_crossnet_v2_formula():
    torch.manual_seed(0)
    net = CrossNetV2(5, 2)
    x0 = torch.randn(3, 5)
    x1 = x0 + x0 * net.cross[0](x0)
    torch.testing.assert_close(net(x0), x1 + x0 * net.cross[1](x1))


def test_din_attention_raw_weights_and_softmax():
    torch.manual_seed(0)
    att = DINAttention(4, hidden=(8,), dropout=0.0).eval()
    t, h = torch.randn(2, 4), torch.randn(2, 5, 4)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    feats = torch.cat([t[:, None].expand_as(h), h, t[:, None] - h, t[:, None] * h], -1)
    g = att.mlp(feats.reshape(10, 16)).view(2, 5) * mask
    torch.testing.assert_close(att(t, h, mask), (g.unsqueeze(-1) * h).sum(1))  # unnormalised (no softmax)
    soft = DINAttention(4, hidden=(8,), softmax=True).eval()
    same = torch.ones(2, 5, 4)  # identical history items: softmax weights sum to one -> the item itself
    torch.testing.assert_close(soft(t, same, mask), torch.ones(2, 4))


@pytest.mark.parametrize("act,softmax", [("relu", False), ("relu", True), ("dice", False)])
def test_din_attention_factored_equals_concat(act, softmax):
    """The factored form (target term per row, padded slots skipped) is the same function as the
    literal concat MLP: outputs and every gradient agree. Dice (BatchNorm over all slots, so no
    skipping) runs in training mode to use batch statistics."""
    torch.manual_seed(0)
    d, b, length = 6, 5, 7
    concat = DINAttention(d, hidden=(16, 8), act=act, dropout=0.0, softmax=softmax, impl="concat")
    factored = DINAttention(d, hidden=(16, 8), act=act, dropout=0.0, softmax=softmax, impl="factored")
    factored.load_state_dict(concat.state_dict())
    mask = torch.rand(b, length) < 0.6
    mask[0] = False  # a row with no history at all
    mask[1] = True
    t = torch.randn(b, d, requires_grad=True)
    h = (torch.randn(b, length, d) * mask.unsqueeze(-1)).requires_grad_(True)
    outs, grads = [], []
    for att in (concat, factored):
        att.train(act == "dice")
        out = att(t, h, mask)
        (out * torch.arange(d)).sum().backward()
        outs.append(out.detach())
        grads.append([t.grad.clone(), h.grad.clone()] + [p.grad.clone() for p in att.parameters()])
        t.grad = h.grad = None
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    assert (outs[0][0] == 0).all()
    for g_factored, g_concat in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_factored, g_concat, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="factored or concat"):
        DINAttention(d, impl="fast")


@pytest.mark.parametrize("norm,bias", [("relu", False), ("relu", True), ("softmax", True)])
def test_target_attention_folded_forward_equals_projected_keys(norm, bias):
    """forward (projections folded onto the query and the pooled item) is attend(project_kv(seq)):
    values and every gradient agree, padded slots and a row with no history included."""
    torch.manual_seed(0)
    d, da, b, length = 6, 12, 4, 5
    att = TargetAttention(d, d, da, d_out=d, norm=norm, bias=bias)
    mask = torch.rand(b, length) < 0.6
    mask[0] = False
    q = torch.randn(b, d, requires_grad=True)
    seq = torch.randn(b, length, d, requires_grad=True)
    results = []
    for run in (lambda: att(q, seq, mask), lambda: att.attend(q, *att.project_kv(seq), mask)):
        out = run()
        (out * torch.arange(d)).sum().backward()
        results.append([out.detach(), q.grad.clone(), seq.grad.clone()] + [p.grad.clone() for p in att.parameters()])
        att.zero_grad()
        q.grad = seq.grad = None
    for folded, projected in zip(*results):
        torch.testing.assert_close(folded, projected, rtol=1e-4, atol=1e-6)


def test_target_attention_relu_softmax_residual_and_broadcasting():
    torch.manual_seed(0)
    d, da, length = 6, 12, 5
    asta = TargetAttention(d, d, da, d_out=d, norm="relu")
    assert all(m.bias is None for m in (asta.q_proj, asta.k_proj, asta.v_proj, asta.out_proj))
    q, seq = torch.randn(3, d), torch.randn(3, length, d)
    mask = torch.ones(3, length, dtype=torch.bool)
    mask[0, :3] = False
    s = (asta.q_proj(q)[:, None] * asta.k_proj(seq)).sum(-1) / math.sqrt(da)
    w = torch.relu(s * mask)
    expect = asta.out_proj((w[..., None] * asta.v_proj(seq)).sum(1)) + q
    torch.testing.assert_close(asta(q, seq, mask), expect)
    assert (w[0, :3] == 0).all()
    soft = TargetAttention(d, d, da, norm="softmax")
    k, v = soft.project_kv(seq)
    ws = torch.softmax((soft.q_proj(q)[:, None] * k).sum(-1) / math.sqrt(da) + torch.where(mask, 0.0, -torch.inf), -1)
    torch.testing.assert_close(soft(q, seq, mask), (ws[..., None] * v).sum(1))
    # C candidates per row at once == one call per candidate.
    cands = torch.randn(3, 4, d)
    many = soft.attend(cands, k.unsqueeze(1), v.unsqueeze(1), mask.unsqueeze(1))
    one = torch.stack([soft(cands[:, c], seq, mask) for c in range(4)], 1)
    torch.testing.assert_close(many, one)
    with pytest.raises(ValueError, match="relu or softmax"):
        TargetAttention(d, d, da, norm="sparsemax")


def test_masked_transformer_encoder_masks_and_keeps_state_dict_layout():
    torch.manual_seed(0)
    enc = MaskedTransformerEncoder(8, 2, 16, 0.0, 2).eval()
    plain = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, 0.0, batch_first=True), 2,
                                  enable_nested_tensor=False)
    assert list(enc.state_dict()) == list(plain.state_dict())
    mask = torch.tensor([[False, False, True, True], [True, True, True, True], [False] * 4])
    assert enc.key_padding(mask).tolist() == [[True, True, False, False], [False] * 4, [True] * 3 + [False]]
    inv = MaskedTransformerEncoder(8, 2, 16, 0.0, 2, inverted_padding_mask=True)
    # Inverted (reference code): real items ignored; a full row keeps only its newest slot.
    assert inv.key_padding(mask).tolist() == [[False, False, True, True], [True] * 3 + [False], [False] * 4]
    x = torch.randn(3, 4, 8)
    x2 = x.clone()
    x2[0, :2] = torch.randn(2, 8)  # padded slots of row 0
    with torch.no_grad():
        torch.testing.assert_close(enc(x, mask)[0, 2:], enc(x2, mask)[0, 2:])


def test_similarity_buckets_and_histogram():
    cos = torch.tensor([-1.0, -0.99, 0.0, 0.5, 0.999, 1.0, 1.5])
    assert similarity_buckets(cos, 10).tolist() == [0, 0, 5, 7, 9, 9, 9]
    mask = torch.tensor([True, True, False, True, True, True, False])
    hist = similarity_histogram(cos, mask, 10)
    assert hist.tolist() == [2, 0, 0, 0, 0, 0, 0, 1, 0, 2] and hist.sum() == mask.sum()


@pytest.mark.equivalence
def test_quadratic_net_eval_folds_its_rows_exactly_and_follows_weight_updates():
    torch.manual_seed(0)
    qnn = QuadraticNet(12, num_layers=2, num_row=3, dropout=0.3, batch_norm=False).eval()
    x = torch.randn(5, 12)

    def unfolded(x):
        for proj, act in zip(qnn.proj, qnn.act):
            h = proj(x).view(5, 3, -1).sum(1)
            x = x + act(x * h)
        return x

    with torch.inference_mode():
        torch.testing.assert_close(qnn(x), unfolded(x), atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        qnn.proj[0].weight.mul_(2.0)  # the folded weights must notice
        torch.testing.assert_close(qnn(x), unfolded(x), atol=1e-6, rtol=1e-5)
    qnn(x).sum().backward()  # eval forward outside inference mode still differentiates
    assert qnn.proj[0].weight.grad is not None and qnn.proj[0].weight.grad.abs().sum() > 0


def test_item_vectors_encode_each_distinct_item_once_with_the_same_values_and_gradients():
    """Above DEDUP_MIN_IDS the embedding encodes distinct ids once and gathers: same vectors and the
    same gradients (summed per item) as encoding every slot."""
    from ssmrec.nn.embedding import MMCTRFeatureEmbedding

    torch.manual_seed(0)
    n_items, n_tags = 50, 9
    emb = MMCTRFeatureEmbedding(torch.randint(0, n_tags, (n_items, 5)), torch.randn(n_items, 128), n_tags, dim=8)
    ids = torch.randint(0, n_items, (64, 40))  # 2,560 ids >= the threshold, heavy repeats
    assert ids.numel() >= emb.DEDUP_MIN_IDS
    weight = torch.randn(64, 40, emb.item_dim)
    results = []
    for encode in (emb.items, emb._encode):
        emb.zero_grad()
        out = encode(ids)
        (out * weight).sum().backward()
        results.append([out.detach()] + [p.grad.clone() for p in emb.parameters() if p.grad is not None])
    assert len(results[0]) == len(results[1]) > 1
    encoded = []
    encode_rows = emb._encode
    emb._encode = lambda ids_: encoded.append(ids_.numel()) or encode_rows(ids_)
    emb.items(ids)
    assert encoded == [len(ids.unique())]  # each distinct item once
    for dedup, every_slot in zip(*results):
        # Sums over 2,560 slots in another order: float32 rounding, bounded relative to the largest entry.
        assert (dedup - every_slot).abs().max() <= 1e-5 * every_slot.abs().max()
