"""Incremental scorers equal the model's batch forward on the user's full history (per model), events
one at a time or in bursts, users batched together; the recurrent stack's step equals its forward."""

import pytest
import torch

from ssmrec.models.ctr import build_ctr_model
from ssmrec.registry import get_model
from ssmrec.serve.scorers import build_scorer, state_nbytes
from ssmrec.serve.untrained import spread_weights
from ssmrec.tasks.next_item import SeqBatch

CTR_VARIANTS = {
    "mambactr": ("mambactr", {}),
    "mambactr-mamba1-2layers": ("mambactr", {"stage1": "mamba1", "stage1_layers": 2}),
    "mambactr-paper": ("mambactr", {"variant": "paper"}),
    "mambactr-transformer-twin": ("mambactr", {"stage1": "transformer", "stage1_layers": 2}),
    "dmf": ("dmf", {}),
    "din-recompute": ("din", {}),
}
SEQ_VARIANTS = {
    "mamba4rec": ("mamba4rec", {"hidden_size": 16, "d_state": 8}, "auto"),
    "mamba4rec-2layers-pe": ("mamba4rec", {"hidden_size": 16, "d_state": 8, "num_layers": 2,
                                           "position_embedding": True, "max_len": 8}, "auto"),
    "mamba4rec-mamba2": ("mamba4rec", {"hidden_size": 16, "d_state": 8, "block": "mamba2", "headdim": 8}, "auto"),
    "sasrec-kv": ("sasrec", {"hidden_size": 16, "inner_size": 32, "max_len": 8}, "kv"),
    "sasrec-recompute": ("sasrec", {"hidden_size": 16, "inner_size": 32}, "recompute"),
    "gru4rec-recompute": ("gru4rec", {"embedding_size": 16, "hidden_size": 24}, "auto"),
    "bert4rec-recompute": ("bert4rec", {"hidden_size": 16, "inner_size": 32, "max_len": 40}, "auto"),
}


def _ctr_reference(model, history, cands, likes, views):
    """forward on rows (history, candidate), the history left-padded to the training max_len 64 as the
    data pipeline pads it (longer histories: whole)."""
    from ssmrec.data.mmctr import CTRBatch

    L = max(len(history), 64)
    seq = torch.zeros(len(cands), L, dtype=torch.long)
    if len(history):
        seq[:, -len(history):] = history
    batch = CTRBatch(user_id=torch.zeros(len(cands), dtype=torch.long), item_seq=seq, mask=seq > 0,
                     item_id=cands, likes_level=likes, views_level=views)
    with torch.no_grad():
        return torch.sigmoid(model(batch)["logit"])


@pytest.mark.parametrize("name", list(CTR_VARIANTS))
@pytest.mark.equivalence
def test_ctr_scorer_equals_forward_on_the_full_history(tiny_data, name):
    model_name, params = CTR_VARIANTS[name]
    torch.manual_seed(0)
    model = spread_weights(build_ctr_model(model_name, params, tiny_data.item_info), 0.06).eval()
    scorer = build_scorer("ctr", model)
    n_items = tiny_data.item_info.n_items
    g = torch.Generator().manual_seed(1)
    histories = [torch.randint(1, n_items, (n,), generator=g) for n in (0, 3, 70)]
    # user 2's events arrive one at a time, user 1's in bursts of two; users are updated together
    states = [scorer.init_state() for _ in histories]
    for t in range(70):
        ev = {2: histories[2][t:t + 1]}
        if t % 2 == 0 and t < 3:
            ev[1] = histories[1][t:t + 2]
        new = scorer.update([states[i] for i in ev], list(ev.values()))
        for i, st in zip(ev, new):
            states[i] = st
    assert [scorer.events_of(s) for s in states] == [0, 3, 70]
    cands = [torch.randint(1, n_items, (c,), generator=g) for c in (5, 1, 7)]
    likes = [torch.randint(0, 10, (len(c),), generator=g) for c in cands]
    views = [torch.randint(0, 10, (len(c),), generator=g) for c in cands]
    got = scorer.score(states, cands, likes, views)
    for h, c, lk, vw, p in zip(histories, cands, likes, views, got):
        torch.testing.assert_close(p, _ctr_reference(model, h, c, lk, vw), atol=2e-5, rtol=1e-4)
    # one user alone (the broadcast path) and a prefilled state give the same numbers
    alone = scorer.score([states[2]], [cands[2]], [likes[2]], [views[2]])[0]
    torch.testing.assert_close(alone, got[2], atol=2e-5, rtol=1e-4)
    pre = scorer.prefill(histories[2])
    torch.testing.assert_close(scorer.score([pre], [cands[2]], [likes[2]], [views[2]])[0], got[2],
                               atol=2e-5, rtol=1e-4)
    # top-k over candidates is the sorted score
    ids, vals = scorer.topk([states[2]], 3, candidates=[cands[2]], likes=[likes[2]], views=[views[2]])[0]
    torch.testing.assert_close(vals, got[2].sort(descending=True).values[:3])
    assert state_nbytes(states[2]) > 0


def test_mambactr_state_is_constant_size_and_differs_from_history_order(tiny_data):
    torch.manual_seed(0)
    model = build_ctr_model("mambactr", {}, tiny_data.item_info).eval()
    scorer = build_scorer("ctr", model)
    h = torch.randint(1, tiny_data.item_info.n_items, (100,))
    short, long = scorer.prefill(h[:30]), scorer.prefill(h)
    assert state_nbytes(short) == state_nbytes(long)  # O(1) in the history length
    c = torch.arange(1, 6)
    a = scorer.score([long], [c])[0]
    b = scorer.score([scorer.prefill(h.flip(0))], [c])[0]
    assert not torch.allclose(a, b)  # the state is not a bag of items


def _seq_model(name, params, n_items=50):
    spec = get_model("next_item", name)
    torch.manual_seed(0)
    return spread_weights(spec.cls(spec.config({**params, "dropout": 0.0}), n_items)).eval()


@pytest.mark.parametrize("name", list(SEQ_VARIANTS))
@pytest.mark.equivalence
def test_next_item_scorer_equals_forward_on_the_full_history(name):
    model_name, params, mode = SEQ_VARIANTS[name]
    model = _seq_model(model_name, params)
    scorer = build_scorer("next_item", model, mode)
    g = torch.Generator().manual_seed(2)
    histories = [torch.randint(1, 50, (n,), generator=g) for n in (1, 6, 13)]  # 13 > max_len 8: clamped positions
    states = [scorer.init_state() for _ in histories]
    for t in range(0, 13, 2):
        idx = [i for i, h in enumerate(histories) if t < len(h)]
        new = scorer.update([states[i] for i in idx], [histories[i][t:t + 2] for i in idx])
        for i, s in zip(idx, new):
            states[i] = s
    lengths = torch.tensor([len(h) for h in histories])
    seqs = histories
    if getattr(model, "cloze", False):
        seqs = [torch.cat([h, torch.tensor([50])]) for h in histories]
        lengths = lengths + 1
    item_seq = torch.zeros(3, int(lengths.max()), dtype=torch.long)
    for i, h in enumerate(seqs):
        item_seq[i, :len(h)] = h
    with torch.no_grad():
        ref = model(SeqBatch(item_seq, lengths))["logits"][:, :50]
    ref[:, 0] = float("-inf")
    cands = [torch.tensor([3, 7, 11]), torch.tensor([1]), torch.arange(1, 50)]
    got = scorer.score(states, cands)
    for i, (c, p) in enumerate(zip(cands, got)):
        torch.testing.assert_close(p, torch.softmax(ref[i], -1)[c], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scorer.full_scores(states)[:, 1:], ref[:, 1:], atol=1e-4, rtol=1e-4)
    top = scorer.topk(states, 5)
    for i, (ids, vals) in enumerate(top):
        torch.testing.assert_close(vals, ref[i].topk(5).values, atol=1e-4, rtol=1e-4)
    pre = [scorer.prefill(h) for h in histories]  # one pass over the history (where the model has one)
    for i, (c, p) in enumerate(zip(cands, scorer.score(pre, cands))):
        torch.testing.assert_close(p, torch.softmax(ref[i], -1)[c], atol=1e-5, rtol=1e-4)
    after = scorer.update(pre, [torch.tensor([4]) for _ in pre])  # and the states go on from there
    steps = scorer.update(states, [torch.tensor([4]) for _ in states])
    torch.testing.assert_close(scorer.full_scores(pre), scorer.full_scores(states), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scorer.full_scores(after), scorer.full_scores(steps), atol=1e-4, rtol=1e-4)
    # that batched update mixed users with 1, 6 and 13 past events (padded caches): against forward
    longer = [torch.cat([h, torch.tensor([4])]) for h in seqs] if not getattr(model, "cloze", False) else \
        [torch.cat([h, torch.tensor([4, 50])]) for h in histories]
    item_seq2 = torch.zeros(3, max(len(q) for q in longer), dtype=torch.long)
    for i, q in enumerate(longer):
        item_seq2[i, :len(q)] = q
    with torch.no_grad():
        ref2 = model(SeqBatch(item_seq2, torch.tensor([len(q) for q in longer])))["logits"][:, 1:50]
    torch.testing.assert_close(scorer.full_scores(steps)[:, 1:], ref2, atol=1e-4, rtol=1e-4)
    ids, _ = scorer.topk([states[2]], 5, exclude_seen=True)[0]
    assert not torch.isin(ids, histories[2]).any() and len(ids) == 5


def test_next_item_user_without_events_is_a_clear_error():
    scorer = build_scorer("next_item", _seq_model("mamba4rec", {"hidden_size": 16, "d_state": 8}))
    with pytest.raises(ValueError, match="no events"):
        scorer.topk([scorer.init_state()], 3)


def test_sasrec_kv_cache_grows_linearly_and_mamba_state_does_not():
    kv = build_scorer("next_item", _seq_model("sasrec", {"hidden_size": 16, "inner_size": 32}), "kv")
    mb = build_scorer("next_item", _seq_model("mamba4rec", {"hidden_size": 16, "d_state": 8}))
    h = torch.randint(1, 50, (40,))
    kv_sizes = [state_nbytes(kv.prefill(h[:n])) for n in (10, 20, 40)]
    mb_sizes = [state_nbytes(mb.prefill(h[:n])) - 8 * n for n in (10, 20, 40)]  # less the seen-id list
    assert kv_sizes[2] - kv_sizes[1] == 2 * (kv_sizes[1] - kv_sizes[0]) > 0
    assert mb_sizes[0] == mb_sizes[1] == mb_sizes[2]


def test_build_scorer_rejects_unknown_modes_and_quirks(tiny_data):
    model = build_ctr_model("mambactr", {"padding_noop": False}, tiny_data.item_info)
    with pytest.raises(ValueError, match="padding_noop"):
        build_scorer("ctr", model)
    with pytest.raises(ValueError, match="one of"):
        build_scorer("ctr", build_ctr_model("mambactr", {}, tiny_data.item_info), "fast")
    with pytest.raises(ValueError, match="key/value"):
        build_scorer("ctr", build_ctr_model("dmf", {}, tiny_data.item_info), "kv")


@pytest.mark.equivalence
def test_recurrent_stack_step_equals_forward_and_old_mambactr_keys_load(tiny_data):
    torch.manual_seed(0)
    model = build_ctr_model("mambactr", {"variant": "paper"}, tiny_data.item_info).eval()
    stack = model.encoder.layers
    x = torch.randn(2, 9, model.embedding.item_dim)
    with torch.no_grad():
        ref = stack(x)
        states = stack.allocate_state(2)
        ys = []
        for t in range(9):
            y, states = stack.step(x[:, t], states)
            ys.append(y)
        out, pre_states = stack.prefill(x)
    torch.testing.assert_close(torch.stack(ys, 1), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out, ref)
    for (c1, s1), (c2, s2) in zip(states, pre_states):
        torch.testing.assert_close(c1, c2)
        torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-4)
    # checkpoints from before the RecurrentStack (layers.{i}.<block>, norms.{i}) still load
    sd = model.state_dict()
    old = {}
    for k, v in sd.items():
        k2 = k.replace(".mamba.", ".") if k.startswith("encoder.layers.") else k
        if k.startswith("encoder.layers.") and ".norm." in k and ".mamba." not in k:
            i = k.split(".")[2]
            k2 = k.replace(f"encoder.layers.{i}.norm.", f"encoder.norms.{i}.")
        old[k2] = v
    assert old.keys() != sd.keys()
    fresh = build_ctr_model("mambactr", {"variant": "paper"}, tiny_data.item_info)
    fresh.load_state_dict(old)
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, sd[k])
