"""Trainer: metrics, checkpoints (atomic, weights_only), resume after SIGKILL, determinism, DDP smoke,
end-to-end learning on the tiny synthetic world, predict/evaluate CLI."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from ssmrec.config import from_dict
from ssmrec.metrics import gauc, logloss
from ssmrec.tasks.ctr import predict_split
from ssmrec.train.trainer import Trainer, load_trained
from tests.conftest import run_cli


def _cfg(world, out, **train):
    t = {"batch_size": 128, "lr": 2e-3, "epochs": 2, "patience": 2, "checkpoint_every": 10, "progress": False}
    t.update(train)
    # A narrow model over the last 32 slots keeps each run to seconds on a 2-core CI machine.
    return {"name": "t", "model": "mambactr", "out_dir": str(out), "data": {"dir": str(world), "max_len": 32},
            "model_params": {"embedding_dim": 16, "headdim": 32, "stage2": "cosine_gru"}, "train": t}


def test_gauc_matches_per_user_sklearn():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 30, 600)
    y = (rng.random(600) < 0.4).astype(float)
    p = np.round(rng.random(600), 2)  # ties included
    per, w = [], []
    for u in np.unique(g):
        m = g == u
        if 0 < y[m].sum() < m.sum():
            per.append(roc_auc_score(y[m], p[m]))
            w.append(m.sum())
    assert gauc(y, p, g) == pytest.approx(np.average(per, weights=w), abs=1e-12)
    assert logloss([1, 0], [1.0, 0.0]) == pytest.approx(-np.log(1 - 1e-7), rel=1e-6)


@pytest.mark.slow
def test_checkpoint_round_trip_and_weights_only(tiny_world, tmp_path):
    cfg = from_dict(_cfg(tiny_world, tmp_path, epochs=1, max_steps_per_epoch=5))
    summary = Trainer(cfg).fit()
    best = tmp_path / "t" / "best.pt"
    assert best.exists() and not list((tmp_path / "t").glob(".*tmp*"))
    ck = torch.load(best, weights_only=True)  # must not need code execution
    assert set(ck) >= {"model", "config", "feature_map"}
    model, cfg2, data = load_trained(best, tiny_world, splits=("valid",))
    p = predict_split(model, data.splits["valid"], 512, "cpu")
    assert roc_auc_score(data.splits["valid"].label.numpy(), p) == pytest.approx(summary["valid_auc"], abs=1e-9)
    # Weights that do not fit the model named by the config are a one-line error.
    ck["config"]["model_params"]["stage2"] = "augru"
    mismatched = tmp_path / "mismatched.pt"
    torch.save(ck, mismatched)
    r = run_cli("evaluate", "--checkpoint", mismatched, "--data", tiny_world)
    assert r.returncode == 2 and "weights do not match" in r.stderr and "Traceback" not in r.stderr
    # A truncated checkpoint is a clear error, not a traceback.
    bad = tmp_path / "bad.pt"
    bad.write_bytes(best.read_bytes()[:1000])
    r = run_cli("evaluate", "--checkpoint", bad, "--data", tiny_world)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "bad.pt" in r.stderr


@pytest.mark.slow
def test_training_is_deterministic_per_seed(tiny_world, tmp_path):
    res = []
    for i in range(2):
        cfg = from_dict(_cfg(tiny_world, tmp_path / str(i), epochs=1, max_steps_per_epoch=8))
        res.append(Trainer(cfg).fit()["valid_auc"])
    assert res[0] == res[1]


def _write_cfg(path, d):
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.mark.slow
def test_sigkill_then_resume_finishes_like_uninterrupted_run(tiny_world, tmp_path):
    d = _cfg(tiny_world, tmp_path / "killed", epochs=2, checkpoint_every=5)
    cfg_path = _write_cfg(tmp_path / "c.yaml", d)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "ssmrec.cli", "train", "--config", str(cfg_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    last = tmp_path / "killed" / "t" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            ck = torch.load(last, weights_only=True)
            if ck["state"]["global_step"] >= 15:  # mid-way through epoch 1 (56 steps)
                break
        time.sleep(0.05)
    assert proc.poll() is None, "run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(last, weights_only=True)["state"]["global_step"]
    r = run_cli("train", "--config", cfg_path, "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout
    resumed = json.loads(r.stdout.strip().splitlines()[-1])
    # Reference: the same config run without interruption.
    d2 = _cfg(tiny_world, tmp_path / "clean", epochs=2, checkpoint_every=5)
    r2 = run_cli("train", "--config", _write_cfg(tmp_path / "c2.yaml", d2))
    assert r2.returncode == 0, r2.stderr[-2000:]
    clean = json.loads(r2.stdout.strip().splitlines()[-1])
    assert killed_at >= 15
    assert resumed["epochs"] == clean["epochs"] == 2
    assert resumed["valid_auc"] == pytest.approx(clean["valid_auc"], abs=1e-6)
    lines = (tmp_path / "killed" / "t" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert not list(last.parent.glob(".*.tmp*"))  # stale temp files from the killed run are cleaned


@pytest.mark.slow
def test_tiny_run_beats_popularity_baseline(tiny_world, tmp_path):
    cfg = from_dict(_cfg(tiny_world, tmp_path, epochs=4, patience=2, checkpoint_every=0))
    s = Trainer(cfg).fit()
    assert s["oracle_auc"] > s["valid_auc"]
    assert s["valid_auc"] > s["popularity_auc"] + 0.05, s
    assert (tmp_path / "t" / "training_curve.png").stat().st_size > 1000
    rows = [json.loads(l) for l in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert {"valid_auc", "valid_logloss", "valid_gauc", "train_loss"} <= set(rows[0])


@pytest.mark.slow
def test_predict_writes_submission_in_test_order(tiny_world, tiny_data, tmp_path):
    cfg = from_dict(_cfg(tiny_world, tmp_path, epochs=1, max_steps_per_epoch=3))
    Trainer(cfg).fit()
    out = tmp_path / "sub" / "submission.csv"
    r = run_cli("predict", "--checkpoint", tmp_path / "t" / "best.pt", "--data", tiny_world, "--out", out)
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "ID,Task2"
    assert len(lines) - 1 == len(tiny_data.splits["test"])
    ids = [int(l.split(",")[0]) for l in lines[1:]]
    assert ids == list(range(len(ids)))
    probs = np.array([float(l.split(",")[1]) for l in lines[1:]])
    assert ((probs > 0) & (probs < 1)).all() and probs.std() > 0
    r = run_cli("evaluate", "--checkpoint", tmp_path / "t" / "best.pt", "--data", tiny_world)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0.5 < m["auc"] <= 1 and m["oracle_auc"] > 0.5


@pytest.mark.slow
def test_torchrun_two_processes(tiny_world, tmp_path):
    d = _cfg(tiny_world, tmp_path, epochs=1, max_steps_per_epoch=6)
    cfg_path = _write_cfg(tmp_path / "c.yaml", d)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "ssmrec.cli", "train", "--config", str(cfg_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads([l for l in r.stdout.splitlines() if l.startswith('{"model"')][-1])
    assert summary["world_size"] == 2
    assert summary["valid_auc"] > 0.5


@pytest.mark.parametrize("override,needle", [
    ("train.batch_sise=3", "unknown key 'train.batch_sise'"),
    ("model_params.stage1=rnn", "stage1 must be one of"),
    ("train.lr=fast", "'train.lr' must be a number"),
    ("colour=red", "unknown key 'colour'"),
])
def test_bad_config_is_one_line_error(tiny_world, tmp_path, override, needle):
    cfg_path = _write_cfg(tmp_path / "c.yaml", _cfg(tiny_world, tmp_path))
    r = run_cli("train", "--config", cfg_path, "--set", override)
    assert r.returncode != 0
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
