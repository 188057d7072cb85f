"""`ssmrec serve` as a real process: SIGKILL under load leaves a readable state cache; after a restart no
event acknowledged more than the persistence interval before the kill is lost, and none is invented."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from ssmrec.serve.untrained import write_untrained_checkpoint  # noqa: E402

INTERVAL = 0.3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(ckpt, state, port):
    proc = subprocess.Popen([sys.executable, "-m", "ssmrec.cli", "serve", "--checkpoint", str(ckpt), "--port", str(port),
                             "--state-file", str(state), "--persist-interval", str(INTERVAL), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("serve did not come up in 60 s")


@pytest.mark.slow
@pytest.mark.equivalence
def test_sigkill_under_load_loses_nothing_older_than_the_persist_interval(tmp_path):
    ckpt = write_untrained_checkpoint(tmp_path / "m.pt", "ctr", "mambactr", {"embedding_dim": 16, "headdim": 16},
                                      n_items=300)
    state = tmp_path / "states.pt"
    proc, url = start(ckpt, state, free_port())
    acks: dict[str, list[tuple[float, int]]] = {}
    stop = threading.Event()
    errors = []

    def load(user):
        with httpx.Client(base_url=url, timeout=10) as c:
            i = 0
            while not stop.is_set():
                try:
                    r = c.post("/events", json={"user": user, "items": [1 + i % 290]})
                except httpx.HTTPError:
                    return  # the server was killed mid-request
                if r.status_code != 200:
                    errors.append(r.text)
                    return
                acks.setdefault(user, []).append((time.monotonic(), r.json()["events"]))
                i += 1

    threads = [threading.Thread(target=load, args=(f"user{u}",)) for u in range(8)]
    for t in threads:
        t.start()
    time.sleep(2.5)
    kill_time = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join()
    proc.wait()
    assert not errors, errors[:3]
    assert state.exists(), "no snapshot was written in 2.5 s of load"

    proc, url = start(ckpt, state, free_port())  # restarts from the snapshot (a torn file would not load)
    try:
        health = httpx.get(f"{url}/health").json()
        assert health["restored_users"] == 8
        guaranteed = kill_time - INTERVAL - 1.0  # a snapshot is taken every INTERVAL; writing it takes < 1 s
        restored = {}
        for user, log in acks.items():
            restored[user] = httpx.get(f"{url}/users/{user}").json()["events"]
            assert restored[user] <= log[-1][1], "restored more events than were acknowledged"
            safe = max([n for t, n in log if t <= guaranteed], default=0)
            assert restored[user] >= safe > 0, (user, restored[user], safe, log[-1])
        # the restored state scores as the same events computed afresh (user0's n-th event was item
        # 1 + n % 290, the load loop's), before any new event could rebuild it
        cands = list(range(1, 300, 12))  # many: a wrong state can move only a few candidates' scores
        history = [1 + i % 290 for i in range(restored["user0"])]
        cached = httpx.post(f"{url}/score", json={"user": "user0", "candidates": cands}).json()["probabilities"]
        fresh = httpx.post(f"{url}/score", json={"history": history, "candidates": cands}).json()["probabilities"]
        assert cached == pytest.approx(fresh, abs=2e-5, rel=1e-4), (cached, fresh)
        # and it serves: an event on a restored user continues its count (the count read before the
        # event, itself bounded by the acknowledgements above, plus one) ...
        r = httpx.post(f"{url}/events", json={"user": "user0", "items": [5]}).json()
        assert r["events"] == restored["user0"] + 1, (r, restored["user0"])
        # ... and its state: the restored-then-stepped state scores as the state of the same events
        # (user0's n-th event was item 1 + n % 290, the load loop's) computed afresh from the history
        # (an explicit-history request: one prefill, never persisted). Tolerance as in
        # tests/models/test_incremental_parity.py: float32 parallel prefill vs one step at a time (measured ~1e-7
        # here; a restore that lost the recurrent state moves some scores by ~0.1).
        history = history + [5]
        cached = httpx.post(f"{url}/score", json={"user": "user0", "candidates": cands}).json()["probabilities"]
        fresh = httpx.post(f"{url}/score", json={"history": history, "candidates": cands}).json()["probabilities"]
        assert cached == pytest.approx(fresh, abs=2e-5, rel=1e-4), (cached, fresh)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    # SIGTERM: in-flight requests are answered, the cache is saved with the newest event, exit 0
    assert proc.returncode == 0, proc.stderr.read()
    import torch

    blob = torch.load(state, weights_only=True)
    assert blob["states"][blob["users"].index("user0")]["state"]["n_events"] == r["events"]
