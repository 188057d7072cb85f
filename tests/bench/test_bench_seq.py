"""`ssmrec bench seq` at toy size: every run recorded with metrics, times, memory; JSON + MD + PNG."""

import json

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_bench_seq_toy_run(tmp_path):
    out = tmp_path / "b"
    r = run_cli("bench", "seq", "--data", "synth", "--models", "mamba4rec,sasrec", "--mode", "both", "--epochs", "1",
                "--threads", "1", "--out", out, "--set", "data.source=synth-tiny", "--set", "data.max_len=20",
                "--set", "model_params={hidden_size: 16, max_len: 20}", "--prefix-batch-size", "512",
                "--protocol", "masked")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    recs = {(x["model"], x["mode"]): x for x in res["records"]}
    assert set(recs) == {(m, mode) for m in ("mamba4rec", "sasrec") for mode in ("all_positions", "prefixes")}
    for x in recs.values():
        assert x["status"] == "ok" and 0 <= x["ndcg@10"] <= 1 and x["peak_rss_mb"] > 50 and x["pairs_per_s"] > 0
        assert x["protocol"] == "masked" and x["ndcg@10"] == x["masked_ndcg@10"]
        # masking only removes competitors of the target: never a lower hit rate for the same weights
        assert x["masked_hr@10"] >= x["unmasked_hr@10"]
    # both modes train the same pairs, so the same pairs/s would mean the same time per epoch
    summaries = {m: json.loads((out / "runs" / f"mamba4rec-{m}" / "summary.json").read_text())
                 for m in ("all_positions", "prefixes")}
    assert summaries["all_positions"]["train_pairs"] == summaries["prefixes"]["train_pairs"]
    md = (out / "results.md").read_text()
    assert "Oracle test NDCG@10" in md and "mamba4rec" in md and "NDCG@10 masked" in md
    assert (out / "results.png").stat().st_size > 1000


def test_bench_seq_bad_arguments_are_one_line(tmp_path):
    r = run_cli("bench", "seq", "--models", "gpt", "--out", tmp_path / "b")
    assert r.returncode == 2 and "unknown model 'gpt'" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("bench", "seq", "--models", "mamba4rec:lowpass", "--out", tmp_path / "b")
    assert r.returncode == 2 and "'lowpass' is not KEY=VALUE" in r.stderr
    r = run_cli("bench", "seq", "--models", "mamba4rec:lowpas=true", "--out", tmp_path / "b")
    assert r.returncode == 2 and "lowpas" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("bench", "seq", "--data", tmp_path, "--out", tmp_path / "b")
    assert r.returncode == 2 and "--preset" in r.stderr
    r = run_cli("bench", "seq", "--item-features", tmp_path / "none.parquet", "--out", tmp_path / "b")
    assert r.returncode == 2 and "--item-features" in r.stderr and "file not found" in r.stderr


@pytest.mark.slow
def test_bench_seq_model_variants_run_side_by_side(tmp_path):
    out = tmp_path / "b"
    r = run_cli("bench", "seq", "--data", "synth", "--models", "mamba4rec,mamba4rec:lowpass=true:lowpass_period=20",
                "--epochs", "1", "--threads", "1", "--out", out, "--set", "data.source=synth-tiny",
                "--set", "data.max_len=20", "--set", "model_params={hidden_size: 16, max_len: 20}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    recs = {x["model"]: x for x in json.loads((out / "results.json").read_text())["records"]}
    assert set(recs) == {"mamba4rec", "mamba4rec:lowpass=true:lowpass_period=20"}
    assert all(x["status"] == "ok" for x in recs.values())
    assert recs["mamba4rec:lowpass=true:lowpass_period=20"]["params"] == recs["mamba4rec"]["params"] + 3 * 16  # beta, LayerNorm
    cfg = (out / "runs" / "mamba4rec-lowpass-true-lowpass_period-20-all_positions" / "config.yaml").read_text()
    assert "lowpass: true" in cfg and "hidden_size: 16" in cfg
    assert "lowpass: false" in (out / "runs" / "mamba4rec-all_positions" / "config.yaml").read_text()
    assert "mamba4rec:lowpass=true" in (out / "results.md").read_text()


@pytest.mark.slow
def test_bench_seq_item_vectors_run_every_model_with_and_without(tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    feat = tmp_path / "item_emb.parquet"
    vecs = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32)
    pq.write_table(pa.table({"item_id": np.arange(1, 401), "item_emb_d8": pa.array(list(vecs))}), feat)
    out = tmp_path / "b"
    r = run_cli("bench", "seq", "--data", "synth", "--models", "mamba4rec", "--epochs", "1", "--threads", "1",
                "--out", out, "--set", "data.source=synth-tiny", "--set", "data.max_len=20",
                "--set", "model_params={hidden_size: 16, max_len: 20}", "--item-features", feat)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    recs = {x["items"]: x for x in res["records"]}
    assert set(recs) == {"id", "id+vectors"} and all(x["status"] == "ok" for x in recs.values())
    assert recs["id+vectors"]["params"] > recs["id"]["params"]  # the learned projection of the vectors
    cfg = (out / "runs" / "mamba4rec-all_positions-vectors" / "config.yaml").read_text()
    assert str(feat) in cfg and "item_feature_mode: add" in cfg
    assert "item_features: null" in (out / "runs" / "mamba4rec-all_positions" / "config.yaml").read_text()
    md = (out / "results.md").read_text()
    assert "NDCG@10 + vectors" in md and "id+vectors" in md
    assert res["meta"]["item_features"] == str(feat)
