"""`ssmrec bench seq` at toy size: every run recorded with metrics, times, memory; JSON + MD + PNG."""

import json

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_bench_seq_toy_run(tmp_path):
    out = tmp_path / "b"
    r = run_cli("bench", "seq", "--data", "synth", "--models", "mamba4rec,sasrec", "--mode", "both", "--epochs", "1",
                "--threads", "1", "--out", out, "--set", "data.source=synth-tiny", "--set", "data.max_len=20",
                "--set", "model_params={hidden_size: 16, max_len: 20}", "--prefix-batch-size", "512")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    recs = {(x["model"], x["mode"]): x for x in res["records"]}
    assert set(recs) == {(m, mode) for m in ("mamba4rec", "sasrec") for mode in ("all_positions", "prefixes")}
    for x in recs.values():
        assert x["status"] == "ok" and 0 <= x["ndcg@10"] <= 1 and x["peak_rss_mb"] > 50 and x["pairs_per_s"] > 0
    md = (out / "results.md").read_text()
    assert "Oracle test NDCG@10" in md and "mamba4rec" in md
    assert (out / "results.png").stat().st_size > 1000


def test_bench_seq_bad_arguments_are_one_line(tmp_path):
    r = run_cli("bench", "seq", "--models", "gpt", "--out", tmp_path / "b")
    assert r.returncode == 2 and "unknown model 'gpt'" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("bench", "seq", "--data", tmp_path, "--out", tmp_path / "b")
    assert r.returncode == 2 and "--preset" in r.stderr
