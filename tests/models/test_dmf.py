"""DMF: decoupled inference equals the coupled forward, the convex combination, bucket embeddings on
keys and values, and the similarity inputs."""

import pytest
import torch

from tests.models.zoo import build, mixed_batch


def _perturb(model, seed=0):
    """Random non-trivial weights (FuxiCTR init leaves the bucket tables at ~1e-4) and BN statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)


@pytest.mark.parametrize("params", [{}, {"learn_alpha": True, "alpha": 0.3, "similarity_source": "projected"}])
@pytest.mark.equivalence
def test_decoupled_inference_equals_coupled_forward(tiny_data, params):
    torch.manual_seed(0)
    model = build("dmf", tiny_data, **params).eval()
    _perturb(model)
    users = mixed_batch(tiny_data, n=6)
    n_cand = 5
    cand = torch.randint(1, tiny_data.item_info.n_items, (6, n_cand))
    likes, views = torch.randint(0, 10, (6, n_cand)), torch.randint(0, 10, (6, n_cand))
    # Coupled: one row per (user, candidate) pair, everything recomputed per row.
    pairs = users.rows(torch.arange(6).repeat_interleave(n_cand))
    pairs = pairs.replace(item_id=cand.flatten(), likes_level=likes.flatten(), views_level=views.flatten())
    with torch.no_grad():
        coupled = model(pairs)["logit"].view(6, n_cand)
    state = model.encode_user(users)
    assert state["k_id"].shape == (6, users.item_seq.shape[1], model.cfg.attention_dim)
    decoupled = model.score_candidates(state, cand, likes, views)
    assert decoupled.shape == (6, n_cand)
    torch.testing.assert_close(decoupled, coupled, atol=1e-5, rtol=1e-5)
    assert coupled.std() > 1e-3  # candidates really score differently


def test_convex_combination_of_the_two_paths(tiny_data):
    torch.manual_seed(0)
    batch = mixed_batch(tiny_data)
    for alpha, frozen_path in [(1.0, "mc_mlp"), (0.0, "me_mlp")]:
        model = build("dmf", tiny_data, alpha=alpha).eval()
        _perturb(model)
        with torch.no_grad():
            before = model(batch)["logit"]
            for p in getattr(model, frozen_path).parameters():
                p.add_(1.0)  # the path with weight 0 cannot matter
            after = model(batch)["logit"]
        torch.testing.assert_close(before, after)
    learnt = build("dmf", tiny_data, learn_alpha=True, alpha=0.3)
    assert float(learnt.alpha.detach()) == pytest.approx(0.3)
    out = learnt(batch)["logit"]
    out.sum().backward()
    assert learnt.alpha_logit.grad is not None and learnt.alpha_logit.grad.abs() > 0


def test_bucket_embeddings_feed_keys_and_values(tiny_data):
    torch.manual_seed(0)
    model = build("dmf", tiny_data).eval()
    _perturb(model)
    batch = mixed_batch(tiny_data)
    with torch.no_grad():
        base = model(batch)["logit"]
        for table in (model.bucket_k, model.bucket_v):
            saved = table.weight.clone()
            table.weight.add_(torch.randn_like(saved))
            assert not torch.allclose(model(batch)["logit"], base, atol=1e-5)
            table.weight.copy_(saved)


def test_similarity_is_cosine_of_multimodal_vectors(tiny_data):
    model = build("dmf", tiny_data)
    ids = torch.tensor([1, 2, 3])
    mm = tiny_data.item_info.emb[ids]
    cos = torch.nn.functional.cosine_similarity(mm[:, None], mm[None], dim=-1)
    unit = model.mm_unit(ids)
    torch.testing.assert_close(unit @ unit.T, cos, atol=1e-5, rtol=1e-5)
