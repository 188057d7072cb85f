"""The HTTP service in-process (FastAPI TestClient): answers equal the scorer's, bad input is a 4xx with
one clear line and never stops the service, the cache is bounded / persisted / restored, concurrent
requests batched by the engine give the same states as sequential ones."""

import threading

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from ssmrec.errors import SsmrecError  # noqa: E402
from ssmrec.models.incremental import ModelState  # noqa: E402
from ssmrec.serve.adapter import UserEntry  # noqa: E402
from ssmrec.serve.app import ServeConfig, Service, create_app  # noqa: E402
from ssmrec.serve.cache import StateCache  # noqa: E402
from ssmrec.serve.untrained import write_untrained_checkpoint  # noqa: E402

CTR_SMALL = {"embedding_dim": 16, "headdim": 16}
SEQ_SMALL = {"hidden_size": 16, "d_state": 8, "dropout": 0.0}


@pytest.fixture(scope="module")
def ctr_ckpt(tmp_path_factory):
    return write_untrained_checkpoint(tmp_path_factory.mktemp("srv") / "ctr.pt", "ctr", "mambactr", CTR_SMALL,
                                      n_items=300, spread=0.06)


@pytest.fixture(scope="module")
def seq_ckpt(tmp_path_factory):
    raw = ["<pad>"] + [f"B{i:04d}" for i in range(1, 80)]
    return write_untrained_checkpoint(tmp_path_factory.mktemp("srv") / "seq.pt", "next_item", "mamba4rec",
                                      SEQ_SMALL, n_items=80, item_raw=raw)


def _levels(svc, cands):
    """The checkpoint's per-item levels of ``cands`` (what the service fills in when a request omits them)."""
    c = torch.as_tensor(cands)
    return {f.name: f.per_item[c] for f in svc.schema.candidate_features}


def _client(ckpt, tmp_path, **kw):
    svc = Service(ServeConfig(checkpoint=str(ckpt), state_file=str(tmp_path / "states.pt"), **kw))
    return svc, TestClient(create_app(svc))


@pytest.mark.equivalence
def test_ctr_answers_equal_the_scorer_and_cached_equals_explicit_history(ctr_ckpt, tmp_path):
    svc, client = _client(ctr_ckpt, tmp_path)
    with client as c:
        assert c.post("/events", json={"user": "u1", "items": [5, 6]}).json() == {"user": "u1", "events": 2}
        assert c.post("/events", json={"user": "u1", "items": [7]}).json()["events"] == 3
        cands = [10, 11, 12, 13]
        cached = c.post("/score", json={"user": "u1", "candidates": cands}).json()
        explicit = c.post("/score", json={"history": [5, 6, 7], "candidates": cands}).json()
        ref = svc.scorer.score([svc.scorer.prefill(torch.tensor([5, 6, 7]))], [torch.tensor(cands)],
                               [_levels(svc, cands)])[0]
        assert cached["candidates"] == cands
        assert cached["probabilities"] == pytest.approx(ref.tolist(), abs=1e-5)
        assert explicit["probabilities"] == pytest.approx(ref.tolist(), abs=1e-5)
        # explicit levels are used; the item's training level is the default
        lv = c.post("/score", json={"user": "u1", "candidates": cands, "features": {"likes_level": [9] * 4,
                                    "views_level": [9] * 4}}).json()["probabilities"]
        assert lv != pytest.approx(cached["probabilities"], abs=1e-6)
        top = c.post("/recommend", json={"user": "u1", "candidates": cands, "k": 2}).json()
        order = sorted(range(4), key=lambda i: -cached["probabilities"][i])[:2]
        assert top["items"] == [cands[i] for i in order]
        assert c.get("/users/u1").json()["events"] == 3
        metrics = c.get("/metrics").text
        assert 'ssmrec_requests_total{endpoint="/score",status="200"} 3.0' in metrics
        assert "ssmrec_state_cache_bytes" in metrics and "ssmrec_request_seconds_bucket" in metrics


BAD = [  # (endpoint, body or raw bytes, status, words in the error)
    ("/score", {"user": "nobody", "candidates": [1]}, 404, "unknown user 'nobody'"),
    ("/score", {"user": "u1", "candidates": [1, 300]}, 422, "candidates[1]: unknown item id 300"),
    ("/score", {"user": "u1", "candidates": [0]}, 422, "candidates[0]: unknown item id 0"),
    ("/score", {"user": "u1", "candidates": []}, 422, "candidates"),
    ("/score", {"user": "u1", "candidates": list(range(1, 60))}, 413, "over the limit of 50"),
    ("/score", b'{"user": "u1", "candidates": [1,', 400, "malformed JSON"),
    ("/score", {"user": "u1", "candidates": ["1"]}, 422, "candidates[0]: unknown item id '1'"),
    ("/score", {"user": "u1", "candidates": "1,2"}, 422, "candidates"),
    ("/score", {"user": 1.5, "candidates": [1]}, 422, "user"),
    ("/score", {"candidates": [1]}, 422, "exactly one of 'user'"),
    ("/score", {"user": "u1", "history": [1], "candidates": [1]}, 422, "exactly one of 'user'"),
    ("/score", {"user": "u1", "candidates": [1], "colour": "red"}, 422, "colour"),
    ("/score", {"user": "u1", "candidates": [1, 2], "features": {"likes_level": [1]}}, 422,
     "features.likes_level: 1 values for 2"),
    ("/score", {"user": "u1", "candidates": [1], "features": {"likes_level": [11]}}, 422,
     "features.likes_level[0]: 11 is outside 0..10"),
    ("/score", {"user": "u1", "candidates": [1], "features": {"colour": [1]}}, 422,
     "features.colour: unknown feature (known: likes_level, views_level)"),
    ("/score", {"user": "u1", "candidates": [1], "features": {"likes_level": ["a"]}}, 422, "features.likes_level.0"),
    ("/score", {"user": "u1", "candidates": [1], "likes_level": [1]}, 422, "likes_level"),
    ("/recommend", {"user": "u1", "k": 3, "features": {"likes_level": [1]}}, 422, "pass 'candidates'"),
    ("/recommend", {"user": "u1", "k": 3}, 422, "pass 'candidates'"),
    ("/recommend", {"user": "u1", "k": 0, "candidates": [1]}, 422, "k"),
    ("/recommend", {"user": "u1", "k": 5000, "candidates": [1]}, 413, "k: 5000"),
    ("/events", {"user": "u1", "items": []}, 422, "items"),
    ("/events", {"user": "u1", "items": [1, -3]}, 422, "items[1]: unknown item id -3"),
    ("/events", {"user": "u1"}, 422, "items: Field required"),
    ("/events", b"[1, 2]", 422, "Input should be a valid dictionary"),
    ("/events", b"x" * 5000, 413, "over the limit of 4096"),
]


def test_bad_requests_get_one_clear_4xx_line_and_the_service_keeps_serving(ctr_ckpt, tmp_path):
    svc, client = _client(ctr_ckpt, tmp_path, max_candidates=50, max_body_bytes=4096)
    with client as c:
        c.post("/events", json={"user": "u1", "items": [3]})
        for endpoint, body, status, words in BAD:
            r = (c.post(endpoint, content=body, headers={"content-type": "application/json"})
                 if isinstance(body, bytes) else c.post(endpoint, json=body))
            assert r.status_code == status, (endpoint, body, r.text)
            err = r.json()["error"]
            assert words in err and "\n" not in err, (endpoint, body, err)
        assert c.get("/health").json()["status"] == "ok"
        assert c.get("/users/u1").json()["events"] == 1  # no bad request touched the state
        assert c.post("/score", json={"user": "u1", "candidates": [1]}).status_code == 200


def test_an_internal_error_answers_500_in_one_line_and_serving_goes_on(ctr_ckpt, tmp_path, monkeypatch):
    svc, client = _client(ctr_ckpt, tmp_path)
    with client as c:
        c.post("/events", json={"user": "u1", "items": [3]})
        real = svc.scorer.score
        monkeypatch.setattr(svc.scorer, "score", lambda *a, **k: 1 / 0)
        r = c.post("/score", json={"user": "u1", "candidates": [1]})
        assert r.status_code == 500 and r.json()["error"] == "internal error: ZeroDivisionError: division by zero"
        monkeypatch.setattr(svc.scorer, "score", real)
        assert c.post("/score", json={"user": "u1", "candidates": [1]}).status_code == 200
        assert 'ssmrec_requests_total{endpoint="/score",status="500"} 1.0' in c.get("/metrics").text


def test_next_item_speaks_raw_ids_and_excludes_seen(seq_ckpt, tmp_path):
    svc, client = _client(seq_ckpt, tmp_path)
    with client as c:
        r = c.post("/recommend", json={"user": "a", "k": 3})
        assert r.status_code == 404
        c.post("/events", json={"user": "a", "items": ["B0003", "B0007"]})
        top = c.post("/recommend", json={"user": "a", "k": 79}).json()
        assert len(top["items"]) == 79 and top["items"][0].startswith("B")
        excl = c.post("/recommend", json={"user": "a", "k": 5, "exclude_seen": True}).json()["items"]
        assert "B0003" not in excl and "B0007" not in excl and len(excl) == 5
        p = c.post("/score", json={"user": "a", "candidates": top["items"][:3]}).json()["probabilities"]
        assert p == sorted(p, reverse=True) and 0 < sum(p) < 1
        assert c.post("/score", json={"user": "a", "candidates": ["nope"]}).status_code == 422
        assert c.post("/score", json={"user": "a", "candidates": [3]}).status_code == 422  # ints are not raw ids
        assert c.post("/recommend", json={"history": [], "k": 3}).status_code == 422
        r = c.post("/score", json={"user": "a", "candidates": ["B0001"], "features": {"likes_level": [1]}})
        assert r.status_code == 422 and "features.likes_level: unknown feature (known: none" in r.json()["error"]
        same = c.post("/recommend", json={"history": ["B0003", "B0007"], "k": 79}).json()
        assert same["items"] == top["items"]


def _entry(x):
    return UserEntry(ModelState("s", 0, torch.zeros(0, dtype=torch.long), {"x": x}), torch.zeros(0, dtype=torch.long))


def _decode(d):
    return UserEntry(ModelState.from_dict(d["state"]), d["seen"])


def test_state_cache_is_lru_within_its_byte_budget_and_restores(tmp_path):
    one = _entry(torch.zeros(1, 256))  # 1 KiB + overhead
    size = 1024 + 512
    cache = StateCache(3 * size, fingerprint="f")
    for u in "abc":
        cache.put(u, one)
    cache.get("a")  # a is now the most recent
    cache.put("d", one)
    assert "b" not in cache and {"a", "c", "d"} <= set(u for u, _ in cache.snapshot()[1])
    assert cache.bytes == 3 * size and cache.evictions == 1
    cache.put("d", _entry(torch.ones(1, 256)))  # replacing does not double-count
    assert cache.bytes == 3 * size
    cache.save(tmp_path / "s.pt")
    back = StateCache(10 * size, fingerprint="f")
    assert back.restore(tmp_path / "s.pt", _decode) == 3
    assert torch.equal(back.peek("d").state.tensors["x"], torch.ones(1, 256))
    with pytest.raises(SsmrecError, match="another checkpoint"):
        StateCache(10 * size, fingerprint="g").restore(tmp_path / "s.pt", _decode)
    (tmp_path / "torn.pt").write_bytes((tmp_path / "s.pt").read_bytes()[:100])
    with pytest.raises(SsmrecError, match="torn.pt: cannot read the state cache"):
        back.restore(tmp_path / "torn.pt", _decode)
    with pytest.raises(SsmrecError, match="over the whole cache budget"):
        StateCache(100).put("a", one)


def test_service_persists_on_shutdown_and_restores_on_start(ctr_ckpt, tmp_path):
    svc, client = _client(ctr_ckpt, tmp_path, persist_interval=3600)
    with client as c:
        c.post("/events", json={"user": "u1", "items": [5, 6, 7]})
        before = c.post("/score", json={"user": "u1", "candidates": [1, 2]}).json()["probabilities"]
    assert (tmp_path / "states.pt").exists()  # written at shutdown, not by the hour-long timer
    svc2, client2 = _client(ctr_ckpt, tmp_path)
    assert svc2.restored == 1
    with client2 as c:
        assert c.post("/score", json={"user": "u1", "candidates": [1, 2]}).json()["probabilities"] == before
        assert c.get("/health").json()["restored_users"] == 1


@pytest.mark.equivalence
def test_concurrent_requests_batched_by_the_engine_equal_sequential_updates(ctr_ckpt, tmp_path):
    svc, client = _client(ctr_ckpt, tmp_path, max_wait_ms=5.0)
    seqs = {f"u{u}": [1 + (u * 7 + t * 3) % 290 for t in range(12)] for u in range(8)}
    with client as c:
        def send(user):
            for item in seqs[user]:
                assert c.post("/events", json={"user": user, "items": [item]}).status_code == 200
        threads = [threading.Thread(target=send, args=(u,)) for u in seqs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        batches = c.get("/metrics").text
        for user, items in seqs.items():
            got = c.post("/score", json={"user": user, "candidates": [1, 2, 3]}).json()["probabilities"]
            ref = c.post("/score", json={"history": items, "candidates": [1, 2, 3]}).json()["probabilities"]
            assert got == pytest.approx(ref, abs=1e-5)
    # the engine did batch some events together (8 concurrent senders, 5 ms window)
    line = [l for l in batches.splitlines() if l.startswith('ssmrec_batch_requests_count{kind="Events"}')][0]
    assert float(line.split()[-1]) < 96


@pytest.mark.equivalence
def test_queued_events_of_one_user_are_applied_in_arrival_order(ctr_ckpt, tmp_path):
    from ssmrec.serve.engine import Events, Score

    svc = Service(ServeConfig(checkpoint=str(ctr_ckpt), state_file=str(tmp_path / "s.pt")))
    seq = [[4, 9], [17], [2, 3, 250], [8]]
    futures = [svc.engine.submit(Events("a", torch.tensor(x))) for x in seq]  # queued before the engine runs
    futures += [svc.engine.submit(Events("a", torch.tensor([x]))) for x in (11, 12)]
    svc.engine.start()
    try:
        assert [f.result(timeout=60)["events"] for f in futures] == [9] * 6  # one batched run, one count
        c = torch.tensor([1, 5, 7])
        got = svc.engine.submit(Score("a", None, c, _levels(svc, c))).result(timeout=60)
    finally:
        svc.engine.stop()
    flat = torch.tensor([i for x in seq for i in x] + [11, 12])
    want = svc.scorer.score([svc.scorer.prefill(flat)], [c], [_levels(svc, c)])[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    wrong = svc.scorer.score([svc.scorer.prefill(flat.flip(0))], [c], [_levels(svc, c)])[0]
    assert not torch.allclose(got, wrong, atol=1e-4)


def test_serve_cli_rejects_bad_arguments_in_one_line(ctr_ckpt, tmp_path):
    from tests.conftest import run_cli

    for args, words in ((["--port", "70000"], "--port must be <= 65535"),
                        (["--cache-bytes", "lots"], "--cache-bytes must be a positive size"),
                        (["--persist-interval", "0"], "--persist-interval must be a positive"),
                        (["--threads", "0"], "--threads must be >= 1")):
        r = run_cli("serve", "--checkpoint", ctr_ckpt, *args)
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = run_cli("serve", "--checkpoint", tmp_path / "missing.pt", "--port", "0")
    assert r.returncode == 2 and "checkpoint not found" in r.stderr
    # a state cache for another checkpoint is refused, not silently replaced
    other = write_untrained_checkpoint(tmp_path / "other.pt", "ctr", "mambactr", CTR_SMALL, n_items=300, seed=1)
    StateCache(1 << 20, fingerprint="x").save(tmp_path / "st.pt")
    r = run_cli("serve", "--checkpoint", other, "--state-file", tmp_path / "st.pt", "--port", "0")
    assert r.returncode == 2 and "written for another checkpoint" in r.stderr


def test_exclude_seen_with_few_eligible_items_answers_the_shorter_list(ctr_ckpt, seq_ckpt, tmp_path):
    svc, client = _client(ctr_ckpt, tmp_path)
    with client as c:
        c.post("/events", json={"user": "u", "items": [5, 6, 7]})
        r = c.post("/recommend", json={"user": "u", "k": 3, "exclude_seen": True, "candidates": [5, 6, 9]})
        assert r.status_code == 200 and r.json()["items"] == [9] and len(r.json()["scores"]) == 1
    svc, client = _client(seq_ckpt, tmp_path / "seq")
    with client as c:
        items = [f"B{i:04d}" for i in range(1, 78)]  # 77 of the 79 items seen (far beyond the window)
        c.post("/events", json={"user": "a", "items": items})
        r = c.post("/recommend", json={"user": "a", "k": 10, "exclude_seen": True})
        assert r.status_code == 200 and sorted(r.json()["items"]) == ["B0078", "B0079"]


def test_a_non_finite_score_answers_500_in_one_line_and_is_counted(ctr_ckpt, tmp_path):
    svc, client = _client(ctr_ckpt, tmp_path)
    with client as c:
        c.post("/events", json={"user": "u", "items": [5]})
        with torch.no_grad():
            svc.scorer.model.out.bias.fill_(float("nan"))
        r = c.post("/score", json={"user": "u", "candidates": [1, 2]})
        assert r.status_code == 500 and "non-finite" in r.json()["error"] and "\n" not in r.json()["error"]
        r = c.post("/recommend", json={"user": "u", "k": 2, "candidates": [1, 2]})
        assert r.status_code == 500
        metrics = c.get("/metrics").text
        assert 'ssmrec_nonfinite_responses_total{endpoint="/score"} 1.0' in metrics
        assert 'ssmrec_nonfinite_responses_total{endpoint="/recommend"} 1.0' in metrics


def test_events_are_applied_once_and_in_order_when_part_of_a_batch_fails(ctr_ckpt, tmp_path, monkeypatch):
    from ssmrec.serve.engine import Events

    svc = Service(ServeConfig(checkpoint=str(ctr_ckpt), state_file=str(tmp_path / "s.pt")))
    real = svc.scorer.update

    def flaky(entries, events):  # the item 299 breaks any call it is part of
        if any(bool((e == 299).any()) for e in events):
            raise RuntimeError("injected failure")
        return real(entries, events)

    svc.engine.start()
    try:
        for f in [svc.engine.submit(Events(u, torch.tensor([1, 2, 3]))) for u in ("a", "b")]:
            f.result(timeout=60)
        monkeypatch.setattr(svc.scorer, "update", flaky)
        svc.engine.stop()  # queue a run of events for a, b and a again while the engine is stopped
        futures = [svc.engine.submit(Events("a", torch.tensor([7]))), svc.engine.submit(Events("b", torch.tensor([299]))),
                   svc.engine.submit(Events("a", torch.tensor([8])))]
        svc.engine.start()
        assert futures[0].result(timeout=60)["events"] == futures[2].result(timeout=60)["events"] == 5
        with pytest.raises(RuntimeError, match="injected"):
            futures[1].result(timeout=60)
    finally:
        svc.engine.stop()
    a, b = svc.cache.peek("a"), svc.cache.peek("b")
    assert a.state.window.tolist() == [1, 2, 3, 7, 8] and a.n_events == 5  # once each, in order
    assert b.state.window.tolist() == [1, 2, 3] and b.n_events == 3  # the failed events left b as it was
    want = svc.scorer.prefill(torch.tensor([1, 2, 3, 7, 8]))
    for k, v in want.state.tensors.items():
        torch.testing.assert_close(a.state.tensors[k], v, atol=1e-5, rtol=1e-4)


def test_a_restored_entry_that_does_not_match_the_schema_is_refused_in_one_line(ctr_ckpt, tmp_path):
    from tests.conftest import run_cli

    svc, client = _client(ctr_ckpt, tmp_path)
    with client as c:
        c.post("/events", json={"user": "u", "items": [5, 6]})
    blob = torch.load(tmp_path / "states.pt", weights_only=True)
    blob["states"][0]["state"]["tensors"]["out"] = torch.zeros(1, 3, 3)  # same fingerprint, damaged entry
    torch.save(blob, tmp_path / "damaged.pt")
    r = run_cli("serve", "--checkpoint", ctr_ckpt, "--state-file", tmp_path / "damaged.pt", "--port", "0")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "user 'u': state tensor 'out' is (1, 3, 3)" in r.stderr
    # a cache written in incremental mode is not restored by a recompute-mode service
    r = run_cli("serve", "--checkpoint", ctr_ckpt, "--state-file", tmp_path / "states.pt", "--mode", "recompute",
                "--port", "0")
    assert r.returncode == 2 and "another checkpoint or serving mode" in r.stderr
