"""Two-tower retrieval is servable: /recommend by user id or by raw user features returns the offline
top-k (the task's own ranking through the item index), /score the towers' inner products; bad input is
one 4xx line naming the field."""

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from ssmrec import checkpoint  # noqa: E402
from ssmrec.config import load_config  # noqa: E402
from ssmrec.serve.app import ServeConfig, Service, create_app  # noqa: E402
from ssmrec.serve.untrained import spread_weights  # noqa: E402
from ssmrec.tasks import task_class  # noqa: E402


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    """An FT-Mamba checkpoint on a small vaccine environment (numeric + categorical user features),
    weights spread so that rankings differ between users; and the task that built it (offline path)."""
    cfg = load_config("tower/spotify_ft_mamba", [
        "data.env=vaccine", "data.source=null", "data.n_users=300", "data.n_pairs=400", "data.n_valid=50",
        "data.n_test_users=20", "data.index=exact", "model_params={d_token: 8, n_layers: 1, out_relu: false}",
        "train.progress=false"])
    task = task_class("retrieval")(cfg)
    task.setup()
    torch.manual_seed(0)
    model = spread_weights(task.build_model(), 0.3).eval()
    path = tmp_path_factory.mktemp("tower") / "best.pt"
    checkpoint.save_atomic({"task": "retrieval", "model": model.state_dict(), "config": cfg.resolved(),
                            "feature_map": task.feature_map(), "artifacts": task.artifacts(), "state": {},
                            "history": []}, path)
    return path, task, model


def _raw_features(task, row):
    """The raw values of an environment user, decoded from its encoded row."""
    users = task.data.users
    out = {}
    for j, name in enumerate(users.numeric):
        mean, std = users.stats[name]
        out[name] = float(users.num[row, j]) * std + mean
    for j, name in enumerate(users.categorical):
        code = int(users.cat[row, j])
        out[name] = users.vocab[name][code - 1] if code else None
    return out


@pytest.mark.equivalence
def test_recommend_by_id_and_by_features_equals_the_offline_top_k(tower, tmp_path):
    path, task, model = tower
    svc = Service(ServeConfig(checkpoint=str(path), state_file=str(tmp_path / "s.pt")))
    rows = [0, 7, 123]
    want_items, want_scores = task.topk(model, torch.tensor(rows).numpy(), 5)
    ids = task.data.items.ids
    with TestClient(create_app(svc)) as c:
        for r, wi, ws in zip(rows, want_items, want_scores):
            user = str(task.data.users.ids[r])
            by_id = c.post("/recommend", json={"user": user, "k": 5}).json()
            assert by_id["items"] == [str(ids[i]) for i in wi]
            assert by_id["scores"] == pytest.approx(ws.tolist(), abs=1e-4, rel=1e-4)
            by_feat = c.post("/recommend", json={"user_features": _raw_features(task, r), "k": 5}).json()
            assert by_feat["items"] == by_id["items"]
            assert by_feat["scores"] == pytest.approx(by_id["scores"], abs=1e-4, rel=1e-4)
            cands = by_id["items"][::-1]
            sc = c.post("/score", json={"user": user, "candidates": cands}).json()["scores"]
            assert sc == pytest.approx(ws.tolist()[::-1], abs=1e-4, rel=1e-4)
        assert c.get("/health").json()["task"] == "retrieval"


def test_retrieval_bad_requests_are_one_line_4xx(tower, tmp_path):
    path, task, _ = tower
    svc = Service(ServeConfig(checkpoint=str(path), state_file=str(tmp_path / "s.pt")))
    feats = _raw_features(task, 0)
    name = task.data.users.categorical[0]
    cases = [
        ("/events", {"user": "0", "items": [1]}, 422, "a retrieval model has no events"),
        ("/recommend", {"user": "no-such-user", "k": 3}, 404, "unknown user 'no-such-user'"),
        ("/recommend", {"history": [1], "k": 3}, 422, "history: a retrieval model has no event history"),
        ("/recommend", {"k": 3}, 422, "exactly one of 'user'"),
        ("/recommend", {"user_features": {**feats, "height": 3}, "k": 3}, 422, "user_features.height: unknown feature"),
        ("/recommend", {"user_features": {k: v for k, v in feats.items() if k != "age"}, "k": 3}, 422,
         "user_features.age: required"),
        ("/recommend", {"user_features": {**feats, "age": "old"}, "k": 3}, 422, "user_features.age"),
        ("/recommend", {"user_features": {**feats, name: [1]}, "k": 3}, 422, "user_features"),
        ("/score", {"user": "0", "candidates": ["nope"]}, 422, "candidates[0]: unknown item id 'nope'"),
    ]
    with TestClient(create_app(svc)) as c:
        for endpoint, body, status, words in cases:
            r = c.post(endpoint, json=body)
            assert r.status_code == status, (body, r.text)
            err = r.json()["error"]
            assert words in err and "\n" not in err, (body, err)
        # an unseen category value is the reserved unknown token, as in training (data.unseen: reserve)
        assert c.post("/recommend", json={"user_features": {**feats, name: "never-seen"}, "k": 3}).status_code == 200
