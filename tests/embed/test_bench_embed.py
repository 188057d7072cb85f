"""`ssmrec bench embed`: one run over two encoders writes JSON + PNG with min/median items/s."""

import json


def test_bench_embed_writes_json_and_png(tiny_world, tiny_clip, tmp_path, capsys):
    from ssmrec.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "embed", "--items", str(tiny_world), "--image-encoder", str(tiny_clip),
                 "--text-encoder", str(tiny_clip), "--n-items", "16", "--batch-size", "8", "--repeats", "2",
                 "--out", str(out)]) == 0
    report = json.loads((out / "bench_embed.json").read_text())
    assert [r["modality"] for r in report["results"]] == ["image", "text"]
    for r in report["results"]:
        assert r["n_items"] == 16 and r["seconds"]["repeats"] == 2
        assert r["items_per_s_best"] >= r["items_per_s_median"] > 0
    assert (out / "bench_embed.png").stat().st_size > 0
    assert "items/s best" in capsys.readouterr().out
