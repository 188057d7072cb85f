"""The serving adapter around a model's incremental contract: both modes answer the same, the seen set
is the whole history, short eligible lists, non-finite scores refused, bounded state sizes, restored
entries checked; the recurrent stack's step equals its forward (parity per model and per variant is
tests/models/test_incremental_parity.py)."""

import pytest
import torch

from ssmrec.models.ctr import build_ctr_model
from ssmrec.models.incremental import StateSchemaError
from ssmrec.registry import get_model
from ssmrec.serve.adapter import NonFiniteScores, ServingAdapter
from ssmrec.serve.untrained import spread_weights

N = 50


def _seq_model(name, params, window=8):
    spec = get_model("next_item", name)
    torch.manual_seed(0)
    model = spread_weights(spec.cls(spec.config({**params, "dropout": 0.0}), N)).eval()
    model.set_serving_window(window)
    return model


def _ctr_model(tiny_data, name="mambactr", params=None, window=8):
    torch.manual_seed(0)
    model = spread_weights(build_ctr_model(name, params or {}, tiny_data.item_info), 0.06).eval()
    model.set_serving_window(window)
    return model


def _feats(c):
    return {"likes_level": torch.zeros_like(c), "views_level": torch.ones_like(c)}


@pytest.mark.parametrize("name", ["mamba4rec", "sasrec", "gru4rec", "bert4rec"])
def test_incremental_and_recompute_modes_answer_the_same(name):
    model = _seq_model(name, {"hidden_size": 16} if name != "gru4rec" else {"embedding_size": 16})
    inc, rec = ServingAdapter(model), ServingAdapter(model, "recompute")
    h = torch.randint(1, N, (19,), generator=torch.Generator().manual_seed(0))
    a, b = inc.prefill(h[:4]), rec.prefill(h[:4])
    a, b = inc.update([a], [h[4:]])[0], rec.update([b], [h[4:]])[0]
    assert a.n_events == b.n_events == 19 and torch.equal(a.seen, b.seen)
    torch.testing.assert_close(inc.score_all([a]), rec.score_all([b]), atol=1e-4, rtol=1e-4)
    assert rec.schema != inc.schema  # a cache of one mode is never restored into the other
    with pytest.raises(StateSchemaError):
        inc.entry_from_dict(b.to_dict())


def test_exclude_seen_covers_the_whole_history_and_short_lists_are_shorter(tiny_data):
    model = _seq_model("mamba4rec", {"hidden_size": 16, "d_state": 8}, window=4)
    ad = ServingAdapter(model)
    h = torch.arange(1, 31)  # 30 distinct items, far beyond the window of 4
    e = ad.prefill(h)
    ids, vals = ad.topk([e], 40, exclude_seen=True)[0]
    assert len(ids) == N - 1 - 30 and not torch.isin(ids, h).any() and torch.isfinite(vals).all()
    ids, _ = ad.topk([e], 5, exclude_seen=True, candidates=[torch.tensor([2, 40, 3])])[0]
    assert ids.tolist() == [40]  # 2 and 3 were seen (outside the window): one eligible item, not k
    assert e.seen.tolist() == h.tolist() and e.state.window.tolist() == h[-4:].tolist()
    ctr = ServingAdapter(_ctr_model(tiny_data))
    c = ctr.prefill(torch.tensor([5, 6, 7, 8, 9, 10, 11, 12, 13, 14]))
    cands = torch.tensor([5, 20, 6])
    ids, vals = ctr.topk([c], 3, exclude_seen=True, candidates=[cands], features=[_feats(cands)])[0]
    assert ids.tolist() == [20] and torch.isfinite(vals).all()


def test_non_finite_scores_are_refused_not_returned(tiny_data):
    model = _seq_model("mamba4rec", {"hidden_size": 16, "d_state": 8})
    with torch.no_grad():
        model.item_table.weight[7] = float("nan")
    ad = ServingAdapter(model)
    e = ad.prefill(torch.tensor([1, 2, 3]))
    with pytest.raises(NonFiniteScores, match="non-finite"):
        ad.topk([e], 5)
    ctr_model = _ctr_model(tiny_data)
    with torch.no_grad():
        ctr_model.out.bias.fill_(float("nan"))
    ctr = ServingAdapter(ctr_model)
    with pytest.raises(NonFiniteScores):
        c = torch.tensor([3, 4])
        ctr.score([ctr.prefill(torch.tensor([1, 2]))], [c], [_feats(c)])


def test_state_bytes_stop_growing_at_the_window():
    kv = ServingAdapter(_seq_model("sasrec", {"hidden_size": 16, "inner_size": 32}, window=20))
    mb = ServingAdapter(_seq_model("mamba4rec", {"hidden_size": 16, "d_state": 8}, window=20))
    h = torch.randint(1, N, (80,))
    lengths = (5, 10, 15, 20, 40, 80)
    kv_sizes = [kv.prefill(h[:n]).state.nbytes for n in lengths]
    mb_sizes = [mb.prefill(h[:n]).state.nbytes - 8 * min(n, 20) for n in lengths]  # less the window ids
    assert kv_sizes[1] - kv_sizes[0] == kv_sizes[2] - kv_sizes[1] > 0  # the KV cache grows within the window
    assert kv_sizes[3] == kv_sizes[4] == kv_sizes[5]  # and not past it
    assert len(set(mb_sizes)) == 1  # the Mamba state is constant


def test_mambactr_state_differs_from_history_order(tiny_data):
    model = _ctr_model(tiny_data, window=64)
    h = torch.randint(1, tiny_data.item_info.n_items, (30,))
    c = torch.arange(1, 6)
    a = model.score([model.prefill(h)], [c], [_feats(c)])[0]
    b = model.score([model.prefill(h.flip(0))], [c], [_feats(c)])[0]
    assert not torch.allclose(a, b)  # the state is not a bag of items


def test_next_item_user_without_events_is_a_clear_error():
    ad = ServingAdapter(_seq_model("mamba4rec", {"hidden_size": 16, "d_state": 8}))
    with pytest.raises(ValueError, match="no events"):
        ad.topk([ad.init_entry()], 3)


def test_adapter_rejects_unknown_modes_and_quirks(tiny_data):
    with pytest.raises(ValueError, match="padding_noop"):
        ServingAdapter(_ctr_model(tiny_data, params={"padding_noop": False}))
    with pytest.raises(ValueError, match="one of"):
        ServingAdapter(_ctr_model(tiny_data), "kv")
    with pytest.raises(ValueError, match="contract"):
        ServingAdapter(torch.nn.Linear(2, 2))


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
