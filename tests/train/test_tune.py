"""`ssmrec tune`: an Optuna search over a YAML space, stored in SQLite, resumable, pruning on
validation, never reading the test split; its best config is a valid config to train with."""

import csv
import json

import pytest
import yaml

from tests.conftest import run_cli

SPACE = {"metric": "ndcg@10", "sampler": "random", "seed": 3, "pruner": "none",
         "params": {"train.lr": {"type": "float", "low": 5e-4, "high": 5e-3, "log": True},
                    "model_params.dropout": {"type": "float", "low": 0.0, "high": 0.4, "step": 0.1},
                    "model_params.num_layers": {"type": "int", "low": 1, "high": 2}}}
BASE = ["--config", "seq/synth_mamba4rec", "--set", "data.source=synth-tiny", "--set", "train.epochs=2",
        "--set", "train.threads=1", "--set", "model_params.hidden_size=16"]


def _space(tmp_path, **changes):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**SPACE, **changes}))
    return path


def _trials(out):
    return list(csv.DictReader((out / "trials.csv").open()))


@pytest.mark.slow
def test_tune_searches_resumes_and_writes_a_trainable_best_config(tmp_path):
    out = tmp_path / "study"
    r = run_cli("tune", *BASE, "--space", _space(tmp_path), "--trials", "3", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    rows = _trials(out)
    assert [t["state"] for t in rows] == ["complete"] * 3 and result["complete"] == 3
    assert (out / "study.db").stat().st_size > 0 and (out / "history.png").stat().st_size > 1000
    # the objective is the best validation value of the trial's run, the value early stopping kept
    for t in rows:
        hist = [json.loads(l) for l in (out / "trials" / f"trial-{int(t['trial']):04d}" / "metrics.jsonl")
                .read_text().splitlines()]
        assert float(t["valid_ndcg@10"]) == pytest.approx(max(h["valid_ndcg@10"] for h in hist), abs=1e-6)
        summary = json.loads((out / "trials" / f"trial-{int(t['trial']):04d}" / "summary.json").read_text())
        assert not [k for k in summary if k.startswith("test_")]  # a search never reads the test split
        assert 0.0 <= float(t["model_params.dropout"]) <= 0.4 and t["model_params.dropout"] in {"0.0", "0.1", "0.2", "0.3", "0.4"}
    best = max(rows, key=lambda t: float(t["valid_ndcg@10"]))
    assert result["best_trial"] == int(best["trial"])
    # best.yaml is the base config with the best values written in, and trains as it is
    cfg = yaml.safe_load((out / "best.yaml").read_text())
    assert cfg["train"]["lr"] == pytest.approx(float(best["train.lr"]))
    assert cfg["model_params"]["num_layers"] == int(best["model_params.num_layers"])
    assert "evaluate_test" not in cfg["train"] and cfg["name"].endswith("_tuned")
    from ssmrec.config import load_config

    assert load_config(out / "best.yaml").train.evaluate_test  # the final run reads the test split once
    # resuming the study adds trials, and does not replay the first draws
    r = run_cli("tune", *BASE, "--space", _space(tmp_path), "--trials", "5", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    rows2 = _trials(out)
    assert len(rows2) == 5 and rows2[:3] == rows
    first = {(t["train.lr"], t["model_params.dropout"]) for t in rows}
    assert not {(t["train.lr"], t["model_params.dropout"]) for t in rows2[3:]} & first
    r = run_cli("tune", *BASE, "--space", _space(tmp_path), "--trials", "5", "--out", out)
    assert r.returncode == 0 and "already holds 5 finished trials" in r.stdout


@pytest.mark.slow
def test_a_trial_below_the_median_is_pruned_on_validation(tmp_path):
    """lr 1e-9 cannot learn: after a learning trial completes, such a trial is stopped at the first
    epoch the pruner may judge, with the epochs it ran recorded."""
    space = _space(tmp_path, pruner="median", startup_trials=1, warmup_epochs=0, sampler="random", seed=0,
                   params={"train.lr": {"type": "categorical", "choices": [3e-3, 1e-9]}})
    out = tmp_path / "study"
    r = run_cli("tune", *BASE[:-2], "--set", "train.epochs=3", "--space", space, "--trials", "6", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _trials(out)
    states = {(t["state"], float(t["train.lr"])) for t in rows}
    assert ("pruned", 1e-9) in states and ("complete", 3e-3) in states
    assert all(float(t["train.lr"]) == 1e-9 for t in rows if t["state"] == "pruned")
    for t in rows:
        if t["state"] == "pruned":
            assert int(t["epochs"]) < 3


def test_search_space_errors_are_one_line(tmp_path):
    cases = [({"params": {}}, "params"),
             ({"params": {"train.lr": {"type": "float", "low": 1.0, "high": 0.5}}}, "low < high"),
             ({"params": {"train.lr": {"type": "float", "low": 0.0, "high": 0.5, "log": True}}}, "log scale"),
             ({"params": {"train.lr": {"type": "categorical"}}}, "choices"),
             ({"params": {"train.lr": {"type": "normal", "low": 0, "high": 1}}}, "type"),
             ({"metric": "auc", "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}}, "metric"),
             ({"params": {"model_params.dropout": {"type": "float", "low": 0.5, "high": 1.5}}}, "dropout"),
             ({"params": {"model_params.nope": {"type": "int", "low": 1, "high": 2}}}, "nope")]
    for space, needle in cases:
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(space))
        r = run_cli("tune", *BASE, "--space", path, "--trials", "1", "--out", tmp_path / "o")
        lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
        assert r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr, (space, r.stderr[-1500:])
        assert needle in lines[0], (needle, lines[0])
    assert not (tmp_path / "o" / "trials").exists()  # nothing trained on a bad space
