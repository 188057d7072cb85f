"""Every servable model, enumerated from the registry: scores served after N events equal the offline
forward on the same history truncated to the training window, at N < window, N = window and
N = 3 x window, through the model's own contract (``step`` event by event and in bursts, users batched,
``prefill``) and through the serving adapter (what ``/score`` and ``/recommend`` call). State bytes do
not grow past the window.

Tolerance: atol 2e-5 / rtol 1e-4 on probabilities and 1e-4 on raw scores. Both sides are float32 and
differ only in the order of reductions (a step-by-step scan against a parallel one, attention over a
cache against a masked matrix); with |weights| spread to std 0.06-0.3 the outputs are O(1) and these
bounds are ~100x float32's accumulated rounding over 3 x 8 steps, while a wrong state (an event lost,
doubled, or read beyond the window) moves scores by 1e-2 or more.
"""

from __future__ import annotations

import pytest
import torch

from ssmrec.data.mmctr import CTRBatch
from ssmrec.models.incremental import IncrementalModel, StateSchemaError
from ssmrec.registry import get_model, model_names
from ssmrec.serve.adapter import ServingAdapter
from ssmrec.serve.untrained import spread_weights
from ssmrec.tasks.next_item import SeqBatch

WINDOW = 8
ITEM_FEATURES = "_item_features"  # not a model parameter: the task attaches data.item_features (mode)
N_SEQ_ITEMS = 40
# config switches that change the served state, beyond each registered model's defaults
VARIANTS = {
    ("ctr", "mambactr"): [{}, {"variant": "paper"}, {"stage1": "mamba1", "stage1_layers": 2},
                          {"stage1": "transformer", "stage1_layers": 2}],
    ("next_item", "mamba4rec"): [{}, {"num_layers": 2, "position_embedding": True, "max_len": 6},
                                 {"block": "mamba2", "headdim": 16},
                                 # frozen item vectors (text embeddings, attribute multi-hots) added to the IDs
                                 {"num_layers": 2, ITEM_FEATURES: "add"}, {ITEM_FEATURES: "replace"},
                                 # the causal BSARec low-pass branch beside each block (its own state)
                                 {"num_layers": 2, "lowpass": True, "lowpass_period": 8},
                                 # both at once, one layer (seq/beauty_mamba4rec_b256l1_lowpass_ema_bsa_attr)
                                 {"lowpass": True, "lowpass_period": 8, ITEM_FEATURES: "add_sparse"}],
    ("next_item", "sasrec"): [{}, {ITEM_FEATURES: "add"}],
}


def _servable():
    out = []
    for task in ("ctr", "next_item"):
        for name in model_names(task):
            spec = get_model(task, name)
            if spec.servable:
                for i, params in enumerate(VARIANTS.get((task, name), [{}])):
                    out.append(pytest.param(task, name, params, id=f"{task}-{name}-{i}"))
    return out


def _build(task, name, params, tiny_data):
    spec = get_model(task, name)
    torch.manual_seed(0)
    if task == "ctr":
        info = tiny_data.item_info
        model = spec.cls(spec.config(params), info.tags, info.emb, info.n_tags)
        std = 0.06
    else:
        params = dict(params)
        features = params.pop(ITEM_FEATURES, None)
        model = spec.cls(spec.config({**params, "dropout": 0.0}), N_SEQ_ITEMS)
        if features == "add_sparse":  # two attributes of 100 per item: the sparse (CSR) projection
            multi_hot = torch.zeros(N_SEQ_ITEMS, 100)
            multi_hot.scatter_(1, torch.randint(0, 100, (N_SEQ_ITEMS, 2)), 1.0)
            model.attach_item_features(multi_hot, "add")
            assert model._sparse_features is not None
        elif features:
            model.attach_item_features((torch.rand(N_SEQ_ITEMS, 6) < 0.3).float(), features)
        std = 0.3
    model.set_serving_window(WINDOW - 1 if getattr(model, "cloze", False) else WINDOW)
    return spread_weights(model, std).eval()


def _offline_ctr(model, history, cands, likes, views):
    """The data pipeline's rows: the newest max_len ids, left-padded with 0 (reference doc §1)."""
    L = model.serving_window
    h = history[-L:]
    seq = torch.zeros(len(cands), L, dtype=torch.long)
    if len(h):
        seq[:, L - len(h):] = h
    batch = CTRBatch(user_id=torch.zeros(len(cands), dtype=torch.long), item_seq=seq, mask=seq > 0, item_id=cands,
                     likes_level=likes, views_level=views)
    with torch.no_grad():
        return torch.sigmoid(model(batch)["logit"])


def _offline_seq(model, history):
    """Evaluation's batch: the newest window right-aligned from 0 (Cloze: then [MASK])."""
    h = history[-model.serving_window:]
    if getattr(model, "cloze", False):
        h = torch.cat([h, torch.tensor([model.mask_id])])
    with torch.no_grad():
        logits = model(SeqBatch(h[None], torch.tensor([len(h)])))["logits"][0, :N_SEQ_ITEMS]
    logits[0] = float("-inf")
    return logits


def _stream(model, histories, burst):
    """Users' events applied through ``step``, users batched, ``burst`` events per call."""
    states = [model.init_state() for _ in histories]
    T = max(len(h) for h in histories)
    for t in range(0, T, burst):
        idx = [i for i, h in enumerate(histories) if t < len(h)]
        new = model.step([states[i] for i in idx], [histories[i][t:t + burst] for i in idx])
        for i, s in zip(idx, new):
            states[i] = s
    return states


def test_every_registered_model_declares_serving():
    """Every registered model implements the serving contract."""
    for task in ("ctr", "next_item", "retrieval"):  # retrieval's parity: tests/serve/test_retrieval_serving.py
        for name in model_names(task):
            assert get_model(task, name).servable, f"{task}/{name} does not implement IncrementalModel"
            assert issubclass(get_model(task, name).cls, IncrementalModel)


@pytest.mark.equivalence
@pytest.mark.parametrize("task,name,params", _servable())
def test_served_scores_equal_the_offline_forward_on_the_training_window(task, name, params, tiny_data):
    model = _build(task, name, params, tiny_data)
    L = model.serving_window
    n_items = tiny_data.item_info.n_items if task == "ctr" else N_SEQ_ITEMS
    g = torch.Generator().manual_seed(1)
    lengths = (L - 3, L, 3 * L, 2 * L + 1)  # the last two slide past the window in the same calls
    histories = [torch.randint(1, n_items, (n,), generator=g) for n in lengths]
    cands = [torch.randint(1, n_items, (c,), generator=g) for c in (5, 1, 7, 4)]
    feats = None
    if task == "ctr":
        feats = [{f: torch.randint(0, 11, (len(c),), generator=g) for f in model.candidate_features} for c in cands]
        ref = [_offline_ctr(model, h, c, f["likes_level"], f["views_level"]) for h, c, f in zip(histories, cands, feats)]
    else:
        ref_all = torch.stack([_offline_seq(model, h) for h in histories])
        ref = [torch.softmax(ref_all[i], -1)[c] for i, c in enumerate(cands)]
    for burst in (1, 3):
        states = _stream(model, histories, burst)
        assert [s.n_events for s in states] == list(lengths)
        for p, r in zip(model.score(states, cands, feats), ref):
            torch.testing.assert_close(p, r, atol=2e-5, rtol=1e-4)
        if task == "next_item":
            torch.testing.assert_close(model.score_all(states)[:, 1:], ref_all[:, 1:], atol=1e-4, rtol=1e-4)
    # prefill (one pass) gives the same state as stepping, and stepping goes on from it
    pre = [model.prefill(h) for h in histories]
    for p, r in zip(model.score(pre, cands, feats), ref):
        torch.testing.assert_close(p, r, atol=2e-5, rtol=1e-4)
    extra = torch.randint(1, n_items, (2,), generator=g)
    more = model.step(pre, [extra] * len(pre))
    longer = [torch.cat([h, extra]) for h in histories]
    if task == "ctr":
        ref2 = [_offline_ctr(model, h, c, f["likes_level"], f["views_level"]) for h, c, f in zip(longer, cands, feats)]
        got2 = model.score(more, cands, feats)
    else:
        ref2 = [_offline_seq(model, h)[1:] for h in longer]
        got2 = list(model.score_all(more)[:, 1:])
    for p, r in zip(got2, ref2):
        torch.testing.assert_close(p, r, atol=1e-4, rtol=1e-4)
    # bounded: the state past the window is no bigger than at the window
    assert states[2].nbytes == states[1].nbytes
    for s in states + more:
        model.check_state(s)

    # the serving adapter: /score and /recommend answers on the same states
    adapter = ServingAdapter(model)
    entries = [adapter.prefill(h) for h in histories]
    for p, r in zip(adapter.score(entries, cands, feats), ref):
        torch.testing.assert_close(p, r, atol=2e-5, rtol=1e-4)
    if task == "next_item":
        for e, r in zip(entries, ref_all):
            ids, vals = adapter.topk([e], 5)[0]
            torch.testing.assert_close(vals, r.topk(5).values, atol=1e-4, rtol=1e-4)
    else:
        ids, vals = adapter.topk([entries[2]], 3, candidates=[cands[2]], features=[feats[2]])[0]
        torch.testing.assert_close(vals, ref[2].sort(descending=True).values[:3], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("task,name,params", [p for p in _servable() if p.id in ("ctr-mambactr-0", "next_item-sasrec-0")])
def test_a_state_from_another_schema_is_refused(task, name, params, tiny_data):
    model = _build(task, name, params, tiny_data)
    st = model.prefill(torch.arange(1, 5))
    model.check_state(st)
    bad = type(st)(st.schema.replace("window=", "window=9"), st.n_events, st.window, st.tensors)
    with pytest.raises(StateSchemaError, match="schema"):
        model.check_state(bad)
    name0 = sorted(st.tensors)[0]
    wrong = type(st)(st.schema, st.n_events, st.window, {**st.tensors, name0: st.tensors[name0].double()})
    with pytest.raises(StateSchemaError, match=name0):
        model.check_state(wrong)
