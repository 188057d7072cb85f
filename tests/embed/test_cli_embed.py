"""`ssmrec embed` as a user runs it: killed mid-run and resumed; its output trains; one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest



def _cached_ids(cache_root, modality):
    ids = [np.load(f)["ids"] for f in sorted(cache_root.glob(f"{modality}-*/shard-*.npz"))]
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)


@pytest.mark.slow
def test_killed_run_resumes_without_recomputing(tiny_world, minilm, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["embed", "--items", tiny_world, "--out", out, "--text-encoder", minilm, "--batch-size", "4",
            "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "ssmrec.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    try:
        while len(_cached_ids(out / ".embed_cache", "text")) < 12 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = _cached_ids(out / ".embed_cache", "text")
    assert 12 <= len(done) < 300 and not (out / "embed_manifest.json").exists()

    args[args.index("--batch-size") + 1] = "64"  # the cache is per item: any batch size resumes it
    from ssmrec.cli import main  # the rerun in-process: the kill above is the part that needs a process

    assert main(list(map(str, args))) == 0
    r = capsys.readouterr()
    m = json.loads((out / "embed_manifest.json").read_text())
    t = m["encoders"]["text"]
    assert t["n_from_cache"] == len(done) and t["n_encoded"] == 300 - len(done)
    assert f"{len(done)} of 300 items cached, encoding {300 - len(done)}" in r.err
    assert sorted(_cached_ids(out / ".embed_cache", "text").tolist()) == list(range(1, 301))  # no item twice
    summary = json.loads(r.out.strip().splitlines()[-1])
    assert summary["n_items"] == 300 and summary["dim"] == 128


def test_embed_output_trains_with_the_unchanged_trainer(embedded, tmp_path):
    from ssmrec.cli import resolve_config
    from ssmrec.config import load_config
    from ssmrec.train.trainer import Trainer

    out, _ = embedded
    cfg = load_config(resolve_config("mmctr_synth/mambactr_tiny"), [
        f"data.dir={out}", f"out_dir={tmp_path}", "name=embedded", "train.epochs=1",
        "train.max_steps_per_epoch=3", "train.progress=false", "train.threads=1"])
    summary = Trainer(cfg).fit()
    assert 0 <= summary["valid_auc"] <= 1 and summary["oracle_auc"] > 0.5


@pytest.mark.parametrize("extra,match", [
    (["--text-encoder", "x", "--image-encoder", "y", "--weights", "0.6,0.3"], "sum to 1"),
    (["--text-encoder", "someone/not-cached-model-xyz"], "not in the Hugging Face cache"),
    (["--text-encoder", "./no/such/dir"], "model folder not found"),
    (["--text-encoder", "x", "--dim", "0"], "--dim must be a positive integer"),
])
def test_cli_errors_are_one_line(tiny_world, tmp_path, capsys, extra, match):
    from ssmrec.cli import main

    assert main(["embed", "--items", str(tiny_world), "--out", str(tmp_path / "o"), "--no-progress", *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssmrec: error:") and match in lines[0], lines
