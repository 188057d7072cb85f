"""`ssmrec bench tower`: both embedders over seeds on a real environment, the scaling sweep and the
approximate index, at toy size; JSON + MD + PNG written; bad arguments are one line."""

import json

import pytest

from tests.conftest import SHARED_DATA, run_cli

SPOTIFY = SHARED_DATA / "spotify-top50"


@pytest.mark.slow
@pytest.mark.skipif(not SPOTIFY.is_dir(), reason=f"real Spotify data not found at {SPOTIFY}")
def test_bench_tower_spotify_two_seeds(tmp_path):
    out = tmp_path / "b"
    r = run_cli("bench", "tower", "--env", "spotify", "--seeds", "2", "--steps", "20", "--threads", "1", "--out", out,
                "--set", f"data.source={SPOTIFY}", "--set", "data.n_pairs=2000")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert {(x["model"], x["seed"]) for x in res["records"]} == {(m, s) for m in ("ft_mamba", "ft_transformer",
                                                                              "popularity", "random") for s in (0, 1)}
    agg = res["aggregate"]
    assert agg["ft_mamba"]["embedder_params"] == 479_232 and agg["ft_transformer"]["embedder_params"] == 1_186_048
    assert agg["ft_mamba"]["seeds"] == 2 and 0 <= agg["ft_mamba"]["hr@10"]["mean"] <= 1
    md = (out / "results.md").read_text()
    assert "FT-Mamba (paper, 100 seeds) | 0.952" in md and "± " in md
    assert "popularity (train positives) (ours)" in md and "random ranking (ours)" in md
    assert 0 <= agg["popularity"]["hr@10"]["mean"] <= 1 and agg["random"]["seeds"] == 2
    assert (out / "results.png").stat().st_size > 1000


@pytest.mark.slow
def test_bench_tower_scaling_and_index(tmp_path):
    out = tmp_path / "s"
    r = run_cli("bench", "tower", "--scaling", "--features", "4,16", "--repeats", "1", "--batch", "4",
                "--infer-batch", "8", "--threads", "1", "--out", out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads((out / "scaling.json").read_text())
    rows = {(x["model"], x["n_features"]): x for x in res["rows"]}
    assert set(rows) == {(m, f) for m in ("ft_mamba", "ft_transformer") for f in (4, 16)}
    for (m, f), x in rows.items():
        assert x["tokens"] == f + 1 and x["train_step_ms"]["median"] > 0 and x["activation_mb"] > 0
    # more tokens keep more activations for backward
    assert rows[("ft_mamba", 16)]["activation_mb"] > rows[("ft_mamba", 4)]["activation_mb"]
    assert set(res["crossing"]) == {"train_step_ms", "infer_ms_per_row", "activation_mb", "peak_rss_mb"}
    assert all(x["peak_rss_mb"] > 100 for x in rows.values())  # each case ran in its own process (torch included)
    assert (out / "scaling.png").stat().st_size > 1000
    pytest.importorskip("faiss")
    r = run_cli("bench", "tower", "--index", "--catalogue", "3000", "--repeats", "1", "--threads", "1", "--out", out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads((out / "index.json").read_text())["rows"]
    assert {x["kind"] for x in rows} == {"exact", "hnsw", "ivf"}
    assert all(0.5 < x["recall@10"] <= 1.0 for x in rows) and (out / "index.png").stat().st_size > 1000


def test_bench_tower_bad_arguments_are_one_line(tmp_path):
    for args, expect in ((["--models", "gpt"], "unknown model 'gpt'"), (["--scaling", "--features", "0,8"], "--features"),
                         (["--seeds", "0"], "--seeds must be >= 1"), (["--env", "netflix"], "invalid choice")):
        r = run_cli("bench", "tower", *args, "--out", tmp_path / "b")
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr, r.stderr
