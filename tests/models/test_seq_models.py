"""Next-item task and models: metrics on hand-computed rankings, windowing, the two training modes
giving the same loss on the same pairs, causality / padding invariance of every model, Mamba4Rec's
reference parameter count and init quirks, learning on the synthetic world."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssmrec.config import from_dict
from ssmrec.metrics import rank_metrics, rank_of_target
from ssmrec.tasks.next_item import NextItemTask, SeqBatch, SeqSplitData, windows

SMALL = {"mamba4rec": {"hidden_size": 16, "d_state": 8, "dropout": 0.0},
         "bert4rec": {"hidden_size": 16, "inner_size": 32, "dropout": 0.0, "max_len": 20},
         "sasrec": {"hidden_size": 16, "inner_size": 32, "dropout": 0.0},
         "gru4rec": {"embedding_size": 16, "hidden_size": 24, "dropout": 0.0}}


CAUSAL = ["mamba4rec", "sasrec", "gru4rec"]


def _cfg(model="mamba4rec", mode="all_positions", **data):
    mode = "cloze" if model == "bert4rec" else mode
    d = {"task": "next_item", "model": model, "model_params": SMALL[model],
         "data": {"source": "synth-tiny", "max_len": 20, "train_mode": mode, **data},
         "train": {"batch_size": 64, "progress": False}}
    return from_dict(d)


def test_metrics_on_a_hand_computed_ranking():
    scores = torch.tensor([[-9.0, 0.5, 0.9, 0.1, 0.7],   # target 4 (0.7): rank 2
                           [-9.0, 0.2, 0.2, 0.2, 0.1],   # target 2 ties with 1 and 3: pessimistic rank 3
                           [-9.0, 0.0, 0.1, 0.2, 0.3]])  # target 1: rank 4 (the padding column scores lowest)
    rank = rank_of_target(scores, torch.tensor([4, 2, 1]))
    assert rank.tolist() == [2, 3, 4]
    m = {k: v.tolist() for k, v in rank_metrics(rank, [1, 3]).items()}
    assert m["hr@1"] == [0, 0, 0] and m["hr@3"] == [1, 1, 0]
    assert m["ndcg@3"] == pytest.approx([1 / math.log2(3), 1 / math.log2(4), 0])
    assert m["mrr@3"] == pytest.approx([1 / 2, 1 / 3, 0])


def test_windows_keep_the_newest_items_right_padded():
    items = np.arange(1, 11)
    seq, n = windows(items, np.array([0, 2, 5]), np.array([3, 9, 5]), 4)
    assert n.tolist() == [3, 4, 0]
    assert seq.tolist() == [[1, 2, 3, 0], [6, 7, 8, 9], [0, 0, 0, 0]]


def _toy_task(mode, model="mamba4rec"):
    # 3 users; sequences short enough (<= max_len + 1) that both modes see exactly the same pairs.
    offsets = np.array([0, 7, 12, 20])
    items = np.array([1, 2, 3, 4, 5, 6, 7, 3, 5, 7, 9, 2, 8, 6, 4, 2, 9, 7, 5, 3])
    task = NextItemTask(_cfg(model, mode), SeqSplitData("toy", 10, offsets, items))
    task.setup()
    return task


@pytest.mark.parametrize("model", CAUSAL)
def test_all_positions_and_prefixes_give_the_same_loss_on_the_same_pairs(model):
    a, p = _toy_task("all_positions", model), _toy_task("prefixes", model)
    assert a.num_train_samples() == 3 and p.num_train_samples() == (5 - 1) + (3 - 1) + (6 - 1)
    torch.manual_seed(0)
    net = a.build_model().eval()
    with torch.no_grad():
        ba = a.train_batch(torch.arange(a.num_train_samples()))
        la = a.loss(net(ba), ba)["loss"]
        bp = p.train_batch(torch.arange(p.num_train_samples()))
        lp = p.loss(net(bp), bp)["loss"]
    assert int((ba.target > 0).sum()) == len(bp) == 11
    torch.testing.assert_close(la, lp, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model", CAUSAL)
def test_empty_history_adds_each_users_first_item_read_from_the_padding_id(model):
    """BSARec's extra samples: one per user with training items, its input the padding id alone, its
    target the user's first item; the other samples and their loss are unchanged."""
    offsets = np.array([0, 7, 12, 20])
    items = np.array([1, 2, 3, 4, 5, 6, 7, 3, 5, 7, 9, 2, 8, 6, 4, 2, 9, 7, 5, 3])
    tasks = {}
    for empty in (False, True):
        tasks[empty] = NextItemTask(_cfg(model, "prefixes", empty_history=empty), SeqSplitData("toy", 10, offsets, items))
        tasks[empty].setup()
    plain, extra = tasks[False], tasks[True]
    assert extra.num_train_samples() == plain.num_train_samples() + 3
    assert extra.train_pairs() == plain.train_pairs() + 3
    b = extra.train_batch(torch.arange(extra.num_train_samples()))
    first = b.lengths.eq(1) & b.item_seq[:, 0].eq(0)
    assert first.sum() == 3 and b.target[first].tolist() == [1, 3, 8]  # users' first items
    assert b.item_seq[b.item_seq[:, 0].ne(0)].shape[0] == plain.num_train_samples()
    torch.manual_seed(0)
    net = extra.build_model().eval()
    with torch.no_grad():
        bp = plain.train_batch(torch.arange(plain.num_train_samples()))
        keep = ~first
        out = net(b)
        loss_rest = extra.loss(net(SeqBatch(b.item_seq[keep], b.lengths[keep], b.target[keep])),
                               SeqBatch(b.item_seq[keep], b.lengths[keep], b.target[keep]))["loss"]
        torch.testing.assert_close(loss_rest, plain.loss(net(bp), bp)["loss"], atol=1e-5, rtol=1e-5)
        assert torch.isfinite(extra.loss(out, b)["loss"])


@pytest.mark.parametrize("model", CAUSAL)
@pytest.mark.parametrize("mode", ["incremental", "recompute"])
def test_a_model_trained_with_empty_history_serves_a_new_user_as_training_read_it(model, mode):
    """A user with no events is scored from the padding id alone, the input its training sample had
    (served == the forward on that training batch row), in a batch beside users with events who keep
    their own scores; the new user then steps from the empty state as any other. Without
    empty_history the model refuses a user with no events."""
    from ssmrec.serve.adapter import ServingAdapter

    offsets = np.array([0, 7, 12, 20])
    items = np.array([1, 2, 3, 4, 5, 6, 7, 3, 5, 7, 9, 2, 8, 6, 4, 2, 9, 7, 5, 3])
    task = NextItemTask(_cfg(model, "prefixes", empty_history=True), SeqSplitData("toy", 10, offsets, items))
    task.setup()
    torch.manual_seed(0)
    net = task.build_model().eval()
    assert net.empty_history_start
    b = task.train_batch(torch.arange(task.num_train_samples()))
    row = int(torch.nonzero(b.lengths.eq(1) & b.item_seq[:, 0].eq(0))[0])
    with torch.no_grad():
        trained = net(SeqBatch(b.item_seq[row:row + 1], b.lengths[row:row + 1], None))["logits"][0, 1:]
    ad = ServingAdapter(net, mode)
    h = torch.tensor([3, 5, 7])
    new, old = ad.init_entry(), ad.prefill(h)
    both = ad.score_all([new, old])
    torch.testing.assert_close(both[0, 1:], trained, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1], ad.score_all([old])[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(both[0, 1:], both[1, 1:])
    stepped = ad.update([new], [h])[0]
    torch.testing.assert_close(ad.score_all([stepped]), ad.score_all([old]), atol=1e-4, rtol=1e-4)
    net.empty_history_start = False
    with pytest.raises(ValueError, match="no events"):
        ad.score_all([new])


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_loss_excludes_history_drops_the_windows_items_from_each_softmax(eps):
    """data.loss_excludes_history: each sample's CE (and label smoothing's mean) runs over the classes
    not in its input window, the target always one of them, written out row by row here; the window's
    other items get no gradient. Off, the loss is the full-catalogue CE."""
    offsets = np.array([0, 7, 12, 20])
    items = np.array([1, 2, 3, 4, 5, 6, 7, 3, 5, 7, 9, 2, 8, 6, 4, 2, 9, 7, 5, 3])
    tasks = {}
    for on in (False, True):
        tasks[on] = NextItemTask(_cfg("mamba4rec", "prefixes", loss_excludes_history=on, label_smoothing=eps),
                                 SeqSplitData("toy", 10, offsets, items))
        tasks[on].setup()
    torch.manual_seed(0)
    net = tasks[True].build_model().eval()
    b = tasks[True].train_batch(torch.arange(tasks[True].num_train_samples()))
    out = net(b)
    logits = out["logits"].detach().requires_grad_(True)
    got = tasks[True].loss({**out, "logits": logits}, b)["loss"]
    want = []
    for i in range(len(b.target)):
        t = int(b.target[i])
        keep = [c for c in range(logits.shape[1]) if c == t or c not in set(b.item_seq[i].tolist())]
        logp = torch.log_softmax(logits[i, keep].detach(), -1)
        want.append(-(1 - eps) * logp[keep.index(t)] - eps * logp.mean())
    torch.testing.assert_close(got.detach(), torch.stack(want).mean(), atol=1e-5, rtol=1e-5)
    got.backward()
    hist = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, b.item_seq, True)
    hist[torch.arange(len(b.target)), b.target] = False
    assert hist.any() and logits.grad[hist].abs().max() == 0
    plain = tasks[False].loss(out, b)["loss"]
    ref = F.cross_entropy(out["logits"], b.target, label_smoothing=eps)
    torch.testing.assert_close(plain, ref, atol=1e-5, rtol=1e-5)
    assert float((plain - got).detach()) > 1e-3


@pytest.mark.parametrize("key", ["empty_history", "loss_excludes_history"])
def test_prefix_only_options_need_prefixes_mode(key):
    from ssmrec.errors import ConfigError

    with pytest.raises(ConfigError, match=f"data.{key} needs data.train_mode: prefixes"):
        NextItemTask.check_config(_cfg("mamba4rec", "all_positions", **{key: True}), "x.yaml")


def test_pairs_normalization_weighs_every_pair_alike_across_user_batches():
    """all_positions batches hold users with 2 to 5 pairs here; with ``loss_normalization: pairs`` the
    epoch's batch losses average to the mean over all pairs (what prefixes mode optimises), with
    ``batch`` (a plain per-batch mean) they do not."""
    a, p = _toy_task("all_positions", "mamba4rec"), _toy_task("prefixes", "mamba4rec")
    torch.manual_seed(0)
    net = a.build_model().eval()
    with torch.no_grad():
        bp = p.train_batch(torch.arange(p.num_train_samples()))
        pair_mean = p.loss(net(bp), bp)["loss"]
        a.cfg.data.loss_normalization = "pairs"
        a.arrange_epoch(torch.arange(3), batch_size=1, seed=0)  # one user per batch
        batches = [a.train_batch(torch.tensor([u])) for u in range(3)]
        assert [int((b.target > 0).sum()) for b in batches] == [4, 2, 5]
        per_pairs = torch.stack([a.loss(net(b), b)["loss"] for b in batches])
        a.cfg.data.loss_normalization = "batch"
        per_batch = torch.stack([a.loss(net(b), b)["loss"] for b in batches])
    torch.testing.assert_close(per_pairs.mean(), pair_mean, atol=1e-5, rtol=1e-5)
    assert abs(float(per_batch.mean() - pair_mean)) > 1e-3


@pytest.mark.parametrize("model", CAUSAL)
def test_models_are_causal_and_ignore_trailing_padding(model):
    task = _toy_task("all_positions", model)
    torch.manual_seed(0)
    net = task.build_model().eval()
    seq = torch.tensor([[3, 5, 7, 9, 2, 0, 0], [3, 5, 7, 1, 1, 4, 8]])
    with torch.no_grad():
        h = net.encode(SeqBatch(seq, torch.tensor([5, 7])))
        h_short = net.encode(SeqBatch(seq[:1, :5], torch.tensor([5])))
    torch.testing.assert_close(h[0, :3], h[1, :3], atol=1e-5, rtol=1e-5)  # same prefix, later items differ
    torch.testing.assert_close(h[0, :5], h_short[0], atol=1e-5, rtol=1e-5)  # trailing padding is inert


def test_mamba4rec_lowpass_config_is_checked_in_one_line():
    from ssmrec.models.seq.mamba4rec import Mamba4RecConfig

    with pytest.raises(ValueError, match="lowpass_period"):
        Mamba4RecConfig(lowpass=True, lowpass_c=9, lowpass_period=8)
    with pytest.raises(ValueError, match="block_only"):
        Mamba4RecConfig(lowpass=True, block_only=True)


def test_mamba4rec_reference_size_and_init_quirks():
    from ssmrec.models.seq.mamba4rec import Mamba4Rec, Mamba4RecConfig

    m = Mamba4Rec(Mamba4RecConfig(), n_items=101)
    per_layer = sum(p.numel() for p in m.layers[0].parameters())
    assert per_layer == 72_128  # reference doc §7.1: Mamba 38,784 + FFN 33,088 + 2 LayerNorms 256
    assert sum(p.numel() for p in m.layers[0].mamba.parameters()) == 38_784
    assert torch.count_nonzero(m.layers[0].mamba.dt_proj.bias) == 0  # RecBole init zeroes it
    assert m.item_table.weight[0].abs().sum() > 0  # and randomises the padding row
    kept = Mamba4Rec(Mamba4RecConfig(init="mamba"), n_items=101)
    assert torch.count_nonzero(kept.layers[0].mamba.dt_proj.bias) > 0


@pytest.mark.parametrize("switch,check", [
    ({"block_only": True}, lambda m: m.layers[0].ffn is None and isinstance(m.norm, torch.nn.Identity)),
    ({"ffn": False}, lambda m: m.layers[0].ffn is None),
    ({"layer_norm": False}, lambda m: isinstance(m.layers[0].norm, torch.nn.Identity)),
    ({"num_layers": 2}, lambda m: len(m.layers) == 2 and m.layers[0].residual),
    ({"position_embedding": True}, lambda m: m.position_table is not None),
    ({"block": "mamba2", "headdim": 16}, lambda m: type(m.layers[0].mamba).__name__ == "Mamba2"),
    ({"lowpass": True, "lowpass_period": 8}, lambda m: m.layers[0].lowpass is not None
     and m.state_layout == "mamba-states+lowpass+h" and m.layers[0].lowpass.n_freq == 3),
])
def test_mamba4rec_ablation_switches_build_and_run(switch, check):
    from ssmrec.models.seq.mamba4rec import Mamba4Rec, Mamba4RecConfig

    m = Mamba4Rec(Mamba4RecConfig(hidden_size=16, d_state=8, **switch), n_items=30)
    assert check(m)
    out = m(SeqBatch(torch.tensor([[1, 2, 3, 0]]), torch.tensor([3]), torch.tensor([4])))
    assert out["logits"].shape == (1, 30) and torch.isfinite(out["logits"]).all()


class FixedScores(torch.nn.Module):
    """A "model" scoring every user alike: item ids 1..7 -> SCORES (hand-built rankings)."""

    def forward(self, batch):
        return {"logits": FIXED.expand(len(batch), -1).clone()}


#                       0     1    2    3    4    5    6    7
FIXED = torch.tensor([[0.0, 0.5, 0.4, 0.3, 0.2, 0.9, 0.8, 0.35]])
# max_len 3. u0 reads only its newest 3 history items (2 3 4): item 5, its best-scored, lies outside
# the window. u1's test target 7 repeats a history item. u2 is plain.
MASK_USERS = [[5, 1, 2, 3, 4, 6], [5, 7, 1, 7], [2, 4, 6]]
# Test ranks by hand. unmasked: u0 {5, 6} -> 2; u1 {5, 6, 1, 2, 7} -> 5; u2 {5, 6} -> 2.
# masked (whole history out, the target kept): u0 6 first -> 1; u1 {6, 2, 7} -> 3; u2 -> 2.
# Masking only the window would give u0 rank 2; masking the target too would give u1 rank 8 (last).
MASK_RANKS = {"unmasked": [2, 5, 2], "masked": [1, 3, 2]}


def _mask_task(protocol):
    lens = [len(u) for u in MASK_USERS]
    offsets = np.concatenate([[0], np.cumsum(lens)])
    d = SeqSplitData("masks", 8, offsets, np.concatenate(MASK_USERS), user_raw=np.array(["u0", "u1", "u2"]),
                     item_raw=np.arange(8).astype(str))
    task = NextItemTask(_cfg(protocol=protocol, max_len=3, ks=[1, 2, 3, 10]), d)
    task.setup()
    return task


@pytest.mark.parametrize("protocol", ["unmasked", "masked"])
def test_protocols_on_a_hand_built_score_matrix(protocol):
    """Fails if masking is removed, limited to the max_len window, or applied to the target."""
    m = _mask_task(protocol).evaluate(FixedScores(), "test", batch_size=2)  # 2 batches: row offsets matter
    r = np.array(MASK_RANKS[protocol], dtype=float)
    for k in (1, 2, 3, 10):
        assert m[f"hr@{k}"] == pytest.approx(float(np.mean(r <= k)))
        assert m[f"mrr@{k}"] == pytest.approx(float(np.mean((r <= k) / r)))
        assert m[f"ndcg@{k}"] == pytest.approx(float(np.mean((r <= k) / np.log2(r + 1))))


def test_the_popularity_reference_follows_the_protocol():
    """Training counts (u0: 5 1 2 3, u1: 5 7, u2: 2): 5 -> 2, 2 -> 2, 1, 3, 7 -> 1, 4, 6 -> 0. Test
    targets 6, 7, 6 (count 0, 1, 0): unmasked pessimistic ranks 7, 5, 7; masked: u0 loses its 5
    history items (all counted >= 0) -> 2, u1 loses 5 and 1 -> 3, u2 loses 2 and 4 -> 5."""
    for protocol, ranks in (("unmasked", [7, 5, 7]), ("masked", [2, 3, 5])):
        got = _mask_task(protocol).popularity("test")
        r = np.array(ranks, dtype=float)
        assert got["mrr@10"] == pytest.approx(float(np.mean((r <= 10) / r))), protocol
        assert got["hr@3"] == pytest.approx(float(np.mean(r <= 3))), protocol


def test_the_oracle_follows_the_protocol():
    """On the synthetic world, the masked oracle equals a per-user loop excluding the whole history."""
    task = NextItemTask(_cfg(protocol="masked", max_len=5), None)
    task.setup()
    d = task.data
    start, end, target = d.bounds("test")
    ranks = []
    for u in range(d.n_users):
        s = d.P[d.items[end[u] - 1]].astype(np.float64).copy()
        s[0] = -np.inf
        t = d.items[target[u]]
        for i in set(d.items[start[u]:end[u]].tolist()) - {t}:
            s[i] = -np.inf
        ranks.append(int((s >= s[t]).sum()))
    assert task.oracle("test")["ndcg@10"] == pytest.approx(float(np.mean([(r <= 10) / math.log2(r + 1) for r in ranks])))
    task.cfg.data.protocol = "unmasked"
    assert task.oracle("test")["ndcg@10"] < float(np.mean([(r <= 10) / math.log2(r + 1) for r in ranks]))


def test_recommend_exclude_seen_removes_the_whole_history():
    task = _mask_task("unmasked")
    users, items, scores = task.recommend(FixedScores(), k=7, exclude_seen=False)
    assert items[0, 0] == "5"  # u0's best-scored item, seen long before its newest max_len items
    users, items, scores = task.recommend(FixedScores(), k=7, exclude_seen=True)
    for u, seq in enumerate(MASK_USERS):
        shown = [i for i, s in zip(items[u], scores[u]) if np.isfinite(s)]
        assert set(shown) == {str(i) for i in range(1, 8)} - {str(i) for i in seq}, u


def _long_users_task(mode, L=4, **data):
    # training sequences of 3, 11 and 23 items (valid + test targets after them), max_len 4
    lens = [3 + 2, 11 + 2, 23 + 2]
    offsets = np.concatenate([[0], np.cumsum(lens)])
    items = np.arange(1, offsets[-1] + 1)  # every position its own id: pairs are identifiable
    task = NextItemTask(_cfg(mode=mode, max_len=L, **data), SeqSplitData("long", int(items.max()) + 1, offsets, items))
    task.setup()
    return task


@pytest.mark.parametrize("stride", [None, 1, 3, 4])
def test_all_positions_trains_every_pair_of_long_users_exactly_once(stride):
    a, p = _long_users_task("all_positions", window_stride=stride), _long_users_task("prefixes")
    expected = (3 - 1) + (11 - 1) + (23 - 1)
    assert a.train_pairs() == p.train_pairs() == p.num_train_samples() == expected
    b = a.train_batch(torch.arange(a.num_train_samples()))
    targets = b.target[b.target > 0].tolist()
    assert sorted(targets) == sorted(p.train_batch(torch.arange(p.num_train_samples())).target.tolist())
    assert len(set(targets)) == len(targets)  # each pair once
    L, s = 4, stride or 2
    offsets = a.data.offsets
    for row in range(len(b)):
        for j in range(int(b.lengths[row])):
            t = int(b.target[row, j])
            if t:  # ids are positions + 1: the prefix of target t is ids first_id .. t - 1
                first_id = int(offsets[np.searchsorted(offsets, t - 1, side="right") - 1]) + 1
                assert int(b.item_seq[row, j]) == t - 1 and int(b.item_seq[row, 0]) >= first_id
                # the whole prefix while it fits in a window, else at least max_len - stride + 1 items
                assert min(t - first_id, L - s + 1) <= j + 1 <= L


def test_all_positions_with_stride_1_gives_the_prefixes_loss_on_long_users():
    a = _long_users_task("all_positions", window_stride=1)
    p = _long_users_task("prefixes")
    torch.manual_seed(0)
    net = a.build_model().eval()
    with torch.no_grad():
        ba = a.train_batch(torch.arange(a.num_train_samples()))
        bp = p.train_batch(torch.arange(p.num_train_samples()))
        torch.testing.assert_close(a.loss(net(ba), ba)["loss"], p.loss(net(bp), bp)["loss"], atol=1e-5, rtol=1e-5)


def test_training_batches_never_read_the_valid_or_test_items():
    for mode in ("all_positions", "prefixes"):
        task = _long_users_task(mode)
        held_out = set(task.data.items[task.data.split.valid].tolist()) | set(task.data.items[task.data.split.test].tolist())
        b = task.train_batch(torch.arange(task.num_train_samples()))
        assert not held_out & set(b.item_seq.flatten().tolist()), mode
        assert not held_out & set(b.target.flatten().tolist()), mode


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mamba4rec", "sasrec"])
def test_learns_the_synthetic_world(tmp_path, model):
    from ssmrec.train.trainer import Trainer

    cfg = _cfg(model)
    # 12 epochs at a constant LR: measured 0.38 / 0.41 (sasrec / mamba4rec) vs popularity 0.18 and
    # oracle 0.51, margins of ~0.2 against the 0.05 asked. (4 epochs with plateau decay left 0.0005 to
    # 0.05 of margin: the LR x0.1 after one flat epoch stopped Mamba4Rec at epoch 2.)
    cfg.out_dir, cfg.train.epochs, cfg.train.lr, cfg.train.lr_schedule = str(tmp_path), 12, 1e-2, "constant"
    s = Trainer(cfg).fit()
    assert s["test_ndcg@10"] > s["popularity_ndcg@10_test"] + 0.05, s
    assert s["test_ndcg@10"] < s["oracle_ndcg@10_test"] + 0.02, s


def test_length_buckets_keep_every_sample_once_and_group_lengths():
    task = NextItemTask(_cfg(), None)
    task.setup()
    order = torch.randperm(task.num_train_samples(), generator=torch.Generator().manual_seed(0))
    arranged = task.arrange_epoch(order, 16, seed=3)
    assert sorted(arranged.tolist()) == sorted(order.tolist())
    assert torch.equal(arranged, task.arrange_epoch(order, 16, seed=3))  # a pure function (resume)
    lengths = task.sample_lengths()

    def spread(o):
        batches = [lengths[o[a:a + 16].numpy()] for a in range(0, len(o) - 15, 16)]
        return float(np.mean([b.max() - b.min() for b in batches]))

    assert spread(arranged) < 0.5 * spread(order)
    task.cfg.data.bucket_by_length = False
    assert torch.equal(task.arrange_epoch(order, 16, seed=3), order)


@pytest.mark.slow
def test_train_then_evaluate_a_next_item_checkpoint_through_the_cli(tmp_path):
    import json

    import yaml

    from tests.conftest import run_cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"base": "seq/synth_mamba4rec", "out_dir": str(tmp_path), "name": "r",
                                   "data": {"source": "synth-tiny", "max_len": 20},
                                   "model_params": SMALL["mamba4rec"],
                                   "train": {"epochs": 2, "progress": False}}))
    r = run_cli("train", "--config", cfg)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    r = run_cli("evaluate", "--checkpoint", tmp_path / "r" / "best.pt", "--split", "test")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["ndcg@10"] == pytest.approx(summary["test_ndcg@10"], abs=1e-9) and m["protocol"] == "unmasked"
    assert summary["test_ndcg@10"] == summary["test_unmasked_ndcg@10"]
    r = run_cli("evaluate", "--checkpoint", tmp_path / "r" / "best.pt", "--split", "test", "--protocol", "masked")
    assert r.returncode == 0, r.stderr[-2000:]
    masked = json.loads(r.stdout.strip().splitlines()[-1])
    assert masked["protocol"] == "masked" and masked["ndcg@10"] == pytest.approx(summary["test_masked_ndcg@10"], abs=1e-9)
    assert masked["hr@10"] >= m["hr@10"]  # masking only removes the target's competitors
    r = run_cli("evaluate", "--checkpoint", tmp_path / "r" / "best.pt", "--split", "train")
    assert r.returncode == 2 and "--split must be one of valid, test" in r.stderr


@pytest.mark.slow
def test_recommend_writes_top_k_per_user(tmp_path):
    import pyarrow.parquet as pq
    import yaml

    from tests.conftest import run_cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"base": "seq/synth_mamba4rec", "out_dir": str(tmp_path), "name": "r",
                                   "data": {"source": "synth-tiny", "max_len": 20},
                                   "model_params": SMALL["mamba4rec"], "train": {"epochs": 1, "progress": False}}))
    assert run_cli("train", "--config", cfg).returncode == 0
    out = tmp_path / "rec.parquet"
    r = run_cli("recommend", "--checkpoint", tmp_path / "r" / "best.pt", "--k", "5", "--out", out, "--exclude-seen")
    assert r.returncode == 0, r.stderr[-2000:]
    t = pq.read_table(out)
    assert t.column_names == ["user_id", "rank", "item_id", "score"]
    users = t["user_id"].to_numpy(zero_copy_only=False)
    n_users = len(np.unique(users))
    assert t.num_rows == 5 * n_users and t["rank"].to_numpy().tolist()[:5] == [1, 2, 3, 4, 5]
    scores = t["score"].to_numpy().reshape(n_users, 5)
    assert (np.diff(scores, axis=1) <= 0).all()  # best first
    assert "0" not in set(t["item_id"].to_numpy(zero_copy_only=False))  # never the padding item
    r = run_cli("recommend", "--checkpoint", tmp_path / "r" / "best.pt", "--out", tmp_path / "x.txt")
    assert r.returncode == 2 and "--out must end in .csv or .parquet" in r.stderr


def test_bert4rec_cloze_batches_and_scoring():
    task = _toy_task("cloze", "bert4rec")
    torch.manual_seed(0)
    b = task.train_batch(torch.arange(task.num_train_samples()))
    mask_id = task.data.n_items
    masked = b.item_seq == mask_id
    assert masked.any(1).all()  # every row predicts something
    assert ((b.target > 0) == masked).all()  # targets exactly at the masked positions
    net = task.build_model()
    out = net(b)
    assert out["logits"].shape == (int(masked.sum()), task.data.n_items)  # [MASK] is never a candidate
    ev = next(task.eval_batches("test", 8))
    assert (ev.item_seq[torch.arange(len(ev)), ev.lengths - 1] == mask_id).all()  # [MASK] appended
    m = task.evaluate(net, "test", 8)
    assert 0 <= m["ndcg@10"] <= 1
    task.cfg.data.protocol = "masked"
    assert 0 <= task.evaluate(net, "test", 8)["ndcg@10"] <= 1


def test_cloze_mode_and_bert4rec_go_together():
    from ssmrec.errors import ConfigError

    with pytest.raises(ConfigError, match="train_mode must be cloze for model 'bert4rec'"):
        from_dict({"task": "next_item", "model": "bert4rec", "data": {"train_mode": "all_positions"}})
    with pytest.raises(ConfigError, match="must be all_positions or prefixes for model 'sasrec'"):
        from_dict({"task": "next_item", "model": "sasrec", "data": {"train_mode": "cloze"}})


@pytest.mark.parametrize("model_name,multi_hot", [("sasrec", False), ("mamba4rec", True)],
                         ids=["dense-vectors", "sparse-multi-hot"])
def test_item_features_are_projected_stored_in_the_checkpoint_and_reloaded(tmp_path, model_name, multi_hot):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ssmrec.checkpoint import load_model
    from ssmrec.train.trainer import Trainer

    rng = np.random.default_rng(0)
    ids = np.arange(1, 151)[::-1]  # file order differs from the dataset's item order
    if multi_hot:  # attribute-like: 2 of 100 per item, the sparse (CSR) projection
        vecs = np.zeros((150, 100), np.float32)
        vecs[np.arange(150)[:, None], rng.integers(0, 100, (150, 2))] = 1.0
    else:
        vecs = rng.normal(size=(150, 6)).astype(np.float32)
    feat = tmp_path / "item_emb.parquet"
    pq.write_table(pa.table({"item_id": ids, "item_emb": pa.array(list(vecs))}), feat)
    cfg = _cfg(model_name, item_features=str(feat), item_feature_mode="add")
    cfg.out_dir, cfg.train.epochs, cfg.train.max_steps_per_epoch = str(tmp_path), 1, 2
    cfg.train.ema_decay = 0.9 if multi_hot else 0.0
    trainer = Trainer(cfg)
    net = trainer.model
    assert (net._sparse_features is not None) == multi_hot
    item = 7
    row = int(np.flatnonzero(trainer.task.data.item_raw == str(item))[0])
    np.testing.assert_allclose(net.item_features[row].numpy(), vecs[ids == item][0])
    assert net.item_features[0].abs().sum() == 0  # padding
    trainer.fit()
    ck = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert "item_features" in ck["artifacts"]
    model, *_ = load_model(tmp_path / "run" / "best.pt")
    torch.testing.assert_close(model.item_features, net.item_features)
    assert (model._sparse_features is not None) == multi_hot
    b = SeqBatch(torch.tensor([[1, 2, 3]]), torch.tensor([3]))
    with torch.no_grad():
        torch.testing.assert_close(model(b)["logits"], net.eval()(b)["logits"])


def test_item_features_file_errors_are_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ssmrec.errors import DataError
    from ssmrec.tasks.next_item import read_item_features

    bad = tmp_path / "f.parquet"
    pq.write_table(pa.table({"item_id": [1, 2], "a": pa.array([[1.0], [2.0]]), "b": pa.array([[1.0], [2.0]])}), bad)
    with pytest.raises(DataError, match="exactly one list<float> column"):
        read_item_features(bad, np.array(["[PAD]", "1", "2"]))
    pq.write_table(pa.table({"item_id": [8, 9], "a": pa.array([[1.0], [2.0]])}), bad)
    with pytest.raises(DataError, match="no item_id matches"):
        read_item_features(bad, np.array(["[PAD]", "1", "2"]))
    with pytest.raises(DataError, match="not found"):
        read_item_features(tmp_path / "nope.parquet", np.array(["[PAD]"]))


def test_popularity_baseline_ranks_like_a_full_score_matrix():
    task = _toy_task("all_positions")
    d = task.data
    start, end, target = d.bounds("test")
    train = np.ones(len(d.items), bool)
    train[d.offsets[1:] - 1] = train[d.offsets[1:] - 2] = False
    counts = np.bincount(d.items[train], minlength=d.n_items).astype(float)
    counts[0] = -np.inf
    scores = torch.from_numpy(np.tile(counts, (len(target), 1)))
    expect = rank_metrics(rank_of_target(scores, torch.from_numpy(d.items[target])), [5, 10, 20])
    got = task.popularity("test")
    for k, v in expect.items():
        assert got[k] == pytest.approx(float(v.mean()))


def test_label_smoothing_changes_the_optimised_loss_not_the_logged_ce():
    """``data.label_smoothing``: the loss is torch's smoothed CE over every class; the logged ``ce``
    stays the plain CE, so runs with and without smoothing compare on one scale."""
    import torch.nn.functional as F

    task = _toy_task("prefixes", "mamba4rec")
    torch.manual_seed(0)
    net = task.build_model().eval()
    with torch.no_grad():
        b = task.train_batch(torch.arange(task.num_train_samples()))
        out = net(b)
        plain = task.loss(out, b)
        task.cfg.data.label_smoothing = 0.2
        smooth = task.loss(out, b)
    assert plain["loss"] == plain["ce"]
    torch.testing.assert_close(smooth["ce"], plain["ce"])
    torch.testing.assert_close(smooth["loss"], F.cross_entropy(out["logits"], out["labels"], label_smoothing=0.2))
    assert float(smooth["loss"] - plain["loss"]) > 1e-3


def test_s3rec_item_attributes_become_multi_hot_item_features(tmp_path):
    """``data.item_features`` may name S3-Rec's ``*_item2attributes.json[.gz]``: one multi-hot row per
    item of the task's index (matched by original id; unknown ids ignored; padding and items without
    attributes zero); malformed files are one DataError line."""
    import gzip
    import json

    from ssmrec.errors import DataError
    from ssmrec.tasks.next_item import read_item_features

    item_raw = np.array(["[PAD]", "10", "20", "30"])
    path = tmp_path / "X_item2attributes.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"20": [0, 2], "10": [1], "99": [3]}, f)
    got = read_item_features(path, item_raw)
    assert got.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    for bad in ('{"10": ["a"]}', '[1, 2]', '{"10": [1'):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(DataError, match="bad.json"):
            read_item_features(tmp_path / "bad.json", item_raw)
    (tmp_path / "none.json").write_text('{"77": [1]}')
    with pytest.raises(DataError, match="no item id matches"):
        read_item_features(tmp_path / "none.json", item_raw)


@pytest.mark.parametrize("model", CAUSAL + ["bert4rec"])
def test_length_ordered_evaluation_equals_padding_free_evaluation(model):
    """evaluate / recommend batch users shortest history first (less padding); every user must still be
    scored on its own history and target: batch size 1 (no padding at all) is the reference. The task
    has histories of 1 to 22 items, in an order that is not by length."""
    lens = [12, 3, 25, 5, 18, 4, 9, 24, 6, 14, 3, 20]
    offsets = np.concatenate([[0], np.cumsum(lens)])
    rng = np.random.default_rng(0)
    items = rng.integers(1, 30, offsets[-1])
    task = NextItemTask(_cfg(model, max_len=16), SeqSplitData("mixed", 30, offsets, items,
                                                            user_raw=np.arange(len(lens)).astype(str),
                                                            item_raw=np.arange(30).astype(str)))
    task.setup()
    start, end, _ = task.data.bounds("test")
    order = task.by_history_length(start, end)
    assert order.tolist() != list(range(len(lens)))  # the ordering is exercised
    torch.manual_seed(0)
    net = task.build_model().eval()
    target = torch.from_numpy(task.data.items[task.data.bounds("test")[2]])
    for protocol in ("unmasked", "masked"):
        ranks = []  # the reference: each user alone, in user order
        for u in range(len(lens)):
            b = task.history_batch(start[u:u + 1], end[u:u + 1], model == "bert4rec")
            with torch.no_grad():
                scores = net(b)["logits"]
            ranks.append(task._ranks(scores, start[u:u + 1], end[u:u + 1], target[u:u + 1], protocol))
        ref = {k: float(v.mean()) for k, v in rank_metrics(torch.cat(ranks), [10, 20]).items()}
        got = task.evaluate(net, "test", 5, protocol=protocol)
        for k in ("hr@10", "ndcg@10", "mrr@20"):
            assert got[k] == pytest.approx(ref[k], abs=1e-9), (protocol, k)
    u1, i1, s1 = task.recommend(net, k=5, batch_size=1)
    u5, i5, s5 = task.recommend(net, k=5, batch_size=5)
    assert (i1 == i5).all()
    np.testing.assert_allclose(s1, s5, rtol=1e-5, atol=1e-5)
